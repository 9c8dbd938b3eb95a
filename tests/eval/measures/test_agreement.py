"""Prediction similarity: counts by hand, kappas against scikit-learn and the closed form."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from ctssl.eval.measures.agreement import prediction_similarity


def test_breakdown_and_kappas():
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    a = np.array([0, 1, 1, 1, 2, 0, 0, 1])   # right: 1 0 1 1 1 0 1 1
    b = np.array([0, 0, 1, 0, 2, 1, 1, 1])   # right: 1 1 1 0 1 0 0 1
    s = prediction_similarity(y, a, b)
    assert (s["both_right"], s["only_a_right"], s["only_b_right"], s["both_wrong"]) == (4, 2, 1, 1)
    assert s["agreement_on_correctness"] == pytest.approx(5 / 8)
    p_a, p_b = 6 / 8, 5 / 8
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    assert s["chance_agreement"] == pytest.approx(expected, abs=1e-5)
    assert s["error_consistency_kappa"] == pytest.approx((5 / 8 - expected) / (1 - expected), abs=1e-5)
    assert s["cohen_kappa"] == pytest.approx(cohen_kappa_score(a, b), abs=1e-5)


def test_independent_errors_have_kappa_near_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 20000)
    a = np.where(rng.random(20000) < 0.8, y, (y + 1) % 5)
    b = np.where(rng.random(20000) < 0.6, y, (y + 2) % 5)
    assert abs(prediction_similarity(y, a, b)["error_consistency_kappa"]) < 0.03
    assert prediction_similarity(y, a, a)["error_consistency_kappa"] == pytest.approx(1.0)
