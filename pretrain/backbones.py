"""Backbones: one registry of architectures; every stage asks its entry for what it needs.

An ``Architecture`` is what pretraining, extraction, layer taps, fine-tuning and the U-Net need of a backbone:

- ``build(in_chans, drop_path)`` -> ``(module, feature_dim)``; the module maps (B, C, H, W) to (B, feature_dim)
  pooled features (the network without its classifier: timm's ``num_classes=0``);
- ``first_conv``: the state-dict key of the input layer's kernels (adapted to ``in_chans`` when RGB weights load);
- ``taps(model, conv1)``: the named modules whose outputs representation similarity compares;
- ``encoder(model)``: ``(encoder, neck)`` for the U-Net (``finetune.unet``), the encoder giving feature maps by
  stride (a CNN's stages) or, for a ViT, four stride-16 token maps that the neck (the simple feature pyramid)
  turns into strides 4-32; an architecture without multi-scale features refuses in one line;
- ``stages(model)``: the parameter groups from input to output (layer-wise lr decay, truncation), or None;
- ``preprocessing()``: the input its library's weights expect (size, mean/std, interpolation), or None.

Entries: ``resnet18``, ``resnet50`` (torchvision) and ``vit_s16`` (timm ViT-S/16), ctssl's own; and three
families whose name carries the library's architecture (``pretrain.external``): ``timm:NAME`` (any timm model),
``torchvision:NAME`` (a torchvision classification model) and ``hf:MODEL_TYPE`` (a Hugging Face
``transformers`` vision model; its ``config.json`` is the entry's ``config``). ``architecture(name, config)``
resolves either; ``build_backbone`` tags the module it builds with its entry, so ``architecture_of(model)``
answers every later stage. Adding a backbone is one entry here (or one family in ``pretrain.external``).

Initialisation (``build_backbone``):

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

import torch
from torch import nn

from ctssl.pretrain.architecture import (Architecture, _load_strict, evenly_spaced, read_state, resnet_taps,  # noqa: F401
                                         vit_taps)
from ctssl.pretrain.encoders import ResNetEncoder, SimplePyramid, ViTEncoder


class TorchvisionResNet(Architecture):
    kind, first_conv = "resnet", "conv1.weight"

    def __init__(self, name: str, dim: int):
        self.name, self.dim = name, dim

    def _build(self, in_chans: int, drop_path: float):
        import torchvision

        model = torchvision.models.get_model(self.name, weights=None)
        if in_chans != 3:
            model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        model.fc = nn.Identity()
        return model, self.dim

    def taps(self, model, conv1=False):
        return resnet_taps(model, conv1)

    def encoder(self, model):
        return ResNetEncoder(model), nn.Identity()

    def stages(self, model):
        return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]


class TimmViTS16(Architecture):
    name, kind, first_conv = "vit_s16", "vit", "patch_embed.proj.weight"

    def _build(self, in_chans: int, drop_path: float):
        import timm

        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                                  in_chans=in_chans, dynamic_img_size=True, drop_path_rate=drop_path)
        return model, model.num_features

    def taps(self, model, conv1=False):
        return vit_taps(model)

    def encoder(self, model):
        return ViTEncoder(model), SimplePyramid(model.num_features)

    def stages(self, model):
        return [model.patch_embed, *model.blocks]


from ctssl.pretrain.external import FAMILIES  # noqa: E402  (the library families: entries built from a name)

BACKBONES: dict[str, Architecture] = {
    "resnet18": TorchvisionResNet("resnet18", 512),
    "resnet50": TorchvisionResNet("resnet50", 2048),
    "vit_s16": TimmViTS16(),
}


def architecture(name: str, config: dict | None = None) -> Architecture:
    """The registry entry for ``name``: one of ``BACKBONES`` or ``FAMILY:NAME`` of ``pretrain.external``."""
    if name in BACKBONES:
        return BACKBONES[name]
    family, _, rest = name.partition(":")
    if family in FAMILIES and rest:
        return FAMILIES[family](rest, config)
    raise ValueError(f"Unknown backbone '{name}'. Valid backbones are {sorted(BACKBONES)} or "
                     f"{[f + ':NAME' for f in FAMILIES]}.")


def architecture_of(model: nn.Module) -> Architecture:
    """The entry a module was built from (``build_backbone``); an untagged torchvision ResNet or timm ViT is
    recognised by its layers."""
    arch = model.__dict__.get("ctssl_architecture")
    if arch is not None:
        return arch
    if hasattr(model, "layer1"):
        return BACKBONES["resnet50"]
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return BACKBONES["vit_s16"]
    raise ValueError(f"{type(model).__name__} was not built by ctssl.pretrain.backbones.build_backbone and is no "
                     "ResNet or ViT: its architecture is unknown.")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB first-layer kernels (O, 3, k, k) for ``in_chans`` inputs (timm's rule)."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


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
    conv = architecture(name).first_conv
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


def build_backbone(name: str, in_chans: int, init: str = "scratch", weights: str | None = None,
                   drop_path: float = 0.0, config: dict | None = None):
    """(module, feature_dim) for backbone ``name`` (``architecture``; ``config`` for a Hugging Face one) with
    ``in_chans`` input channels; ``drop_path`` (stochastic depth) applies to ViTs."""
    arch = architecture(name, config)
    model, dim = arch.build(in_chans, drop_path)
    if init == "imagenet":
        load_imagenet(model, name, weights, in_chans)
    elif init == "checkpoint":
        load_backbone_weights(model, weights)
    elif init != "scratch":
        raise ValueError(f"Unknown init '{init}'. Valid inits are ['scratch', 'imagenet', 'checkpoint'].")
    return model, dim


INITS = ("scratch", "imagenet", "checkpoint")


def is_init_source(init: str) -> bool:
    """``model.init`` names a backbone source (continued pretraining) rather than one of ``INITS``."""
    return init not in INITS


@torch.no_grad()
def feature_dim(model: nn.Module, in_chans: int, size: int = 64) -> int:
    """The pooled feature width of ``model``, from one small forward in eval mode."""
    was = model.training
    model.eval()
    dim = int(model(torch.zeros(1, in_chans, size, size)).shape[1])
    model.train(was)
    return dim
