"""Learning-rate and weight-decay schedules, set on the optimizer before every step.

- ``resolve_lr``: the peak learning rate, ``optim.lr`` or ``optim.base_lr`` scaled by the global batch
  (square root: SimCLR's rule; linear per 256: DINO's and the SimCLR paper's);
- ``lr_at``: linear warm-up then cosine to ``optim.min_lr`` (DINO's ``cosine_scheduler`` with
  ``min_lr``; SimCLR's warm-up and cosine decay);
- ``wd_at``: constant, or cosine from ``optim.weight_decay`` to ``optim.weight_decay_end`` (DINO 0.04 -> 0.4);
- ``warmup_problem``: a warm-up as long as the run or longer never reaches the peak learning rate.
"""

from __future__ import annotations

import math


def resolve_lr(optim_cfg, global_batch: int) -> float:
    """The peak learning rate: ``optim.lr``, or ``optim.base_lr`` scaled by the global batch."""
    if optim_cfg.lr > 0:
        return optim_cfg.lr
    if optim_cfg.lr_scaling == "sqrt":
        return optim_cfg.base_lr * math.sqrt(global_batch)
    if optim_cfg.lr_scaling == "linear":
        return optim_cfg.base_lr * global_batch / 256
    return optim_cfg.base_lr


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up from ``peak / warmup`` to ``peak`` over ``warmup`` steps, then cosine to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def wd_at(step: int, total: int, start: float, end: float | None) -> float:
    """Weight decay: constant, or cosine from ``start`` to ``end`` over training."""
    if end is None:
        return start
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total - 1))))


def warmup_steps(warmup_epochs: float, per_epoch: int) -> int:
    return max(1, int(round(warmup_epochs * per_epoch)))


def warmup_problem(warmup: int, total: int, warmup_epochs: float, per_epoch: int) -> str | None:
    """A sentence when the warm-up does not end before the run does, else None."""
    if warmup < total or warmup_epochs == 0:
        return None
    return (f"the learning-rate warm-up ({warmup_epochs:g} epochs = {warmup} steps of {per_epoch}) is as long as "
            f"the run ({total} steps) or longer: the learning rate never reaches its peak. Set "
            f"optim.warmup_epochs below {total / per_epoch:.3g}, or train longer.")


def set_schedule(optimizer, optim_cfg, step: int, total: int, warmup: int, peak: float) -> None:
    """This step's learning rate on every group, its weight decay on the weights' group (group 0)."""
    lr = lr_at(step, total, warmup, peak, optim_cfg.min_lr)
    wd = wd_at(step, total, optim_cfg.weight_decay, optim_cfg.weight_decay_end)
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if i == 0:
            group["weight_decay"] = wd
