"""One training step's forward and backward, on the whole per-process batch or in micro-batches.

A recipe's global batch (SimCLR: 4096 images, two views each) does not fit every machine: ResNet-50
at 256 px keeps about 55 MiB of bf16 activations per view-image for backward, 55 GiB per GPU on 8 GPUs.
SimCLR's loss couples every image with every other one (the negatives), so plain gradient accumulation
over micro-batches would change the loss. ctssl uses representation caching (GradCache; Gao et al.,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021), which gives the
full-batch gradient with the memory of one micro-batch:

1. every micro-batch goes through the network without a graph (``torch.no_grad``): its embeddings
   (B x V x D numbers), and the targets (DINO's teacher outputs) once;
2. the loss of the whole batch is computed from the cached embeddings, which are leaves that require a
   gradient; its backward gives the gradient of the loss with respect to every embedding;
3. each micro-batch goes through the network again, with a graph, and its embeddings are
   back-propagated with their slice of that gradient; the parameter gradients add up to the full-batch
   gradient (DDP all-reduces them once, after the last micro-batch).

What is not the same: BatchNorm normalises each micro-batch with the statistics of that micro-batch
(times the processes, with SyncBN) instead of the whole batch, and updates its running statistics once
per micro-batch. The first pass's running-statistics updates are undone, and each micro-batch's random
state (stochastic depth) is replayed in the second pass, so the two passes compute the same function.
Networks without BatchNorm (ViTs) get exactly the full-batch gradient (tested, tests/pretrain/).
Cost: one extra forward per step (about a third more compute).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def split_views(views: list[torch.Tensor], micro: int) -> list[list[torch.Tensor]]:
    """The batch's views cut into consecutive micro-batches of ``micro`` samples."""
    b = views[0].shape[0]
    return [[v[i:i + micro] for v in views] for i in range(0, b, micro)]


def cat_batches(parts: list):
    """Concatenate per-micro-batch outputs on the batch axis (tensors, tuples of tensors, or None)."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return type(first)(cat_batches([p[i] for p in parts]) for i in range(len(first)))


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


class _RandomState:
    """The generator states a forward draws from (CPU and the current CUDA device), saved and replayed."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


def forward_backward(model: nn.Module, method: nn.Module, views: list[torch.Tensor], epoch: int, micro: int,
                     accelerator):
    """The step's loss and logs, with the gradient of the whole batch's loss in the parameters.

    ``model`` is what the loop calls (DDP-wrapped, maybe compiled), ``method`` the unwrapped method
    (its ``targets`` and ``loss`` hold no trainable parameters). ``micro`` >= the batch: one forward and
    backward; else representation caching (module docstring)."""
    batch = views[0].shape[0]
    if micro >= batch:
        with accelerator.autocast():
            loss, logs = model(views, epoch)
        accelerator.backward(loss)
        return loss, logs

    chunks = split_views(views, micro)
    device = views[0].device
    states, embedded = [], []
    with torch.no_grad(), accelerator.autocast():
        targets = [method.targets(chunk) for chunk in chunks]       # once (DINO: the teacher, in train mode)
        buffers = batchnorm_buffers(method)
        saved = [b.clone() for b in buffers]
        for chunk in chunks:
            states.append(_RandomState(device))
            embedded.append(model(chunk, epoch, part="embed"))
    for buffer, value in zip(buffers, saved):       # the second pass updates the running statistics
        buffer.copy_(value)
    cache = torch.cat(embedded).detach().requires_grad_(True)
    with accelerator.autocast():
        loss, logs = method.loss(cache, cat_batches(targets), epoch)
    accelerator.backward(loss)                      # the gradient of the whole batch's loss, per embedding
    grads = cache.grad.split(micro)
    for i, (chunk, state) in enumerate(zip(chunks, states)):
        last = i == len(chunks) - 1
        with (contextlib.nullcontext() if last else accelerator.no_sync(model)):
            state.restore()
            with accelerator.autocast():
                z = model(chunk, epoch, part="embed")
            z.backward(grads[i].to(z.dtype))
    return loss, logs
