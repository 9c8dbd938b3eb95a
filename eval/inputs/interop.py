"""Exports other tools load: a backbone (any source, ``pretrain.sources``) written in the layout of timm,
torchvision, MONAI or Hugging Face, with ``preprocessing.json`` beside the weights (docs/export.md).

=============  =====================================================  =========================================
format         writes                                                 backbones
=============  =====================================================  =========================================
``timm``       ``model.safetensors`` (timm's keys, no classifier)      ctssl resnet18/50 and vit_s16, timm:NAME
``torchvision````model.pth`` (a torchvision state dict, no ``fc``)     ctssl resnet18/50, torchvision:NAME
``monai``      ``encoder.pth`` (``FlexibleUNet(...).encoder``'s keys)  ResNet-50 (ctssl, torchvision:, timm:)
``hf``         ``config.json``, ``model.safetensors``,                 hf:DIR sources (and their fine-tuned or
               ``preprocessor_config.json`` (``save_pretrained``)     continued exports)
=============  =====================================================  =========================================

``preprocessing.json``: the input the backbone expects, as ``eval.inputs.spec`` prepares it for CT: the
channels, each channel's window with its level and width in HU (or the per-slice min-max), the
normalisation mean and std per channel, the input size, and the one line that loads the export. A format a
backbone cannot take is refused in one line: MONAI's ResNet-18 encoder has parameter-free shortcuts (MONAI's
shortcut type A) that torchvision's ResNet-18 weights do not fit; only the ResNet-50 encoder takes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ctssl.core.atomic import atomic_write_text

FORMATS = ("timm", "torchvision", "monai", "hf")
TIMM_NAMES = {"resnet18": "resnet18", "resnet50": "resnet50", "vit_s16": "vit_small_patch16_224"}


def preprocessing(card: dict) -> dict:
    """The CT input of ``card``'s backbone (``eval.inputs.spec.input_spec``) with windows as level and width in
    HU."""
    from ctssl.data.windowing import get_window
    from ctssl.eval.inputs.spec import input_spec

    spec = input_spec(card, "ct")
    windows = [{"name": n, "level_hu": get_window(n)[0], "width_hu": get_window(n)[1],
                "range_hu": [get_window(n)[0] - get_window(n)[1] / 2, get_window(n)[0] + get_window(n)[1] / 2]}
               for n in spec.windows]
    return {"in_chans": spec.in_chans, "size": spec.size, "intensity": spec.intensity,
            "windows": windows if spec.intensity == "windows" else None, "mean": spec.mean, "std": spec.std,
            "rule": spec.rule, "how": "HU clipped to each window, scaled to [0, 1], then (x - mean) / std per channel"}


def _refuse(fmt: str, card: dict, why: str = "") -> ValueError:
    return ValueError(f"Backbone {card['backbone']} cannot be exported --format {fmt}{': ' + why if why else ''}; "
                      f"formats by backbone: timm (resnet18, resnet50, vit_s16, timm:NAME), torchvision (resnet18, "
                      f"resnet50, torchvision:NAME), monai (ResNet-50), hf (hf:DIR).")


def _timm_name(card: dict) -> str | None:
    name = card["backbone"]
    return TIMM_NAMES.get(name) or (name.split(":", 1)[1] if name.startswith("timm:") else None)


def _is_resnet50(card: dict) -> bool:
    return card["backbone"] in ("resnet50", "torchvision:resnet50", "timm:resnet50")


def export(source: str, fmt: str, out: str | Path) -> Path:
    """``source``'s backbone written as ``fmt`` into folder ``out`` (module docstring); returns the weights path."""
    from safetensors.torch import save_file

    from ctssl.pretrain.sources import load_backbone

    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format '{fmt}'. Valid formats are {list(FORMATS)}.")
    model, card = load_backbone(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    c = card["in_chans"]
    if fmt == "timm":
        name = _timm_name(card)
        if name is None:
            raise _refuse(fmt, card)
        path = out / "model.safetensors"
        save_file(state, str(path))
        load = f'timm.create_model("{name}", pretrained=False, num_classes=0, in_chans={c}, checkpoint_path="{path}")'
    elif fmt == "torchvision":
        if card["backbone"] in ("resnet18", "resnet50"):
            name = card["backbone"]
        elif card["backbone"].startswith("torchvision:"):
            name = card["backbone"].split(":", 1)[1]
        else:
            raise _refuse(fmt, card)
        path = out / "model.pth"
        torch.save(state, path)
        conv = "" if c == 3 else f"m.conv1 = torch.nn.Conv2d({c}, 64, 7, 2, 3, bias=False); "
        load = (f'm = torchvision.models.get_model("{name}", weights=None); {conv}m.fc = torch.nn.Identity(); '
                f'm.load_state_dict(torch.load("{path}", weights_only=True))')
    elif fmt == "monai":
        if not _is_resnet50(card):
            raise _refuse(fmt, card, "MONAI's FlexibleUNet takes torchvision-layout weights for its ResNet-50 "
                                     "encoder only (its ResNet-18 has parameter-free shortcuts)")
        path = out / "encoder.pth"
        torch.save(state, path)
        load = (f'net = monai.networks.nets.FlexibleUNet(in_channels={c}, out_channels=K, backbone="resnet50", '
                f'pretrained=False, spatial_dims=2); net.encoder.load_state_dict(torch.load("{path}", '
                'weights_only=True))')
    else:
        if not card["backbone"].startswith("hf:"):
            raise _refuse(fmt, card)
        model.model.save_pretrained(out)
        prep = card.get("preprocessing") or {}
        atomic_write_text(out / "preprocessor_config.json", json.dumps({
            "image_mean": prep.get("mean"), "image_std": prep.get("std"), "do_center_crop": True,
            "crop_size": {"height": prep.get("size"), "width": prep.get("size")},
            "size": {"shortest_edge": prep.get("size")}, "image_processor_type": "BitImageProcessor"}, indent=1) + "\n")
        path = out / "model.safetensors"
        load = f'transformers.AutoModel.from_pretrained("{out}")'
    info = {"format": fmt, "source": source, "backbone": card["backbone"], "weights": path.name,
            "weights_sha256": card.get("weights_sha256"), "method": card.get("method"),
            "init": card.get("init"), "load": load, "input": preprocessing(card)}
    atomic_write_text(out / "preprocessing.json", json.dumps(info, indent=1, default=str) + "\n")
    return path
