"""The suites in one registry, and ``ctssl bench all``: every suite in one run, one table of headline
figures (each with its baseline measured in the same run), written as JSON and as the Markdown table that
docs/benchmarks.md reproduces.

A suite is one module of ``ctssl.bench`` with ``run(out, ...) -> result`` (measures and writes its JSON into
``out``), ``format_table(result)`` (the console table) and ``summary_rows(results)`` (its lines in the ``all``
table). A new suite is a new module and one line in ``SUITES``; modules are imported when run, so that the
command line starts without torch.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from types import ModuleType

from ctssl.core.atomic import atomic_write_text

# command name -> (module, one line of help), in the order ``all`` runs them.
SUITES = {
    "ingest": ("ctssl.bench.ingest", "ingest, shard decode and encoding benchmark"),
    "plan-scale": ("ctssl.bench.plan_scale", "plan and merge time and memory at archive scale"),
    "loader": ("ctssl.bench.loader", "loader CPU time per sample vs ctssl 0.1's views and lightly's"),
    "batches": ("ctssl.bench.batches", "what training batches are made of, vs i.i.d. sampling"),
    "train": ("ctssl.bench.train", "training step images/s"),
    "knn": ("ctssl.bench.knn", "kNN search queries/s vs scikit-learn"),
    "extract": ("ctssl.bench.extract", "feature extraction images/s, batched and loader workers vs one image at a time"),
    "eval-scale": ("ctssl.bench.eval_scale", "12M-slice kNN time and memory, measured and projected"),
}


def suite(name: str) -> ModuleType:
    """The module of suite ``name``."""
    return importlib.import_module(SUITES[name][0])


def run_suite(out: str | Path, scale_series: int = 10_000, scale_slices: int = 1_200_000,
              skip: tuple[str, ...] = ()) -> dict:
    """Every suite not in ``skip`` (plan-scale at ``scale_series`` x ``scale_slices``); writes
    OUT/bench-suite.json and OUT/bench-suite.md."""
    from ctssl.core.machine import machine_info

    out = Path(out)
    options = {"plan-scale": {"series": scale_series, "slices": scale_slices, "tasks": 256}}
    result = {"benchmark": "suite", "machine": machine_info(), "suites": {}, "rows": []}
    for name in SUITES:
        if name in skip:
            continue
        start = time.perf_counter()
        measured = suite(name).run(out, **options.get(name, {}))
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
