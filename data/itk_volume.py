"""Read NRRD and MetaImage volumes (``.nrrd``/``.nhdr``, ``.mha``/``.mhd``: LUNA16's format) through SimpleITK.

SimpleITK (ITK's reader, the one 3D Slicer and ITK-SNAP write these files with) gives the voxels and their
geometry in ITK's convention: index (i, j, k), origin, spacing and a direction matrix in the LPS world, as DICOM.
``read_itk`` returns the voxels in index order ``[i, j, k]`` with the voxel -> RAS affine nibabel would give for
the same file, so NIfTI, NRRD and MetaImage go through the same canonicalisation (data.nifti_volume) and
mask placement (data.label_volume). Neither format has a rescale: stored values are taken as they are (for CT,
HU; the non-HU rule of data.hounsfield catches the rest).

Only 3-D single-component images are accepted (a trailing 4th axis of length 1 is dropped); a header is read
before any pixel data, so absurd sizes are refused unread. SimpleITK's own messages name the file's path, so a
file it cannot read is ``VolumeError`` with a fixed reason; ITK's console warnings are switched off and what its
MetaImage and NRRD readers print straight to the process's stdout/stderr is silenced while a file is read (it
would bypass the library-message guard of data.guard, and may name the file).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import numpy as np

from ctssl.data.guard import VolumeError

ITK_SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}
# Detached pixel data that belongs to a header of the same name (a .mhd's .raw, a .nhdr's .raw.gz).
DETACHED_DATA = (".raw", ".zraw", ".raw.gz")
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_kind(name: str) -> str | None:
    """"nrrd" or "metaimage" for a file name of those formats, else None."""
    lower = name.lower()
    return next((kind for suffix, kind in ITK_SUFFIXES.items() if lower.endswith(suffix)), None)


def _sitk():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null for the block (C++ readers write there directly)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _affine(image, dimension: int) -> np.ndarray:
    """Voxel index (i, j, k) -> RAS mm of the first three axes."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    return RAS_FROM_LPS @ lps


def itk_header(path) -> tuple[tuple[int, ...], np.ndarray, int]:
    """(size (i, j, k, ...), voxel -> RAS affine, components per voxel) from the header alone. Raises VolumeError."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet():
            reader.ReadImageInformation()
    except RuntimeError:
        raise VolumeError(f"unreadable {itk_kind(str(path)) or 'ITK'} file (SimpleITK cannot read its header: "
                          "damaged, truncated, or its data file missing)") from None
    size = tuple(int(v) for v in reader.GetSize())
    dimension = len(size)
    if dimension < 3:
        return size, np.eye(4), int(reader.GetNumberOfComponents())
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(reader.GetSpacing(), dtype=np.float64)[None, :3]
    lps[:3, 3] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    return size, RAS_FROM_LPS @ lps, int(reader.GetNumberOfComponents())


def read_itk(path, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(voxels [i, j, k] as stored, voxel -> RAS affine) of a 3-D NRRD or MetaImage file. Raises VolumeError."""
    size, _, components = itk_header(path)
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) > 3:
        raise VolumeError(f"not a CT volume: {len(size)}-D image (a time series or several channels per voxel); "
                          "only 3-D volumes are ingested")
    if len(size) != 3:
        raise VolumeError(f"{len(size)}-D image (a single slice or less); only 3-D volumes are ingested")
    if components != 1:
        raise VolumeError(f"not a CT volume: {components} values per voxel (a colour or vector image)")
    if int(np.prod(size, dtype=np.int64)) > max_voxels:
        raise VolumeError(f"more than {max_voxels:,} voxels (a corrupt header?)")
    sitk = _sitk()
    try:
        with _quiet():
            image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise VolumeError(f"unreadable {itk_kind(str(path)) or 'ITK'} file (SimpleITK cannot read its pixel data: "
                          "damaged, truncated, or its data file missing)") from None
    data = sitk.GetArrayViewFromImage(image)           # [k, j, i] (or [t, k, j, i] with t = 1)
    data = np.asarray(data).reshape(tuple(reversed(size))).transpose(2, 1, 0)
    return np.array(data), _affine(image, image.GetDimension())
