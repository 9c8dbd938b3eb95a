"""Evaluation sweeps: tasks x backbones x label fractions x seeds, as independent jobs.

A sweep is one YAML file (``SweepConfig``). Its job list is fixed by the config: job ``i`` is one
(task, backbone, fraction, seed); a kNN job covers every k. Jobs write only their own run files
(``eval.runs``), share the feature cache (written atomically, so concurrent jobs of one backbone
at worst extract the same features twice), may run in any order or concurrently, and skip work
already done; ``report`` gathers whatever has finished and lists the jobs that have not.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import to_dict
from ctssl.eval.probe import ProbeConfig
from ctssl.finetune.finetune import FinetuneConfig

TASKS = ("knn", "probe", "finetune")


@dataclass
class KNNSettings:
    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    index: str = "flat"


@dataclass
class SweepConfig:
    out: str = "runs/eval"
    data: str = ""                        # dataset spec (eval.datasets)
    label: str = "region"
    backbones: list[str] = field(default_factory=list)   # the first is the baseline of comparisons
    names: list[str] = field(default_factory=list)       # readable names of the backbones (report), optional
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    image_size: int = 64
    cache: str = ""                       # feature cache; default OUT/features
    n_boot: int = 1000
    knn: KNNSettings = field(default_factory=KNNSettings)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def validate(cfg: SweepConfig) -> None:
    from ctssl.core.config import ConfigError

    if not cfg.data:
        raise ConfigError("The sweep needs a dataset: set data (a shard folder, imagefolder:ROOT, .csv or .npz).")
    if not cfg.backbones:
        raise ConfigError("The sweep needs at least one backbone in backbones.")
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise ConfigError(f"Unknown task(s) {sorted(unknown)} in tasks. Valid tasks are {list(TASKS)}.")


def jobs(cfg: SweepConfig) -> list[dict]:
    return [{"index": i, "task": t, "backbone": b, "backbone_order": cfg.backbones.index(b), "fraction": f, "seed": s}
            for i, (t, b, f, s) in enumerate(itertools.product(cfg.tasks, cfg.backbones, cfg.fractions, cfg.seeds))]


def write_plan(cfg: SweepConfig) -> Path:
    from ctssl.eval.runs import save_names

    validate(cfg)
    save_names(cfg.out, cfg.backbones, cfg.names)
    path = Path(cfg.out) / "sweep.json"
    atomic_write_text(path, json.dumps({"config": to_dict(cfg), "jobs": jobs(cfg)}, indent=1) + "\n")
    return path


def run_job(cfg: SweepConfig, index: int) -> list[dict]:
    from ctssl.eval.protocols import EvalSpec, knn_runs, probe_runs
    from ctssl.finetune.protocol import finetune_runs

    validate(cfg)
    all_jobs = jobs(cfg)
    if not 0 <= index < len(all_jobs):
        raise ValueError(f"Job index {index} is outside the sweep's {len(all_jobs)} jobs (0..{len(all_jobs) - 1}).")
    job = all_jobs[index]
    spec = EvalSpec(dataset=cfg.data, backbones=[job["backbone"]], label=cfg.label, fractions=[job["fraction"]],
                    seeds=[job["seed"]], image_size=cfg.image_size, cache=cfg.cache, n_boot=cfg.n_boot,
                    orders=[job["backbone_order"]])
    if job["task"] == "knn":
        return knn_runs(spec, cfg.out, cfg.knn.k, cfg.knn.temperature, cfg.knn.index)
    if job["task"] == "probe":
        return probe_runs(spec, cfg.probe, cfg.out)
    return finetune_runs(spec, cfg.finetune, cfg.out)


def missing_jobs(cfg: SweepConfig) -> list[dict]:
    """Jobs with no finished run record (matched by task, backbone, fraction, seed)."""
    from ctssl.eval.runs import RunStore

    done = {(r["task"], r["backbone"], r["fraction"], r["seed"]) for r in RunStore(cfg.out).records()}
    return [j for j in jobs(cfg) if (j["task"], j["backbone"], j["fraction"], j["seed"]) not in done]
