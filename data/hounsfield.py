"""Stored pixel values to Hounsfield units, the CT way.

``HU = stored * RescaleSlope + RescaleIntercept``, per slice (slices of one series may differ).
Pixel Padding Value (and the range up to Pixel Padding Range Limit) marks pixels outside the
reconstruction; they, and anything below the HU floor, become air before any resampling, so
interpolation cannot smear padding into the body. Values are clipped to the valid range.

Missing rescale tags in a CT image (documented rule, see docs/ingest.md): slope 1; intercept
-1024 when Pixel Representation is unsigned (unsigned storage cannot hold air at -1000 HU, so
unsigned CT data is offset, as the usual 1 / -1024 convention has it), 0 when signed (the values
already are HU). Every use of the rule is counted in the ingest report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HU_FLOOR = -1024.0   # air and everything outside the reconstruction
HU_CEILING = 3071.0  # top of the 12-bit CT range; metal above it is clipped


@dataclass(frozen=True)
class Rescale:
    slope: float
    intercept: float
    fallback: bool = False  # True when the CT fallback rule supplied the values


def rescale_or_fallback(slope, intercept, pixel_representation: int) -> Rescale:
    """The slice's rescale, or the documented CT fallback when the tags are absent."""
    if slope is not None and intercept is not None:
        return Rescale(float(slope), float(intercept))
    fallback_intercept = -1024.0 if int(pixel_representation) == 0 else 0.0
    return Rescale(float(slope) if slope is not None else 1.0,
                   float(intercept) if intercept is not None else fallback_intercept, True)


def padding_mask(stored: np.ndarray, padding_value, padding_range_limit=None) -> np.ndarray | None:
    """True where ``stored`` holds the padding value (or lies in the padding range)."""
    if padding_value is None:
        return None
    if padding_range_limit is None:
        return stored == padding_value
    lo, hi = sorted((int(padding_value), int(padding_range_limit)))
    return (stored >= lo) & (stored <= hi)


def to_hu(stored: np.ndarray, rescale: Rescale, padding: np.ndarray | None = None,
          hu_min: float = HU_FLOOR, hu_max: float = HU_CEILING) -> np.ndarray:
    """float32 HU image: rescaled, padding mapped to ``hu_min`` (air), clipped to the range."""
    if rescale.slope == 1.0 and float(rescale.intercept).is_integer():
        hu = stored.astype(np.float32)
        hu += np.float32(rescale.intercept)
    else:
        hu = stored.astype(np.float64) * rescale.slope + rescale.intercept
        hu = hu.astype(np.float32)
    if padding is not None:
        hu[padding] = hu_min
    np.clip(hu, hu_min, hu_max, out=hu)
    return hu
