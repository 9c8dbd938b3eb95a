"""The confounder statistics (eval.measures.confounders): the paired permutation test of the AUROC drop
and its AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from ctssl.eval.measures.confounders import _auroc_rows, permutation_test


def test_permutation_test_and_its_auroc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    positive = rng.random(300) < 0.3
    clean = np.where(positive, rng.normal(1, 1, 300), rng.normal(0, 1, 300))
    neg = clean[~positive]
    assert _auroc_rows(clean[positive], neg[None])[0] == pytest.approx(roc_auc_score(positive, clean))
    none = permutation_test(positive, clean, clean.copy(), 500)
    assert none["drop"] == 0 and none["p_value"] == 1.0
    shifted = np.where(positive, clean, clean + 1.5)              # confounded negatives scored higher
    effect = permutation_test(positive, clean, shifted, 500)
    assert effect["drop"] > 0.3 and effect["p_value"] <= 2 / 501
    with pytest.raises(ValueError, match="positives"):
        permutation_test(positive, clean, clean + 1.0, 10)
