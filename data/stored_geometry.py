"""Where a stored slice's pixels lie in the world, and one affine for a series' stored slices.

At ingest, each written slice records ``affine_lps``: the 4 x 4 map from voxel (column C, row R, s) of the stored
(resized) image to DICOM LPS mm, where s counts source slices from this one (its third column is the step to the
next source slice of the series). It comes from the source slice's world grid (data.mask_placement.SliceGrid:
DICOM Image Position/Orientation or the volume file's affine, after ingest's flips and transposes) and the resize's
exact geometry (data.slicing.fit): the stored pixel (R, C) samples the source at continuous pixel
((R - top + 0.5) h / new_h - 0.5, (C - left + 0.5) w / new_w - 0.5), Pillow's pixel-centre convention for both
the bilinear image and the nearest-neighbour mask, padding included (it extends the same lattice).

``series_affine`` joins a series' stored slices into one volume: the written source slices lie on one lattice
(every g-th source slice, g the greatest common divisor of their index steps) when their origins follow the first
slice's step; the volume then has one slot per lattice point (slots without a written slice stay empty) and the
affine of the first slice with g steps per slot. A series whose slices do not lie on one lattice (uneven DICOM
spacing) gets the mean step, and the distance by which its slices miss it is returned, so the caller can say so.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from ctssl.data.mask_placement import SliceGrid
from ctssl.data.slicing import fit

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slice_step(grid: SliceGrid, k: int, thickness: float | None = None) -> np.ndarray:
    """World step (mm) from source slice k to the next (the previous step for the last slice; the normal times the
    slice thickness, else 1 mm, for a single slice)."""
    if grid.n > 1:
        a, b = (k, k + 1) if k + 1 < grid.n else (k - 1, k)
        return grid.origins[b] - grid.origins[a]
    return grid.normal * float(thickness or 1.0)


def slice_affine(grid: SliceGrid, k: int, spacing: tuple[float, float], size: int,
                 thickness: float | None = None) -> np.ndarray:
    """(4, 4) voxel (C, R, s) of stored slice k -> LPS mm (module docstring). ``spacing``: the source slice's (row,
    column) pixel spacing, ``size``: ingest's image size (0 = native)."""
    h, w = grid.shape
    if size:
        new_h, new_w, top, left, _ = fit((h, w), spacing, size)
    else:
        new_h, new_w, top, left = h, w, 0, 0
    sy, sx = h / new_h, w / new_w
    r0, c0 = (0.5 - top) * sy - 0.5, (0.5 - left) * sx - 0.5
    affine = np.eye(4)
    affine[:3, 0] = grid.col_step * sx
    affine[:3, 1] = grid.row_step * sy
    affine[:3, 2] = slice_step(grid, k, thickness)
    affine[:3, 3] = grid.origins[k] + r0 * grid.row_step + c0 * grid.col_step
    return affine


def series_affine(source_indices: list[int], affines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """(slot of each slice, (4, 4) voxel (C, R, slot) -> LPS affine of the volume, how far (mm) the worst slice lies
    off it) for a series' stored slices in order (module docstring)."""
    indices = np.asarray(source_indices, dtype=np.int64)
    first = np.asarray(affines[0], dtype=np.float64)
    if len(indices) < 2:
        return np.zeros(len(indices), dtype=np.int64), first, 0.0
    gaps = np.diff(indices)
    g = int(reduce(math.gcd, (int(v) for v in gaps))) or 1
    slots = (indices - indices[0]) // g
    origins = np.stack([np.asarray(a, dtype=np.float64)[:3, 3] for a in affines])
    step = first[:3, 2] * g
    off = float(np.abs(origins - (origins[0] + slots[:, None] * step[None, :])).max())
    if off > 1e-3:       # not one lattice: the mean step over the series
        step = (origins[-1] - origins[0]) / max(int(slots[-1]), 1)
        off = float(np.abs(origins - (origins[0] + slots[:, None] * step[None, :])).max())
    out = first.copy()
    out[:3, 2] = step
    return slots, out, off
