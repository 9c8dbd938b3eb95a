"""Verify or inspect a ctssl shard folder.

  ctssl shards verify DIR     decode every sample; check counts, sizes and SHA-256 against
                              DIR/manifest.json; exit 1 and list the problems if anything is wrong
  ctssl shards inspect DIR    counts per split / scanner / body part / label, HU histogram, and a
                              contact sheet of random slices under a window (DIR/inspect/)
  ctssl shards from-images ROOT --out DIR
                              an ImageFolder tree (e.g. ImageNet train) to the same shard layout,
                              images kept as encoded, class label kept
  ctssl shards shuffle DIR --out DIR2 [--workers W]
                              series-ordered ingest shards to shards whose samples are in uniformly
                              random order across the whole split (what pretraining reads; keep DIR
                              for evaluation); bounded memory, resumable, byte-identical reruns
  ctssl shards shuffle DIR --out DIR2 --phase plan|scatter|gather|merge [--task-index I]
                              the same pass as phases for SLURM arrays (slurm/shuffle.sh); plan
                              prints the scatter and gather task counts
"""

from __future__ import annotations

import argparse
import json
import sys

from ctssl.core.options import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="check every shard against the manifest")
    verify.add_argument("folder", metavar="DIR", help="shard folder (holding manifest.json)")
    inspect = sub.add_parser("inspect", help="counts, HU histogram and a contact sheet")
    inspect.add_argument("folder", metavar="DIR", help="shard folder (holding manifest.json)")
    inspect.add_argument("--out", default=None, help="where to write (default: DIR/inspect)")
    inspect.add_argument("--window", default="soft_tissue",
                         help="HU window of the contact sheet: lung, soft_tissue, bone, brain, ... "
                              "(default soft_tissue)")
    inspect.add_argument("--tiles", type=int, default=24, help="slices on the contact sheet (default 24)")
    inspect.add_argument("--seed", type=int, default=0, help="which random slices (default 0)")
    images = sub.add_parser("from-images", help="an ImageFolder tree to shards")
    images.add_argument("folder", metavar="ROOT", help="ImageFolder root, or a folder of train/val ImageFolders")
    settings = Settings(images, "ctssl.shards.from_images:FromImagesConfig", example="shard_size_mb=64")
    settings.option("--out", key="out", help="output shard folder")
    settings.option("--shard-size-mb", key="shard_size_mb", type=float, help="target shard size")
    settings.option("--seed", key="seed", type=int, help="order of samples in the shards")
    shuffle = sub.add_parser("shuffle", help="shards mixed across series and patients, for pretraining")
    shuffle.add_argument("folder", metavar="DIR", help="source shard folder (from ctssl ingest)")
    shuffle.add_argument("--out", required=True, help="output shard folder (a new one)")
    shuffle.add_argument("--seed", type=int, default=None, help="shuffle seed (default 0)")
    shuffle.add_argument("--shard-size-mb", type=float, default=None, help="output shard size (default 256)")
    shuffle.add_argument("--bucket-mb", type=float, default=None,
                         help="the most one gather task holds in memory (default 1024)")
    shuffle.add_argument("--scatter-tasks", type=int, default=None,
                         help="scatter tasks (default: one per input shard, at most 64)")
    shuffle.add_argument("--split", action="append", default=None, help="split to shuffle (repeatable; default all)")
    shuffle.add_argument("--workers", type=int, default=1, help="processes on this machine (default 1)")
    shuffle.add_argument("--phase", choices=["plan", "scatter", "gather", "merge"], default=None,
                         help="run one phase (SLURM arrays); default: all phases here")
    shuffle.add_argument("--task-index", type=int, default=None,
                         help="scatter/gather task (default $SLURM_ARRAY_TASK_ID)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging

    setup_logging(args.log_level)
    if args.action == "verify":
        from ctssl.shards.verify import verify_shards

        problems, counts = verify_shards(args.folder)
        if problems:
            print(f"{args.folder}: {len(problems)} problem(s):", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return 1
        print(f"{args.folder}: OK: {counts['shards']} shards, {counts['samples']} samples "
              f"{counts['per_split']}, all decoded, sizes and SHA-256 match the manifest")
        return 0
    if args.action == "from-images":
        return _from_images(args)
    if args.action == "shuffle":
        return _shuffle(args)
    from ctssl.shards.inspect import inspect_shards

    out = args.out or f"{args.folder}/inspect"
    summary = inspect_shards(args.folder, out, args.window, args.tiles, args.seed)
    short = {k: v for k, v in summary.items() if k not in ("hu_histogram",)}
    print(json.dumps(short, indent=1))
    print(f"contact sheet: {out}/contact_sheet.png")
    return 0


def _from_images(args: argparse.Namespace) -> int:
    from ctssl.core.config import ConfigError
    from ctssl.core.options import resolve
    from ctssl.shards.from_images import images_to_shards

    cfg = resolve(args)      # recorded in the manifest, beside the shards
    if not cfg.out:
        raise ConfigError("ctssl shards from-images needs an output folder: pass --out or set out in --config.")
    try:
        manifest = images_to_shards(args.folder, cfg.out, cfg.shard_size_mb, cfg.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"ctssl shards from-images: {err}", file=sys.stderr)
        return 2
    print(f"{cfg.out}: {manifest['totals']['samples']} images, {len(manifest['classes'])} classes, "
          f"{manifest['totals']['shards']} shard(s) {dict((k, v['samples']) for k, v in manifest['splits'].items())}")
    return 0


def _shuffle(args: argparse.Namespace) -> int:
    import os

    from ctssl.core.config import ConfigError, resolve_config
    from ctssl.shards import shuffle

    cfg = resolve_config(shuffle.ShuffleConfig, args.config, args.overrides,
                         {"seed": args.seed, "shard_size_mb": args.shard_size_mb, "bucket_mb": args.bucket_mb,
                          "scatter_tasks": args.scatter_tasks, "splits": args.split})
    if args.phase is None:
        manifest = shuffle.run_shuffle(args.folder, args.out, cfg, args.workers)
        print(f"{args.out}: {manifest['totals']['samples']} samples in {manifest['totals']['shards']} shuffled "
              f"shard(s) {dict((k, v['samples']) for k, v in manifest['splits'].items())}")
        return 0
    if args.phase == "plan":
        plan = shuffle.plan_shuffle(args.folder, args.out, cfg)
        print(f"scatter {len(plan['scatter'])} gather {len(plan['gather'])}")
        return 0
    if args.phase == "merge":
        try:
            manifest = shuffle.merge(args.folder, args.out)
        except shuffle.IncompleteShuffle as err:
            print(f"ctssl shards shuffle: {err}", file=sys.stderr)
            return 1
        print(f"{args.out}: {manifest['totals']['samples']} samples in {manifest['totals']['shards']} shard(s)")
        return 0
    task = args.task_index if args.task_index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if task in (None, ""):
        raise ConfigError(f"--phase {args.phase} needs --task-index or $SLURM_ARRAY_TASK_ID.")
    try:
        record = getattr(shuffle, args.phase)(args.folder, args.out, int(task))
    except shuffle.IncompleteShuffle as err:
        print(f"ctssl shards shuffle: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in record.items() if k != "shards"}))
    return 0
