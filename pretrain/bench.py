"""Pretraining benchmarks: the view pipeline against lightly's, and training steps.

- ``loader``: two-view SimCLR samples per second on one core (one process, one thread):
  ctssl's CT pipeline (decode ``.hu`` + two augmented, windowed 224x224 views) against lightly's
  ``SimCLRTransform`` on PIL images of the same slices (decode JPEG + transform), measured in the
  same run on the same slices; plus the real WebDataset loader end to end.
- ``train``: SimCLR training steps per second of a ResNet-18 on the CPU (images/s), or on the GPU
  with bf16 and channels_last when one is present.

Each figure is the median of ``repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ctssl.core.atomic import atomic_write_text


def _median_rate(fn, items: int, repeats: int) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_shards(out: Path) -> Path:
    """A small CT shard set (synthetic chest and abdomen studies, 256x256), cached in ``out``."""
    shards = out / "bench-shards"
    if (shards / "manifest.json").exists():
        return shards
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth

    corpus = out / "bench-corpus"
    run_synth(SynthConfig(out=str(corpus), patients=4, seed=1, natural=NaturalConfig(enabled=False),
                          contact_sheet=False))
    os.environ.setdefault("CTSSL_SALT", "benchmark-salt-not-secret-0123")
    run_ingest(IngestConfig(sources=[str(corpus)], out=str(shards), image_size=256,
                            splits=SplitFractions(1.0, 0.0, 0.0)))
    return shards


def bench_loader(out: str | Path, n: int = 256, repeats: int = 3) -> dict:
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    from ctssl.data.windowing import to_uint8
    from ctssl.pretrain.config import PretrainConfig
    from ctssl.pretrain.loader import make_loader
    from ctssl.pretrain.views import CTViews, crop_specs
    from ctssl.shards.encoding import decode_hu
    from ctssl.shards.reader import iter_shard, shard_paths

    torch.set_num_threads(1)
    out = Path(out)
    shards = bench_shards(out)
    raw = []
    for path in shard_paths(shards, "train"):
        raw.extend(s["hu"] for s in iter_shard(path, decode=False))
    raw = raw[:n]
    cfg = PretrainConfig()
    cfg.data.shards, cfg.data.image_size = str(shards), 224
    ct = CTViews(cfg.data.windows, cfg.data.augment, crop_specs("simclr", cfg), 0.5, 0.5)
    # The same slices as 8-bit RGB JPEGs, as natural-image pipelines read them.
    jpegs = []
    for data in raw:
        grey = to_uint8(decode_hu(data), 40, 400)
        buf = io.BytesIO()
        Image.fromarray(grey).convert("RGB").save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    lightly_views = SimCLRTransform(input_size=224)

    def ctssl_pass():
        for data in raw:  # outputs are dropped, as a loader hands them on
            ct(decode_hu(data))

    def lightly_pass():
        for data in jpegs:
            lightly_views(Image.open(io.BytesIO(data)).convert("RGB"))

    ctssl_rate = _median_rate(ctssl_pass, len(raw), repeats)
    lightly_rate = _median_rate(lightly_pass, len(jpegs), repeats)

    cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer = 32, 0, 256
    steps = max(1, len(raw) // 32)

    def loader_pass():
        for _ in make_loader(cfg, ct, rank=0, steps=steps, start_step=0):
            pass

    loader_rate = _median_rate(loader_pass, steps * 32, repeats)
    return {"samples": len(raw), "view_size": 224,
            "ctssl_ct_two_view_samples_per_s": round(ctssl_rate, 1),
            "lightly_simclr_transform_pil_samples_per_s": round(lightly_rate, 1),
            "ctssl_vs_lightly": round(ctssl_rate / lightly_rate, 2),
            "webdataset_loader_samples_per_s": round(loader_rate, 1),
            "threads": torch.get_num_threads()}


def bench_train(out: str | Path, batch: int = 32, sizes=(96, 224), steps: int = 3) -> dict:
    from ctssl.pretrain.backbones import build_backbone
    from ctssl.pretrain.config import SimCLRConfig
    from ctssl.pretrain.methods.simclr import SimCLR

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for size in sizes:
        backbone, dim = build_backbone("resnet18", 3)
        model = SimCLR(backbone, dim, SimCLRConfig()).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
        if device == "cuda":
            model = model.to(memory_format=torch.channels_last)
            views = [v.to(memory_format=torch.channels_last) for v in views]

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss, _ = model(views)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()

        rate = _median_rate(step, batch, steps)
        rows.append({"backbone": "resnet18", "method": "simclr", "image_size": size, "batch": batch,
                     "device": device, "images_per_s": round(rate, 1),
                     "views_per_s": round(2 * rate, 1)})
    return {"rows": rows, "threads": torch.get_num_threads()}


def run_pretrain_bench(out: str | Path, which: str) -> dict:
    from ctssl.core.machine import machine_info

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": f"pretrain-{which}", "machine": machine_info()}
    result["results"] = bench_loader(out) if which == "loader" else bench_train(out)
    atomic_write_text(out / f"pretrain-{which}-bench.json", json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    r = result["results"]
    if result["benchmark"] == "pretrain-loader":
        return "\n".join([
            f"two-view SimCLR pipeline at {r['view_size']}x{r['view_size']}, one core ({r['samples']} slices)",
            f"  lightly SimCLRTransform on PIL (decode JPEG + views)   {r['lightly_simclr_transform_pil_samples_per_s']:>8.1f} samples/s",
            f"  ctssl CT views (decode HU + windowed views)             {r['ctssl_ct_two_view_samples_per_s']:>8.1f} samples/s"
            f"  ({r['ctssl_vs_lightly']:.2f}x lightly)",
            f"  ctssl WebDataset loader end to end (0 workers)          {r['webdataset_loader_samples_per_s']:>8.1f} samples/s"])
    lines = [f"SimCLR training step ({r['threads']} threads)"]
    for row in r["rows"]:
        lines.append(f"  {row['backbone']} {row['image_size']}x{row['image_size']} batch {row['batch']} on "
                     f"{row['device']}: {row['images_per_s']:.1f} images/s ({row['views_per_s']:.1f} views/s)")
    return "\n".join(lines)
