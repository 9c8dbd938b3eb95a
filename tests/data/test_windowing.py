"""HU windows: stacking windows equals applying each per channel."""

from __future__ import annotations

import numpy as np
import torch

from ctssl.data.windowing import WINDOWS, apply_window, stack_windows


def test_stack_windows_equals_apply_window_per_channel():
    hu = np.random.default_rng(0).integers(-1100, 2000, (1, 24, 24)).astype(np.float32)
    windows = [WINDOWS["lung"], WINDOWS["soft_tissue"], WINDOWS["bone"]]
    expected = np.stack([apply_window(hu[0], level, width) for level, width in windows])
    np.testing.assert_allclose(stack_windows(hu.copy(), windows), expected, atol=1e-6)
    np.testing.assert_allclose(stack_windows(torch.from_numpy(hu), windows).numpy(), expected, atol=1e-6)
