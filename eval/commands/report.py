"""Gather every result in an output folder (probe, kNN, fine-tuning, similarity, gap, confounders)
into OUT/report.html (self-contained: figures embedded, opens offline) and OUT/report.md.

Example:
  ctssl report --out runs/demo/eval
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the results folder (results.jsonl, similarity/, gap/, ...)")
    parser.add_argument("--title", default="ctssl evaluation report", help="report title")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of paired comparisons")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.core.logs import setup_logging
    from ctssl.eval.report.build import write_report
    from ctssl.eval.records.comparisons import collate

    setup_logging(args.log_level)
    if not Path(args.out).is_dir():
        raise FileNotFoundError(f"Results folder '{args.out}' does not exist.")
    if (Path(args.out) / "runs").exists():
        collate(args.out, args.n_boot)
    html, markdown = write_report(args.out, args.title)
    print(f"report: {html}\nsummary: {markdown}")
    return 0
