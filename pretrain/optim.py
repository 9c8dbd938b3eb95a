"""The optimizer and gradient clipping.

Group 0 holds the weights (weight decay, LARS adaptation), group 1 biases and norms (neither), as DINO's
``get_params_groups`` and lightly's benchmarks do; the schedule (pretrain.schedules) sets the learning
rate and weight decay every step.
"""

from __future__ import annotations

import torch
from lightly.models.utils import get_weight_decay_parameters


def build_optimizer(optim_cfg, model: torch.nn.Module, lr: float):
    params, no_decay = get_weight_decay_parameters([m for m in model.children()])
    groups = [{"params": [p for p in params if p.requires_grad], "weight_decay": optim_cfg.weight_decay},
              {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0}]
    if optim_cfg.name == "lars":
        from ctssl.pretrain.lars import LARS

        return LARS(groups, lr=lr, momentum=optim_cfg.momentum)
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def clip_per_parameter(model: torch.nn.Module, clip: float) -> None:
    """DINO's ``clip_gradients``: each parameter's gradient scaled to norm ``clip`` when above it."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            p.grad.mul_(torch.clamp(clip / (norm + 1e-6), max=1.0))


def gradient_norm(model: torch.nn.Module) -> torch.Tensor:
    """The global L2 norm of the gradients, as a device tensor (no host synchronisation)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def clip_and_measure(accelerator, model, unwrapped, optim_cfg) -> torch.Tensor:
    """Clip as configured (global norm or per parameter, after unscaling) and return the gradient norm
    before clipping (a device tensor)."""
    if optim_cfg.clip_grad > 0 and optim_cfg.clip_mode == "norm":
        return accelerator.clip_grad_norm_(model.parameters(), optim_cfg.clip_grad)
    accelerator.unscale_gradients()
    norm = gradient_norm(unwrapped)
    if optim_cfg.clip_grad > 0:
        clip_per_parameter(unwrapped, optim_cfg.clip_grad)
    return norm
