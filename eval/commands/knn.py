"""Weighted kNN evaluation of frozen backbones (DINO protocol: cosine, exp(sim/T), T = 0.07),
neighbours found with FAISS (exact flat search, streamed over a memory-mapped bank; or IVF).

The bank is the training split's features (a --fraction of its patients), the queries the test
split's; patients never cross splits. Features are cached (OUT/features). One record per
backbone x fraction x seed x k in OUT/runs/, gathered in OUT/results.jsonl, with accuracy,
balanced accuracy and macro AUROC and their patient-bootstrap CIs, and paired comparisons of
each backbone against the first in OUT/comparisons.jsonl.

Example:
  ctssl knn --data runs/demo/shards-ct --label region --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors
"""

from __future__ import annotations

import argparse

from ctssl.eval.commands.options import add_eval_options


def configure(parser: argparse.ArgumentParser) -> None:
    add_eval_options(parser)
    parser.add_argument("--k", type=int, action="append", default=None, help="k (repeatable; default 10 20 100 200)")
    parser.add_argument("--temperature", type=float, default=0.07, help="vote temperature (default 0.07)")
    parser.add_argument("--index", default="flat", choices=["flat", "ivf"],
                        help="FAISS index: flat (exact, default) or ivf (approximate, faster on large banks)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.eval.commands.options import eval_spec, finish
    from ctssl.eval.protocols.knn import KNNSettings, run_knn

    setup_logging(args.log_level)
    settings = KNNSettings(k=args.k or [10, 20, 100, 200], temperature=args.temperature, index=args.index)
    records = run_knn(eval_spec(args), settings, args.out, args.cache)
    return finish(args, records)
