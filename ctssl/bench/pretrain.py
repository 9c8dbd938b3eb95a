"""Pretraining benchmarks, each against a baseline measured in the same run.

- ``loader``: CPU time per two-view SimCLR sample at 224x224 on one core, through the real loader
  (read the shard, check checksums, shuffle buffer, decode, batch) run in this process: the device-side
  view path (the worker draws each view's augmentation and collates the int16 slices) against ctssl
  0.1's per-sample path through the same reading (crop, resize, flip, blur, noise and window every view
  on the CPU: ``LegacyCTViews``), and lightly's ``SimCLRTransform`` on PIL (decode a JPEG, transform);
  plus the device-side rendering of the same batches when it runs on this CPU (on a GPU it leaves the
  CPU).
- ``batches``: what 512-sample batches are made of, on shards shaped like the ingest output (whole series
  in slice order, 40 series of 125 slices per shard, 240 series): distinct series, same-series pairs and
  near pairs (at most 2 slices apart) per batch for ctssl 0.1's loader (one shard per worker, 512-sample
  buffer), today's loader on the same shards, and today's loader on the same shards after
  ``ctssl shards shuffle``; against uniform sampling (i.i.d.), simulated in the same run and in closed form.
- ``train``: SimCLR training steps of a ResNet-18 (images/s), on the GPU with bf16 and channels_last
  when there is one.

Each timing is the median of ``repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

import io
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.core.atomic import atomic_write_text


def _median_rate(fn, items: int, repeats: int) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def _median_cpu_seconds(fn, repeats: int) -> float:
    """Median CPU time (this process, all threads) of ``fn``."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def bench_shards(out: Path) -> Path:
    """A small CT shard set (8 synthetic chest and abdomen studies, 256x256, one series per shard so that
    loader workers have shards to share), cached in ``out``."""
    shards = out / "bench-shards-v3"      # v3: CTHU v2 with checksums, region labels joined, 8 shards
    if (shards / "manifest.json").exists():
        return shards
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth

    corpus = out / "bench-corpus-8"
    run_synth(SynthConfig(out=str(corpus), patients=8, seed=1, natural=NaturalConfig(enabled=False),
                          contact_sheet=False))
    os.environ.setdefault("CTSSL_SALT", "benchmark-salt-not-secret-0123")
    run_ingest(IngestConfig(sources=[str(corpus)], out=str(shards), image_size=256, shard_size_mb=1.0,
                            labels=[str(corpus / "labels" / "slices.csv")], splits=SplitFractions(1.0, 0.0, 0.0)))
    return shards


class LegacyCTViews:
    """ctssl 0.1's CT views, one sample at a time on the CPU (kept as the benchmark's baseline only):
    crop, antialiased resize, flips, scipy blur, correlated noise and jittered windows per view."""

    def __init__(self, windows, augment, crops, mean: float, std: float):
        from ctssl.data.windowing import get_window

        self.windows = [get_window(name) for name in windows]
        self.aug, self.crops, self.mean, self.std = augment, crops, mean, std

    def _view(self, hu: torch.Tensor, size: int, scale) -> torch.Tensor:
        from scipy.ndimage import gaussian_filter

        from ctssl.data.windowing import stack_windows
        from ctssl.pretrain.views import crop_box

        a = self.aug
        x0, y0, x1, y1 = (int(v) for v in crop_box(random, hu.shape[-2], hu.shape[-1], scale))
        crop = hu[None, :, y0:y1, x0:x1]
        v = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=(y1 - y0) > size or (x1 - x0) > size)[0]
        if random.random() < a.hflip:
            v = v.flip(-1)
        if random.random() < a.blur_prob:
            v = torch.from_numpy(gaussian_filter(v[0].numpy(), random.uniform(*a.blur_sigma), truncate=2.0))[None]
        if random.random() < a.noise_prob:
            noise = F.interpolate(torch.randn(1, 1, size // 2, size // 2), size=(size, size), mode="bilinear")[0]
            v = v + noise * (random.uniform(*a.noise_hu) / 0.625)
        j = a.window_jitter
        windows = [(lv + random.uniform(-j, j) * wd, wd * random.uniform(1 - j, 1 + j)) for lv, wd in self.windows]
        return stack_windows(v, windows).sub_(self.mean).div_(self.std)

    def __call__(self, hu: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(hu.astype(np.float32))[None]
        return [self._view(x, size, scale) for size, scale in self.crops]


def bench_loader(out: str | Path, n: int = 256, repeats: int = 3) -> dict:
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    from ctssl.data.windowing import to_uint8
    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.loader import make_loader
    from ctssl.pretrain.views import CTViewMaker, crop_specs
    from ctssl.shards.encoding import decode_hu
    from ctssl.shards.reader import iter_shard, shard_paths

    torch.set_num_threads(1)
    out = Path(out)
    shards = bench_shards(out)
    batch = 64
    steps = max(1, n // batch)
    cfg = resolve_pretrain_config(None, None, ["data.image_size=224", "data.shuffle_buffer=64"],
                                  {"data.shards": str(shards)})
    crops = crop_specs("simclr", cfg)
    maker = CTViewMaker(cfg.data, crops, 3)
    legacy = LegacyCTViews(cfg.data.windows, cfg.data.augment, crops, 0.5, 0.5)

    def loader_pass(kind, views):   # the real loader, in this process (0 workers): read, check, decode, ...
        for _ in make_loader(cfg, views, kind, 0, 1, 0, steps, batch, 0):
            pass

    raw = [s["hu"] for path in shard_paths(shards, "train") for s in iter_shard(path, decode=False)][:steps * batch]
    batches = [CTViewMaker.collate([decode_hu(d) for d in raw[s:s + batch]],
                                   [maker.draw(random.Random(s + i), 256, 256) for i in range(len(raw[s:s + batch]))])
               for s in range(0, len(raw), batch)]
    generator = torch.Generator().manual_seed(0)
    jpegs = []
    for data in raw:
        buf = io.BytesIO()
        Image.fromarray(to_uint8(decode_hu(data), 40, 400)).convert("RGB").save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    lightly_views = SimCLRTransform(input_size=224)

    def render_pass():
        for b in batches:
            maker.render(b, generator)

    def lightly_pass():
        for data in jpegs:
            lightly_views(Image.open(io.BytesIO(data)).convert("RGB"))

    samples = steps * batch
    ms = {name: 1000 * _median_cpu_seconds(fn, repeats) / samples
          for name, fn in (("worker", lambda: loader_pass("ct", maker)),
                           ("legacy", lambda: loader_pass("natural", legacy)),   # per-sample views, same reading
                           ("render", render_pass), ("lightly", lightly_pass))}
    return {"samples": samples, "view_size": 224, "threads": 1,
            "cpu_ms_per_sample": {k: round(v, 3) for k, v in ms.items()},
            "worker_vs_legacy": round(ms["legacy"] / ms["worker"], 1),
            "worker_samples_per_s_per_core": round(1000 / ms["worker"], 0),
            "legacy_vs_lightly": round(ms["lightly"] / ms["legacy"], 2)}


def bench_batches(out: str | Path, batch: int = 512, batches: int = 24, workers: int = 2) -> dict:
    from ctssl.pretrain.batch_stats import (batch_composition, iid_expectation, series_ordered_corpus,
                                            simulate_iid, summarise)
    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.loader import make_loader
    from ctssl.shards.reader import iter_samples
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    out = Path(out)
    series, slices, per_shard = 240, 125, 40
    ordered = series_ordered_corpus(out / "batches-ordered", series, slices, per_shard)
    shuffled = out / "batches-shuffled"
    start = time.perf_counter()
    run_shuffle(ordered, shuffled, ShuffleConfig(shard_size_mb=4.0, bucket_mb=16.0), workers=2)
    shuffle_seconds = time.perf_counter() - start
    samples = [(s["meta"]["series"], s["meta"]["slice_index"]) for s in iter_samples(ordered)]

    def measure(folder: Path, interleave: int, buffer: int) -> dict:
        cfg = resolve_pretrain_config(None, None, [f"data.interleave={interleave}", f"data.shuffle_buffer={buffer}"],
                                      {"data.shards": str(folder)})
        found = []
        for b in make_loader(cfg, None, "meta", 0, 1, 0, batches, batch, workers):
            found.append(batch_composition([m["series"] for m in b["meta"]], [m["slice_index"] for m in b["meta"]]))
        return summarise(found)

    rows = {"ctssl 0.1 loader (one shard per worker, 512 buffer), series-ordered shards": measure(ordered, 1, 512),
            "loader (4 shards per worker, 1024 buffer), series-ordered shards": measure(ordered, 4, 1024),
            "loader (4 shards per worker, 1024 buffer), after ctssl shards shuffle": measure(shuffled, 4, 1024),
            "i.i.d. (uniform without replacement), simulated": simulate_iid(samples, batch, batches)}
    expected = iid_expectation([slices] * series, batch)
    return {"corpus": {"series": series, "slices_per_series": slices, "series_per_shard": per_shard,
                       "samples": series * slices}, "batch": batch, "batches": batches, "workers": workers,
            "shuffle_seconds": round(shuffle_seconds, 1), "iid_expected": expected, "rows": rows,
            "ratios_vs_iid": {name: {"distinct_series": round(r["distinct_series"]["mean"] / expected["distinct_series"], 3),
                                     "same_series_pairs": round(r["same_series_pairs"]["mean"] / expected["same_series_pairs"], 2)}
                              for name, r in rows.items()}}


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
                     "device": device, "images_per_s": round(rate, 1), "views_per_s": round(2 * rate, 1)})
    return {"rows": rows, "threads": torch.get_num_threads()}


SUITES = {"loader": bench_loader, "batches": bench_batches, "train": bench_train}


def run_pretrain_bench(out: str | Path, which: str) -> dict:
    from ctssl.core.machine import machine_info

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": f"pretrain-{which}", "machine": machine_info(), "results": SUITES[which](out)}
    atomic_write_text(out / f"pretrain-{which}-bench.json", json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    r = result["results"]
    if result["benchmark"] == "pretrain-loader":
        ms = r["cpu_ms_per_sample"]
        return "\n".join([
            f"CPU time per two-view SimCLR sample at {r['view_size']}x{r['view_size']}, one core ({r['samples']} slices)",
            f"  loader worker, device-side views (decode + draw + collate)  {ms['worker']:>7.3f} ms"
            f"  ({r['worker_vs_legacy']:.1f}x less than ctssl 0.1's path; {r['worker_samples_per_s_per_core']:.0f} samples/s/core)",
            f"  ctssl 0.1 per-sample CPU views (decode + 2 views)          {ms['legacy']:>7.3f} ms",
            f"  lightly SimCLRTransform on PIL (decode JPEG + 2 views)     {ms['lightly']:>7.3f} ms",
            f"  device-side rendering, when the device is this CPU         {ms['render']:>7.3f} ms"])
    if result["benchmark"] == "pretrain-batches":
        c = r["corpus"]
        lines = [f"batches of {r['batch']} from {c['series']} series x {c['slices_per_series']} slices "
                 f"({c['series_per_shard']} series per shard), {r['batches']} batches, {r['workers']} workers",
                 f"  {'':78} distinct series   same-series pairs   near pairs (<=2 apart)"]
        for name, row in r["rows"].items():
            lines.append(f"  {name:<78} {row['distinct_series']['mean']:>9.1f}  {row['same_series_pairs']['mean']:>15.1f}"
                         f"  {row['near_pairs']['mean']:>12.1f}")
        e = r["iid_expected"]
        lines.append(f"  {'i.i.d., closed form':<78} {e['distinct_series']:>9.1f}  {e['same_series_pairs']:>15.1f}"
                     f"  {e['near_pairs']:>12.1f}")
        return "\n".join(lines)
    lines = [f"SimCLR training step ({r['threads']} threads)"]
    for row in r["rows"]:
        lines.append(f"  {row['backbone']} {row['image_size']}x{row['image_size']} batch {row['batch']} on "
                     f"{row['device']}: {row['images_per_s']:.1f} images/s ({row['views_per_s']:.1f} views/s)")
    return "\n".join(lines)
