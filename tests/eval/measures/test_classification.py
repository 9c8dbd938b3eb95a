"""Metrics against scikit-learn and hand-computed cases; FAISS kNN against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ctssl.eval.measures.classification import accuracy, balanced_accuracy, bootstrap_ci, macro_auroc, paired_bootstrap


def test_auroc_equals_sklearn_multiclass_and_multilabel():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    scores = rng.random((300, 4)) + np.eye(4)[y] * 0.3
    scores = scores / scores.sum(1, keepdims=True)
    assert macro_auroc(y, scores) == pytest.approx(roc_auc_score(y, scores, multi_class="ovr", average="macro"))
    labels = (rng.random((200, 3)) < 0.3).astype(int)
    s = rng.random((200, 3)).round(1)  # many ties
    assert macro_auroc(labels, s) == pytest.approx(roc_auc_score(labels, s, average="macro"))
    # By hand: class 0 positives score 0.9, 0.6 against negatives 0.4, 0.6: pairs won 1 + 1 + 1
    # and one tie (0.5) -> 3.5 / 4; class 1 positives 0.6, 0.4 against 0.1, 0.4: also 3.5 / 4.
    hand = macro_auroc(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]]))
    assert hand == pytest.approx(3.5 / 4)


def test_accuracy_and_balanced_accuracy():
    y = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0])
    assert accuracy(y, pred) == 0.75
    assert balanced_accuracy(y, pred) == 0.5 == balanced_accuracy_score(y, pred)


def test_bootstrap_ci_covers_the_truth_at_about_the_nominal_rate():
    truth, hits = 0.7, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        correct = (rng.random(200) < truth).astype(int)
        _, lo, hi = bootstrap_ci(lambda y, o: float(np.mean(y == o)), correct, np.ones(200, int), n=300, seed=seed)
        hits += lo <= truth <= hi
    assert 0.88 <= hits / 200 <= 0.99  # nominal 0.95


def test_patient_bootstrap_is_wider_when_slices_are_correlated():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 30)
    patient_ok = rng.random(20) < 0.7
    correct = patient_ok[groups].astype(int)  # all slices of a patient share the outcome
    metric = lambda y, o: float(np.mean(y == o))  # noqa: E731
    _, lo_s, hi_s = bootstrap_ci(metric, correct, np.ones(600, int), n=300)
    _, lo_p, hi_p = bootstrap_ci(metric, correct, np.ones(600, int), n=300, groups=groups)
    assert (hi_p - lo_p) > 2 * (hi_s - lo_s)


def test_paired_bootstrap_detects_a_real_difference_only():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    bad = np.where(rng.random(400) < 0.7, y, 1 - y)
    result = paired_bootstrap(accuracy, y, bad, good, n=500)
    assert result["delta"] > 0.1 and result["lower"] > 0 and result["p_value"] < 0.01
    same = paired_bootstrap(accuracy, y, good, good.copy(), n=200)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
