"""Run the study in miniature on the embedded synthetic data and print where the report is.

Stages (each skipped when already complete, so a rerun resumes): synthetic CT corpus and
natural-image stand-in; CT shards, shuffled for pretraining; natural-image shards; SimCLR and DINO on
CT, SimCLR on natural images; on held-out patients, for random init and the three pretrained backbones:
lesion presence (kNN, linear probe, fine-tuning with an lr grid chosen on validation) and body region
(kNN, linear probe); CKA/CCA similarity; domain gap; the confounder experiment; segmentation on a second
corpus; OUT/eval/report.html and OUT/summary.md (with each stage's time).

  ctssl demo                 # 40 patients (10 test patients: intervals and paired tests)
  ctssl demo --quick         # 8 patients, every stage; what the tests run
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ctssl.core.options import Settings


@dataclass
class DemoConfig:
    out: str = "runs/demo"         # output folder
    quick: bool = False            # a smaller, faster run (what the tests run)


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, DemoConfig, example="quick=true")
    settings.option("--out", key="out", help="output folder")
    settings.switch("--quick", key="quick", value=True, help="a smaller, faster run (tests use it)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.cli.demo import run_demo
    from ctssl.core.config import save_config
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve

    cfg = resolve(args)
    save_config(cfg, Path(cfg.out) / "demo-config.yaml")
    setup_logging(args.log_level, Path(cfg.out) / "demo.log")
    result = run_demo(cfg.out, cfg.quick)
    print()
    print(Path(result["summary"]).read_text())
    print(f"summary: {result['summary']}\nreport: {result['report']}")
    return 0
