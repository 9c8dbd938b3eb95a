"""ctssl export: a CT backbone (ResNet-50, 1 channel) loads in timm, torchvision and MONAI's FlexibleUNet, a
Hugging Face one in transformers, each giving ctssl's outputs; preprocessing.json holds the windows in HU."""

from __future__ import annotations

import json

import pytest
import torch

from ctssl.cli.main import main
from ctssl.pretrain.sources import load_backbone
from ctssl.pretrain.backbones import build_backbone
from ctssl.pretrain.checkpoint import export_backbone
from tests.helpers import ExportHolder


@pytest.fixture(scope="module")
def ct_resnet50(tmp_path_factory):
    torch.manual_seed(4)
    backbone, _ = build_backbone("resnet50", 1)
    for m in backbone.modules():       # non-trivial BatchNorm statistics, so that eval mode is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    card = {"backbone": "resnet50", "in_chans": 1, "method": "dino", "data": {"kind": "ct", "windows": ["lung"],
                                                                              "image_size": 32}}
    path = export_backbone(ExportHolder(backbone), tmp_path_factory.mktemp("ct50"), card)
    return str(path), backbone.eval()


def _export(source, fmt, out, capsys):
    assert main(["export", source, "--format", fmt, "--out", str(out)]) == 0
    assert "load: " in capsys.readouterr().out
    return json.loads((out / "preprocessing.json").read_text())


def test_timm_torchvision_and_monai_load_the_export_with_equal_outputs(ct_resnet50, tmp_path, capsys):
    import timm
    import torchvision
    from monai.networks.nets import FlexibleUNet

    source, ours = ct_resnet50
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
    info = _export(source, "timm", tmp_path / "timm", capsys)
    assert info["input"]["windows"] == [{"name": "lung", "level_hu": -600.0, "width_hu": 1500.0,
                                         "range_hu": [-1350.0, 150.0]}]
    assert info["input"]["in_chans"] == 1 and len(info["input"]["mean"]) == 1
    m = timm.create_model("resnet50", pretrained=False, num_classes=0, in_chans=1,
                          checkpoint_path=str(tmp_path / "timm" / "model.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-5)

    _export(source, "torchvision", tmp_path / "tv", capsys)
    m = torchvision.models.get_model("resnet50", weights=None)
    m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load(tmp_path / "tv" / "model.pth", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), expected, rtol=0, atol=1e-5)

    _export(source, "monai", tmp_path / "monai", capsys)
    net = FlexibleUNet(in_channels=1, out_channels=2, backbone="resnet50", pretrained=False, spatial_dims=2)
    net.encoder.load_state_dict(torch.load(tmp_path / "monai" / "encoder.pth", weights_only=True))   # strict
    with torch.no_grad():
        torch.testing.assert_close(net.encoder.eval()(x)[-1].mean(dim=(2, 3)), expected, rtol=0, atol=1e-5)


def test_hugging_face_export_and_refusals(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="the hf extra")
    from tests.library_backbones import hf_dinov2, torchvision_resnet18

    folder, _ = hf_dinov2(tmp_path)
    ours, _ = load_backbone(f"hf:{folder}")
    info = _export(f"hf:{folder}", "hf", tmp_path / "hf", capsys)
    assert info["input"]["size"] == 32 and info["input"]["windows"][0]["name"] == "wide"
    m = transformers.AutoModel.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(pixel_values=x).pooler_output, ours.eval()(x), rtol=0, atol=1e-5)
    weights, _ = torchvision_resnet18(tmp_path)
    assert main(["export", f"torchvision:resnet18:{weights}", "--format", "monai", "--out", str(tmp_path / "m")]) == 2
    assert "parameter-free shortcuts" in capsys.readouterr().err
