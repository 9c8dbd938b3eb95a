"""Hounsfield windows: the explicit intensity settings of every CT view ctssl makes.

``WINDOWS`` holds the usual presets as (level, width) in HU (see FIELD-NOTES). A window maps
[level - width/2, level + width/2] linearly to [0, 1] and clips outside.
"""

from __future__ import annotations

import numpy as np

WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "liver": (60.0, 160.0),
    "wide": (0.0, 2000.0),       # -1000 .. 1000, as MONAI Swin UNETR pretraining clips
}


def get_window(name: str) -> tuple[float, float]:
    if name not in WINDOWS:
        raise ValueError(f"Unknown window '{name}'. Valid windows are {sorted(WINDOWS)}.")
    return WINDOWS[name]


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU array -> float32 in [0, 1] under the window (level, width)."""
    if width <= 0:
        raise ValueError(f"Window width must be positive, got {width}.")
    low = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - low) / width
    return np.clip(out, 0.0, 1.0)


def to_uint8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Windowed HU as 8-bit grey levels, for pictures only (never for training data)."""
    return np.rint(apply_window(hu, level, width) * 255.0).astype(np.uint8)


def window_batch(x, low, width):
    """The one windowing of every model input (training views, evaluation inputs, monitors).

    ``x``: HU, torch (B, 1, H, W); ``low`` and ``width``: the windows' lower edges and widths, (C,)
    for every sample alike or (B, C) per sample. Returns (B, C, H, W) in [0, 1]: one window per channel.
    """
    low, width = (v.view(-1, v.shape[-1], 1, 1) if v.dim() == 2 else v.view(1, -1, 1, 1) for v in (low, width))
    return ((x - low) / width).clamp_(0, 1)


def stack_windows(x, windows: list[tuple[float, float]]):
    """(1, H, W) HU, a numpy array or a torch tensor -> (C, H, W) in [0, 1] of the same kind: one
    window (level, width) per channel (``window_batch`` for one sample)."""
    low = np.array([level - width / 2.0 for level, width in windows], np.float32)
    width = np.array([width for _, width in windows], np.float32)
    if isinstance(x, np.ndarray):
        out = (x - low.reshape(-1, 1, 1)) / width.reshape(-1, 1, 1)
        return np.clip(out, 0.0, 1.0, out=out)
    import torch

    return window_batch(x[None], torch.from_numpy(low).to(x.device), torch.from_numpy(width).to(x.device))[0]
