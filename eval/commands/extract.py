"""Extract (and cache) frozen-backbone features of a dataset, on one machine or as SLURM array tasks:

  ctssl extract --data DIR --backbone SRC --out OUT [--workers W] [--batch-size B]
      every split, DataLoader workers decoding and preparing, the backbone on the GPU when there is one
  ctssl extract ... --task-index I --num-tasks N      (default I: $SLURM_ARRAY_TASK_ID)
      task I's contiguous block of shards of every split, into part files of the cache
  ctssl extract ... --merge --num-tasks N
      the parts assembled into the one cache later commands (knn, probe, gap) read as a bank

The cache is OUT/features (or --cache) keyed by backbone, weights, dataset, samples and input spec, the
same cache `ctssl knn` / `ctssl probe` use: extracting first, then evaluating, extracts nothing twice.
"""

from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset (a shard folder, imagefolder:ROOT, .csv, .npz)")
    parser.add_argument("--backbone", required=True, help="backbone source (as ctssl knn)")
    parser.add_argument("--label", default="region", help="label that selects the samples (default region)")
    parser.add_argument("--split", action="append", default=None, help="split (repeatable; default all three)")
    parser.add_argument("--image-size", type=int, default=0, help="input size (default 0: the backbone's pretraining size)")
    parser.add_argument("--grey-window", default="wide", help="CT window of grey/natural-picture backbones")
    parser.add_argument("--out", required=True, help="results folder; the cache is OUT/features unless --cache")
    parser.add_argument("--cache", default="", help="feature cache folder")
    parser.add_argument("--batch-size", type=int, default=0, help="batch (default 8 on CPU, 256 on GPU)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: with a GPU the CPUs less one, <= 8; on CPU none)")
    parser.add_argument("--task-index", type=int, default=None, help="array task (default $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-tasks", type=int, default=None, help="array tasks in all")
    parser.add_argument("--merge", action="store_true", help="assemble the tasks' parts")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.core.config import ConfigError
    from ctssl.core.logs import setup_logging
    from ctssl.eval.inputs.datasets import open_dataset
    from ctssl.eval.features.cache import cached_features, extract_task, merge_parts

    setup_logging(args.log_level)
    data = open_dataset(args.data, args.label)
    splits = args.split or [s for s in ("train", "val", "test") if data.has(s)]
    cache = args.cache or str(Path(args.out) / "features")
    task = args.task_index if args.task_index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if args.merge or task not in (None, ""):
        if not args.num_tasks:
            raise ConfigError("--num-tasks is needed with --task-index or --merge.")
        if args.merge:
            feats = merge_parts(args.backbone, data, splits, args.image_size, cache, args.num_tasks, args.grey_window)
            print(f"merged: {', '.join(f'{s} {len(f.keys)} x {f.features.shape[1]}' for s, f in feats.items())}")
            return 0
        rows = extract_task(args.backbone, data, splits, args.image_size, cache, int(task), args.num_tasks,
                            args.batch_size or None, grey_window=args.grey_window, workers=args.workers)
        print(f"task {task}: rows {rows}")
        return 0
    feats = cached_features(args.backbone, data, splits, args.image_size, cache, args.batch_size or None,
                            grey_window=args.grey_window, workers=args.workers)
    print(f"features in {next(iter(feats.values())).provenance['cache']}: "
          + ", ".join(f"{s} {len(f.keys)} x {f.features.shape[1]}" for s, f in feats.items()))
    return 0
