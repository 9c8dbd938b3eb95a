"""Fine-tuning: the whole network, or a truncated one (TruncatedTL), on a labelled dataset.

- Any backbone of the registry (``pretrain.backbones``) fine-tunes whole; truncation needs a ResNet or a ViT,
  layer-wise decay the stages its registry entry names (one-line refusals otherwise).
- ``truncate = k > 0`` keeps the stem and the first ``k`` stages of a ResNet (of 4) and puts a new linear
  head on the truncated network's *unpooled* feature map (flattened), as TruncatedTL does (Peng, Liang,
  Luo, Li, Sun, "Rethink Transfer Learning in Medical Image Classification", BMVC 2023, arXiv 2106.05152;
  their code: ``nn.Sequential(*list(resnet.children())[:4 + k])`` then ``Flatten`` + ``Linear``);
  ``truncate_pool`` puts global average pooling first (the paper's pooled variant). For a ViT, the first
  ``k`` blocks and the usual head on the class token. ``0`` keeps everything (pooled features, linear head).
- Layer-wise learning-rate decay (``llrd < 1``): the head trains at ``lr``, the last kept stage at
  ``lr * llrd``, the one before at ``lr * llrd^2``, ..., the stem lowest (BEiT/DINOv2 style).
- AdamW, linear warm-up then cosine, class-weighted cross-entropy (multi-label: per-label logistic
  loss), light augmentation on the prepared inputs (random resized crop of scale 0.7-1, flips).
- Before each evaluation, BatchNorm running statistics are recomputed with the current weights on the
  (unaugmented) training inputs, in batches drawn in a *shuffled* order (``recalibrate``): in short runs the
  running averages lag behind fast-moving weights (an eval-mode network can collapse to one class), and
  batches that follow series order hold near-identical slices, whose per-batch variance is far below the
  data's (measured on the synthetic corpus: first-layer variance 0.59x, 16% of predictions flipped).
- Early stopping on the validation metric (``patience`` epochs without improvement); the model
  of the best validation epoch and the final model are both evaluated on the test split and
  both reported (two run records, variants ``best_val`` and ``final``).
- Every backbone gets the same budget and its own tuning: ``finetune_grid`` trains
  each point of the ``lrs`` x ``weight_decays`` grid with the same epochs and picks the one with the best
  validation metric; the whole grid goes into the run record.

Inputs are prepared once (``eval.inputs``) and held in memory as float16: fine-tuning sets are
the labelled subsets of a corpus, thousands to a few hundred thousand slices.
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

from ctssl.core.progress import Progress
from ctssl.eval.measures.classification import score, selection_metric
from ctssl.pretrain.backbones import architecture_of

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    epochs: int = 20
    batch_size: int = 32
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3])   # head lr grid (AdamW)
    weight_decays: list[float] = field(default_factory=lambda: [0.05])
    llrd: float = 1.0              # layer-wise decay; 1 = one learning rate everywhere
    truncate: int = 0              # keep the first k stages / blocks; 0 = the full network
    truncate_pool: bool = False    # truncated ResNet: pool the map before the head (TruncatedTL's variant)
    warmup_epochs: float = 1.0
    patience: int = 5              # epochs without validation improvement before stopping
    augment: bool = True
    balanced: bool = True
    select: str = "auto"           # as ctssl probe
    recalibrate_bn: bool = True    # BatchNorm statistics recomputed on shuffled training inputs before evaluating
    save_model: bool = False       # export the best-validation backbone (full networks only)
    noise_sigmas: list[float] = field(default_factory=list)   # test-time Gaussian noise on the final model's
                                   # (normalised) inputs: the RadNet-12M study's robustness sweep


class Classifier(nn.Module):
    """``groups``: parameter groups from input to output (stem, stages..., head) for LLRD. ``input_size``
    (and ``in_chans``) size the head of a truncated ResNet, which sees the whole unpooled map."""

    def __init__(self, backbone: nn.Module, name: str, truncate: int, num_outputs: int, input_size: int = 224,
                 pool: bool = False, in_chans: int | None = None):
        super().__init__()
        # The whole backbone (sharing its parameters with ``features``), for export when untruncated;
        # not a submodule, so its parameters are not registered twice.
        object.__setattr__(self, "backbone", backbone if not truncate else None)
        arch = architecture_of(backbone)
        if arch.kind == "resnet":
            stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
            keep = truncate or 4
            if not 1 <= keep <= 4:
                raise ValueError(f"truncate must be 0..4 for a ResNet, got {truncate}.")
            stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
            if truncate and not pool:      # TruncatedTL: the head sees the whole map
                self.features = nn.Sequential(stem, *stages[:keep], nn.Flatten())
                channels = in_chans or backbone.conv1.in_channels
                with torch.no_grad():
                    was = self.features.training
                    self.features.eval()
                    dim = int(self.features(torch.zeros(1, channels, input_size, input_size)).shape[1])
                    self.features.train(was)
            else:
                self.features = nn.Sequential(stem, *stages[:keep], nn.AdaptiveAvgPool2d(1), nn.Flatten())
                dim = _last_channels(stages[keep - 1])
            self.groups = [stem, *stages[:keep]]
        elif arch.kind == "vit":
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
        else:                              # any other architecture: the whole network, pooled features
            if truncate:
                raise ValueError(f"Truncated fine-tuning keeps stages of a ResNet or blocks of a ViT; backbone "
                                 f"'{name}' is neither (set truncate 0).")
            self.features = backbone
            stages = arch.stages(backbone)
            self.groups = stages if stages is not None else [backbone]
            self.llrd_layers = stages is not None
            dim = _feature_dim(backbone, in_chans or arch.in_chans(backbone))
        self.head = nn.Linear(dim, num_outputs)

    @property
    def export_backbone(self) -> nn.Module | None:
        """The fine-tuned backbone (full networks only), for ``pretrain.checkpoint.export_backbone``."""
        return self.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self, lr: float, llrd: float, weight_decay: float) -> list[dict]:
        """One AdamW group per depth (and no decay on norms and biases)."""
        if llrd != 1 and not getattr(self, "llrd_layers", True):
            raise ValueError("Layer-wise lr decay (llrd < 1) needs the backbone's stages, which its registry entry "
                             "does not name; set llrd 1.")
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


@torch.no_grad()
def _feature_dim(backbone: nn.Module, in_chans: int) -> int:
    """The pooled feature width of ``backbone``, from one small forward in eval mode."""
    was = backbone.training
    backbone.eval()
    dim = int(backbone(torch.zeros(1, in_chans, 64, 64)).shape[1])
    backbone.train(was)
    return dim


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
def training_batches(order: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """``order`` (a permutation of the training indices) cut into batches of ``batch``, a last batch of one
    sample joined to the one before: BatchNorm in training mode cannot normalise one sample where a feature
    map is 1 x 1 (a ResNet at 32 px, a U-Net's bottleneck), and dropping it would leave that sample out of the
    epoch."""
    starts = list(range(0, len(order), batch))
    if len(starts) > 1 and len(order) - starts[-1] == 1:
        starts.pop()
    return [order[s:e] for s, e in zip(starts, starts[1:] + [len(order)])]


def recalibrate(model: nn.Module, x: torch.Tensor, batch: int, device: str,
                generator: torch.Generator | None = None) -> None:
    """BatchNorm running statistics recomputed over ``x`` in batches of a shuffled order (``update_bn``'s
    cumulative average over batches): each batch a random sample of the training inputs, whatever their
    order (slices of a series are stored together, and a batch of neighbours has too little variance)."""
    from torch.optim.swa_utils import update_bn

    order = torch.randperm(len(x), generator=generator)
    update_bn(((x[idx].float().to(device),) for idx in training_batches(order, batch)), model)


def inference_batches(x: torch.Tensor, batch: int, device: str, noise: float = 0.0,
                 generator: torch.Generator | None = None):
    """``x`` in float batches on ``device``; ``noise``: Gaussian noise of that standard deviation added to the
    (normalised) inputs first, drawn on the CPU from ``generator`` so that it is the same on every device (the
    RadNet-12M study's test-time robustness sweep)."""
    for start in range(0, len(x), batch):
        inputs = x[start:start + batch].float()
        if noise:
            inputs = inputs + noise * torch.randn(inputs.shape, generator=generator)
        yield inputs.to(device)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 128, device: str = "cpu",
            noise: float = 0.0, generator: torch.Generator | None = None) -> np.ndarray:
    """Logits of ``x`` (per-label logits for a multi-label task), with test-time ``noise``
    (``inference_batches``): scores on a log scale, which keep the order a softmax loses once it saturates
    (``eval.measures.classification``)."""
    model.eval()
    out = []
    for inputs in inference_batches(x, batch, device, noise, generator):
        out.append(model(inputs).float().cpu())
    return torch.cat(out).numpy()


def finetune(backbone: nn.Module, name: str, train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor,
             val_y: np.ndarray, num_outputs: int, cfg: FinetuneConfig, seed: int, multilabel: bool = False,
             device: str | None = None, lr: float | None = None, weight_decay: float | None = None,
             desc: str = "finetune") -> dict:
    """Train one (lr, weight decay) point (default: the grid's first); returns ``{"best_val": model,
    "final": model, "history": [...], "best_epoch": e, "best_val_score": s}``. Progress and epoch lines start
    with ``desc`` (which backbone, fraction, seed) and name the learning rate."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lr = cfg.lrs[0] if lr is None else lr
    weight_decay = cfg.weight_decays[0] if weight_decay is None else weight_decay
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), name, cfg.truncate, num_outputs, train_x.shape[-1],
                       cfg.truncate_pool, train_x.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(lr, cfg.llrd, weight_decay))
    y = torch.from_numpy(np.asarray(train_y))
    if multilabel:
        pos = y.float().mean(0).clamp(1e-3, 1 - 1e-3)
        pos_weight, class_weight = (((1 - pos) / pos).to(device) if cfg.balanced else None), None
    else:
        counts = torch.bincount(y, minlength=num_outputs).float()
        class_weight = (counts.sum() / (num_outputs * counts.clamp(min=1))).to(device) if cfg.balanced else None
        pos_weight = None
    steps_per_epoch = len(training_batches(torch.arange(len(train_x)), cfg.batch_size))
    total, warmup = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))
    metric = selection_metric(cfg, multilabel, num_outputs)
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(f"fine-tuning needs training and validation samples, got {len(train_x)} and {len(val_x)}")
    best, best_epoch, history, step, stale = None, -1, [], 0, 0
    desc = f"{desc}, lr {lr:g}, wd {weight_decay:g}"
    progress = Progress(total, desc, unit="step", log=logger)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        running = 0.0
        for idx in training_batches(order, cfg.batch_size):
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
            progress.update(1)
        if cfg.recalibrate_bn:
            recalibrate(model, train_x, cfg.batch_size, device, gen)
        val = score(metric, val_y, predict(model, val_x, device=device), multilabel)
        if not np.isfinite(val):
            progress.bar.close()
            raise ValueError(f"validation {metric} is undefined ({len(val_y)} validation samples, classes present: "
                             f"{np.unique(val_y, axis=0).tolist()[:10]}): nothing to choose the epoch by")
        history.append({"epoch": epoch + 1, "train_loss": round(running / len(train_x), 5), f"val_{metric}": round(val, 5)})
        logger.info("%s: epoch %d/%d, loss %.4f, val %s %.4f (%s)", desc, epoch + 1, cfg.epochs,
                    running / len(train_x), metric, val, progress.line().split(": ", 1)[1])
        if best is None or val > history[best_epoch - 1][f"val_{metric}"]:
            best, best_epoch, stale = copy.deepcopy(model.state_dict()), epoch + 1, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                logger.info("%s: early stop, no validation improvement for %d epochs", desc, stale)
                break
    progress.close()
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(best)
    return {"best_val": best_model, "final": model, "history": history, "best_epoch": best_epoch,
            "epochs_run": len(history), "select": metric,
            "best_val_score": history[best_epoch - 1][f"val_{metric}"], "lr": lr, "weight_decay": weight_decay}


def finetune_grid(backbone: nn.Module, name: str, train_x, train_y, val_x, val_y, num_outputs: int,
                  cfg: FinetuneConfig, seed: int, multilabel: bool = False, device: str | None = None,
                  desc: str = "finetune") -> dict:
    """Every (lr, weight decay) of the grid with the same budget (``cfg.epochs``, early stopping on the
    same patience); the point with the best validation metric is returned, with the whole grid."""
    results, best = [], None
    points = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    for i, (lr, wd) in enumerate(points):
        logger.info("%s: grid point %d/%d, lr %g, weight decay %g", desc, i + 1, len(points), lr, wd)
        result = finetune(backbone, name, train_x, train_y, val_x, val_y, num_outputs, cfg, seed, multilabel,
                          device, lr, wd, desc=f"{desc} ({i + 1}/{len(points)})")
        results.append({"lr": lr, "weight_decay": wd, f"val_{result['select']}": round(result["best_val_score"], 5),
                        "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"]})
        if best is None or result["best_val_score"] > best["best_val_score"]:
            best = result
        else:
            del result
    best["grid"] = results
    return best
