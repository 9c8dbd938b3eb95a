"""The suites in one registry, and ``ctssl bench all``: every suite in one run, one table of headline
figures (each with its baseline measured in the same run), written as JSON and as the Markdown table that
docs/benchmarks.md reproduces.

A suite is one module of ``ctssl.bench`` with ``measure(settings) -> results``, ``BENCHMARK`` (its name in the
results, which ``run`` writes to OUT/<BENCHMARK>-bench.json), ``format_table(result)`` (the console table) and
``summary_rows(results)`` (its lines in the ``all`` table), and a settings dataclass in ``ctssl.bench.settings``; a
suite that writes its own results (ingest, plan-scale) has ``run`` and ``result_path`` instead of ``measure``. A
new suite is a new module, its settings and one entry in ``SUITES``; modules are imported when run, so that the
command line starts without torch.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from ctssl.bench.measure import save_result
from ctssl.bench.settings import PlanScaleBench, SuiteBench
from ctssl.core.atomic import atomic_write_text


class Suite(NamedTuple):
    module: str              # the suite (module docstring)
    help: str
    settings: str            # its settings dataclass in ctssl.bench.settings
    example: str             # a --set that works for it
    timed: bool = False      # its results record the run's seconds


# command name -> suite, in the order ``all`` runs them.
SUITES = {
    "ingest": Suite("ctssl.bench.ingest", "ingest, shard decode and encoding benchmark", "IngestBench", "matrix=256"),
    "plan-scale": Suite("ctssl.bench.plan_scale", "plan and merge time and memory at archive scale", "PlanScaleBench",
                        "tasks=64"),
    "loader": Suite("ctssl.bench.loader", "loader CPU time per sample vs ctssl 0.1's views and lightly's",
                    "LoaderBench", "repeats=1"),
    "batches": Suite("ctssl.bench.batches", "what training batches are made of, vs i.i.d. sampling", "BatchesBench",
                     "batches=8"),
    "train": Suite("ctssl.bench.train", "training step images/s", "TrainBench", "sizes=[96]"),
    "segment": Suite("ctssl.bench.segment", "U-Net training and inference steps vs classification fine-tuning; "
                     "decoding a slice with its mask vs alone", "SegmentBench", "sizes=[64]"),
    "knn": Suite("ctssl.bench.knn", "kNN search queries/s vs scikit-learn", "KNNBench", "bank=20000", timed=True),
    "extract": Suite("ctssl.bench.extract", "feature extraction images/s, batched and loader workers vs one image at "
                     "a time", "ExtractBench", "sizes=[64]", timed=True),
    "eval-scale": Suite("ctssl.bench.eval_scale", "12M-slice kNN time and memory, measured and projected", "ScaleBench",
                        "bank_rows=20000", timed=True),
}


def suite(name: str) -> ModuleType:
    """The module of suite ``name``."""
    return importlib.import_module(SUITES[name].module)


def result_path(name: str, settings) -> Path:
    """Where suite ``name`` writes its results."""
    module = suite(name)
    if hasattr(module, "result_path"):
        return module.result_path(settings)
    return Path(settings.out) / f"{module.BENCHMARK}-bench.json"


def run(name: str, settings) -> dict:
    """Suite ``name``'s result, written to ``result_path``."""
    module = suite(name)
    if hasattr(module, "run"):
        return module.run(settings)
    return save_result(result_path(name, settings), module.BENCHMARK, lambda: module.measure(settings),
                       SUITES[name].timed)


def settings_of(name: str) -> type:
    """The settings dataclass of suite ``name``."""
    return getattr(importlib.import_module("ctssl.bench.settings"), SUITES[name].settings)


def run_suite(cfg: SuiteBench) -> dict:
    """Every suite not in ``cfg.skip``, each with its default settings in ``cfg.out`` (plan-scale at
    ``cfg.scale_slices``, 120 slices per series); writes OUT/bench-suite.json and OUT/bench-suite.md."""
    from ctssl.core.machine import machine_info

    out = Path(cfg.out)
    settings = {name: settings_of(name)(out=cfg.out) for name in SUITES}
    settings["plan-scale"] = PlanScaleBench(out=cfg.out, series=max(1, cfg.scale_slices // 120),
                                            slices=cfg.scale_slices)
    result = {"benchmark": "suite", "machine": machine_info(), "suites": {}, "rows": []}
    for name in SUITES:
        if name in cfg.skip:
            continue
        start = time.perf_counter()
        measured = run(name, settings[name])
        data = measured.get("results", measured)
        result["suites"][name] = {"seconds": round(time.perf_counter() - start, 1), "results": data}
        result["rows"] += [[f"`ctssl bench {name}`", *row] for row in suite(name).summary_rows(data)]
    atomic_write_text(out / "bench-suite.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "bench-suite.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
             f"torch {m['torch']}; {m['date']}.", "",
             "| suite | what | figure | baseline (same run) | ratio |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in result["rows"]]
    return "\n".join(lines) + "\n"
