"""Extract (and cache) frozen-backbone features of a dataset, on one machine or as SLURM array tasks:

  ctssl extract --data DIR --backbone SRC --out OUT [--workers W] [--batch-size B]
      every split, DataLoader workers decoding and preparing, the backbone on the GPU when there is one
  ctssl extract ... --task-index I --num-tasks N      (default I: $SLURM_ARRAY_TASK_ID)
      task I's contiguous block of shards of every split, into part files of the cache
  ctssl extract ... --merge --num-tasks N
      the parts assembled into the one cache later commands (knn, probe, gap) read as a bank

The cache is OUT/features (or --cache) keyed by backbone, weights, dataset, samples and input spec, the
same cache `ctssl knn` / `ctssl probe` use: extracting first, then evaluating, extracts nothing twice. The
resolved settings are written to OUT/extract-config.yaml.

Example:
  ctssl extract --data runs/demo/shards-ct --backbone runs/demo/simclr-ct/backbone.safetensors \\
      --out runs/demo/eval --set splits=[test]
"""

from __future__ import annotations

import argparse
import os

from ctssl.core.options import Settings
from ctssl.eval.commands.options import add_cache, add_image_size

SETTINGS = "ctssl.eval.commands.settings:ExtractCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, SETTINGS, example="splits=[test]")
    settings.option("--data", key="data", help="dataset (a shard folder, imagefolder:ROOT, .csv, .npz)")
    settings.option("--backbone", key="backbone", help="backbone source (as ctssl knn)")
    settings.option("--label", key="label", help="a label: only the samples carrying it; none: every sample")
    settings.option("--split", key="splits", action="append", help="split (repeatable; none: every split)")
    add_image_size(settings, own=False)
    settings.option("--grey-window", key="grey_window", help="CT window of grey/natural-picture backbones")
    settings.option("--out", key="out", help="results folder; the cache is OUT/features unless --cache")
    add_cache(settings)
    settings.option("--batch-size", key="batch_size", type=int, help="batch; 0: 8 on CPU, 256 on GPU")
    settings.option("--workers", key="workers", type=int,
                    help="loader workers; none: with a GPU the CPUs less one, <= 8; on CPU none")
    parser.add_argument("--task-index", type=int, default=None, help="array task (default $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-tasks", type=int, default=None, help="array tasks in all")
    parser.add_argument("--merge", action="store_true", help="assemble the tasks' parts")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.core.config import ConfigError
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import require, write_settings

    cfg = resolve(args)
    require("extract", cfg, "data", "backbone", "out")
    task = args.task_index if args.task_index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if (args.merge or task not in (None, "")) and not args.num_tasks:
        raise ConfigError("--num-tasks is needed with --task-index or --merge.")
    write_settings(cfg, Path(cfg.out) / "extract-config.yaml")
    setup_logging(args.log_level)
    return _extract(cfg, task, args.num_tasks, args.merge)


def _extract(cfg, task, num_tasks: int | None, merge: bool) -> int:
    from pathlib import Path

    from ctssl.eval.features.cache import cached_features, extract_task, merge_parts
    from ctssl.eval.inputs.datasets import open_dataset

    data = open_dataset(cfg.data, cfg.label)
    splits = cfg.splits or [s for s in ("train", "val", "test") if data.has(s)]
    cache = cfg.cache or str(Path(cfg.out) / "features")
    if merge:
        feats = merge_parts(cfg.backbone, data, splits, cfg.image_size, cache, num_tasks, cfg.grey_window)
        print(f"merged: {', '.join(f'{s} {len(f.keys)} x {f.features.shape[1]}' for s, f in feats.items())}")
        return 0
    if task not in (None, ""):
        rows = extract_task(cfg.backbone, data, splits, cfg.image_size, cache, int(task), num_tasks,
                            cfg.batch_size or None, grey_window=cfg.grey_window, workers=cfg.workers)
        print(f"task {task}: rows {rows}")
        return 0
    feats = cached_features(cfg.backbone, data, splits, cfg.image_size, cache, cfg.batch_size or None,
                            grey_window=cfg.grey_window, workers=cfg.workers)
    print(f"features in {next(iter(feats.values())).provenance['cache']}: "
          + ", ".join(f"{s} {len(f.keys)} x {f.features.shape[1]}" for s, f in feats.items()))
    return 0
