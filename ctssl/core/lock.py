"""One writer per output folder: ``OutputLock(folder)`` holds an exclusive ``flock`` on
``FOLDER/.ctssl.lock`` for as long as a run writes there. A second run into the same folder fails at
once with ``LockError`` naming the folder and the holder (its host, process id and command), instead
of two runs overwriting each other's files. The lock is released when the process ends, however it
ends (the operating system drops it), so a crashed run never leaves a stale lock behind.

An ``flock`` belongs to the open file, which ``fork`` shares with children (DataLoader workers, pools): a
child that outlives a killed parent would keep the folder locked. Forked children therefore close their
copies of every lock descriptor at once (``os.register_at_fork``); the parent's lock is unaffected.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

from pathlib import Path

LOCK_NAME = ".ctssl.lock"
_HELD: set[int] = set()      # descriptors of the locks this process holds


def _close_inherited() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited)


class LockError(RuntimeError):
    """The folder is in use by another run; the message names it."""


class OutputLock:
    """``shared``: several holders at once (the tasks of one ingest), none while an exclusive holder (a
    plan, a merge, a single-node ingest) has it; ``name``: another lock file in the folder (one per task)."""

    def __init__(self, folder: str | Path, what: str = "run", shared: bool = False, name: str = LOCK_NAME):
        self.folder, self.what, self.shared, self.name = Path(folder), what, shared, name
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = (f"{holder.get('what', 'a run')} (process {holder.get('pid', '?')} on {holder.get('host', '?')})"
                   if holder else "another run")
            raise LockError(f"{self.folder} is in use by {who}; wait for it to finish, or use another "
                            "output folder.") from None
        if not self.shared:   # who holds it, for the message another run gets (no command line: it may hold paths)
            info = json.dumps({"what": self.what, "pid": os.getpid(), "host": socket.gethostname()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None and self._pid != os.getpid():   # a forked child: its copy is already closed
            self._fd = None
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            _HELD.discard(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()



