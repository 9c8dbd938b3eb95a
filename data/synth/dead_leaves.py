"""A natural-image STAND-IN for ImageNet: procedural "dead leaves" images with classes.

ImageNet cannot be downloaded here, so the ImageNet comparison path of the demo runs on these
images instead. They are a stand-in for *natural images* (occlusion, edges at all scales,
colour, a 1/f-like spectrum, as in Lee, Mumford & Huang 2001 and Baradad et al. 2021, "Learning to
see by looking at noise"), not a substitute for ImageNet's content. Each class uses one family of
shapes, so a classifier has something to learn. Written as JPEG files in ImageFolder layout
(``ROOT/split/class/name.jpg``), exactly as an ImageNet train folder is laid out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ctssl.core.atomic import atomic_open

CLASSES = ("disks", "squares", "triangles", "bars")


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
           colour: tuple[int, int, int]) -> None:
    if kind == "disks":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        return
    if kind == "squares":
        corners = [(r, r), (-r, r), (-r, -r), (r, -r)]
    elif kind == "triangles":
        corners = [(r * math.cos(t), r * math.sin(t)) for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    elif kind == "bars":
        corners = [(2.2 * r, 0.35 * r), (-2.2 * r, 0.35 * r), (-2.2 * r, -0.35 * r), (2.2 * r, -0.35 * r)]
    else:
        raise ValueError(f"Unknown shape class '{kind}'. Valid classes are {CLASSES}.")
    c, s = math.cos(angle), math.sin(angle)
    draw.polygon([(cx + c * x - s * y, cy + s * x + c * y) for x, y in corners], fill=colour)


def dead_leaves_image(rng: np.random.Generator, kind: str, size: int = 96,
                      n_shapes: int = 250) -> Image.Image:
    """One RGB image: shapes of one class, radii ~ r^-3 (scale invariance), random colours."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    r_min, r_max = max(1.5, size / 64), size / 3
    # Inverse-CDF sampling of p(r) ~ r^-3 on [r_min, r_max].
    u = rng.random(n_shapes)
    radii = 1.0 / np.sqrt(1 / r_min**2 - u * (1 / r_min**2 - 1 / r_max**2))
    base = rng.integers(0, 256, 3)
    for r in sorted(radii, reverse=True):  # large leaves first, small ones on top
        colour = np.clip(base + rng.normal(0, 70, 3), 0, 255).astype(int)
        cx, cy = rng.uniform(-r, size + r, 2)
        _shape(draw, kind, cx, cy, float(r), float(rng.uniform(0, math.pi)), tuple(int(v) for v in colour))
    return img.filter(ImageFilter.GaussianBlur(radius=0.6))


def write_dead_leaves(root: str | Path, seed: int, n_classes: int, train_per_class: int,
                      val_per_class: int, size: int) -> dict[str, int]:
    """Write ``root/{train,val}/{class}/{nnnnn}.jpg``; skips files already there (resume)."""
    if not 1 <= n_classes <= len(CLASSES):
        raise ValueError(f"n_classes must be in 1..{len(CLASSES)}, got {n_classes}.")
    root = Path(root)
    counts: dict[str, int] = {}
    for split, per_class, split_id in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        for c, kind in enumerate(CLASSES[:n_classes]):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                path = folder / f"{kind}_{i:05d}.jpg"
                if not path.exists():
                    rng = np.random.default_rng([seed, 0xDEAD, split_id, c, i])
                    with atomic_open(path) as handle:
                        dead_leaves_image(rng, kind, size).save(handle, format="JPEG", quality=90)
            counts[f"{split}/{kind}"] = per_class
    return counts
