"""Read DICOM headers into light per-frame records, checked before anything is decoded.

Header reading stops before the pixel data; an enhanced (multi-frame) image becomes one record per
frame, with geometry and rescale taken from its functional groups. Identifiers are replaced by keyed
pseudonyms as they are read (``keyer``, data.pseudonym.Keyer): a record never holds a raw UID or
patient ID. Work per file is bounded before it starts: a Number of Frames that is absurd, that
disagrees with the per-frame groups, or that the file is too small to hold is refused (``DataError``),
never iterated. Values are parsed defensively: geometry, spacing and rescale that are missing, not
finite, zero or degenerate become ``None`` (or ``rescale_invalid``), and series grouping skips such
images with a reason (data.dicom_series).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from ctssl.data.dicom_seg import SegRecord, is_seg, seg_record
from ctssl.data.guard import DataError

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
MAX_FRAMES = 4096          # more frames in one CT file is a corrupt header, not an acquisition
MAX_MATRIX = 8192          # rows or columns beyond this are not a CT slice

Keyer = Callable[[str, str], str]


@dataclass
class FrameRecord:
    """One image (a file, or one frame of a multi-frame file) as the header describes it."""

    path: str
    frame: int | None
    sop_uid: str                  # keyed pseudonyms (data.pseudonym.Keyer), never the raw values
    series_uid: str
    study_uid: str
    patient_key: str
    modality: str
    image_type: tuple[str, ...]
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    cols: int
    slope: float | None
    intercept: float | None
    rescale_type: str
    pixel_representation: int
    padding_value: int | None
    padding_limit: int | None
    acquisition: int | None
    instance: int | None
    transfer_syntax: str
    manufacturer: str
    model: str
    kvp: float | None
    kernel: str
    body_part: str
    slice_thickness: float | None
    sop_class: str = ""
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    bits_allocated: int = 16
    bits_stored: int = 16
    rescale_invalid: bool = False     # slope or intercept present but not finite, or slope 0
    file_size: int = 0
    alternates: list[tuple[str, int | None]] = field(default_factory=list)  # other copies of this SOP instance
    patient_id_folded: str = ""       # the Patient ID case-folded, keyed: only to say when a label row's ID
                                      # differs from it in case alone (data.labels)
    pixel_presentation: str = ""      # Pixel Presentation (enhanced CT: per frame): COLOR/MIXED carry a supplemental
                                      # palette, some values colour codes
    content_qualification: str = ""   # Content Qualification (enhanced CT): PRODUCT, RESEARCH or SERVICE
    real_world_units: str = ""        # Real World Value Mapping: "" none (or no units), "HU" if one maps to HU,
                                      # "other" if its units are all something else (a parametric map)
    modality_lut: bool = False        # a Modality LUT Sequence (values through a LUT, not the rescale)


def _num(value, cast=float):
    if value is None or value == "":
        return None
    try:
        out = cast(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if cast is not float or math.isfinite(out) else None


def _floats(owner: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    """Exactly ``count`` finite numbers, or None."""
    if owner is None or keyword not in owner:
        return None
    try:
        values = tuple(float(v) for v in owner[keyword].value)
    except (TypeError, ValueError, OverflowError):
        return None
    return values if len(values) == count and all(math.isfinite(v) for v in values) else None


def _orientation(values) -> tuple[float, ...] | None:
    """Image Orientation (Patient): two unit vectors at right angles (tolerance 5%), else None."""
    if values is None:
        return None
    row, col = values[:3], values[3:]
    norm = lambda v: math.sqrt(sum(x * x for x in v))  # noqa: E731
    if abs(norm(row) - 1) > 0.05 or abs(norm(col) - 1) > 0.05 or abs(sum(a * b for a, b in zip(row, col))) > 0.05:
        return None
    return values


def _spacing(values) -> tuple[float, float] | None:
    return values if values is not None and all(v > 0 for v in values) else None


def _rescale(owner) -> tuple[float | None, float | None, bool]:
    """(slope, intercept, invalid): absent values are None (the CT fallback applies later); present but
    unparseable, not finite or a zero slope make the image invalid."""
    if owner is None:
        return None, None, False
    raw_slope, raw_intercept = owner.get("RescaleSlope"), owner.get("RescaleIntercept")
    slope, intercept = _num(raw_slope), _num(raw_intercept)
    invalid = (raw_slope not in (None, "") and (slope is None or slope == 0)) or \
              (raw_intercept not in (None, "") and intercept is None)
    return slope, intercept, invalid


HU_UNITS = ("[hnsf'U]", "HU")          # UCUM's code for Hounsfield units (and what some writers put instead)


def _real_world_units(items) -> str:
    """What Real World Value Mapping items say the pixel values are: "HU" when one maps them to Hounsfield units,
    "other" when every stated unit is something else, "" without items or units (a damaged mapping decides
    nothing). Only coded values are compared; no text of the mapping (LUT Explanation, LUT Label) is kept."""
    units = []
    for item in items or []:
        for code in item.get("MeasurementUnitsCodeSequence", []) or []:
            value = str(code.get("CodeValue", "")).strip()
            meaning = str(code.get("CodeMeaning", "")).strip().lower()
            units.append(value in HU_UNITS or meaning in ("hounsfield unit", "hounsfield units"))
    return "" if not units else "HU" if any(units) else "other"


def _functional_items(ds: Dataset, frame: int, sequence: str) -> list:
    """All items of a functional-group sequence: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and per_frame[frame].get(sequence):
        return list(per_frame[frame].get(sequence))
    shared = ds.get("SharedFunctionalGroupsSequence")
    return list(shared[0].get(sequence) or []) if shared else []


def _first(seq_owner: Dataset | None, sequence: str) -> Dataset | None:
    if seq_owner is None or sequence not in seq_owner:
        return None
    seq = seq_owner[sequence].value
    return seq[0] if seq else None


def _functional(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """An item of a functional-group macro: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        item = _first(per_frame[frame], sequence)
        if item is not None:
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    return _first(shared[0], sequence) if shared else None


def transfer_syntax_of(ds: Dataset) -> str:
    """The file's transfer syntax; for files without file meta, the encoding pydicom parsed."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    implicit, _little = getattr(ds, "original_encoding", (True, True))
    return str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def _frame_count(ds: Dataset, size: int, max_frames: int) -> int:
    """Number of Frames, checked against the limit, the per-frame groups and the file's size."""
    raw = ds.get("NumberOfFrames", 1)
    n = _num(raw if raw not in (None, "") else 1, int)
    if n is None or n < 1:
        raise DataError("invalid Number of Frames")
    if n > max_frames:
        raise DataError(f"Number of Frames above the limit of {max_frames} (a corrupt header?)")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n:
        raise DataError("Number of Frames disagrees with the per-frame functional groups (a corrupt header?)")
    rows, cols = _num(ds.get("Rows"), int) or 0, _num(ds.get("Columns"), int) or 0
    samples = _num(ds.get("SamplesPerPixel"), int) or 1
    bits = _num(ds.get("BitsAllocated"), int) or 16
    try:
        syntax = UID(transfer_syntax_of(ds))
        compressed = syntax.is_compressed or syntax.is_deflated      # deflate shrinks the whole data set
    except (ValueError, AttributeError):
        compressed = False
    needed = n * 8 if compressed else n * rows * cols * samples * max(1, bits) // 8
    if needed > size:
        raise DataError("the file is too small for its Rows x Columns x Number of Frames (truncated, or a "
                        "corrupt header)")
    return n


def read_records(path: Path, keyer: Keyer = lambda kind, value: value, max_frames: int = MAX_FRAMES
                 ) -> list[FrameRecord] | list[SegRecord]:
    """Header records of one DICOM file (one per frame; a DICOM SEG gives one ``SegRecord``). Raises on
    unreadable or absurd headers."""
    size = os.path.getsize(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "SOPInstanceUID" not in ds and "SOPClassUID" not in ds:
        raise DataError("no SOP Instance UID: not a DICOM image")
    rows, cols = _num(ds.get("Rows", 0) or 0, int) or 0, _num(ds.get("Columns", 0) or 0, int) or 0
    if rows > MAX_MATRIX or cols > MAX_MATRIX:
        raise DataError(f"Rows or Columns above {MAX_MATRIX}: not a CT slice (or a corrupt header)")
    patient_key = _str(ds, "PatientID") or (_str(ds, "PatientName") + "|" + _str(ds, "PatientBirthDate"))
    patient_key = keyer("patient-id", patient_key if patient_key.strip("|") else _str(ds, "StudyInstanceUID"))
    if is_seg(ds):   # a segmentation mask, not an image (data.dicom_seg)
        return [seg_record(ds, str(path), keyer, size, patient_key)]
    base = dict(
        path=str(path), sop_uid=keyer("sop", _str(ds, "SOPInstanceUID")),
        series_uid=keyer("series-uid", _str(ds, "SeriesInstanceUID")),
        study_uid=keyer("study-uid", _str(ds, "StudyInstanceUID")),
        patient_key=patient_key,
        patient_id_folded=keyer("patient-id-folded", _str(ds, "PatientID").casefold()) if _str(ds, "PatientID") else "",
        modality=_str(ds, "Modality").upper(), rows=rows, cols=cols,
        pixel_representation=_num(ds.get("PixelRepresentation", 0) or 0, int) or 0,
        padding_value=_num(ds.get("PixelPaddingValue"), int),
        padding_limit=_num(ds.get("PixelPaddingRangeLimit"), int),
        acquisition=_num(ds.get("AcquisitionNumber"), int), instance=_num(ds.get("InstanceNumber"), int),
        transfer_syntax=transfer_syntax_of(ds), manufacturer=_str(ds, "Manufacturer"),
        model=_str(ds, "ManufacturerModelName"), kvp=_num(ds.get("KVP")),
        kernel=_str(ds, "ConvolutionKernel"), body_part=_str(ds, "BodyPartExamined").upper(),
        sop_class=_str(ds, "SOPClassUID"), samples_per_pixel=_num(ds.get("SamplesPerPixel"), int) or 1,
        photometric=_str(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
        bits_allocated=_num(ds.get("BitsAllocated"), int) or 16,
        bits_stored=_num(ds.get("BitsStored"), int) or _num(ds.get("BitsAllocated"), int) or 16, file_size=size,
        content_qualification=_str(ds, "ContentQualification").upper(),
        modality_lut="ModalityLUTSequence" in ds,
    )
    image_type = tuple(str(v).strip().upper() for v in ds.get("ImageType", []) or [])
    n_frames = _frame_count(ds, size, max_frames)
    enhanced = base["sop_class"] == ENHANCED_CT or "PerFrameFunctionalGroupsSequence" in ds
    if not enhanced:
        if n_frames != 1:
            raise DataError("a multi-frame image that is not an enhanced CT (no per-frame geometry)")
        slope, intercept, invalid = _rescale(ds)
        return [FrameRecord(
            frame=None, image_type=image_type, iop=_orientation(_floats(ds, "ImageOrientationPatient", 6)),
            ipp=_floats(ds, "ImagePositionPatient", 3), pixel_spacing=_spacing(_floats(ds, "PixelSpacing", 2)),
            slope=slope, intercept=intercept, rescale_invalid=invalid, rescale_type=_str(ds, "RescaleType").upper(),
            slice_thickness=_num(ds.get("SliceThickness")), pixel_presentation=_str(ds, "PixelPresentation").upper(),
            real_world_units=_real_world_units(ds.get("RealWorldValueMappingSequence")), **base)]
    records = []
    for frame in range(n_frames):
        position = _functional(ds, frame, "PlanePositionSequence")
        orientation = _functional(ds, frame, "PlaneOrientationSequence")
        measures = _functional(ds, frame, "PixelMeasuresSequence")
        transform = _functional(ds, frame, "PixelValueTransformationSequence")
        frame_type = _functional(ds, frame, "CTImageFrameTypeSequence")
        ftype = tuple(str(v).strip().upper() for v in (frame_type.get("FrameType", []) if frame_type else [])) or image_type
        presentation = (_str(frame_type, "PixelPresentation") if frame_type else "") or _str(ds, "PixelPresentation")
        mappings = _functional_items(ds, frame, "RealWorldValueMappingSequence") or \
            list(ds.get("RealWorldValueMappingSequence") or [])
        slope, intercept, invalid = _rescale(transform)
        records.append(FrameRecord(
            frame=frame, image_type=ftype, iop=_orientation(_floats(orientation, "ImageOrientationPatient", 6)),
            ipp=_floats(position, "ImagePositionPatient", 3),
            pixel_spacing=_spacing(_floats(measures, "PixelSpacing", 2)),
            slope=slope, intercept=intercept, rescale_invalid=invalid,
            rescale_type=(_str(transform, "RescaleType") if transform else "").upper(),
            slice_thickness=_num(measures.get("SliceThickness")) if measures else None,
            pixel_presentation=presentation.upper(), real_world_units=_real_world_units(mappings), **base))
    return records
