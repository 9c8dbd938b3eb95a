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
- ``library_text(err)``: a library's message where its words are the reason (highdicom's refusal of a SEG),
  with everything that could be a header value taken out (``...`` in its place): quoted text that is not a DICOM
  keyword, UIDs, dates and times, long numbers, person names (``^``), and every word that is neither lower-case
  prose, a DICOM keyword nor part of an attribute name's words; one line, at most 200 characters.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
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


class VolumeError(ValueError):
    """A volume file (NIfTI, NRRD, MetaImage) ctssl will not ingest; the message is the report's reason (a rule's
    skip such as a 4-D image, or a fixed text for an unreadable file: never a library's message)."""


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

    if isinstance(err, (VolumeError, MaskError)):
        return str(err)
    return type(err).__name__


@functools.lru_cache(maxsize=1)
def _dicom_vocabulary() -> tuple[frozenset[str], str]:
    """(the DICOM dictionary's keywords, all its attribute names joined by newlines)."""
    from pydicom.datadict import DicomDictionary

    entries = list(DicomDictionary.values())
    return frozenset(e[4] for e in entries if e[4]), "\n" + "\n".join(e[2] for e in entries) + "\n"


def _in_a_name(words: list[str], names: str) -> bool:
    """True when ``words`` (capitalised) stand in some attribute name as a run of whole words."""
    return re.search(r"(?<![A-Za-z])" + r"\s+".join(map(re.escape, words)) + r"(?![A-Za-z])", names) is not None


_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|[A-Za-z_][A-Za-z0-9_]*|\d[\d.:/-]*|\S")


def library_text(err: BaseException, limit: int = 200) -> str:
    """``err``'s message with anything that could be a header value replaced by ``...`` (module docstring): a word
    stays when it is lower-case prose, a DICOM keyword (``SliceThickness``), or one of a run of capitalised words
    that is part of an attribute name ("Pixel Measures Sequence"; the message's first word alone suffices)."""
    if not str(err).strip():
        return type(err).__name__
    text = str(err).strip().splitlines()[0]
    keywords, names = _dicom_vocabulary()
    tokens = _TOKEN.findall(text)
    keep = [False] * len(tokens)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token[0] in "'\"":
            keep[i] = token[1:-1] in keywords
        elif token[0].isalpha() or token[0] == "_":
            if token in keywords or (token.isalpha() and token.islower()) or token == "SEG":
                keep[i] = True
            elif token.isalpha() and token[0].isupper():
                j = i
                while j < len(tokens) and tokens[j].isalpha() and tokens[j][0].isupper():
                    j += 1
                run = tokens[i:j]
                ok = _in_a_name(run, names) and (len(run) > 1 or i == 0)
                for k in range(i, j):
                    keep[k] = ok or (k == 0 and _in_a_name([tokens[0]], names))
                i = j
                continue
        elif token[0].isdigit():
            keep[i] = re.fullmatch(r"\d{1,4}(\.\d{1,4})?", token) is not None
        else:
            keep[i] = token not in "^="
        i += 1
    out: list[str] = []
    for token, kept in zip(tokens, keep):
        piece = token if kept else "..."
        if piece == "..." and out and out[-1] == "...":
            continue
        out.append(piece)
    line = re.sub(r"\s+([,;:)\]]|\.(?!\.))", r"\1", " ".join(out))
    line = re.sub(r"([(\[])\s+", r"\1", line)
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
