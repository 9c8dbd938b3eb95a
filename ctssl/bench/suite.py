"""``ctssl bench all``: every benchmark suite in one run, one table of headline figures (each with
its baseline measured in the same run), written as JSON and as the Markdown table that
docs/benchmarks.md reproduces.

Suites: ingest (vs a naive pydicom + PNG16 baseline), plan-scale (SLURM plan/merge at 1.2M
slices by default; ``--scale-slices`` for 12M), loader (vs ctssl 0.1's views and lightly's transform),
batches (series-ordered vs shuffled shards vs i.i.d.),
train (SimCLR ResNet-18 steps), knn (FAISS vs scikit-learn), extract (batched vs one image).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ctssl.core.atomic import atomic_write_text


def _rows_ingest(r: dict) -> list[list[str]]:
    return [["ingest 512→256, one core", f"{r['ingest_slices_per_s_per_core']:,.0f} slices/s",
             f"naive pydicom + PNG16 {r['naive_baseline_slices_per_s_per_core']:,.1f}/s",
             f"{r['ingest_vs_baseline']:.1f}x"],
            ["ingest, JPEG 2000 input, one core", f"{r['ingest_jpeg2000_slices_per_s_per_core']:,.0f} slices/s", "", ""],
            ["shard decode, one core", f"{r['shard_decode_slices_per_s_per_core']:,.0f} slices/s",
             f"bare dcmread + LUT {r['read_only_slices_per_s_per_core']:,.0f}/s",
             f"{r['shard_decode_slices_per_s_per_core'] / r['read_only_slices_per_s_per_core']:.1f}x"],
            ["shard size", f"{r['shard_bytes_per_slice']:,} bytes/slice", "", ""]]


def _rows_plan_scale(r: dict) -> list[list[str]]:
    return [[f"SLURM ingest plan, {r['slices']:,} slices / {r['tasks']} tasks",
             f"{r['plan']['seconds']:.0f} s, {r['plan']['peak_rss_mb']:.0f} MB peak", "", ""],
            [f"SLURM ingest merge, {r['slices']:,} slices", f"{r['merge']['seconds']:.1f} s, "
             f"{r['merge']['peak_rss_mb']:.0f} MB peak", "", ""]]


def _rows_loader(r: dict) -> list[list[str]]:
    ms = r["cpu_ms_per_sample"]
    return [["loader CPU per two-view CT sample 224², one core (device-side views)", f"{ms['worker']:.3f} ms",
             f"ctssl 0.1 per-sample views {ms['legacy']:.3f} ms", f"{r['worker_vs_legacy']:.1f}x less"],
            ["ctssl 0.1 per-sample CT views, one core", f"{ms['legacy']:.3f} ms",
             f"lightly SimCLRTransform on PIL {ms['lightly']:.3f} ms", f"{r['legacy_vs_lightly']:.1f}x less"],
            ["device-side view rendering on this CPU", f"{ms['render']:.3f} ms per sample", "", ""]]


def _rows_batches(r: dict) -> list[list[str]]:
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


def _rows_train(r: dict) -> list[list[str]]:
    return [[f"SimCLR ResNet-18 step {row['image_size']}², batch {row['batch']}, {row['device']}",
             f"{row['images_per_s']:,.1f} images/s", "", ""] for row in r["rows"]]


def _rows_knn(r: dict) -> list[list[str]]:
    q, base = r["queries_per_s"], r["queries_per_s"]["sklearn_brute_cosine"]
    label = f"kNN k={r['k']}, bank {r['bank']:,}x{r['dim']}"
    rows = [[f"{label}: FAISS {name.removeprefix('faiss_').replace('_', ' ')}", f"{rate:,.0f} queries/s",
             f"scikit-learn brute force {base:,.0f}/s", f"{rate / base:.2f}x"]
            for name, rate in q.items() if name.startswith("faiss")]
    rows[-1][1] += f" (recall@k {r['ivf_recall_at_k']:.3f})" if "ivf" in rows[-1][0] else ""
    return rows


def _rows_extract(r: dict) -> list[list[str]]:
    """Per backbone and size: batched preparation in the main process (the CPU default) and ``workers``
    loader workers (the GPU default), each against the previous one-image-at-a-time path."""
    rows = []
    for row in r["rows"]:
        what = f"feature extraction {row['backbone']} {row['image_size']}², {row['device']}"
        previous = f"previous path (one image at a time, main process) {row['images_per_s_previous']:,.1f}/s"
        for how, rate in (("batched, main process", row["images_per_s_main_process"]),
                          (f"{r['workers']} loader workers", row["images_per_s_workers"])):
            rows.append([f"{what}, {how}", f"{rate:,.1f} images/s (12M slices: {12e6 / rate / 3600:,.0f} h)",
                         previous, f"{rate / row['images_per_s_previous']:.2f}x"])
    return rows


def _rows_scale(r: dict) -> list[list[str]]:
    m, p = r["measured"], r["projected_12m"]
    return [[f"streamed exact kNN, bank {r['bank_rows']:,}x{r['dim']} on disk, k={r['k']}",
             f"{m['queries_per_s']:,.1f} queries/s, {m['peak_allocated_mb']:,.0f} MB allocated", "", ""],
            [f"projected: bank {p['rows']:,}x{r['dim']} ({p['bank_gb_float32']:.0f} GB)",
             f"{p['queries_per_s']:.2f} queries/s, ~{p['allocated_mb']:,.0f} MB allocated", "", ""]]


def run_suite(out: str | Path, scale_series: int = 10_000, scale_slices: int = 1_200_000,
              skip: tuple[str, ...] = ()) -> dict:
    from ctssl.core.machine import machine_info
    from ctssl.bench.ingest import run_ingest_bench
    from ctssl.bench.plan_scale import run_scale_bench
    from ctssl.bench.eval import run_eval_bench
    from ctssl.bench.pretrain import run_pretrain_bench

    out = Path(out)
    suites = {
        "ingest": (lambda: run_ingest_bench(out)["results"], _rows_ingest),
        "plan-scale": (lambda: run_scale_bench(out, scale_series, scale_slices, 256), _rows_plan_scale),
        "loader": (lambda: run_pretrain_bench(out, "loader")["results"], _rows_loader),
        "batches": (lambda: run_pretrain_bench(out, "batches")["results"], _rows_batches),
        "train": (lambda: run_pretrain_bench(out, "train")["results"], _rows_train),
        "knn": (lambda: run_eval_bench(out, "knn")["results"], _rows_knn),
        "extract": (lambda: run_eval_bench(out, "extract")["results"], _rows_extract),
        "eval-scale": (lambda: run_eval_bench(out, "eval-scale")["results"], _rows_scale),
    }
    result = {"benchmark": "suite", "machine": machine_info(), "suites": {}, "rows": []}
    for name, (run, rows) in suites.items():
        if name in skip:
            continue
        start = time.perf_counter()
        data = run()
        result["suites"][name] = {"seconds": round(time.perf_counter() - start, 1), "results": data}
        result["rows"] += [[f"`ctssl bench {name}`", *row] for row in rows(data)]
    atomic_write_text(out / "bench-suite.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "bench-suite.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
             f"torch {m['torch']}; {m['date']}.", "",
             "| suite | what | figure | baseline (same run) | ratio |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in result["rows"]]
    return "\n".join(lines) + "\n"
