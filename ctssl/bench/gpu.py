"""``ctssl bench gpu``: every GPU figure ctssl needs, in one call, each beside a baseline measured in the
same run (docs/benchmarks.md, GPU; the GPU figures issue). Built to run once on a lent H100/H200 in under
8 minutes, and in the test suite on a CPU in a tiny configuration (``--tiny``), so that GPU time is never
spent debugging it.

Suites, in order (each one's failure is recorded and the next runs):

1. ``shards``: the benchmark's CT shards made with ctssl's own commands (``synth`` -> ``ingest`` ->
   ``shards shuffle``), timed.
2. ``simclr``: SimCLR ResNet-50 at 224 px, bf16, channels_last, SyncBN (a no-op on one GPU): the real
   training loop (``pretrain.train``) fed by the real loader from the shards, against the same step on
   synthetic tensors already on the GPU (the data path's ceiling). Two-view samples/s, views/s, model
   FLOP utilisation (FLOPs per sample counted by ``torch.utils.flop_counter``, against the GPU's dense
   bf16 peak), peak GPU memory, the fraction of the step time spent waiting for data, and the host
   synchronisations per step (``torch.cuda.set_sync_debug_mode("warn")`` over ordinary steps).
3. ``compile``: the synthetic SimCLR step with ``torch.compile`` against without (compile time apart).
4. ``dino``: DINO ViT-S/16 with 2 x 224 + 6 x 96 crops, loader-fed and synthetic.
5. ``extract``: ResNet-50 feature extraction from the shards (``eval.features.extract_units``) against one
   image at a time.
6. ``knn``: exact top-k cosine search of 10,000 queries in a 1,000,000 x 2,048 bank: FAISS on the GPU
   when installed (``pip install ctssl[gpu]``), torch matmul + top-k in fp32 and in fp16, each with its
   recall of the exact fp32 neighbours, against FAISS on the CPU on a subset of the queries.

Results: ``OUT/gpu-bench.json`` and ``OUT/gpu-bench.md``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctssl.core.atomic import atomic_write_text

logger = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's data sheets, for model FLOP utilisation, by the card's
# exact model as torch names it ("NVIDIA H100 80GB HBM3" is the SXM card): the first rule whose words are all
# in the name applies, so the form factors come before the family.
PEAK_BF16 = [
    (("H100", "PCIe"), 756e12), (("H100", "NVL"), 835e12), (("H100",), 989e12),    # H100 SXM
    (("H200", "NVL"), 835e12), (("H200",), 989e12),                                 # H200 SXM
    (("A100",), 312e12), (("L40S",), 362e12), (("A10",), 125e12),
]


@dataclass
class GPUBenchSize:
    """What the benchmark runs: ``full()`` on a GPU, ``tiny()`` on a CPU in the test suite."""

    patients: int = 24
    matrix: int = 256
    image_size: int = 224
    backbone: str = "resnet50"
    vit: str = "vit_s16"
    simclr_batch: int = 256
    dino_batch: int = 128
    dino_local: int = 6
    local_size: int = 96
    dino_output_dim: int = 65536
    head_hidden: int = 2048
    steps: int = 30
    warmup_steps: int = 10
    workers: int | None = None
    extract_images: int = 4096
    one_at_a_time: int = 256
    bank: int = 1_000_000
    dim: int = 2048
    queries: int = 10_000
    cpu_queries: int = 200
    k: int = 20
    compile: bool = True

    @classmethod
    def full(cls) -> "GPUBenchSize":
        return cls()

    @classmethod
    def tiny(cls) -> "GPUBenchSize":
        return cls(patients=3, matrix=64, image_size=32, backbone="resnet18", vit="resnet18", simclr_batch=4, dino_batch=2,
                   dino_local=2, local_size=16, dino_output_dim=256, head_hidden=64, steps=2, warmup_steps=1,
                   workers=0, extract_images=32,
                   one_at_a_time=8, bank=2000, dim=64, queries=50, cpu_queries=20, k=5, compile=False)


@dataclass
class GPUBenchResult:
    device: str
    date: str
    torch: str
    suites: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_flops(name: str) -> float | None:
    """The card's dense bf16 peak from its exact model name, None when the model is not in the table (then
    no MFU is given rather than a wrong one)."""
    return next((flops for words, flops in PEAK_BF16 if all(w in name for w in words)), None)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- shards
def build_shards(out: Path, size: GPUBenchSize) -> dict:
    """CT shards for the benchmark with ctssl's own commands (cached in ``out``)."""
    from ctssl.data.ingest import IngestConfig, run_ingest
    from ctssl.data.pseudonym import fixed_salt
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    shuffled = out / "shards-shuffled"
    start = time.perf_counter()
    if not (shuffled / "manifest.json").exists():
        corpus, ordered = out / "corpus", out / "shards"
        run_synth(SynthConfig(out=str(corpus), patients=size.patients, seed=3, matrix=size.matrix,
                              natural=NaturalConfig(enabled=False), contact_sheet=False))
        with fixed_salt("gpu-benchmark-salt-not-secret"):     # synthetic patients only
            run_ingest(IngestConfig(sources=[str(corpus)], out=str(ordered), image_size=min(256, size.matrix),
                                    workers=os.cpu_count() or 1, labels=[str(corpus / "labels" / "slices.csv")]))
        run_shuffle(ordered, shuffled, ShuffleConfig(shard_size_mb=64.0), workers=min(8, os.cpu_count() or 1))
    manifest = json.loads((shuffled / "manifest.json").read_text())
    return {"path": str(shuffled), "ordered": str(out / "shards"), "samples": manifest["totals"]["samples"], "shards": manifest["totals"]["shards"],
            "seconds": round(time.perf_counter() - start, 1)}


# ---------------------------------------------------------------------------------------------- training
def _train_cfg(shards: str, out: Path, method: str, size: GPUBenchSize, batch: int, steps: int):
    from ctssl.pretrain.config import resolve_pretrain_config

    overrides = [f"data.image_size={size.image_size}", f"monitor.log_every={steps}", "monitor.knn_every=100000",
                 f"method.simclr.hidden_dim={size.head_hidden}", f"method.dino.hidden_dim={size.head_hidden}",
                 "monitor.tensorboard=false", "monitor.knn_scan=64", "checkpoint_every=0",
                 "optim.warmup_epochs=0", "data.epoch_samples=100000000", f"max_steps={steps}"]
    if size.workers is not None:
        overrides.append(f"data.num_workers={size.workers}")
    options = {"data.shards": shards, "out": str(out), "data.batch_size": batch}
    if method == "dino":
        overrides += [f"method.dino.local_crops={size.dino_local}", f"method.dino.local_size={size.local_size}",
                      f"method.dino.output_dim={size.dino_output_dim}"]
        options.update({"method.name": "dino", "model.backbone": size.vit})
    else:
        options["model.backbone"] = size.backbone
    return resolve_pretrain_config(None, None, overrides, options)


def loader_fed(shards: str, out: Path, method: str, size: GPUBenchSize, batch: int) -> dict:
    """The real training loop on the real loader: a warm-up run of ``warmup_steps``, then ``steps`` more,
    resumed (the resumed run's metrics window covers only the timed steps), the ordinary steps under the
    sync debug mode."""
    from ctssl.pretrain.train import train

    total = size.warmup_steps + size.steps
    run_dir = out / f"train-{method}"
    train(_train_cfg(shards, run_dir, method, size, batch, size.warmup_steps))
    # The timed run: steps warmup+1 .. total in one metrics window (a log at step `total` only), the sync
    # debug mode off, the peak memory of this run alone.
    cfg = _train_cfg(shards, run_dir, method, size, batch, total)
    cfg.monitor.log_every = total
    cfg.monitor.sync_debug = False
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(cfg, accept_changes=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [m for m in metrics if "images_per_s" in m][-1]
    # Host synchronisations counted apart, over a few more steps under the sync debug mode (untimed).
    cfg = _train_cfg(shards, run_dir, method, size, batch, total + SYNC_STEPS)
    cfg.monitor.log_every = total + SYNC_STEPS
    cfg.monitor.sync_debug = True
    train(cfg, accept_changes=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = [m for m in metrics if "images_per_s" in m][-1]
    return {"samples_per_s": timed["images_per_s"], "data_wait_fraction": timed["data_wait_fraction"],
            "timed_steps": f"{size.warmup_steps + 1}-{total}" if timed["step"] == total else None,
            "peak_gpu_gb": timed.get("gpu_mem_gb"), "host_syncs_per_step": counted.get("host_syncs_per_step"),
            "sync_sites": counted.get("host_sync_sites")}


def _method_on_device(method_name: str, size: GPUBenchSize, backbone: str, precision: str):
    from ctssl.pretrain.backbones import build_backbone
    from ctssl.pretrain.config import DINOConfig, SimCLRConfig
    from ctssl.pretrain.methods import build_method

    torch.manual_seed(0)
    net, dim = build_backbone(backbone, 3)
    cfg = type("M", (), {"simclr": SimCLRConfig(hidden_dim=size.head_hidden, gather_distributed=False),
                         "dino": DINOConfig(hidden_dim=size.head_hidden, output_dim=size.dino_output_dim,
                                            local_crops=size.dino_local, local_size=size.local_size)})()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    method = build_method(method_name, net, dim, cfg).to(device)
    if backbone.startswith("resnet") and device == "cuda":
        method = method.to(memory_format=torch.channels_last)
    return method, device


def _views(method_name: str, size: GPUBenchSize, batch: int, device: str) -> list[torch.Tensor]:
    sizes = [size.image_size] * 2 + ([size.local_size] * size.dino_local if method_name == "dino" else [])
    fmt = torch.channels_last if device == "cuda" else torch.contiguous_format
    return [torch.randn(batch, 3, s, s, device=device).contiguous(memory_format=fmt) for s in sizes]


def synthetic_step(method_name: str, size: GPUBenchSize, batch: int, backbone: str, compile_model: bool = False) -> dict:
    """The training step (forward, backward, AdamW step, teacher EMA) on synthetic tensors on the device."""
    from accelerate import Accelerator

    from ctssl.pretrain.step import forward_backward

    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.optim import build_optimizer
    from ctssl.pretrain.schedules import resolve_lr

    precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    method, device = _method_on_device(method_name, size, backbone, precision)
    # The method's own optimizer (SimCLR: LARS; DINO: AdamW), as the loader-fed run uses.
    optim = resolve_pretrain_config(None, None, [], {"method.name": method_name}).optim
    optimizer = build_optimizer(optim, method, resolve_lr(optim, batch))
    model = torch.compile(method) if compile_model else method
    views = _views(method_name, size, batch, device)

    def step():
        forward_backward(model, method, views, 0, batch, accelerator)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.update_teacher(0.996)

    start = time.perf_counter()
    step()
    _sync()
    first = time.perf_counter() - start
    for _ in range(size.warmup_steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync()
    start = time.perf_counter()
    for _ in range(size.steps):
        step()
    _sync()
    seconds = time.perf_counter() - start
    rate = batch * size.steps / seconds
    flops = step_flops(method, views)
    return {"samples_per_s": round(rate, 1), "views_per_s": round(rate * len(views), 1),
            "optimizer": type(optimizer).__name__, "timed_steps": size.steps,
            "first_step_s": round(first, 1), "flops_per_sample": flops / batch,
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}


def step_flops(method, views) -> float:
    """FLOPs of one forward and backward of the method on ``views`` (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=torch.cuda.is_available()):
        loss, _ = method(views, 0)
        loss.backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def training_suite(shards: str, out: Path, method: str, size: GPUBenchSize) -> dict:
    batch = size.simclr_batch if method == "simclr" else size.dino_batch
    backbone = size.backbone if method == "simclr" else size.vit
    synthetic = synthetic_step(method, size, batch, backbone)
    real = loader_fed(shards, out, method, size, batch)
    views = 2 + (size.dino_local if method == "dino" else 0)
    peak = peak_flops(device_name())
    def mfu(rate):
        return round(rate * synthetic["flops_per_sample"] / peak, 3) if peak else None

    return {"backbone": backbone, "batch": batch, "views_per_sample": views, "image_size": size.image_size,
            "peak_bf16_flops": peak,
            "loader": {**real, "views_per_s": round(real["samples_per_s"] * views, 1), "mfu": mfu(real["samples_per_s"])},
            "synthetic": {**synthetic, "mfu": mfu(synthetic["samples_per_s"])},
            "loader_vs_synthetic": round(real["samples_per_s"] / synthetic["samples_per_s"], 2)}


def compile_suite(size: GPUBenchSize) -> dict:
    eager = synthetic_step("simclr", size, size.simclr_batch, size.backbone)
    compiled = synthetic_step("simclr", size, size.simclr_batch, size.backbone, compile_model=True)
    return {"eager_samples_per_s": eager["samples_per_s"], "compiled_samples_per_s": compiled["samples_per_s"],
            "compile_seconds": compiled["first_step_s"],
            "compiled_vs_eager": round(compiled["samples_per_s"] / eager["samples_per_s"], 2)}


# ---------------------------------------------------------------------------------------------- extraction
def extract_suite(shards: str, size: GPUBenchSize) -> dict:
    from ctssl.eval.inputs.datasets import open_dataset
    from ctssl.eval.features.extract import extract_units
    from ctssl.eval.inputs.spec import input_spec, prepare
    from ctssl.pretrain.sources import load_backbone

    data = open_dataset(shards, "region")
    split = "train"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, card = load_backbone(f"random:{size.backbone}:3")
    model = model.to(device).eval()
    spec = input_spec(card, "ct", size.image_size)
    units, rows = [], 0
    for unit, count in enumerate(data.units[split]):
        if rows >= size.extract_images:
            break
        units.append(unit)
        rows += count
    with torch.inference_mode():
        dim = model(torch.zeros(1, 3, size.image_size, size.image_size, device=device)).shape[1]
    out = np.zeros((rows, dim), np.float32)
    warm = np.zeros((data.units[split][units[0]], dim), np.float32)
    extract_units(model, data, split, spec, warm, units=units[:1], device=device)      # warm-up
    _sync()
    start = time.perf_counter()
    extract_units(model, data, split, spec, out, units=units, device=device)
    _sync()
    batched = rows / (time.perf_counter() - start)
    images = []
    for _key, image in data.unit_stream(split, units[0]):
        images.append(image)
        if len(images) >= size.one_at_a_time:
            break
    start = time.perf_counter()
    with torch.inference_mode():
        for image in images:
            model(prepare(image, spec)[None].to(device))
    _sync()
    single = len(images) / (time.perf_counter() - start)
    return {"images": rows, "batched_images_per_s": round(batched, 1),
            "one_at_a_time_images_per_s": round(single, 1), "batched_vs_one_at_a_time": round(batched / single, 1)}


# ---------------------------------------------------------------------------------------------- kNN
def _topk_torch(query: torch.Tensor, bank: torch.Tensor, k: int, dtype, chunk: int = 262_144):
    """Exact top-k inner products, bank in ``chunk``-row blocks, merged; (sims, idx) on the device."""
    q = query.to(dtype)
    best_s = best_i = None
    for start in range(0, len(bank), chunk):
        sims = q @ bank[start:start + chunk].to(dtype).T
        s, i = sims.float().topk(min(k, sims.shape[1]), dim=1)
        i = i + start
        if best_s is None:
            best_s, best_i = s, i
        else:
            s, order = torch.cat([best_s, s], 1).topk(k, dim=1)
            best_i, best_s = torch.cat([best_i, i], 1).gather(1, order), s
    return best_s, best_i


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(found, exact)]))


def knn_suite(size: GPUBenchSize) -> dict:
    import faiss

    from ctssl.bench.knn import clustered_features

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bank_np = clustered_features(size.bank, size.dim, 1000, 0)
    query_np = clustered_features(size.queries, size.dim, 1000, 1)
    bank = torch.from_numpy(bank_np).to(device)
    query = torch.from_numpy(query_np).to(device)
    rows, recall = {}, {}
    _sync()
    start = time.perf_counter()
    exact_s, exact_i = _topk_torch(query, bank, size.k, torch.float32)
    _sync()
    rows["torch_fp32"] = size.queries / (time.perf_counter() - start)
    exact = exact_i.cpu().numpy()
    if device == "cuda":
        bank16 = bank.half()
        _topk_torch(query[:100], bank16, size.k, torch.float16)
        _sync()
        start = time.perf_counter()
        _, idx16 = _topk_torch(query, bank16, size.k, torch.float16)
        _sync()
        rows["torch_fp16"] = size.queries / (time.perf_counter() - start)
        recall["torch_fp16"] = _recall(idx16.cpu().numpy(), exact)
        del bank16
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus:
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(size.dim))
        index.add(bank_np)
        index.search(query_np[:100], size.k)
        start = time.perf_counter()
        _, idx = index.search(query_np, size.k)
        rows["faiss_gpu_flat"] = size.queries / (time.perf_counter() - start)
        recall["faiss_gpu_flat"] = _recall(idx, exact)
        del index
    cpu = faiss.IndexFlatIP(size.dim)
    cpu.add(bank_np)
    start = time.perf_counter()
    _, idx = cpu.search(query_np[:size.cpu_queries], size.k)
    rows["faiss_cpu_flat (baseline)"] = size.cpu_queries / (time.perf_counter() - start)
    recall["faiss_cpu_flat (baseline)"] = _recall(idx, exact[:size.cpu_queries])
    base = rows["faiss_cpu_flat (baseline)"]
    return {"bank": size.bank, "dim": size.dim, "queries": size.queries, "k": size.k, "faiss_gpus": gpus,
            "queries_per_s": {k: round(v, 1) for k, v in rows.items()},
            "vs_faiss_cpu": {k: round(v / base, 1) for k, v in rows.items()},
            "recall_vs_exact_fp32": {k: round(v, 4) for k, v in recall.items()}}


# ---------------------------------------------------------------------------------------------- the run
SYNC_STEPS = 3       # untimed steps under the sync debug mode, after the timed ones


def run_gpu_bench(out: str | Path, size: GPUBenchSize | None = None, only: list[str] | None = None) -> dict:
    """Every suite (or ``only`` those), each failure recorded with its traceback and the others run on."""
    size = size or (GPUBenchSize.full() if torch.cuda.is_available() else GPUBenchSize.tiny())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = GPUBenchResult(device=device_name(), date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
    result.suites["size"] = asdict(size)
    shards = None
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True   # as pretrain.train sets it: the same for every compared run

    def suite(name, fn):
        if only and name not in only and name != "shards":
            return
        start = time.perf_counter()
        try:
            result.suites[name] = {**fn(), "suite_seconds": round(time.perf_counter() - start, 1)}
        except Exception as err:     # noqa: BLE001 - one suite's failure must not cost the others' figures
            result.errors[name] = "".join(traceback.format_exception(err))[-3000:]
            logger.error("gpu bench: %s failed: %s", name, err)
        write(out, result)

    suite("shards", lambda: build_shards(out, size))
    shards = (result.suites.get("shards") or {}).get("path")
    if shards:
        suite("simclr", lambda: training_suite(shards, out, "simclr", size))
        if size.compile:
            suite("compile", lambda: compile_suite(size))
        suite("dino", lambda: training_suite(shards, out, "dino", size))
        suite("extract", lambda: extract_suite(shards, size))
    suite("knn", lambda: knn_suite(size))
    return asdict(result)


def write(out: Path, result: GPUBenchResult) -> None:
    atomic_write_text(out / "gpu-bench.json", json.dumps(asdict(result), indent=1, default=str) + "\n")
    atomic_write_text(out / "gpu-bench.md", markdown(asdict(result)) + "\n")


def markdown(result: dict) -> str:
    s = result["suites"]
    lines = [f"# ctssl bench gpu: {result['device']}, {result['date']} (torch {result['torch']})", "",
             "| figure | measured | same-run baseline | ratio |", "| --- | --- | --- | --- |"]
    for method in ("simclr", "dino"):
        if method in s:
            t = s[method]
            lines.append(f"| {method} {t['backbone']} {t['image_size']} px, batch {t['batch']}, loader-fed | "
                         f"{t['loader']['samples_per_s']} samples/s ({t['loader']['views_per_s']} views/s), MFU "
                         f"{t['loader']['mfu']}, data wait {t['loader']['data_wait_fraction']}, peak "
                         f"{t['loader']['peak_gpu_gb']} GB, host syncs/step {t['loader']['host_syncs_per_step']} | "
                         f"synthetic tensors {t['synthetic']['samples_per_s']} samples/s | "
                         f"{t['loader_vs_synthetic']}x |")
    if "compile" in s:
        c = s["compile"]
        lines.append(f"| SimCLR step with torch.compile | {c['compiled_samples_per_s']} samples/s (compile "
                     f"{c['compile_seconds']} s) | eager {c['eager_samples_per_s']} samples/s | {c['compiled_vs_eager']}x |")
    if "extract" in s:
        e = s["extract"]
        lines.append(f"| feature extraction from shards ({e['images']} images) | {e['batched_images_per_s']} images/s | "
                     f"one at a time {e['one_at_a_time_images_per_s']} images/s | {e['batched_vs_one_at_a_time']}x |")
    if "knn" in s:
        k = s["knn"]
        base = k["queries_per_s"]["faiss_cpu_flat (baseline)"]
        for name, rate in k["queries_per_s"].items():
            if "baseline" not in name:
                lines.append(f"| kNN {k['bank']:,} x {k['dim']}, k={k['k']}: {name} | {rate} queries/s, recall "
                             f"{k['recall_vs_exact_fp32'].get(name, 1.0)} | FAISS CPU {base} queries/s | "
                             f"{k['vs_faiss_cpu'][name]}x |")
    if "shards" in s:
        lines += ["", f"Shards: {s['shards']['samples']} CT slices in {s['shards']['shards']} shuffled shards, made in "
                      f"{s['shards']['seconds']} s with ctssl synth/ingest/shuffle."]
    for name, error in result["errors"].items():
        lines += ["", f"**{name} failed**:", "```", error.strip().splitlines()[-1], "```"]
    return "\n".join(lines)
