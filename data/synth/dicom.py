"""Write a planned synthetic study as a DICOM CT series through pydicom's real writer.

Headers are what a scanner export holds: geometry (Image Position/Orientation Patient, Pixel
Spacing, Slice Thickness), rescale (Slope/Intercept, Type HU), Pixel Padding Value outside the
reconstruction circle, scanner (manufacturer, model, kVp, kernel), and realistic *fake*
identifying fields (names, IDs, dates, institution, UIDs, free text, a private tag) that ingest
must keep out of every artefact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from ctssl.data.synth.study import (
    TS_DEFLATED,
    TS_EXPLICIT,
    TS_IMPLICIT,
    TS_J2K,
    TS_RLE,
    SeriesPlan,
    StudyPlan,
    make_uid,
)

TRANSFER_SYNTAXES = {
    TS_EXPLICIT: ExplicitVRLittleEndian,
    TS_IMPLICIT: ImplicitVRLittleEndian,
    TS_J2K: JPEG2000Lossless,
    TS_RLE: RLELossless,
    TS_DEFLATED: DeflatedExplicitVRLittleEndian,
}
BODY_PART = {"chest": "CHEST", "abdomen_pelvis": "ABDOMEN", "chest_abdomen_pelvis": "CHEST",
             "head": "HEAD"}
STUDY_DESCRIPTION = {"chest": "CT CHEST", "abdomen_pelvis": "CT ABDOMEN PELVIS",
                     "chest_abdomen_pelvis": "CT CHEST ABDOMEN PELVIS", "head": "CT HEAD"}
WINDOW = {"soft": (40, 400), "lung": (-600, 1500), "head": (40, 80)}
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"
PRIVATE_CREATOR = "SYNTH_SCANNER_PRIVATE"


def hu_to_stored(hu: np.ndarray, plan: StudyPlan) -> np.ndarray:
    """Quantise HU (NaN = outside the field of view) to the scanner's stored values."""
    sc = plan.scanner
    lo = -(2 ** (sc.bits_stored - 1)) if sc.pixel_representation else 0
    hi = (2 ** (sc.bits_stored - 1) - 1) if sc.pixel_representation else 2**sc.bits_stored - 1
    outside = np.isnan(hu)
    stored = np.rint((np.nan_to_num(hu, nan=-1024.0) - sc.intercept) / sc.slope)
    stored = np.clip(stored, lo, hi)
    fill = sc.padding if sc.padding is not None else np.clip(np.rint((-1024 - sc.intercept) / sc.slope), lo, hi)
    stored[outside] = fill
    return stored.astype(np.int16 if sc.pixel_representation else np.uint16)


def _base_dataset(plan: StudyPlan, series: SeriesPlan) -> Dataset:
    ident, sc = plan.identity, plan.scanner
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = ident.study_time
    ds.AccessionNumber = ident.accession
    ds.Modality = "CT"
    ds.Manufacturer = sc.manufacturer
    ds.InstitutionName = ident.institution
    ds.InstitutionAddress = ident.institution_address
    ds.ReferringPhysicianName = ident.referring_physician
    ds.StationName = ident.station
    ds.StudyDescription = STUDY_DESCRIPTION[plan.protocol]
    ds.SeriesDescription = series.description
    ds.OperatorsName = ident.operator
    ds.ManufacturerModelName = plan.model
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.PatientAge = ident.age
    ds.BodyPartExamined = BODY_PART[plan.protocol]
    if plan.anatomy.contrast:
        ds.ContrastBolusAgent = "IOHEXOL 350"
    ds.SliceThickness = f"{series.thickness:g}"
    ds.KVP = str(plan.kvp)
    ds.DeviceSerialNumber = ident.device_serial
    ds.ConvolutionKernel = series.kernel
    ds.PatientPosition = "FFS" if series.instance_order == "feet_first" else "HFS"
    ds.StudyInstanceUID = plan.study_uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = str(1000 + plan.index)
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = plan.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = sc.bits_stored
    ds.HighBit = sc.bits_stored - 1
    ds.PixelRepresentation = sc.pixel_representation
    if sc.padding is not None:
        ds.PixelPaddingValue = sc.padding  # VR US or SS follows Pixel Representation
    level, width = WINDOW[series.role]
    ds.WindowCenter, ds.WindowWidth = str(level), str(width)
    ds.RescaleIntercept = f"{sc.intercept:g}"
    ds.RescaleSlope = f"{sc.slope:g}"
    ds.RescaleType = "HU"
    if "comments" in plan.quirks:
        ds.ImageComments = f"Follow-up for {ident.patient_name.replace('^', ' ')}, see prior {ident.accession}"
    block = ds.private_block(0x0019, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"{ident.patient_id} {ident.station}")
    return ds


def _instance_numbers(series: SeriesPlan, rng: np.random.Generator) -> np.ndarray:
    """Instance Number of each slice (slices indexed inferior first)."""
    n = series.n_slices
    if series.instance_order == "feet_first":
        return np.arange(1, n + 1)
    if series.instance_order == "shuffled":
        return rng.permutation(n) + 1
    return np.arange(n, 0, -1)  # head first: instance 1 is the most superior slice


def _filename(plan: StudyPlan, n: int, sop_uid: str) -> str:
    return plan.scanner.filename.format(n=n, n10=n * 10, sop=sop_uid)


def _set_pixels(ds: Dataset, stored: np.ndarray, ts_key: str) -> None:
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    ts = TRANSFER_SYNTAXES[ts_key]
    if ts.is_compressed and not ts.is_deflated:
        ds.compress(ts, stored, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CTSSL_SYNTH"
    return meta


def write_series(plan: StudyPlan, series: SeriesPlan, hu: np.ndarray, folder: Path,
                 no_preamble: bool = False, datasets: list | None = None) -> list[Path]:
    """Write one series (``hu``: (n, H, W), inferior first) into ``folder``; its data sets, as written, are
    appended to ``datasets`` when given (a DICOM SEG refers to them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([plan.seed, plan.index, series.series_number, 0xD1C0])
    numbers = _instance_numbers(series, rng)
    paths = []
    for k in range(series.n_slices):
        ds = _base_dataset(plan, series)
        n = int(numbers[k])
        ds.SOPInstanceUID = make_uid(plan.seed, plan.index, series.series_number, "sop", k)
        ds.InstanceNumber = n
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{series.x0:.3f}", f"{series.y0:.3f}", f"{series.z[k]:.3f}"]
        ds.SliceLocation = f"{series.z[k]:.3f}"
        ds.PixelSpacing = [f"{series.pixel_spacing:.10g}"] * 2
        if series.spacing != series.thickness:
            ds.SpacingBetweenSlices = f"{series.spacing:g}"
        ds.file_meta = _file_meta(ds)
        ts_key = series.transfer_syntax
        if no_preamble:
            ts_key = TS_IMPLICIT
        _set_pixels(ds, hu_to_stored(hu[k], plan), ts_key)
        path = folder / _filename(plan, n + 100 * (series.series_number - 2), ds.SOPInstanceUID)
        if no_preamble:
            # An old-style file: no 128-byte preamble, no file meta, implicit VR little endian.
            del ds.file_meta
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        else:
            ds.preamble = b"\x00" * 128
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
        if datasets is not None:
            datasets.append(ds)
    return paths


def write_localizer(plan: StudyPlan, series: SeriesPlan, hu: np.ndarray, folder: Path) -> Path:
    """A coronal LOCALIZER (topogram) with the series' own UID, inside the series folder.

    The projection is the water-equivalent path length through the volume, as a scout shows it.
    Its orientation differs from the axial series, and its Image Type says LOCALIZER.
    """
    volume = np.nan_to_num(hu, nan=-1000.0)
    mu = np.clip((volume + 1000.0) / 1000.0, 0, None)            # attenuation relative to water
    path_length = mu.sum(axis=1) * series.pixel_spacing          # (n, W), mm of water
    image = np.clip(path_length / path_length.max() * 4000, 0, 4095)[::-1]  # superior row first
    stored = np.rint(image).astype(np.uint16)
    ds = _base_dataset(plan, series)
    ds.SeriesDescription = "Topogram 0.6 T20f"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SOPInstanceUID = make_uid(plan.seed, plan.index, series.series_number, "localizer")
    ds.InstanceNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [f"{series.x0:.3f}", "0.000", f"{series.z[-1]:.3f}"]
    ds.PixelSpacing = [f"{series.spacing:.10g}", f"{series.pixel_spacing:.10g}"]
    ds.PixelRepresentation = 0
    ds.BitsStored, ds.HighBit = 12, 11
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.RescaleType = "US"
    if "PixelPaddingValue" in ds:
        del ds.PixelPaddingValue
    ds.file_meta = _file_meta(ds)
    _set_pixels(ds, stored, TS_EXPLICIT)
    ds.preamble = b"\x00" * 128
    path = folder / "LOCALIZER_0001.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def add_archive_mess(plan: StudyPlan, series: SeriesPlan, paths: list[Path]) -> list[str]:
    """Quirks of real exports: a duplicated instance and a stray non-DICOM file."""
    added = []
    folder = paths[0].parent
    if "duplicate" in plan.quirks:
        source = paths[len(paths) // 2]
        copy = folder / f"copy_of_{source.name}"
        shutil.copyfile(source, copy)
        added.append(copy.name)
    if "stray_file" in plan.quirks:
        (folder / "export_notes.txt").write_text(
            "Exported from PACS workstation. Series may contain duplicates.\n", encoding="ascii")
        added.append("export_notes.txt")
    return added
