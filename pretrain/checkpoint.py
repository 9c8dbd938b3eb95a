"""Checkpoints: one function builds the state; atomic writes; automatic resume; export.

``OUT/checkpoints/last.pt`` holds model (student and teacher), optimizer, scheduler, grad scaler,
step, epoch and config, written to a temporary name then ``os.replace``d. Loading uses
``torch.load(weights_only=True)`` and strict state-dict loading. The exported backbone is
``OUT/backbone.safetensors`` with a JSON card ``OUT/backbone.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ctssl.core.atomic import FILE_MODE, TMP_MARK, atomic_write_text


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / "checkpoints" / "last.pt"


def build_state(model, optimizer, scheduler, scaler, step: int, epoch: int, config: dict) -> dict:
    return {"model": model.state_dict(), "backbone": model.backbone.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": step, "epoch": epoch, "config": config}


def save_checkpoint(state: dict, out: str | Path) -> Path:
    path = checkpoint_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARK, dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(out: str | Path) -> dict | None:
    path = checkpoint_path(out)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(state: dict, model, optimizer, scheduler, scaler) -> None:
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"Checkpoint does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}. "
                         "Was it written with another method or backbone?")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def export_backbone(model, out: str | Path, card: dict) -> Path:
    """``backbone.safetensors`` and its JSON card (method, data, steps, config)."""
    from safetensors.torch import save_file

    out = Path(out)
    path = out / "backbone.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    tmp = out / f"backbone{TMP_MARK}.safetensors"
    save_file(tensors, str(tmp), metadata={"format": "pt", "ctssl": "backbone"})
    os.replace(tmp, path)
    atomic_write_text(out / "backbone.json", json.dumps(card, indent=1, default=str) + "\n")
    return path
