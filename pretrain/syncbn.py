"""Synchronised BatchNorm: batch statistics over the global batch (every process), as SimCLR's global BN
and DINO's ``convert_sync_batchnorm`` of ResNets have it.

``convert_sync_batchnorm(module)`` replaces every ``BatchNorm1d/2d`` by ``SyncBatchNorm``, which runs
PyTorch's own fused synchronised batch-norm kernels on GPUs (NCCL), without the host synchronisation that
``torch.nn.SyncBatchNorm`` makes in every layer's forward: PyTorch drops the statistics of processes
whose input was empty with a boolean mask (``count_all[mask]``, a data-dependent shape, so a
device-to-host copy per layer; pytorch#78549), which for a ResNet-50 is ~53 synchronisations per
forward. A training step never has an empty input on any process (every rank gets the same batch), so
ctssl's forward (``_SyncFreeBatchNorm``, otherwise PyTorch's code) gathers and combines the statistics
without the mask; the backward is PyTorch's. PyTorch's refuses CPU tensors (and DDP refuses
``nn.SyncBatchNorm`` on CPU), so on the CPU (gloo: the tests, CPU clusters) the same layer computes the
global statistics itself: the sums
``sum x``, ``sum x^2`` and the count are all-reduced, the batch is normalised with the global mean and
(biased) variance, the running statistics are updated with the unbiased variance, and the backward
pass all-reduces ``sum dy`` and ``sum dy * x_hat`` so that input gradients are those of BN on the
concatenated batch (tested against one process on the concatenated batch). Weight and bias gradients
stay local sums, which DDP averages, as with PyTorch's layer.

Without a process group, or with one process, or in eval mode, it is an ordinary BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _GlobalBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims),
                           torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)])
        dist.all_reduce(local, group=group)
        c = x.shape[1]
        count = local[-1]
        mean = local[:c] / count
        var = (local[c:2 * c] / count - mean * mean).clamp_(min=0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
                unbiased = var * count / (count - 1).clamp(min=1)
                running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        x_hat = (xf - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.group, ctx.count, ctx.dims, ctx.shape = group, count, dims, shape
        out = x_hat
        if weight is not None:
            out = out * weight.float().view(shape) + bias.float().view(shape)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x_hat, invstd, weight = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        dy = grad_out.float()
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * x_hat).sum(dims)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None else None
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, group=ctx.group)
        c = x_hat.shape[1]
        mean_dy, mean_dy_xhat = both[:c] / ctx.count, both[c:] / ctx.count
        scale = invstd * (weight.float() if weight is not None else 1.0)
        grad_x = (dy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * scale.view(shape)
        return grad_x.to(grad_out.dtype), grad_weight, grad_bias, None, None, None, None, None


class _SyncFreeBatchNorm(torch.nn.modules._functions.SyncBatchNorm):
    """``torch.nn.modules._functions.SyncBatchNorm`` (PyTorch 2.x) without the empty-input mask of its forward
    (module docstring); every process's input must be non-empty. Backward: PyTorch's."""

    @staticmethod
    def forward(self, input, weight, bias, running_mean, running_var, eps, momentum, process_group, world_size):
        if not (input.is_contiguous(memory_format=torch.channels_last)
                or input.is_contiguous(memory_format=torch.channels_last_3d)):
            input = input.contiguous()
        if weight is not None:
            weight = weight.contiguous()
        if input.numel() == 0:
            raise ValueError("SyncBatchNorm got an empty input: every process needs a non-empty batch")
        num_channels = input.shape[1]
        mean, invstd = torch.batch_norm_stats(input, eps)
        count = torch.full((1,), input.numel() // input.size(1), dtype=mean.dtype, device=mean.device)
        combined = torch.cat([mean, invstd, count], dim=0)                     # 2C + 1
        gathered = torch.empty(world_size * combined.numel(), dtype=combined.dtype, device=combined.device)
        # all_gather_single in recent torch (all_gather_into_tensor is deprecated there), else the older name
        getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(gathered, combined, process_group)
        mean_all, invstd_all, count_all = torch.split(gathered.view(world_size, -1), num_channels, dim=1)
        counts = count_all.view(-1)
        if running_mean is not None and counts.dtype != running_mean.dtype:
            counts = counts.to(running_mean.dtype)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(input, mean_all, invstd_all, running_mean,
                                                                 running_var, momentum, eps, counts)
        self.save_for_backward(input, weight, mean, invstd, count_all.to(torch.int32))
        self.process_group = process_group
        return torch.batch_norm_elemt(input, weight, bias, mean, invstd, eps)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch (module docstring). On CUDA tensors the synchronisation is PyTorch's own
    (``nn.SyncBatchNorm``'s fused kernels and collectives); on CPU tensors ctssl's all-reduce. Not a subclass of
    ``nn.SyncBatchNorm``, which DDP refuses on CPU; DDP needs no other knowledge of it."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        group = None
        if self.training and dist.is_available() and dist.is_initialized():
            group = dist.group.WORLD
            if dist.get_world_size(group) == 1:
                group = None
        if group is None:
            return super().forward(x)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        if x.device.type == "cpu":
            return _GlobalBatchNorm.apply(x, self.weight, self.bias, running_mean, running_var, self.eps, momentum,
                                          group)
        return _SyncFreeBatchNorm.apply(x, self.weight, self.bias, running_mean, running_var, self.eps, momentum,
                                        group, dist.get_world_size(group))


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm1d/2d/3d of ``module`` as a ``SyncBatchNorm`` with the same parameters and
    running statistics (``nn.SyncBatchNorm.convert_sync_batchnorm``, with ctssl's class)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
