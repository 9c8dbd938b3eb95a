"""``ctssl bench loader``: CPU time per two-view SimCLR sample at 224x224 on one core, through the real
loader (read the shard, check checksums, shuffle buffer, decode, batch) run in this process: the device-side
view path (the worker draws each view's augmentation and collates the int16 slices) against ctssl 0.1's
per-sample path through the same reading (crop, resize, flip, blur, noise and window every view on the CPU:
``LegacyCTViews``), and lightly's ``SimCLRTransform`` on PIL (decode a JPEG, transform); plus the device-side
rendering of the same batches when it runs on this CPU (on a GPU it leaves the CPU).

Each timing is the median of ``repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.bench.corpus import bench_shards
from ctssl.bench.measure import median_cpu_seconds
from ctssl.bench.settings import LoaderBench

BENCHMARK = "pretrain-loader"        # its results: OUT/pretrain-loader-bench.json


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


def measure(cfg: LoaderBench) -> dict:
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    from ctssl.data.windowing import to_uint8
    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.loader import make_loader
    from ctssl.pretrain.views import CTViewMaker, crop_specs
    from ctssl.shards.encoding import decode_hu
    from ctssl.shards.reader import iter_shard, shard_paths

    torch.set_num_threads(1)
    n, repeats = cfg.samples, cfg.repeats
    shards = bench_shards(Path(cfg.out))
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
    ms = {name: 1000 * median_cpu_seconds(fn, repeats) / samples
          for name, fn in (("worker", lambda: loader_pass("ct", maker)),
                           ("legacy", lambda: loader_pass("natural", legacy)),   # per-sample views, same reading
                           ("render", render_pass), ("lightly", lightly_pass))}
    return {"samples": samples, "view_size": 224, "threads": 1,
            "cpu_ms_per_sample": {k: round(v, 3) for k, v in ms.items()},
            "worker_vs_legacy": round(ms["legacy"] / ms["worker"], 1),
            "worker_samples_per_s_per_core": round(1000 / ms["worker"], 0),
            "legacy_vs_lightly": round(ms["lightly"] / ms["legacy"], 2)}


def format_table(result: dict) -> str:
    r = result["results"]
    ms = r["cpu_ms_per_sample"]
    return "\n".join([
        f"CPU time per two-view SimCLR sample at {r['view_size']}x{r['view_size']}, one core ({r['samples']} slices)",
        f"  loader worker, device-side views (decode + draw + collate)  {ms['worker']:>7.3f} ms"
        f"  ({r['worker_vs_legacy']:.1f}x less than ctssl 0.1's path; {r['worker_samples_per_s_per_core']:.0f} samples/s/core)",
        f"  ctssl 0.1 per-sample CPU views (decode + 2 views)          {ms['legacy']:>7.3f} ms",
        f"  lightly SimCLRTransform on PIL (decode JPEG + 2 views)     {ms['lightly']:>7.3f} ms",
        f"  device-side rendering, when the device is this CPU         {ms['render']:>7.3f} ms"])


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    ms = r["cpu_ms_per_sample"]
    return [["loader CPU per two-view CT sample 224², one core (device-side views)", f"{ms['worker']:.3f} ms",
             f"ctssl 0.1 per-sample views {ms['legacy']:.3f} ms", f"{r['worker_vs_legacy']:.1f}x less"],
            ["ctssl 0.1 per-sample CT views, one core", f"{ms['legacy']:.3f} ms",
             f"lightly SimCLRTransform on PIL {ms['lightly']:.3f} ms", f"{r['legacy_vs_lightly']:.1f}x less"],
            ["device-side view rendering on this CPU", f"{ms['render']:.3f} ms per sample", "", ""]]
