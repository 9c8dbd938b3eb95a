"""The sweep's tasks, in one registry: each task's job dimensions, how one job runs (one protocol call of
``eval.protocols``), how to tell it has finished and what is wrong with its settings.

=============  ===================================  ================================================
task           one job                              writes
=============  ===================================  ================================================
knn            backbone x fraction x seed (all k)   ``runs/`` records (``eval.protocols.knn``)
probe          backbone x fraction x seed           ``runs/`` records (``eval.protocols.probe``)
finetune       backbone x fraction x seed           ``runs/`` records, variants best_val and final
truncated      backbone x cut x fraction x seed     ``runs/`` records, variants ``stage k best_val`` ...
hidden         backbone x fold                      ``runs/`` records with CCA per layer (``eval.protocols.hidden``)
confounders    backbone x confounder x seed         ``confounders/<confounder>-<backbone>-s<seed>.json``
segment        backbone x protocol x fraction x     ``runs/`` records, variants ``<protocol> best_val`` and
               seed                                 ``<protocol> final`` (``eval.protocols.segment``)
=============  ===================================  ================================================

A new task is one ``Task`` in ``TASKS``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ctssl.eval.protocols.confounders import run_confounders
from ctssl.eval.protocols.finetune import cut_name, run_finetune
from ctssl.eval.protocols.hidden import run_hidden
from ctssl.eval.protocols.knn import run_knn
from ctssl.eval.protocols.probe import run_probe
from ctssl.eval.protocols.segment import SegmentSpec, run_segment
from ctssl.eval.protocols.spec import EvalSpec
from ctssl.eval.records.store import slug
from ctssl.eval.sweep.config import SweepConfig, confounder_problems, hidden_problems, segment_problems, \
    truncation_problems


@dataclass(frozen=True)
class Task:
    """One kind of sweep job."""
    dims: Callable[[SweepConfig], list[dict]]            # a job's own keys, besides its backbone
    run: Callable[[SweepConfig, dict], list[dict]]       # one job -> its records
    done: Callable[[SweepConfig, dict, set], bool]       # finished, given the (task, backbone, fraction, seed,
                                                         # variant) of every run record
    problems: Callable[[SweepConfig], list[str]] = lambda cfg: []


def job_spec(cfg: SweepConfig, job: dict) -> EvalSpec:
    """The sweep's spec narrowed to one job's backbone, fraction and seed; its input size is the sweep's
    (``comparison``: every backbone of the sweep)."""
    return EvalSpec(data=cfg.data, label=cfg.label, backbones=[job["backbone"]], image_size=cfg.image_size,
                    own_size=cfg.own_size, grey_window=cfg.grey_window, n_boot=cfg.n_boot,
                    comparison=cfg.comparison or list(cfg.backbones), fractions=[job.get("fraction", 1.0)],
                    seeds=[job.get("seed", 0)], allow_pretraining_overlap=cfg.allow_pretraining_overlap)


def segment_job(cfg: SweepConfig, job: dict) -> list[dict]:
    """One segmentation job: a backbone, a protocol, a fraction and a seed (both models of it are recorded)."""
    seg = cfg.segment
    spec = SegmentSpec(data=seg.data or cfg.data, classes=list(seg.classes), backbones=[job["backbone"]],
                       image_size=cfg.image_size, grey_window=cfg.grey_window, n_boot=cfg.n_boot,
                       fractions=[job["fraction"]], seeds=[job["seed"]],
                       allow_pretraining_overlap=cfg.allow_pretraining_overlap)
    settings = replace(seg, protocols=[job["protocol"]])
    return run_segment(spec, settings, cfg.out, orders=[job["backbone_order"]])


def confounder_name(job: dict) -> str:
    return f"{job['confounder']}-{slug(job['backbone'])}-s{job['seed']}"


def _fractions_seeds(cfg: SweepConfig) -> list[dict]:
    return [{"fraction": f, "seed": s} for f, s in itertools.product(cfg.fractions, cfg.seeds)]


def _recorded(variant=None) -> Callable[[SweepConfig, dict, set], bool]:
    """Done when a run record of the job's task, backbone, fraction, seed and ``variant`` exists (``None``: any)."""
    def done(cfg: SweepConfig, job: dict, finished: set) -> bool:
        key = (job["task"], job["backbone"], job["fraction"], job["seed"])
        return (*key, variant(job) if callable(variant) else variant) in finished
    return done


TASKS: dict[str, Task] = {
    "knn": Task(
        dims=_fractions_seeds, done=_recorded(),
        run=lambda cfg, job: run_knn(job_spec(cfg, job), cfg.knn, cfg.out, cfg.cache, [job["backbone_order"]])),
    "probe": Task(
        dims=_fractions_seeds, done=_recorded(),
        run=lambda cfg, job: run_probe(job_spec(cfg, job), cfg.probe, cfg.out, cache=cfg.cache,
                                       orders=[job["backbone_order"]])),
    "finetune": Task(
        dims=_fractions_seeds, done=_recorded("best_val"),
        run=lambda cfg, job: run_finetune(job_spec(cfg, job), cfg.finetune, cfg.out, orders=[job["backbone_order"]])),
    "truncated": Task(
        dims=lambda cfg: [{"cut": c, "fraction": f, "seed": s}
                          for c, f, s in itertools.product(cfg.truncation.cuts, cfg.fractions, cfg.seeds)],
        done=_recorded(lambda job: f"{cut_name(job['cut'])} best_val"),
        run=lambda cfg, job: run_finetune(job_spec(cfg, job),
                                          replace(cfg.finetune, truncate=job["cut"], save_model=False), cfg.out,
                                          task="truncated", orders=[job["backbone_order"]]),
        problems=truncation_problems),
    "hidden": Task(
        dims=lambda cfg: [{"fold": f} for f in range(cfg.hidden.folds)],
        done=lambda cfg, job, finished: ("hidden", job["backbone"], 1.0, job["fold"],
                                         f"fold {job['fold']}") in finished,
        run=lambda cfg, job: run_hidden(job_spec(cfg, job), cfg.hidden, cfg.finetune, cfg.out, folds=[job["fold"]],
                                        orders=[job["backbone_order"]]),
        problems=hidden_problems),
    "confounders": Task(
        dims=lambda cfg: [{"confounder": k, "seed": s} for k, s in itertools.product(cfg.confounders.kinds, cfg.seeds)],
        done=lambda cfg, job, finished: (Path(cfg.out) / "confounders" / f"{confounder_name(job)}.json").exists(),
        run=lambda cfg, job: [run_confounders(job_spec(cfg, job), cfg.confounders, cfg.out, job["confounder"],
                                              job["seed"], cfg.probe, cfg.finetune, cfg.cache, confounder_name(job),
                                              [job["backbone_order"]])],
        problems=confounder_problems),
    "segment": Task(
        dims=lambda cfg: [{"protocol": p, "fraction": f, "seed": s} for p, f, s in itertools.product(
            cfg.segment.protocols, cfg.segment.fractions or cfg.fractions, cfg.seeds)],
        done=_recorded(lambda job: f"{job['protocol']} final"),
        run=segment_job, problems=segment_problems),
}
