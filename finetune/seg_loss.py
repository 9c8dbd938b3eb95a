"""Segmentation losses on (B, C, H, W) logits and (B, H, W) integer targets (0 = background).

- ``weighted_cross_entropy``: per-pixel cross-entropy with class weights, PyTorch's weighted mean
  Σ_i w[y_i] ℓ_i / Σ_i w[y_i] (not divided by the pixel count). The RadNet-12M study trained its U-Net with
  weighted cross-entropy only, LiTS class weights 1/3/10 (background, liver, tumour: ``LITS_CLASS_WEIGHTS``);
  a Dice term was tried there and dropped.
- ``soft_dice_loss``: 1 - mean over classes of the soft Dice 2 Σ p g / (Σ p + Σ g) of softmax
  probabilities p and one-hot targets g, each sum over the whole batch and every pixel ("batch Dice", as
  nnU-Net's ``batch_dice``: Isensee et al., Nat. Methods 2021; Milletari et al., V-Net, 2016, for the soft
  Dice). Background left out by default (nnU-Net's ``do_bg=False``). A class absent from every target of
  the batch is left out of the mean: its Dice would be 0 whatever the prediction (nothing to overlap), a
  constant that only dilutes the others' gradients; its false positives are still penalised by the
  cross-entropy. No class present: the loss is 0 (with a graph, so backward works).
- ``ce_dice_loss``: their sum, ``ce + dice_weight * dice``, returned as ``(loss, logs)`` like ctssl's
  methods: the training loop calls backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LITS_CLASS_WEIGHTS = (1.0, 3.0, 10.0)   # RadNet-12M study, LiTS: background, liver, tumour


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}.")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target must be (B, H, W) = {(logits.shape[0], *logits.shape[2:])} for logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}.")
    if target.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}.")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(f"target classes must be in 0..{logits.shape[1] - 1} for {logits.shape[1]} logits, got "
                         f"{int(target.min())}..{int(target.max())}.")


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: torch.Tensor | list[float] | tuple[float, ...] | None = None) -> torch.Tensor:
    """Class-weighted cross-entropy: Σ_i w[y_i] (-log softmax(logits_i)[y_i]) / Σ_i w[y_i] over every pixel
    i of the batch; ``class_weights`` (C,) positive, None for 1 everywhere."""
    _check(logits, target)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.shape != (logits.shape[1],) or not bool((weight > 0).all()):
            raise ValueError(f"class_weights must be {logits.shape[1]} positive values (one per class), got "
                             f"{weight.tolist()}.")
    return F.cross_entropy(logits, target.long(), weight=weight)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """Batch soft Dice loss (module docstring): 1 - mean over the classes present in ``target`` of
    2 Σ p_c g_c / (Σ p_c + Σ g_c), sums over batch and pixels (b = batch, c = class, h, w = pixels)."""
    _check(logits, target)
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)                                     # (b, c, h, w)
    onehot = F.one_hot(target.long(), num_classes).movedim(-1, 1).float()     # (b, c, h, w)
    intersection = (probs * onehot).sum(dim=(0, 2, 3))                        # (c,)
    reference = onehot.sum(dim=(0, 2, 3))
    dice = 2 * intersection / (probs.sum(dim=(0, 2, 3)) + reference).clamp(min=1e-12)
    present = reference > 0
    if not include_background:
        present[0] = False
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1 - dice[present].mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor,
                 class_weights: torch.Tensor | list[float] | tuple[float, ...] | None = None,
                 dice_weight: float = 1.0, include_background: bool = False) -> tuple[torch.Tensor, dict]:
    """``weighted_cross_entropy + dice_weight * soft_dice_loss`` and its logs ``{"loss", "ce", "dice"}``
    (detached). ``dice_weight=0`` is the RadNet-12M study's loss (cross-entropy only)."""
    if not dice_weight >= 0:
        raise ValueError(f"dice_weight must be >= 0, got {dice_weight!r}.")
    ce = weighted_cross_entropy(logits, target, class_weights)
    dice = soft_dice_loss(logits, target, include_background)
    loss = ce + dice_weight * dice
    return loss, {"loss": loss.detach(), "ce": ce.detach(), "dice": dice.detach()}
