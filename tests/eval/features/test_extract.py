"""Feature extraction (eval.features.extract): loader workers give the features of one process."""

from __future__ import annotations

import numpy as np

from ctssl.eval.features.cache import cached_features

SOURCE = "random:resnet18:3"


def test_loader_workers_give_the_features_of_one_process(reference, tmp_path):
    data, ref = reference
    assert len(data.units["train"]) >= 2                   # several shards: the workers share them out
    feats = cached_features(SOURCE, data, ["train", "test"], 32, tmp_path, workers=2, batch=5)
    for split in ("train", "test"):
        np.testing.assert_allclose(np.asarray(feats[split].features), ref[split], rtol=1e-5, atol=1e-5)
