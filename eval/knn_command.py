"""Weighted kNN evaluation of frozen backbones (DINO protocol: cosine, exp(sim/T), T = 0.07),
neighbours found with a FAISS index (exact flat by default; IVF for large banks).

The bank is one split's features, the queries another's (patients never cross splits), for
k in --k. Backbones: ``random:resnet18:3`` or an exported ``backbone.safetensors``. Reports
accuracy and balanced accuracy per backbone and k; results as JSON lines in --out.

Example:
  ctssl knn --shards runs/demo/shards-ct --label region \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr/backbone.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="shard folder with labelled samples")
    parser.add_argument("--backbone", action="append", required=True,
                        help="random:NAME:IN_CHANS or a backbone.safetensors (repeatable)")
    parser.add_argument("--label", default="region", help="label key (default region)")
    parser.add_argument("--bank-split", default="train", help="split of the bank (default train)")
    parser.add_argument("--query-split", action="append", default=None,
                        help="split(s) of the queries (default: val and test)")
    parser.add_argument("--k", type=int, action="append", default=None, help="k (default 10 20 100 200)")
    parser.add_argument("--temperature", type=float, default=0.07, help="vote temperature (default 0.07)")
    parser.add_argument("--image-size", type=int, default=64, help="input size (default 64)")
    parser.add_argument("--index", default="flat", choices=["flat", "ivf"],
                        help="FAISS index: flat (exact, default) or ivf (approximate, large banks)")
    parser.add_argument("--out", default=None, help="append results as JSON lines to OUT/knn.jsonl")


def run(args: argparse.Namespace) -> int:
    from ctssl.logs import append_jsonl, setup_logging
    from eval.knn_eval import evaluate_knn

    setup_logging(args.log_level)
    for source in args.backbone:
        for record in evaluate_knn(source, args.shards, args.label, args.k or [10, 20, 100, 200],
                                   args.bank_split, args.query_split or ["val", "test"],
                                   args.temperature, args.image_size, args.index):
            print(json.dumps(record))
            if args.out:
                append_jsonl(Path(args.out) / "knn.jsonl", record)
    return 0
