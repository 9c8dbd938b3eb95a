"""Library backbones (pretrain.external through pretrain.sources): a timm ConvNeXt, a torchvision ResNet-18
and a tiny Hugging Face DINOv2, random weights saved locally, load with their library's preprocessing and give
the features of their library's own forward; every stage gets what it needs from the registry entry."""

from __future__ import annotations


import pytest
import torch

from ctssl.eval.features.layers import layer_modules, spatial_activations
from ctssl.pretrain.sources import backbone_card, load_backbone, pretraining_arm
from ctssl.eval.inputs.spec import input_spec
from ctssl.finetune.finetune import Classifier
from ctssl.finetune.unet import build_unet
from tests.library_backbones import library_sources, timm_convnext

transformers = pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra (transformers)")


def test_library_sources_equal_their_library_forward_and_carry_preprocessing(tmp_path, capsys):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    diffs = {}
    for source, reference in library_sources(tmp_path):
        model, card = load_backbone(source)
        with torch.no_grad():
            ours, theirs = model.eval()(x), reference(x)
        diffs[source.split(":")[0]] = float((ours - theirs).abs().max())
        assert ours.shape == theirs.shape and diffs[source.split(":")[0]] < 1e-5, (source, diffs)
        assert card == {**backbone_card(source), "weights_sha256": card["weights_sha256"]}
        assert card["preprocessing"]["in_chans"] == 3 and len(card["preprocessing"]["mean"]) == 3
    print("max abs feature difference against each library:", diffs)
    timm_card = backbone_card(library_sources(tmp_path)[0][0])
    assert timm_card["preprocessing"]["size"] == 224 and "pretrained_cfg" in timm_card["preprocessing"]["from"]
    assert pretraining_arm(timm_card) == "natural" and timm_card["arm_rule"].startswith("inferred")
    hf_card = backbone_card(f"hf:{tmp_path / 'dinov2-tiny'}?arm=medical")
    assert pretraining_arm(hf_card) == "medical" and hf_card["preprocessing"]["size"] == 32
    spec = input_spec(hf_card, "ct")
    assert spec.size == 32 and spec.windows == ["wide"] * 3 and "preprocessor_config.json" in spec.rule
    tv_card = backbone_card(library_sources(tmp_path)[1][0])
    assert tv_card["preprocessing"]["size"] == 224 and tv_card["preprocessing"]["resize"] == 256


def test_one_channel_weights_and_missing_files_are_one_line(tmp_path):
    path, _ = timm_convnext(tmp_path, in_chans=1)
    model, card = load_backbone(f"timm:convnext_atto:{path}")
    assert card["in_chans"] == 1 and model(torch.zeros(1, 1, 32, 32)).shape == (1, 320)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        backbone_card(f"timm:convnext_atto:{tmp_path / 'absent.safetensors'}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        backbone_card(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="Unknown timm model"):
        backbone_card(f"timm:no_such_net:{path}")


def test_every_stage_gets_what_it_needs_from_the_registry(tmp_path):
    """Layer taps, fine-tuning's classifier (with layer-wise decay where the entry names stages) and the U-Net,
    for each library source; a torchvision model without stages refuses the U-Net in one line."""
    x = torch.randn(2, 3, 32, 32)
    for source, _ in library_sources(tmp_path):
        model, card = load_backbone(source)
        taps = layer_modules(model)
        acts = spatial_activations(model, x, positions=8)
        assert len(taps) >= 4 and set(acts) == set(layer_modules(model, conv1=True))
        classifier = Classifier(model, card["backbone"], 0, 3, 32)
        assert classifier(x).shape == (2, 3)
        unet = build_unet(model, card["backbone"], 3)
        assert unet(x).shape == (2, 3, 32, 32)
        assert unet.export_backbone.state_dict().keys() == model.state_dict().keys()
    from torchvision.models import mobilenet_v3_small

    torch.save(mobilenet_v3_small(weights=None).state_dict(), tmp_path / "mnv3.pth")
    mobile, _ = load_backbone(f"torchvision:mobilenet_v3_small:{tmp_path / 'mnv3.pth'}")
    with pytest.raises(ValueError, match="no multi-scale features"):
        build_unet(mobile, "torchvision:mobilenet_v3_small", 3)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vit_s16", "timm:convnext_atto", "timm:resnet18",
                                  "torchvision:resnet18"])
def test_every_registry_entry_through_every_stage(name):
    """The contract over registry entries (timm's pattern): built with 1 channel, each gives pooled features of its
    stated width, layer taps, a classifier with layer-wise lr decay where it names stages, and a U-Net."""
    from ctssl.pretrain.backbones import architecture_of, build_backbone

    model, dim = build_backbone(name, 1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, dim)
    arch = architecture_of(model)
    assert arch.in_chans(model) == 1 and len(layer_modules(model)) >= 4
    llrd = 0.5 if arch.stages(model) is not None else 1.0
    classifier = Classifier(model, name, 0, 2, 32, in_chans=1)
    assert classifier(x).shape == (2, 2) and len(classifier.param_groups(1e-3, llrd, 0.05)) >= 2
    assert build_unet(model, name, 2)(x).shape == (2, 2, 32, 32)
