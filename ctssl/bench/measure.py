"""How the suites time things: the median of ``repeats`` timed passes after one warm-up pass."""

from __future__ import annotations

import statistics
import time


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
