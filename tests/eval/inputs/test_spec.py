"""How a backbone sees an image (eval.inputs.spec): the training views without augmentation are the evaluation
input; the input spec follows the backbone's card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctssl.pretrain.sources import load_backbone
from ctssl.eval.inputs.spec import input_spec, prepare
from ctssl.pretrain.backbones import build_backbone


def test_training_views_without_augmentation_equal_the_evaluation_input():
    """The training renderer with no augmentation (whole slice, no flip/blur/noise/jitter) gives exactly the
    evaluation input of ctssl.eval.inputs.spec: one resize and one windowing for both."""
    from ctssl.pretrain.config import DataConfig
    from ctssl.pretrain.views import CTViewMaker

    hu = np.random.default_rng(1).integers(-1000, 1500, (40, 40)).astype(np.int16)
    data = DataConfig()
    maker = CTViewMaker(data, [(32, (1.0, 1.0))], 3)
    rendered = maker.render(CTViewMaker.collate([hu], [CTViewMaker.identity(40, 40, channels=3)]))[0][0]
    spec = input_spec({"in_chans": 3, "method": "simclr", "data": {"windows": ["lung", "soft_tissue", "bone"]}},
                      "ct", 32)
    torch.testing.assert_close(rendered, prepare(hu, spec), atol=1e-5, rtol=1e-5)


def test_input_spec_follows_the_backbone_card(tmp_path):
    """Size and channels from what each backbone was pretrained with; grey pictures' backbones get one grey
    window replicated with ImageNet normalisation; the user's size wins; every rule is written down."""
    reference, _ = build_backbone("resnet50", 3)
    torch.save(reference.state_dict(), tmp_path / "radimagenet.pt")
    _, radimagenet = load_backbone(f"radimagenet:{tmp_path / 'radimagenet.pt'}")
    spec = input_spec(radimagenet, "ct")
    assert spec.size == 224 and spec.windows == ["wide"] * 3 and spec.mean == [0.485, 0.456, 0.406]
    assert "grey window 'wide' replicated" in spec.rule and "ImageNet normalisation" in spec.rule
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    _, imagenet = load_backbone(f"imagenet:resnet50:{tmp_path / 'resnet50.pth'}")
    assert input_spec(imagenet, "ct", grey_window="soft_tissue").windows == ["soft_tissue"] * 3
    ct_card = {"in_chans": 3, "method": "simclr", "data": {"kind": "ct", "image_size": 96,
                                                           "windows": ["lung", "soft_tissue", "bone"]},
               "config": {"data": {"normalize_mean": 0.5, "normalize_std": 0.5}}}
    spec = input_spec(ct_card, "ct")
    assert (spec.size, spec.windows, spec.mean) == (96, ["lung", "soft_tissue", "bone"], [0.5] * 3)
    assert "the pretraining view size" in spec.rule
    assert input_spec(ct_card, "ct", 64).size == 64 and "as set" in input_spec(ct_card, "ct", 64).rule
    minmax = input_spec({"in_chans": 3, "method": "simclr", "data": {"kind": "ct", "image_size": 256,
                                                                     "intensity": "minmax"}}, "ct")
    assert minmax.intensity == "minmax" and minmax.size == 256
    natural = input_spec({"in_chans": 3, "method": "simclr", "data": {"kind": "natural", "image_size": 96}}, "ct")
    assert natural.windows == ["wide"] * 3 and natural.mean == [0.485, 0.456, 0.406] and natural.size == 96
    random_init = input_spec({"in_chans": 3, "method": "random init", "data": {}}, "ct")
    assert random_init.size == 224 and random_init.windows == ["lung", "soft_tissue", "bone"]
    with pytest.raises(ValueError, match="window"):
        input_spec(radimagenet, "ct", grey_window="no-such-window")
