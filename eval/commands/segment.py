"""Segmentation transfer: a U-Net decoder on each backbone's encoder (ResNet skips from the stem and every
stage; ViT-S/16 through a simple feature pyramid), the encoder frozen (only the decoder trained: the
RadNet-12M study's "linear" arm) and/or fine-tuned, on shards with masks (docs/segmentation.md), over
--fraction (of the training patients) x --seed. Every backbone gets the same epochs and its own learning
rate, chosen on the validation cases' mean Dice; the best-validation and the final model are both tested
(variants "<protocol> best_val" and "<protocol> final"). Test measures per case (a series' slices in order):
Dice per class and their mean, HD95 and normalised surface Dice in mm, with patient-bootstrap CIs, and the
RadNet-12M study's slice-pooled Dice, labelled as such. One record per run in OUT/runs/, gathered in
OUT/results.jsonl; paired patient-level comparisons against the first backbone in OUT/comparisons.jsonl;
the resolved settings in OUT/segment-config.yaml.

Example:
  ctssl segment --data runs/demo/shards-ct --class liver --class liver_lesion --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors \\
      --protocol frozen --protocol finetune --fraction 0.1 --fraction 1 --epochs 10 --set segment.patience=3
"""

from __future__ import annotations

import argparse

from ctssl.core.options import Settings
from ctssl.eval.commands.options import add_baseline, add_overlap

SETTINGS = "ctssl.eval.commands.settings:SegmentCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, SETTINGS, "segment.epochs=5")
    settings.option("--data", "--shards", key="data", help="a shard folder whose samples carry masks")
    settings.option("--class", key="classes", action="append",
                    help="foreground class by name (repeatable; others become background); none: every class")
    settings.option("--backbone", key="backbones", action="append",
                    help="random:NAME:IN_CHANS, imagenet:NAME:FILE, radimagenet:FILE, timm:NAME:FILE, "
                         "torchvision:NAME:FILE, hf:DIR, a backbone.safetensors or a checkpoint .pt (repeatable)")
    settings.option("--name", key="names", action="append", help="readable name of each --backbone, in order")
    add_baseline(settings)
    settings.option("--image-size", key="image_size", type=int,
                    help="U-Net input size, a multiple of 32, the same for every backbone; 0: the stored slice size "
                         "rounded up to a multiple of 32")
    settings.option("--grey-window", key="grey_window",
                    help="HU window of CT inputs for backbones of grey or natural pictures, replicated")
    settings.option("--n-boot", key="n_boot", type=int, help="bootstrap resamples for CIs")
    add_overlap(settings)
    settings.option("--fraction", key="fractions", type=float, action="append",
                    help="fraction of the training patients with masks (repeatable)")
    settings.option("--seed", key="seeds", type=int, action="append", help="seed (repeatable)")
    settings.option("--out", key="out", help="results folder: runs/, results.jsonl, comparisons.jsonl")
    settings.option("--protocol", key="segment.protocols", action="append", choices=["frozen", "finetune"],
                    help="frozen (decoder trained) and/or finetune (everything trained); repeatable")
    settings.option("--epochs", key="segment.epochs", type=int, help="maximum epochs")
    settings.option("--batch-size", key="segment.batch_size", type=int, help="batch size")
    settings.option("--lr", key="segment.lrs", type=float, action="append",
                    help="learning rate, AdamW (repeatable: a grid chosen on validation)")
    settings.option("--loss", key="segment.loss", choices=["ce+dice", "ce", "dice"],
                    help="ce+dice (nnU-Net), ce (weighted cross-entropy: the RadNet-12M study), dice")
    settings.option("--class-weight", key="segment.class_weights", type=float, action="append",
                    help="cross-entropy weight per class, background first (repeatable; LiTS in the study: 1 3 10)")
    settings.option("--noise-sigma", key="segment.noise_sigmas", type=float, action="append",
                    help="test-time Gaussian noise on the inputs, robustness sweep (repeatable)")
    settings.option("--tolerance-mm", key="segment.tolerance_mm", type=float, help="NSD tolerance in mm")
    settings.switch("--save-predictions", key="save_predictions", value=True,
                    help="each test case's predicted and reference masks as NIfTI, and a per-case CSV, under "
                         "OUT/predictions/<run_id>/")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import finish, prepare
    from ctssl.eval.protocols.segment import run_segment

    cfg = resolve(args)
    prepare("segment", cfg)
    setup_logging(args.log_level)
    return finish(cfg, run_segment(cfg, cfg.segment, cfg.out, save_predictions=cfg.save_predictions))
