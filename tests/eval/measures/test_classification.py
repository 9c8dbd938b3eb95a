"""Metrics against scikit-learn and hand-computed cases; FAISS kNN against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ctssl.eval.measures.classification import (accuracy, balanced_accuracy, bootstrap_ci, macro_auroc,
                                                metrics_with_ci, ovr_scores, paired_bootstrap)


def test_auroc_equals_sklearn_multiclass_and_multilabel():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    probabilities = rng.random((300, 4)) + np.eye(4)[y] * 0.3
    probabilities = probabilities / probabilities.sum(1, keepdims=True)
    # Scores are log-scale: the log-probabilities (or logits) give sklearn's AUROC of the probabilities.
    assert macro_auroc(y, np.log(probabilities)) == pytest.approx(
        roc_auc_score(y, probabilities, multi_class="ovr", average="macro"))
    logits = rng.normal(size=(300, 4)) + 2 * np.eye(4)[y]
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert macro_auroc(y, logits) == pytest.approx(roc_auc_score(y, softmax, multi_class="ovr", average="macro"))
    labels = (rng.random((200, 3)) < 0.3).astype(int)
    s = rng.random((200, 3)).round(1)  # many ties: multi-label scores are per-label logits, ranked as they are
    assert macro_auroc(labels, s) == pytest.approx(roc_auc_score(labels, s, average="macro"))
    # By hand, binary: the positive class's AUROC of its log-odds s1 - s0: positives (y = 1) at 0.2 and -0.2,
    # negatives at 0.8 and -0.2: pairs won 0 + 1 + 0 and one tie (0.5) -> 1.5 / 4.
    hand = macro_auroc(np.array([0, 0, 1, 1]), np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])))
    assert hand == pytest.approx(roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.4])) == pytest.approx(0.875)


def test_binary_auroc_survives_saturated_softmax():
    """Issue 27: a probe whose class-1 probabilities are 1.0 in float32 for both positives lost their order (the
    mean of two one-vs-rest AUROCs read 0.75); ranked on the logits, the AUROC is exact."""
    import torch

    y = np.array([0, 0, 1, 1])
    logits = np.array([[0.0, -3.0], [0.0, 25.0], [0.0, 40.0], [0.0, 60.0]], np.float32)
    probabilities = torch.from_numpy(logits).softmax(-1).numpy()
    assert probabilities[1, 1] == probabilities[2, 1] == probabilities[3, 1] == 1.0   # saturated: ties
    assert roc_auc_score(y, probabilities[:, 1]) == 0.75        # what probabilities gave
    assert macro_auroc(y, logits) == roc_auc_score(y, logits[:, 1] - logits[:, 0]) == 1.0
    # Multi-class: one-vs-rest log-odds keep the order that saturated probabilities tie.
    y3 = np.array([0, 0, 1, 2])
    logits3 = np.array([[50.0, 0, 0], [0, 0, 20.0], [0, 50.0, 0], [0, 0, 40.0]], np.float32)
    saturated = torch.from_numpy(logits3).softmax(-1).double().numpy()
    assert saturated[1, 2] == saturated[3, 2] == 1.0                   # a class-0 and the class-2 sample tie
    assert roc_auc_score(y3, saturated, multi_class="ovr") < 1.0
    # Per class, scikit-learn's binary AUROC of the one-vs-rest log-odds is each class's; every class separates.
    per_class = [roc_auc_score(y3 == c, ovr_scores(logits3)[:, c]) for c in range(3)]
    assert per_class == [1.0, 1.0, 1.0] and macro_auroc(y3, logits3) == 1.0
    # s_c - logsumexp of the others, by hand: sample 1's class-2 log-odds 20 - log(1 + 1), class-0 -log(1 + e^20).
    np.testing.assert_allclose(ovr_scores(logits3)[1], [-np.logaddexp(0, 20), -np.logaddexp(0, 20), 20 - np.log(2)],
                               rtol=1e-12)


def test_metrics_with_ci_give_no_interval_below_the_rule():
    """One, two or five test patients: point values and the reason, never an interval of no width."""
    rng = np.random.default_rng(3)
    for patients in (1, 2, 5):
        groups = np.repeat(np.arange(patients), 20)
        y = np.tile([0, 1], 10 * patients)
        logits = np.stack([np.zeros(len(y)), y + rng.normal(0, 1, len(y))], 1)
        m = metrics_with_ci(y, logits, groups, False, n_boot=200)
        for name in ("accuracy", "balanced_accuracy", "auroc"):
            assert m[name]["value"] is not None and m[name]["lower"] is None and m[name]["upper"] is None
            assert m[name]["evidence"]["reason"].startswith(f"too few test patients to compare (n = {patients}")
    groups = np.repeat(np.arange(8), 20)
    y = np.tile([0, 1], 80)
    logits = np.stack([np.zeros(len(y)), y + rng.normal(0, 1, len(y))], 1)
    m = metrics_with_ci(y, logits, groups, False, n_boot=200, classes=["no", "yes"])
    assert m["auroc"]["lower"] < m["auroc"]["value"] < m["auroc"]["upper"]
    assert m["auroc"]["evidence"]["per_class"] == {"no": 8, "yes": 8}
    assert m["accuracy"]["evidence"]["per_class"] is None and m["n_patients"] == 8
    # Positives in one patient only: AUROC rests on that patient, accuracy does not.
    y = np.where(groups == 0, 1, 0)
    m = metrics_with_ci(y, logits, groups, False, n_boot=200, classes=["no", "yes"])
    assert m["auroc"]["lower"] is None and "yes 1" in m["auroc"]["evidence"]["reason"]
    assert m["accuracy"]["lower"] is not None


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
    assert result["delta"] > 0.1 and result["lower"] > 0
    same = paired_bootstrap(accuracy, y, good, good.copy(), n=200)
    assert same == {"delta": 0.0, "lower": 0.0, "upper": 0.0}
