"""Backbones: torchvision ResNet-18/50 and a timm ViT-S/16, any number of input channels.

``build_backbone(name, in_chans, init, weights)`` returns ``(module, feature_dim)``; the module
maps (B, C, H, W) to (B, feature_dim) pooled features. Initialisation:

- ``scratch``: random;
- ``imagenet``: a *local* weights file (nothing is downloaded): torchvision's state dict for the
  ResNets (e.g. ``resnet50-11ad3fa6.pth``), timm's for the ViT. The first layer's RGB kernels are
  adapted to ``in_chans`` (summed for 1 channel, repeated and rescaled otherwise, as timm's
  ``adapt_input_conv``);
- ``checkpoint``: a ctssl pretraining checkpoint (``.pt``) or an exported ``.safetensors``.

Loading is strict: missing or unexpected keys are an error naming them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

BACKBONES: dict[str, Callable[[int], tuple[nn.Module, int]]] = {}


def register(name: str):
    def wrap(fn):
        BACKBONES[name] = fn
        return fn
    return wrap


@register("resnet18")
def _resnet18(in_chans: int):
    from torchvision.models import resnet18

    return _resnet(resnet18(weights=None), in_chans), 512


@register("resnet50")
def _resnet50(in_chans: int):
    from torchvision.models import resnet50

    return _resnet(resnet50(weights=None), in_chans), 2048


def _resnet(model: nn.Module, in_chans: int) -> nn.Module:
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model


@register("vit_s16")
def _vit_s16(in_chans: int, drop_path: float = 0.0):
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                              in_chans=in_chans, dynamic_img_size=True, drop_path_rate=drop_path)
    return model, model.num_features


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB first-layer kernels (O, 3, k, k) for ``in_chans`` inputs (timm's rule)."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


FIRST_CONV = {"resnet18": "conv1.weight", "resnet50": "conv1.weight", "vit_s16": "patch_embed.proj.weight"}


def load_imagenet(model: nn.Module, name: str, path: str | None, in_chans: int) -> None:
    if not path:
        raise FileNotFoundError(
            "model.init=imagenet needs a local weights file: set model.weights=/path/to/file "
            "(e.g. torchvision's resnet50-11ad3fa6.pth). Nothing is downloaded at run time.")
    if not Path(path).is_file():
        raise FileNotFoundError(f"ImageNet weights file '{path}' does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "heads."))}
    conv = FIRST_CONV[name]
    if conv in state:
        state[conv] = adapt_input_conv(state[conv], in_chans)
    _load_strict(model, state, path)


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Backbone weights from a ctssl checkpoint (.pt) or an exported .safetensors file."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist (model.weights).")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if "backbone" not in checkpoint:
            raise ValueError(f"'{path}' is not a ctssl checkpoint (no 'backbone' entry).")
        state = checkpoint["backbone"]
    _load_strict(model, state, path)


def _load_strict(model: nn.Module, state: dict, source: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Weights in '{source}' do not fit the backbone: missing keys {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}.")


def build_backbone(name: str, in_chans: int, init: str = "scratch", weights: str | None = None,
                   drop_path: float = 0.0):
    """(module, feature_dim) for backbone ``name`` with ``in_chans`` input channels; ``drop_path``
    (stochastic depth) applies to ViTs."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone '{name}'. Valid backbones are {sorted(BACKBONES)}.")
    model, dim = BACKBONES[name](in_chans, drop_path) if drop_path else BACKBONES[name](in_chans)
    if init == "imagenet":
        load_imagenet(model, name, weights, in_chans)
    elif init == "checkpoint":
        load_backbone_weights(model, weights)
    elif init != "scratch":
        raise ValueError(f"Unknown init '{init}'. Valid inits are ['scratch', 'imagenet', 'checkpoint'].")
    return model, dim
