"""The batched CT views: each operation against an independent reference (slicing + interpolate, scipy's
Gaussian filter, apply_window), per-sample parameters in one batch, reproducible draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ctssl.data.windowing import WINDOWS, apply_window
from ctssl.pretrain.config import DataConfig
from ctssl.pretrain.views import (CTViewMaker, correlated_noise_batch, gaussian_blur_batch, resize_boxes,
                                  whole_slices)


def _slices(n=4, size=48, seed=0):
    return [np.random.default_rng(seed + i).integers(-1024, 2000, (size, size)).astype(np.int16) for i in range(n)]


def test_crop_resize_equals_slicing_and_bilinear_interpolation_inside_the_crop():
    hu = torch.from_numpy(np.stack(_slices(2))[:, None].astype(np.float32))
    boxes = torch.tensor([[4.0, 8.0, 28.0, 32.0], [10.0, 2.0, 22.0, 14.0]])   # 24 and 12 px, upscaled to 36
    out = resize_boxes(hu, boxes, 36)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        ref = F.interpolate(hu[i:i + 1, :, y0:y1, x0:x1], size=(36, 36), mode="bilinear", align_corners=False)
        # Equal away from the border, where interpolate clamps to the crop and roi_align reads the slice.
        torch.testing.assert_close(out[i, :, 2:-2, 2:-2], ref[0, :, 2:-2, 2:-2], atol=1e-2, rtol=1e-5)  # HU


def test_blur_equals_scipy_per_sample_sigma_in_one_batch():
    x = torch.from_numpy(np.stack(_slices(3, 32))[:, None].astype(np.float32))
    sigma = torch.tensor([0.0, 0.7, 1.5])
    out = gaussian_blur_batch(x, sigma, 1.5)
    torch.testing.assert_close(out[0], x[0])                   # sigma 0: untouched
    for i in (1, 2):
        ref = gaussian_filter(x[i, 0].double().numpy(), float(sigma[i]), truncate=2.0, mode="mirror")
        np.testing.assert_allclose(out[i, 0].numpy(), ref, rtol=1e-4, atol=1e-2)


def test_noise_has_the_asked_standard_deviation_per_sample():
    g = torch.Generator().manual_seed(0)
    noise = correlated_noise_batch(3, 128, torch.tensor([0.0, 10.0, 40.0]), g)
    assert float(noise[0].abs().max()) == 0.0
    assert float(noise[1].std()) == pytest.approx(10.0, rel=0.1)
    assert float(noise[2].std()) == pytest.approx(40.0, rel=0.1)
    # Spatially correlated (CT noise is not white): neighbours agree far more than independent pixels.
    n = noise[2, 0]
    corr = float(torch.corrcoef(torch.stack([n[:, :-1].flatten(), n[:, 1:].flatten()]))[0, 1])
    assert corr > 0.5


def test_flips_windows_and_jitter_follow_each_samples_numbers():
    data = DataConfig()
    maker = CTViewMaker(data, [(48, (1.0, 1.0))], 3)
    slices = _slices(2)
    params = [CTViewMaker.identity(48, 48, channels=3) for _ in slices]
    params[1]["hflip"][0] = True
    params[1]["level"][0] = [0.1, 0.0, -0.1]       # x width
    params[1]["width"][0] = [1.1, 1.0, 0.9]
    views = maker.render(CTViewMaker.collate(slices, params))[0]
    for i, hu in enumerate(slices):
        expected = []
        for c, name in enumerate(data.windows):
            level, width = WINDOWS[name]
            level, width = level + params[i]["level"][0, c] * width, width * params[i]["width"][0, c]
            expected.append(apply_window(hu.astype(np.float32), level, width))
        expected = (np.stack(expected) - 0.5) / 0.5
        if params[i]["hflip"][0]:
            expected = expected[:, :, ::-1]
        np.testing.assert_allclose(views[i].numpy(), expected, atol=1e-4)


def test_minmax_intensity_is_per_slice_and_replicated():
    data = DataConfig(intensity="minmax", normalize_mean=0.0, normalize_std=1.0)
    maker = CTViewMaker(data, [(48, (1.0, 1.0))], 3)
    slices = [s // (i + 1) for i, s in enumerate(_slices(2))]
    views = maker.render(CTViewMaker.collate(slices, [CTViewMaker.identity(48, 48) for _ in slices]))[0]
    assert views.shape == (2, 3, 48, 48)
    for i, hu in enumerate(slices):
        ref = (hu - hu.min()) / (hu.max() - hu.min())
        np.testing.assert_allclose(views[i, 0].numpy(), ref, atol=1e-4)
        torch.testing.assert_close(views[i, 0], views[i, 2])


def test_draws_are_reproducible_and_differ_between_generators():
    data = DataConfig()
    maker = CTViewMaker(data, [(32, (0.08, 1.0))] * 2, 3)
    a = maker.draw(random.Random(5), 64, 64)
    b = maker.draw(random.Random(5), 64, 64)
    c = maker.draw(random.Random(6), 64, 64)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["box"], c["box"])
    # Boxes stay inside the slice and follow RandomResizedCrop's area range.
    boxes = np.stack([maker.draw(random.Random(s), 64, 64)["box"] for s in range(200)]).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 64 ** 2
    assert boxes.min() >= 0 and boxes.max() <= 64 and areas.min() >= 0.06 and areas.max() <= 1.0


def test_whole_slices_is_the_unaugmented_render():
    data = DataConfig()
    maker = CTViewMaker(data, [(32, (1.0, 1.0))], 3)
    slices = _slices(3)
    rendered = maker.render(CTViewMaker.collate(slices, [CTViewMaker.identity(48, 48, channels=3) for _ in slices]))[0]
    direct = whole_slices(slices, 32, [WINDOWS[w] for w in data.windows], 0.5, 0.5)
    torch.testing.assert_close(rendered, direct)
