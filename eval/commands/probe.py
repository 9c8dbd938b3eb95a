"""Linear probe on frozen features (DINOv2's protocol): a grid of learning rates x weight decays
trained together with SGD + cosine schedule on standardised features, the best chosen on the
validation split, reported on the test split; scikit-learn's LogisticRegression (C chosen on
validation) alongside as a cross-check.

Multi-class labels use class-weighted cross-entropy (``--no-balanced`` for plain); a label
``a+b+c`` is a multi-label task (one logistic loss per label, macro AUROC). One record per
backbone x fraction x seed in OUT/runs/, gathered in OUT/results.jsonl; paired comparisons of
each backbone against the first in OUT/comparisons.jsonl; the resolved settings in OUT/probe-config.yaml.

Example:
  ctssl probe --data runs/demo/shards-ct --label region --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors \\
      --fraction 0.1 --fraction 1 --seed 0 --seed 1 --seed 2 --set probe.epochs=50
"""

from __future__ import annotations

import argparse

from ctssl.eval.commands.options import eval_settings

SETTINGS = "ctssl.eval.commands.settings:ProbeCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = eval_settings(parser, SETTINGS, "probe.epochs=50", cache=True)
    settings.option("--lr", key="probe.lrs", type=float, action="append",
                    help="learning rates of the grid (repeatable)")
    settings.option("--wd", key="probe.weight_decays", type=float, action="append",
                    help="weight decays of the grid (repeatable)")
    settings.option("--epochs", key="probe.epochs", type=int, help="epochs over the training features")
    settings.option("--batch-size", key="probe.batch_size", type=int, help="mini-batch size")
    settings.switch("--no-balanced", key="probe.balanced", value=False, help="plain (not class-weighted) loss")
    settings.option("--select", key="probe.select", choices=["auto", "accuracy", "balanced_accuracy", "auroc"],
                    help="validation metric choosing the grid point (auto: balanced accuracy, AUROC if binary or "
                         "multi-label)")
    settings.switch("--no-logreg", key="logreg", value=False,
                    help="skip the scikit-learn LogisticRegression cross-check")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import finish, prepare
    from ctssl.eval.protocols.probe import run_probe

    cfg = resolve(args)
    prepare("probe", cfg)
    setup_logging(args.log_level)
    return finish(cfg, run_probe(cfg, cfg.probe, cfg.out, logreg=cfg.logreg, cache=cfg.cache))
