"""DINO as main_dino.py: a teacher without stochastic depth (deterministic on identical input), crops of one
resolution through the backbone in one forward (MultiCropWrapper), asymmetric global views."""

from __future__ import annotations

import random

import pytest
import torch

from ctssl.pretrain.backbones import build_backbone
from ctssl.pretrain.config import DINOConfig, resolve_pretrain_config
from ctssl.pretrain.methods import DINO
from ctssl.pretrain.methods.dino import resolution_groups
from ctssl.pretrain.views import CTViewMaker, crop_specs

SMALL = DINOConfig(hidden_dim=32, bottleneck_dim=16, output_dim=64, local_crops=2)


def _vit_dino():
    torch.manual_seed(0)
    backbone, dim = build_backbone("vit_s16", 3, drop_path=0.1)
    return DINO(backbone, dim, SMALL)


def test_teacher_has_no_stochastic_depth_and_is_deterministic():
    method = _vit_dino()
    assert any(type(m).__name__ == "DropPath" for m in method.backbone.modules())        # the student has it
    assert not any(type(m).__name__ == "DropPath" for m in method.teacher_backbone.modules())
    method.train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = method.teacher_backbone(x), method.teacher_backbone(x)
        s1, s2 = method.backbone(x), method.backbone(x)
    assert torch.equal(a, b)                      # teacher: the same output twice
    assert not torch.allclose(s1, s2)             # student: stochastic depth draws differ
    # Teacher and student still pair parameter for parameter (the EMA zips them).
    assert [n for n, _ in method.backbone.named_parameters()] == [n for n, _ in method.teacher_backbone.named_parameters()]


@pytest.mark.parametrize("name", ["resnet18", "vit_s16"])
def test_multicrop_forward_equals_per_crop_forwards_in_eval_mode(name):
    torch.manual_seed(0)
    backbone, dim = build_backbone(name, 3)
    method = DINO(backbone, dim, SMALL).eval()
    views = [torch.randn(3, 3, 32, 32) for _ in range(2)] + [torch.randn(3, 3, 16, 16) for _ in range(2)]
    assert resolution_groups(views) == [(0, 2), (2, 4)]
    calls = []
    hook = method.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        together = method.embed(views)
        hook.remove()
        alone = torch.stack([method.head(method.backbone(v)) for v in views], dim=1)
    assert calls == [6, 6]                        # two backbone forwards: the 2 global crops, the 2 local ones
    assert together.shape == (3, 4, 64)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_global_views_are_augmented_asymmetrically_as_dino():
    cfg = resolve_pretrain_config(None, None, ["data.image_size=32", "method.dino.local_size=16"],
                                  {"method.name": "dino"})
    crops = crop_specs("dino", cfg)
    assert [(c.blur_prob, c.solarize_prob) for c in crops[:3]] == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]
    maker = CTViewMaker(cfg.data, crops, 3)
    draws = [maker.draw(random.Random(i), 64, 64) for i in range(400)]
    blurred = [sum(d["blur"][v] > 0 for d in draws) / 400 for v in range(3)]
    solarised = [sum(bool(d["solarize"][v]) for d in draws) / 400 for v in range(3)]
    assert blurred[0] == 1.0 and blurred[1] < 0.2 and 0.4 < blurred[2] < 0.6
    assert solarised[0] == 0 and 0.12 < solarised[1] < 0.28 and solarised[2] == 0


def test_solarisation_inverts_the_windowed_image_above_one_half():
    cfg = resolve_pretrain_config(None, None, ["data.image_size=16", "data.augment.noise_prob=0",
                                               "data.augment.window_jitter=0", "data.windows=[soft_tissue]",
                                               "data.normalize_mean=0", "data.normalize_std=1"],
                                  {"method.name": "dino"})
    maker = CTViewMaker(cfg.data, crop_specs("dino", cfg)[:2], 1)
    hu = torch.linspace(-200, 250, 256).view(1, 16, 16).round().short().numpy()[0]
    params = CTViewMaker.identity(16, 16, views=2)
    params["solarize"][1] = True
    plain, solarised = maker.render(CTViewMaker.collate([hu], [params]), sizes=[16, 16])
    high = plain >= 0.5
    assert high.any() and (~high).any()
    torch.testing.assert_close(solarised[high], 1 - plain[high])
    torch.testing.assert_close(solarised[~high], plain[~high])
