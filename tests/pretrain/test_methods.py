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


def test_dino_exports_and_monitors_the_teacher():
    from ctssl.pretrain.config import MethodConfig
    from ctssl.pretrain.methods import build_method

    backbone, dim = build_backbone("resnet18", 1)
    model = build_method("dino", backbone, dim, MethodConfig(name="dino", dino=DINOConfig(
        output_dim=64, hidden_dim=32, bottleneck_dim=16)))
    assert model.export_backbone is model.teacher_backbone
    simclr = build_method("simclr", *build_backbone("resnet18", 1), MethodConfig())
    assert simclr.export_backbone is simclr.backbone


def test_collapse_ratio_is_one_when_healthy_and_zero_when_collapsed():
    from ctssl.pretrain.methods.monitor import collapse_ratio

    torch.manual_seed(0)
    for dim in (16, 256, 4096):
        healthy = collapse_ratio(torch.randn(512, dim))
        assert 0.9 < float(healthy) < 1.1, dim
    collapsed = torch.randn(1, 256).repeat(512, 1) + 1e-4 * torch.randn(512, 256)
    assert float(collapse_ratio(collapsed)) < 0.01
    # The old monitor scaled a 256-d bottleneck by sqrt(4096): a healthy one read as 4x too spread.
    assert float(collapse_ratio(torch.randn(512, 256))) * (4096 / 256) ** 0.5 > 3.5


def test_sync_free_lars_equals_lightlys():
    from lightly.utils.lars import LARS as LightlyLARS

    from ctssl.pretrain.lars import LARS

    torch.manual_seed(0)
    params = [torch.randn(5, 4), torch.randn(7), torch.zeros(3, 3)]
    groups = lambda ps: [{"params": ps[:1] + ps[2:], "weight_decay": 1e-4}, {"params": ps[1:2], "weight_decay": 0.0}]  # noqa: E731
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    opt_a, opt_b = LARS(groups(a), lr=0.3, momentum=0.9), LightlyLARS(groups(b), lr=0.3, momentum=0.9)
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        grads[2] = torch.zeros_like(grads[2]) if step == 0 else grads[2]      # zero norms take lightly's branch
        for ps in (a, b):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        opt_a.step()
        opt_b.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)


def test_method_reference_settings_and_schedules():
    import math

    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.optim import clip_per_parameter
    from ctssl.pretrain.schedules import lr_at, resolve_lr, wd_at

    dino = resolve_pretrain_config(None, None, [], {"method.name": "dino"})
    o = dino.optim
    assert (o.name, o.base_lr, o.lr_scaling, o.weight_decay, o.weight_decay_end, o.min_lr, o.warmup_epochs,
            o.clip_grad, o.clip_mode) == ("adamw", 0.0005, "linear", 0.04, 0.4, 1e-6, 10, 3.0, "per_param")
    assert resolve_lr(dino.optim, 512) == 0.0005 * 2
    simclr = resolve_pretrain_config(None, None, [], {})
    assert (simclr.optim.name, simclr.optim.warmup_epochs, simclr.optim.weight_decay_end) == ("lars", 10, None)
    assert resolve_lr(simclr.optim, 4096) == 0.075 * 64
    # A user's own value wins over the method's reference.
    assert resolve_pretrain_config(None, None, ["optim.weight_decay=0.1"], {"method.name": "dino"}).optim.weight_decay == 0.1
    # Warm-up is linear to the peak, then cosine to the floor; weight decay cosine from start to end.
    assert lr_at(0, 100, 10, 1.0, 1e-6) == 0.1 and lr_at(9, 100, 10, 1.0, 1e-6) == 1.0
    assert lr_at(99, 100, 10, 1.0, 1e-6) == 1e-6 + (1 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 89 / 90))
    assert abs(wd_at(0, 100, 0.04, 0.4) - 0.04) < 1e-12 and abs(wd_at(99, 100, 0.04, 0.4) - 0.4) < 1e-12
    assert wd_at(50, 100, 1e-6, None) == 1e-6
    # DINO's per-parameter clipping: each gradient above norm 3 scaled to 3, the others untouched.
    layer = torch.nn.Linear(4, 4)
    layer.weight.grad = torch.full((4, 4), 10.0)
    layer.bias.grad = torch.full((4,), 0.1)
    clip_per_parameter(layer, 3.0)
    assert abs(float(layer.weight.grad.norm()) - 3.0) < 1e-4 and torch.equal(layer.bias.grad, torch.full((4,), 0.1))
