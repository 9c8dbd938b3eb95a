"""Reading untrusted files safely: each file's work is isolated, bounded and quiet.

- ``LibraryMessages``: while reading, every warning and log record of the reading libraries (pydicom,
  highdicom, nibabel, the pixel decoders) is counted by kind (category and package) and its text dropped: pydicom's
  validation messages quote header values (UIDs, and once an image comment holding a patient name), so
  no library text may reach the console, a log file or a report.
- ``time_budget(seconds)``: a ``BudgetExceeded`` raised inside a block that runs longer (SIGALRM; the
  main thread of a process, as ingest's workers are), so that a file that would be read forever
  (e.g. 50,000,000 frames read one by one) becomes a counted skip instead of a hung task.
- ``describe(err)``: an exception as a report reason: its type and, for ctssl's own errors only, its
  message (library messages may quote header values).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings
from collections import Counter
from typing import Iterator

LIBRARY_LOGGERS = ("pydicom", "nibabel", "openjpeg", "libjpeg", "pylibjpeg", "gdcm", "highdicom")


class BudgetExceeded(RuntimeError):
    """A file took longer than its time budget."""


class DataError(ValueError):
    """A file or series ctssl will not ingest; the message is the report's reason (no header values)."""


class _Counting(logging.Handler):
    def __init__(self, counts: Counter):
        super().__init__(logging.DEBUG)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname.lower()} logged by {record.name.split('.')[0]}"] += 1


def _package(filename: str) -> str:
    for name in ("highdicom", "pydicom", "nibabel", "pylibjpeg", "openjpeg", "libjpeg", "numpy", "PIL", "gdcm"):
        if f"/{name}/" in filename or f"\\{name}\\" in filename:
            return name
    return "another library"


class LibraryMessages:
    """Counts of library warnings and log records, by kind, without their text."""

    def __init__(self):
        self.counts: Counter = Counter()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        handler = _Counting(self.counts)
        loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
        saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
        for lg in loggers:
            lg.handlers, lg.propagate = [handler], False
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for lg, (handlers, propagate, level) in zip(loggers, saved):
                    lg.handlers, lg.propagate = handlers, propagate
                    lg.setLevel(level)
                for w in caught:
                    self.counts[f"{w.category.__name__} from {_package(w.filename)}"] += 1

    def take(self) -> dict[str, int]:
        """The counts so far, and start again."""
        out = dict(sorted(self.counts.items()))
        self.counts.clear()
        return out


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Raise ``BudgetExceeded`` in the block after ``seconds`` (no limit for None/0, or off the main thread)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise BudgetExceeded(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def is_data_failure(err: BaseException) -> bool:
    """True for what a damaged file can raise while being read: any exception but an interrupt or an exit.
    (The Rust decoders of pylibjpeg raise pyo3's ``PanicException`` on some damaged codestreams, and it is
    a ``BaseException``, so ``except Exception`` is not enough.)"""
    return not isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit))


def describe(err: BaseException) -> str:
    """A skip reason for ``err``: ctssl's own messages in full, a library's exception by its type only."""
    if isinstance(err, (DataError, BudgetExceeded)):
        return str(err)
    from ctssl.data.mask_placement import MaskError
    from ctssl.data.nifti_volume import NiftiError

    if isinstance(err, (NiftiError, MaskError)):
        return str(err)
    return type(err).__name__
