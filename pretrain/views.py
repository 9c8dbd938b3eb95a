"""Augmented views for self-supervised training.

**CT**, split so that the per-pixel work runs batched on the training device (the GPU when there is
one, the CPU in tests: one code path):

- in the loader workers, per sample, ``CTViewMaker.draw`` picks the augmentation of every view from the
  sample's own random generator (crop box, flips, blur and noise strengths, window jitter, intensity
  jitter): a few numbers; the decoded HU slice travels on as int16;
- on the device, ``CTViewMaker.render`` turns a batch (B HU slices + their numbers) into one tensor
  (B, C, S, S) per view, all in batched tensor ops: crop and resize (torchvision's ``roi_align``,
  bilinear, with adaptive supersampling when shrinking), flips, Gaussian blur in HU (a softer
  reconstruction kernel; per-sample sigma, separable, truncated at 2 sigma like scipy), spatially
  correlated Gaussian noise in HU (a lower dose; drawn at half resolution and upsampled), then the
  intensity mapping: each window of ``data.windows`` (level/width jittered per view and channel) to
  [0, 1] and stacked as channels, or per-slice min-max (``data.intensity: minmax``, the RadNet-12M
  recipe) replicated to the channels; optional brightness/contrast jitter; normalisation.

Nothing here is an RGB default: no colour jitter, no ImageNet statistics for CT.

**Natural images**: lightly's SimCLR / DINO transforms on PIL images in the workers (ImageNet colour
jitter and normalisation, right for photographs).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.data.hounsfield import HU_FLOOR
from ctssl.data.windowing import get_window, window_batch

RATIO = (3 / 4, 4 / 3)
NOISE_UPSAMPLE_STD = 0.625   # std left by bilinear x2 upsampling of white noise: sqrt(0.75^2 + 0.25^2)^2


@dataclass(frozen=True)
class ViewRecipe:
    """One view of a method: its size, crop scale range and the probabilities of its blur and solarisation."""

    size: int
    scale: tuple[float, float]
    blur_prob: float
    solarize_prob: float = 0.0


def crop_specs(method: str, cfg) -> list[ViewRecipe]:
    """Every view of ``method``. SimCLR: two views alike (the SimCLR paper). DINO: main_dino.py's
    DataAugmentationDINO: the first global view always blurred, the second rarely and sometimes
    solarised, the local views blurred half of the time."""
    if method == "dino":
        d = cfg.method.dino
        globals_ = [ViewRecipe(cfg.data.image_size, tuple(d.global_scale), blur, solarize)
                    for blur, solarize in zip(d.global_blur_prob, d.global_solarize_prob)]
        return globals_ + [ViewRecipe(d.local_size, tuple(d.local_scale), d.local_blur_prob)] * d.local_crops
    a = cfg.data.augment
    return [ViewRecipe(cfg.data.image_size, tuple(a.crop_scale), a.blur_prob)] * 2


def crop_box(rng: random.Random, h: int, w: int, scale, ratio=RATIO) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params on ``rng``, as a box (x0, y0, x1, y1) in pixels."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            return float(left), float(top), float(left + cw), float(top + ch)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return float(left), float(top), float(left + side), float(top + side)


@dataclass
class ViewSpec:
    """What the device-side renderer needs to know (derived from the config once)."""

    windows: list[tuple[float, float]]     # (level, width) per channel; empty with minmax intensity
    channels: int
    mean: float
    std: float


class CTViewMaker:
    """CT views from HU slices: ``draw`` in the workers, ``render`` on the device (module docstring)."""

    PARAMS = ("box", "hflip", "vflip", "blur", "noise", "level", "width", "brightness", "contrast", "solarize")

    def __init__(self, data_cfg, crops: list, in_chans: int | None = None):
        """``crops``: ViewRecipes, or (size, scale) pairs that take ``data.augment``'s blur probability."""
        self.aug = data_cfg.augment
        self.crops = [c if isinstance(c, ViewRecipe) else ViewRecipe(c[0], tuple(c[1]), self.aug.blur_prob)
                      for c in crops]
        intensity = data_cfg.intensity
        if intensity not in ("windows", "minmax"):
            raise ValueError(f"Unknown intensity '{intensity}'. Valid: ['windows', 'minmax'].")
        windows = [get_window(name) for name in data_cfg.windows] if intensity == "windows" else []
        channels = len(windows) if windows else (in_chans or 1)
        self.spec = ViewSpec(windows, channels, data_cfg.normalize_mean, data_cfg.normalize_std)
        self._windows_on: dict = {}      # device -> (levels, widths): built once, not copied every step

    # ------------------------------------------------------------------ workers (CPU, per sample)
    def draw(self, rng: random.Random, h: int, w: int) -> dict[str, np.ndarray]:
        """The augmentation of every view of one sample (arrays with a leading view axis)."""
        a, views, c = self.aug, len(self.crops), max(1, len(self.spec.windows))
        out = {"box": np.zeros((views, 4), np.float32), "hflip": np.zeros(views, bool), "vflip": np.zeros(views, bool),
               "blur": np.zeros(views, np.float32), "noise": np.zeros(views, np.float32),
               "level": np.zeros((views, c), np.float32), "width": np.ones((views, c), np.float32),
               "brightness": np.ones(views, np.float32), "contrast": np.ones(views, np.float32),
               "solarize": np.zeros(views, bool)}
        for v, view in enumerate(self.crops):
            out["box"][v] = crop_box(rng, h, w, view.scale)
            out["hflip"][v] = rng.random() < a.hflip
            out["vflip"][v] = rng.random() < a.vflip
            if rng.random() < view.blur_prob:
                out["blur"][v] = rng.uniform(*a.blur_sigma)
            if rng.random() < a.noise_prob:
                out["noise"][v] = rng.uniform(*a.noise_hu)
            if a.window_jitter and self.spec.windows:
                j = a.window_jitter
                for ch in range(c):
                    out["level"][v, ch] = rng.uniform(-j, j)          # x width
                    out["width"][v, ch] = rng.uniform(1 - j, 1 + j)
            if rng.random() < a.intensity_jitter_prob:
                out["brightness"][v] = rng.uniform(max(0.0, 1 - a.brightness), 1 + a.brightness)
                out["contrast"][v] = rng.uniform(max(0.0, 1 - a.contrast), 1 + a.contrast)
            if view.solarize_prob > 0:
                out["solarize"][v] = rng.random() < view.solarize_prob
        return out

    @staticmethod
    def identity(h: int, w: int, views: int = 1, channels: int = 1) -> dict[str, np.ndarray]:
        """No augmentation: the whole slice, every view (evaluation and monitoring)."""
        return {"box": np.tile(np.array([0, 0, w, h], np.float32), (views, 1)), "hflip": np.zeros(views, bool),
                "vflip": np.zeros(views, bool), "blur": np.zeros(views, np.float32),
                "noise": np.zeros(views, np.float32), "level": np.zeros((views, channels), np.float32),
                "width": np.ones((views, channels), np.float32), "brightness": np.ones(views, np.float32),
                "contrast": np.ones(views, np.float32), "solarize": np.zeros(views, bool)}

    @staticmethod
    def collate(slices: list[np.ndarray], params: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Per-sample slices (H, W) int16 and their ``draw`` -> one batch: ``hu`` (B, 1, H, W) int16
        (padded with air where slices differ in size) and each parameter stacked (B, views, ...)."""
        h, w = max(s.shape[0] for s in slices), max(s.shape[1] for s in slices)
        hu = np.full((len(slices), 1, h, w), int(HU_FLOOR), np.int16)
        for i, s in enumerate(slices):
            hu[i, 0, : s.shape[0], : s.shape[1]] = s
        batch = {"hu": torch.from_numpy(hu)}
        for name in CTViewMaker.PARAMS:
            batch[name] = torch.from_numpy(np.stack([p[name] for p in params]))
        return batch

    # ------------------------------------------------------------------ device (batched)
    @torch.no_grad()
    def render(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
               sizes: list[int] | None = None) -> list[torch.Tensor]:
        """One (B, C, S, S) float32 tensor per view, on the batch's device (module docstring)."""
        hu = batch["hu"].float()
        b = hu.shape[0]
        sizes = sizes or [view.size for view in self.crops]
        blur = any(view.blur_prob > 0 for view in self.crops)
        solarize = any(view.solarize_prob > 0 for view in self.crops)
        views = []
        for v, size in enumerate(sizes):
            x = resize_boxes(hu, batch["box"][:, v], size)
            x = torch.where(batch["hflip"][:, v, None, None, None], x.flip(-1), x)
            x = torch.where(batch["vflip"][:, v, None, None, None], x.flip(-2), x)
            if blur:
                x = gaussian_blur_batch(x, batch["blur"][:, v], max(self.aug.blur_sigma))
            if self.aug.noise_prob > 0:
                x = x + correlated_noise_batch(b, size, batch["noise"][:, v], generator)
            x = self._intensity(x, hu, batch, v)
            if solarize:     # DINO's solarisation (PIL's threshold 128) of the windowed image
                x = torch.where(batch["solarize"][:, v, None, None, None] & (x >= 0.5), 1 - x, x)
            views.append(x.sub_(self.spec.mean).div_(self.spec.std))
        return views

    def _window_tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._windows_on:
            self._windows_on[device] = (torch.tensor([lv for lv, _ in self.spec.windows], device=device),
                                        torch.tensor([wd for _, wd in self.spec.windows], device=device))
        return self._windows_on[device]

    def _intensity(self, x: torch.Tensor, hu: torch.Tensor, batch, v: int) -> torch.Tensor:
        """(B, 1, S, S) HU -> (B, C, S, S) in [0, 1], then brightness/contrast jitter."""
        spec = self.spec
        if spec.windows:
            level, width = self._window_tensors(x.device)
            jit_width = width * batch["width"][:, v]                       # (B, C)
            low = level + batch["level"][:, v] * width - jit_width / 2
            x = window_batch(x, low, jit_width)
        else:   # per-slice min-max of the whole stored slice, then replicated to the channels
            lo = hu.amin(dim=(1, 2, 3)).view(-1, 1, 1, 1)
            hi = hu.amax(dim=(1, 2, 3)).view(-1, 1, 1, 1)
            x = ((x - lo) / (hi - lo).clamp(min=1.0)).clamp_(0, 1).expand(-1, spec.channels, -1, -1)
        if self.aug.intensity_jitter_prob > 0:   # torchvision's brightness, then contrast, on grey
            x = x * batch["brightness"][:, v].view(-1, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * batch["contrast"][:, v].view(-1, 1, 1, 1) + mean).clamp_(0, 1)
        return x.contiguous()


def resize_boxes(hu: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` (B, 4) = (x0, y0, x1, y1) pixels out of (B, 1, H, W) and resize each to size x size:
    bilinear at the output pixel centres, averaging ceil(box / size) x ceil(box / size) samples per pixel
    when shrinking (antialiasing), from the whole slice (torchvision's ``roi_align``, aligned)."""
    from torchvision.ops import roi_align

    index = torch.arange(hu.shape[0], device=hu.device, dtype=torch.float32)[:, None]
    return roi_align(hu, torch.cat([index, boxes.float()], 1), (size, size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


def whole_slices(slices: list[np.ndarray], size: int, windows: list[tuple[float, float]], mean, std,
                 device=None) -> torch.Tensor:
    """Model inputs of whole HU slices, without augmentation: (B, C, size, size), each window of ``windows``
    a channel, normalised with per-channel (or scalar) ``mean`` and ``std``. The evaluation input of
    CT (eval.inputs) and the pretraining monitor's view: the same resize and windowing as training views."""
    batch = CTViewMaker.collate(slices, [CTViewMaker.identity(*s.shape) for s in slices])
    hu = batch["hu"].to(device).float() if device is not None else batch["hu"].float()
    x = resize_boxes(hu, batch["box"][:, 0].to(hu.device), size)
    low = torch.tensor([lv - wd / 2 for lv, wd in windows], device=hu.device)
    width = torch.tensor([wd for _, wd in windows], device=hu.device)
    x = window_batch(x, low, width)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=hu.device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=hu.device).reshape(1, -1, 1, 1)
    return (x - mean) / std


def gaussian_blur_batch(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Per-sample Gaussian blur of (B, 1, H, W) with ``sigma`` (B,) pixels (at most ``max_sigma``, which
    fixes the kernel length without asking the device); 0 leaves a sample as it is.

    Separable, each sample's kernel truncated at ``int(2 sigma + 0.5)`` taps and normalised (scipy's
    ``gaussian_filter(truncate=2.0)``), whole-sample symmetric padding (scipy's ``mode="mirror"``)."""
    b, _, h, w = x.shape
    radius = max(1, min(int(2 * max_sigma + 0.5), h - 1, w - 1))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype)[:, None]
    kernel = torch.exp(-0.5 * (taps[None] / s.clamp(min=1e-6)) ** 2)
    kernel = kernel * (taps[None].abs() <= (2 * s + 0.5).floor())      # each sample's own truncation
    kernel = torch.where(s > 0, kernel, (taps == 0).to(x.dtype)[None])
    kernel = kernel / kernel.sum(1, keepdim=True)
    y = F.pad(x.reshape(1, b, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b, 1, -1, 1), groups=b)
    y = F.conv2d(y, kernel.view(b, 1, 1, -1), groups=b)
    return y.view(b, 1, h, w)


def correlated_noise_batch(b: int, size: int, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1, size, size) Gaussian noise of standard deviation ``sigma`` (B,) HU, spatially correlated
    like CT noise: drawn at half resolution and upsampled bilinearly (4x fewer random numbers)."""
    half = max(1, size // 2)
    noise = torch.randn(b, 1, half, half, generator=generator, device=sigma.device)
    noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return noise * (sigma.view(-1, 1, 1, 1) / NOISE_UPSAMPLE_STD)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def natural_views(method: str, cfg):
    """lightly's transform for ``method`` on PIL images, ending in uint8 tensors (B, 3, S, S) instead of
    normalised float32 ones: the loader workers ship a quarter of the bytes through shared memory, and the
    device finishes each view (``finish_natural``: / 255, ImageNet normalisation)."""
    if method == "dino":
        from lightly.transforms import DINOTransform

        d = cfg.method.dino
        transform = DINOTransform(global_crop_size=cfg.data.image_size, global_crop_scale=tuple(d.global_scale),
                                  local_crop_size=d.local_size, local_crop_scale=tuple(d.local_scale),
                                  n_local_views=d.local_crops, normalize=None,
                                  gaussian_blur=(*d.global_blur_prob, d.local_blur_prob),
                                  solarization_prob=d.global_solarize_prob[1])
    else:
        from lightly.transforms import SimCLRTransform

        transform = SimCLRTransform(input_size=cfg.data.image_size, min_scale=cfg.data.augment.crop_scale[0],
                                    normalize=None)
    return _uint8_output(transform)


def _uint8_output(transform):
    """Replace the float conversion at the end of each of lightly's view pipelines by PIL -> uint8."""
    import torchvision.transforms as T

    done: set[int] = set()
    for view in transform.transforms:
        steps = view.transform.transforms
        if id(steps) in done:        # lightly reuses one pipeline for all local views
            continue
        done.add(id(steps))
        found = [i for i, t in enumerate(steps) if type(t).__name__ == "ToTensor"]
        if len(found) != 1 or found[0] != len(steps) - 1:
            raise RuntimeError(f"unexpected lightly view pipeline {steps}: cannot ship uint8 views")
        steps[found[0]] = T.PILToTensor()
    return transform


_IMAGENET_ON: dict = {}     # device -> (mean, std) x 255, built once, not copied every step


def finish_natural(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 (B, 3, S, S) views -> float32, ImageNet-normalised, on their device."""
    out = []
    for x in views:
        if x.device not in _IMAGENET_ON:
            _IMAGENET_ON[x.device] = (torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255,
                                      torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255)
        mean, std = _IMAGENET_ON[x.device]
        out.append((x.float() - mean) / std)
    return out


def natural_eval_view(size: int):
    import torchvision.transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
