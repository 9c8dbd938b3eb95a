"""ctssl's NT-Xent: google-research/simclr's loss (twice lightly's mean), the same gradients, negatives from
every process (two real gloo processes equal one process on the whole batch), no boolean indexing."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.loss import NTXentLoss

from ctssl.pretrain.methods.ntxent import NTXent


def test_equals_twice_lightlys_loss_with_the_same_gradient_direction():
    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    a0, a1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    b0, b1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    ours = NTXent(temperature=0.1, gather_distributed=False)(a0, a1)
    theirs = NTXentLoss(temperature=0.1)(b0, b1)
    assert float(ours) == pytest.approx(2 * float(theirs), rel=1e-5)
    (ours).backward()
    (2 * theirs).backward()
    torch.testing.assert_close(a0.grad, b0.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-4, atol=1e-6)


def test_hand_computed_two_images():
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # image 0, view 0: positive sim 1, negatives: z1[1] (0) and z0[1] (0); the same for every row
    row = -torch.log(torch.exp(torch.tensor(1 / t)) / (torch.exp(torch.tensor(1 / t)) + 2))
    assert float(NTXent(t, False)(z0, z1)) == pytest.approx(2 * float(row), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, z0, z1, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = z0.shape[0] // world
    mine0 = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    mine1 = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = NTXent(0.1, gather_distributed=True)(mine0, mine1)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    out[rank] = torch.cat([(total / world).view(1), mine0.grad.flatten()])
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_whole_batch():
    torch.manual_seed(1)
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    whole0 = z0.clone().requires_grad_(True)
    whole = NTXent(0.1, gather_distributed=False)(whole0, z1.clone())
    whole.backward()
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(2, _free_port(), z0, z1, out), nprocs=2, join=True)
    for rank in range(2):
        assert float(out[rank][0]) == pytest.approx(float(whole), rel=1e-5)
    grads = torch.cat([out[r][1:].view(4, 16) for r in range(2)])
    torch.testing.assert_close(grads / 2, whole0.grad, rtol=1e-4, atol=1e-6)   # DDP averages over processes
