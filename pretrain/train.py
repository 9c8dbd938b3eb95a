"""The pretraining loop. Distributed work lives here only, in the Accelerator.

``train(cfg)`` reads top to bottom: ``setup`` builds a small ``Run`` (the model, the optimizer, the views,
the batch plan, what a resumed run continues from); ``Loop.run`` then takes one batch per step and
calls ``Loop.step`` (views on the device, schedule, forward and backward, possibly in micro-batches,
clipping, optimizer step, teacher EMA) and the interval work in order: log, stop check, epoch end,
checkpoint, kNN monitor. The method computes the loss (pretrain.methods); pretrain.step turns it into
gradients. What it does, and where it departs from the references, is in docs/pretraining.md.

Module map: config -> views, loader, backbones, methods -> step, memory, optim, schedules, health,
monitor, signals, progress, checkpoint -> train -> main.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from lightly.utils.scheduler import cosine_schedule

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import ConfigError, save_config, to_dict
from ctssl.core.logs import append_jsonl
from ctssl.core.trackers import finish as finish_trackers, log as log_metrics, open_trackers
from ctssl.pretrain.sources import init_backbone
from ctssl.pretrain.checkpoint import (build_state, clean_temporaries, config_changes, export_backbone,
                                       load_checkpoint, restore, rng_state, save_checkpoint, set_rng_state)
from ctssl.pretrain.config import PretrainConfig, batch_per_process, validate
from ctssl.pretrain.health import Health
from ctssl.pretrain.loader import (data_kind, deal_record, default_workers, derive_seed, make_loader, preflight,
                                   resume_deal, steps_per_epoch)
from ctssl.pretrain.memory import activation_bytes_per_sample, device_memory_bytes, plan_micro_batches
from ctssl.pretrain.methods import build_method
from ctssl.pretrain.monitor import KNNMonitor, ct_eval_view, natural_eval_batch
from ctssl.pretrain.optim import build_optimizer, clip_and_measure
from ctssl.pretrain.progress import Progress
from ctssl.pretrain.schedules import resolve_lr, set_schedule, warmup_problem, warmup_steps
from ctssl.pretrain.signals import StopSignal, agree, lock_output
from ctssl.pretrain.step import forward_backward
from ctssl.pretrain.syncbn import convert_sync_batchnorm, has_batchnorm
from ctssl.pretrain.views import CTViewMaker, crop_specs, finish_natural, natural_views
from ctssl.shards.patients import load_patients

logger = logging.getLogger(__name__)


def resolve_runtime(cfg: PretrainConfig, accelerator: Accelerator | None = None) -> dict:
    """The settings left to the machine (``null`` in the config): precision, channels_last, workers."""
    cuda = torch.cuda.is_available()
    precision = cfg.precision or ("bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    channels_last = cfg.channels_last if cfg.channels_last is not None else (
        cuda and cfg.model.backbone.startswith("resnet"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes if accelerator is not None else 1))
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else default_workers(local)
    return {"precision": precision, "channels_last": bool(channels_last), "num_workers": int(workers)}


def train(cfg: PretrainConfig, accept_changes: bool = False) -> dict:
    """Pretrain as configured; resumes from ``cfg.out`` if a checkpoint is there (refusing other settings
    unless ``accept_changes``)."""
    started = time.perf_counter()
    validate(cfg)
    runtime = resolve_runtime(cfg)
    # Without CUDA, `accelerate launch --multi_gpu` would start independent world-size-1 processes;
    # cpu=True makes them one gloo process group (MULTI_CPU).
    accelerator = Accelerator(mixed_precision=runtime["precision"], cpu=not torch.cuda.is_available())
    runtime = resolve_runtime(cfg, accelerator)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True      # fixed shapes every step: let cuDNN pick its kernels once
    lock = lock_output(accelerator, Path(cfg.out))
    try:
        with StopSignal() as stop:
            run = setup(cfg, accelerator, runtime, accept_changes, started)
            return Loop(run, stop).run()
    finally:
        if lock is not None:
            lock.release()


# ------------------------------------------------------------------------------------------------ setup
@dataclass
class Run:
    """What the loop needs, built once by ``setup``."""

    cfg: PretrainConfig
    accelerator: Accelerator
    out: Path
    kind: str
    maker: object                  # CTViewMaker (CT) or lightly's transform (natural images)
    in_chans: int
    model: torch.nn.Module         # as prepared (DDP) and maybe compiled: what the step calls
    method: torch.nn.Module        # the unwrapped method
    prepared: torch.nn.Module      # as prepared (DDP), for no_sync and clipping
    optimizer: torch.optim.Optimizer
    batch: int                     # per process
    micro: int                     # per micro-batch
    per_epoch: int
    total: int
    warmup: int
    peak_lr: float
    resolved: dict
    start_step: int = 0
    loader_positions: dict = field(default_factory=dict)
    monitor: KNNMonitor | None = None
    startup: dict = field(default_factory=dict)
    loader_deal: tuple | None = None   # the epoch dealt again after a resume on another world size (loader.py)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def global_batch(self) -> int:
        return self.batch * self.accelerator.num_processes


def _views_and_inputs(cfg: PretrainConfig, kind: str):
    crops = crop_specs(cfg.method.name, cfg)
    if kind == "ct":
        in_chans = cfg.model.in_chans or (len(cfg.data.windows) if cfg.data.intensity == "windows" else 3)
        maker = CTViewMaker(cfg.data, crops, in_chans)
        return crops, in_chans, maker, ct_eval_view(maker, cfg.data)
    return crops, cfg.model.in_chans or 3, natural_views(cfg.method.name, cfg), natural_eval_batch(cfg.data.image_size)


def setup(cfg: PretrainConfig, accelerator: Accelerator, runtime: dict, accept_changes: bool,
          started: float) -> Run:
    from ctssl.shards.reader import samples_read

    read_before = samples_read()
    out, main, rank, world = Path(cfg.out), accelerator.is_main_process, accelerator.process_index, \
        accelerator.num_processes
    kind = data_kind(cfg.data.shards, cfg.data.kind)
    preflight(cfg.data.shards, cfg.data.split, kind)
    if main:
        removed = clean_temporaries(out)
        if removed:
            logger.info("removed %d file(s) left by interrupted writes in %s", removed, out)
        _warn_if_series_ordered(cfg, kind)
    batch = batch_per_process(cfg, world)
    crops, in_chans, maker, eval_view = _views_and_inputs(cfg, kind)

    set_seed(cfg.seed)        # the same initial weights on every process (DDP also broadcasts them)
    backbone, dim, init_card = init_backbone(cfg.model.backbone, in_chans, cfg.model.init, cfg.model.weights,
                                             cfg.model.drop_path)
    method = build_method(cfg.method.name, backbone, dim, cfg.method).to(accelerator.device)
    per_sample = activation_bytes_per_sample(method, crops, in_chans, runtime["precision"])
    plan = plan_micro_batches(batch, per_sample, cfg.memory.micro_batch_size, cfg.memory.budget_gb,
                              device_memory_bytes(accelerator.device))
    sync_bn = cfg.model.sync_bn and world > 1 and has_batchnorm(method)
    if sync_bn:
        method = convert_sync_batchnorm(method)
    if runtime["channels_last"]:
        method = method.to(memory_format=torch.channels_last)
    _seed_process(cfg.seed, rank)   # from here on every process draws from its own generators
    per_epoch = steps_per_epoch(cfg, batch * world)
    total = cfg.max_steps or cfg.epochs * per_epoch
    peak = resolve_lr(cfg.optim, batch * world)
    warmup = warmup_steps(cfg.optim.warmup_epochs, per_epoch)
    optimizer = build_optimizer(cfg.optim, method, peak)
    resolved = {**to_dict(cfg), "resolved": {
        "lr": peak, "global_batch": batch * world, "batch_per_process": batch, "processes": world,
        "steps_per_epoch": per_epoch, "total_steps": total, "warmup_steps": warmup, "data_kind": kind,
        "in_chans": in_chans, "sync_bn": sync_bn, **{k: v for k, v in plan.items()}, **runtime,
        "init": {k: init_card[k] for k in INIT_FIELDS if k in init_card} if init_card else None}}
    if main and (problem := warmup_problem(warmup, total, cfg.optim.warmup_epochs, per_epoch)):
        logger.warning("%s", problem)
    if plan["micro_batches"] > 1 and main:
        logger.info("each process's batch of %d runs as %d micro-batches of %d (about %.1f GiB of activations "
                    "each, %.1f GiB for the whole batch); the gradient is the whole batch's (docs/pretraining.md, "
                    "Memory)", batch, plan["micro_batches"], plan["micro_batch_size"], plan["estimated_activation_gb"],
                    plan["whole_batch_activation_gb"])

    start, positions, deal = 0, {}, None
    state = load_checkpoint(out)
    if state is not None:
        previous = (state.get("config") or {}).get("resolved", {})
        if previous.get("processes", world) != world and previous.get("global_batch", batch * world) != batch * world:
            # another world size and so another global batch: refused naming the sizes (before the settings)
            resume_deal([], None, (previous.get("processes", world), 0, previous.get("batch_per_process", batch)),
                        (world, 0, batch), rank, state["step"], per_epoch)
        _check_resume(state, resolved, out, accept_changes, main)
        restore(state, method, optimizer, accelerator.scaler)
        start = state["step"]
        rngs, loaders = state.get("rng") or [], state.get("loader") or []
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        elif main:
            logger.warning("checkpoint holds generator states of %d process(es), this run has %d: not restored",
                           len(rngs), world)
        previous = (state.get("config") or {}).get("resolved", {})
        old = (previous.get("processes", world), previous.get("num_workers", runtime["num_workers"]),
               previous.get("batch_per_process", batch))
        positions, deal = resume_deal(loaders, state.get("deal"), old, (world, runtime["num_workers"], batch), rank,
                                      start, per_epoch)
        if main and deal is not None and deal[2] == start:
            logger.info("resuming on %d process(es) x %d loader worker(s) (the checkpoint's: %d x %d): the rest of "
                        "epoch %d is dealt again over the new readers, each sample once", world,
                        runtime["num_workers"], old[0], old[1], deal[0])
        if main:
            logger.info("resumed from %s at step %d", out / "checkpoints" / "last.pt", start)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(resolved, out / "config.yaml")
        append_jsonl(out / "history.jsonl", {"event": "resume" if state is not None else "start", "step": start,
                                             "processes": world, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    prepared, optimizer = accelerator.prepare(method, optimizer)
    unwrapped = accelerator.unwrap_model(prepared)
    if cfg.compile and plan["micro_batches"] > 1:
        # The graph-free and the training pass of a micro-batch are different compiled graphs; only torch's
        # own random kernels give both the same stochastic-depth draws from the replayed state.
        import torch._inductor.config as inductor

        inductor.fallback_random = True
    model = torch.compile(prepared) if cfg.compile else prepared
    monitor = KNNMonitor(cfg, eval_view) if main else None
    startup = {"startup_seconds": round(time.perf_counter() - started, 2),
               "startup_samples_read": samples_read() - read_before}
    return Run(cfg, accelerator, out, kind, maker, in_chans, model, unwrapped, prepared, optimizer, batch,
               plan["micro_batch_size"], per_epoch, total, warmup, peak, resolved, start, positions, monitor, startup, deal)


def _check_resume(state: dict, resolved: dict, out: Path, accept_changes: bool, main: bool) -> None:
    """A resumed run is the same run: other settings are refused, naming them, unless accepted (then the
    change is recorded in OUT/history.jsonl)."""
    changes = config_changes(state.get("config") or {}, resolved)
    if not changes:
        return
    text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:8])
    more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
    if not accept_changes:
        raise ConfigError(f"{out} holds a run at step {state['step']} with other settings: {text}{more}. Rerun with "
                          "its settings to resume it, --accept-changes to continue it with these (recorded in "
                          "history.jsonl), or another --out to start a new run.")
    if main:
        append_jsonl(out / "history.jsonl", {"event": "accepted changes", "step": state["step"],
                                             "changes": {k: list(v) for k, v in changes.items()}})
        logger.warning("continuing the run at step %d with changed settings: %s%s", state["step"], text, more)


def _seed_process(seed: int, rank: int) -> None:
    s = derive_seed(seed, "process", rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _warn_if_series_ordered(cfg: PretrainConfig, kind: str) -> None:
    from ctssl.shards.manifest import load_manifest

    if kind == "ct" and load_manifest(cfg.data.shards).get("order", "series") != "shuffled":
        logger.warning("%s holds shards in series order (the ingest output): batches will hold runs of "
                       "neighbouring slices of few series. Train on `ctssl shards shuffle %s --out DIR` "
                       "(docs/pretraining.md, Batches).", cfg.data.shards, cfg.data.shards)


# ------------------------------------------------------------------------------------------------- loop
class Loop:
    def __init__(self, run: Run, stop: StopSignal):
        self.r, self.stop = run, stop
        a = run.accelerator
        self.step_no = run.start_step
        self.health = Health(run.method, a.device)
        self.noise = torch.Generator(device=a.device)
        self.positions = dict(run.loader_positions)
        self.problems: Counter = Counter()
        self.history: list[dict] = []
        self.saved_at = run.start_step if run.start_step else -1     # the last checkpoint's step
        self.loss_value = float("nan")
        self.window = {"start": time.perf_counter(), "samples": 0, "wait": 0.0}
        self.trackers = open_trackers(tracker_names(run.cfg.monitor), run.out, "", hparams(run.resolved)) \
            if run.main else []
        self.progress = Progress(run.total, run.start_step, f"{run.cfg.method.name} {run.cfg.model.backbone}",
                                 run.main, run.cfg.monitor.progress_seconds)
        self.syncs = SyncCounter(run.cfg.monitor.sync_debug and torch.cuda.is_available())
        self.keys = None
        if run.cfg.data.record_keys:
            (run.out / "keys").mkdir(parents=True, exist_ok=True)
            self.keys = open(run.out / "keys" / f"rank{a.process_index}.txt", "a", encoding="utf-8")

    # ..................................................................................... the run
    def run(self) -> dict:
        r, cfg = self.r, self.r.cfg
        if r.main:
            append_jsonl(r.out / "metrics.jsonl", {"step": self.step_no, **r.startup})
            logger.info("start-up: %.1f s, %d samples read before step %d", r.startup["startup_seconds"],
                        r.startup["startup_samples_read"], self.step_no)
        if self.step_no == 0:
            self.knn("init")
        stopped_by = None
        loader = make_loader(cfg, r.maker, r.kind, r.accelerator.process_index, r.accelerator.num_processes,
                             self.step_no, r.total, r.batch, r.resolved["resolved"]["num_workers"],
                             pin_memory=torch.cuda.is_available(), render_in_workers=not torch.cuda.is_available(),
                             positions=self.positions, deal=r.loader_deal)
        waited, first = time.perf_counter(), True
        for data in loader:
            if first:     # rates count from the first batch: the loader's start-up is reported apart
                self.window, first = {"start": time.perf_counter(), "samples": 0, "wait": 0.0}, False
            else:
                self.window["wait"] += time.perf_counter() - waited
            epoch = self.step_no // r.per_epoch
            with self.syncs.watch():
                self.step(data, epoch)
            stopped_by = self.interval_work(epoch)
            if stopped_by:
                break
            waited = time.perf_counter()
        self.progress.close()
        return self.finish(stopped_by)

    def passed(self, count: int) -> None:
        """Each loader worker's first batch carries what it read (not decoded) only to reach its position (a
        resumed chunk replayed, the samples before its first piece in a shard): logged once all have come."""
        r = self.r
        self.reach = getattr(self, "reach", [0, 0])
        self.reach[0] += count
        self.reach[1] += 1
        if r.main and self.reach[1] == max(1, r.resolved["resolved"]["num_workers"]):
            logger.info("loader at step %d: %d samples read without decoding by this process's %d worker(s) to "
                        "reach their positions", self.step_no, self.reach[0], self.reach[1])
            append_jsonl(r.out / "metrics.jsonl", {"step": self.step_no, "loader_reach_samples_read": self.reach[0]})

    def step(self, data: dict, epoch: int) -> None:
        r, a = self.r, self.r.accelerator
        self.problems["skipped"] += int(data.pop("skipped"))
        self.problems["missing"] += int(data.pop("missing"))
        self.passed(int(data.pop("passed")))
        virtual, data_epoch, position = (int(v) for v in data.pop("position"))
        self.positions[virtual] = (data_epoch, position)
        keys = data.pop("keys")
        if self.keys is not None:
            self.keys.write("".join(f"{self.step_no}\t{k}\n" for k in keys))
        data_step = int(data.pop("step"))
        if data_step != self.step_no:
            raise RuntimeError(f"loader out of step: batch for step {data_step} at step {self.step_no}")
        views = self.device_views(data)
        set_schedule(r.optimizer, r.cfg.optim, self.step_no, r.total, r.warmup, r.peak_lr)
        loss, logs = forward_backward(r.model, r.method, views, epoch, r.micro, a)
        if hasattr(r.method, "after_backward"):
            r.method.after_backward(epoch)
        grad_norm = clip_and_measure(a, r.prepared, r.method, r.cfg.optim)
        self.health.observe(self.step_no, loss, grad_norm, scaled=a.scaler is not None)
        r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=True)
        d = r.cfg.method.dino
        r.method.update_teacher(cosine_schedule(self.step_no, r.total, d.momentum_start, d.momentum_end))
        self.logs, self.grad_norm = logs, grad_norm
        if r.cfg.compile and self.step_no == r.start_step and r.main:
            _report_compilation()
        self.step_no += 1
        self.window["samples"] += r.global_batch
        self.progress.step()

    def device_views(self, data: dict) -> list[torch.Tensor]:
        """The step's views on the device: CT slices rendered there (or already in the workers on a CPU-only
        run), natural images finished there from uint8."""
        r = self.r
        device = r.accelerator.device
        if "views" in data:
            views = [v.to(device, non_blocking=True) for v in data["views"]]
            if r.kind == "natural":
                views = finish_natural(views)
        else:
            batch = {k: v.to(device, non_blocking=True) for k, v in data.items()}
            self.noise.manual_seed(derive_seed(r.cfg.seed, "noise", r.accelerator.process_index, self.step_no))
            views = r.maker.render(batch, self.noise)
        if r.resolved["resolved"]["channels_last"]:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def interval_work(self, epoch: int) -> str | None:
        """Logging, stop check, epoch end, checkpoint and monitor, in that order; the stop reason, if any."""
        r, cfg, step = self.r, self.r.cfg, self.step_no
        end = step == r.total
        if step % cfg.monitor.log_every == 0 or end:
            self.log(epoch)
        if step % cfg.stop_check_every == 0 or end:
            if agree(r.accelerator, self.stop.requested() is not None):
                return self.stop.requested() or "SIGTERM"
        if step % r.per_epoch == 0 or end:
            self.epoch_end(epoch)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step % r.per_epoch == 0:
            self.checkpoint()
        if cfg.monitor.knn_every and step % cfg.monitor.knn_every == 0:
            self.knn("periodic")
        elif not cfg.monitor.knn_every and step % r.per_epoch == 0:
            self.knn("epoch end")
        return None

    def log(self, epoch: int) -> None:
        """The logging step's figures (the only host synchronisation of ordinary steps)."""
        r, a = self.r, self.r.accelerator
        self.health.check(a, self.step_no, saved_at=self.saved_at)
        loss = float(a.reduce(self.logs["loss"].float(), "mean"))
        ratio = float(a.reduce(self.logs["collapse_ratio"].float(), "mean"))
        self.loss_value = loss
        now = time.perf_counter()
        elapsed = now - self.window["start"]
        rate = self.window["samples"] / elapsed
        group = r.optimizer.param_groups[0]
        record = {"step": self.step_no, "epoch": epoch, "loss": loss, "lr": group["lr"],
                  "weight_decay": group["weight_decay"], "grad_norm": float(self.grad_norm),
                  "images_per_s": round(rate, 1), "images_per_s_per_process": round(rate / a.num_processes, 1),
                  "data_wait_fraction": round(self.window["wait"] / elapsed, 3), "collapse_ratio": round(ratio, 4)}
        if torch.cuda.is_available():
            record["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if self.syncs.enabled:
            record.update(self.syncs.take())
        self.window = {"start": now, "samples": 0, "wait": 0.0}
        if r.main:
            append_jsonl(r.out / "metrics.jsonl", record)
            log_metrics(self.trackers, {f"train/{key}": record[key] for key in
                                        ("loss", "lr", "weight_decay", "images_per_s", "collapse_ratio", "grad_norm")
                                        if isinstance(record.get(key), (int, float))}, self.step_no)
            self.progress.logged(record)
            if ratio < r.cfg.monitor.collapse_std:
                logger.warning("COLLAPSE WARNING step %d: std of the normalised embeddings is %.2f of the "
                               "healthy 1/sqrt(d); representations are becoming constant", self.step_no, ratio)

    def epoch_end(self, epoch: int) -> None:
        r, a = self.r, self.r.accelerator
        counts = torch.tensor([self.problems["skipped"], self.problems["missing"]], dtype=torch.float64,
                              device=a.device)
        counts = a.reduce(counts, "sum")
        if r.main:
            append_jsonl(r.out / "metrics.jsonl", {"step": self.step_no, "epoch": epoch,
                                                   "skipped_samples": int(counts[0]),
                                                   "missing_samples": int(counts[1])})
            if counts.sum() > 0:
                logger.warning("epoch %d: %d damaged sample(s) skipped, %d missing from shards that ended early "
                               "(ctssl shards verify names them)", epoch, int(counts[0]), int(counts[1]))
        self.problems.clear()

    def checkpoint(self) -> None:
        """Checked for non-finite values first (nothing non-finite is ever saved); every process agrees on
        whether the write succeeded."""
        r, a = self.r, self.r.accelerator
        if self.saved_at == self.step_no:
            return
        self.health.check(a, self.step_no, weights=True, saved_at=self.saved_at)
        self.saved_at = self.step_no
        rngs = _gather(a.num_processes, rng_state())
        loaders = _gather(a.num_processes, {str(v): list(p) for v, p in self.positions.items()})
        error = None
        if r.main:
            try:
                save_checkpoint(build_state(r.method, r.optimizer, a.scaler, self.step_no, self.step_no // r.per_epoch,
                                            r.resolved, rngs, loaders,
                                            deal_record(r.loader_deal, self.step_no, r.per_epoch)), r.out)
            except OSError as err:
                error = err
        if agree(a, error is not None):
            raise error or OSError("the main process could not write the checkpoint")

    def knn(self, tag: str) -> None:
        r = self.r
        if r.main and r.monitor is not None and r.monitor.enabled:
            acc = r.monitor(r.method.export_backbone, r.accelerator.device, r.resolved["resolved"]["channels_last"])
            record = {"step": self.step_no, "epoch": self.step_no // r.per_epoch, "knn_accuracy": acc, "when": tag}
            self.history.append(record)
            append_jsonl(r.out / "metrics.jsonl", record)
            log_metrics(self.trackers, {"monitor/knn_accuracy": acc}, self.step_no)
            logger.info("step %d: kNN accuracy (%s) %.3f", self.step_no, r.cfg.monitor.knn_label, acc)
        r.accelerator.wait_for_everyone()

    def finish(self, stopped_by: str | None) -> dict:
        r, cfg, a = self.r, self.r.cfg, self.r.accelerator
        if self.keys is not None:
            self.keys.close()
        self.checkpoint()
        result = {"steps": self.step_no, "total_steps": r.total,
                  "final_loss": self.loss_value if math.isfinite(self.loss_value) else None,
                  "stopped_by": stopped_by, "knn": self.history,
                  "checkpoint": str(r.out / "checkpoints" / "last.pt")}
        if r.main and stopped_by is None:
            result["backbone"] = str(export_backbone(r.method, r.out, self.card(), self.patients()))
            atomic_write_text(r.out / "result.json", json.dumps(result, indent=1) + "\n")
        finish_trackers(self.trackers)
        if stopped_by and r.main:
            logger.warning("%s: checkpoint saved at step %d; rerun the same command to resume",
                           f"{stopped_by} received" if stopped_by != "stop file" else "stop requested (stop file)",
                           self.step_no)
        a.wait_for_everyone()
        a.end_training()
        return result

    def patients(self) -> dict | None:
        """Whom a CT run pretrained on: the patients of its split, from the shard folder's record
        (``shards.patients``), for the evaluation's overlap check; None for natural images or a folder that
        records none (the card then says nothing, and evaluation reports the backbone as unchecked)."""
        cfg = self.r.cfg
        if self.r.kind != "ct":
            return None
        recorded = load_patients(cfg.data.shards)
        if recorded is None:
            logger.warning("%s records no patients (written before ctssl recorded them): the export cannot say whom "
                           "it was pretrained on, and evaluations will report it as unchecked", cfg.data.shards)
            return None
        return {"salt_check": recorded["salt_check"], "split": cfg.data.split,
                "patients": recorded["splits"].get(cfg.data.split, set())}

    def card(self) -> dict:
        r, cfg = self.r, self.r.cfg
        ct = r.kind == "ct"
        return {"ctssl_version": __version__, "method": cfg.method.name, "backbone": cfg.model.backbone,
                "exported": "teacher" if cfg.method.name == "dino" else "backbone", "in_chans": r.in_chans,
                "data": {"shards": cfg.data.shards, "kind": r.kind, "split": cfg.data.split,
                         "windows": cfg.data.windows if ct and cfg.data.intensity == "windows" else None,
                         "intensity": cfg.data.intensity if ct else "rgb", "image_size": cfg.data.image_size},
                "steps": self.step_no, "epochs": self.step_no / r.per_epoch, "knn": self.history,
                "config": r.resolved, **_init_entries(r.resolved["resolved"].get("init"))}


def tracker_names(monitor) -> list[str]:
    """``monitor.log_with``, without tensorboard when ``monitor.tensorboard`` is false."""
    return [n for n in monitor.log_with if n != "tensorboard" or monitor.tensorboard]


def hparams(resolved: dict) -> dict:
    """What the trackers record of a run: the method, backbone, init and the resolved optimisation."""
    cfg = resolved
    return {"method": cfg["method"]["name"], "backbone": cfg["model"]["backbone"], "init": cfg["model"]["init"],
            "data": {"shards": cfg["data"]["shards"], "image_size": cfg["data"]["image_size"]},
            "resolved": {k: cfg["resolved"][k] for k in ("lr", "global_batch", "total_steps", "warmup_steps",
                                                         "processes") if k in cfg["resolved"]}}


INIT_FIELDS = ("source", "backbone", "method", "weights_sha256", "arm", "preprocessing", "architecture_config")


def _init_entries(init: dict | None) -> dict:
    """The export card's record of continued pretraining: ``init`` (the source and its weights' SHA-256, method,
    arm and preprocessing) and, for a Hugging Face backbone, the ``architecture_config`` that rebuilds it."""
    if not init:
        return {}
    return {"init": {k: v for k, v in init.items() if k != "architecture_config"},
            **({"architecture_config": init["architecture_config"]} if init.get("architecture_config") else {})}


class SyncCounter:
    """``monitor.sync_debug`` on a GPU: ordinary steps run under ``torch.cuda.set_sync_debug_mode("warn")``
    and every host synchronisation they make is counted with the line that made it (logging steps,
    checkpoints and the monitor synchronise on purpose and are left out)."""

    def __init__(self, enabled: bool):
        self.enabled, self.steps, self.sites = enabled, 0, Counter()

    @contextlib.contextmanager
    def watch(self):
        if not self.enabled:
            yield
            return
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        self.steps += 1
        for w in caught:
            if "synchroniz" in str(w.message).lower():
                self.sites[f"{Path(w.filename).name}:{w.lineno}"] += 1

    def take(self) -> dict:
        out = {"host_syncs_per_step": round(sum(self.sites.values()) / max(1, self.steps), 2),
               "host_sync_sites": dict(self.sites.most_common(12))}
        self.steps, self.sites = 0, Counter()
        return out


def _report_compilation() -> None:
    """What torch.compile made of the step: graphs and graph breaks (each break a return to Python)."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    logger.info("torch.compile: %d graph(s), %d graph break(s)%s", counters["stats"]["unique_graphs"],
                sum(breaks.values()), f" ({'; '.join(list(breaks)[:3])})" if breaks else "")


def _gather(world: int, obj) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out
