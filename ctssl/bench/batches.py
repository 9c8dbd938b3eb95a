"""``ctssl bench batches``: what 512-sample batches are made of, on shards shaped like the ingest output
(whole series in slice order, 40 series of 125 slices per shard, 240 series): distinct series, same-series
pairs and near pairs (at most 2 slices apart) per batch for ctssl 0.1's loader (one shard per worker,
512-sample buffer), today's loader on the same shards, and today's loader on the same shards after
``ctssl shards shuffle``; against uniform sampling (i.i.d.), simulated in the same run and in closed form.
"""

from __future__ import annotations

import time
from pathlib import Path

from ctssl.bench.settings import BatchesBench

BENCHMARK = "pretrain-batches"        # its results: OUT/pretrain-batches-bench.json


def measure(cfg: BatchesBench) -> dict:
    from ctssl.pretrain.batch_stats import (batch_composition, iid_expectation, series_ordered_corpus,
                                            simulate_iid, summarise)
    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.loader import make_loader
    from ctssl.shards.reader import iter_samples
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    out, batch, batches, workers = Path(cfg.out), cfg.batch, cfg.batches, cfg.workers
    series, slices, per_shard = 240, 125, 40
    ordered = series_ordered_corpus(out / "batches-ordered", series, slices, per_shard)
    shuffled = out / "batches-shuffled"
    start = time.perf_counter()
    run_shuffle(ordered, shuffled, ShuffleConfig(shard_size_mb=4.0, bucket_mb=16.0), workers=2)
    shuffle_seconds = time.perf_counter() - start
    samples = [(s["meta"]["series"], s["meta"]["slice_index"]) for s in iter_samples(ordered)]

    def measure(folder: Path, interleave: int, buffer: int) -> dict:
        cfg = resolve_pretrain_config(None, None, [f"data.interleave={interleave}", f"data.shuffle_buffer={buffer}"],
                                      {"data.shards": str(folder)})
        found = []
        for b in make_loader(cfg, None, "meta", 0, 1, 0, batches, batch, workers):
            found.append(batch_composition([m["series"] for m in b["meta"]], [m["slice_index"] for m in b["meta"]]))
        return summarise(found)

    rows = {"ctssl 0.1 loader (one shard per worker, 512 buffer), series-ordered shards": measure(ordered, 1, 512),
            "loader (4 shards per worker, 1024 buffer), series-ordered shards": measure(ordered, 4, 1024),
            "loader (4 shards per worker, 1024 buffer), after ctssl shards shuffle": measure(shuffled, 4, 1024),
            "i.i.d. (uniform without replacement), simulated": simulate_iid(samples, batch, batches)}
    expected = iid_expectation([slices] * series, batch)
    return {"corpus": {"series": series, "slices_per_series": slices, "series_per_shard": per_shard,
                       "samples": series * slices}, "batch": batch, "batches": batches, "workers": workers,
            "shuffle_seconds": round(shuffle_seconds, 1), "iid_expected": expected, "rows": rows,
            "ratios_vs_iid": {name: {"distinct_series": round(r["distinct_series"]["mean"] / expected["distinct_series"], 3),
                                     "same_series_pairs": round(r["same_series_pairs"]["mean"] / expected["same_series_pairs"], 2)}
                              for name, r in rows.items()}}


def format_table(result: dict) -> str:
    r = result["results"]
    c = r["corpus"]
    lines = [f"batches of {r['batch']} from {c['series']} series x {c['slices_per_series']} slices "
             f"({c['series_per_shard']} series per shard), {r['batches']} batches, {r['workers']} workers",
             f"  {'':78} distinct series   same-series pairs   near pairs (<=2 apart)"]
    for name, row in r["rows"].items():
        lines.append(f"  {name:<78} {row['distinct_series']['mean']:>9.1f}  {row['same_series_pairs']['mean']:>15.1f}"
                     f"  {row['near_pairs']['mean']:>12.1f}")
    e = r["iid_expected"]
    lines.append(f"  {'i.i.d., closed form':<78} {e['distinct_series']:>9.1f}  {e['same_series_pairs']:>15.1f}"
                 f"  {e['near_pairs']:>12.1f}")
    return "\n".join(lines)


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    e, rows = r["iid_expected"], []
    for name, row in r["rows"].items():
        if name.startswith("i.i.d."):
            continue
        ratio = r["ratios_vs_iid"][name]
        rows.append([f"512-batch: {name}", f"{row['distinct_series']['mean']:.1f} series, "
                     f"{row['same_series_pairs']['mean']:.0f} same-series pairs",
                     f"i.i.d. {e['distinct_series']:.1f} series, {e['same_series_pairs']:.0f} pairs",
                     f"{ratio['distinct_series']:.2f}x series, {ratio['same_series_pairs']:.2f}x pairs"])
    return rows
