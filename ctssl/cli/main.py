"""The ``ctssl`` command line: one subcommand per pipeline stage.

Each subcommand lives in its stage's package as a module with ``configure(parser)`` (declares the
options, imports nothing heavy) and ``run(args) -> int``. A command (or phase) with settings declares them
with ``ctssl.core.options.Settings``: ``--config FILE`` and ``--set KEY=VALUE`` over a settings dataclass,
named options bound to its keys; one without settings takes neither. This file only routes, and answers a
bad command line with one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ctssl import __version__
from ctssl.core.lock import LockError

# name -> (module, one-line summary). Later stages register here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ctssl.cli.demo_command", "the study in miniature on the embedded data (the main job)"),
    "synth": ("ctssl.data.synth.command", "generate the embedded synthetic CT corpus (DICOM + NIfTI + labels)"),
    "ingest": ("ctssl.data.ingest.command", "DICOM/NIfTI CT volumes to WebDataset shards of HU slices"),
    "ingest-array": ("ctssl.data.ingest.array_command", "ingest as plan / task / merge phases, for SLURM arrays"),
    "shards": ("ctssl.shards.command", "verify or inspect a shard folder"),
    "probe": ("ctssl.eval.commands.probe", "linear probe of frozen backbones (learning-rate grid chosen on validation)"),
    "knn": ("ctssl.eval.commands.knn", "weighted kNN evaluation of frozen backbones (FAISS)"),
    "extract": ("ctssl.eval.commands.extract", "extract and cache frozen features (workers, GPU, SLURM array tasks)"),
    "finetune": ("ctssl.eval.commands.finetune", "fine-tune full or truncated backbones (early stopping, LLRD)"),
    "segment": ("ctssl.eval.commands.segment", "segmentation transfer: a U-Net on each backbone, frozen or fine-tuned, "
                "per-case Dice/HD95/NSD with CIs"),
    "similarity": ("ctssl.eval.commands.similarity", "layer-wise CKA / CCA similarity of two backbones"),
    "gap": ("ctssl.eval.commands.gap", "domain gap between two datasets in a backbone's feature space"),
    "confounders": ("ctssl.eval.commands.confounders", "shortcut experiment: confounder in positives, anti-correlated test"),
    "export": ("ctssl.cli.export_command", "write a backbone for timm, torchvision, MONAI or Hugging Face (with its "
               "preprocessing)"),
    "report": ("ctssl.eval.commands.report", "one self-contained HTML report and a Markdown summary of all results"),
    "sweep": ("ctssl.eval.commands.sweep", "evaluation sweeps (tasks x backbones x fractions x seeds) as array jobs"),
    "bench": ("ctssl.cli.bench_command", "rerunnable benchmarks, each against a baseline measured in the same run"),
}

# The settings of stage commands that resolve them themselves (ctssl.core.config.resolve_config on
# args.config and args.overrides): (command, phase) -> (settings dataclass, a --set example that works there).
STAGE_SETTINGS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("synth", None): ("ctssl.data.synth.corpus:SynthConfig", "noise_scale=0.5"),
    ("ingest", None): ("ctssl.data.ingest.config:IngestConfig", "image_size=128"),
    ("ingest-array", "plan"): ("ctssl.data.ingest.config:IngestConfig", "image_size=128"),
    ("shards", "shuffle"): ("ctssl.shards.shuffle:ShuffleConfig", "seed=1"),
}

logger = logging.getLogger("ctssl")


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line answered in one line (what is wrong, where the help is) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_common_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Options every command and phase shares: logging. ``suppress``: no defaults (a phase's parser under a
    command that also takes them before the phase, so the phase does not reset them)."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level", default=default("INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console and log-file verbosity (default: INFO)",
    )
    group.add_argument("--debug", action="store_true", default=default(False), help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    from ctssl.core.options import Settings

    parser = Parser(
        prog="ctssl",
        description="Self-supervised pretraining and evaluation for CT corpora. "
        "Run `ctssl COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"ctssl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name, help=summary, description=(module.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(cmd)
        # Commands with phases (e.g. `ctssl shards verify`) take the options after the phase; where the phase
        # is optional (`ctssl sweep --recipe ...` runs), also before it.
        phases = [a for a in cmd._actions if isinstance(a, argparse._SubParsersAction)]
        targets = [(None, cmd)] if not phases or not phases[0].required else []
        targets += list(phases[0].choices.items()) if phases else []
        for phase, target in targets:
            add_common_options(target, suppress=phase is not None and not phases[0].required)
            if (name, phase) in STAGE_SETTINGS:
                Settings(target, *STAGE_SETTINGS[(name, phase)])
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, OSError, LockError) as err:
        # Bad input: a setting, a missing or unreadable file, a damaged one with --strict, a folder in use
        # (ConfigError, DataError and ShardError are ValueErrors). One line that says what and where.
        if getattr(args, "debug", False):
            raise
        print(f"ctssl {args.command}: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctssl {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
