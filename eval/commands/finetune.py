"""Fine-tune backbones on a labelled dataset: the full network, or a truncated one (--truncate k
keeps the first k ResNet stages / ViT blocks), optional layer-wise learning-rate decay, early
stopping on validation; a learning-rate (x weight-decay) grid, every point with the same budget, the
one best on validation kept and recorded. The best-validation and the final model are both reported
on the test split (variants best_val and final), over --fraction x --seed, with patient-bootstrap CIs; one
record per run in OUT/runs/, gathered in OUT/results.jsonl; paired comparisons against the first
backbone in OUT/comparisons.jsonl.

Example:
  ctssl finetune --data runs/demo/shards-ct --label region --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors \\
      --truncate 2 --llrd 0.7 --epochs 10
"""

from __future__ import annotations

import argparse

from ctssl.eval.commands.options import add_eval_options


def configure(parser: argparse.ArgumentParser) -> None:
    add_eval_options(parser)
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, action="append", default=None,
                        help="head learning rate, AdamW (repeatable: a grid, each trained with the same budget and "
                             "chosen on validation; default 3e-4, 1e-3, 3e-3)")
    parser.add_argument("--weight-decay", type=float, action="append", default=None,
                        help="AdamW weight decay (repeatable, crossed with --lr; default 0.05)")
    parser.add_argument("--llrd", type=float, default=1.0, help="layer-wise learning-rate decay (default 1 = off)")
    parser.add_argument("--truncate", type=int, default=0,
                        help="keep the first k ResNet stages (1-4) or ViT blocks; 0 = full network (default); a "
                             "truncated ResNet's head sees the unpooled map (TruncatedTL)")
    parser.add_argument("--truncate-pool", action="store_true",
                        help="pool the truncated ResNet's map before the head (TruncatedTL's pooled variant)")
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (default 5)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip augmentation")
    parser.add_argument("--no-balanced", dest="balanced", action="store_false", help="plain (not class-weighted) loss")
    parser.add_argument("--save-model", action="store_true",
                        help="export the best-validation backbone to OUT/models/<run_id>/backbone.safetensors "
                             "(full networks; e.g. for ctssl similarity before vs after fine-tuning)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.eval.commands.options import eval_spec, finish
    from ctssl.finetune.finetune import FinetuneConfig
    from ctssl.eval.protocols.finetune import run_finetune

    setup_logging(args.log_level)
    defaults = FinetuneConfig()
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lrs=args.lr or defaults.lrs,
                         weight_decays=args.weight_decay or defaults.weight_decays, llrd=args.llrd,
                         truncate=args.truncate, truncate_pool=args.truncate_pool, patience=args.patience,
                         augment=args.augment, balanced=args.balanced, save_model=args.save_model)
    return finish(args, run_finetune(eval_spec(args), cfg, args.out))
