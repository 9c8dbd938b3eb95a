"""Frozen-backbone features, extracted once and cached on disk with their provenance.

``cached_features(source, dataset, splits, size, cache)`` returns one ``Features`` per split. The
cache folder is ``CACHE/<key>/`` where ``key`` hashes everything the numbers depend on: the
backbone source and the SHA-256 of its weights, the dataset's content fingerprint and label, the
input spec (windows, size, normalisation) and the ctssl version. Inside: ``<split>.npy`` (float32
(N, D), read memory-mapped, so a bank larger than memory is never loaded whole),
``<split>.json`` (keys, patients, targets) and ``provenance.json``.

Extraction at scale: a DataLoader's workers read and decode the dataset's units (a shard each, or
blocks of rows) and prepare whole batches (CT slices windowed in one batched call), the main process
moves each batch to the device (pinned memory, non-blocking), runs the backbone (bf16 autocast on a
GPU, ``inference_mode``) and writes the rows at their offsets into a memory-mapped file under a
temporary name, renamed when complete: memory stays flat for any corpus size, an interrupted
extraction is redone, never half-read, a rerun finds the cache and extracts nothing, and the result
does not depend on the number of workers. Across processes or SLURM array tasks
(``ctssl extract --task-index I --num-tasks N``, slurm/extract.sh), each task extracts a contiguous
block of units into a part file and ``--merge`` assembles the one ``<split>.npy`` the next stage reads
as a bank.
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
from ctssl.eval.inputs.datasets import Dataset
from ctssl.eval.inputs.spec import InputSpec, input_spec, prepare_batch
from ctssl.eval.inputs.sources import load_backbone

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


def default_workers(device: str) -> int:
    """Loader workers for extraction. With the backbone on a GPU: the CPUs less one for the main process, at
    most 8. With it on the CPU: none; the backbone's threads use every core, and workers only compete with
    them (``ctssl bench extract``, 2 cores: 2 workers ran at 0.77-0.94x of batched preparation in the main
    process with ResNet-18/50)."""
    if not str(device).startswith("cuda"):
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


class _UnitBatches(torch.utils.data.IterableDataset):
    """(row, prepared batch) for the given units of a split; DataLoader workers take every W-th unit."""

    def __init__(self, dataset: Dataset, split: str, units: list[int], spec: InputSpec, batch: int, base: int):
        super().__init__()
        self.dataset, self.split, self.units, self.spec, self.batch = dataset, split, units, spec, batch
        self.offsets = dataset.unit_offsets(split)
        self.base = base

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.units[info.id::info.num_workers] if info is not None else self.units
        if info is not None:
            torch.set_num_threads(1)
        for unit in mine:
            row, images = self.offsets[unit] - self.base, []
            for _key, image in self.dataset.unit_stream(self.split, unit):
                images.append(image)
                if len(images) == self.batch:
                    yield row, prepare_batch(images, self.spec)
                    row, images = row + len(images), []
            if images:
                yield row, prepare_batch(images, self.spec)


@torch.inference_mode()
def _run(model: torch.nn.Module, batches: Iterable, device: str, out: np.ndarray) -> int:
    """Features of every (row, batch) into ``out``; returns the number of rows written."""
    cuda = str(device).startswith("cuda")
    written = 0
    for row, x in batches:
        x = x.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            feats = model(x)
        out[row:row + len(x)] = feats.float().cpu().numpy()
        written += len(x)
    return written


def extract_units(model: torch.nn.Module, dataset: Dataset, split: str, spec: InputSpec, out: np.ndarray,
                  units: list[int] | None = None, batch: int | None = None, device: str | None = None,
                  workers: int | None = None) -> np.ndarray:
    """Features of the split's ``units`` (default all) written into ``out`` (rows of those units, in order)."""
    device = device or default_device()
    batch = batch or default_batch(device)
    workers = default_workers(device) if workers is None else workers
    units = list(range(len(dataset.units[split]))) if units is None else units
    base = dataset.unit_offsets(split)[units[0]] if units else 0
    expected = sum(dataset.units[split][u] for u in units)
    if len(out) != expected:
        raise RuntimeError(f"expected {expected} rows of output, got {len(out)}")
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(_UnitBatches(dataset, split, units, spec, batch, base), batch_size=None,
                                         num_workers=min(workers, max(1, len(units))) if workers else 0,
                                         pin_memory=str(device).startswith("cuda"))
    written = _run(model, loader, device, out)
    if written != expected:
        raise RuntimeError(f"expected {expected} images, got {written}")
    return out


@torch.inference_mode()
def compute_features(model: torch.nn.Module, images: Iterable, spec: InputSpec, batch: int | None = None,
                     device: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """(N, D) float32 features of ``images`` (an iterable, consumed once, in order), prepared in this
    process; with ``out`` rows are written there batch by batch. For datasets, ``extract_units`` divides
    the work among loader workers."""
    device = device or default_device()
    batch = batch or default_batch(device)
    model = model.to(device).eval()
    parts, pending = [], []

    def batches():
        row = 0
        for image in images:
            pending.append(image)
            if len(pending) == batch:
                yield row, prepare_batch(pending, spec)
                row += len(pending)
                pending.clear()
        if pending:
            yield row, prepare_batch(pending, spec)

    if out is not None:
        written = _run(model, batches(), device, out)
        if written != len(out):
            raise RuntimeError(f"expected {len(out)} images, got {written}")
        return out

    class _Collect:
        def __setitem__(self, index, value):
            parts.append(value)

    _run(model, batches(), device, _Collect())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def feature_dim(model: torch.nn.Module, spec: InputSpec, device: str) -> int:
    with torch.inference_mode():
        x = torch.zeros(1, spec.in_chans, spec.size, spec.size, device=device)
        return int(model.to(device).eval()(x).shape[1])


def cache_key(source: str, card: dict, dataset: Dataset, spec: InputSpec) -> str:
    """What the features depend on. Not the label: two tasks on the same samples (region and lesion of every
    slice) share one extraction; the samples themselves (which a label or filter selects) are in the key."""
    samples = hashlib.sha256("\n".join(f"{split}:{s.key}" for split in sorted(dataset.samples)
                                        for s in dataset.samples[split]).encode()).hexdigest()
    identity = {"source": source, "weights_sha256": card.get("weights_sha256"), "dataset": dataset.fingerprint,
                "samples": samples, "input": spec.to_dict(), "ctssl": __version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _cache(source: str, dataset: Dataset, size: int, cache: str | Path, grey_window: str):
    model, card = load_backbone(source)
    spec = input_spec(card, dataset.kind, size, grey_window)
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
                    workers: int | None = None) -> dict[str, Features]:
    """Features of each split of ``dataset`` under backbone ``source`` (module docstring)."""
    model, spec, folder, provenance = _cache(source, dataset, size, cache, grey_window)
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
            extract_units(model, dataset, split, spec, feats, batch=batch, device=device, workers=workers)
            feats.flush()
            del feats
            seconds = time.perf_counter() - start
            _finish_split(folder, split, dataset, tmp, seconds, device)
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
            extract_units(model, dataset, split, spec, feats, units, batch, device, workers)
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
