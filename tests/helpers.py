"""Small readers and stand-ins the tests share (independent of ctssl's own ingest code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.pixels import apply_modality_lut


def read_dicom_folder(folder: Path):
    """[(path, dataset)] of every DICOM file in ``folder``, whatever its name; others skipped.

    A file without file meta is read as implicit VR little endian, as pydicom parses it.
    """
    out = []
    for path in sorted(Path(folder).iterdir()):
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        if "SOPInstanceUID" not in ds:
            continue
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        out.append((path, ds))
    return out


def reference_hu(ds) -> np.ndarray:
    """Independent reference: pydicom's modality LUT, padding and the floor to -1024, clipped."""
    stored = ds.pixel_array
    hu = apply_modality_lut(stored, ds).astype(np.float64)
    if "PixelPaddingValue" in ds:
        hu[stored == ds.PixelPaddingValue] = -1024
    return np.clip(np.rint(hu), -1024, 3071)


class ExportHolder(torch.nn.Module):
    """A stand-in for a pretraining method around ``backbone``: what ``pretrain.checkpoint.export_backbone``
    exports (its ``export_backbone``), so that tests can export a backbone without training one."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    @property
    def export_backbone(self):
        return self.backbone
