"""Fine-tuning: truncation, layer-wise learning-rate decay, early stopping, best vs final."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctssl.finetune.finetune import Classifier, FinetuneConfig, finetune, predict
from ctssl.pretrain.backbones import build_backbone


@pytest.mark.parametrize("name,truncate,dim", [("resnet18", 0, 512), ("resnet18", 2, 128), ("resnet50", 2, 512),
                                               ("resnet50", 1, 256)])
def test_truncated_resnets(name, truncate, dim):
    backbone, _ = build_backbone(name, 1)
    model = Classifier(backbone, name, truncate, 3)
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
    cfg = FinetuneConfig(epochs=4, batch_size=16, lr=3e-3, patience=2, augment=False)
    result = finetune(build_backbone("resnet18", 1)[0], "resnet18", x[:64].half(), y[:64].numpy(), x[64:].half(),
                      y[64:].numpy(), 2, cfg, seed=0)
    assert 1 <= result["best_epoch"] <= result["epochs_run"] <= 4
    for variant in ("best_val", "final"):
        accuracy = np.mean(predict(result[variant], x[64:], False).argmax(1) == y[64:].numpy())
        assert accuracy > 0.9
