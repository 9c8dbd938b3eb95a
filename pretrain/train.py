"""The pretraining loop. Distributed work lives here only, in the Accelerator.

The method computes the loss (pretrain.methods); this loop renders the CT views on the device, calls
backward, clips, sets the step's learning rate and weight decay, steps the optimizer, updates the
teacher EMA, logs, monitors, checkpoints and exports. One code path for every precision (Accelerate's
autocast and grad scaler). What it does, step by step, and where it departs from the references is in
docs/pretraining.md.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.scheduler import cosine_schedule
from tqdm import tqdm

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import save_config, to_dict
from ctssl.core.lock import LockError, OutputLock
from ctssl.core.logs import append_jsonl
from ctssl.pretrain.backbones import build_backbone
from ctssl.pretrain.checkpoint import (build_state, clean_temporaries, export_backbone, load_checkpoint, restore,
                                       rng_state, save_checkpoint, set_rng_state)
from ctssl.pretrain.config import PretrainConfig
from ctssl.pretrain.loader import data_kind, default_workers, derive_seed, make_loader, preflight, steps_per_epoch
from ctssl.pretrain.methods import build_method
from ctssl.pretrain.syncbn import convert_sync_batchnorm, has_batchnorm
from ctssl.pretrain.views import CTViewMaker, crop_specs, natural_eval_view, natural_views

logger = logging.getLogger(__name__)


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM preemption or time limit) ask for a checkpoint and a clean exit, while
    training runs; the previous handlers come back when it ends (a training run inside a longer Python
    process must not leave processes forked later deaf to SIGTERM)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name


def resolve_lr(cfg: PretrainConfig, global_batch: int) -> float:
    """The peak learning rate: ``optim.lr``, or ``optim.base_lr`` scaled by the global batch."""
    if cfg.optim.lr > 0:
        return cfg.optim.lr
    scaling = cfg.optim.lr_scaling
    if scaling == "sqrt":
        return cfg.optim.base_lr * math.sqrt(global_batch)
    if scaling == "linear":
        return cfg.optim.base_lr * global_batch / 256
    return cfg.optim.base_lr


def build_optimizer(cfg: PretrainConfig, model: torch.nn.Module, lr: float):
    """Group 0: weights (weight decay, LARS adaptation); group 1: biases and norms (neither), as DINO's
    ``get_params_groups`` and lightly's benchmarks do. The schedule sets lr and decay every step."""
    params, no_decay = get_weight_decay_parameters([m for m in model.children()])
    groups = [{"params": [p for p in params if p.requires_grad], "weight_decay": cfg.optim.weight_decay},
              {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0}]
    name = cfg.optim.name
    if name == "lars":
        from ctssl.pretrain.lars import LARS

        return LARS(groups, lr=lr, momentum=cfg.optim.momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.optim.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up from ``peak / warmup`` to ``peak`` over ``warmup`` steps, then cosine to ``floor``
    (DINO's ``cosine_scheduler`` with ``min_lr``; SimCLR's warm-up and cosine decay)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def wd_at(step: int, total: int, start: float, end: float | None) -> float:
    """Weight decay: constant, or cosine from ``start`` to ``end`` over training (DINO: 0.04 -> 0.4)."""
    if end is None:
        return start
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total - 1))))


def clip_per_parameter(model: torch.nn.Module, clip: float) -> None:
    """DINO's ``clip_gradients``: each parameter's gradient scaled to norm ``clip`` when above it."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            p.grad.mul_(torch.clamp(clip / (norm + 1e-6), max=1.0))


class KNNMonitor:
    """Weighted kNN accuracy (eval.knn) of the exported backbone (DINO: the teacher): a bank of labelled
    training samples, queries from a held-out split, both a seeded random subset of at most
    ``knn_samples``. Damaged samples are skipped, as the loader skips them."""

    def __init__(self, cfg: PretrainConfig, eval_view):
        self.label = cfg.monitor.knn_label
        shards = cfg.monitor.knn_shards or cfg.data.shards
        bank = _labelled_subset(shards, cfg.data.split, self.label, cfg.monitor.knn_samples, cfg.seed)
        query = _labelled_subset(shards, cfg.monitor.knn_split, self.label, cfg.monitor.knn_samples, cfg.seed)
        self.classes = sorted({v for _, v in bank})
        query = [(img, v) for img, v in query if v in self.classes]
        self.enabled = len(self.classes) >= 2 and len(query) >= 1
        if not self.enabled:
            logger.warning("kNN monitor off: need labelled '%s' samples of >= 2 classes in split '%s' "
                           "and some in split '%s'", self.label, cfg.data.split, cfg.monitor.knn_split)
            return
        self.bank = eval_view([img for img, _ in bank])
        self.bank_labels = torch.tensor([self.classes.index(v) for _, v in bank])
        self.query = eval_view([img for img, _ in query])
        self.query_labels = torch.tensor([self.classes.index(v) for _, v in query])
        logger.info("kNN monitor: %d bank and %d query samples, %d classes of '%s'",
                    len(bank), len(query), len(self.classes), self.label)

    @torch.no_grad()
    def _features(self, backbone, images, device, channels_last):
        feats = []
        for start in range(0, len(images), 64):
            x = images[start:start + 64].to(device)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            feats.append(backbone(x).float().cpu())
        return torch.cat(feats)

    def __call__(self, backbone, device, channels_last: bool) -> float:
        from ctssl.eval.knn import knn_accuracy

        was_training = backbone.training
        backbone.eval()
        bank = self._features(backbone, self.bank, device, channels_last)
        query = self._features(backbone, self.query, device, channels_last)
        backbone.train(was_training)
        return knn_accuracy(query, self.query_labels, bank, self.bank_labels, len(self.classes),
                            k=min(20, len(bank)))


def _labelled_subset(shards: str, split: str, label: str, n: int, seed: int, scan_factor: int = 20):
    """A seeded uniform sample of at most ``n`` (image, label) pairs from the first
    ``scan_factor * n`` labelled samples met in a seeded random order of the split's shards."""
    from ctssl.shards.reader import ShardError, decode_image, iter_shard, shard_paths

    def skip(key, reason):
        logger.warning("kNN monitor: skipped %s: %s", key or "the rest of a shard", reason)

    rng = random.Random(seed)
    paths = shard_paths(shards, split)
    rng.shuffle(paths)
    chosen, seen = [], 0
    for path in paths:
        for raw in iter_shard(path, decode=False, on_error=skip):
            meta = json.loads(raw["json"])
            value = meta.get("labels", {}).get(label, meta.get(label))
            if value is None:
                continue
            seen += 1
            if len(chosen) < n:
                chosen.append(raw)
            elif (j := rng.randrange(seen)) < n:
                chosen[j] = raw
            if seen >= scan_factor * n:
                break
        if seen >= scan_factor * n:
            break
    out = []
    for raw in chosen:
        try:
            image, meta = decode_image(raw)
        except ShardError as err:
            skip(err.key, err.reason)
            continue
        out.append((image, str(meta.get("labels", {}).get(label, meta.get(label)))))
    return out


def _ct_eval_view(maker: CTViewMaker, cfg: PretrainConfig):
    """Whole slices, no augmentation, as evaluation prepares them (pretrain.views.whole_slices)."""
    from ctssl.pretrain.views import whole_slices

    windows = maker.spec.windows
    def view(slices):
        if windows:
            return torch.cat([whole_slices(slices[i:i + 64], cfg.data.image_size, windows, cfg.data.normalize_mean,
                                           cfg.data.normalize_std) for i in range(0, len(slices), 64)])
        identity = [CTViewMaker.identity(*s.shape) for s in slices]   # min-max intensity: the renderer's own
        return torch.cat([maker.render(CTViewMaker.collate(slices[i:i + 64], identity[i:i + 64]),
                                       sizes=[cfg.data.image_size])[0] for i in range(0, len(slices), 64)])
    return view


def resolve_runtime(cfg: PretrainConfig, accelerator: Accelerator | None = None) -> dict:
    """The settings left to the machine (``null`` in the config): precision, channels_last, workers."""
    cuda = torch.cuda.is_available()
    precision = cfg.precision or ("bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    channels_last = cfg.channels_last if cfg.channels_last is not None else (
        cuda and cfg.model.backbone.startswith("resnet"))
    import os

    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes if accelerator is not None else 1))
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else default_workers(local)
    return {"precision": precision, "channels_last": bool(channels_last), "num_workers": int(workers)}


def train(cfg: PretrainConfig) -> dict:
    """Pretrain as configured; resumes from ``cfg.out`` if a checkpoint is there."""
    from ctssl.pretrain.config import validate

    validate(cfg)
    runtime = resolve_runtime(cfg)
    # Without CUDA, `accelerate launch --multi_gpu` would start independent world-size-1 processes;
    # cpu=True makes them one gloo process group (MULTI_CPU).
    accelerator = Accelerator(mixed_precision=runtime["precision"], cpu=not torch.cuda.is_available())
    runtime = resolve_runtime(cfg, accelerator)
    out = Path(cfg.out)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    lock = _lock_output(accelerator, out)
    try:
        with StopSignal() as stop:
            return _train(cfg, accelerator, runtime, out, main, rank, world, stop)
    finally:
        if lock is not None:
            lock.release()


def _lock_output(accelerator: Accelerator, out: Path):
    """The main process locks OUT; every process learns whether it could (and exits together)."""
    lock, message = None, ""
    if accelerator.is_main_process:
        try:
            lock = OutputLock(out, "pretraining").acquire()
        except LockError as err:
            message = str(err)
    failed = torch.tensor(1.0 if message else 0.0, device=accelerator.device)
    if float(accelerator.reduce(failed, "max")) > 0:
        raise LockError(message or f"{out} is in use by another run.")
    return lock


def _train(cfg, accelerator, runtime, out, main, rank, world, stop: StopSignal) -> dict:
    kind = data_kind(cfg.data.shards, cfg.data.kind)
    preflight(cfg.data.shards, cfg.data.split, kind)
    if main:
        removed = clean_temporaries(out)
        if removed:
            logger.info("removed %d file(s) left by interrupted writes in %s", removed, out)
        _warn_if_series_ordered(cfg, kind)
    if cfg.data.global_batch_size:
        if cfg.data.global_batch_size % world:
            raise ValueError(f"data.global_batch_size {cfg.data.global_batch_size} is not divisible by the "
                             f"{world} processes.")
        batch = cfg.data.global_batch_size // world
    else:
        batch = cfg.data.batch_size
    global_batch = batch * world
    crops = crop_specs(cfg.method.name, cfg)
    if kind == "ct":
        in_chans = cfg.model.in_chans or (len(cfg.data.windows) if cfg.data.intensity == "windows" else 3)
        maker = CTViewMaker(cfg.data, crops, in_chans)
        eval_view = _ct_eval_view(maker, cfg)
    else:
        in_chans = cfg.model.in_chans or 3
        maker = natural_views(cfg.method.name, cfg)
        single = natural_eval_view(cfg.data.image_size)
        eval_view = lambda images: torch.stack([single(im) for im in images])  # noqa: E731

    set_seed(cfg.seed)        # the same initial weights on every process (DDP also broadcasts them)
    backbone, dim = build_backbone(cfg.model.backbone, in_chans, cfg.model.init, cfg.model.weights,
                                   cfg.model.drop_path)
    model = build_method(cfg.method.name, backbone, dim, cfg.method)
    sync_bn = cfg.model.sync_bn and world > 1 and has_batchnorm(model)
    if sync_bn:
        model = convert_sync_batchnorm(model)
    if runtime["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    # From here on every process draws from its own generators (dropout, stochastic depth, noise).
    _seed_process(cfg.seed, rank)
    per_epoch = steps_per_epoch(cfg, global_batch)
    total = cfg.max_steps or cfg.epochs * per_epoch
    lr = resolve_lr(cfg, global_batch)
    optimizer = build_optimizer(cfg, model, lr)
    warmup = max(1, int(round(cfg.optim.warmup_epochs * per_epoch)))
    resolved = {**to_dict(cfg), "resolved": {"lr": lr, "global_batch": global_batch, "batch_per_process": batch,
                                             "processes": world, "steps_per_epoch": per_epoch, "total_steps": total,
                                             "warmup_steps": warmup, "data_kind": kind, "in_chans": in_chans,
                                             "sync_bn": sync_bn, **runtime}}
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(resolved, out / "config.yaml")

    step = 0
    state = load_checkpoint(out)
    if state is not None:
        restore(state, model, optimizer, accelerator.scaler)
        step = state["step"]
        rngs = state.get("rng") or []
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        elif main:
            logger.warning("checkpoint holds generator states of %d process(es), this run has %d: not restored",
                           len(rngs), world)
        previous = (state.get("config") or {}).get("resolved", {})
        if main and previous.get("num_workers", runtime["num_workers"]) != runtime["num_workers"]:
            logger.warning("resuming with %d loader workers instead of %d: the data stream continues "
                           "differently from an uninterrupted run", runtime["num_workers"], previous["num_workers"])
        if main:
            logger.info("resumed from %s at step %d", out / "checkpoints" / "last.pt", step)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    forward = torch.compile(model) if cfg.compile else model
    monitor = KNNMonitor(cfg, eval_view) if main else None
    writer = None
    if main and cfg.monitor.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    momentum = cfg.method.dino
    saved_at = -1
    history: list[dict] = []
    stopped_by = None
    data_problems: Counter = Counter()
    noise = torch.Generator(device=accelerator.device)

    def checkpoint() -> None:
        nonlocal saved_at
        if saved_at == step:
            return
        saved_at = step
        rngs = _gather_rng(world)
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(build_state(unwrapped, optimizer, accelerator.scaler, step, step // per_epoch, resolved,
                                        rngs), out)

    def knn(tag: str) -> None:
        if main and monitor is not None and monitor.enabled:
            acc = monitor(unwrapped.export_backbone, accelerator.device, runtime["channels_last"])
            record = {"step": step, "epoch": step // per_epoch, "knn_accuracy": acc, "when": tag}
            history.append(record)
            append_jsonl(out / "metrics.jsonl", record)
            if writer:
                writer.add_scalar("monitor/knn_accuracy", acc, step)
            logger.info("step %d: kNN accuracy (%s) %.3f", step, cfg.monitor.knn_label, acc)
        accelerator.wait_for_everyone()

    def epoch_end(epoch: int) -> None:
        counts = torch.tensor([data_problems["skipped"], data_problems["missing"]], dtype=torch.float64,
                              device=accelerator.device)
        counts = accelerator.reduce(counts, "sum")
        if main:
            record = {"step": step, "epoch": epoch, "skipped_samples": int(counts[0]), "missing_samples": int(counts[1])}
            append_jsonl(out / "metrics.jsonl", record)
            if counts.sum() > 0:
                logger.warning("epoch %d: %d damaged sample(s) skipped, %d missing from shards that ended early "
                               "(ctssl shards verify names them)", epoch, int(counts[0]), int(counts[1]))
        data_problems.clear()

    bar = tqdm(total=total, initial=step, unit="step", desc=f"{cfg.method.name} {cfg.model.backbone}",
               disable=not main or None)
    if step == 0:
        knn("init")
    last_log, window_samples = time.perf_counter(), 0
    loss_value = float("nan")
    # The views are rendered on the GPU; without one, in the loader workers (the same code, in parallel).
    loader = make_loader(cfg, maker, kind, rank, world, step, total, batch, runtime["num_workers"],
                         pin_memory=torch.cuda.is_available(), render_in_workers=not torch.cuda.is_available())
    for data in loader:
        epoch = step // per_epoch
        data_problems["skipped"] += int(data.pop("skipped"))
        data_problems["missing"] += int(data.pop("missing"))
        data_step = int(data.pop("step"))
        if data_step != step:
            raise RuntimeError(f"loader out of step: batch for step {data_step} at step {step}")
        views = _views(data, kind, maker, accelerator.device, noise, derive_seed(cfg.seed, "noise", rank, step))
        if runtime["channels_last"]:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        _set_schedule(optimizer, cfg, step, total, warmup, lr)
        with accelerator.autocast():
            loss, logs = forward(views, epoch)
        accelerator.backward(loss)
        if hasattr(unwrapped, "after_backward"):
            unwrapped.after_backward(epoch)
        if cfg.optim.clip_grad > 0:
            if cfg.optim.clip_mode == "per_param":
                accelerator.unscale_gradients()
                clip_per_parameter(unwrapped, cfg.optim.clip_grad)
            else:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.update_teacher(cosine_schedule(step, total, momentum.momentum_start, momentum.momentum_end))
        step += 1
        window_samples += global_batch
        bar.update(1)

        if step % cfg.monitor.log_every == 0 or step == total:   # the only per-step host syncs
            loss_value = float(accelerator.reduce(logs["loss"].float(), "mean"))
            ratio = float(accelerator.reduce(logs["collapse_ratio"].float(), "mean"))
            now = time.perf_counter()
            rate = window_samples / (now - last_log)
            last_log, window_samples = now, 0
            group = optimizer.param_groups[0]
            record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": group["lr"],
                      "weight_decay": group["weight_decay"], "images_per_s": round(rate, 1),
                      "images_per_s_per_process": round(rate / world, 1), "collapse_ratio": round(ratio, 4)}
            if torch.cuda.is_available():
                record["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if main:
                append_jsonl(out / "metrics.jsonl", record)
                if writer:
                    for key in ("loss", "lr", "weight_decay", "images_per_s", "collapse_ratio"):
                        writer.add_scalar(f"train/{key}", record[key], step)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}")
                if not math.isfinite(loss_value):
                    logger.error("non-finite loss %s at step %d", loss_value, step)
                if ratio < cfg.monitor.collapse_std:
                    logger.warning("COLLAPSE WARNING step %d: std of the normalised embeddings is %.2f of the "
                                   "healthy 1/sqrt(d); representations are becoming constant", step, ratio)
        if step % cfg.stop_check_every == 0 or step == total:
            flag = torch.tensor(1.0 if stop.received else 0.0, device=accelerator.device)
            if float(accelerator.reduce(flag, "max")) > 0:
                stopped_by = stop.received or "SIGTERM"
                break
        if step % per_epoch == 0 or step == total:
            epoch_end(epoch)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step % per_epoch == 0:
            checkpoint()
        if cfg.monitor.knn_every and step % cfg.monitor.knn_every == 0:
            knn("periodic")
        elif not cfg.monitor.knn_every and step % per_epoch == 0:
            knn("epoch end")
    bar.close()
    checkpoint()
    result = {"steps": step, "total_steps": total, "final_loss": loss_value, "stopped_by": stopped_by,
              "knn": history, "checkpoint": str(out / "checkpoints" / "last.pt")}
    if main and stopped_by is None:
        card = {"ctssl_version": __version__, "method": cfg.method.name, "backbone": cfg.model.backbone,
                "exported": "teacher" if cfg.method.name == "dino" else "backbone",
                "in_chans": in_chans, "data": {"shards": cfg.data.shards, "kind": kind, "split": cfg.data.split,
                                               "windows": cfg.data.windows if kind == "ct" and
                                               cfg.data.intensity == "windows" else None,
                                               "intensity": cfg.data.intensity if kind == "ct" else "rgb",
                                               "image_size": cfg.data.image_size},
                "steps": step, "epochs": step / per_epoch, "knn": history, "config": resolved}
        result["backbone"] = str(export_backbone(unwrapped, out, card))
        atomic_write_text(out / "result.json", json.dumps(result, indent=1) + "\n")
    if writer:
        writer.close()
    if stopped_by and main:
        logger.warning("%s received: checkpoint saved at step %d; rerun the same command to resume",
                       stopped_by, step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _views(data: dict, kind: str, maker, device, generator: torch.Generator, seed: int) -> list[torch.Tensor]:
    if "views" in data:   # natural images, or CT views rendered by the workers (no GPU)
        return [v.to(device, non_blocking=True) for v in data["views"]]
    batch = {k: v.to(device, non_blocking=True) for k, v in data.items()}
    generator.manual_seed(seed)
    return maker.render(batch, generator)


def _set_schedule(optimizer, cfg: PretrainConfig, step: int, total: int, warmup: int, peak: float) -> None:
    lr = lr_at(step, total, warmup, peak, cfg.optim.min_lr)
    wd = wd_at(step, total, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if i == 0:      # only the weights are regularised
            group["weight_decay"] = wd


def _seed_process(seed: int, rank: int) -> None:
    s = derive_seed(seed, "process", rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _gather_rng(world: int) -> list[dict]:
    state = rng_state()
    if world == 1:
        return [state]
    import torch.distributed as dist

    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def _warn_if_series_ordered(cfg: PretrainConfig, kind: str) -> None:
    from ctssl.shards.manifest import load_manifest

    if kind == "ct" and load_manifest(cfg.data.shards).get("order", "series") != "shuffled":
        logger.warning("%s holds shards in series order (the ingest output): batches will hold runs of "
                       "neighbouring slices of few series. Train on `ctssl shards shuffle %s --out DIR` "
                       "(docs/pretraining.md, Batches).", cfg.data.shards, cfg.data.shards)
