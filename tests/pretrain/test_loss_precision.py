"""The losses run in fp32 under autocast (bf16 here, CPU autocast): NT-Xent's logits and softmax, and DINO's
cross-entropies and centring, as main_dino.py computes its loss; each compared with an fp32 run."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss

from ctssl.pretrain.methods.dino import DINO
from ctssl.pretrain.methods.ntxent import NTXent


def _grads(loss_fn, z0, z1, autocast: bool):
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(a, b)
    loss.backward()
    return loss, torch.cat([a.grad, b.grad])


def test_ntxent_under_bf16_autocast_equals_fp32():
    torch.manual_seed(0)
    z0, z1 = torch.randn(64, 128), torch.randn(64, 128)
    z1 = z0 + 0.5 * z1                                   # positives more alike than negatives
    loss = NTXent(temperature=0.1)
    ref, ref_grad = _grads(loss, z0, z1, autocast=False)
    got, grad = _grads(loss, z0, z1, autocast=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    # The same loss with its logits left to autocast (what ran before): the error this test would see.
    _, old_grad = _grads(loss._loss, z0, z1, autocast=True)
    assert (old_grad - ref_grad).norm() / ref_grad.norm() > 1e-3


def _main_dino_loss(student, teacher, student_temp, teacher_temp):
    """main_dino.py's DINOLoss.forward in fp32 (centre zero, as at the first step): student (B, V, D),
    teacher (B, 2, D)."""
    student_out = (student.float() / student_temp).unbind(1)
    teacher_out = F.softmax(teacher.float() / teacher_temp, dim=-1).unbind(1)
    total, terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def test_dino_loss_under_bf16_autocast_is_main_dino_s_fp32_loss():
    torch.manual_seed(1)
    dim = 256
    # What the heads give under bf16 autocast: bf16 outputs.
    student = (3 * torch.randn(16, 4, dim)).bfloat16().requires_grad_()
    teacher = (3 * torch.randn(16, 2, dim)).bfloat16()
    method = SimpleNamespace(criterion=DINOLoss(output_dim=dim, warmup_teacher_temp=0.04, teacher_temp=0.04,
                                                warmup_teacher_temp_epochs=0, student_temp=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = DINO.loss(method, student, (teacher, torch.randn(16, 8)))
    assert loss.dtype == torch.float32
    ref = _main_dino_loss(student, teacher, 0.1, 0.04)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    # Left to autocast with the bf16 outputs (what ran before), lightly's loss comes back in bf16.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        old = DINOLoss(output_dim=dim, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
                       student_temp=0.1)(list(teacher.unbind(1)), list(student.unbind(1)), epoch=0)
    assert old.dtype == torch.bfloat16
