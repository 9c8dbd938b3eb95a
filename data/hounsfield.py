"""Stored pixel values to Hounsfield units, the CT way.

``HU = stored * RescaleSlope + RescaleIntercept``, per slice (slices of one series may differ).
Pixel Padding Value (and the range up to Pixel Padding Range Limit) marks pixels outside the
reconstruction; they, and anything below the HU floor, become air before any resampling, so
interpolation cannot smear padding into the body. Values are clipped to the valid range.

Missing rescale tags in a CT image (documented rule, see docs/ingest.md): slope 1; intercept
-1024 when Pixel Representation is unsigned (unsigned storage cannot hold air at -1000 HU, so
unsigned CT data is offset, as the usual 1 / -1024 convention has it), 0 when signed (the values
already are HU). Every use of the rule is counted in the ingest report.

Values that do not look like HU (``not_hounsfield``): a CT volume holds air (about -1000 HU) or at least fat
(-100..-50) around or inside the body. A volume whose lowest value is above ``NOT_HU_LOWEST`` (-100) while its
highest reaches ``NOT_HU_HIGHEST`` (1000) holds neither air nor fat yet values in the thousands: MR, PET or a CT
stored without its rescale (stored = HU + 1024). Ingest skips it with that reason unless told otherwise
(``allow_non_hu``), since clipping it to the HU range would write wrong numbers that look like CT. A tight
crop of soft tissue and bone (no fat at all) is the rare CT that fails the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HU_FLOOR = -1024.0   # air and everything outside the reconstruction
HU_CEILING = 3071.0  # top of the 12-bit CT range; metal above it is clipped
NOT_HU_LOWEST = -100.0    # no value below this (no air, lung or fat) ...
NOT_HU_HIGHEST = 1000.0   # ... and a maximum above this: not HU (module docstring)
NOT_HU_REASON = ("not Hounsfield units (nothing below -100 yet values above 1000: no air or fat; MR, PET, or CT "
                 "stored without its rescale?)")


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


def not_hounsfield(lowest: float, highest: float) -> str | None:
    """The skip reason when a volume's value range (before clipping, padding aside) does not look like HU, else
    None (module docstring)."""
    return NOT_HU_REASON if lowest > NOT_HU_LOWEST and highest > NOT_HU_HIGHEST else None
