"""The rule of what a number of patients can carry, and the paired patient swap test (eval.measures.evidence),
against hand-computed cases (1, 2, 3 and 10 patients) and scipy's permutation test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import permutation_test

from ctssl.eval.measures.classification import auroc_of_ovr
from ctssl.eval.measures.evidence import (MIN_PATIENTS, assess, distinct_resamples, paired_permutation, ranked,
                                          smallest_p)


def mean_difference(a, b):
    return float(np.mean(b) - np.mean(a))


def test_the_rule_follows_what_the_exact_test_can_reach():
    # 2^(1-n): no two-sided p below 0.05 is possible with 5 patients, one is with 6.
    assert smallest_p(5) == 0.0625 and smallest_p(6) == 0.03125 and smallest_p(1) == 1.0
    assert smallest_p(MIN_PATIENTS) < 0.05 <= smallest_p(MIN_PATIENTS - 1)
    assert [distinct_resamples(n) for n in (1, 2, 3, 5, 6, 7)] == [1, 3, 10, 126, 462, 1716]
    e = assess(np.repeat(["p1"], 30))
    assert not e.enough and e.reason == "too few test patients to compare (n = 1; at least 6 needed)"
    e = assess(np.repeat(np.arange(6), 3))
    assert e.enough and e.reason is None and e.coarse(1000) and not e.coarse(400)
    # Per class where classes matter: 8 patients, positives in one of them.
    groups = np.repeat(np.arange(8), 2)
    y = (groups == 0).astype(int)
    e = assess(groups, y, classes=["absent", "present"])
    assert e.per_class == {"absent": 7, "present": 1} and not e.enough
    assert e.reason == ("too few test patients to compare (n = 8; patients per class: absent 7, present 1; at least "
                        "6, and 2 per class, needed)")
    multi = np.array([[1, 0], [0, 0], [1, 1], [0, 1]] * 4)
    e = assess(np.repeat(np.arange(8), 2), multi, multilabel=True, classes=["a", "b"])
    assert e.per_class == {"a+": 8, "a-": 8, "b+": 4, "b-": 4} and e.enough   # b: one value per patient


def test_one_and_two_patients_by_hand():
    # One patient: one pattern (swapping all is the mirror image), p = 1 whatever the difference.
    one = paired_permutation(mean_difference, np.array([0.5, 0.6]), np.array([0.9, 0.95]), ["x", "x"])
    assert one["p_value"] == 1.0 and one["method"] == "exact" and one["delta"] == pytest.approx(0.375)
    # Two patients, per-patient differences +0.2 and +0.1: patterns (first unswapped) give +0.15 and +0.05;
    # |0.05| < 0.15, so 1 of 2 patterns is as extreme: p = 0.5 = 2^(1-2).
    two = paired_permutation(mean_difference, np.array([0.5, 0.5]), np.array([0.7, 0.6]), [0, 1])
    assert two["p_value"] == 0.5 and two["patterns"] == 4 and two["smallest_p"] == 0.5


def test_three_patients_by_hand():
    # Differences +0.3, +0.2, -0.1: the four patterns with patient 0 unswapped give means
    # (0.3+0.2-0.1)/3 = 0.133, (0.3-0.2-0.1)/3 = 0, (0.3+0.2+0.1)/3 = 0.2, (0.3-0.2+0.1)/3 = 0.067:
    # |delta| >= 0.133 in 2 of 4 -> p = 0.5.
    a = np.zeros(3)
    b = np.array([0.3, 0.2, -0.1])
    result = paired_permutation(mean_difference, a, b, [0, 1, 2])
    assert result["p_value"] == 0.5 and result["delta"] == pytest.approx(0.4 / 3)


@pytest.mark.parametrize("n", [3, 10])
def test_equals_scipy_paired_permutation_test(n):
    rng = np.random.default_rng(n)
    a = rng.normal(0.6, 0.1, n)
    b = a + rng.normal(0.05, 0.05, n)
    ours = paired_permutation(mean_difference, a, b, np.arange(n), resamples=1000)
    reference = permutation_test((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), vectorized=True,
                                 permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert ours["method"] == "exact" and ours["p_value"] == pytest.approx(reference.pvalue, rel=1e-12)


def test_slices_of_a_patient_are_swapped_together():
    # 10 patients x 5 slices, the same difference on every slice of a patient: as 10 patients, not 50 slices.
    rng = np.random.default_rng(4)
    per_patient = rng.normal(0.03, 0.05, 10)
    groups = np.repeat(np.arange(10), 5)
    a = np.zeros(50)
    b = per_patient[groups]
    ours = paired_permutation(mean_difference, a, b, groups)
    reference = permutation_test((np.zeros(10), per_patient), lambda x, y, axis: np.mean(y - x, axis=axis),
                                 vectorized=True, permutation_type="samples", n_resamples=np.inf)
    assert ours["p_value"] == pytest.approx(reference.pvalue, rel=1e-12) and ours["patients"] == 10


def test_monte_carlo_never_below_what_the_test_can_give():
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1, 40)
    b = a + 5.0                                          # every patient better: only the identity is as extreme
    result = paired_permutation(mean_difference, a, b, np.arange(40), resamples=200, seed=1)
    assert result["method"] == "monte carlo" and result["p_value"] == pytest.approx(1 / 201)
    none = paired_permutation(mean_difference, a, a.copy(), np.arange(40), resamples=200)
    assert none["p_value"] == 1.0


def test_auroc_on_ranks_is_invariant_to_a_backbone_s_scale():
    """Venkatraman and Begg: swapping ranks, a backbone whose logits are 10x another's is the same backbone."""
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(12), 6)
    y = rng.integers(0, 2, len(groups))
    score = (y + rng.normal(0, 1, len(y)))[:, None]
    statistic = lambda p, q: auroc_of_ovr(y, q) - auroc_of_ovr(y, p)   # noqa: E731
    same = paired_permutation(statistic, ranked(score), ranked(10 * score + 3), groups)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    better = (y * 3 + rng.normal(0, 1, len(y)))[:, None]
    result = paired_permutation(statistic, ranked(score), ranked(better), groups)
    assert result["delta"] > 0.1 and result["p_value"] <= 0.01 and result["method"] == "monte carlo"
    assert result["p_value"] >= 1 / 1001 >= smallest_p(12) and math.isclose(result["smallest_p"], 2 ** -11)
