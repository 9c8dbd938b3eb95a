"""Synthetic confounders for the shortcut experiment of the "source matters" study (``eval.protocols.confounders``),
applied to the stored image before it is prepared for a backbone (HU for CT, 0-255 for 8-bit images):

- ``tag``: a burned-in "R" marker (the laterality letter scanners and PACS stamp; the study's text tag) in the
  top-left corner, a quarter of the side tall, at the image's maximum (3000 HU for CT);
- ``patch``: a filled square of 1/8 of the image side at the top-left, at the maximum;
- ``noise``: Poisson (quantum) noise in the HU domain, as the study: counts ``(HU + 1024) / 3.5`` drawn from a
  Poisson law, about 60 HU standard deviation at water; Gaussian, 25 grey levels, on 8-bit images; seeded per
  image;
- ``lowpass``: a Gaussian blur of 2 pixels (a softer reconstruction kernel).

``confounded_set`` picks which positives carry it, nested as the fraction grows.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from scipy.ndimage import gaussian_filter

CONFOUNDERS = ("tag", "patch", "noise", "lowpass")

POISSON_HU_PER_COUNT = 3.5    # sqrt(1024 / 3.5) * 3.5 = 60 HU standard deviation at water (0 HU)


@functools.lru_cache(maxsize=16)
def _glyph(side: int) -> np.ndarray:
    """(side, side) boolean mask of the letter R."""
    from PIL import Image, ImageDraw, ImageFont

    small = Image.new("L", (8, 12), 0)
    ImageDraw.Draw(small).text((1, 0), "R", fill=255, font=ImageFont.load_default(size=11))
    box = small.getbbox() or (0, 0, 8, 12)
    letter = small.crop(box).resize((max(2, side * 2 // 3), side), Image.NEAREST)
    mask = np.zeros((side, side), bool)
    mask[:, : letter.width] = np.asarray(letter) > 127
    return mask


def _as_array(image) -> tuple[np.ndarray, bool]:
    if hasattr(image, "mode"):
        return np.asarray(image).copy(), True
    return np.asarray(image).copy(), False


def inject(image, kind: str, key: str = "") -> object:
    """``image`` with the confounder ``kind``; same type (HU int16 array, uint8 array or PIL image)."""
    from PIL import Image

    if kind not in CONFOUNDERS:
        raise ValueError(f"Unknown confounder '{kind}'. Valid confounders are {list(CONFOUNDERS)}.")
    arr, was_pil = _as_array(image)
    ct = arr.dtype == np.int16
    top = 3000 if ct else 255
    h, w = arr.shape[:2]
    out = arr.astype(np.float32)
    if kind == "tag":
        # An "R" laterality marker from Pillow's built-in bitmap font, scaled to a quarter of the side.
        side = max(6, min(h, w) // 4)
        out[1:1 + side, 1:1 + side][_glyph(side)] = top
    elif kind == "patch":
        side = max(2, min(h, w) // 8)
        out[1:1 + side, 1:1 + side] = top
    elif kind == "noise":
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        if ct:   # quantum (Poisson) noise in the HU domain: ~60 HU at water, more in dense tissue
            counts = np.clip(out + 1024.0, 0, None) / POISSON_HU_PER_COUNT
            out = rng.poisson(counts) * POISSON_HU_PER_COUNT - 1024.0
        else:
            out = out + rng.normal(0, 25.0, out.shape)
    else:
        sigma = (2.0, 2.0) + ((0.0,) if out.ndim == 3 else ())
        out = gaussian_filter(out, sigma)
    if ct:
        result = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    else:
        result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(result) if was_pil else result


def confounded_set(keys: list[str], positives: np.ndarray, fraction: float, seed: int) -> set[str]:
    """Keys of the positives that carry the confounder: the first ``fraction`` of a seeded
    permutation, so the sets are nested as the fraction grows."""
    pos = [k for k, p in zip(keys, positives) if p]
    order = np.random.default_rng(seed).permutation(len(pos))
    return {pos[i] for i in order[: int(round(fraction * len(pos)))]}
