"""Frozen-backbone features of shard samples, with their labels.

A backbone source is ``random:NAME:IN_CHANS`` (random initialisation, the baseline every
pretraining must beat) or an exported ``backbone.safetensors`` with its ``backbone.json`` card,
which says the architecture, the input channels and (for CT) the windows; inputs are prepared
as in pretraining's evaluation view (the whole slice resized, windowed, normalised).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pretrain.backbones import build_backbone
from pretrain.config import PretrainConfig
from pretrain.loader import decode
from pretrain.views import CTViews, natural_eval_view
from shards.reader import iter_shard, shard_paths


def load_backbone(source: str):
    """(module, card) for ``random:NAME:IN_CHANS`` or a ``backbone.safetensors`` path."""
    if source.startswith("random:"):
        _, name, in_chans = source.split(":")
        model, _ = build_backbone(name, int(in_chans))
        return model, {"backbone": name, "in_chans": int(in_chans), "method": "random init", "data": {}}
    path = Path(source)
    card_path = path.with_suffix(".json")
    if not card_path.exists():
        raise FileNotFoundError(f"No card '{card_path}' beside '{path}' (written by pretraining's export).")
    card = json.loads(card_path.read_text())
    model, _ = build_backbone(card["backbone"], card["in_chans"], init="checkpoint", weights=str(path))
    return model, card


def eval_transform(card: dict, kind: str, size: int):
    if kind == "natural":
        return natural_eval_view(size)
    cfg = PretrainConfig()
    windows = (card.get("data") or {}).get("windows") or cfg.data.windows
    if card["in_chans"] != len(windows):
        windows = cfg.data.windows[: card["in_chans"]]
    views = CTViews(windows, cfg.data.augment, [], cfg.data.normalize_mean, cfg.data.normalize_std)
    return lambda hu: views.eval_view(hu, size)


@torch.no_grad()
def extract(model, shards: str, splits: list[str], label: str, transform, batch: int = 64,
            device: str | None = None):
    """(features (N, D), labels list[str], patients list[str]) of samples carrying ``label``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    feats, labels, patients, pending = [], [], [], []

    def flush():
        if pending:
            feats.append(model(torch.stack(pending).to(device)).float().cpu())
            pending.clear()

    for split in splits:
        for path in shard_paths(shards, split):
            for raw in iter_shard(path, decode=False):
                image, meta = decode(raw)
                value = (meta.get("labels") or {}).get(label, meta.get(label))
                if value is None:
                    continue
                pending.append(transform(image))
                labels.append(str(value))
                patients.append(meta.get("patient", ""))
                if len(pending) == batch:
                    flush()
    flush()
    if not feats:
        raise ValueError(f"No samples with label '{label}' in splits {splits} of {shards}.")
    return torch.cat(feats), labels, patients
