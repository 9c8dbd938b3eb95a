"""The shortcut experiment: a synthetic confounder (tag, patch, noise, lowpass) in a growing
fraction of the positive training images and in every negative test image; each backbone is
probed (or fine-tuned) per fraction and scored on the clean and on the anti-correlated test set.
A backbone that makes models take the shortcut drops on the anti-correlated set. Results in
OUT/confounders/<name>.json with a figure and the resolved settings (<name>-config.yaml) beside it.

Example (thorax slices of the synthetic corpus, an "R" marker on the positives):
  ctssl confounders --data runs/demo/shards-ct --label region --positive thorax --confounder tag \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors --out runs/demo/analysis \\
      --set confounders.fractions=[0,0.5,1]
"""

from __future__ import annotations

import argparse

from ctssl.core.options import Settings
from ctssl.eval.commands.options import add_cache, add_record_options, add_target_options

SETTINGS = "ctssl.eval.commands.settings:ConfoundersCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, SETTINGS, example="confounders.fractions=[0,0.5,1]")
    add_target_options(settings)
    settings.option("--positive", key="confounders.positive", help="label value of the positive class")
    settings.option("--confounder", key="confounder", choices=["tag", "patch", "noise", "lowpass"], help="confounder")
    settings.option("--fraction", key="confounders.fractions", type=float, action="append",
                    help="fraction of positive training images confounded (repeatable)")
    settings.option("--mode", key="confounders.mode", choices=["probe", "finetune"], help="probe or finetune")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the probe or fine-tuning, whichever --mode runs (sets probe.epochs and "
                             "finetune.epochs; defaults: see --set)")
    settings.option("--seed", key="seed", type=int, help="seed")
    add_cache(settings)
    add_record_options(settings, "confounders", "CONFOUNDER-DATASET")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import prepare_record
    from ctssl.eval.protocols.confounders import confounders_name, run_confounders

    if args.epochs is not None:        # one option for the learner --mode picks: both keys, set last
        args.overrides = [*args.overrides, f"probe.epochs={args.epochs}", f"finetune.epochs={args.epochs}"]
    cfg = resolve(args)
    name = prepare_record("confounders", cfg, "confounders", confounders_name(cfg.confounder, cfg.data), "data",
                          "backbones")
    setup_logging(args.log_level)
    record = run_confounders(cfg, cfg.confounders, cfg.out, cfg.confounder, cfg.seed, cfg.probe, cfg.finetune,
                             cfg.cache, name)
    print(f"{'backbone':<48} {'fraction':>8} {'clean AUROC':>12} {'anti AUROC':>11} {'drop':>7}")
    for r in record["rows"]:
        clean, anti = r["clean"]["auroc"]["value"], r["confounded"]["auroc"]["value"]
        drop = r["drop"]["auroc"]
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"{r['backbone'][-48:]:<48} {r['fraction']:8.2f} {fmt(clean, '12.3f'):>12} {fmt(anti, '11.3f'):>11} "
              f"{fmt(drop, '+7.3f'):>7}")
    print(f"written: {record['json']}")
    return 0
