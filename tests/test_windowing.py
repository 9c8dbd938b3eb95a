"""One windowing for every model input: stack_windows equals apply_window per channel, for numpy
arrays and torch tensors, and the training views' evaluation view uses it."""

from __future__ import annotations

import numpy as np
import torch

from ctssl.data.windowing import WINDOWS, apply_window, stack_windows
from ctssl.eval.inputs import input_spec, prepare
from ctssl.pretrain.config import CTAugment
from ctssl.pretrain.views import CTViews


def test_stack_windows_equals_apply_window_per_channel():
    hu = np.random.default_rng(0).integers(-1100, 2000, (1, 24, 24)).astype(np.float32)
    windows = [WINDOWS["lung"], WINDOWS["soft_tissue"], WINDOWS["bone"]]
    expected = np.stack([apply_window(hu[0], level, width) for level, width in windows])
    np.testing.assert_allclose(stack_windows(hu.copy(), windows), expected, atol=1e-6)
    np.testing.assert_allclose(stack_windows(torch.from_numpy(hu), windows).numpy(), expected, atol=1e-6)


def test_training_eval_view_and_evaluation_input_agree():
    hu = np.random.default_rng(1).integers(-1000, 1500, (40, 40)).astype(np.int16)
    views = CTViews(["lung", "soft_tissue", "bone"], CTAugment(), [], 0.5, 0.5)
    spec = input_spec({"in_chans": 3, "method": "simclr", "data": {"windows": ["lung", "soft_tissue", "bone"]}},
                      "ct", 32)
    torch.testing.assert_close(views.eval_view(hu, 32), prepare(hu, spec), atol=1e-5, rtol=1e-5)
