"""Linear probe on frozen features (DINOv2's protocol): a grid of learning rates x weight decays
trained together with SGD + cosine schedule on standardised features, the best chosen on the
validation split, reported on the test split; scikit-learn's LogisticRegression (C chosen on
validation) alongside as a cross-check.

Multi-class labels use class-weighted cross-entropy (``--no-balanced`` for plain); a label
``a+b+c`` is a multi-label task (one logistic loss per label, macro AUROC). One record per
backbone x fraction x seed in OUT/runs/, gathered in OUT/results.jsonl; paired comparisons of
each backbone against the first in OUT/comparisons.jsonl.

Example:
  ctssl probe --data runs/demo/shards-ct --label region --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors \\
      --fraction 0.1 --fraction 1 --seed 0 --seed 1 --seed 2
"""

from __future__ import annotations

import argparse

from ctssl.eval.commands.options import add_eval_options


def configure(parser: argparse.ArgumentParser) -> None:
    add_eval_options(parser)
    parser.add_argument("--lr", type=float, action="append", default=None,
                        help="learning rates of the grid (repeatable; default 1e-3 .. 3)")
    parser.add_argument("--wd", type=float, action="append", default=None,
                        help="weight decays of the grid (repeatable; default 0 1e-4 1e-3 1e-2)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs over the training features (default 100)")
    parser.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default 256)")
    parser.add_argument("--no-balanced", dest="balanced", action="store_false",
                        help="plain (not class-weighted) loss")
    parser.add_argument("--select", default="auto", choices=["auto", "accuracy", "balanced_accuracy", "auroc"],
                        help="validation metric choosing the grid point (auto: balanced accuracy, AUROC if multi-label)")
    parser.add_argument("--no-logreg", dest="logreg", action="store_false",
                        help="skip the scikit-learn LogisticRegression cross-check")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.eval.commands.options import eval_spec, finish
    from ctssl.eval.measures.probe import ProbeConfig
    from ctssl.eval.protocols.probe import run_probe

    setup_logging(args.log_level)
    cfg = ProbeConfig(epochs=args.epochs, batch_size=args.batch_size, balanced=args.balanced, select=args.select)
    if args.lr:
        cfg.lrs = args.lr
    if args.wd:
        cfg.weight_decays = args.wd
    records = run_probe(eval_spec(args), cfg, args.out, logreg=args.logreg, cache=args.cache)
    return finish(args, records)
