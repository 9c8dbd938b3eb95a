"""Read a label volume (a segmentation mask: NIfTI, NRRD or MetaImage) for placement on its image
(data.mask_placement).

A label volume must be a 3-D (or 3-D with a trailing axis of length 1) map of integer class values 0..255,
with a finite, non-degenerate affine; values are read through nibabel's array proxy (scl_slope/scl_inter
applied, as for images) and must be integers (within 1e-3: float storage of integers). The affine is
nibabel's (sform, else qform), or SimpleITK's geometry for NRRD and MetaImage (data.itk_volume), turned from RAS
into the LPS world the rest of ingest uses. Anything else
raises ``MaskError`` with its reason: an empty file, an unreadable one (nibabel's exception type), a 4-D map,
non-integer, negative or too large values.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from ctssl.data.mask_placement import MaskError
from ctssl.data.nifti_volume import MAX_VOXELS, VolumeError, volume_kind

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_label_volume(path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 labels (I, J, K) as stored, (4, 4) voxel index -> LPS world affine)."""
    if os.path.getsize(path) == 0:
        raise MaskError("empty mask file (0 bytes)")
    if volume_kind(path) != "nifti":
        from ctssl.data.itk_volume import read_itk

        try:
            data, affine = read_itk(path, MAX_VOXELS)
        except VolumeError as err:
            raise MaskError(f"the mask file: {err}") from None
        return as_labels(data), RAS_TO_LPS @ affine
    img = nib.load(str(path))
    shape = tuple(int(v) for v in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise MaskError(f"{len(img.shape)}-D mask (shape {tuple(img.shape)}); a label volume is 3-D")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels == 0:
        raise MaskError("empty mask (no voxels)")
    if voxels > MAX_VOXELS:
        raise MaskError(f"more than {MAX_VOXELS:,} voxels (a corrupt header?)")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise MaskError("invalid affine (not finite, or voxel axes of zero size)")
    data = np.asanyarray(img.dataobj).reshape(shape)
    return as_labels(data), RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)


def as_labels(data: np.ndarray) -> np.ndarray:
    """uint8 class values of ``data``, or MaskError when they are not integers in 0..255."""
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise MaskError("non-finite mask values (NaN or inf)")
        rounded = np.rint(data)
        if np.abs(data - rounded).max() > 1e-3:
            raise MaskError("non-integer mask values (a probability map or an image, not a label map)")
        data = rounded
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise MaskError(f"mask values of type {data.dtype}, not integers")
    low, high = data.min(), data.max()
    if low < 0 or high > 255:
        raise MaskError(f"mask values outside 0..255 (from {low:g} to {high:g}): not a label map")
    return data.astype(np.uint8)
