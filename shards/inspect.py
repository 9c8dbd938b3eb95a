"""Summaries of a shard folder: counts, HU histogram, mask pixels per class, a contact sheet under a chosen
window with segmentation masks drawn over their slices (data.contact_sheet)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ctssl.core.atomic import atomic_write_text
from ctssl.data.contact_sheet import Tile, save_contact_sheet
from ctssl.data.windowing import get_window
from ctssl.shards.manifest import load_manifest
from ctssl.shards.reader import iter_samples

HIST_EDGES = np.arange(-1024, 3072 + 64, 64)


def inspect_shards(folder: str | Path, out: str | Path, window: str = "soft_tissue",
                   n_tiles: int = 24, seed: int = 0) -> dict:
    """Write ``out/summary.json`` and ``out/contact_sheet.png``; return the summary."""
    level_width = get_window(window)
    counts = {name: Counter() for name in ("split", "manufacturer", "body_part", "source")}
    labels: dict[str, Counter] = {}
    hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    reservoir: list[tuple[np.ndarray, str, np.ndarray | None]] = []
    mask_pixels: Counter = Counter()
    mask_slices = total = 0
    for sample in iter_samples(folder):
        meta = sample["meta"]
        for name, counter in counts.items():
            counter[meta.get(name) or "unknown"] += 1
        for name, value in (meta.get("labels") or {}).items():
            labels.setdefault(name, Counter())[str(value)] += 1
        hist += np.histogram(sample["hu"], bins=HIST_EDGES)[0]
        caption = f"{meta['split']} {meta.get('body_part') or meta['source']} z={meta['z_mm']:.0f}"
        mask = sample.get("mask")
        if mask is not None:
            mask_slices += 1
            mask_pixels.update({int(c): int(n) for c, n in enumerate(np.bincount(mask.ravel())) if n})
        # Reservoir sampling: a uniform random choice of slices in one pass.
        if len(reservoir) < n_tiles:
            reservoir.append((sample["hu"], caption, mask))
        else:
            j = int(rng.integers(0, total + 1))
            if j < n_tiles:
                reservoir[j] = (sample["hu"], caption, mask)
        total += 1
    if total == 0:
        raise ValueError(f"No samples in '{folder}'.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = [Tile(hu.astype(np.float32), level_width, caption, mask) for hu, caption, mask in reservoir]
    names = _class_names(folder)
    save_contact_sheet(tiles, out / "contact_sheet.png", columns=6, tile_size=128,
                       legend={int(k): v for k, v in names.items()})
    summary = {
        "samples": total,
        **{f"per_{name}": dict(sorted(c.items())) for name, c in counts.items()},
        "labels": {k: dict(sorted(v.items())) for k, v in sorted(labels.items())},
        "hu_histogram": {"edges": HIST_EDGES.tolist(), "counts": hist.tolist()},
        "window": {"name": window, "level": level_width[0], "width": level_width[1]},
    }
    if mask_slices:
        summary["masks"] = {"slices": mask_slices, "pixels": {f"{c} {names.get(str(c), '')}".strip(): n
                                                                for c, n in sorted(mask_pixels.items())}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _class_names(folder: str | Path) -> dict[str, str]:
    """Class id -> name from the folder's manifest (empty when there is none, or no segmentation)."""
    try:
        return load_manifest(folder).get("segmentation", {}).get("labels", {})
    except (FileNotFoundError, ValueError):
        return {}
