"""Benchmarks that anyone can rerun; each reports ratios against a baseline measured in the same
run, prints a table and writes JSON.

  ctssl bench ingest [--out DIR] [--matrix 512]
      ingest slices/s per core vs a naive pydicom + PNG16 baseline; JPEG 2000 input; shard
      decode slices/s; bytes per slice; candidate sample encodings
  ctssl bench plan-scale [--series 100000] [--slices 12000000] [--tasks 256]
      time and peak memory of the SLURM ingest's plan and merge phases on a synthetic header
      index of that size
  ctssl bench loader [--out DIR]
      CPU time per two-view SimCLR CT sample in the loader (device-side views) vs ctssl 0.1's
      per-sample CPU views and lightly's SimCLRTransform on PIL
  ctssl bench batches [--out DIR]
      distinct series and same-series pairs per 512-batch, series-ordered vs shuffled shards vs i.i.d.
  ctssl bench train [--out DIR]
      SimCLR ResNet-18 training images/s (CPU; GPU with bf16 + channels_last when present)
  ctssl bench knn [--out DIR]
      kNN queries/s: FAISS flat, streamed and IVF, torch brute force vs scikit-learn brute force
  ctssl bench extract [--out DIR]
      feature extraction images/s (data only, ResNet-18/50): batched in the main process and with 2
      loader workers, each vs the previous one-image-at-a-time path
  ctssl bench eval-scale [--out DIR]
      streamed exact kNN on a 200,000 x 2048 bank on disk, time and allocated memory, projected to 12M slices
  ctssl bench all [--out DIR] [--skip SUITE]
      every suite above (plan-scale at 1.2M slices), one table: OUT/bench-suite.md and .json
      (the table docs/benchmarks.md reproduces)
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from ctssl.bench.suite import SUITES

    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (_module, text) in SUITES.items():
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--out", default="runs/bench", help="work folder" + (
            "; the corpus is cached here" if name == "ingest" else " (needs ~ 2 GB per 12M slices)"
            if name == "plan-scale" else ""))
        if name == "ingest":
            cmd.add_argument("--matrix", type=int, default=512, help="input slice matrix (default 512)")
        if name == "plan-scale":
            cmd.add_argument("--series", type=int, default=100_000, help="series in the index (default 100000)")
            cmd.add_argument("--slices", type=int, default=12_000_000, help="images in all (default 12000000)")
            cmd.add_argument("--tasks", type=int, default=256, help="array tasks (default 256)")
    suite = sub.add_parser("all", help="every suite, one table (bench-suite.md / .json)")
    suite.add_argument("--out", default="runs/bench", help="work folder")
    suite.add_argument("--skip", action="append", default=[], help="suite to leave out (repeatable)")
    suite.add_argument("--scale-slices", type=int, default=1_200_000, help="plan-scale size (default 1200000)")


def run(args: argparse.Namespace) -> int:
    from ctssl.bench.suite import markdown, run_suite, suite
    from ctssl.core.logs import setup_logging

    setup_logging("WARNING")
    if args.suite == "all":
        result = run_suite(args.out, scale_series=max(1, args.scale_slices // 120), scale_slices=args.scale_slices,
                           skip=tuple(args.skip))
        print(markdown(result))
        print(f"written: {args.out}/bench-suite.md, {args.out}/bench-suite.json")
        return 0
    options = {"ingest": {"matrix": getattr(args, "matrix", None)},
               "plan-scale": {k: getattr(args, k, None) for k in ("series", "slices", "tasks")}}.get(args.suite, {})
    result = suite(args.suite).run(args.out, **options)
    print(suite(args.suite).format_table(result))
    print(f"written: {args.out}/{_result_file(args.suite, result)}")
    return 0


def _result_file(name: str, result: dict) -> str:
    if name == "plan-scale":
        return f"scale-{result['series']}-{result['slices']}.json"
    return f"{result['benchmark']}-bench.json"
