"""Experiment trackers: Accelerate's (``accelerate.tracking``: tensorboard, wandb, mlflow, comet_ml, aim,
clearml, dvclive, ...), opened as ``Accelerator.init_trackers`` opens them, for pretraining's metrics and for
evaluation records (``ctssl report --log-with``).

``open_trackers(names, out, run_name, config)`` returns the started trackers (TensorBoard's writes to
``OUT/tensorboard``; the others to their own store: W&B offline with ``WANDB_MODE=offline``, MLflow to
``MLFLOW_TRACKING_URI``, e.g. ``file:/path/mlruns``, as those libraries read them); ``log`` and ``finish``
act on each. A tracker whose library is not installed is a one-line error naming the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


def check_trackers(names: list[str]) -> list[str]:
    """Problems with tracker ``names`` (unknown, or its library missing), one line each."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    problems = []
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            problems.append(f"unknown tracker {name!r}; Accelerate's trackers are {sorted(LOGGER_TYPE_TO_CLASS)}")
        elif importlib.util.find_spec(PACKAGES.get(name, name)) is None:
            extra = " (pip install 'ctssl[mlflow]')" if name == "mlflow" else ""
            problems.append(f"tracker {name!r} needs the package {PACKAGES.get(name, name)!r}{extra}")
    return problems


def scalars(config: dict, prefix: str = "") -> dict:
    """A nested config as flat ``a.b.c`` keys with bool/int/float/str values (lists and None as text), what
    every tracker's ``store_init_configuration`` accepts."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(scalars(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def open_trackers(names: list[str], out: str | Path, run_name: str, config: dict | None = None) -> list:
    """Started trackers ``names`` for one run named ``run_name`` (TensorBoard: ``OUT/tensorboard``)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    problems = check_trackers(names)
    if problems:
        raise ValueError("; ".join(problems))
    trackers = []
    for name in names:
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            tracker = cls("tensorboard" if not run_name else f"tensorboard/{run_name}", str(out))
        elif cls.requires_logging_directory:
            tracker = cls(run_name or "ctssl", str(out))
        else:
            tracker = cls(run_name or "ctssl")
        tracker.start()
        trackers.append(tracker)
    if config:
        for tracker in trackers:
            tracker.store_init_configuration(scalars(config))
    return trackers


def log(trackers: list, values: dict, step: int | None = None) -> None:
    for tracker in trackers:
        tracker.log(values, step=step)


def finish(trackers: list) -> None:
    for tracker in trackers:
        tracker.finish()
