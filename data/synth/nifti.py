"""Write a planned synthetic study as a NIfTI-1 volume through nibabel.

The array is stored in a non-canonical voxel order with the matching affine (as converters such as
dcm2niix produce), so a reader must use the affine, not the array order, to find the anatomy:

- ``nifti_las_raw``: L-A-S voxel axes, int16 with ``scl_slope = 1, scl_inter = -1024`` set
  explicitly, padding outside the field of view at -3024 HU (below air);
- ``nifti_pir_auto``: P-I-R voxel axes (sagittal-first, superior->inferior), float HU handed to
  nibabel, which picks its own int16 ``scl_slope``/``scl_inter``; outside the field of view -1024.

World coordinates are RAS (NIfTI's convention): RAS = (-x, -y, z) of the DICOM LPS frame the
phantom uses, so a slice's ``z`` is the same number in both formats.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctssl.data.synth.study import SeriesPlan, StudyPlan

VARIANTS = {
    "nifti_las_raw": (("L", "A", "S"), "raw", -3024.0),
    "nifti_pir_auto": (("P", "I", "R"), "auto", -1024.0),
}


def canonical_affine(series: SeriesPlan) -> np.ndarray:
    """RAS affine of the array indexed [column (x), row (y), slice (z, inferior first)]."""
    ps = series.pixel_spacing
    affine = np.diag([-ps, -ps, series.spacing, 1.0])
    affine[:3, 3] = [-series.x0, -series.y0, float(series.z[0])]
    return affine


def build_image(plan: StudyPlan, series: SeriesPlan, hu: np.ndarray) -> nib.Nifti1Image:
    """The NIfTI image of ``hu`` ((n, H, W), inferior first) in the study's variant."""
    variant = next(q for q in plan.quirks if q in VARIANTS)
    axcodes, scaling, padding = VARIANTS[variant]
    volume = np.nan_to_num(hu, nan=padding).transpose(2, 1, 0)  # -> [x, y, z]
    affine = canonical_affine(series)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes))
    volume = apply_orientation(volume, transform)
    affine = affine @ inv_ornt_aff(transform, hu.transpose(2, 1, 0).shape)
    if scaling == "raw":
        raw = np.rint(volume + 1024.0).astype(np.int16)
        img = nib.Nifti1Image(raw, affine)
        img.header.set_slope_inter(1.0, -1024.0)
    else:
        img = nib.Nifti1Image(volume.astype(np.float32), affine)
        img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"ctssl synthetic CT"
    return img


def write_nifti(plan: StudyPlan, series: SeriesPlan, hu: np.ndarray, path: Path) -> Path:
    """Write to ``path`` (``.nii.gz``); nibabel gzips with mtime 0, so output is byte-stable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_image(plan, series, hu).to_filename(str(path))
    return path
