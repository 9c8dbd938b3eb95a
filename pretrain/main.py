"""Pretraining entry point: ``accelerate launch /path/to/repo/pretrain/main.py [options]`` from any folder
(run as a file, it imports the ctssl of the checkout it belongs to), ``accelerate launch -m
ctssl.pretrain.main [options]`` once ctssl is installed, or plain ``python`` for one process.

  accelerate launch --multi_gpu --num_processes 8 pretrain/main.py --recipe simclr_rn50_ct \\
      --shards /scratch/ct-shuffled --out runs/simclr-ct
  python pretrain/main.py --shards runs/demo/shards-ct --method dino --max-steps 100

Configuration (docs/pretraining.md): defaults, the method's reference settings, ``--recipe NAME``, then
``--config FILE``, then ``--set key=value`` and the named options. Resumes automatically from ``--out``
when it holds a checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys


def _import_from_checkout() -> None:
    """Run as a file (``accelerate launch /path/to/repo/pretrain/main.py``, from any folder): make ``ctssl`` the
    package of the checkout this file is in, its stage folders (``data/``, ``shards/``, ``pretrain/``, ...)
    importing as ``ctssl.data``, ``ctssl.shards``, ... as pyproject.toml's package-dir maps them, whatever the
    current folder and whichever ctssl the Python has installed. A copy of this file inside an installed ctssl
    (no checkout around it) uses that installation."""
    here = os.path.dirname(os.path.abspath(__file__))
    # Python put this folder first on sys.path, where config.py, train.py, ... would shadow top-level modules.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    root = os.path.dirname(here)
    init = os.path.join(root, "ctssl", "__init__.py")
    if "ctssl" in sys.modules or not (os.path.isfile(init) and os.path.isfile(os.path.join(root, "pyproject.toml"))):
        return
    spec = importlib.util.spec_from_file_location("ctssl", init, submodule_search_locations=[os.path.dirname(init), root])
    package = importlib.util.module_from_spec(spec)
    sys.modules["ctssl"] = package
    spec.loader.exec_module(package)


if not __package__:     # run as a file, not imported as ctssl.pretrain.main
    _import_from_checkout()


def _recipes_epilog() -> str:
    from ctssl.core.config import recipe_names
    from ctssl.pretrain.config import RECIPES

    lines = ["recipes (--recipe NAME; pretrain/recipes/NAME.yaml, each citing its source):"]
    for name in recipe_names(RECIPES):
        first = next((line.lstrip("# ").strip() for line in (RECIPES / f"{name}.yaml").read_text().splitlines()
                      if line.startswith("#")), "")
        lines.append(f"  {name:<26} {first}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pretrain/main.py" if not __package__ else "python -m ctssl.pretrain.main",
                                     description=__doc__, epilog=_recipes_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=None, metavar="NAME", help="a study recipe (listed below)")
    parser.add_argument("--config", default=None, help="experiment YAML (its differences from the defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (repeatable), e.g. --set optim.lr=0.3")
    parser.add_argument("--out", default=None, help="output folder (checkpoints, metrics, exported backbone)")
    parser.add_argument("--shards", default=None, help="shard folder to train on (data.shards)")
    parser.add_argument("--method", default=None, choices=["simclr", "dino"], help="method.name")
    parser.add_argument("--backbone", default=None,
                        help="model.backbone: resnet18, resnet50, vit_s16, timm:NAME or torchvision:NAME "
                             "(pretrain.backbones)")
    parser.add_argument("--init", default=None, metavar="SOURCE",
                        help="continued pretraining from a backbone source (timm:NAME:FILE, torchvision:NAME:FILE, "
                             "hf:DIR, imagenet:NAME:FILE, radimagenet:FILE, a ctssl export): model.init, with "
                             "model.backbone set to its architecture")
    parser.add_argument("--epochs", type=int, default=None, help="epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="per-process batch size (data.batch_size; a recipe fixes the global batch instead)")
    parser.add_argument("--accept-changes", action="store_true",
                        help="resume the run in --out with settings that differ from its checkpoint's (recorded in "
                             "OUT/history.jsonl); without it such a resume is refused, naming the differences")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from ctssl.core.config import ConfigError
    from ctssl.core.lock import LockError
    from ctssl.core.logs import setup_logging
    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.health import NonFiniteError
    from ctssl.shards.reader import ShardError

    args = parse_args(argv)
    options = {"out": args.out, "data.shards": args.shards, "method.name": args.method,
               "model.backbone": args.backbone, "epochs": args.epochs, "max_steps": args.max_steps,
               "data.batch_size": args.batch_size}
    rank = int(os.environ.get("RANK", "0"))
    who = "pretrain" if rank == 0 else f"pretrain (rank {rank})"
    try:
        if args.init:
            from ctssl.pretrain.sources import backbone_card

            options.update({"model.init": args.init, "model.backbone": backbone_card(args.init)["backbone"]})
        cfg = resolve_pretrain_config(args.recipe, args.config, args.overrides, options)
        setup_logging(args.log_level, f"{cfg.out}/logs/rank{rank}.log", is_main=rank == 0)
        from ctssl.pretrain.train import train

        result = train(cfg, accept_changes=args.accept_changes)
    except NonFiniteError as err:
        if args.debug:
            raise
        print(f"{who}: {err}", file=sys.stderr)
        return 1
    except (ConfigError, LockError, ShardError, OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"{who}: {' '.join(str(err).split())} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{who}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    if rank == 0:
        logging.getLogger("ctssl.pretrain").info("done: %s", json.dumps({k: v for k, v in result.items() if k != "knn"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
