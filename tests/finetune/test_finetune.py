"""Fine-tuning: truncation, layer-wise learning-rate decay, early stopping, best vs final."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctssl.finetune.finetune import Classifier, FinetuneConfig, finetune, predict
from ctssl.pretrain.backbones import build_backbone


@pytest.mark.parametrize("name,truncate,pool,dim", [("resnet18", 0, False, 512), ("resnet18", 2, True, 128),
                                                    ("resnet50", 1, True, 256),
                                                    # TruncatedTL: the head on the unpooled map (C x H x W at 32 px)
                                                    ("resnet18", 2, False, 128 * 4 * 4), ("resnet50", 1, False, 256 * 8 * 8)])
def test_truncated_resnets(name, truncate, pool, dim):
    backbone, _ = build_backbone(name, 1)
    model = Classifier(backbone, name, truncate, 3, input_size=32, pool=pool)
    assert model.head.in_features == dim
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    kept = truncate or 4
    assert len(model.groups) == 1 + kept
    with pytest.raises(ValueError, match="truncate"):
        Classifier(build_backbone(name, 1)[0], name, 5, 3)


def test_layerwise_lr_decay_and_no_decay_on_norms():
    backbone, _ = build_backbone("resnet18", 3)
    model = Classifier(backbone, "resnet18", 0, 2)
    groups = model.param_groups(lr=1.0, llrd=0.5, weight_decay=0.05)
    lr_by_depth = {g["depth"]: g["lr"] for g in groups}
    assert lr_by_depth == {5: 1.0, 4: 0.5, 3: 0.25, 2: 0.125, 1: 0.0625, 0: 0.03125}   # head, layer4 ... stem
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim <= 1 for p in g["params"]))
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_vit_truncation_and_groups():
    backbone, _ = build_backbone("vit_s16", 3)
    model = Classifier(backbone, "vit_s16", 3, 4)
    assert len(model.features.blocks) == 3 and model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    groups = model.param_groups(1e-3, 0.75, 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_finetune_learns_and_reports_best_and_final():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 2
    x = torch.randn(96, 1, 16, 16, generator=gen) * 0.3 + (y.float() * 2 - 1).view(-1, 1, 1, 1)
    cfg = FinetuneConfig(epochs=4, batch_size=16, lrs=[3e-3], patience=2, augment=False)
    result = finetune(build_backbone("resnet18", 1)[0], "resnet18", x[:64].half(), y[:64].numpy(), x[64:].half(),
                      y[64:].numpy(), 2, cfg, seed=0)
    assert 1 <= result["best_epoch"] <= result["epochs_run"] <= 4
    for variant in ("best_val", "final"):
        accuracy = np.mean(predict(result[variant], x[64:]).argmax(1) == y[64:].numpy())
        assert accuracy > 0.9


def test_bn_recalibration_is_the_same_on_patient_ordered_and_shuffled_inputs():
    """Inputs stored patient by patient (each patient its own offset, as slices of one series are alike):
    recalibration draws shuffled batches, so it gives the statistics of the data, whatever the order; the
    old way, batches in stored order, underestimates the variance."""
    from torch.optim.swa_utils import update_bn

    from ctssl.finetune.finetune import recalibrate

    gen = torch.Generator().manual_seed(0)
    patients = torch.randn(16, generator=gen).repeat_interleave(32) * 3        # 16 patients x 32 slices, ordered
    x = (patients.view(-1, 1, 1, 1) + 0.2 * torch.randn(512, 1, 8, 8, generator=gen))
    shuffled = x[torch.randperm(len(x), generator=gen)]

    torch.manual_seed(0)
    backbone = build_backbone("resnet18", 1)[0]

    def running_var(data, how):
        import copy

        model = Classifier(copy.deepcopy(backbone), "resnet18", 0, 2)
        how(model, data)
        return float(model.features[0][1].running_var.mean())

    ordered = running_var(x, lambda m, d: recalibrate(m, d, 32, "cpu", torch.Generator().manual_seed(1)))
    mixed = running_var(shuffled, lambda m, d: recalibrate(m, d, 32, "cpu", torch.Generator().manual_seed(2)))
    naive = running_var(x, lambda m, d: update_bn(((d[i:i + 32],) for i in range(0, len(d), 32)), m))
    assert ordered == pytest.approx(mixed, rel=0.05)
    assert naive < 0.5 * ordered                       # what in-order batches did


def test_the_lr_grid_gives_every_point_the_same_budget_and_keeps_the_best_on_validation():
    from ctssl.finetune.finetune import finetune_grid

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 1, 16, 16, generator=gen) * 0.3 + (y.float() * 2 - 1).view(-1, 1, 1, 1)
    cfg = FinetuneConfig(epochs=2, batch_size=16, lrs=[1e-6, 3e-3], patience=5, augment=False)
    result = finetune_grid(build_backbone("resnet18", 1)[0], "resnet18", x[:48].half(), y[:48].numpy(),
                           x[48:].half(), y[48:].numpy(), 2, cfg, seed=0)
    assert [g["lr"] for g in result["grid"]] == [1e-6, 3e-3]
    assert all(g["epochs_run"] == 2 for g in result["grid"])
    key = f"val_{result['select']}"
    assert result[ "lr"] == max(result["grid"], key=lambda g: g[key])["lr"]
