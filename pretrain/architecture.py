"""The registry's interface (``Architecture``: what every stage asks of a backbone; ``pretrain.backbones``) and
the helpers its entries share: layer-tap rules, reading weights files, strict loading, ImageNet's normalisation."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class Architecture:
    """One registry entry (module docstring). Subclasses set ``name``, ``kind`` ("resnet", "vit" or "other":
    the fine-tuning truncation rules) and ``first_conv``, and implement ``_build``."""

    name: str = ""
    kind: str = "other"
    first_conv: str | None = None
    config: dict | None = None      # what rebuilds the architecture beyond its name (Hugging Face: config.json)

    def build(self, in_chans: int, drop_path: float = 0.0) -> tuple[nn.Module, int]:
        model, dim = self._build(in_chans, drop_path)
        model.__dict__["ctssl_architecture"] = self    # a plain attribute: kept by deepcopy, not in the state dict
        return model, dim

    def _build(self, in_chans: int, drop_path: float) -> tuple[nn.Module, int]:
        raise NotImplementedError

    def taps(self, model: nn.Module, conv1: bool = False) -> dict[str, nn.Module]:
        raise ValueError(f"No layer taps for backbone '{self.name}': similarity needs a ResNet, a ViT, a timm model "
                         "with feature_info or a Hugging Face ViT/DINOv2/ConvNeXt.")

    def encoder(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        raise ValueError(f"Backbone '{self.name}' gives no multi-scale features for a U-Net (a CNN with stages at "
                         "strides 4-32 or a ViT is needed); use a timm CNN, a ResNet or a ViT.")

    def stages(self, model: nn.Module) -> list[nn.Module] | None:
        return None

    def preprocessing(self) -> dict | None:
        return None

    def in_chans(self, model: nn.Module) -> int:
        return int(model.get_parameter(self.first_conv).shape[1])


def resnet_taps(model: nn.Module, conv1: bool = False) -> dict[str, nn.Module]:
    """The stem's output (or the first convolution's) and each stage's, of a torchvision-style ResNet."""
    first = {"conv1": model.conv1} if conv1 else {"stem": model.maxpool}
    return {**first, "layer1": model.layer1, "layer2": model.layer2, "layer3": model.layer3, "layer4": model.layer4}


def evenly_spaced(depth: int, count: int = 4) -> list[int]:
    """Indices of ``count`` evenly spaced blocks of ``depth`` (the last one included): 12 -> 2, 5, 8, 11."""
    return sorted({max(0, round(depth * (k + 1) / count) - 1) for k in range(count)})


def vit_taps(model: nn.Module) -> dict[str, nn.Module]:
    """A timm ViT's patch embedding and four evenly spaced blocks."""
    return {"patch_embed": model.patch_embed, **{f"block{i + 1}": model.blocks[i] for i in evenly_spaced(len(model.blocks))}}


def read_state(path: str) -> dict:
    """A state dict from a ``.safetensors`` file or a torch file (``weights_only``), unwrapped from a
    ``state_dict``/``model`` entry."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def _load_strict(model: nn.Module, state: dict, source: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Weights in '{source}' do not fit the backbone: missing keys {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}.")
