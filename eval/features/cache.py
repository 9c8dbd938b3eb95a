"""Frozen-backbone features, extracted once and cached on disk with their provenance.

``cached_features(source, dataset, splits, size, cache)`` returns one ``Features`` per split. The
cache folder is ``CACHE/<key>/`` where ``key`` hashes everything the numbers depend on: the
backbone source and the SHA-256 of its weights, the dataset's content fingerprint and label, the
input spec (windows, size, normalisation) and the ctssl version. Inside: ``<split>.npy`` (float32
(N, D), read memory-mapped, so a bank larger than memory is never loaded whole),
``<split>.json`` (keys, patients, targets) and ``provenance.json``.

Rows go straight into a memory-mapped ``.npy`` under a temporary name (``eval.features.extract``), renamed when
complete: an interrupted extraction is redone, never half-read, and a rerun finds the cache and extracts
nothing. Across processes or SLURM array tasks (``ctssl extract --task-index I --num-tasks N``,
slurm/extract.sh), each task extracts a contiguous block of units into a part file and ``--merge`` assembles
the one ``<split>.npy`` the next stage reads as a bank.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctssl import __version__
from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.eval.features.extract import NonFiniteFeatures, default_device, extract_units
from ctssl.eval.inputs.datasets import Dataset
from ctssl.pretrain.sources import load_backbone
from ctssl.eval.inputs.spec import InputSpec, input_spec

logger = logging.getLogger(__name__)


@dataclass
class Features:
    features: np.ndarray          # (N, D) float32, possibly memory-mapped
    targets: np.ndarray           # (N,) class index (-1: class unseen in training) or (N, C) 0/1
    groups: np.ndarray            # (N,) patient
    keys: list[str]
    provenance: dict


def feature_dim(model: torch.nn.Module, spec: InputSpec, device: str) -> int:
    """The backbone's feature dimension for inputs of ``spec``."""
    with torch.inference_mode():
        x = torch.zeros(1, spec.in_chans, spec.size, spec.size, device=device)
        return int(model.to(device).eval()(x).shape[1])


def cache_key(source: str, card: dict, dataset: Dataset, spec: InputSpec) -> str:
    """What the features depend on. Not the label: two tasks on the same samples (region and lesion of every
    slice) share one extraction; the samples themselves (which a label or filter selects) are in the key."""
    samples = hashlib.sha256("\n".join(f"{split}:{s.key}" for split in sorted(dataset.samples)
                                        for s in dataset.samples[split]).encode()).hexdigest()
    identity = {"source": source, "weights_sha256": card.get("weights_sha256"), "dataset": dataset.fingerprint,
                "samples": samples, "input": spec.identity(), "ctssl": __version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _cache(source: str, dataset: Dataset, size: int, cache: str | Path, grey_window: str, size_rule: str = ""):
    model, card = load_backbone(source)
    spec = input_spec(card, dataset.kind, size, grey_window, size_rule)
    folder = Path(cache) / cache_key(source, card, dataset, spec)
    provenance = {"backbone": {k: v for k, v in card.items() if k != "config"}, "dataset": dataset.describe(),
                  "input": spec.to_dict(), "ctssl": __version__, "cache": str(folder)}
    return model, spec, folder, provenance


def _finish_split(folder: Path, split: str, dataset: Dataset, tmp: Path, seconds: float, device: str) -> None:
    os.replace(tmp, folder / f"{split}.npy")
    samples = dataset.entries(split)
    atomic_write_text(folder / f"{split}.json", json.dumps({"keys": [s.key for s in samples],
                                                            "groups": [s.group for s in samples],
                                                            "seconds": round(seconds, 3), "device": device}))


def cached_features(source: str, dataset: Dataset, splits, size: int, cache: str | Path,
                    batch: int | None = None, device: str | None = None, grey_window: str = "wide",
                    workers: int | None = None, size_rule: str = "") -> dict[str, Features]:
    """Features of each split of ``dataset`` under backbone ``source`` (module docstring); ``size_rule`` says why
    the input has ``size`` (``eval.inputs.spec.comparison_size``)."""
    model, spec, folder, provenance = _cache(source, dataset, size, cache, grey_window, size_rule)
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
            try:
                extract_units(model, dataset, split, spec, feats, batch=batch, device=device, workers=workers,
                              desc=f"features {source} / {split}")
            except NonFiniteFeatures as err:
                del feats
                tmp.unlink(missing_ok=True)
                raise ValueError(f"Backbone '{source}' gives non-finite features (NaN or inf) on {err.rows} "
                                 f"{split} image(s) at {spec.size} px: it cannot be evaluated. Check its "
                                 f"pretraining (a NaN loss?) or evaluate an earlier checkpoint.") from None
            feats.flush()
            del feats
            _finish_split(folder, split, dataset, tmp, time.perf_counter() - start, device)
        info = json.loads(meta.read_text())
        if info["keys"] != [s.key for s in samples]:
            raise RuntimeError(f"Feature cache '{folder}' does not match the dataset's {split} samples; delete it.")
        result[split] = Features(np.load(array, mmap_mode="r"), dataset.targets(split), dataset.groups(split),
                                 info["keys"], {**provenance, "split": split})
    if not (folder / "provenance.json").exists():
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=1, default=str) + "\n")
    return result


def task_units(n_units: int, task: int, num_tasks: int) -> list[int]:
    """A contiguous block of units for ``task`` of ``num_tasks`` (so each part holds contiguous rows)."""
    bounds = np.linspace(0, n_units, num_tasks + 1).round().astype(int)
    return list(range(bounds[task], bounds[task + 1]))


def extract_task(source: str, dataset: Dataset, splits, size: int, cache: str | Path, task: int, num_tasks: int,
                 batch: int | None = None, device: str | None = None, grey_window: str = "wide",
                 workers: int | None = None) -> dict:
    """One array task's share (a contiguous block of units of each split) into part files of the cache;
    a finished part is kept. Returns {split: rows written}."""
    if not 0 <= task < num_tasks:
        raise ValueError(f"task {task} is outside 0..{num_tasks - 1}")
    model, spec, folder, _ = _cache(source, dataset, size, cache, grey_window)
    device = device or default_device()
    parts = folder / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    done = {}
    for split in splits:
        part = parts / f"{split}-t{task:05d}-of-{num_tasks:05d}.npy"
        units = task_units(len(dataset.units[split]), task, num_tasks)
        rows = sum(dataset.units[split][u] for u in units)
        if (folder / f"{split}.npy").exists() or part.exists():
            done[split] = rows
            continue
        tmp = part.with_name(part.name + TMP_MARK + f"{os.getpid()}.npy")
        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                          shape=(rows, feature_dim(model, spec, device)))
        if rows:
            try:
                extract_units(model, dataset, split, spec, feats, units, batch, device, workers,
                              desc=f"features {source} / {split}, task {task}/{num_tasks}")
            except NonFiniteFeatures as err:
                del feats
                tmp.unlink(missing_ok=True)
                raise ValueError(f"Backbone '{source}' gives non-finite features (NaN or inf) on {err.rows} "
                                 f"{split} image(s): it cannot be evaluated.") from None
        feats.flush()
        del feats
        os.replace(tmp, part)
        done[split] = rows
    return done


def merge_parts(source: str, dataset: Dataset, splits, size: int, cache: str | Path, num_tasks: int,
                grey_window: str = "wide") -> dict[str, Features]:
    """The parts of ``num_tasks`` tasks assembled into each split's one ``<split>.npy`` (streamed copy);
    names the tasks whose parts are missing."""
    _, _, folder, _ = _cache(source, dataset, size, cache, grey_window)
    for split in splits:
        if (folder / f"{split}.npy").exists():
            continue
        names = [folder / "parts" / f"{split}-t{t:05d}-of-{num_tasks:05d}.npy" for t in range(num_tasks)]
        missing = [t for t, n in enumerate(names) if not n.exists()]
        if missing:
            raise FileNotFoundError(f"extraction parts missing for split {split}: tasks {missing} have not finished")
        parts = [np.load(n, mmap_mode="r") for n in names]
        tmp = folder / f"{split}.npy{TMP_MARK}merge.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(sum(len(p) for p in parts), parts[0].shape[1]))
        row = 0
        for p in parts:
            for start in range(0, len(p), 65536):
                block = p[start:start + 65536]
                out[row:row + len(block)] = block
                row += len(block)
        out.flush()
        del out
        _finish_split(folder, split, dataset, tmp, 0.0, "parts")
        for n in names:
            n.unlink()
    return cached_features(source, dataset, splits, size, cache, grey_window=grey_window)
