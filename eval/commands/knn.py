"""Weighted kNN evaluation of frozen backbones (DINO protocol: cosine, exp(sim/T), T = 0.07),
neighbours found with FAISS (exact flat search, streamed over a memory-mapped bank; or IVF).

The bank is the training split's features (a --fraction of its patients), the queries the test
split's; patients never cross splits. Features are cached (OUT/features). One record per
backbone x fraction x seed x k in OUT/runs/, gathered in OUT/results.jsonl, with accuracy,
balanced accuracy and macro AUROC and their patient-bootstrap CIs, and paired comparisons of
each backbone against the first in OUT/comparisons.jsonl; the resolved settings in OUT/knn-config.yaml.

Example:
  ctssl knn --data runs/demo/shards-ct --label region --out runs/demo/eval \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors --set knn.k=[20]
"""

from __future__ import annotations

import argparse

from ctssl.eval.commands.options import eval_settings

SETTINGS = "ctssl.eval.commands.settings:KNNCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = eval_settings(parser, SETTINGS, "knn.k=[20]", cache=True)
    settings.option("--k", key="knn.k", type=int, action="append", help="k (repeatable)")
    settings.option("--temperature", key="knn.temperature", type=float, help="vote temperature")
    settings.option("--index", key="knn.index", choices=["flat", "ivf"],
                    help="FAISS index: flat (exact) or ivf (approximate, faster on large banks)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import finish, prepare
    from ctssl.eval.protocols.knn import run_knn

    cfg = resolve(args)
    prepare("knn", cfg)
    setup_logging(args.log_level)
    return finish(cfg, run_knn(cfg, cfg.knn, cfg.out, cfg.cache))
