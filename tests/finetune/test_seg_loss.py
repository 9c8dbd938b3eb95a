"""Segmentation losses against hand computations, F.cross_entropy and MONAI's DiceLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ctssl.finetune.seg_loss import LITS_CLASS_WEIGHTS, ce_dice_loss, soft_dice_loss, weighted_cross_entropy


def _random(seed: int, b=3, c=3, h=8, w=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=gen), torch.randint(0, c, (b, h, w), generator=gen)


def test_weighted_cross_entropy_by_hand():
    """Two pixels, two classes: logits (0, 0) for class 0 and (0, ln 3) for class 1, weights 1 and 3:
    losses ln 2 and -ln(3/4), weighted mean (1 ln 2 + 3 ln(4/3)) / (1 + 3)."""
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    expected = (math.log(2) + 3 * math.log(4 / 3)) / 4
    assert weighted_cross_entropy(logits, target, [1.0, 3.0]).item() == pytest.approx(expected, rel=1e-6)
    assert weighted_cross_entropy(logits, target).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)


def test_weighted_cross_entropy_equals_torch_on_random_inputs():
    logits, target = _random(0)
    weights = torch.tensor(LITS_CLASS_WEIGHTS)
    ours = weighted_cross_entropy(logits, target, weights)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target, weight=weights).item(), rel=1e-6)
    per_pixel = -F.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    assert ours.item() == pytest.approx((weights[target] * per_pixel).sum().item() / weights[target].sum().item(),
                                        rel=1e-5)


def test_soft_dice_by_hand_with_a_class_absent():
    """One image of 4 pixels, 3 classes. Probabilities: pixels 0-1 (target class 1) put 0.5 on class 1;
    pixels 2-3 (target 0) put 0.25 on class 1. Class 1 Dice = 2 * 1.0 / (1.5 + 2) = 4/7; class 2 is absent
    from the target and left out; background too by default."""
    probs = torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    logits = probs.log().T.reshape(1, 3, 1, 4)
    target = torch.tensor([[[1, 1, 0, 0]]])
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 4 / 7, rel=1e-6)
    # with the background: class 0 has p = .25, .25, .5, .5 against 0, 0, 1, 1: 2 * 1.0 / (1.5 + 2) = 4/7 too;
    # class 2 (p = .25 everywhere, absent) stays out, or the mean would be (4/7 + 4/7 + 0) / 3.
    assert soft_dice_loss(logits, target, include_background=True).item() == pytest.approx(1 - 4 / 7, rel=1e-6)
    nothing = torch.zeros(1, 1, 4, dtype=torch.long)
    logits.requires_grad_(True)
    loss = soft_dice_loss(logits, nothing)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_soft_dice_equals_monai_batch_dice_when_every_class_is_present():
    logits, target = _random(1, b=2, c=4, h=16, w=16)
    assert set(target.unique().tolist()) == {0, 1, 2, 3}
    monai = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=0.0,
                     smooth_dr=1e-12)
    assert soft_dice_loss(logits, target).item() == pytest.approx(monai(logits, target[:, None]).item(), rel=1e-5)
    monai_bg = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True, smooth_nr=0.0,
                        smooth_dr=1e-12)
    assert soft_dice_loss(logits, target, include_background=True).item() == pytest.approx(
        monai_bg(logits, target[:, None]).item(), rel=1e-5)


def test_sum_and_its_logs():
    logits, target = _random(2)
    logits.requires_grad_(True)
    loss, logs = ce_dice_loss(logits, target, LITS_CLASS_WEIGHTS, dice_weight=0.5)
    expected = weighted_cross_entropy(logits, target, LITS_CLASS_WEIGHTS) + 0.5 * soft_dice_loss(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["loss"].item() == pytest.approx(loss.item()) and not logs["ce"].requires_grad
    loss.backward()
    assert logits.grad.abs().sum() > 0
    ce_only, _ = ce_dice_loss(logits, target, LITS_CLASS_WEIGHTS, dice_weight=0.0)
    assert ce_only.item() == pytest.approx(logs["ce"].item())


@pytest.mark.parametrize("call, message", [
    (lambda: weighted_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), [1, 2]), "3 positive"),
    (lambda: weighted_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), [1, 0, 2]), "3 positive"),
    (lambda: soft_dice_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3)), r"0\.\.2"),
    (lambda: soft_dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long)), r"\(B, H, W\)"),
    (lambda: soft_dice_loss(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)), r"\(B, C, H, W\)"),
    (lambda: soft_dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2)), "integer class"),
    (lambda: ce_dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), dice_weight=-1), "dice_weight"),
])
def test_bad_inputs_say_what_was_received(call, message):
    with pytest.raises(ValueError, match=message):
        call()
