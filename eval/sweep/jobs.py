"""A sweep's job list, fixed by its config (``eval.sweep.config``), for one machine or a SLURM array: each task
of ``eval.sweep.tasks`` x backbone x the task's own dimensions, numbered in order.

Jobs write only their own files, share the feature cache (written atomically, so concurrent jobs of one
backbone at worst extract the same features twice), may run in any order or concurrently, and skip work
already done; ``missing_jobs`` names those not finished, for the report to list.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import to_dict
from ctssl.eval.records.store import RunStore, save_names
from ctssl.eval.sweep.config import SweepConfig, problems, raise_problems
from ctssl.eval.sweep.tasks import TASKS


def validate(cfg: SweepConfig) -> None:
    """Every problem of ``cfg`` and of its tasks' settings in one ConfigError."""
    raise_problems(problems(cfg, TASKS) + [p for t in cfg.tasks if t in TASKS for p in TASKS[t].problems(cfg)])


def jobs(cfg: SweepConfig) -> list[dict]:
    """The job list (module docstring), numbered in order."""
    out = []
    for task in cfg.tasks:
        for position, backbone in enumerate(cfg.backbones):
            base = {"task": task, "backbone": backbone, "backbone_order": position}
            out += [{**base, **dims} for dims in TASKS[task].dims(cfg)]
    return [{"index": i, **job} for i, job in enumerate(out)]


def write_plan(cfg: SweepConfig) -> Path:
    """OUT/sweep.json: the resolved config and the job list; the backbones' names for the report."""
    validate(cfg)
    save_names(cfg.out, cfg.backbones, cfg.names)
    path = Path(cfg.out) / "sweep.json"
    atomic_write_text(path, json.dumps({"config": to_dict(cfg), "jobs": jobs(cfg)}, indent=1) + "\n")
    return path


def run_job(cfg: SweepConfig, index: int) -> list[dict]:
    """Job ``index``'s records (finished work is loaded, not redone)."""
    validate(cfg)
    all_jobs = jobs(cfg)
    if not 0 <= index < len(all_jobs):
        raise ValueError(f"Job index {index} is outside the sweep's {len(all_jobs)} jobs (0..{len(all_jobs) - 1}).")
    job = all_jobs[index]
    return TASKS[job["task"]].run(cfg, job)


def missing_jobs(cfg: SweepConfig) -> list[dict]:
    """Jobs with no finished result: run records matched by task, backbone, fraction, seed (and fold, cut),
    record files by their path."""
    records = RunStore(cfg.out).records()
    done = {(r["task"], r["backbone"], r["fraction"], r["seed"], r.get("variant")) for r in records}
    done |= {(r["task"], r["backbone"], r["fraction"], r["seed"], None) for r in records}
    return [job for job in jobs(cfg) if not TASKS[job["task"]].done(cfg, job, done)]
