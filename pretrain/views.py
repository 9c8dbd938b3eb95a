"""Augmented views for self-supervised training: CT (from HU) and natural images (from PIL).

CT views work on Hounsfield units, never on an RGB default: random resized crop and flips on the
HU image, Gaussian blur (a softer reconstruction kernel) and Gaussian noise (lower dose) in HU,
then windowing, each window jittered per view, stacked as channels, normalised with the
configured mean and std. Natural-image views are lightly's SimCLR / DINO transforms (ImageNet
colour jitter and normalisation, which are right for RGB photographs).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ctssl.data.windowing import get_window, stack_windows

RATIO = (3 / 4, 4 / 3)


def crop_specs(method: str, cfg) -> list[tuple[int, tuple[float, float]]]:
    """(size, scale range) of every view of ``method``."""
    if method == "dino":
        d = cfg.method.dino
        return [(cfg.data.image_size, tuple(d.global_scale))] * 2 + [(d.local_size, tuple(d.local_scale))] * d.local_crops
    return [(cfg.data.image_size, tuple(cfg.data.augment.crop_scale))] * 2


def _crop_box(h: int, w: int, scale, ratio=RATIO):
    """torchvision's RandomResizedCrop.get_params, on Python's RNG."""
    area = h * w
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (1, H, W) image (a softer reconstruction kernel): scipy's separable
    filter, truncated at 2 sigma, reflect padding (twice as fast as a torch convolution on CPU)."""
    return torch.from_numpy(gaussian_filter(x[0].numpy(), sigma, truncate=2.0, mode="reflect"))[None]


def correlated_noise(size: int, sigma: float) -> torch.Tensor:
    """(1, size, size) Gaussian noise of standard deviation ~``sigma`` HU, spatially correlated
    like CT noise: drawn at half resolution and upsampled bilinearly (4x fewer random numbers)."""
    half = max(1, size // 2)
    noise = torch.randn(1, 1, half, half)
    # Bilinear upsampling by 2 weights neighbours 3/4 and 1/4 per axis, leaving a std of
    # sqrt(0.75^2 + 0.25^2)^2 = 0.625 of the input's; undo that.
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0] * (sigma / 0.625)


class CTViews:
    """HU image (H, W) int16 -> list of (C, S, S) float tensors, C = number of windows."""

    def __init__(self, windows: list[str], augment, crops, mean: float, std: float):
        self.windows = [get_window(name) for name in windows]
        self.aug, self.crops, self.mean, self.std = augment, crops, mean, std

    def _window(self, hu: torch.Tensor, jitter: float) -> torch.Tensor:
        """(1, H, W) HU -> (C, H, W): one (jittered) window per channel, then normalised."""
        windows = self.windows
        if jitter:
            windows = [(level + random.uniform(-jitter, jitter) * width, width * random.uniform(1 - jitter, 1 + jitter))
                       for level, width in windows]
        return stack_windows(hu, windows).sub_(self.mean).div_(self.std)

    def view(self, hu: torch.Tensor, size: int, scale) -> torch.Tensor:
        a = self.aug
        top, left, h, w = _crop_box(hu.shape[-2], hu.shape[-1], scale)
        crop = hu[None, :, top:top + h, left:left + w]
        # Antialiasing matters only when shrinking; upscaling with plain bilinear is the same.
        v = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=h > size or w > size)[0]
        if random.random() < a.hflip:
            v = v.flip(-1)
        if random.random() < a.vflip:
            v = v.flip(-2)
        if random.random() < a.blur_prob:
            v = gaussian_blur(v, random.uniform(*a.blur_sigma))
        if random.random() < a.noise_prob:
            v = v + correlated_noise(size, random.uniform(*a.noise_hu))
        return self._window(v, a.window_jitter)

    def __call__(self, hu: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(hu.astype(np.float32))[None]
        return [self.view(x, size, scale) for size, scale in self.crops]

    def eval_view(self, hu: np.ndarray, size: int) -> torch.Tensor:
        """The whole slice resized to ``size``, windowed without jitter (for kNN monitoring)."""
        x = torch.from_numpy(hu.astype(np.float32))[None]
        x = TF.resize(x, [size, size], antialias=True)
        return self._window(x, 0.0)


def natural_views(method: str, cfg):
    """lightly's transform for ``method`` on PIL images; returns a callable -> list of tensors."""
    if method == "dino":
        from lightly.transforms import DINOTransform

        d = cfg.method.dino
        return DINOTransform(global_crop_size=cfg.data.image_size, global_crop_scale=tuple(d.global_scale),
                             local_crop_size=d.local_size, local_crop_scale=tuple(d.local_scale),
                             n_local_views=d.local_crops)
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=cfg.data.image_size, min_scale=cfg.data.augment.crop_scale[0])


def natural_eval_view(size: int):
    import torchvision.transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
