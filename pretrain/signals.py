"""Run-time signals and the output lock, agreed over every process.

- ``StopSignal``: SIGTERM / SIGUSR1 (SLURM preemption, ``scontrol requeue``, a time limit) or a stop file
  (``CTSSL_STOP_FILE``: slurm/pretrain.sbatch creates it when the time limit nears) ask for a checkpoint
  and a clean exit. The handlers live only while training runs; the previous ones come back when it
  ends (a training run inside a longer Python process must not leave processes forked later deaf to
  SIGTERM).
- ``lock_output``: the main process locks OUT; every process learns whether it could, and all exit together.
- ``agree``: whether any process says yes (one all-reduce), so that all take the same branch.
"""

from __future__ import annotations

import os
import signal

import torch

from ctssl.core.lock import LockError, OutputLock

STOP_FILE_ENV = "CTSSL_STOP_FILE"


class StopSignal:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: str | None = None):
        self.received: str | None = None
        self.stop_file = stop_file if stop_file is not None else os.environ.get(STOP_FILE_ENV) or None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def requested(self) -> str | None:
        """What asked this process to stop: a signal's name, "stop file", or None."""
        if self.received is None and self.stop_file and os.path.exists(self.stop_file):
            self.received = "stop file"
        return self.received


def agree(accelerator, yes: bool) -> bool:
    """True on every process when it is true on any."""
    flag = torch.tensor(1.0 if yes else 0.0, device=accelerator.device)
    return float(accelerator.reduce(flag, "max")) > 0 if accelerator.num_processes > 1 else yes


def lock_output(accelerator, out) -> OutputLock | None:
    """The main process locks OUT; every process learns whether it could (and exits together)."""
    lock, message = None, ""
    if accelerator.is_main_process:
        try:
            lock = OutputLock(out, "pretraining").acquire()
        except LockError as err:
            message = str(err)
    if agree(accelerator, bool(message)):
        raise LockError(message or f"{out} is in use by another run.")
    return lock
