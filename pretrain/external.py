"""The library families of the backbone registry (``pretrain.backbones``): any timm model, any torchvision
classification model, Hugging Face ``transformers`` vision models (the ViT/DINOv2 family and ConvNeXt), each
from local weights only.

============================  ====================================================================
``timm:NAME``                 ``timm.create_model(NAME, pretrained=False, num_classes=0, in_chans=C)``
                              (``dynamic_img_size=True`` where the model takes it); weights: a
                              safetensors or torch file with timm's keys, its classifier dropped
``torchvision:NAME``          ``torchvision.models.get_model(NAME, weights=None)`` with its last
                              linear layer (``fc``, ``heads``, ``classifier``'s last ``Linear``)
                              replaced by ``Identity``: the pre-logits features
``hf:MODEL_TYPE``             ``AutoModel.from_config`` of the folder's ``config.json``; features:
                              the class token after the final LayerNorm (ViT, DINOv2: DINOv2's
                              ``pooler_output``), the pooled LayerNorm output (ConvNeXt's
                              ``pooler_output``); weights read by ``from_pretrained(DIR)``
============================  ====================================================================

Preprocessing is the library's: timm's ``pretrained_cfg`` (input size, mean, std, interpolation,
crop_pct), torchvision's weights entry's transforms (crop size, mean, std), the Hugging Face folder's
``preprocessor_config.json`` (``crop_size`` or ``size``, ``image_mean``, ``image_std``). Its input channels
are the weights' (the first layer's kernels). Nothing is downloaded (``pretrained=False``,
``local_files_only=True``): a missing file or folder is a one-line error.

U-Net encoders: a timm CNN's ``forward_intermediates`` (the maps ``features_only=True`` returns, at the
reductions of its ``feature_info``), which need a stride-32 map; a ViT (timm, torchvision-free, Hugging Face
ViT/DINOv2) through the simple feature pyramid on four evenly spaced blocks; Hugging Face ConvNeXt's stage
outputs (``output_hidden_states``). Anything else refuses in one line.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctssl.pretrain.architecture import Architecture, _load_strict, evenly_spaced, read_state, resnet_taps, vit_taps
from ctssl.pretrain.encoders import ResNetEncoder, SimplePyramid, ViTEncoder


def _strip_prefix(state: dict, prefix: str = "module.") -> dict:
    return {k.removeprefix(prefix): v for k, v in state.items()}


class TimmModel(Architecture):
    """Any timm model (``timm:NAME``)."""

    def __init__(self, name: str, config: dict | None = None):
        import timm

        if not timm.is_model(name):
            raise ValueError(f"Unknown timm model '{name}' (timm {timm.__version__}); timm.list_models('*{name[:6]}*') "
                             "lists similar names.")
        self.timm_name, self.name = name, f"timm:{name}"
        cfg = timm.models.get_pretrained_cfg(name)
        self.cfg = cfg.to_dict() if cfg is not None else {}
        self.first_conv = f"{self.cfg.get('first_conv', 'conv1')}.weight"
        classifier = self.cfg.get("classifier") or "head"
        self.head_prefixes = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))

    def _build(self, in_chans: int, drop_path: float):
        import timm

        kwargs = dict(pretrained=False, num_classes=0, in_chans=in_chans)
        if drop_path:
            kwargs["drop_path_rate"] = drop_path
        try:
            model = timm.create_model(self.timm_name, dynamic_img_size=True, **kwargs)
        except TypeError:
            model = timm.create_model(self.timm_name, **kwargs)
        self.kind = "vit" if _is_timm_vit(model) else "other"
        return model, model.num_features

    def taps(self, model, conv1=False):
        if _is_timm_vit(model):
            return vit_taps(model)
        names = [info["module"] for info in getattr(model, "feature_info", [])]
        if not names:
            return super().taps(model, conv1)
        return {name.replace(".", "_"): model.get_submodule(name) for name in names}

    def encoder(self, model):
        if _is_timm_vit(model):
            return ViTEncoder(model), SimplePyramid(model.num_features)
        if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
            return super().encoder(model)
        reductions = [int(info["reduction"]) for info in model.feature_info]
        if 32 not in reductions or len(set(reductions)) != len(reductions):
            raise ValueError(f"timm model '{self.timm_name}' gives features at strides {reductions}; the U-Net needs "
                             "distinct strides up to 32.")
        return TimmCNNEncoder(model, reductions), nn.Identity()

    def stages(self, model):
        return [model.patch_embed, *model.blocks] if _is_timm_vit(model) else None

    def preprocessing(self):
        cfg = self.cfg
        return {"size": int(cfg.get("input_size", (3, 224, 224))[-1]), "mean": list(cfg.get("mean", ())),
                "std": list(cfg.get("std", ())), "interpolation": cfg.get("interpolation"),
                "crop_pct": cfg.get("crop_pct"), "from": f"timm pretrained_cfg of {self.timm_name}"
                                                         f" ({cfg.get('tag') or 'default tag'})"}


def _is_timm_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "forward_intermediates") \
        and len({int(i["reduction"]) for i in getattr(model, "feature_info", [{"reduction": 0}])}) == 1


class TimmCNNEncoder(nn.Module):
    """A timm CNN's ``forward_intermediates`` maps keyed by stride (``{reduction: map}``)."""

    def __init__(self, backbone: nn.Module, reductions: list[int]):
        super().__init__()
        self.backbone, self.reductions = backbone, reductions

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        maps = self.backbone.forward_intermediates(x, intermediates_only=True)
        return dict(zip(self.reductions, maps))


HEADS = ("fc", "heads", "head", "classifier")


class TorchvisionModel(Architecture):
    """A torchvision classification model (``torchvision:NAME``) without its last linear layer."""

    def __init__(self, name: str, config: dict | None = None):
        import torchvision

        valid = torchvision.models.list_models(module=torchvision.models)
        if name not in valid:
            raise ValueError(f"Unknown torchvision classification model '{name}' (torchvision {torchvision.__version__}); "
                             f"valid names include {valid[:6]}... (torchvision.models.list_models()).")
        self.tv_name, self.name = name, f"torchvision:{name}"
        self.first_conv, self.head_prefixes = None, ()

    def _build(self, in_chans: int, drop_path: float):
        import torchvision

        model = torchvision.models.get_model(self.tv_name, weights=None)
        dim = self._drop_head(model)
        first = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
        self.first_conv = f"{first}.weight"
        if in_chans != 3:
            old = model.get_submodule(first)
            parent, _, leaf = first.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                              old.groups, old.bias is not None))
        self.kind = "resnet" if hasattr(model, "layer1") else "other"
        return model, dim

    def _drop_head(self, model: nn.Module) -> int:
        for attr in HEADS:
            head = getattr(model, attr, None)
            if isinstance(head, nn.Linear):
                setattr(model, attr, nn.Identity())
                self.head_prefixes = (f"{attr}.",)
                return head.in_features
            if isinstance(head, nn.Sequential):
                index = max((i for i, m in enumerate(head) if isinstance(m, nn.Linear)), default=None)
                if index is not None:
                    dim = head[index].in_features
                    head[index] = nn.Identity()
                    self.head_prefixes = (f"{attr}.{index}.",)
                    return dim
        raise ValueError(f"torchvision model '{self.tv_name}' has no linear classifier (fc, heads, classifier) to drop.")

    def taps(self, model, conv1=False):
        if hasattr(model, "layer1"):
            return resnet_taps(model, conv1)
        if hasattr(model, "encoder") and hasattr(model.encoder, "layers"):       # torchvision ViT
            layers = model.encoder.layers
            return {"conv_proj": model.conv_proj, **{f"block{i + 1}": layers[i] for i in evenly_spaced(len(layers))}}
        if isinstance(getattr(model, "features", None), nn.Sequential):         # ConvNeXt, EfficientNet, VGG, ...
            return {f"features{i}": m for i, m in enumerate(model.features)}
        return super().taps(model, conv1)

    def encoder(self, model):
        if hasattr(model, "layer1"):
            return ResNetEncoder(model), nn.Identity()
        return super().encoder(model)

    def stages(self, model):
        if hasattr(model, "layer1"):
            return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]
        return None

    def preprocessing(self):
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(self.tv_name).DEFAULT
        except (ValueError, AttributeError):
            return None
        t = weights.transforms()
        return {"size": int(t.crop_size[0]), "mean": list(t.mean), "std": list(t.std),
                "interpolation": str(t.interpolation.value), "resize": int(t.resize_size[0]),
                "from": f"torchvision {weights}.transforms()"}


class HFBackbone(nn.Module):
    """A Hugging Face vision model as a backbone: (B, C, H, W) -> (B, D) features (module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.pooled = _hf_layout(model.config) == "convnext"
        self.interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=x, **kwargs)
        return out.pooler_output.flatten(1) if self.pooled else out.last_hidden_state[:, 0]

    def hidden_states(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        return self.model(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states


def _hf_layout(config) -> str:
    if getattr(config, "hidden_sizes", None) and getattr(config, "depths", None):
        return "convnext"
    if getattr(config, "patch_size", None) and getattr(config, "hidden_size", None) and \
            getattr(config, "num_hidden_layers", None):
        return "vit"
    raise ValueError(f"Hugging Face model type '{config.model_type}' is not supported as a backbone: the ViT/DINOv2 "
                     "family and ConvNeXt are.")


class HFModel(Architecture):
    """A Hugging Face vision model (``hf:MODEL_TYPE``, its ``config.json`` as ``config``)."""

    def __init__(self, model_type: str, config: dict | None = None):
        if not config:
            raise ValueError(f"Backbone 'hf:{model_type}' needs its config.json (load it with the source hf:DIR).")
        self.name, self.config = f"hf:{model_type}", dict(config)

    def _config(self, in_chans: int):
        try:
            from transformers import AutoConfig
        except ImportError:
            raise ImportError("hf: backbones need transformers: pip install 'ctssl[hf]'.") from None
        fields = {k: v for k, v in self.config.items() if k != "model_type"}
        return AutoConfig.for_model(self.config["model_type"], **{**fields, "num_channels": in_chans})

    def _build(self, in_chans: int, drop_path: float):
        from transformers import AutoModel

        config = self._config(in_chans)
        if drop_path and hasattr(config, "drop_path_rate"):
            config.drop_path_rate = drop_path
        return self.wrap(AutoModel.from_config(config))

    def wrap(self, model: nn.Module) -> tuple[nn.Module, int]:
        layout = _hf_layout(model.config)
        prefix = "model.embeddings.patch_embeddings"
        self.first_conv = f"{prefix}.weight" if layout == "convnext" else f"{prefix}.projection.weight"
        backbone = HFBackbone(model)
        dim = model.config.hidden_sizes[-1] if layout == "convnext" else model.config.hidden_size
        backbone.__dict__["ctssl_architecture"] = self
        return backbone, int(dim)

    def build(self, in_chans: int, drop_path: float = 0.0):
        return self._build(in_chans, drop_path)

    def taps(self, model, conv1=False):
        m = model.model
        if _hf_layout(m.config) == "convnext":
            return {"stem": m.embeddings, **{f"stage{i + 1}": s for i, s in enumerate(m.encoder.stages)}}
        layers = m.encoder.layer
        return {"patch_embed": m.embeddings, **{f"block{i + 1}": layers[i] for i in evenly_spaced(len(layers))}}

    def encoder(self, model):
        if _hf_layout(model.model.config) == "convnext":
            return HFConvNeXtEncoder(model), nn.Identity()
        return HFViTEncoder(model), SimplePyramid(model.model.config.hidden_size)

    def stages(self, model):
        m = model.model
        blocks = m.encoder.stages if _hf_layout(m.config) == "convnext" else m.encoder.layer
        return [m.embeddings, *blocks]


class HFViTEncoder(nn.Module):
    """A Hugging Face ViT/DINOv2's tokens after four evenly spaced layers (final LayerNorm applied, class and
    register tokens dropped) as (B, D, H/16, W/16) maps (resized when the patch is not 16)."""

    def __init__(self, backbone: HFBackbone):
        super().__init__()
        self.backbone = backbone
        config = backbone.model.config
        self.indices = evenly_spaced(config.num_hidden_layers)
        if len(self.indices) != 4:
            raise ValueError(f"The ViT pyramid takes 4 evenly spaced blocks; this ViT has {config.num_hidden_layers}.")
        self.prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.patch = int(config.patch_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        states = self.backbone.hidden_states(x)
        norm = self.backbone.model.layernorm
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        maps = []
        for i in self.indices:
            tokens = norm(states[i + 1])[:, self.prefix:]
            m = tokens.transpose(1, 2).reshape(len(x), -1, h, w)
            maps.append(_to_stride16(m, x))
        return maps


def _to_stride16(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    size = (x.shape[-2] // 16, x.shape[-1] // 16)
    return m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)


class HFConvNeXtEncoder(nn.Module):
    """A Hugging Face ConvNeXt's stage outputs ``{4, 8, 16, 32: map}``."""

    def __init__(self, backbone: HFBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        states = self.backbone.hidden_states(x)[1:]
        return dict(zip((4, 8, 16, 32), states))


FAMILIES = {"timm": TimmModel, "torchvision": TorchvisionModel, "hf": HFModel}


def weights_in_chans(path: str, key: str) -> int:
    """The input channels of the first-layer kernels ``key`` in a weights file, without loading the rest of a
    safetensors file."""
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            names = [k for k in f.keys() if k.removeprefix("module.") == key]
            if not names:
                raise ValueError(f"Weights '{path}' have no first-layer kernels '{key}'.")
            return int(f.get_slice(names[0]).get_shape()[1])
    state = _strip_prefix(read_state(path))
    if key not in state:
        raise ValueError(f"Weights '{path}' have no first-layer kernels '{key}'.")
    return int(state[key].shape[1])


def load_library_weights(model: nn.Module, arch: Architecture, path: str) -> None:
    """timm or torchvision weights from a local file into ``model`` (built by ``arch``): the classifier's keys
    dropped, everything else strict."""
    state = _strip_prefix(read_state(path))
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(arch.head_prefixes)}
    _load_strict(model, state, path)


def hf_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"Hugging Face model folder '{folder}' has no config.json (save it with "
                                "model.save_pretrained(DIR)); nothing is downloaded.")
    return json.loads(path.read_text())


def load_hf(folder: str | Path) -> tuple[nn.Module, int]:
    """(backbone, feature_dim) of a local Hugging Face model folder (``from_pretrained``, offline)."""
    try:
        from transformers import AutoModel
    except ImportError:
        raise ImportError("hf: backbones need transformers: pip install 'ctssl[hf]'.") from None
    config = hf_config(folder)
    arch = HFModel(config["model_type"], config)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    return arch.wrap(model.float())


def hf_preprocessing(folder: str | Path, config: dict) -> dict:
    """size, mean, std from the folder's ``preprocessor_config.json`` (ImageNet's and ``config.json``'s
    ``image_size`` when it has none, said in ``from``)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        from ctssl.pretrain.architecture import IMAGENET_MEAN, IMAGENET_STD

        return {"size": int(config.get("image_size") or 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                "from": "no preprocessor_config.json: ImageNet mean/std and config.json's image_size assumed"}
    p = json.loads(path.read_text())
    size = p.get("crop_size") if p.get("do_center_crop", True) and p.get("crop_size") else p.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    return {"size": int(size or config.get("image_size") or 224), "mean": list(p.get("image_mean") or []),
            "std": list(p.get("image_std") or []), "resample": p.get("resample"),
            "from": f"{path.name} ({p.get('image_processor_type', 'image processor')})"}
