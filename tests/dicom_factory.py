"""Build CT DICOM files for tests, from stored pixel values, in any transfer syntax."""

from __future__ import annotations

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
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpeg_ls": JPEGLSLossless,
}


def phantom_stored(rng, shape=(64, 64), intercept=-1024, slope=1.0) -> np.ndarray:
    """Stored values of a disc of soft tissue with a bone spot in air, plus noise."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    hu = np.full(shape, -1000.0)
    hu[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.35 * h) ** 2] = 40.0
    hu[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (0.08 * h) ** 2] = 900.0
    hu += rng.normal(0, 10, shape)
    return np.rint((hu - intercept) / slope).astype(np.int32)


def ct_dataset(stored: np.ndarray, z: float, *, series_uid: str, study_uid: str = "1.2.3.4",
               patient_id: str = "PAT-0001", patient_name: str = "TEST^PATIENT", modality: str = "CT",
               slope: float | None = 1.0, intercept: float | None = -1024.0, padding: int | None = None,
               pixel_representation: int = 1, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
               iop=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.8), x0: float = -25.0, y0: float = -25.0,
               instance: int = 1, acquisition: int = 1, sop_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid(entropy_srcs=[series_uid, str(z), str(instance)])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID, ds.PatientName = modality, patient_id, patient_name
    ds.PatientBirthDate, ds.StudyDate, ds.InstitutionName = "19700101", "20200202", "Test Hospital"
    ds.Manufacturer, ds.ManufacturerModelName, ds.KVP, ds.ConvolutionKernel = "ACME", "CT-1", "120", "B30"
    ds.ImageType = list(image_type)
    ds.ImageOrientationPatient = list(iop)
    ds.ImagePositionPatient = [x0, y0, z]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = "2"
    ds.InstanceNumber, ds.AcquisitionNumber = instance, acquisition
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = pixel_representation
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if padding is not None:
        ds.PixelPaddingValue = padding
    dtype = np.int16 if pixel_representation else np.uint16
    ds.PixelData = stored.astype(dtype).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def save(ds: Dataset, path: Path, syntax: str = "explicit") -> Path:
    """Write ``ds`` in the named transfer syntax (compressing through the real encoders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    uid = SYNTAXES[syntax]
    ds = ds.copy()
    if syntax == "jpeg_lossless":
        return _gdcm_transcode(ds, path)
    if uid.is_compressed and not uid.is_deflated:
        ds.compress(uid, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True)
    return path


def _gdcm_transcode(ds: Dataset, path: Path) -> Path:
    import gdcm

    tmp = path.with_suffix(".plain")
    ds.save_as(tmp, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(tmp))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    tmp.unlink()
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return path


def enhanced_ct(frames: np.ndarray, zs, slopes, intercepts, *, series_uid: str,
                spacing=(0.8, 0.8), patient_id: str = "PAT-ENH") -> Dataset:
    """An Enhanced CT (multi-frame) data set; geometry and rescale in functional groups."""
    ds = ct_dataset(frames[0], zs[0], series_uid=series_uid, patient_id=patient_id)
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                 "RescaleIntercept", "SliceThickness"):
        delattr(ds, name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = list(spacing), "2"
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for z, slope, intercept in zip(zs, slopes, intercepts):
        item, position, transform, ftype = Dataset(), Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [-25.0, -25.0, float(z)]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
        ftype.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        item.PlanePositionSequence = [position]
        item.PixelValueTransformationSequence = [transform]
        item.CTImageFrameTypeSequence = [ftype]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = frames.astype(np.int16).tobytes()
    return ds
