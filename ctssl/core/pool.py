"""Worker processes for the data stages: a fork pool that always ends.

``with multiprocessing.Pool(...)`` ends by ``terminate()``: it takes the task queue's lock and relies on
SIGTERM killing the workers. A worker that inherited a Python SIGTERM handler from its parent (a training
run earlier in the same process, a user's own handler) would instead wait on that lock for ever. Here the
workers restore the default SIGTERM / SIGUSR1 actions, and a pool that finished its work is closed and
joined (the workers leave through the queue) before anything is terminated.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from typing import Callable, Iterator


def _start(initializer: Callable | None, initargs: tuple) -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def fork_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator:
    """``workers`` forked processes (module docstring); ``initializer(*initargs)`` runs in each."""
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_start, initargs=(initializer, initargs))
    try:
        yield pool
        pool.close()
        pool.join()
    finally:
        pool.terminate()
