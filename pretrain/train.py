"""The pretraining loop. Distributed work lives here only, in the Accelerator.

The method computes the loss (pretrain.methods); this loop calls backward, clips, steps the
optimizer and the schedule, updates the teacher EMA, logs, monitors, checkpoints and exports.
One code path for every precision (Accelerate's autocast and grad scaler).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.scheduler import cosine_schedule
from tqdm import tqdm

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import save_config, to_dict
from ctssl.core.logs import append_jsonl
from ctssl.pretrain.backbones import build_backbone
from ctssl.pretrain.checkpoint import build_state, export_backbone, load_checkpoint, restore, save_checkpoint
from ctssl.pretrain.config import PretrainConfig
from ctssl.pretrain.loader import data_kind, decode, make_loader, steps_per_epoch
from ctssl.pretrain.methods import build_method
from ctssl.pretrain.views import CTViews, crop_specs, natural_eval_view, natural_views

logger = logging.getLogger(__name__)


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM preemption or time limit) ask for a checkpoint and a clean exit."""

    def __init__(self):
        self.received: str | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name


def resolve_lr(cfg: PretrainConfig, global_batch: int) -> tuple[str, float]:
    """(optimizer name, learning rate) from the recipe (see pretrain.config)."""
    name = cfg.optim.name
    if name == "auto":
        name = "lars" if cfg.method.name == "simclr" else "adamw"
    if name not in ("lars", "adamw"):
        raise ValueError(f"Unknown optimizer '{name}'. Valid optimizers are ['auto', 'lars', 'adamw'].")
    if cfg.optim.lr > 0:
        return name, cfg.optim.lr
    if cfg.method.name == "simclr" and name == "lars":
        return name, 0.075 * math.sqrt(global_batch)
    return name, cfg.optim.base_lr * global_batch / 256


def build_optimizer(cfg: PretrainConfig, model: torch.nn.Module, name: str, lr: float):
    """Weight decay (and LARS adaptation) only on weights, not on biases and norms."""
    params, no_decay = get_weight_decay_parameters([m for m in model.children()])
    params = [p for p in params if p.requires_grad]
    no_decay = [p for p in no_decay if p.requires_grad]
    groups = [{"params": params}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "lars":
        from lightly.utils.lars import LARS

        return LARS(groups, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.optim.weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warmup, then cosine to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class KNNMonitor:
    """Weighted kNN accuracy (eval.knn) of the backbone: a bank of labelled training samples, the
    queries from a held-out split, both a seeded random subset of at most ``knn_samples``."""

    def __init__(self, cfg: PretrainConfig, eval_view):
        self.label = cfg.monitor.knn_label
        bank = _labelled_subset(cfg.data.shards, cfg.data.split, self.label, cfg.monitor.knn_samples, cfg.seed)
        query = _labelled_subset(cfg.data.shards, cfg.monitor.knn_split, self.label, cfg.monitor.knn_samples, cfg.seed)
        self.classes = sorted({v for _, v in bank})
        query = [(img, v) for img, v in query if v in self.classes]
        self.enabled = len(self.classes) >= 2 and len(query) >= 1
        if not self.enabled:
            logger.warning("kNN monitor off: need labelled '%s' samples of >= 2 classes in split '%s' "
                           "and some in split '%s'", self.label, cfg.data.split, cfg.monitor.knn_split)
            return
        self.bank = torch.stack([eval_view(img) for img, _ in bank])
        self.bank_labels = torch.tensor([self.classes.index(v) for _, v in bank])
        self.query = torch.stack([eval_view(img) for img, _ in query])
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
    import random

    from ctssl.shards.reader import iter_shard, shard_paths

    rng = random.Random(seed)
    paths = shard_paths(shards, split)
    rng.shuffle(paths)
    chosen, seen = [], 0
    for path in paths:
        for raw in iter_shard(path, decode=False):
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
        image, meta = decode(raw)
        out.append((image, str(meta.get("labels", {}).get(label, meta.get(label)))))
    return out


def train(cfg: PretrainConfig) -> dict:
    """Pretrain as configured; resumes from ``cfg.out`` if a checkpoint is there."""
    # Without CUDA, `accelerate launch --multi_gpu` would start independent world-size-1 processes;
    # cpu=True makes them one gloo process group (MULTI_CPU).
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    out = Path(cfg.out)
    main = accelerator.is_main_process
    kind = data_kind(cfg.data.shards, cfg.data.kind)
    crops = crop_specs(cfg.method.name, cfg)
    if kind == "ct":
        views = CTViews(cfg.data.windows, cfg.data.augment, crops, cfg.data.normalize_mean, cfg.data.normalize_std)
        in_chans = cfg.model.in_chans or len(cfg.data.windows)
        eval_view = lambda hu: views.eval_view(hu, cfg.data.image_size)  # noqa: E731
    else:
        views = natural_views(cfg.method.name, cfg)
        in_chans = cfg.model.in_chans or 3
        eval_view = natural_eval_view(cfg.data.image_size)

    backbone, dim = build_backbone(cfg.model.backbone, in_chans, cfg.model.init, cfg.model.weights)
    model = build_method(cfg.method.name, backbone, dim, cfg.method)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    world = accelerator.num_processes
    global_batch = cfg.data.batch_size * world
    per_epoch = steps_per_epoch(cfg, world)
    total = cfg.max_steps or cfg.epochs * per_epoch
    opt_name, lr = resolve_lr(cfg, global_batch)
    optimizer = build_optimizer(cfg, model, opt_name, lr)
    warmup = int(round(cfg.optim.warmup_epochs * per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, max(1, warmup), cfg.optim.min_lr_ratio))
    resolved = {**to_dict(cfg), "resolved": {"optimizer": opt_name, "lr": lr, "global_batch": global_batch,
                                             "processes": world, "steps_per_epoch": per_epoch,
                                             "total_steps": total, "data_kind": kind, "in_chans": in_chans}}
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(resolved, out / "config.yaml")

    step = 0
    state = load_checkpoint(out)
    if state is not None:
        restore(state, model, optimizer, scheduler, accelerator.scaler)
        step = state["step"]
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
    stop = StopSignal()
    momentum = cfg.method.dino
    out_dim = _output_dim(unwrapped)
    saved_at = -1
    history: list[dict] = []
    stopped_by = None

    def checkpoint() -> None:
        nonlocal saved_at
        if saved_at == step:
            return
        saved_at = step
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(build_state(unwrapped, optimizer, scheduler, accelerator.scaler, step,
                                        step // per_epoch, resolved), out)

    def knn(tag: str) -> None:
        if main and monitor is not None and monitor.enabled:
            acc = monitor(unwrapped.backbone, accelerator.device, cfg.channels_last)
            record = {"step": step, "epoch": step // per_epoch, "knn_accuracy": acc, "when": tag}
            history.append(record)
            append_jsonl(out / "metrics.jsonl", record)
            if writer:
                writer.add_scalar("monitor/knn_accuracy", acc, step)
            logger.info("step %d: kNN accuracy (%s) %.3f", step, cfg.monitor.knn_label, acc)
        accelerator.wait_for_everyone()

    bar = tqdm(total=total, initial=step, unit="step", desc=f"{cfg.method.name} {cfg.model.backbone}",
               disable=not main or None)
    if step == 0:
        knn("init")
    last_log, window_samples = time.perf_counter(), 0
    loss_value = float("nan")
    while step < total and stopped_by is None:
        epoch = step // per_epoch
        remaining = min(per_epoch - step % per_epoch, total - step)
        loader = make_loader(cfg, views, accelerator.process_index, remaining, step)
        for batch in loader:
            batch = [v.to(accelerator.device, non_blocking=True) for v in batch]
            if cfg.channels_last:
                batch = [v.to(memory_format=torch.channels_last) for v in batch]
            with accelerator.autocast():
                loss, logs = forward(batch, epoch)
            accelerator.backward(loss)
            if hasattr(unwrapped, "after_backward"):
                unwrapped.after_backward(epoch)
            if cfg.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            unwrapped.update_teacher(cosine_schedule(step, total, momentum.momentum_start, momentum.momentum_end))
            step += 1
            window_samples += global_batch
            bar.update(1)

            if step % cfg.monitor.log_every == 0 or step == total:
                loss_value = float(accelerator.reduce(logs["loss"].float(), "mean"))
                std = float(accelerator.reduce(logs["embedding_std"].float(), "mean"))
                now = time.perf_counter()
                rate = window_samples / (now - last_log)
                last_log, window_samples = now, 0
                record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                          "images_per_s": round(rate, 1), "images_per_s_per_process": round(rate / world, 1),
                          "embedding_std": std}
                if torch.cuda.is_available():
                    record["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if main:
                    append_jsonl(out / "metrics.jsonl", record)
                    if writer:
                        for key in ("loss", "lr", "images_per_s", "embedding_std"):
                            writer.add_scalar(f"train/{key}", record[key], step)
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}")
                    if not math.isfinite(loss_value):
                        logger.error("non-finite loss %s at step %d", loss_value, step)
                    # Collapse: all embeddings alike. The std of L2-normalised outputs is about
                    # 1/sqrt(d) when healthy and goes to 0 when they collapse.
                    relative = std * math.sqrt(out_dim)
                    if relative < cfg.monitor.collapse_std:
                        logger.warning("COLLAPSE WARNING step %d: embedding std %.4f is %.2f of the "
                                       "healthy 1/sqrt(d); representations are becoming constant",
                                       step, std, relative)
            flag = torch.tensor(1.0 if stop.received else 0.0, device=accelerator.device)
            if float(accelerator.reduce(flag, "max")) > 0:
                stopped_by = stop.received or "SIGTERM"
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
            if cfg.monitor.knn_every and step % cfg.monitor.knn_every == 0:
                knn("periodic")
            if step >= total:
                break
        if stopped_by is None and (step % per_epoch == 0 or step >= total):
            checkpoint()
            if not cfg.monitor.knn_every:
                knn("epoch end")
    bar.close()
    checkpoint()
    result = {"steps": step, "total_steps": total, "final_loss": loss_value, "stopped_by": stopped_by,
              "knn": history, "checkpoint": str(out / "checkpoints" / "last.pt")}
    if main and stopped_by is None:
        card = {"ctssl_version": __version__, "method": cfg.method.name, "backbone": cfg.model.backbone,
                "in_chans": in_chans, "data": {"shards": cfg.data.shards, "kind": kind, "split": cfg.data.split,
                                               "windows": cfg.data.windows if kind == "ct" else None},
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


def _output_dim(model) -> int:
    head = getattr(model, "head", None)
    for layer in reversed(list(head.modules()) if head is not None else []):
        if isinstance(layer, torch.nn.Linear):
            return layer.out_features
    return 1
