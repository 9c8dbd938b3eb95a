"""Fine-tune backbones on a labelled dataset: the full network, or a truncated one (--truncate k
keeps the first k ResNet stages / ViT blocks), optional layer-wise learning-rate decay, early
stopping on validation; a learning-rate (x weight-decay) grid, every point with the same budget, the
one best on validation kept and recorded. The best-validation and the final model are both reported
on the test split (variants best_val and final), over --fraction x --seed, with patient-bootstrap CIs; one
record per run in OUT/runs/, gathered in OUT/results.jsonl; paired comparisons against the first
backbone in OUT/comparisons.jsonl; the resolved settings in OUT/finetune-config.yaml.

Example:
  ctssl finetune --data runs/demo/shards-ct --label region --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors \\
      --truncate 2 --llrd 0.7 --epochs 10 --set finetune.patience=3
"""

from __future__ import annotations

import argparse

from ctssl.eval.commands.options import eval_settings

SETTINGS = "ctssl.eval.commands.settings:FinetuneCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = eval_settings(parser, SETTINGS, "finetune.patience=3", cache=False)
    settings.option("--epochs", key="finetune.epochs", type=int, help="maximum epochs")
    settings.option("--batch-size", key="finetune.batch_size", type=int, help="batch size")
    settings.option("--lr", key="finetune.lrs", type=float, action="append",
                    help="head learning rate, AdamW (repeatable: a grid, each trained with the same budget and chosen "
                         "on validation)")
    settings.option("--weight-decay", key="finetune.weight_decays", type=float, action="append",
                    help="AdamW weight decay (repeatable, crossed with --lr)")
    settings.option("--llrd", key="finetune.llrd", type=float, help="layer-wise learning-rate decay (1 = off)")
    settings.option("--truncate", key="finetune.truncate", type=int,
                    help="keep the first k ResNet stages (1-4) or ViT blocks; 0 = full network; a truncated ResNet's "
                         "head sees the unpooled map (TruncatedTL)")
    settings.switch("--truncate-pool", key="finetune.truncate_pool", value=True,
                    help="pool the truncated ResNet's map before the head (TruncatedTL's pooled variant)")
    settings.option("--patience", key="finetune.patience", type=int, help="early-stopping patience in epochs")
    settings.switch("--no-augment", key="finetune.augment", value=False, help="no crop/flip augmentation")
    settings.switch("--no-balanced", key="finetune.balanced", value=False, help="plain (not class-weighted) loss")
    settings.switch("--save-model", key="finetune.save_model", value=True,
                    help="export the best-validation backbone to OUT/models/<run_id>/backbone.safetensors "
                         "(full networks; e.g. for ctssl similarity before vs after fine-tuning)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import finish, prepare
    from ctssl.eval.protocols.finetune import run_finetune

    cfg = resolve(args)
    prepare("finetune", cfg)
    setup_logging(args.log_level)
    return finish(cfg, run_finetune(cfg, cfg.finetune, cfg.out))
