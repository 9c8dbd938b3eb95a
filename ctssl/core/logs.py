"""Logging convention: one ``logging.getLogger(__name__)`` per module, configured here.

Only the main process writes to the console (``is_main``); every process may append to a log file
in the output folder. Metrics go to JSON lines (``append_jsonl``), not to the log.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", log_file: str | Path | None = None, is_main: bool = True) -> None:
    """Configure the root logger for a ctssl command (idempotent)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"Unknown log level '{level}'. Valid levels: DEBUG, INFO, WARNING, ERROR.")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ctssl", False):
            root.removeHandler(handler)
    root.setLevel(numeric)
    # Third-party loggers that narrate per-item work at INFO, or report as "Could not load ..." what is a
    # normal probe (faiss tries each CPU instruction set's build in turn and logs every miss).
    for noisy in ("openjpeg", "pydicom", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    handlers: list[logging.Handler] = []
    if is_main:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._ctssl = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN; ``json.dumps`` would
    write a bare ``NaN`` that other readers refuse)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line (metrics, results); non-finite numbers become null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + "\n")
