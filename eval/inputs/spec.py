"""How a downstream image becomes a backbone's input: one ``InputSpec`` per (backbone, data kind), taken
from the backbone's card (what it was pretrained with) unless the user sets it.

- size: one for every backbone of a comparison (``comparison_size``): the user's ``--image-size``, else the
  largest size any of them was pretrained at (the card's ``data.image_size``; 224 for ImageNet and RadImageNet
  weights; random initialisation has none), 224 when none has one; each backbone at its own pretraining
  size only when the user asks (``own_size``, an ablation the report points out);
- CT (HU arrays), by what the backbone saw in pretraining:
  - ctssl CT backbones: the windows of their card (e.g. lung, soft tissue, bone), one per channel, or the
    per-slice min-max of the RadNet-12M recipe (``intensity: minmax``), normalised as in pretraining;
  - backbones of grey or natural pictures (ImageNet and RadImageNet weights, ctssl backbones pretrained
    on natural images, timm/torchvision/Hugging Face weights): one grey window (``grey_window``, default
    ``wide``: -1000..1000 HU) replicated to the channels (RadImageNet was trained on grey images replicated to
    3 channels), with ImageNet normalisation, or the library's own mean/std for timm/torchvision/Hugging
    Face sources (their card's ``preprocessing``: timm's ``pretrained_cfg``, torchvision's weights
    transforms, the folder's ``preprocessor_config.json``); their size is the library's input size;
  - random initialisation: the default CT windows (lung, soft tissue, bone) with the CT normalisation,
    the same input as the CT backbones it is the baseline of;
  the whole slice is resized and windowed exactly as pretraining's views are (pretrain.views.whole_slices);
- 8-bit images (ImageFolder, CSV, MedMNIST, natural shards): scaled to [0, 1]; grey images are
  repeated to the backbone's channels, RGB images become grey (ITU-R 601 luma) for 1-channel
  backbones; normalised with the card's values, ImageNet's for natural and random backbones.

``InputSpec.rule`` says in words which of these applied; the spec is part of the feature cache key and of
every run record, and the report shows it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.data.windowing import get_window
from ctssl.eval.inputs.datasets import image_to_array

from ctssl.pretrain.architecture import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
DEFAULT_WINDOWS = ["lung", "soft_tissue", "bone"]
DEFAULT_SIZE = 224
GREY_WINDOW = "wide"


@dataclass
class InputSpec:
    data_kind: str            # "ct" or "image"
    in_chans: int
    size: int
    windows: list[str]        # CT with intensity "windows": one per channel
    mean: list[float]
    std: list[float]
    intensity: str = "windows"    # CT: "windows" or "minmax" (per-slice min-max, replicated)
    rule: str = ""                # which rule chose this (for the record and the report)
    pretrained_size: int = 0      # the size the backbone was pretrained at (0: none, random initialisation)

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What the prepared pixels depend on (feature cache keys, run ids): not the words of the rule."""
        return {k: v for k, v in asdict(self).items() if k not in ("rule", "pretrained_size")}


def _grey_source(card: dict) -> bool:
    """A backbone pretrained on grey or natural pictures (not on ctssl's CT views): ImageNet and RadImageNet
    weights, ctssl backbones pretrained on natural images, and timm/torchvision/Hugging Face weights (which carry
    their library's ``preprocessing``)."""
    method = str(card.get("method", ""))
    return method.startswith(("supervised ImageNet", "supervised RadImageNet")) or \
        (card.get("data") or {}).get("kind") == "natural" or bool(card.get("preprocessing"))


def pretraining_size(card: dict) -> int | None:
    """The input size the backbone was pretrained at: its card's view size; 224 for ImageNet and RadImageNet
    weights; None for random initialisation."""
    size = (card.get("data") or {}).get("image_size")
    if size:
        return int(size)
    return DEFAULT_SIZE if str(card.get("method", "")).startswith("supervised") else None


def comparison_size(cards: list[dict], size: int = 0, own_size: bool = False) -> tuple[int, str]:
    """(size, why) of the inputs of every backbone of one comparison (``cards``): ``size`` when set; else the
    largest pretraining size among them (none is shrunk below the size it learnt at), 224 when none has one;
    ``own_size``: (0, ...), each backbone at its own pretraining size."""
    if size:
        return int(size), "as set"
    if own_size:
        return 0, "its own pretraining size (as asked: own_size)"
    known = [s for s in (pretraining_size(c) for c in cards) if s]
    if not known:
        return DEFAULT_SIZE, f"{DEFAULT_SIZE}: no backbone of the comparison has a pretraining size"
    if len(cards) == 1:
        return max(known), "the pretraining size"
    return max(known), "the comparison's common size: the largest pretraining size among its backbones"


def input_spec(card: dict, data_kind: str, size: int = 0, grey_window: str = GREY_WINDOW,
               size_rule: str = "") -> InputSpec:
    """The input of ``card``'s backbone for data of ``data_kind`` (module docstring); ``size`` 0: the card's;
    ``size_rule``: why this size (``comparison_size``), in the record."""
    in_chans = int(card["in_chans"])
    data = card.get("data") or {}
    pretrained = pretraining_size(card)
    if not size_rule:
        size_rule = "as set" if size else "the pretraining view size" if data.get("image_size") else \
            f"{DEFAULT_SIZE}: no pretraining size on the card"
    size = int(size or pretrained or DEFAULT_SIZE)
    if pretrained and size != pretrained:
        size_rule += f"; pretrained at {pretrained} px"
    elif not pretrained and "no pretraining size" not in size_rule:
        size_rule += "; no pretraining size"
    intensity, windows = "windows", []
    if card.get("mean"):
        mean, std = list(card["mean"]), list(card["std"])
    elif data.get("kind") == "natural" or (data_kind == "image" and card.get("method") == "random init"):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        cfg = (card.get("config") or {}).get("data") or {}
        mean, std = [cfg.get("normalize_mean", 0.5)], [cfg.get("normalize_std", 0.5)]
    if data_kind == "ct":
        if _grey_source(card):
            get_window(grey_window)   # an unknown name is an error here, not later
            windows = [grey_window] * in_chans
            prep = card.get("preprocessing") or {}
            mean, std = (list(prep["mean"]), list(prep["std"])) if prep.get("mean") else (IMAGENET_MEAN, IMAGENET_STD)
            norm = f"its library's normalisation ({prep['from']})" if prep.get("mean") else "ImageNet normalisation"
            rule = f"grey window '{grey_window}' replicated to {in_chans} channel(s), {norm}"
        elif data.get("intensity") == "minmax":
            intensity = "minmax"
            rule = "per-slice min-max replicated (the backbone's pretraining)"
        else:
            windows = list(data.get("windows") or DEFAULT_WINDOWS)
            rule = (f"windows {windows} (the backbone's pretraining)" if data.get("windows") else
                    f"default CT windows {windows}")
            if len(windows) != in_chans:
                windows = (windows * in_chans)[:in_chans]
    else:
        rule = "8-bit image, channels matched to the backbone"
    if len(mean) != in_chans:
        mean = [float(np.mean(mean))] * in_chans
        std = [float(np.mean(std))] * in_chans
    return InputSpec(data_kind, in_chans, size, windows, mean, std, intensity, f"{rule}; {size} px ({size_rule})",
                     pretrained or 0)


def prepare(image, spec: InputSpec) -> torch.Tensor:
    """One stored image -> (in_chans, size, size) float tensor."""
    if spec.data_kind == "ct":   # the training views' resize and windowing (pretrain.views.whole_slices)
        from ctssl.pretrain.views import whole_slices

        hu = np.asarray(image, dtype=np.int16)
        if spec.intensity == "minmax":
            lo, hi = float(hu.min()), float(hu.max())
            x = whole_slices([hu], spec.size, [((lo + hi) / 2, max(hi - lo, 1.0))], 0.0, 1.0)[0]
            x = x.expand(spec.in_chans, -1, -1)
        else:
            return whole_slices([hu], spec.size, [get_window(n) for n in spec.windows], spec.mean, spec.std)[0]
    else:
        x = torch.from_numpy(image_to_array(image))
        if x.shape[0] == 1 and spec.in_chans > 1:
            x = x.expand(spec.in_chans, -1, -1)
        elif x.shape[0] >= 3 and spec.in_chans == 1:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        elif x.shape[0] != spec.in_chans:
            x = x[:1].expand(spec.in_chans, -1, -1)
        x = F.interpolate(x[None], size=(spec.size, spec.size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > spec.size)[0]
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return (x - mean) / std


def prepare_batch(images: list, spec: InputSpec) -> torch.Tensor:
    """Several stored images -> (B, in_chans, size, size); CT slices windowed together in one batched call."""
    if spec.data_kind == "ct" and spec.intensity == "windows":
        from ctssl.pretrain.views import whole_slices

        return whole_slices([np.asarray(im, dtype=np.int16) for im in images], spec.size,
                            [get_window(n) for n in spec.windows], spec.mean, spec.std)
    return torch.stack([prepare(im, spec) for im in images])
