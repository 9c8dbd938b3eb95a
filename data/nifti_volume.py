"""Load a CT volume file (NIfTI; NRRD and MetaImage through data.itk_volume) in HU and bring it to ctssl's
canonical frame (``load_volume``).

nibabel's ``get_fdata`` applies scl_slope / scl_inter (the loaded header shows them as NaN; the
values live on ``img.dataobj``). Orientation comes from the affine, never from the array order:
the voxel axes are permuted and flipped to L-P-S (NIfTI's world is RAS, DICOM's LPS; slice z is
the same number in both) and returned as [slice (inferior first), row (posterior), column
(patient left)], the same display convention as the DICOM path, so the same anatomy gives the
same slices whatever the file's affine. Only 3-D volumes are accepted (a trailing axis of length
1 is dropped); 4-D data (a time series or several channels: not a CT volume) and non-finite data are
reported, not guessed at. The values before clipping are summarised (``stats``), so the caller can tell data
that is not in HU (data.hounsfield.not_hounsfield).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctssl.data.guard import VolumeError
from ctssl.data.hounsfield import HU_CEILING, HU_FLOOR, ValueStats


MAX_VOXELS = 2048 * 1024 * 1024 // 4     # 2 GB of float32: more is a corrupt header, not a CT volume


NiftiError = VolumeError      # the name it had when NIfTI was the only volume format (data.guard.VolumeError)


def volume_kind(name: str) -> str:
    """"nifti", "nrrd" or "metaimage": the format of a volume file by its name."""
    from ctssl.data.itk_volume import itk_kind

    return itk_kind(str(name)) or "nifti"


@dataclass
class CanonicalVolume:
    hu: np.ndarray            # (n, H, W) float32 HU, inferior slice first
    z: np.ndarray             # (n,) world z of each slice, mm
    spacing: tuple[float, float]   # (row, column) pixel spacing, mm
    slice_spacing: float
    oblique_deg: float        # angle between the voxel axes and the nearest world axes
    affine: np.ndarray | None = None   # (4, 4) LPS world of voxel (c, r, k) of ``hu[k, r, c]`` (data.mask_placement)
    stats: ValueStats = field(default_factory=ValueStats)   # the values before clipping (data.hounsfield)


def slice_count(shape, affine) -> int:
    """How many axial slices ``load_nifti`` makes of a volume of ``shape`` with (RAS) ``affine``: the length of the
    voxel axis closest to the world's superior-inferior axis (not the longest axis: a single 512 x 512 slice is one
    slice). 0 for less than 3-D or an unusable affine."""
    if len(shape) < 3 or affine is None or not np.all(np.isfinite(affine)):
        return 0
    try:
        ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    except Exception:  # noqa: BLE001 - a degenerate affine: the task reports it when it loads the file
        return 0
    axis = [i for i in range(3) if ornt[i, 0] == 2]
    return int(shape[axis[0]]) if axis else 0


def volume_header(path) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, voxel -> RAS affine) of a volume file from its header alone (nibabel, or SimpleITK for NRRD and
    MetaImage). Raises on an unreadable header."""
    if volume_kind(path) != "nifti":
        from ctssl.data.itk_volume import itk_header

        size, affine, _ = itk_header(path)
        return size, affine
    img = nib.load(str(path))
    return tuple(img.shape), img.affine


def load_volume(path, hu_min: float = HU_FLOOR, hu_max: float = HU_CEILING) -> CanonicalVolume:
    """A NIfTI, NRRD or MetaImage CT volume, canonical (module docstring)."""
    if volume_kind(path) == "nifti":
        return load_nifti(path, hu_min, hu_max)
    from ctssl.data.itk_volume import read_itk

    data, affine = read_itk(path, MAX_VOXELS)
    return canonical(np.asarray(data, dtype=np.float32), affine, hu_min, hu_max)


def load_nifti(path, hu_min: float = HU_FLOOR, hu_max: float = HU_CEILING) -> CanonicalVolume:
    img = nib.load(str(path))
    shape = img.shape
    if len(shape) >= 3 and int(np.prod(shape[:3], dtype=np.int64)) > MAX_VOXELS:
        raise NiftiError(f"more than {MAX_VOXELS:,} voxels (a corrupt header?)")
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) > 3:
        raise NiftiError(f"not a CT volume: {len(shape)}-D image (a time series or several channels per voxel); "
                         "only 3-D volumes are ingested")
    if len(shape) != 3:
        raise NiftiError(f"{len(shape)}-D image (a single slice or less); only 3-D volumes are ingested")
    # The array proxy applies scl_slope / scl_inter on read.
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    return canonical(data, img.affine, hu_min, hu_max)


def canonical(data: np.ndarray, affine: np.ndarray | None, hu_min: float = HU_FLOOR,
              hu_max: float = HU_CEILING) -> CanonicalVolume:
    """``data`` [i, j, k] (float32) with its voxel -> RAS ``affine`` as a CanonicalVolume (module docstring)."""
    shape = data.shape
    if not np.all(np.isfinite(data)):
        raise NiftiError(f"non-finite values ({int((~np.isfinite(data)).sum())} voxels NaN or inf)")
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise NiftiError("invalid affine (not finite, or voxel axes of zero size)")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine          # RAS -> LPS world
    ornt = io_orientation(affine)
    to_lps = ornt_transform(ornt, axcodes2ornt(("L", "P", "S")))
    data = apply_orientation(data, to_lps)
    lps_affine = lps @ inv_ornt_aff(to_lps, shape)
    axes = lps_affine[:3, :3]
    sizes = np.linalg.norm(axes, axis=0)
    cosines = np.abs(np.diag(axes)) / sizes
    oblique = float(np.degrees(np.arccos(np.clip(cosines.min(), -1, 1))))
    volume = np.ascontiguousarray(data.transpose(2, 1, 0))   # [z, y, x]
    stats = ValueStats()
    stats.add(volume)
    np.clip(volume, hu_min, hu_max, out=volume)
    z = lps_affine[2, 3] + lps_affine[2, 2] * np.arange(volume.shape[0])
    return CanonicalVolume(volume, z, (float(sizes[1]), float(sizes[0])), float(sizes[2]), oblique, lps_affine,
                           stats)
