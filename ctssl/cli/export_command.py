"""Write a backbone in the layout another library loads (timm, torchvision, MONAI FlexibleUNet, Hugging Face),
with preprocessing.json beside it: the channels, windows (level and width in HU), mean/std and size, and the
one line that loads it (docs/export.md).

Example:
  ctssl export runs/demo/simclr-ct/backbone.safetensors --format timm --out exports/simclr-timm
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from ctssl.eval.inputs.interop import FORMATS

    parser.add_argument("backbone", help="a backbone source (a ctssl export, timm:NAME:FILE, hf:DIR, ...)")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=f"the layout to write: {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="the folder to write")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ctssl.core.logs import setup_logging
    from ctssl.eval.inputs.interop import export

    setup_logging(args.log_level)
    path = export(args.backbone, args.format, args.out)
    info = json.loads((Path(args.out) / "preprocessing.json").read_text())
    print(f"export: {path}\npreprocessing: {Path(args.out) / 'preprocessing.json'}\nload: {info['load']}")
    return 0
