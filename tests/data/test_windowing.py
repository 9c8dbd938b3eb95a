"""One windowing for every model input: stack_windows equals apply_window per channel, for numpy
arrays and torch tensors, and the training views' evaluation view uses it."""

from __future__ import annotations

import numpy as np
import torch

from ctssl.data.windowing import WINDOWS, apply_window, stack_windows
from ctssl.eval.inputs.spec import input_spec, prepare


def test_stack_windows_equals_apply_window_per_channel():
    hu = np.random.default_rng(0).integers(-1100, 2000, (1, 24, 24)).astype(np.float32)
    windows = [WINDOWS["lung"], WINDOWS["soft_tissue"], WINDOWS["bone"]]
    expected = np.stack([apply_window(hu[0], level, width) for level, width in windows])
    np.testing.assert_allclose(stack_windows(hu.copy(), windows), expected, atol=1e-6)
    np.testing.assert_allclose(stack_windows(torch.from_numpy(hu), windows).numpy(), expected, atol=1e-6)


def test_training_views_without_augmentation_equal_the_evaluation_input():
    """The training renderer with no augmentation (whole slice, no flip/blur/noise/jitter) gives exactly the
    evaluation input of ctssl.eval.inputs.spec: one resize and one windowing for both."""
    from ctssl.pretrain.config import DataConfig
    from ctssl.pretrain.views import CTViewMaker

    hu = np.random.default_rng(1).integers(-1000, 1500, (40, 40)).astype(np.int16)
    data = DataConfig()
    maker = CTViewMaker(data, [(32, (1.0, 1.0))], 3)
    rendered = maker.render(CTViewMaker.collate([hu], [CTViewMaker.identity(40, 40, channels=3)]))[0][0]
    spec = input_spec({"in_chans": 3, "method": "simclr", "data": {"windows": ["lung", "soft_tissue", "bone"]}},
                      "ct", 32)
    torch.testing.assert_close(rendered, prepare(hu, spec), atol=1e-5, rtol=1e-5)
