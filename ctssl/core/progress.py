"""Progress of long loops wherever the output goes: in a terminal, a tqdm bar with rate and ETA; without one (a
pipe, nohup, a SLURM log), a log line when the loop starts, then at most every ``every`` seconds (default
``CTSSL_PROGRESS_SECONDS``, else 15) with the count, the rate and the ETA. Either way a line when it ends.

    with Progress(len(images), "features SimCLR CT / train", unit="img", log=logger) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta

from tqdm import tqdm

EVERY_SECONDS = 15.0


def _every() -> float:
    try:
        return float(os.environ.get("CTSSL_PROGRESS_SECONDS", EVERY_SECONDS))
    except ValueError:
        return EVERY_SECONDS


def duration(seconds: float) -> str:
    """``0:01:05`` (whole seconds); ``?`` when unknown."""
    return str(timedelta(seconds=round(seconds))) if seconds == seconds and seconds != float("inf") else "?"


class Progress:
    """Count ``total`` units of work (module docstring). ``terminal`` None: whether stderr is one."""

    def __init__(self, total: int, desc: str, unit: str = "it", log: logging.Logger | None = None,
                 every: float | None = None, terminal: bool | None = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.log = log or logging.getLogger("ctssl")
        self.every = _every() if every is None else every
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.done, self.begun = 0, time.perf_counter()
        self.last = self.begun
        self.bar = tqdm(total=self.total, desc=desc, unit=unit, disable=not self.terminal, leave=False)
        if not self.terminal:
            self.log.info("%s: %d %s ...", desc, self.total, unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if not self.terminal and now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``desc: done/total unit (pct), rate unit/s, ETA h:mm:ss``."""
        elapsed = (now or time.perf_counter()) - self.begun
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.done) / rate if rate and rate == rate else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s, "
                f"ETA {duration(eta)}")

    def close(self) -> float:
        """End the bar (a last line without a terminal); returns the seconds taken."""
        self.bar.close()
        seconds = time.perf_counter() - self.begun
        self.log.info("%s: %d %s in %s (%.1f %s/s)", self.desc, self.done, self.unit, duration(seconds),
                      self.done / max(seconds, 1e-9), self.unit)
        return seconds

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.bar.close()
