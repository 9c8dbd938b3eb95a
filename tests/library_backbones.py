"""Library backbones saved locally with random weights (nothing downloaded), as users bring released ones: a timm
ConvNeXt-atto (classifier included), a torchvision ResNet-18 and a 4-layer Hugging Face DINOv2 (patch 8) with
its preprocessor_config.json. ``library_sources(folder)`` -> [(source, the library's own pooled-feature
function)]."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def timm_convnext(folder: Path, in_chans: int = 3):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, in_chans=in_chans)
    path = Path(folder) / f"convnext_atto_{in_chans}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.eval()


def torchvision_resnet18(folder: Path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    model = resnet18(weights=None)
    path = Path(folder) / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def hf_dinov2(folder: Path):
    import transformers

    torch.manual_seed(2)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8)
    model = transformers.Dinov2Model(config)
    out = Path(folder) / "dinov2-tiny"
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"shortest_edge": 36}}))
    return out, model.eval()


def library_sources(folder: Path) -> list[tuple[str, object]]:
    """[(source, reference)]: each library's own forward to pooled features (timm's ``forward_head(...,
    pre_logits=True)``, torchvision's ``create_feature_extractor`` at ``flatten``, transformers' reloaded
    ``AutoModel``'s ``pooler_output``)."""
    import transformers
    from torchvision.models.feature_extraction import create_feature_extractor

    timm_path, timm_model = timm_convnext(folder)
    tv_path, tv_model = torchvision_resnet18(folder)
    hf_path, _ = hf_dinov2(folder)
    tv_features = create_feature_extractor(tv_model, return_nodes={"flatten": "f"})
    hf_model = transformers.AutoModel.from_pretrained(str(hf_path), local_files_only=True).eval()
    return [
        (f"timm:convnext_atto:{timm_path}",
         lambda x: timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)),
        (f"torchvision:resnet18:{tv_path}", lambda x: tv_features(x)["f"]),
        (f"hf:{hf_path}?arm=medical", lambda x: hf_model(pixel_values=x).pooler_output),
    ]
