"""Evaluation sweeps and the seed studies as recipes: independent jobs for one machine or a SLURM array.

A sweep is one YAML file (``SweepConfig``), or a recipe (``eval/recipes/NAME.yaml``: one seed study's
protocol, citing its paper) completed with the data and backbones (``ctssl sweep --recipe NAME --data D
--backbone A --backbone B``, or a YAML file with ``recipe: NAME`` and its data and backbones, e.g. for
slurm/eval-sweep.sh). Its job list is fixed by the config; each task has its own job dimensions:

=============  ===================================  ================================================
task           one job                              writes
=============  ===================================  ================================================
knn            backbone x fraction x seed (all k)   ``runs/`` records (``eval.protocols``)
probe          backbone x fraction x seed           ``runs/`` records
finetune       backbone x fraction x seed           ``runs/`` records, variants best_val and final
truncated      backbone x cut x fraction x seed     ``runs/`` records, variants ``stage k best_val`` ...
hidden         backbone x fold                      ``runs/`` records with CCA per layer (``eval.hidden``)
confounders    backbone x confounder x seed         ``confounders/<confounder>-<backbone>-s<seed>.json``
=============  ===================================  ================================================

Jobs write only their own files, share the feature cache (written atomically, so concurrent jobs of one
backbone at worst extract the same features twice), may run in any order or concurrently, and skip work
already done; ``report`` gathers whatever has finished, lays a recipe's results out as its paper's tables
and figures, and lists the jobs that have not finished.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import recipe_path, to_dict
from ctssl.eval.protocols.hidden import HiddenSettings
from ctssl.eval.measures.probe import ProbeConfig
from ctssl.finetune.finetune import FinetuneConfig

TASKS = ("knn", "probe", "finetune", "truncated", "hidden", "confounders")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class KNNSettings:
    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    index: str = "flat"


@dataclass
class TruncationSettings:
    cuts: list[int] = field(default_factory=lambda: [1, 2, 3, 0])    # stages kept; 0 = the full network


@dataclass
class ConfounderSettings:
    kinds: list[str] = field(default_factory=lambda: ["tag", "lowpass", "noise"])
    positive: str = "1"                 # the label value that is the positive class
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 0.8, 1.0])
    mode: str = "probe"                 # probe (frozen features) or finetune
    permutations: int = 2000


@dataclass
class SweepConfig:
    out: str = "runs/eval"
    recipe: str = ""                      # in a config file: the recipe it completes (as --recipe)
    study: str = ""                       # a recipe's study (the report's layout); "" for a plain sweep
    title: str = ""                       # the report's title
    reference: str = ""                   # the paper a recipe follows (the report cites it)
    data: str = ""                        # dataset spec (eval.datasets)
    label: str = "region"
    backbones: list[str] = field(default_factory=list)   # the first is the baseline of comparisons
    names: list[str] = field(default_factory=list)       # readable names of the backbones (report), optional
    tasks: list[str] = field(default_factory=lambda: ["knn", "probe", "finetune"])
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    image_size: int = 0                   # 0: each backbone's pretraining size (eval.inputs)
    grey_window: str = "wide"             # CT inputs of grey/natural-picture backbones (eval.inputs)
    cache: str = ""                       # feature cache; default OUT/features
    n_boot: int = 1000
    knn: KNNSettings = field(default_factory=KNNSettings)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    truncation: TruncationSettings = field(default_factory=TruncationSettings)
    hidden: HiddenSettings = field(default_factory=HiddenSettings)
    confounders: ConfounderSettings = field(default_factory=ConfounderSettings)


def resolve_sweep_config(recipe: str | None = None, config_file: str | None = None, overrides=(),
                         options: dict | None = None) -> SweepConfig:
    """Defaults, then the recipe, the user's file, ``--set`` overrides and the named options, in that order."""
    from ctssl.core.config import load_yaml_layer, resolve_config

    user = load_yaml_layer(config_file) if config_file else None
    recipe = recipe or (str(user.get("recipe") or "") if user is not None else "")
    layers = ([recipe_path(RECIPES, recipe), {"recipe": recipe}] if recipe else []) + ([user] if user is not None else [])
    cfg = resolve_config(SweepConfig, layers, overrides, options)
    if recipe:
        cfg.recipe = recipe
    return cfg


def validate(cfg: SweepConfig) -> None:
    from ctssl.core.config import ConfigError
    from ctssl.eval.inputs.confounders import CONFOUNDERS

    problems = []
    if not cfg.data:
        problems.append("the sweep needs a dataset: set data (a shard folder, imagefolder:ROOT, .csv or .npz) "
                        "or pass --data")
    if not cfg.backbones:
        problems.append("the sweep needs at least one backbone: set backbones or pass --backbone")
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        problems.append(f"unknown task(s) {sorted(unknown)} in tasks; valid tasks are {list(TASKS)}")
    if cfg.names and len(cfg.names) != len(cfg.backbones):
        problems.append(f"{len(cfg.names)} names for {len(cfg.backbones)} backbones; give one name per backbone")
    if len(set(cfg.backbones)) != len(cfg.backbones):
        problems.append("a backbone is listed twice in backbones")
    if not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions):
        problems.append(f"fractions must be in (0, 1], got {cfg.fractions}")
    if not cfg.seeds:
        problems.append("seeds must list at least one seed")
    if "truncated" in cfg.tasks and (not cfg.truncation.cuts or any(c < 0 for c in cfg.truncation.cuts)):
        problems.append(f"truncation.cuts must be stage counts >= 0 (0: full network), got {cfg.truncation.cuts}")
    if "hidden" in cfg.tasks and cfg.hidden.folds < 3:
        problems.append(f"hidden.folds must be at least 3 (a test, a validation and a training fold), got "
                        f"{cfg.hidden.folds}")
    if "confounders" in cfg.tasks:
        bad = set(cfg.confounders.kinds) - set(CONFOUNDERS)
        if bad or not cfg.confounders.kinds:
            problems.append(f"confounders.kinds {sorted(bad) or '[]'} unknown; valid are {list(CONFOUNDERS)}")
        if cfg.confounders.mode not in ("probe", "finetune"):
            problems.append(f"confounders.mode must be probe or finetune, got '{cfg.confounders.mode}'")
    if problems:
        raise ConfigError("Invalid sweep configuration: " + "; ".join(problems) + ".")


def jobs(cfg: SweepConfig) -> list[dict]:
    """The job list (module docstring's table), numbered in order."""
    out = []
    for task in cfg.tasks:
        for position, backbone in enumerate(cfg.backbones):
            base = {"task": task, "backbone": backbone, "backbone_order": position}
            if task in ("knn", "probe", "finetune"):
                out += [{**base, "fraction": f, "seed": s} for f, s in itertools.product(cfg.fractions, cfg.seeds)]
            elif task == "truncated":
                out += [{**base, "cut": c, "fraction": f, "seed": s}
                        for c, f, s in itertools.product(cfg.truncation.cuts, cfg.fractions, cfg.seeds)]
            elif task == "hidden":
                out += [{**base, "fold": f} for f in range(cfg.hidden.folds)]
            else:
                out += [{**base, "confounder": k, "seed": s}
                        for k, s in itertools.product(cfg.confounders.kinds, cfg.seeds)]
    return [{"index": i, **job} for i, job in enumerate(out)]


def write_plan(cfg: SweepConfig) -> Path:
    from ctssl.eval.records.store import save_names

    validate(cfg)
    save_names(cfg.out, cfg.backbones, cfg.names)
    path = Path(cfg.out) / "sweep.json"
    atomic_write_text(path, json.dumps({"config": to_dict(cfg), "jobs": jobs(cfg)}, indent=1) + "\n")
    return path


def confounder_name(job: dict) -> str:
    from ctssl.eval.records.store import slug

    return f"{job['confounder']}-{slug(job['backbone'])}-s{job['seed']}"


def run_job(cfg: SweepConfig, index: int) -> list[dict]:
    from dataclasses import replace

    from ctssl.eval.protocols.knn import knn_runs
    from ctssl.eval.protocols.probe import probe_runs
    from ctssl.eval.protocols.spec import EvalSpec
    from ctssl.eval.protocols.finetune import finetune_runs

    validate(cfg)
    all_jobs = jobs(cfg)
    if not 0 <= index < len(all_jobs):
        raise ValueError(f"Job index {index} is outside the sweep's {len(all_jobs)} jobs (0..{len(all_jobs) - 1}).")
    job = all_jobs[index]
    if job["task"] == "hidden":
        from ctssl.eval.protocols.hidden import hidden_run

        return [hidden_run(cfg.data, cfg.label, job["backbone"], job["backbone_order"], job["fold"], cfg.hidden,
                           cfg.finetune, cfg.out, cfg.image_size, cfg.grey_window, cfg.n_boot)]
    if job["task"] == "confounders":
        from ctssl.eval.protocols.confounders import ConfounderConfig, run_confounders

        c = cfg.confounders
        record = run_confounders(cfg.data, [job["backbone"]], cfg.label,
                                 ConfounderConfig(confounder=job["confounder"], positive=c.positive,
                                                  fractions=list(c.fractions), mode=c.mode, seed=job["seed"],
                                                  image_size=cfg.image_size, n_boot=cfg.n_boot,
                                                  permutations=c.permutations),
                                 cfg.out, cfg.cache, name=confounder_name(job), probe_cfg=cfg.probe,
                                 finetune_cfg=cfg.finetune, grey_window=cfg.grey_window,
                                 order=job["backbone_order"])
        return [record]
    spec = EvalSpec(dataset=cfg.data, backbones=[job["backbone"]], label=cfg.label, fractions=[job["fraction"]],
                    seeds=[job["seed"]], image_size=cfg.image_size, cache=cfg.cache, n_boot=cfg.n_boot,
                    grey_window=cfg.grey_window, orders=[job["backbone_order"]])
    if job["task"] == "knn":
        return knn_runs(spec, cfg.out, cfg.knn.k, cfg.knn.temperature, cfg.knn.index)
    if job["task"] == "probe":
        return probe_runs(spec, cfg.probe, cfg.out)
    if job["task"] == "truncated":
        return finetune_runs(spec, replace(cfg.finetune, truncate=job["cut"], save_model=False), cfg.out,
                             task="truncated")
    return finetune_runs(spec, cfg.finetune, cfg.out)


def _done_key(job: dict) -> tuple:
    task = job["task"]
    if task == "hidden":
        return (task, job["backbone"], 1.0, job["fold"], f"fold {job['fold']}")
    if task == "truncated":
        from ctssl.eval.protocols.finetune import cut_name

        return (task, job["backbone"], job["fraction"], job["seed"], f"{cut_name(job['cut'])} best_val")
    if task == "finetune":
        return (task, job["backbone"], job["fraction"], job["seed"], "best_val")
    return (task, job["backbone"], job["fraction"], job["seed"], None)


def missing_jobs(cfg: SweepConfig) -> list[dict]:
    """Jobs with no finished result: run records matched by task, backbone, fraction, seed (and fold, cut),
    confounder records by their file."""
    from ctssl.eval.records.store import RunStore

    records = RunStore(cfg.out).records()
    done = {(r["task"], r["backbone"], r["fraction"], r["seed"], r.get("variant")) for r in records}
    done |= {(r["task"], r["backbone"], r["fraction"], r["seed"], None) for r in records}
    missing = []
    for job in jobs(cfg):
        if job["task"] == "confounders":
            if not (Path(cfg.out) / "confounders" / f"{confounder_name(job)}.json").exists():
                missing.append(job)
        elif _done_key(job) not in done:
            missing.append(job)
    return missing
