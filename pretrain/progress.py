"""Progress that reaches the user wherever the output goes: a bar with rate and ETA in a terminal; without
one (a pipe, nohup, a SLURM log) a log line at the logging steps, at most every
``monitor.progress_seconds``, with loss, learning rate, rate, ETA and GPU memory."""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta

from tqdm import tqdm

logger = logging.getLogger("ctssl.pretrain")


class Progress:
    def __init__(self, total: int, start: int, label: str, main: bool, every_seconds: float):
        self.total, self.start, self.main, self.every = total, start, main, every_seconds
        self.terminal = main and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, unit="step", desc=label, disable=not self.terminal)
        self.begun = time.perf_counter()
        self.last_line = None

    def step(self) -> None:
        self.bar.update(1)

    def logged(self, record: dict) -> None:
        """A logging step's record (step, loss, lr, images_per_s, ...)."""
        if not self.main:
            return
        if self.terminal:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}" if record.get("loss") is not None else "nan",
                                 lr=f"{record['lr']:.2e}", img_s=f"{record['images_per_s']:.0f}")
            return
        now = time.perf_counter()
        if self.last_line is not None and now - self.last_line < self.every and record["step"] != self.total:
            return
        self.last_line = now
        done = record["step"] - self.start
        eta = (now - self.begun) / done * (self.total - record["step"]) if done > 0 else float("nan")
        loss = "nan" if record.get("loss") is None else f"{record['loss']:.4f}"
        memory = f" mem {record['gpu_mem_gb']:.1f} GB" if "gpu_mem_gb" in record else ""
        logger.info("step %d/%d (%.1f%%) epoch %d loss %s lr %.2e %.0f img/s ETA %s%s", record["step"], self.total,
                    100 * record["step"] / self.total, record["epoch"], loss, record["lr"], record["images_per_s"],
                    str(timedelta(seconds=round(eta))) if eta == eta else "?", memory)

    def close(self) -> None:
        self.bar.close()
