"""The shortcut experiment: a synthetic confounder (tag, patch, noise, lowpass) in a growing
fraction of the positive training images and in every negative test image; each backbone is
probed (or fine-tuned) per fraction and scored on the clean and on the anti-correlated test set.
A backbone that makes models take the shortcut drops on the anti-correlated set.

Example (thorax slices of the synthetic corpus, an "R" marker on the positives):
  ctssl confounders --data runs/demo/shards-ct --label region --positive thorax --confounder tag \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors --out runs/demo/analysis
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset spec (as ctssl probe)")
    parser.add_argument("--backbone", action="append", required=True, help="backbone source (repeatable)")
    parser.add_argument("--label", default="lesion", help="label key (default lesion)")
    parser.add_argument("--positive", default="1", help="label value of the positive class (default 1)")
    parser.add_argument("--confounder", default="tag", choices=["tag", "patch", "noise", "lowpass"],
                        help="confounder (default tag)")
    parser.add_argument("--fraction", type=float, action="append", default=None,
                        help="fraction of positive training images confounded (repeatable; default 0 .1 .2 .5 .8 1)")
    parser.add_argument("--mode", default="probe", choices=["probe", "finetune"], help="probe (default) or finetune")
    parser.add_argument("--epochs", type=int, default=None, help="probe / fine-tuning epochs (default 50 / 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="backbone input size (default 0: each backbone at the size it was pretrained at, 224 without one)")
    parser.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (default 500)")
    parser.add_argument("--cache", default="", help="feature cache (default OUT/features)")
    parser.add_argument("--out", required=True, help="output folder (confounders/<name>.json)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.eval.measures.probe import ProbeConfig
    from ctssl.eval.protocols.confounders import ConfounderSettings, run_confounders
    from ctssl.eval.protocols.spec import EvalTarget
    from ctssl.finetune.finetune import FinetuneConfig

    setup_logging(args.log_level)
    settings = ConfounderSettings(positive=args.positive, mode=args.mode)
    if args.fraction:
        settings.fractions = args.fraction
    target = EvalTarget(data=args.data, label=args.label, backbones=args.backbone, image_size=args.image_size,
                        n_boot=args.n_boot)
    record = run_confounders(target, settings, args.out, args.confounder, args.seed,
                             probe=ProbeConfig(epochs=args.epochs or 50), finetune=FinetuneConfig(epochs=args.epochs or 5),
                             cache=args.cache)
    print(f"{'backbone':<48} {'fraction':>8} {'clean AUROC':>12} {'anti AUROC':>11} {'drop':>7}")
    for r in record["rows"]:
        clean, anti = r["clean"]["auroc"]["value"], r["confounded"]["auroc"]["value"]
        drop = r["drop"]["auroc"]
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"{r['backbone'][-48:]:<48} {r['fraction']:8.2f} {fmt(clean, '12.3f'):>12} {fmt(anti, '11.3f'):>11} "
              f"{fmt(drop, '+7.3f'):>7}")
    print(f"written: {record['json']}")
    return 0
