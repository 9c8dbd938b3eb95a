"""SyncBatchNorm on two real gloo processes equals BatchNorm on the concatenated batch: outputs, running
statistics and input gradients; and pretraining converts ResNets (not ViTs) when more than one process runs."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ctssl.pretrain.syncbn import SyncBatchNorm, convert_sync_batchnorm, has_batchnorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, x, weight, bias, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    assert isinstance(bn, SyncBatchNorm)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    n = x.shape[0] // world
    mine = x[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    y = bn(mine)
    upstream = torch.arange(x.numel(), dtype=x.dtype).view_as(x).sin()[rank * n:(rank + 1) * n]   # uneven
    (y * upstream).sum().backward()
    out[rank] = {"y": y.detach(), "grad": mine.grad, "mean": bn.running_mean.clone(), "var": bn.running_var.clone()}
    dist.destroy_process_group()


def test_two_processes_equal_one_batchnorm_on_the_whole_batch():
    torch.manual_seed(1)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    weight, bias = torch.rand(3) + 0.5, torch.randn(3)
    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(weight)
        ref.bias.copy_(bias)
    whole = x.clone().requires_grad_(True)
    y = ref(whole)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(2, _free_port(), x, weight, bias, out), nprocs=2, join=True)
    torch.testing.assert_close(torch.cat([out[0]["y"], out[1]["y"]]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([out[0]["grad"], out[1]["grad"]]), whole.grad, rtol=1e-4, atol=1e-5)
    for r in range(2):       # running statistics: the whole batch's, the same on both ranks
        torch.testing.assert_close(out[r]["mean"], ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[r]["var"], ref.running_var, rtol=1e-5, atol=1e-6)
    # Per-process BN (what runs without synchronisation) would differ.
    local = nn.BatchNorm2d(3)
    local(x[:4])
    assert not torch.allclose(local.running_mean, ref.running_mean, atol=1e-3)


def test_conversion_keeps_weights_and_is_an_ordinary_bn_in_one_process():
    from ctssl.pretrain.backbones import build_backbone

    torch.manual_seed(0)
    model, _ = build_backbone("resnet18", 3)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x)
    converted = convert_sync_batchnorm(model)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert sum(isinstance(m, SyncBatchNorm) for m in converted.modules()) == 20
    torch.testing.assert_close(converted(x), before)
    converted.train()
    converted(x)          # no process group: plain batch statistics, no error
    vit, _ = build_backbone("vit_s16", 3)
    assert not has_batchnorm(vit)
