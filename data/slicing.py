"""2-D axial slices from a volume: output size, slice thinning, air filtering.

Resizing keeps physical proportions: the slice's field of view (rows x row spacing, columns x
column spacing) is fitted into ``size x size`` with square output pixels, antialiased (Pillow's
area-aware bilinear filter on float data), and the shorter side is padded with air. The output
pixel spacing goes into the sample's metadata. ``size = 0`` keeps the native matrix.

A segmentation mask is resized by ``resize_mask`` through exactly the same fit and padding, with nearest
neighbour sampling (Pillow samples every filter at the output pixel centres), so mask pixel (i, j) lies on
image pixel (i, j); its padding is background (0).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ctssl.data.hounsfield import HU_FLOOR


def fit(shape: tuple[int, int], spacing: tuple[float, float], size: int) -> tuple[int, int, int, int, float]:
    """(new_h, new_w, top, left, pixel mm) placing a (H, W) slice of ``spacing`` into ``size`` x ``size``."""
    h, w = shape
    extent_y, extent_x = h * spacing[0], w * spacing[1]
    pixel = max(extent_y, extent_x) / size
    new_h = max(1, min(size, int(round(extent_y / pixel))))
    new_w = max(1, min(size, int(round(extent_x / pixel))))
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2, pixel


def resize_slice(hu: np.ndarray, spacing: tuple[float, float], size: int,
                 fill: float = HU_FLOOR) -> tuple[np.ndarray, tuple[float, float]]:
    """(int16 HU image, (row, column) spacing in mm) at ``size`` x ``size`` (0 = native)."""
    if size == 0:
        return np.rint(hu).astype(np.int16), spacing
    new_h, new_w, top, left, pixel = fit(hu.shape, spacing, size)
    if (new_h, new_w) == hu.shape:
        resized = hu
    else:
        image = Image.fromarray(np.ascontiguousarray(hu, dtype=np.float32), mode="F")
        resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    out = np.full((size, size), fill, dtype=np.float32)
    out[top:top + new_h, left:left + new_w] = resized
    return np.rint(out).astype(np.int16), (pixel, pixel)


def resize_mask(mask: np.ndarray, spacing: tuple[float, float], size: int) -> np.ndarray:
    """uint8 (size, size) class ids (native (H, W) for ``size`` 0): ``resize_slice``'s geometry, nearest neighbour,
    padded with background."""
    if size == 0:
        return np.ascontiguousarray(mask, dtype=np.uint8)
    new_h, new_w, top, left, _ = fit(mask.shape, spacing, size)
    if (new_h, new_w) == mask.shape:
        resized = mask
    else:
        image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
        resized = np.asarray(image.resize((new_w, new_h), Image.NEAREST))
    out = np.zeros((size, size), dtype=np.uint8)
    out[top:top + new_h, left:left + new_w] = resized
    return out


def thin_positions(positions: np.ndarray, min_spacing: float) -> list[int]:
    """Indices of slices kept so consecutive kept slices are >= ``min_spacing`` mm apart."""
    if min_spacing <= 0 or len(positions) == 0:
        return list(range(len(positions)))
    keep = [0]
    for i in range(1, len(positions)):
        if positions[i] - positions[keep[-1]] >= min_spacing - 1e-6:
            keep.append(i)
    return keep


def air_fraction(hu: np.ndarray, threshold: float = -900.0) -> float:
    """Fraction of pixels below ``threshold`` HU (air)."""
    return float(np.mean(hu < threshold))
