"""Backbone sources (pretrain.sources): random init reproducible, RadImageNet keys mapped, ImageNet files
and ctssl checkpoints read with their cards."""

from __future__ import annotations

import pytest
import torch

from ctssl.pretrain.sources import load_backbone, radimagenet_state_dict
from ctssl.pretrain.backbones import build_backbone
from tests.helpers import ExportHolder


def test_random_source_is_reproducible_and_radimagenet_keys_map(tmp_path):
    a, card = load_backbone("random:resnet18:1")
    b, _ = load_backbone("random:resnet18:1")
    c, _ = load_backbone("random:resnet18:1:5")
    assert card["in_chans"] == 1 and torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    # A RadImageNet-style checkpoint: torchvision children under backbone.<index>.
    reference, _ = build_backbone("resnet50", 3)
    names = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    state = {}
    for key, value in reference.state_dict().items():
        head, rest = key.split(".", 1)
        state[f"module.backbone.{names[head]}.{rest}"] = value
    state["module.fc.weight"] = torch.zeros(1, 2048)
    assert radimagenet_state_dict({"state_dict": state}).keys() == reference.state_dict().keys()
    torch.save(state, tmp_path / "RadImageNet-ResNet50.pt")
    model, card = load_backbone(f"radimagenet:{tmp_path / 'RadImageNet-ResNet50.pt'}")
    torch.testing.assert_close(model.layer3[0].conv2.weight, reference.layer3[0].conv2.weight)
    assert card["mean"] == [0.485, 0.456, 0.406] and len(card["weights_sha256"]) == 64
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("imagenet:resnet50:/nonexistent/resnet50.pth")


def test_imagenet_file_and_ctssl_checkpoint_sources(tmp_path):
    """imagenet:NAME:FILE takes torchvision's state dict (fc dropped); a checkpoint .pt is read
    with the run's config.yaml for the architecture."""
    from omegaconf import OmegaConf
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18-imagenet.pth")
    model, card = load_backbone(f"imagenet:resnet18:{tmp_path / 'resnet18-imagenet.pth'}")
    torch.testing.assert_close(model.layer2[1].conv1.weight, reference.layer2[1].conv1.weight)
    assert card["method"] == "supervised ImageNet" and card["mean"] == [0.485, 0.456, 0.406]

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    backbone, _ = build_backbone("resnet18", 1)
    torch.save({"backbone": backbone.state_dict(), "step": 7}, run / "checkpoints" / "last.pt")
    OmegaConf.save({"model": {"backbone": "resnet18"}, "method": {"name": "dino"},
                    "data": {"shards": "s", "windows": ["lung"]},
                    "resolved": {"in_chans": 1, "data_kind": "ct"}}, run / "config.yaml")
    model, card = load_backbone(str(run / "checkpoints" / "last.pt"))
    assert card["method"] == "dino" and card["in_chans"] == 1 and card["data"]["windows"] == ["lung"]
    torch.testing.assert_close(model.conv1.weight, backbone.conv1.weight)
    with pytest.raises(ValueError, match="must be .safetensors"):
        (tmp_path / "weights.bin").write_bytes(b"0")
        load_backbone(str(tmp_path / "weights.bin"))


@pytest.fixture
def exported(tmp_path):
    """(backbone.safetensors path, the backbone) of a ResNet-18 exported with a CT card."""
    from ctssl.pretrain.checkpoint import export_backbone

    torch.manual_seed(3)
    backbone, _ = build_backbone("resnet18", 3)
    card = {"backbone": "resnet18", "in_chans": 3, "method": "simclr",
            "data": {"kind": "ct", "windows": ["lung", "soft_tissue", "bone"]}}
    (tmp_path / "export").mkdir()
    return export_backbone(ExportHolder(backbone), tmp_path / "export", card), backbone


def test_exported_backbone_round_trips(exported, tmp_path):
    path, backbone = exported
    loaded, loaded_card = load_backbone(str(path))
    assert loaded_card["method"] == "simclr" and len(loaded_card["weights_sha256"]) == 64
    for a, b in zip(backbone.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="card"):
        load_backbone(str(copy))
