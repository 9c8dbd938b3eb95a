"""Segmentation training pieces: image and mask augmented together, per-case validation Dice, settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctssl.finetune.segment import SegmentConfig, augment_pair, mean_case_dice, validate_config


def test_image_and_mask_stay_aligned_under_augmentation():
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(16, 64, 64, dtype=torch.long)
    masks[:, 10:30, 5:25] = 1
    masks[:, 40:60, 30:62] = 2
    images = masks[:, None].float().repeat(1, 3, 1, 1)          # the image is the mask: alignment is visible
    x, y = augment_pair(images, masks, gen)
    assert y.dtype == masks.dtype and set(y.unique().tolist()) <= {0, 1, 2}   # class ids stay class ids
    agree = (x[:, 0].round().long() == y).float().mean()
    assert agree > 0.98                                          # bilinear edges aside, the same geometry
    assert not torch.equal(y, masks)                             # and it did augment
    columns = [torch.nonzero(y[i] == 1)[:, 1].float().mean() for i in range(16)]
    assert any(c > 32 for c in columns) and any(c < 32 for c in columns)   # class 1 (left) flipped to the right


def test_mean_case_dice_groups_slices_by_case_and_skips_undefined_cases():
    reference = np.zeros((4, 8, 8), np.uint8)
    prediction = np.zeros((4, 8, 8), np.uint8)
    reference[0, :4] = 1                   # case a: slices 0-1, class 1 half-overlapping
    prediction[0, :2] = 1
    reference[2, :, :4] = 1                # case b: slices 2-3, perfect
    prediction[2, :, :4] = 1
    cases = np.array(["a", "a", "b", "b"])
    expected = np.mean([2 * 16 / (32 + 16), 1.0])
    assert mean_case_dice(reference, prediction, cases, 2) == pytest.approx(expected)
    empty = mean_case_dice(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), np.array(["c", "c"]), 2)
    assert np.isnan(empty)


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match=r"protocols must be some of \['frozen', 'finetune'\].*loss must be one of"):
        validate_config(SegmentConfig(protocols=["linear"], loss="focal"), 3)
    with pytest.raises(ValueError, match="class_weights must be 3 positive values"):
        validate_config(SegmentConfig(class_weights=[1.0, 3.0]), 3)
    validate_config(SegmentConfig(class_weights=[1.0, 3.0, 10.0], loss="ce"), 3)


def test_a_last_batch_of_one_slice_is_joined_to_the_one_before():
    """17 slices in batches of 8: the 17th would be a batch of one, which BatchNorm cannot normalise in
    training mode at the U-Net's 1 x 1 bottleneck (32 px) and which once failed the demo; every slice is still
    trained on once per epoch, in both protocols (the fine-tuned one recalibrates BatchNorm over them too)."""
    from ctssl.finetune.finetune import training_batches
    from ctssl.finetune.segment import train_unet
    from ctssl.pretrain.backbones import build_backbone

    batches = training_batches(torch.randperm(17, generator=torch.Generator().manual_seed(0)), 8)
    assert [len(b) for b in batches] == [8, 9] and sorted(torch.cat(batches).tolist()) == list(range(17))
    assert [len(b) for b in training_batches(torch.arange(16), 8)] == [8, 8]
    assert [len(b) for b in training_batches(torch.arange(1), 8)] == [1]
    x = torch.randn(17, 1, 32, 32)
    y = (x[:, 0] > 0).long()
    cfg = SegmentConfig(epochs=1, batch_size=8, lrs=[1e-3])
    for protocol in ("frozen", "finetune"):
        result = train_unet(build_backbone("resnet18", 1)[0], "resnet18", x, y, x[:4], y[:4].numpy(),
                            np.arange(4), 2, protocol, cfg, seed=0, lr=1e-3, device="cpu")
        assert result["history"][0]["train_loss"] > 0
