"""Frozen-backbone features of a dataset's images: extraction in batches, by DataLoader workers.

A DataLoader's workers read and decode the dataset's units (a shard each, or blocks of rows) and prepare whole
batches (CT slices windowed in one batched call), the main process moves each batch to the device (pinned
memory, non-blocking), runs the backbone (bf16 autocast on a GPU, ``inference_mode``) and writes the rows at
their offsets into the output array (``extract_units``): memory stays flat for any corpus size and the result
does not depend on the number of workers. ``compute_features`` does the same for an iterable of images in this
process. The cache on disk, and its division among SLURM array tasks, is ``eval.features.cache``.

Features that are NaN or infinite stop the extraction (``NonFiniteFeatures``): a kNN vote or a probe on them
would report chance without a word. Long extractions show their progress (``ctssl.core.progress``).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import numpy as np
import torch

from ctssl.core.progress import Progress
from ctssl.eval.inputs.datasets import Dataset
from ctssl.eval.inputs.spec import InputSpec, prepare_batch

logger = logging.getLogger(__name__)


class NonFiniteFeatures(ValueError):
    """The backbone gave NaN or infinite features."""

    def __init__(self, rows: int, first_row: int):
        self.rows, self.first_row = rows, first_row
        super().__init__(f"non-finite features (NaN or inf) in {rows} image(s) of a batch, from row {first_row}")


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
def _run(model: torch.nn.Module, batches: Iterable, device: str, out: np.ndarray,
         progress: Progress | None = None) -> int:
    """Features of every (row, batch) into ``out``; returns the number of rows written. Raises
    ``NonFiniteFeatures`` at the first batch with a NaN or infinite feature."""
    cuda = str(device).startswith("cuda")
    written = 0
    for row, x in batches:
        x = x.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            feats = model(x).float()
        finite = torch.isfinite(feats).all(1)
        if not bool(finite.all()):
            raise NonFiniteFeatures(int((~finite).sum()), row)
        out[row:row + len(x)] = feats.cpu().numpy()
        written += len(x)
        if progress is not None:
            progress.update(len(x))
    return written


def extract_units(model: torch.nn.Module, dataset: Dataset, split: str, spec: InputSpec, out: np.ndarray,
                  units: list[int] | None = None, batch: int | None = None, device: str | None = None,
                  workers: int | None = None, desc: str = "features") -> np.ndarray:
    """Features of the split's ``units`` (default all) written into ``out`` (rows of those units, in order);
    progress under ``desc``."""
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
    with Progress(expected, f"{desc} ({spec.size} px, {device})", unit="img", log=logger) as progress:
        written = _run(model, loader, device, out, progress)
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
