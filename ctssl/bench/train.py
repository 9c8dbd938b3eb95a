"""``ctssl bench train``: SimCLR training steps of a ResNet-18 (images/s), on the GPU with bf16 and
channels_last when there is one. Each figure is the median of the timed steps after a warm-up step."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ctssl.bench.measure import median_rate
from ctssl.bench.settings import TrainBench

BENCHMARK = "pretrain-train"        # its results: OUT/pretrain-train-bench.json


def measure(cfg: TrainBench) -> dict:
    from ctssl.pretrain.backbones import build_backbone
    from ctssl.pretrain.config import SimCLRConfig
    from ctssl.pretrain.methods.simclr import SimCLR

    batch, sizes, steps = cfg.batch, cfg.sizes, cfg.steps
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

        rate = median_rate(step, batch, steps)
        rows.append({"backbone": "resnet18", "method": "simclr", "image_size": size, "batch": batch,
                     "device": device, "images_per_s": round(rate, 1), "views_per_s": round(2 * rate, 1)})
    return {"rows": rows, "threads": torch.get_num_threads()}


def format_table(result: dict) -> str:
    r = result["results"]
    lines = [f"SimCLR training step ({r['threads']} threads)"]
    for row in r["rows"]:
        lines.append(f"  {row['backbone']} {row['image_size']}x{row['image_size']} batch {row['batch']} on "
                     f"{row['device']}: {row['images_per_s']:.1f} images/s ({row['views_per_s']:.1f} views/s)")
    return "\n".join(lines)


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    return [[f"SimCLR ResNet-18 step {row['image_size']}², batch {row['batch']}, {row['device']}",
             f"{row['images_per_s']:,.1f} images/s", "", ""] for row in r["rows"]]
