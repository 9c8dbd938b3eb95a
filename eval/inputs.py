"""How a downstream image becomes a backbone's input: one ``InputSpec`` per (backbone, data kind).

- CT (HU arrays): the whole slice resized (antialiased), then each window of the backbone's card
  (``lung``, ``soft_tissue``, ``bone`` by default) mapped to [0, 1] and stacked as channels, no
  jitter, exactly as pretraining's evaluation view;
- 8-bit images (ImageFolder, CSV, MedMNIST, natural shards): scaled to [0, 1]; grey images are
  repeated to the backbone's channels, RGB images become grey (ITU-R 601 luma) for 1-channel
  backbones;
- then per-channel ``(x - mean) / std``: the card's values when it has them (ImageNet weights),
  ImageNet statistics for backbones pretrained on natural images, else the CT convention of
  pretraining (0.5, 0.5).

The spec is part of the feature cache key and of every result's provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.data.windowing import get_window
from ctssl.eval.datasets import image_to_array

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_WINDOWS = ["lung", "soft_tissue", "bone"]


@dataclass
class InputSpec:
    data_kind: str            # "ct" or "image"
    in_chans: int
    size: int
    windows: list[str]        # CT only
    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def input_spec(card: dict, data_kind: str, size: int) -> InputSpec:
    in_chans = int(card["in_chans"])
    data = card.get("data") or {}
    windows = list(data.get("windows") or DEFAULT_WINDOWS)
    if len(windows) != in_chans:
        windows = (windows * in_chans)[:in_chans]
    if card.get("mean"):
        mean, std = list(card["mean"]), list(card["std"])
    elif data.get("kind") == "natural" or (data_kind == "image" and card.get("method") == "random init"):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        cfg = (card.get("config") or {}).get("data") or {}
        mean, std = [cfg.get("normalize_mean", 0.5)], [cfg.get("normalize_std", 0.5)]
    if len(mean) != in_chans:
        mean = [float(np.mean(mean))] * in_chans
        std = [float(np.mean(std))] * in_chans
    return InputSpec(data_kind, in_chans, size, windows if data_kind == "ct" else [], mean, std)


def prepare(image, spec: InputSpec) -> torch.Tensor:
    """One stored image -> (in_chans, size, size) float tensor."""
    if spec.data_kind == "ct":   # the training views' resize and windowing (pretrain.views.whole_slices)
        from ctssl.pretrain.views import whole_slices

        return whole_slices([np.asarray(image, dtype=np.int16)], spec.size, [get_window(n) for n in spec.windows],
                            spec.mean, spec.std)[0]
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
