"""How the suites measure: the median of ``repeats`` timed passes after one warm-up pass, and the result file
every suite writes."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

from ctssl.core.atomic import atomic_write_text


def median_rate(fn, items: int, repeats: int) -> float:
    """Items per second of ``fn`` (which handles ``items`` items per call): the median over ``repeats`` calls."""
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def median_cpu_seconds(fn, repeats: int) -> float:
    """Median CPU time (this process, all threads) of ``fn``."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def save_result(path: Path, benchmark: str, measure: Callable[[], dict], timed: bool = False) -> dict:
    """``{"benchmark", "machine", "results"[, "seconds"]}`` of one run of ``measure``, written to ``path`` as JSON."""
    from ctssl.core.machine import machine_info

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {"benchmark": benchmark, "machine": machine_info(), "results": measure()}
    if timed:
        result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    return result
