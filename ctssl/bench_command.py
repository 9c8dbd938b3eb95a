"""Benchmarks that anyone can rerun; each reports ratios against a baseline measured in the same
run, prints a table and writes JSON.

  ctssl bench ingest [--out DIR] [--matrix 512]
      ingest slices/s per core vs a naive pydicom + PNG16 baseline; JPEG 2000 input; shard
      decode slices/s; bytes per slice; candidate sample encodings
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    ingest = sub.add_parser("ingest", help="ingest, shard decode and encoding benchmark")
    ingest.add_argument("--out", default="runs/bench", help="work folder; the corpus is cached here")
    ingest.add_argument("--matrix", type=int, default=512, help="input slice matrix (default 512)")


def run(args: argparse.Namespace) -> int:
    from ctssl.logs import setup_logging

    setup_logging("WARNING")
    if args.suite == "ingest":
        from data.ingest_bench import format_table, run_ingest_bench

        result = run_ingest_bench(args.out, args.matrix)
        print(format_table(result))
        print(f"written: {args.out}/ingest-bench.json")
    return 0
