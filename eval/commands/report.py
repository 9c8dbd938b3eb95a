"""Gather every result in an output folder (probe, kNN, fine-tuning, similarity, gap, confounders)
into OUT/report.html (self-contained: figures embedded, opens offline) and OUT/report.md, every run as one row
of OUT/results.csv; the resolved settings in OUT/report-config.yaml. --log-with TRACKER also sends each run to
an Accelerate tracker (MLflow, W&B, TensorBoard, ...).

Example:
  ctssl report --out runs/demo/eval --set n_boot=500
"""

from __future__ import annotations

import argparse

from ctssl.core.options import Settings

SETTINGS = "ctssl.eval.commands.settings:ReportCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, SETTINGS, example="n_boot=500")
    settings.option("--out", key="out", help="the results folder (results.jsonl, similarity/, gap/, ...)")
    settings.option("--title", key="title", help="report title")
    settings.option("--n-boot", key="n_boot", type=int, help="bootstrap resamples of paired comparisons")
    settings.option("--baseline", key="baseline",
                    help="the backbone every other is compared with (a source or readable name); none: the first "
                         "natural-image-pretrained one, else the first")
    settings.option("--adjust", key="adjust", choices=["holm", "bh"],
                    help="multiplicity adjustment of each table's p-values: holm (family-wise error) or bh "
                         "(Benjamini-Hochberg false discovery rate)")
    settings.option("--log-with", key="log_with", action="append", metavar="TRACKER",
                    help="also send every evaluation run (not sent before) to this Accelerate tracker: tensorboard, "
                         "mlflow (MLFLOW_TRACKING_URI), wandb (WANDB_MODE=offline), ...; repeatable")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import require, write_settings
    from ctssl.eval.records.comparisons import collate
    from ctssl.eval.report.build import write_report

    cfg = resolve(args)
    require("report", cfg, "out")
    if not Path(cfg.out).is_dir():
        raise FileNotFoundError(f"Results folder '{cfg.out}' does not exist.")
    write_settings(cfg, Path(cfg.out) / "report-config.yaml")
    setup_logging(args.log_level)
    if (Path(cfg.out) / "runs").exists():
        collate(cfg.out, cfg.n_boot, cfg.baseline)
        if cfg.log_with:
            from ctssl.eval.records.store import RunStore, load_names
            from ctssl.eval.records.table import log_records

            sent = log_records(RunStore(cfg.out).records(), cfg.out, list(cfg.log_with), load_names(cfg.out))
            print(f"trackers: {sent} evaluation run(s) sent to {', '.join(cfg.log_with)}")
    html, markdown = write_report(cfg.out, cfg.title, cfg.adjust)
    print(f"report: {html}\nsummary: {markdown}")
    return 0
