"""Method math: NT-Xent negatives from all processes (two real gloo processes), DINO's EMA."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctssl.pretrain.backbones import BACKBONES, adapt_input_conv, build_backbone
from ctssl.pretrain.config import DINOConfig, SimCLRConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ntxent_rank(rank: int, world: int, port: int, z0, z1, out):
    from lightly.loss import NTXentLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = z0.shape[0] // world
    mine0 = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    mine1 = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = NTXentLoss(temperature=0.1, gather_distributed=True)(mine0, mine1)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    out[rank] = torch.cat([(total / world).view(1), mine0.grad.flatten()])
    dist.destroy_process_group()


def test_ntxent_two_processes_equals_one_process_on_the_whole_batch():
    from lightly.loss import NTXentLoss

    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    single0 = z0.clone().requires_grad_(True)
    single = NTXentLoss(temperature=0.1)(single0, z1.clone())
    single.backward()
    out = mp.Manager().dict()
    mp.spawn(_ntxent_rank, args=(2, _free_port(), z0, z1, out), nprocs=2, join=True)
    for rank in range(2):
        assert out[rank][0] == pytest.approx(float(single), rel=1e-5)
    # Each process's gradient is the full-batch gradient of its rows, up to the world-size
    # factor that DDP's gradient averaging removes.
    grads = torch.cat([out[r][1:].view(4, 16) for r in range(2)])
    torch.testing.assert_close(grads / 2, single0.grad, rtol=1e-4, atol=1e-6)
    # Without gathering, the negatives would be per process and the loss different.
    local = (NTXentLoss(temperature=0.1)(z0[:4], z1[:4]) + NTXentLoss(temperature=0.1)(z0[4:], z1[4:])) / 2
    assert float(local) != pytest.approx(float(single), rel=1e-3)


def test_dino_teacher_is_an_ema_of_the_student():
    from ctssl.pretrain.methods import build_method
    from ctssl.pretrain.config import MethodConfig

    backbone, dim = build_backbone("resnet18", 1)
    cfg = MethodConfig(name="dino", dino=DINOConfig(output_dim=64, hidden_dim=32, bottleneck_dim=16))
    model = build_method("dino", backbone, dim, cfg)
    teacher_before = [p.clone() for p in model.teacher_backbone.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))
    student = [p.clone() for p in model.backbone.parameters()]
    model.update_teacher(0.9)
    for t0, s, t1 in zip(teacher_before, student, model.teacher_backbone.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert not any(p.requires_grad for p in model.teacher_backbone.parameters())
    # A forward pass gives a finite loss with 2 global and 2 local views.
    views = [torch.randn(4, 1, 64, 64)] * 2 + [torch.randn(4, 1, 32, 32)] * 2
    loss, logs = model(views, epoch=0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_backbone_gives_pooled_features(name, in_chans):
    model, dim = build_backbone(name, in_chans)
    size = 64 if name != "vit_s16" else 48
    assert model(torch.randn(2, in_chans, size, size)).shape == (2, dim)


def test_imagenet_init_needs_a_local_file_and_adapts_channels(tmp_path):
    with pytest.raises(FileNotFoundError, match="local weights file"):
        build_backbone("resnet18", 1, init="imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet18", 1, init="imagenet", weights=str(tmp_path / "missing.pth"))
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model, _ = build_backbone("resnet18", 1, init="imagenet", weights=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    w = torch.randn(8, 3, 3, 3)
    assert adapt_input_conv(w, 5).shape == (8, 5, 3, 3)


def test_simclr_default_gathers_negatives():
    assert SimCLRConfig().gather_distributed is True
