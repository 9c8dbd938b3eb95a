"""Run the study in miniature on the embedded synthetic data and print where the report is.

Stages (each skipped when already complete, so a rerun resumes): synthetic CT corpus and
natural-image stand-in; CT shards, shuffled for pretraining; natural-image shards; SimCLR and DINO on
CT, SimCLR on natural images; on held-out patients, for random init and the three pretrained backbones:
lesion presence (kNN, linear probe, fine-tuning with an lr grid chosen on validation) and body region
(kNN, linear probe); CKA/CCA similarity; domain gap; the confounder experiment; OUT/eval/report.html
and OUT/summary.md.

  ctssl demo                 # about 11 minutes on 2 CPU cores
  ctssl demo --quick         # about 2 minutes; what the tests run
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (tests use it)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.core.config import ConfigError
    from ctssl.cli.demo import run_demo
    from ctssl.core.logs import setup_logging

    if args.config or args.overrides:
        raise ConfigError("ctssl demo has fixed settings (--quick or not); to change them, run the "
                          "stages one by one as the README shows.")

    setup_logging(args.log_level, Path(args.out) / "demo.log")
    result = run_demo(args.out, args.quick)
    print()
    print(Path(result["summary"]).read_text())
    print(f"summary: {result['summary']}\nreport: {result['report']}")
    return 0
