"""``ctssl bench segment``: what segmentation transfer costs against classification fine-tuning, in one run.

Per backbone (ResNet-18/50) and input size (128, 256 px), on synthetic tensors, batch ``batch``, the GPU with
bf16 autocast and channels_last when there is one:

- the U-Net training step of ``ctssl segment`` (finetune.segment: forward, CE + soft Dice, backward, AdamW),
  encoder fine-tuned and encoder frozen, and U-Net inference (class ids out);
- the baseline, measured in the same run on the same inputs: the classification fine-tuning step of
  ``ctssl finetune`` (the backbone, a linear head, cross-entropy, backward, AdamW). The ratio is U-Net / baseline
  images per second.

The data path: decoding a sample's CT slice (``.hu``) alone and with its mask (``.seg``), per slice, on the
benchmark shards' samples that carry a mask (``ctssl.bench.corpus``), CPU time of this process. Each figure is
the median of ``steps`` timed repeats after a warm-up.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from ctssl.bench.measure import median_rate
from ctssl.bench.settings import SegmentBench

BENCHMARK = "segment"        # its results: OUT/segment-bench.json


def _steps(name: str, size: int, batch: int, device: str, classes: int) -> dict:
    """images/s of each step kind for one backbone and size."""
    from ctssl.finetune.segment import SegmentConfig, predict_masks, segmentation_loss
    from ctssl.finetune.unet import build_unet, decoder_parameters
    from ctssl.pretrain.backbones import build_backbone

    backbone, dim = build_backbone(name, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, classes, (batch, size, size), generator=gen).to(device)
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
    if device == "cuda":
        x = x.to(memory_format=torch.channels_last)
    cfg = SegmentConfig()

    def step_of(model: nn.Module, params, loss_fn):
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = loss_fn(model(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
        return step

    def memory_format(model):
        return model.to(device, memory_format=torch.channels_last) if device == "cuda" else model.to(device)

    rates = {}
    classifier = memory_format(nn.Sequential(backbone, nn.Linear(dim, classes)))
    classifier.train()
    rates["classification_finetune"] = median_rate(
        step_of(classifier, classifier.parameters(), lambda logits: F.cross_entropy(logits.float(), labels)),
        batch, STEPS[0])
    del classifier
    for protocol in ("finetune", "frozen"):
        unet = memory_format(build_unet(backbone, name, classes))
        unet.freeze_encoder(protocol == "frozen")
        unet.train()
        params = decoder_parameters(unet) if protocol == "frozen" else [p for p in unet.parameters()]
        rates[f"unet_{protocol}"] = median_rate(
            step_of(unet, params, lambda logits: segmentation_loss(logits.float(), y, cfg)), batch, STEPS[0])
    rates["unet_inference"] = median_rate(lambda: predict_masks(unet, x, batch, device), batch, STEPS[0])
    return rates


STEPS = [3]       # timed repeats; set from the settings by measure()


def _data_path(cfg: SegmentBench) -> dict:
    """CPU seconds per slice to decode .hu alone and .hu + .seg, on the benchmark shards' masked samples."""
    from ctssl.bench.corpus import bench_shards
    from ctssl.shards.encoding import decode_hu
    from ctssl.shards.reader import decode_mask, iter_shard, shard_paths

    raws = []
    for path in shard_paths(bench_shards(cfg.out)):
        raws += [raw for raw in iter_shard(path, decode=False) if "seg" in raw]
        if len(raws) >= cfg.slices:
            break
    raws = raws[:cfg.slices]
    if not raws:
        return {"slices": 0}

    def timed(fn) -> float:
        best = []
        for _ in range(cfg.steps):
            start = time.process_time()
            for raw in raws:
                fn(raw)
            best.append((time.process_time() - start) / len(raws))
        return sorted(best)[len(best) // 2]

    timed(lambda raw: decode_hu(raw["hu"]))                       # warm-up
    hu = timed(lambda raw: decode_hu(raw["hu"]))
    both = timed(lambda raw: (decode_hu(raw["hu"]), decode_mask(raw)))
    return {"slices": len(raws), "hu_ms_per_slice": round(1e3 * hu, 4),
            "hu_and_mask_ms_per_slice": round(1e3 * both, 4),
            "mask_overhead": round(both / hu - 1, 3),
            "seg_bytes_per_slice": round(sum(len(r["seg"]) for r in raws) / len(raws)),
            "hu_bytes_per_slice": round(sum(len(r["hu"]) for r in raws) / len(raws))}


def measure(cfg: SegmentBench) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    STEPS[0] = cfg.steps
    rows = []
    for name in cfg.backbones:
        for size in cfg.sizes:
            rates = _steps(name, size, cfg.batch, device, cfg.classes)
            base = rates["classification_finetune"]
            rows.append({"backbone": name, "image_size": size, "batch": cfg.batch, "device": device,
                         **{f"{k}_images_per_s": round(v, 2) for k, v in rates.items()},
                         **{f"{k}_vs_classification": round(v / base, 3) for k, v in rates.items()
                            if k != "classification_finetune"}})
    return {"rows": rows, "data_path": _data_path(cfg), "threads": torch.get_num_threads()}


def format_table(result: dict) -> str:
    r = result["results"]
    lines = [f"Segmentation vs classification fine-tuning ({r['threads']} threads), images/s"]
    for row in r["rows"]:
        lines.append(f"  {row['backbone']} {row['image_size']}² batch {row['batch']} on {row['device']}: "
                     f"classification {row['classification_finetune_images_per_s']:.1f}; U-Net fine-tuned "
                     f"{row['unet_finetune_images_per_s']:.1f} ({row['unet_finetune_vs_classification']:.2f}x), "
                     f"frozen {row['unet_frozen_images_per_s']:.1f} ({row['unet_frozen_vs_classification']:.2f}x), "
                     f"inference {row['unet_inference_images_per_s']:.1f}")
    d = r["data_path"]
    if d.get("slices"):
        lines.append(f"  decode per slice ({d['slices']} masked slices): .hu {d['hu_ms_per_slice']:.3f} ms, .hu + .seg "
                     f"{d['hu_and_mask_ms_per_slice']:.3f} ms (+{100 * d['mask_overhead']:.1f}%); .seg "
                     f"{d['seg_bytes_per_slice']} B vs .hu {d['hu_bytes_per_slice']} B")
    return "\n".join(lines)


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    rows = [[f"U-Net fine-tuning step, {row['backbone']} {row['image_size']}², batch {row['batch']}, {row['device']}",
             f"{row['unet_finetune_images_per_s']:,.1f} images/s",
             f"classification fine-tuning step {row['classification_finetune_images_per_s']:,.1f} images/s",
             f"{row['unet_finetune_vs_classification']:.2f}x"] for row in r["rows"]]
    d = r["data_path"]
    if d.get("slices"):
        rows.append(["decode a slice with its mask", f"{d['hu_and_mask_ms_per_slice']:.3f} ms",
                     f"the slice alone {d['hu_ms_per_slice']:.3f} ms", f"{1 + d['mask_overhead']:.2f}x"])
    return rows
