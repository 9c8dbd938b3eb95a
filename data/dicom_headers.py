"""Find CT sources and read DICOM headers into light per-frame records.

Discovery recognises DICOM by content, with or without the 128-byte preamble and file meta,
whatever the file name; NIfTI by its ``.nii`` / ``.nii.gz`` name. Everything else is counted as
ignored. Header reading stops before the pixel data; an enhanced (multi-frame) image becomes one
record per frame, with geometry and rescale taken from its functional groups.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
# Groups a DICOM data set without preamble can plausibly start with.
_FIRST_GROUPS = {0x0002, 0x0008}


@dataclass
class Sources:
    dicom: list[Path]
    nifti: list[tuple[Path, Path]]   # (file, the SRC root it was found under)
    ignored: list[Path]


def looks_like_dicom(path: Path) -> bool:
    """DICOM by content: 'DICM' after a preamble, or a plausible first tag without one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in _FIRST_GROUPS or element > 0x0100:
        return False
    # Explicit VR: two upper-case letters follow the tag; implicit VR: a 4-byte length.
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return length < 1 << 16


def discover(sources: list[str | Path]) -> Sources:
    """Walk the sources (files or folders), in sorted order so every run sees the same list."""
    dicom, nifti, ignored = [], [], []
    for src in sources:
        root = Path(src)
        if not root.exists():
            raise FileNotFoundError(f"Source '{root}' does not exist.")
        if root.is_file():
            files, base = [root], root.parent
        else:
            files, base = [], root
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                files.extend(Path(dirpath) / name for name in sorted(filenames))
        for path in files:
            if path.name.endswith(NIFTI_SUFFIXES):
                nifti.append((path, base))
            elif looks_like_dicom(path):
                dicom.append(path)
            else:
                ignored.append(path)
    return Sources(dicom, nifti, ignored)


@dataclass
class FrameRecord:
    """One image (a file, or one frame of a multi-frame file) as the header describes it."""

    path: str
    frame: int | None
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_key: str              # PatientID (or a fallback), only ever used to make a pseudonym
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


def _num(value, cast=float):
    if value is None or value == "":
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        return None


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


def read_records(path: Path) -> list[FrameRecord]:
    """Header records of one DICOM file (one per frame). Raises on unreadable headers."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "SOPInstanceUID" not in ds and "SOPClassUID" not in ds:
        raise ValueError("no SOP Instance UID: not a DICOM image")
    patient_key = _str(ds, "PatientID") or (_str(ds, "PatientName") + "|" + _str(ds, "PatientBirthDate"))
    base = dict(
        path=str(path), sop_uid=_str(ds, "SOPInstanceUID"), series_uid=_str(ds, "SeriesInstanceUID"),
        study_uid=_str(ds, "StudyInstanceUID"), patient_key=patient_key or _str(ds, "StudyInstanceUID"),
        modality=_str(ds, "Modality").upper(),
        rows=int(ds.get("Rows", 0) or 0), cols=int(ds.get("Columns", 0) or 0),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        padding_value=_num(ds.get("PixelPaddingValue"), int),
        padding_limit=_num(ds.get("PixelPaddingRangeLimit"), int),
        acquisition=_num(ds.get("AcquisitionNumber"), int), instance=_num(ds.get("InstanceNumber"), int),
        transfer_syntax=transfer_syntax_of(ds), manufacturer=_str(ds, "Manufacturer"),
        model=_str(ds, "ManufacturerModelName"), kvp=_num(ds.get("KVP")),
        kernel=_str(ds, "ConvolutionKernel"), body_part=_str(ds, "BodyPartExamined").upper(),
    )
    image_type = tuple(v.upper() for v in ds.get("ImageType", []) or [])
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = str(ds.get("SOPClassUID", "")) == ENHANCED_CT or "PerFrameFunctionalGroupsSequence" in ds
    if not enhanced:
        return [FrameRecord(
            frame=None, image_type=image_type,
            iop=tuple(float(v) for v in ds.ImageOrientationPatient) if "ImageOrientationPatient" in ds else None,
            ipp=tuple(float(v) for v in ds.ImagePositionPatient) if "ImagePositionPatient" in ds else None,
            pixel_spacing=tuple(float(v) for v in ds.PixelSpacing) if "PixelSpacing" in ds else None,
            slope=_num(ds.get("RescaleSlope")), intercept=_num(ds.get("RescaleIntercept")),
            rescale_type=_str(ds, "RescaleType").upper(),
            slice_thickness=_num(ds.get("SliceThickness")), **base)]
    records = []
    for frame in range(n_frames):
        position = _functional(ds, frame, "PlanePositionSequence")
        orientation = _functional(ds, frame, "PlaneOrientationSequence")
        measures = _functional(ds, frame, "PixelMeasuresSequence")
        transform = _functional(ds, frame, "PixelValueTransformationSequence")
        frame_type = _functional(ds, frame, "CTImageFrameTypeSequence")
        ftype = tuple(v.upper() for v in (frame_type.get("FrameType", []) if frame_type else [])) or image_type
        records.append(FrameRecord(
            frame=frame, image_type=ftype,
            iop=tuple(float(v) for v in orientation.ImageOrientationPatient) if orientation else None,
            ipp=tuple(float(v) for v in position.ImagePositionPatient) if position else None,
            pixel_spacing=tuple(float(v) for v in measures.PixelSpacing) if measures and "PixelSpacing" in measures else None,
            slope=_num(transform.get("RescaleSlope")) if transform else None,
            intercept=_num(transform.get("RescaleIntercept")) if transform else None,
            rescale_type=(_str(transform, "RescaleType") if transform else "").upper(),
            slice_thickness=_num(measures.get("SliceThickness")) if measures else None, **base))
    return records
