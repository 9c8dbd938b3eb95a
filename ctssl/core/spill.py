"""Spill files: append-only files of pickled batches, for work that must not hold everything in memory
(the ingest plan's header partitions and work items, the shuffle pass's buckets).

Each ``PickleAppender.flush`` appends one pickled list to its file; ``read_batches`` yields the objects
back in order. The files are a program's own intermediate state (never user input): written and read
by the same ctssl version, deleted when the phase that needs them is done.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Iterator

RECORD_BATCH = 2_000   # objects per pickled batch, by default


class PickleAppender:
    """Appends pickled batches to a set of files, buffering up to ``batch`` objects per file (and, with
    ``sizeof``, up to ``max_bytes`` per file as ``sizeof`` counts them)."""

    def __init__(self, paths: list[Path], batch: int = RECORD_BATCH, max_bytes: int | None = None,
                 sizeof: Callable[[object], int] | None = None):
        self.paths, self.batch, self.max_bytes, self.sizeof = paths, batch, max_bytes, sizeof
        self.buffers: list[list] = [[] for _ in paths]
        self.buffered = [0] * len(paths)
        self.counts = [0] * len(paths)

    def add(self, index: int, obj) -> None:
        self.buffers[index].append(obj)
        self.counts[index] += 1
        if self.sizeof is not None:
            self.buffered[index] += self.sizeof(obj)
        if len(self.buffers[index]) >= self.batch or (self.max_bytes and self.buffered[index] >= self.max_bytes):
            self.flush(index)

    def flush(self, index: int) -> None:
        if self.buffers[index]:
            with open(self.paths[index], "ab") as handle:
                pickle.dump(self.buffers[index], handle, protocol=pickle.HIGHEST_PROTOCOL)
            self.buffers[index] = []
            self.buffered[index] = 0

    def close(self) -> None:
        for i in range(len(self.paths)):
            self.flush(i)


def read_batches(path: Path) -> Iterator:
    """Every object appended to ``path`` by a PickleAppender (none if the file is absent)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        while True:
            try:
                batch = pickle.load(handle)
            except EOFError:
                return
            yield from batch
