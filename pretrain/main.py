"""Pretraining entry point: ``accelerate launch pretrain/main.py [options]`` from the repository root,
``accelerate launch -m ctssl.pretrain.main [options]`` from anywhere once ctssl is installed, or
plain ``python`` for one process.

  accelerate launch --multi_gpu --num_processes 8 pretrain/main.py \\
      --config experiments/simclr_ct.yaml --set data.batch_size=256
  python pretrain/main.py --shards runs/demo/shards-ct --method dino --max-steps 100

Configuration: pretrain.config defaults, then ``--config FILE``, then ``--set key=value`` and the
named options. Resumes automatically from ``--out`` when it holds a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pretrain/main.py" if not __package__ else "python -m ctssl.pretrain.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="experiment YAML (its differences from the defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (repeatable), e.g. --set optim.lr=0.3")
    parser.add_argument("--out", default=None, help="output folder (checkpoints, metrics, exported backbone)")
    parser.add_argument("--shards", default=None, help="shard folder to train on (data.shards)")
    parser.add_argument("--method", default=None, choices=["simclr", "dino"], help="method.name")
    parser.add_argument("--backbone", default=None, choices=["resnet18", "resnet50", "vit_s16"],
                        help="model.backbone")
    parser.add_argument("--epochs", type=int, default=None, help="epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=None, help="per-process batch size")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from ctssl.core.config import ConfigError, resolve_config
    from ctssl.core.logs import setup_logging
    from ctssl.pretrain.config import PretrainConfig

    args = parse_args(argv)
    options = {"out": args.out, "data.shards": args.shards, "method.name": args.method,
               "model.backbone": args.backbone, "epochs": args.epochs, "max_steps": args.max_steps,
               "data.batch_size": args.batch_size}
    try:
        cfg = resolve_config(PretrainConfig, args.config, args.overrides, options)
    except ConfigError as err:
        print(f"pretrain: {err}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.log_level, f"{cfg.out}/logs/rank{rank}.log", is_main=rank == 0)
    from ctssl.pretrain.train import train

    result = train(cfg)
    if rank == 0:
        logging.getLogger("ctssl.pretrain").info("done: %s", json.dumps({k: v for k, v in result.items() if k != "knn"}))
    return 0


if __name__ == "__main__":
    if not __package__:
        # Run as a file (``accelerate launch pretrain/main.py``): Python put this folder first on
        # sys.path, where config.py, train.py, ... would shadow top-level modules of those names.
        # ctssl itself is imported as installed (``pip install -e .``).
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        try:
            import ctssl  # noqa: F401
        except ImportError:
            print("pretrain/main.py: ctssl is not installed in this Python; from the repository root run "
                  "`pip install -e .` (README, command (a)).", file=sys.stderr)
            sys.exit(2)
    sys.exit(main())
