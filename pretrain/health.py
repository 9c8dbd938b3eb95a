"""Non-finite training state, found without a host synchronisation per step.

Every step, on the device: whether the loss, the gradient norm or any BatchNorm running statistic is
NaN or infinite is or-ed into a flag, and the first step where it happened is kept. The loop reads the
flag (one synchronisation, agreed over every process) at its logging steps and before it writes any
checkpoint or export; parameters are checked there too. A run that went non-finite stops with
``NonFiniteError`` naming the step and what went wrong; the last checkpoint written before it is the
last good state, and nothing non-finite is ever saved or exported.
"""

from __future__ import annotations

import torch
from torch import nn

from ctssl.pretrain.step import batchnorm_buffers

WHAT = ("the loss", "the gradients", "BatchNorm running statistics", "the weights")
NONE = 2 ** 62


class NonFiniteError(RuntimeError):
    """Training produced NaN or infinite values; the message says when and what, and what to do."""


def _all_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(torch.stack(torch._foreach_norm([t.float() for t in tensors]))).all()


class Health:
    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model
        self.buffers = [b for b in batchnorm_buffers(model) if b.is_floating_point()]
        self.device = device
        self.flags = torch.zeros(len(WHAT), dtype=torch.int64, device=device)   # one per entry of WHAT
        self.first = torch.full((), NONE, dtype=torch.int64, device=device)

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, scaled: bool = False) -> None:
        """Record this step's state (device operations only). ``scaled``: fp16 with a loss scaler, whose
        overflowing steps have infinite gradients by design (it skips them and lowers the scale), so the
        gradient norm is not a sign of divergence there."""
        grads_ok = torch.ones((), dtype=torch.bool, device=self.device) if scaled else \
            torch.isfinite(grad_norm.detach().float())
        finite = torch.stack([torch.isfinite(loss.detach().float()), grads_ok, _all_finite(self.buffers, self.device),
                              torch.ones((), dtype=torch.bool, device=self.device)])
        self._add(~finite, step)

    def _add(self, bad: torch.Tensor, step: int) -> None:
        self.first = torch.where(bad.any() & (self.first == NONE), torch.full_like(self.first, step), self.first)
        self.flags = torch.maximum(self.flags, bad.long())

    def check(self, accelerator, step: int, weights: bool = False, saved_at: int = -1) -> None:
        """Raise NonFiniteError on every process when any process saw a non-finite value (one host sync);
        ``saved_at``: the step of the last checkpoint written (-1: none), for the message."""
        if weights:
            params = [p.detach() for p in self.model.parameters()]
            bad = torch.zeros(len(WHAT), dtype=torch.bool, device=self.device)
            bad[3] = ~_all_finite(params, self.device)
            self._add(bad, step)
        both = torch.cat([self.flags, (NONE - self.first).view(1)])     # max of (NONE - first): the earliest
        both = accelerator.reduce(both, "max") if accelerator.num_processes > 1 else both
        flags, first = both[:-1].tolist(), NONE - int(both[-1])
        if not any(flags):
            return
        names = [text for text, bad in zip(WHAT, flags) if bad]
        what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        at = f"at step {first + 1}" if first != NONE else f"by step {step}"
        kept = (f"the checkpoint of step {saved_at} holds the last good state" if saved_at >= 0 else
                "no checkpoint had been written")
        raise NonFiniteError(f"training stopped: {what} became non-finite (NaN or inf) {at}; nothing from that "
                             f"step on was saved, {kept}. Lower the learning rate (optim.lr or optim.base_lr) or clip "
                             "gradients (optim.clip_grad), then resume with --accept-changes, or start anew in "
                             "another --out.")
