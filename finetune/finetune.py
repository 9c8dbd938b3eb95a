"""Fine-tuning: the whole network, or a truncated one (TruncatedTL), on a labelled dataset.

- ``truncate = k > 0`` keeps the stem and the first ``k`` stages of a ResNet (of 4), or the first
  ``k`` transformer blocks of a ViT, then global pooling and a new linear head (Rahman et al.,
  "TruncatedTL"): the later, most source-specific stages are dropped; ``0`` keeps everything.
- Layer-wise learning-rate decay (``llrd < 1``): the head trains at ``lr``, the last kept stage at
  ``lr * llrd``, the one before at ``lr * llrd^2``, ..., the stem lowest (BEiT/DINOv2 style).
- AdamW, linear warm-up then cosine, class-weighted cross-entropy (multi-label: per-label logistic
  loss), light augmentation on the prepared inputs (random resized crop of scale 0.7-1, flips).
- Before each evaluation, BatchNorm running statistics are recomputed on the (unaugmented) training
  inputs with the final weights (``torch.optim.swa_utils.update_bn``): in short fine-tuning runs
  the running averages lag behind fast-moving weights and an eval-mode network can collapse to
  one class although its training loss is low.
- Early stopping on the validation metric (``patience`` epochs without improvement); the model
  of the best validation epoch and the final model are both evaluated on the test split and
  both reported (two run records, variants ``best_val`` and ``final``).

Inputs are prepared once (``eval.inputs``) and held in memory as float16: fine-tuning sets are
the labelled subsets of a corpus, thousands to a few hundred thousand slices.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctssl.eval.probe import score, selection_metric

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3               # head; backbone groups get lr * llrd^depth
    weight_decay: float = 0.05
    llrd: float = 1.0              # layer-wise decay; 1 = one learning rate everywhere
    truncate: int = 0              # keep the first k stages / blocks; 0 = the full network
    warmup_epochs: float = 1.0
    patience: int = 5              # epochs without validation improvement before stopping
    augment: bool = True
    balanced: bool = True
    select: str = "auto"           # as ctssl probe
    recalibrate_bn: bool = True    # BatchNorm statistics recomputed on the training inputs before evaluating
    save_model: bool = False       # export the best-validation backbone (full networks only)


class Classifier(nn.Module):
    """``groups``: parameter groups from input to output (stem, stages..., head) for LLRD."""

    def __init__(self, backbone: nn.Module, name: str, truncate: int, num_outputs: int):
        super().__init__()
        # The whole backbone (sharing its parameters with ``features``), for export when untruncated;
        # not a submodule, so its parameters are not registered twice.
        object.__setattr__(self, "backbone", backbone if not truncate else None)
        if name.startswith("resnet"):
            stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
            keep = truncate or 4
            if not 1 <= keep <= 4:
                raise ValueError(f"truncate must be 0..4 for a ResNet, got {truncate}.")
            stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
            self.features = nn.Sequential(stem, *stages[:keep], nn.AdaptiveAvgPool2d(1), nn.Flatten())
            dim = _last_channels(stages[keep - 1])
            self.groups = [stem, *stages[:keep]]
        elif name.startswith("vit"):
            depth = len(backbone.blocks)
            keep = truncate or depth
            if not 1 <= keep <= depth:
                raise ValueError(f"truncate must be 0..{depth} for this ViT, got {truncate}.")
            backbone.blocks = backbone.blocks[:keep]
            self.features = backbone
            dim = backbone.num_features
            self.groups = [backbone.patch_embed, *backbone.blocks]
            self._vit_extra = [p for n, p in backbone.named_parameters()
                               if n.startswith(("cls_token", "pos_embed", "reg_token"))]
        else:
            raise ValueError(f"Fine-tuning supports resnet* and vit* backbones, not '{name}'.")
        self.head = nn.Linear(dim, num_outputs)

    @property
    def export_backbone(self) -> nn.Module | None:
        """The fine-tuned backbone (full networks only), for ``pretrain.checkpoint.export_backbone``."""
        return self.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self, lr: float, llrd: float, weight_decay: float) -> list[dict]:
        """One AdamW group per depth (and no decay on norms and biases)."""
        depth_of = {}
        for depth, module in enumerate(self.groups):
            for p in module.parameters():
                depth_of[id(p)] = depth
        for p in getattr(self, "_vit_extra", []):
            depth_of[id(p)] = 0
        top = len(self.groups)
        groups: dict[tuple, dict] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            depth = top if name.startswith("head.") else depth_of.get(id(p), top - 1)
            scale = llrd ** (top - depth)
            decay = 0.0 if p.ndim <= 1 else weight_decay
            group = groups.setdefault((depth, decay), {"params": [], "lr": lr * scale, "base_lr": lr * scale,
                                                       "weight_decay": decay, "depth": depth})
            group["params"].append(p)
        return list(groups.values())


def _last_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage: those of its last convolution."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (scale 0.7-1, same aspect) and horizontal flip, per sample."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    scales = 0.7 + 0.3 * torch.rand(n, generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    for i in range(n):
        ch, cw = max(1, int(h * scales[i].sqrt())), max(1, int(w * scales[i].sqrt()))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if flips[i] else crop[0]
    return out


def _loss(logits, y, multilabel: bool, class_weight, pos_weight):
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=pos_weight)
    return F.cross_entropy(logits, y, weight=class_weight)


@torch.no_grad()
def recalibrate(model: nn.Module, x: torch.Tensor, batch: int, device: str) -> None:
    from torch.optim.swa_utils import update_bn

    update_bn(((x[i:i + batch].float().to(device),) for i in range(0, len(x), batch)), model)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, multilabel: bool, batch: int = 128, device: str = "cpu") -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        logits = model(x[start:start + batch].to(device).float())
        out.append((logits.sigmoid() if multilabel else logits.softmax(-1)).float().cpu())
    return torch.cat(out).numpy()


def finetune(backbone: nn.Module, name: str, train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor,
             val_y: np.ndarray, num_outputs: int, cfg: FinetuneConfig, seed: int, multilabel: bool = False,
             device: str | None = None) -> dict:
    """Train; returns ``{"best_val": model, "final": model, "history": [...], "best_epoch": e}``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), name, cfg.truncate, num_outputs).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.llrd, cfg.weight_decay))
    y = torch.from_numpy(np.asarray(train_y))
    if multilabel:
        pos = y.float().mean(0).clamp(1e-3, 1 - 1e-3)
        pos_weight, class_weight = (((1 - pos) / pos).to(device) if cfg.balanced else None), None
    else:
        counts = torch.bincount(y, minlength=num_outputs).float()
        class_weight = (counts.sum() / (num_outputs * counts.clamp(min=1))).to(device) if cfg.balanced else None
        pos_weight = None
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))
    metric = selection_metric(cfg, multilabel)
    best, best_epoch, history, step, stale = None, -1, [], 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        running = 0.0
        for start in range(0, len(train_x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x = train_x[idx].float()
            if cfg.augment:
                x = augment(x, gen)
            factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                                  max(1, total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss = _loss(model(x.to(device)), y[idx].to(device), multilabel, class_weight, pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(idx)
            step += 1
        if cfg.recalibrate_bn:
            recalibrate(model, train_x, cfg.batch_size, device)
        val = score(metric, val_y, predict(model, val_x, multilabel, device=device), multilabel)
        history.append({"epoch": epoch + 1, "train_loss": round(running / len(train_x), 5), f"val_{metric}": round(val, 5)})
        logger.info("finetune epoch %d/%d: loss %.4f, val %s %.4f", epoch + 1, cfg.epochs, running / len(train_x),
                    metric, val)
        if best is None or val > history[best_epoch - 1][f"val_{metric}"]:
            best, best_epoch, stale = copy.deepcopy(model.state_dict()), epoch + 1, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                logger.info("early stop: no validation improvement for %d epochs", stale)
                break
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(best)
    return {"best_val": best_model, "final": model, "history": history, "best_epoch": best_epoch,
            "epochs_run": len(history), "select": metric}
