"""A sweep's configuration: what is evaluated (``EvalSpec``), which tasks, and each task's settings (the same
sections the single commands take: ``knn``, ``probe``, ``finetune``, ...).

A sweep is one YAML file (``SweepConfig``), or a recipe (``eval/recipes/NAME.yaml``: one seed study's protocol,
citing its paper) completed with the data and backbones (``ctssl sweep --recipe NAME --data D --backbone A
--backbone B``, or a YAML file with ``recipe: NAME`` and its data and backbones, e.g. for slurm/eval-sweep.sh).
Layers, each overriding the one before: the defaults below, the recipe, the user's file, ``--set``, the named
options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctssl.core.config import ConfigError, load_yaml_layer, recipe_path, resolve_config
from ctssl.eval.inputs.confounders import CONFOUNDERS
from ctssl.eval.measures.probe import ProbeConfig
from ctssl.eval.protocols.confounders import MODES, ConfounderSettings
from ctssl.eval.protocols.hidden import HiddenSettings
from ctssl.eval.protocols.knn import KNNSettings
from ctssl.eval.protocols.spec import EvalSpec
from ctssl.finetune.finetune import FinetuneConfig
from ctssl.finetune.segment import PROTOCOLS as SEGMENT_PROTOCOLS
from ctssl.finetune.segment import SegmentConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class TruncationSettings:
    cuts: list[int] = field(default_factory=lambda: [1, 2, 3, 0])    # stages kept; 0 = the full network


@dataclass
class SweepConfounderSettings(ConfounderSettings):
    kinds: list[str] = field(default_factory=lambda: ["tag", "lowpass", "noise"])   # one job per kind and seed


@dataclass
class SweepSegmentSettings(SegmentConfig):
    data: str = ""                        # shards with masks; "" = the sweep's data (often another dataset: LiTS)
    classes: list[str] = field(default_factory=list)     # foreground classes by name; [] = every class
    fractions: list[float] = field(default_factory=list)  # of the training patients; [] = the sweep's fractions


@dataclass
class SweepConfig(EvalSpec):
    out: str = "runs/eval"
    recipe: str = ""                      # in a config file: the recipe it completes (as --recipe)
    study: str = ""                       # a recipe's study (the report's layout); "" for a plain sweep
    title: str = ""                       # the report's title
    reference: str = ""                   # the paper a recipe follows (the report cites it)
    names: list[str] = field(default_factory=list)       # readable names of the backbones (report), optional
    tasks: list[str] = field(default_factory=lambda: ["knn", "probe", "finetune"])
    cache: str = ""                       # feature cache; default OUT/features
    baseline: str = ""                    # compared with: a source or name; "": the first natural-image-
                                          # pretrained backbone, else the first
    adjust: str = "holm"                  # the report's p-values adjusted over each table: holm or bh
    knn: KNNSettings = field(default_factory=KNNSettings)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    truncation: TruncationSettings = field(default_factory=TruncationSettings)
    hidden: HiddenSettings = field(default_factory=HiddenSettings)
    confounders: SweepConfounderSettings = field(default_factory=SweepConfounderSettings)
    segment: SweepSegmentSettings = field(default_factory=SweepSegmentSettings)


def resolve_sweep_config(recipe: str | None = None, config_file: str | None = None, overrides=(),
                         options: dict | None = None) -> SweepConfig:
    """Defaults, then the recipe, the user's file, ``--set`` overrides and the named options, in that order."""
    user = load_yaml_layer(config_file) if config_file else None
    recipe = recipe or (str(user.get("recipe") or "") if user is not None else "")
    layers = [recipe_path(RECIPES, recipe), {"recipe": recipe}] if recipe else []
    layers += [user] if user is not None else []
    cfg = resolve_config(SweepConfig, layers, overrides, options)
    if recipe:
        cfg.recipe = recipe
    return cfg


def problems(cfg: SweepConfig, tasks) -> list[str]:
    """What is wrong with ``cfg`` whatever its tasks (``tasks``: the valid task names)."""
    found = []
    if not cfg.data:
        found.append("the sweep needs a dataset: set data (a shard folder, imagefolder:ROOT, .csv or .npz) "
                     "or pass --data")
    if not cfg.backbones:
        found.append("the sweep needs at least one backbone: set backbones or pass --backbone")
    unknown = set(cfg.tasks) - set(tasks)
    if unknown:
        found.append(f"unknown task(s) {sorted(unknown)} in tasks; valid tasks are {list(tasks)}")
    if cfg.names and len(cfg.names) != len(cfg.backbones):
        found.append(f"{len(cfg.names)} names for {len(cfg.backbones)} backbones; give one name per backbone")
    if len(set(cfg.backbones)) != len(cfg.backbones):
        found.append("a backbone is listed twice in backbones")
    if not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions):
        found.append(f"fractions must be in (0, 1], got {cfg.fractions}")
    if not cfg.seeds:
        found.append("seeds must list at least one seed")
    return found


def truncation_problems(cfg: SweepConfig) -> list[str]:
    cuts = cfg.truncation.cuts
    return [f"truncation.cuts must be stage counts >= 0 (0: full network), got {cuts}"] \
        if not cuts or any(c < 0 for c in cuts) else []


def hidden_problems(cfg: SweepConfig) -> list[str]:
    return [f"hidden.folds must be at least 3 (a test, a validation and a training fold), got {cfg.hidden.folds}"] \
        if cfg.hidden.folds < 3 else []


def confounder_problems(cfg: SweepConfig) -> list[str]:
    found = []
    bad = set(cfg.confounders.kinds) - set(CONFOUNDERS)
    if bad or not cfg.confounders.kinds:
        found.append(f"confounders.kinds {sorted(bad) or '[]'} unknown; valid are {list(CONFOUNDERS)}")
    if cfg.confounders.mode not in MODES:
        found.append(f"confounders.mode must be probe or finetune, got '{cfg.confounders.mode}'")
    return found


def segment_problems(cfg: SweepConfig) -> list[str]:
    seg, found = cfg.segment, []
    bad = [p for p in seg.protocols if p not in SEGMENT_PROTOCOLS]
    if bad or not seg.protocols:
        found.append(f"segment.protocols must be some of {list(SEGMENT_PROTOCOLS)}, got {seg.protocols}")
    if any(not 0 < f <= 1 for f in seg.fractions):
        found.append(f"segment.fractions must be in (0, 1], got {seg.fractions}")
    return found


def raise_problems(found: list[str]) -> None:
    if found:
        raise ConfigError("Invalid sweep configuration: " + "; ".join(found) + ".")
