"""How much a training batch looks like a random sample of the corpus.

CT slices of one series are near-duplicates of their neighbours, so a batch drawn from few series
gives SimCLR false negatives and DINO a centre over few patients. Two numbers per batch, compared
with what sampling the batch uniformly without replacement (i.i.d.) from the whole corpus gives:

- distinct series in the batch (higher is better; i.i.d. is the ceiling);
- same-series pairs: pairs of samples of one series, ``sum_s C(n_s, 2)`` (lower is better), and
  among them near pairs, at most ``near`` slices apart.

``iid_expectation`` gives the i.i.d. figures in closed form (hypergeometric); ``simulate_iid`` draws
them, in the same run as the loader's, as a check. ``series_ordered_corpus`` writes shards shaped like
the ingest output (whole series in slice order, a fixed number of series per shard) with tiny images,
for the benchmark (``ctssl bench batches``) and the tests.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def batch_composition(series: Sequence[str], slices: Sequence[int], near: int = 2) -> dict:
    """Distinct series, same-series pairs and near pairs (same series, ``|slice difference| <= near``)
    of one batch, given each sample's series and slice index."""
    counts = Counter(series)
    by_series: dict[str, list[int]] = {}
    for s, i in zip(series, slices):
        by_series.setdefault(s, []).append(int(i))
    near_pairs = 0
    for positions in by_series.values():
        p = np.sort(np.asarray(positions))
        # pairs (a, b), a < b, with p[b] - p[a] <= near: for each a, count b's within reach
        near_pairs += int(np.sum(np.searchsorted(p, p + near, side="right") - np.arange(1, len(p) + 1)))
    return {"distinct_series": len(counts), "same_series_pairs": sum(n * (n - 1) // 2 for n in counts.values()),
            "near_pairs": near_pairs, "largest_series_share": max(counts.values()) if counts else 0}


def summarise(batches: Iterable[dict]) -> dict:
    """Mean (and min/max) of each figure over batches."""
    batches = list(batches)
    out = {"batches": len(batches)}
    for name in ("distinct_series", "same_series_pairs", "near_pairs", "largest_series_share"):
        values = [b[name] for b in batches]
        out[name] = {"mean": round(float(np.mean(values)), 2), "min": int(min(values)), "max": int(max(values))}
    return out


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) if 0 <= k <= n else -math.inf


def iid_expectation(series_sizes: Sequence[int], batch: int, near: int = 2) -> dict:
    """Expected figures of a batch drawn uniformly without replacement from a corpus whose series
    have ``series_sizes`` slices: distinct = sum_s 1 - C(N - n_s, B) / C(N, B); pairs =
    C(B, 2) sum_s n_s (n_s - 1) / (N (N - 1)); near pairs likewise with the corpus's near pairs."""
    n_total = int(sum(series_sizes))
    if not 0 < batch <= n_total:
        raise ValueError(f"batch must be in 1..{n_total}, got {batch}")
    distinct = sum(1 - math.exp(_log_comb(n_total - n, batch) - _log_comb(n_total, batch)) for n in series_sizes)
    pair_prob = batch * (batch - 1) / (n_total * (n_total - 1))
    pairs = pair_prob * sum(n * (n - 1) / 2 for n in series_sizes)
    corpus_near = sum(sum(max(0, n - d) for d in range(1, near + 1)) for n in series_sizes)
    return {"distinct_series": round(distinct, 2), "same_series_pairs": round(pairs, 2),
            "near_pairs": round(pair_prob * corpus_near, 2)}


def simulate_iid(samples: Sequence[tuple[str, int]], batch: int, batches: int, seed: int = 0, near: int = 2) -> dict:
    """``summarise`` of ``batches`` batches drawn uniformly without replacement from ``samples``
    ((series, slice) pairs)."""
    rng = random.Random(seed)
    drawn = []
    for _ in range(batches):
        pick = rng.sample(samples, batch)
        drawn.append(batch_composition([s for s, _ in pick], [i for _, i in pick], near))
    return summarise(drawn)


def series_ordered_corpus(out: str | Path, series: int = 240, slices: int = 125, series_per_shard: int = 40,
                          size: int = 8, seed: int = 0) -> Path:
    """Shards shaped like the ingest output: ``series`` series of ``slices`` slices each, whole series in
    slice order, ``series_per_shard`` series per shard, split ``train``; tiny ``size`` x ``size`` HU
    images (the layout, not the pixels, is what batch composition depends on). Cached in ``out``."""
    from ctssl import __version__
    from ctssl.shards.encoding import encode_hu
    from ctssl.shards.manifest import MANIFEST_NAME, build_manifest, write_manifest
    from ctssl.shards.writer import ShardWriter

    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        return out
    rng = np.random.default_rng(seed)
    shards, writer = [], None
    for s in range(series):
        if s % series_per_shard == 0:
            if writer is not None:
                shards.append(asdict(writer.close()))
            writer = ShardWriter(out, f"train-00000-{s // series_per_shard:05d}.tar", "train")
        name = f"{rng.integers(1 << 62):016x}"
        for i in range(slices):
            hu = rng.integers(-1024, 1500, (size, size)).astype(np.int16)
            meta = {"key": f"{name}-{i:05d}", "series": name, "patient": name, "study": name, "split": "train",
                    "slice_index": i, "source_slice_index": i, "z_mm": float(i), "shape": [size, size]}
            writer.add(f"{name}-{i:05d}", {"hu": encode_hu(hu), "json": json.dumps(meta).encode()})
        writer.series.append(name)
    shards.append(asdict(writer.close()))
    manifest = build_manifest(shards, {"synthetic": "series_ordered_corpus", "series": series, "slices": slices,
                                       "series_per_shard": series_per_shard}, __version__,
                              {"kind": "ct", "order": "series", "image_size": size})
    write_manifest(out, manifest)
    return out
