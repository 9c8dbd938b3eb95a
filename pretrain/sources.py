"""Backbone sources for evaluation: one string names where a frozen or fine-tuned backbone comes from.

============================================  =================================================
``random:NAME:IN_CHANS[:SEED]``               random initialisation (the baseline to beat), seed 0
                                              unless given, so it is the same network every time
``imagenet:NAME:FILE``                        torchvision's / timm's ImageNet weights, local file
``radimagenet:FILE``                          a RadImageNet ResNet-50 PyTorch checkpoint (below)
``timm:NAME:FILE``                            any timm model, weights from a local safetensors/torch file
``torchvision:NAME:FILE``                     a torchvision classification model, local weights
``hf:DIR``                                    a Hugging Face model folder (config.json + weights; ViT,
                                              DINOv2, ConvNeXt; ``pip install 'ctssl[hf]'``)
``FILE.safetensors``                          ctssl's export (``backbone.json`` card beside it)
``FILE.pt``                                   a ctssl pretraining checkpoint (``last.pt``); its
                                              ``config.yaml`` beside it says the architecture
============================================  =================================================

The library sources (``pretrain.external``) carry the library's preprocessing in the card (``preprocessing``:
size, mean/std, interpolation, and where it was read) and their input channels from the weights' first layer.
Their pretraining arm (``natural``, ``medical`` or ``ct``) is declared with a ``?arm=ARM`` suffix
(``hf:/models/ct-fm?arm=ct``) or inferred as ``natural`` (timm's, torchvision's and Hugging Face's released
weights are natural-image pretrained: ImageNet, LVD-142M); the card says which (``arm_rule``).

Every source resolves to ``(module, card)``. The card says the architecture, the input channels,
how inputs are prepared (CT windows; normalisation ``mean``/``std`` per channel) and where the
weights came from, with the SHA-256 of the weights file (the provenance evaluation records carry).

RadImageNet key mapping. The RadImageNet PyTorch ResNet-50 (converted from the Keras release) is a
``torchvision.models.resnet50`` with its children up to ``layer4`` wrapped in ``nn.Sequential``, saved
as a state dict whose keys are ``backbone.<i>.<rest>`` (sometimes under ``module.`` or
``state_dict``). Children ``i`` map to torchvision names: 0 ``conv1``, 1 ``bn1``, 4 ``layer1``,
5 ``layer2``, 6 ``layer3``, 7 ``layer4`` (2 and 3 are ReLU and max-pool, weightless); any head
(``fc.``, ``classifier.``) is dropped. Keys already in torchvision form load unchanged. Inputs:
grey CT replicated to 3 channels and ImageNet normalisation, as RadImageNet was trained.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from torch import nn

from ctssl.pretrain.architecture import IMAGENET_MEAN, IMAGENET_STD, _load_strict
from ctssl.pretrain.backbones import architecture, build_backbone, feature_dim, is_init_source

RADIMAGENET_CHILDREN = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def radimagenet_state_dict(state: dict) -> dict:
    """RadImageNet ResNet-50 keys -> torchvision ``resnet50`` keys (module docstring)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(("fc.", "classifier.", "head.")):
            continue
        match = re.match(r"(?:backbone\.)?(\d+)\.(.*)", key)
        if match:
            child = int(match.group(1))
            if child not in RADIMAGENET_CHILDREN:
                raise ValueError(f"Unexpected RadImageNet key '{key}': child {child} has no weights "
                                 f"in a ResNet-50 (children with weights: {sorted(RADIMAGENET_CHILDREN)}).")
            key = f"{RADIMAGENET_CHILDREN[child]}.{match.group(2)}"
        else:
            key = key.removeprefix("backbone.")
        out[key] = value
    return out


def _card(backbone: str, in_chans: int, method: str, data: dict | None = None, **extra) -> dict:
    return {"backbone": backbone, "in_chans": in_chans, "method": method, "data": data or {}, **extra}


ARMS = {"ct": "CT-pretrained", "natural": "natural-image-pretrained", "medical": "pretrained on other medical images",
        "random": "random initialisation", "other": "other"}


def pretraining_arm(card: dict) -> str:
    """Which arm of the study a backbone belongs to (a key of ``ARMS``): ``ct`` (ctssl pretraining on CT),
    ``natural`` (ImageNet weights, ctssl pretraining on natural images), ``medical`` (RadImageNet), ``random``;
    a library source's declared or inferred ``arm`` (module docstring)."""
    method, kind = str(card.get("method", "")), (card.get("data") or {}).get("kind")
    if card.get("arm") in ARMS:
        return card["arm"]
    if method == "random init":
        return "random"
    if method.startswith("supervised ImageNet") or kind == "natural":
        return "natural"
    if method.startswith("supervised RadImageNet"):
        return "medical"
    return "ct" if kind == "ct" else "other"


LIBRARIES = ("timm:", "torchvision:", "hf:")
ARM_SUFFIX = re.compile(r"\?arm=(natural|medical|ct)$")


def split_arm(source: str) -> tuple[str, str | None]:
    """(source without a ``?arm=ARM`` suffix, ARM or None)."""
    match = ARM_SUFFIX.search(source)
    return (source[:match.start()], match.group(1)) if match else (source, None)


def _library_card(source: str) -> dict:
    """The card of a timm:, torchvision: or hf: source (module docstring), without loading the weights."""
    from ctssl.pretrain import external

    spec, declared = split_arm(source)
    library, _, rest = spec.partition(":")
    if library == "hf":
        folder = Path(rest)
        config = external.hf_config(folder)
        arch_name, path, prep = f"hf:{config['model_type']}", folder, external.hf_preprocessing(folder, config)
        in_chans, extra = int(config.get("num_channels", 3)), {"architecture_config": config}
        label = f"Hugging Face {config['model_type']} ({folder.name})"
    else:
        name, sep, path = rest.partition(":")
        if not sep or not name or not path:
            raise ValueError(f"Backbone source '{source}' must be {library}:NAME:FILE, e.g. {library}:resnet50:"
                             "/weights/resnet50.safetensors.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"Weights file '{path}' of backbone source '{source}' does not exist "
                                    "(nothing is downloaded).")
        arch = architecture(f"{library}:{name}")
        if arch.first_conv is None:     # torchvision: known once built
            arch.build(3)
        arch_name, prep, extra = arch.name, arch.preprocessing(), {}
        in_chans = external.weights_in_chans(path, arch.first_conv)
        label = f"{library} {name} ({Path(path).name})"
    prep = prep or {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "from": "no library preprocessing: "
                    "ImageNet's assumed"}
    prep = {**prep, "in_chans": in_chans}
    arm = declared or "natural"
    arm_rule = "declared (?arm=)" if declared else (f"inferred: {library} released weights are natural-image "
                                                   "pretrained unless declared with ?arm=medical or ?arm=ct")
    return _card(arch_name, in_chans, f"pretrained weights: {label}", {"image_size": prep["size"]}, source=source,
                 mean=prep["mean"], std=prep["std"], preprocessing=prep, arm=arm, arm_rule=arm_rule,
                 weights_path=str(path), **extra)


def backbone_card(source: str) -> dict:
    """A backbone's card without loading its weights (no ``weights_sha256``): architecture, channels, method,
    pretraining data and size; what ``comparison_size`` and the report's arms need of every backbone first."""
    if source.startswith(LIBRARIES):
        return _library_card(source)
    if source.startswith("random:"):
        parts = source.split(":")
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[2:]):
            raise ValueError(f"Backbone source '{source}' must be random:NAME:IN_CHANS[:SEED], e.g. random:resnet18:3.")
        return _card(parts[1], int(parts[2]), "random init", source=source)
    if source.startswith("imagenet:"):
        parts = source.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"Backbone source '{source}' must be imagenet:NAME:FILE.")
        return _card(parts[1], 3, "supervised ImageNet", source=source, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if source.startswith("radimagenet:"):
        return _card("resnet50", 3, "supervised RadImageNet", source=source, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Backbone '{source}' is neither an existing file nor a random:/imagenet:/"
                                "radimagenet:/timm:/torchvision:/hf: source.")
    if path.suffix == ".safetensors":
        card_path = path.with_suffix(".json")
        if not card_path.exists():
            raise FileNotFoundError(f"No card '{card_path}' beside '{path}' (written by pretraining's export).")
        return {**json.loads(card_path.read_text()), "source": source}
    if path.suffix == ".pt":
        # OUT/checkpoints/last.pt: the run's resolved OUT/config.yaml says the architecture.
        config = next((c for c in (path.parent / "config.yaml", path.parent.parent / "config.yaml") if c.exists()),
                      None)
        if config is None:
            raise FileNotFoundError(f"No config.yaml beside or above checkpoint '{path}' (written by pretraining).")
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config)
        kind = cfg.resolved.data_kind
        ct = kind == "ct"
        intensity = cfg.data.get("intensity", "windows") if ct else "rgb"
        return _card(cfg.model.backbone, int(cfg.resolved.in_chans), cfg.method.name,
                     {"shards": cfg.data.shards, "kind": kind, "image_size": cfg.data.get("image_size"),
                      "intensity": intensity,
                      "windows": list(cfg.data.windows) if ct and intensity == "windows" else None}, source=source)
    raise ValueError(f"Backbone file '{path}' must be .safetensors (ctssl export) or .pt (ctssl checkpoint); "
                     "use radimagenet:FILE or imagenet:NAME:FILE for supervised weights.")


def require_finite(model: torch.nn.Module, source: str) -> None:
    """A backbone whose weights or buffers hold NaN or inf cannot be evaluated: a one-line error naming it."""
    state = model.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"Backbone '{source}' has non-finite weights (NaN or inf in {len(bad)} of {len(state)} "
                         f"tensors, first {bad[0]}): it cannot be evaluated. Its pretraining diverged or the file is "
                         f"damaged; evaluate an earlier checkpoint.")


def load_backbone(source: str):
    """(module, card) for a backbone source string (module docstring); refuses non-finite weights."""
    model, card = _load(source)
    require_finite(model, source)
    return model, card


def _weights_sha256(path: Path) -> str:
    """The weights file's SHA-256; a Hugging Face folder's: of its weight files' digests in name order."""
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if not files:
        raise FileNotFoundError(f"Hugging Face model folder '{path}' holds no weights (*.safetensors, *.bin).")
    return hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()


def _load_library(source: str):
    from ctssl.pretrain import external

    card = _library_card(source)
    path = Path(card["weights_path"])
    if card["backbone"].startswith("hf:"):
        model, _ = external.load_hf(path)
    else:
        model, _ = build_backbone(card["backbone"], card["in_chans"])
        external.load_library_weights(model, model.ctssl_architecture, str(path))
    return model, {**card, "weights_sha256": _weights_sha256(path)}


def _load(source: str):
    if source.startswith(LIBRARIES):
        return _load_library(source)
    if source.startswith("random:"):
        parts = source.split(":")
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[2:]):
            raise ValueError(f"Backbone source '{source}' must be random:NAME:IN_CHANS[:SEED], e.g. random:resnet18:3.")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(parts[3]) if len(parts) == 4 else 0)
            model, _ = build_backbone(parts[1], int(parts[2]))
        return model, _card(parts[1], int(parts[2]), "random init", source=source)
    if source.startswith("imagenet:"):
        parts = source.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"Backbone source '{source}' must be imagenet:NAME:FILE.")
        _, name, path = parts
        model, _ = build_backbone(name, 3, init="imagenet", weights=path)
        return model, _card(name, 3, "supervised ImageNet", source=source, weights_sha256=file_sha256(path),
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if source.startswith("radimagenet:"):
        path = source.split(":", 1)[1]
        if not Path(path).is_file():
            raise FileNotFoundError(f"RadImageNet checkpoint '{path}' does not exist.")
        model, _ = build_backbone("resnet50", 3)
        state = torch.load(path, map_location="cpu", weights_only=True)
        _load_strict(model, radimagenet_state_dict(state), path)
        return model, _card("resnet50", 3, "supervised RadImageNet", source=source,
                            weights_sha256=file_sha256(path), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = Path(source)
    card = backbone_card(source)
    model, _ = build_backbone(card["backbone"], card["in_chans"], init="checkpoint", weights=str(path),
                              config=card.get("architecture_config"))
    return model, {**card, "source": source, "weights_sha256": file_sha256(path)}


def init_backbone(name: str, in_chans: int, init: str = "scratch", weights: str | None = None,
                  drop_path: float = 0.0) -> tuple[nn.Module, int, dict | None]:
    """(module, feature_dim, init card) of pretraining's backbone: ``build_backbone`` for ``INITS``; otherwise
    ``init`` is a backbone source (module docstring: ``timm:NAME:FILE``, ``torchvision:NAME:FILE``,
    ``hf:DIR``, ``imagenet:NAME:FILE``, ``radimagenet:FILE``, a ctssl export), loaded strictly with its weights
    as they are: continued pretraining starts exactly from the file (the DINO teacher is a copy of it). Its
    card (architecture, channels, preprocessing, the weights' SHA-256) is the third value."""
    if not is_init_source(init):
        model, dim = build_backbone(name, in_chans, init, weights, drop_path)
        return model, dim, None
    model, card = load_backbone(init)
    if card["backbone"] != name:
        raise ValueError(f"model.init '{init}' is a {card['backbone']} backbone but model.backbone is '{name}'; "
                         f"set model.backbone={card['backbone']} (pretrain/main.py --init sets it).")
    if int(card["in_chans"]) != in_chans:
        raise ValueError(f"model.init '{init}' takes {card['in_chans']} input channel(s) but the views have "
                         f"{in_chans}; set data.windows to {card['in_chans']} window(s) or model.in_chans.")
    if drop_path:
        raise ValueError("model.drop_path cannot be changed on a backbone loaded from model.init (set it to 0).")
    return model, feature_dim(model, in_chans), card
