"""Verify or inspect a ctssl shard folder.

  ctssl shards verify DIR     decode every sample; check counts, sizes and SHA-256 against
                              DIR/manifest.json; exit 1 and list the problems if anything is wrong
  ctssl shards inspect DIR    counts per split / scanner / body part / label, HU histogram, and a
                              contact sheet of random slices under a window (DIR/inspect/)
  ctssl shards from-images ROOT --out DIR
                              an ImageFolder tree (e.g. ImageNet train) to the same shard layout,
                              images kept as encoded, class label kept
"""

from __future__ import annotations

import argparse
import json
import sys


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
    images.add_argument("--out", required=True, help="output shard folder")
    images.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard size (default 256)")
    images.add_argument("--seed", type=int, default=0, help="order of samples in the shards (default 0)")


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
        from ctssl.shards.from_images import images_to_shards

        try:
            manifest = images_to_shards(args.folder, args.out, args.shard_size_mb, args.seed)
        except (FileNotFoundError, ValueError) as err:
            print(f"ctssl shards from-images: {err}", file=sys.stderr)
            return 2
        print(f"{args.out}: {manifest['totals']['samples']} images, {len(manifest['classes'])} classes, "
              f"{manifest['totals']['shards']} shard(s) {dict((k, v['samples']) for k, v in manifest['splits'].items())}")
        return 0
    from ctssl.shards.inspect import inspect_shards

    out = args.out or f"{args.folder}/inspect"
    summary = inspect_shards(args.folder, out, args.window, args.tiles, args.seed)
    short = {k: v for k, v in summary.items() if k not in ("hu_histogram",)}
    print(json.dumps(short, indent=1))
    print(f"contact sheet: {out}/contact_sheet.png")
    return 0
