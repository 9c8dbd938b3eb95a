"""Segmentation transfer: a U-Net (finetune.unet) on a pretrained encoder, trained on 2-D slices and masks.

- Protocols: ``frozen`` (the encoder fixed, in eval mode, only the decoder trained: the RadNet-12M study's
  "linear" segmentation arm) and ``finetune`` (everything trained).
- Loss (finetune.seg_loss): class-weighted cross-entropy plus batch soft Dice (``loss: ce+dice``, nnU-Net's
  choice), or weighted cross-entropy alone (``loss: ce``, the RadNet-12M study's, with its LiTS class weights
  1/3/10 as ``class_weights``), or Dice alone.
- Image and mask augmented together: the same random resized crop (scale 0.7-1, aspect kept) and
  horizontal flip, the image resampled bilinearly and the mask by nearest neighbour, so class ids stay
  class ids.
- AdamW, linear warm-up then cosine; the encoder's BatchNorm statistics recomputed on shuffled training
  inputs before each validation when it is trained (finetune.finetune.recalibrate: short runs otherwise
  leave them behind the weights).
- Selection on validation: the mean over validation cases (series) of the per-case mean foreground Dice
  (eval.measures.segmentation: a case's slices stacked in order). The model of the best validation epoch
  and the final model are both returned; ``segment_grid`` trains every learning rate of the grid with the
  same budget and keeps the best on validation, as fine-tuning for classification does.

Inputs are prepared once (float16 images, uint8 masks held in memory): segmentation sets are the slices
of a few hundred annotated series.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctssl.finetune.finetune import inference_batches, recalibrate, training_batches
from ctssl.finetune.seg_loss import LITS_CLASS_WEIGHTS, ce_dice_loss, soft_dice_loss, weighted_cross_entropy
from ctssl.finetune.unet import build_unet, decoder_parameters

logger = logging.getLogger(__name__)

PROTOCOLS = ("frozen", "finetune")
LOSSES = ("ce+dice", "ce", "dice")


@dataclass
class SegmentConfig:
    protocols: list[str] = field(default_factory=lambda: ["frozen", "finetune"])
    epochs: int = 20
    batch_size: int = 16
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3])   # grid, chosen on validation per backbone
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    loss: str = "ce+dice"                  # ce+dice, ce (RadNet-12M), dice
    class_weights: list[float] = field(default_factory=list)   # [] = 1 for every class; [1, 3, 10]: LiTS
    dice_weight: float = 1.0
    augment: bool = True
    patience: int = 5                      # epochs without validation improvement before stopping
    recalibrate_bn: bool = True
    tolerance_mm: float = 2.0              # NSD tolerance
    noise_sigmas: list[float] = field(default_factory=list)   # test-time Gaussian noise (robustness sweep)


def validate_config(cfg: SegmentConfig, num_classes: int) -> None:
    problems = []
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad or not cfg.protocols:
        problems.append(f"protocols must be some of {list(PROTOCOLS)}, got {cfg.protocols}")
    if cfg.loss not in LOSSES:
        problems.append(f"loss must be one of {list(LOSSES)}, got {cfg.loss!r}")
    if cfg.class_weights and (len(cfg.class_weights) != num_classes or min(cfg.class_weights) <= 0):
        problems.append(f"class_weights must be {num_classes} positive values (one per class, background first) "
                        f"or empty, got {cfg.class_weights}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lrs or min(cfg.lrs) <= 0:
        problems.append("epochs and batch_size must be >= 1 and lrs positive")
    if problems:
        raise ValueError("Invalid segmentation settings: " + "; ".join(problems) + ".")


def augment_pair(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random resized crop (scale 0.7-1 of the area, aspect kept) and horizontal flip for images
    (B, C, H, W), bilinear, and masks (B, H, W), nearest neighbour."""
    n = x.shape[0]
    scale = (0.7 + 0.3 * torch.rand(n, generator=generator)).sqrt()            # side fraction
    centre = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    images = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="border", align_corners=False)
    return images, masks[:, 0].round().to(y.dtype)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: SegmentConfig) -> torch.Tensor:
    weights = cfg.class_weights or None
    if cfg.loss == "ce":
        return weighted_cross_entropy(logits, target, weights)
    if cfg.loss == "dice":
        return soft_dice_loss(logits, target)
    return ce_dice_loss(logits, target, weights, cfg.dice_weight)[0]


@torch.no_grad()
def predict_masks(model: nn.Module, x: torch.Tensor, batch: int = 32, device: str = "cpu",
                  noise: float = 0.0, generator: torch.Generator | None = None) -> np.ndarray:
    """Class ids (N, H, W) uint8, with test-time ``noise`` (finetune.finetune.inference_batches)."""
    model.eval()
    out = [model(inputs).argmax(1).to(torch.uint8).cpu()
           for inputs in inference_batches(x, batch, device, noise, generator)]
    return torch.cat(out).numpy() if out else np.zeros((0, *x.shape[-2:]), np.uint8)


def mean_case_dice(reference: np.ndarray, prediction: np.ndarray, cases: np.ndarray, num_classes: int) -> float:
    """The mean over cases of each case's mean foreground Dice (slices of a case stacked in their order;
    a case with no class present on either side counts as undefined and is left out)."""
    from ctssl.eval.measures.segmentation import dice

    values = []
    for case in dict.fromkeys(cases.tolist()):
        rows = cases == case
        per_class = [dice(reference[rows] == c, prediction[rows] == c) for c in range(1, num_classes)]
        per_class = [v for v in per_class if not math.isnan(v)]
        if per_class:
            values.append(float(np.mean(per_class)))
    return float(np.mean(values)) if values else float("nan")


def train_unet(backbone: nn.Module, name: str, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: np.ndarray, val_cases: np.ndarray, num_classes: int, protocol: str, cfg: SegmentConfig,
               seed: int, lr: float, device: str | None = None) -> dict:
    """One learning rate of one protocol: ``{"best_val": model, "final": model, "history", "best_epoch",
    "best_val_dice", "lr"}``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_unet(backbone, name, num_classes).to(device)
    frozen = protocol == "frozen"
    model.freeze_encoder(frozen)
    params = decoder_parameters(model) if frozen else [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    steps = len(training_batches(torch.arange(len(train_x)), cfg.batch_size))
    total, warmup = cfg.epochs * steps, max(1, int(cfg.warmup_epochs * steps))
    best, best_score, best_epoch, history, step, stale = None, -math.inf, -1, [], 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        running = 0.0
        for idx in training_batches(order, cfg.batch_size):
            x, y = train_x[idx].float(), train_y[idx].long()
            if cfg.augment:
                x, y = augment_pair(x, y, gen)
            factor = (step + 1) / warmup if step < warmup else \
                0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            loss = segmentation_loss(model(x.to(device)), y.to(device), cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(idx)
            step += 1
        if cfg.recalibrate_bn and not frozen:
            recalibrate(model, train_x, cfg.batch_size, device, gen)
        val = mean_case_dice(val_y, predict_masks(model, val_x, cfg.batch_size, device), val_cases, num_classes)
        history.append({"epoch": epoch + 1, "train_loss": round(running / len(train_x), 5),
                        "val_mean_dice": None if math.isnan(val) else round(val, 5)})
        logger.info("segment %s %s lr %g epoch %d/%d: loss %.4f, val mean Dice %.4f", name, protocol, lr, epoch + 1,
                    cfg.epochs, running / len(train_x), val)
        score = -1.0 if math.isnan(val) else val
        if best is None or score > best_score:
            best, best_score, best_epoch, stale = copy.deepcopy(model.state_dict()), score, epoch + 1, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                logger.info("early stop: no validation improvement for %d epochs", stale)
                break
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(best)
    return {"best_val": best_model, "final": model, "history": history, "best_epoch": best_epoch,
            "epochs_run": len(history), "best_val_dice": history[best_epoch - 1]["val_mean_dice"], "lr": lr}


def segment_grid(backbone: nn.Module, name: str, train_x, train_y, val_x, val_y, val_cases, num_classes: int,
                 protocol: str, cfg: SegmentConfig, seed: int, device: str | None = None) -> dict:
    """Every learning rate of ``cfg.lrs`` with the same budget; the best on validation, with the grid."""
    grid, best = [], None
    for lr in cfg.lrs:
        result = train_unet(backbone, name, train_x, train_y, val_x, val_y, val_cases, num_classes, protocol, cfg,
                            seed, lr, device)
        grid.append({"lr": lr, "val_mean_dice": result["best_val_dice"], "best_epoch": result["best_epoch"],
                     "epochs_run": result["epochs_run"]})
        if best is None or (result["best_val_dice"] or -1) > (best["best_val_dice"] or -1):
            best = result
    best["grid"] = grid
    return best


__all__ = ["LITS_CLASS_WEIGHTS", "PROTOCOLS", "SegmentConfig", "augment_pair", "mean_case_dice", "predict_masks",
           "segment_grid", "segmentation_loss", "train_unet", "validate_config"]
