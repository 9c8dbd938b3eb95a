"""DICOM Segmentation objects (SEG): a header record at scan time, frames with their geometry at load time.

Scan (``seg_record``, from the header read without pixel data, as every DICOM file is read): the SOP
Instance UIDs of the images the SEG was made from (Referenced Series Sequence and each frame's Derivation
Image Sequence), keyed as they are read exactly like the images' own (data.pseudonym.Keyer), so the plan can
match a SEG to its CT series without ever holding a raw UID; and its segments' class names. A class name is
the segment's coded property type (Segmented Property Type Code Sequence, Code Meaning), reduced to
``[a-z0-9_]`` (``"Liver"`` -> ``liver``); the free-text Segment Label and descriptions are never used, as free
text may identify. A segment without a coded type is ``segment_N``.

Load (``load_seg_frames``, read with highdicom; a SEG highdicom refuses is a ``MaskError`` giving highdicom's own
message with every possible header value taken out, data.guard.library_text): every frame's class ids and its plane (Image Position and
Orientation (Patient), Pixel Spacing from the per-frame or shared functional groups), placed on the image by
world coordinates in data.mask_placement, never by the references alone. BINARY frames carry their segment
(``lut[segment]`` where set), FRACTIONAL ones where the fraction is at least one half, LABELMAP ones segment
numbers as pixel values. Frames are ordered by segment number, so where segments overlap the higher number
wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ctssl.data.guard import BudgetExceeded, DataError, is_data_failure, library_text
from ctssl.data.mask_placement import MaskError, MaskFrame

SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation Storage
                   "1.2.840.10008.5.1.4.1.1.66.7")     # Label Map Segmentation Storage
MAX_SEG_FRAMES = 65536       # segments x slices; more is a corrupt header
MAX_SEGMENTS = 255


@dataclass
class SegRecord:
    """A DICOM SEG as its header describes it; identifiers keyed (never the raw values)."""

    path: str
    sop_uid: str
    patient_key: str
    references: tuple[str, ...]          # keyed SOP Instance UIDs of its source images
    segments: dict[int, str]             # segment number -> class name (module docstring)
    frames: int


def is_seg(ds) -> bool:
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES or str(ds.get("Modality", "")).strip().upper() == "SEG"


def class_name(text: str) -> str:
    """A class name reduced to ``[a-z0-9_]``, at most 64 characters (also the key classes are matched by)."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")[:64]


def _segments(ds) -> dict[int, str]:
    out = {}
    for item in ds.get("SegmentSequence", []) or []:
        try:
            number = int(item.SegmentNumber)
        except (AttributeError, TypeError, ValueError):
            raise DataError("a SEG segment without a valid Segment Number") from None
        codes = item.get("SegmentedPropertyTypeCodeSequence") or []
        name = class_name(codes[0].get("CodeMeaning", "")) if codes else ""
        out[number] = name or f"segment_{number}"
    if not out:
        raise DataError("a SEG without segments (no Segment Sequence)")
    if len(out) > MAX_SEGMENTS or min(out) < 1:
        raise DataError(f"a SEG with {len(out)} segments numbered from {min(out)} (1..{MAX_SEGMENTS} are read)")
    return out


def _references(ds, keyer) -> tuple[str, ...]:
    uids = set()
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        for inst in series.get("ReferencedInstanceSequence", []) or []:
            uids.add(str(inst.get("ReferencedSOPInstanceUID", "")).strip())
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []) or []:
        for derivation in frame.get("DerivationImageSequence", []) or []:
            for source in derivation.get("SourceImageSequence", []) or []:
                uids.add(str(source.get("ReferencedSOPInstanceUID", "")).strip())
    return tuple(sorted(keyer("sop", uid) for uid in uids if uid))


def seg_record(ds, path: str, keyer, size: int, patient_key: str) -> SegRecord:
    """The scan-time record of a SEG header ``ds`` (read without pixel data). Raises DataError on absurd values."""
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames if frames not in (None, "") else 1)
    except (TypeError, ValueError):
        raise DataError("invalid Number of Frames") from None
    if not 1 <= frames <= MAX_SEG_FRAMES:
        raise DataError(f"a SEG with {frames} frames (1..{MAX_SEG_FRAMES} are read; a corrupt header?)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 1) or 1)
    if not (0 < rows <= 8192 and 0 < cols <= 8192):
        raise DataError("a SEG whose Rows or Columns are missing or above 8192")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    uncompressed = syntax in ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
    if uncompressed and frames * rows * cols * bits // 8 > size:
        raise DataError("the SEG file is too small for its Rows x Columns x Number of Frames (truncated?)")
    references = _references(ds, keyer)
    if not references:
        raise DataError("a SEG that references no source images (its image cannot be found)")
    return SegRecord(str(path), keyer("sop", str(ds.get("SOPInstanceUID", "")).strip()), patient_key,
                     references, _segments(ds), frames)


def _functional(ds, frame: int, sequence: str):
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        items = per_frame[frame].get(sequence)
        if items:
            return items[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        items = shared[0].get(sequence)
        if items:
            return items[0]
    return None


def _floats(item, keyword: str, count: int) -> np.ndarray:
    values = item.get(keyword) if item is not None else None
    try:
        out = np.array([float(v) for v in values], dtype=np.float64) if values is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or len(out) != count or not np.all(np.isfinite(out)):
        raise MaskError(f"a SEG frame without a valid {keyword}")
    return out


def _frame_geometry(ds, frame: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    position = _floats(_functional(ds, frame, "PlanePositionSequence"), "ImagePositionPatient", 3)
    iop = _floats(_functional(ds, frame, "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
    spacing = _floats(_functional(ds, frame, "PixelMeasuresSequence"), "PixelSpacing", 2)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(np.dot(row, col)) > 0.01:
        raise MaskError("a SEG frame whose orientation is not two unit vectors at right angles")
    if min(spacing) <= 0:
        raise MaskError("a SEG frame with a pixel spacing that is not positive")
    return position, iop, (float(spacing[0]), float(spacing[1]))


def _segment_of(ds, frame: int) -> int:
    item = _functional(ds, frame, "SegmentIdentificationSequence")
    try:
        return int(item.ReferencedSegmentNumber)
    except (AttributeError, TypeError, ValueError):
        raise MaskError("a SEG frame without its Referenced Segment Number") from None


def load_seg_frames(path: str, lut: dict[int, int]) -> list[MaskFrame]:
    """The SEG's frames as class ids (``lut``: segment number -> class id) with their planes, ordered by segment
    number. Raises MaskError (or a library's exception) when the SEG cannot be read."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
        kind = str(seg.SegmentationType).upper()
        pixels = np.asarray(seg.pixel_array)
    except BaseException as err:  # noqa: BLE001 - highdicom's refusal is the reason, its values taken out
        if not is_data_failure(err) or isinstance(err, BudgetExceeded):
            raise
        raise MaskError(f"highdicom cannot read this SEG ({type(err).__name__}: {library_text(err)})") from err
    frames = int(seg.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape[0] != frames:
        raise MaskError(f"SEG pixel data of {pixels.shape[0]} frames where Number of Frames says {frames}")
    table = np.zeros(max(max(lut, default=0), 0) + 1 if kind != "LABELMAP" else 65536, dtype=np.int32) - 1
    table[0] = 0
    for number, class_id in lut.items():
        table[number] = class_id
    out = []
    for f in range(frames):
        position, iop, spacing = _frame_geometry(seg, f)
        number, values = 0, pixels[f]
        if kind == "LABELMAP":
            values = table[values.astype(np.int64)]
            if (values < 0).any():
                raise MaskError("SEG pixel values that are no described segment")
        else:
            number = _segment_of(seg, f)
            if not 0 < number < len(table) or table[number] < 0:
                raise MaskError(f"a SEG frame of segment {number}, which the SEG does not describe")
            if kind == "FRACTIONAL":
                maximum = float(seg.get("MaximumFractionalValue", 255) or 255)
                on = values.astype(np.float64) >= maximum / 2
            else:
                on = values > 0
            values = np.where(on, table[number], 0)
        out.append((number, MaskFrame(values.astype(np.uint8), position, iop, spacing)))
    out.sort(key=lambda pair: pair[0])
    return [frame for _, frame in out]

