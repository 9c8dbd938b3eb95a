"""The synthetic confounders (eval.inputs.confounders): each changes only what it should, and the confounded
sets are nested and hold only positives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctssl.eval.inputs.confounders import confounded_set, inject


def test_confounders_change_only_what_they_should():
    hu = np.full((64, 64), -1000, np.int16)
    hu[16:48, 16:48] = 40
    tag = inject(hu, "tag")
    changed = tag != hu
    assert tag.dtype == np.int16 and tag.max() == 3000 and changed[:20, :20].any() and not changed[20:, 20:].any()
    patch = inject(hu, "patch")
    assert (patch[1:9, 1:9] == 3000).all() and (patch[9:, 9:] == hu[9:, 9:]).all()
    # Poisson (quantum) noise in HU: about 60 HU at water, less in air, unbiased, seeded per key.
    water = np.zeros((64, 64), np.int16)
    noisy = inject(water, "noise", key="a").astype(float)
    assert 55 < noisy.std() < 65 and abs(noisy.mean()) < 5
    assert inject(hu, "noise", key="a")[:8, :8].std() < noisy.std()
    assert np.array_equal(inject(water, "noise", key="a"), inject(water, "noise", key="a"))
    assert not np.array_equal(inject(water, "noise", key="a"), inject(water, "noise", key="b"))
    blurred = inject(hu, "lowpass")
    assert blurred[32, 32] == 40 and -1000 < blurred[16, 32] < 40          # edges soften, flat areas stay
    grey = Image.fromarray(np.full((28, 28), 100, np.uint8))
    out = inject(grey, "patch")
    assert isinstance(out, Image.Image) and np.asarray(out).max() == 255
    with pytest.raises(ValueError, match="Unknown confounder"):
        inject(hu, "sticker")


def test_confounded_sets_are_nested_and_only_positives():
    keys = [f"k{i}" for i in range(40)]
    positives = np.arange(40) % 3 == 0
    small, large = confounded_set(keys, positives, 0.3, 0), confounded_set(keys, positives, 0.8, 0)
    assert small < large and all(positives[keys.index(k)] for k in large)
    assert len(confounded_set(keys, positives, 1.0, 0)) == positives.sum()
