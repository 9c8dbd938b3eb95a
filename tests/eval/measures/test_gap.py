"""Domain-gap measures against closed forms and known cases."""

from __future__ import annotations

import numpy as np
import pytest

from ctssl.eval.measures.gap import domain_classifier, frechet_distance, frechet_from_moments, knn_purity, mmd2

rng = np.random.default_rng(0)


def test_mmd_near_zero_for_one_distribution_and_growing_with_shift():
    x = rng.normal(size=(300, 8))
    same, sigma = mmd2(x, rng.normal(size=(300, 8)))
    assert abs(same) < 0.01 and sigma > 0
    values = [mmd2(x, rng.normal(size=(300, 8)) + shift, sigma=sigma)[0] for shift in (0.25, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(values, values[1:])) and values[0] > same


def test_mmd_equals_the_direct_double_sum():
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3
    sigma = 1.3
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / 35
    assert mmd2(x, y, sigma)[0] == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_frechet_equals_the_gaussian_closed_form():
    # Diagonal covariances commute: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # A general pair: one distribution to itself is 0; samples converge to the closed form.
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    s1, s2 = q @ np.diag(a) @ q.T, np.diag(b)
    assert frechet_from_moments(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    x = rng.multivariate_normal(mu1, s1, 200_000)
    y = rng.multivariate_normal(mu2, s2, 200_000)
    assert frechet_distance(x, y) == pytest.approx(frechet_from_moments(mu1, s1, mu2, s2), rel=0.02)


def test_domain_classifier_and_knn_purity():
    x = rng.normal(size=(200, 10))
    same = domain_classifier(x, rng.normal(size=(200, 10)))
    apart = domain_classifier(x, rng.normal(size=(200, 10)) + 3.0)
    assert abs(same["proxy_a_distance"]) < 0.4 and apart["proxy_a_distance"] > 1.9
    mixed = knn_purity(x, rng.normal(size=(200, 10)))
    assert abs(mixed["purity"] - mixed["chance"]) < 0.08
    assert knn_purity(x, rng.normal(size=(200, 10)) + 5.0)["purity"] > 0.95


def test_gap_measures_refuse_undefined_inputs():
    x = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mmd2(np.where(x > 1.5, np.inf, x), x)
    with pytest.raises(ValueError, match="same features"):
        knn_purity(x, x[:, :3])
    with pytest.raises(ValueError, match="at least 5 samples"):
        domain_classifier(x[:4], x[:4])
