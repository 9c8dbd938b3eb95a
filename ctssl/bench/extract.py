"""``ctssl bench extract``: frozen-feature extraction images/s through ``eval.features.extract_units``
(ResNet-18 and ResNet-50 at 64 and 224 px, CT slices prepared as the evaluation stages prepare them): every
image decoded and prepared in the main process (the previous, single-process path) against whole batches
prepared in the main process and against 2 DataLoader workers preparing them while the main process runs the
model, in the same run; on the GPU too when there is one.

Each figure is the median of ``repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctssl.bench.corpus import bench_shards
from ctssl.bench.measure import median_rate
from ctssl.bench.settings import ExtractBench

BENCHMARK = "eval-extract"        # its results: OUT/eval-extract-bench.json


def _extract_previous(model, data, split, spec, out, batch, device) -> None:
    """ctssl 0.2's extraction before the loader workers (kept as the benchmark's baseline only): the images
    streamed and prepared one at a time in the main process, stacked, fp32."""
    from ctssl.eval.inputs.spec import prepare

    pending, row = [], 0
    with torch.inference_mode():
        for image in data.iter_images(split):
            pending.append(prepare(image, spec))
            if len(pending) == batch:
                out[row:row + batch] = model(torch.stack(pending).to(device)).float().cpu().numpy()
                row, pending = row + batch, []
        if pending:
            out[row:] = model(torch.stack(pending).to(device)).float().cpu().numpy()


def measure(cfg: ExtractBench) -> dict:
    """Extraction images/s on the benchmark's CT shards (8 shards): the previous path (every image prepared
    one at a time in the main process) against ``extract_units`` with no workers (batched preparation in
    the main process) and with ``workers`` DataLoader workers preparing batches while the main process runs
    the model, in the same run; ResNet-18 and ResNet-50, and the data side alone (a pooling layer for a
    model: the ceiling a GPU would be fed at); on the GPU too when there is one."""
    from ctssl.eval.inputs.datasets import open_dataset
    from ctssl.eval.features.extract import default_batch, extract_units
    from ctssl.eval.inputs.spec import input_spec
    from ctssl.pretrain.sources import load_backbone

    sizes, workers, repeats = cfg.sizes, cfg.workers, cfg.repeats
    data = open_dataset(str(bench_shards(Path(cfg.out))), "region")
    split = "train"
    n = len(data.entries(split))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cases = [("none (data only)", pool, "cpu")] + [
        (name, load_backbone(f"random:{name}:3")[0], device) for name in ("resnet18", "resnet50") for device in devices]
    card = load_backbone("random:resnet18:3")[1]
    rows = []
    for name, model, device in cases:
        model = model.to(device).eval()
        for size in sizes:
            spec = input_spec(card, "ct", size)
            with torch.inference_mode():
                dim = int(model(torch.zeros(1, 3, size, size, device=device)).shape[1])
            batch = default_batch(device)
            target = np.zeros((n, dim), np.float32)
            previous = median_rate(lambda: _extract_previous(model, data, split, spec, target, batch, device),
                                    n, repeats)
            reference = target.copy()
            rates = {}
            for w in (0, workers):
                target[:] = 0
                rates[w] = median_rate(lambda w=w: extract_units(model, data, split, spec, target, batch=batch,
                                                                  device=device, workers=w), n, repeats)
            rows.append({"backbone": name, "device": device, "image_size": size, "images": n, "batch": batch,
                         "images_per_s_previous": round(previous, 1),
                         "images_per_s_main_process": round(rates[0], 1),
                         "images_per_s_workers": round(rates[workers], 1),
                         "workers_vs_previous": round(rates[workers] / previous, 2),
                         "workers_vs_main_process": round(rates[workers] / rates[0], 2),
                         "max_abs_diff_vs_previous": float(np.abs(target - reference).max())})
    return {"rows": rows, "workers": workers, "threads": torch.get_num_threads(), "shards": len(data.units[split])}


def format_table(result: dict) -> str:
    r = result["results"]
    lines = [f"feature extraction ({r['threads']} threads, {r['shards']} shards): previous path (one image at a time) -> "
             f"batched in the main process -> {r['workers']} loader workers"]
    for row in r["rows"]:
        lines.append(f"  {row['backbone']} {row['image_size']}x{row['image_size']} on {row['device']} (batch {row['batch']}): "
                     f"{row['images_per_s_previous']:.1f} -> {row['images_per_s_main_process']:.1f} -> "
                     f"{row['images_per_s_workers']:.1f} images/s ({row['workers_vs_previous']:.2f}x the previous path; "
                     f"features differ by at most {row['max_abs_diff_vs_previous']:.1e})")
    return "\n".join(lines)


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: per backbone and size, batched preparation in the main
    process (the CPU default) and ``workers`` loader workers (the GPU default), each against the previous
    one-image-at-a-time path."""
    rows = []
    for row in r["rows"]:
        what = f"feature extraction {row['backbone']} {row['image_size']}², {row['device']}"
        previous = f"previous path (one image at a time, main process) {row['images_per_s_previous']:,.1f}/s"
        for how, rate in (("batched, main process", row["images_per_s_main_process"]),
                          (f"{r['workers']} loader workers", row["images_per_s_workers"])):
            rows.append([f"{what}, {how}", f"{rate:,.1f} images/s (12M slices: {12e6 / rate / 3600:,.0f} h)",
                         previous, f"{rate / row['images_per_s_previous']:.2f}x"])
    return rows
