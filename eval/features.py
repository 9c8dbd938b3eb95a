"""Frozen-backbone features, extracted once and cached on disk with their provenance.

``cached_features(source, dataset, splits, size, cache)`` returns one ``Features`` per split. The
cache folder is ``CACHE/<key>/`` where ``key`` hashes everything the numbers depend on: the
backbone source and the SHA-256 of its weights, the dataset's content fingerprint and label, the
input spec (windows, size, normalisation) and the ctssl version. Inside: ``<split>.npy`` (float32
(N, D), read memory-mapped, so a bank larger than memory is never loaded whole),
``<split>.json`` (keys, patients, targets) and ``provenance.json``. Images are streamed from the
dataset and features written batch by batch into a memory-mapped file under a temporary name,
renamed when complete: memory stays flat for any corpus size, an interrupted extraction is redone,
never half-read, and a rerun finds the cache and extracts nothing.

Extraction is batched, in ``torch.inference_mode``, on the GPU when there is one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ctssl import __version__
from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.eval.datasets import Dataset
from ctssl.eval.inputs import InputSpec, input_spec, prepare
from ctssl.eval.sources import load_backbone

logger = logging.getLogger(__name__)


@dataclass
class Features:
    features: np.ndarray          # (N, D) float32, possibly memory-mapped
    targets: np.ndarray           # (N,) class index (-1: class unseen in training) or (N, C) 0/1
    groups: np.ndarray            # (N,) patient
    keys: list[str]
    provenance: dict


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch(device: str) -> int:
    """8 on CPU (larger batches overflow the caches and run slower: ``ctssl bench extract``), 256 on GPU."""
    return 256 if device.startswith("cuda") else 8


@torch.inference_mode()
def compute_features(model: torch.nn.Module, images: Iterable, spec: InputSpec, batch: int | None = None,
                     device: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """(N, D) float32 features of ``images`` (any iterable, consumed once, in order). With ``out``
    (e.g. a memory-mapped (N, D) array) rows are written there batch by batch, so nothing grows
    in memory; otherwise they are returned as one array."""
    device = device or default_device()
    batch = batch or default_batch(device)
    model = model.to(device).eval()
    parts, row, pending = [], 0, []

    def flush():
        nonlocal row
        feats = model(torch.stack(pending).to(device)).float().cpu().numpy()
        if out is not None:
            out[row:row + len(feats)] = feats
        else:
            parts.append(feats)
        row += len(feats)
        pending.clear()

    for image in images:
        pending.append(prepare(image, spec))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    if out is not None:
        if row != len(out):
            raise RuntimeError(f"expected {len(out)} images, got {row}")
        return out
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def feature_dim(model: torch.nn.Module, spec: InputSpec, device: str) -> int:
    with torch.inference_mode():
        x = torch.zeros(1, spec.in_chans, spec.size, spec.size, device=device)
        return int(model.to(device).eval()(x).shape[1])


def cache_key(source: str, card: dict, dataset: Dataset, spec: InputSpec) -> str:
    identity = {"source": source, "weights_sha256": card.get("weights_sha256"), "dataset": dataset.fingerprint,
                "label": dataset.label, "input": spec.to_dict(), "ctssl": __version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def cached_features(source: str, dataset: Dataset, splits, size: int, cache: str | Path,
                    batch: int | None = None, device: str | None = None) -> dict[str, Features]:
    """Features of each split of ``dataset`` under backbone ``source`` (module docstring)."""
    model, card = load_backbone(source)
    spec = input_spec(card, dataset.kind, size)
    folder = Path(cache) / cache_key(source, card, dataset, spec)
    provenance = {"backbone": {k: v for k, v in card.items() if k != "config"}, "dataset": dataset.describe(),
                  "input": spec.to_dict(), "ctssl": __version__, "cache": str(folder)}
    result = {}
    for split in splits:
        array, meta = folder / f"{split}.npy", folder / f"{split}.json"
        samples = dataset.entries(split)
        if not (array.exists() and meta.exists()):
            start = time.perf_counter()
            device = device or default_device()
            # Rows go straight into a memory-mapped .npy under a temporary name, renamed when full.
            tmp = array.with_name(f"{array.name}{TMP_MARK}{os.getpid()}.npy")   # concurrent jobs: own names
            folder.mkdir(parents=True, exist_ok=True)
            feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                              shape=(len(samples), feature_dim(model, spec, device)))
            compute_features(model, dataset.iter_images(split), spec, batch, device, out=feats)
            feats.flush()
            del feats
            os.replace(tmp, array)
            seconds = time.perf_counter() - start
            atomic_write_text(meta, json.dumps({"keys": [s.key for s in samples], "groups": [s.group for s in samples],
                                                "seconds": round(seconds, 3), "device": device}))
            logger.info("features %s/%s: %d images in %.1f s (%.0f images/s)", source, split, len(samples), seconds,
                        len(samples) / max(seconds, 1e-9))
        info = json.loads(meta.read_text())
        if info["keys"] != [s.key for s in samples]:
            raise RuntimeError(f"Feature cache '{folder}' does not match the dataset's {split} samples; delete it.")
        result[split] = Features(np.load(array, mmap_mode="r"), dataset.targets(split), dataset.groups(split),
                                 info["keys"], {**provenance, "split": split})
    if not (folder / "provenance.json").exists():
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=1, default=str) + "\n")
    return result
