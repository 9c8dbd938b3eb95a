"""The training loader: WebDataset shards (CT ``.hu`` or encoded natural images) -> view batches.

Every process draws shards with replacement (``ResampledShards``) from its own seed (seed, rank,
worker, and the global step at which the loader starts), so a rank or worker never runs out of
shards and every rank yields exactly ``steps`` batches: uneven shard counts cannot hang a
collective (webdataset #188, #225). ``with_epoch`` is set on the WebLoader (webdataset #303). An
epoch is ``epoch_samples`` (the split's count in the manifest) divided by the global batch.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import signal

import torch
import webdataset as wds
from PIL import Image

from ctssl.shards.encoding import EncodingError, decode_hu
from ctssl.shards.manifest import load_manifest
from ctssl.shards.reader import shard_paths

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def data_kind(shards: str, kind: str = "auto") -> str:
    if kind != "auto":
        if kind not in ("ct", "natural"):
            raise ValueError(f"Unknown data kind '{kind}'. Valid kinds are ['auto', 'ct', 'natural'].")
        return kind
    return load_manifest(shards).get("kind", "ct")


def decode(sample: dict):
    """(image, meta): int16 HU array for CT samples, an RGB PIL image for natural ones."""
    meta = json.loads(sample["json"]) if "json" in sample else {}
    if "hu" in sample:
        return decode_hu(sample["hu"]), meta
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return Image.open(io.BytesIO(sample[ext])).convert("RGB"), meta
    raise KeyError(f"sample {sample.get('__key__')} has no image member (.hu or {IMAGE_EXTENSIONS})")


def skip_bad_sample(exn: Exception) -> bool:
    """A corrupt sample is skipped with a warning; programming errors still raise."""
    if isinstance(exn, (EncodingError, OSError, KeyError, ValueError, json.JSONDecodeError)):
        logger.warning("skipping a bad sample: %s: %s", type(exn).__name__, exn)
        return True
    raise exn


def _to_views(sample, views):
    image, _ = decode(sample)
    return views(image)


def _collate(samples):
    """list of per-sample view lists -> list of (B, C, H, W) tensors, one per view."""
    return [torch.stack(v) for v in zip(*samples)]


def _ignore_stop_signals(worker_id: int) -> None:
    """SLURM sends SIGTERM to every process of a job; loader workers leave it to the training
    process, which checkpoints and exits (the workers end with it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _worker_seed(rank: int) -> int:
    info = torch.utils.data.get_worker_info()
    return rank * 1000 + (info.id if info is not None else 0)


def steps_per_epoch(cfg, world_size: int) -> int:
    manifest = load_manifest(cfg.data.shards)
    split = manifest["splits"].get(cfg.data.split)
    if split is None:
        raise ValueError(f"Split '{cfg.data.split}' is not in {cfg.data.shards} (has {sorted(manifest['splits'])}).")
    samples = cfg.data.epoch_samples or split["samples"]
    return max(1, samples // (cfg.data.batch_size * world_size))


def make_loader(cfg, views, rank: int, steps: int, start_step: int) -> wds.WebLoader:
    """A loader yielding exactly ``steps`` batches of views for this process."""
    urls = [str(p) for p in shard_paths(cfg.data.shards, cfg.data.split)]
    if not urls:
        raise ValueError(f"No '{cfg.data.split}' shards in {cfg.data.shards}.")
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=cfg.seed * 1_000_003 + start_step,
                            worker_seed=functools.partial(_worker_seed, rank), deterministic=True),
        wds.tarfile_to_samples(handler=skip_bad_sample),
        wds.shuffle(cfg.data.shuffle_buffer, initial=min(cfg.data.shuffle_buffer, 64)),
        wds.map(functools.partial(_to_views, views=views), handler=skip_bad_sample),
        wds.batched(cfg.data.batch_size, collation_fn=_collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=cfg.data.num_workers,
                           persistent_workers=False, pin_memory=torch.cuda.is_available(),
                           worker_init_fn=_ignore_stop_signals)
    return loader.with_epoch(steps)
