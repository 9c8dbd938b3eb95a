"""Representation similarity against direct implementations of the published formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.stats import ortho_group

from ctssl.eval.features.layers import spatial_activations
from ctssl.eval.measures.similarity import (cca, linear_cka, mean_cca, minibatch_cka, pwcca, rbf_cka,
                                            reduce_activations, spatial_cca, svcca, svcca_mean, unbiased_cka,
                                            unbiased_hsic)

rng = np.random.default_rng(0)
X = rng.normal(size=(120, 20))
Y = X @ rng.normal(size=(20, 15)) + 0.5 * rng.normal(size=(120, 15))


def _hsic_trace(k, l):
    """Gretton et al.: HSIC = tr(K H L H) / (n - 1)^2."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def test_linear_and_rbf_cka_equal_the_kernel_formula():
    k, l = X @ X.T, Y @ Y.T
    reference = _hsic_trace(k, l) / np.sqrt(_hsic_trace(k, k) * _hsic_trace(l, l))
    assert linear_cka(X, Y) == pytest.approx(reference, rel=1e-10)

    def gram(a):
        d2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        sigma = np.median(np.sqrt(d2[np.triu_indices(len(a), 1)]))
        return np.exp(-d2 / (2 * sigma ** 2))

    kr, lr = gram(X), gram(Y)
    assert rbf_cka(X, Y) == pytest.approx(_hsic_trace(kr, lr) / np.sqrt(_hsic_trace(kr, kr) * _hsic_trace(lr, lr)),
                                          rel=1e-8)


@pytest.mark.parametrize("measure", [linear_cka, rbf_cka, unbiased_cka])
def test_cka_identity_orthogonal_and_isotropic_scaling(measure):
    q = ortho_group.rvs(20, random_state=1)
    assert measure(X, X) == pytest.approx(1.0, abs=1e-9)
    assert measure(X, X @ q) == pytest.approx(1.0, abs=1e-9)
    assert measure(X, 7.5 * X) == pytest.approx(1.0, abs=1e-9)
    assert measure(X, Y @ ortho_group.rvs(15, random_state=2) * 3.0) == pytest.approx(measure(X, Y), abs=1e-9)
    assert measure(X, rng.normal(size=X.shape)) < 0.5 * measure(X, Y)


def test_unbiased_hsic_equals_the_u_statistic():
    """Song et al. 2012, eq. 5: the U-statistic over ordered quadruples of distinct indices."""
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    k, l = a @ a.T, b @ b.T
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(6), 4):
        h = 0.0
        for t, u, v, w in itertools.permutations((i, j, q, r)):
            h += k[t, u] * l[t, u] + k[t, u] * l[v, w] - 2 * k[t, u] * l[t, v]
        total += h / 24
        count += 1
    assert unbiased_hsic(k, l) == pytest.approx(total / count, rel=1e-9)


def test_minibatch_cka_approaches_full_unbiased_cka():
    big_x = rng.normal(size=(2000, 10))
    big_y = big_x[:, :5] @ rng.normal(size=(5, 8)) + rng.normal(size=(2000, 8))
    assert minibatch_cka(big_x, big_y, batch=500) == pytest.approx(unbiased_cka(big_x, big_y), abs=0.03)


def _reference_cca(x, y, eps=1e-12):
    """google/svcca cca_core's route: Sigma_xx^-1/2 Sigma_xy Sigma_yy^-1/2, then SVD."""
    x, y = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    inv_x = np.linalg.inv(np.real(sqrtm(sxx + eps * np.eye(len(sxx)))))
    inv_y = np.linalg.inv(np.real(sqrtm(syy + eps * np.eye(len(syy)))))
    return np.linalg.svd(inv_x @ sxy @ inv_y, compute_uv=False)[: min(x.shape[1], y.shape[1])]


def test_cca_matches_the_covariance_formula():
    ours = cca(X, Y)
    np.testing.assert_allclose(ours, _reference_cca(X, Y), atol=1e-8)
    assert mean_cca(X, X @ ortho_group.rvs(20, random_state=3)) == pytest.approx(1.0, abs=1e-9)
    noise = rng.normal(size=(120, 20))
    assert mean_cca(X, noise) < mean_cca(X, Y)


def test_svcca_and_pwcca():
    # SVCCA ignores low-variance noise directions that plain CCA correlates by chance.
    signal = rng.normal(size=(200, 3))
    a = np.hstack([signal @ rng.normal(size=(3, 10)), 1e-4 * rng.normal(size=(200, 10))])
    b = np.hstack([signal @ rng.normal(size=(3, 10)), 1e-4 * rng.normal(size=(200, 10))])
    assert svcca(a, b) == pytest.approx(1.0, abs=1e-6)
    assert mean_cca(a, b) < 0.7
    # PWCCA, directly: canonical variates from Sigma^-1/2 (svcca's cca_core route), weighted on the side
    # with fewer neurons, as google/svcca's compute_pwcca: Y (15) here, not X (20).
    xc, yc = X - X.mean(0), Y - Y.mean(0)
    inv_x = np.linalg.inv(np.real(sqrtm(xc.T @ xc)))
    inv_y = np.linalg.inv(np.real(sqrtm(yc.T @ yc)))
    u, rho, vt = np.linalg.svd(inv_x @ xc.T @ yc @ inv_y, full_matrices=False)
    variates = yc @ inv_y @ vt.T[:, :15]
    variates /= np.linalg.norm(variates, axis=0)
    weights = np.abs(variates.T @ yc).sum(1)
    assert pwcca(X, Y) == pytest.approx(np.sum(weights * rho[:15]) / weights.sum(), rel=1e-6)
    assert pwcca(X, Y) == pytest.approx(pwcca(Y, X), rel=1e-12)        # symmetric
    z = X[:, :15] + 0.3 * rng.normal(size=(120, 15))                    # as many neurons on both sides
    assert pwcca(z, Y) == pytest.approx(pwcca(Y, z), rel=1e-12)
    assert pwcca(X, X) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("measure", [linear_cka, rbf_cka, unbiased_cka, mean_cca, svcca, pwcca, minibatch_cka])
def test_undefined_inputs_are_refused_with_a_reason(measure):
    with pytest.raises(ValueError, match="NaN or infinite"):
        measure(np.where(X > 2.5, np.nan, X), Y)
    with pytest.raises(ValueError, match="constant"):
        measure(np.ones_like(X), Y)
    with pytest.raises(ValueError, match="examples"):
        measure(X[:1], Y[:1])
    with pytest.raises(ValueError, match="different numbers"):
        measure(X, Y[:-1])
    if measure in (unbiased_cka, minibatch_cka):
        with pytest.raises(ValueError, match="at least 4"):
            measure(X[:3], Y[:3])


def test_unbiased_cka_keeps_its_precision_under_a_large_offset():
    offset = 1e6
    assert unbiased_cka(X + offset, Y - offset) == pytest.approx(unbiased_cka(X, Y), rel=1e-9)


def test_reduce_activations_pools_and_subsamples():
    a = rng.normal(size=(8, 64, 7, 7)).astype(np.float32)
    assert reduce_activations(a, spatial=2).shape == (8, 256)
    assert reduce_activations(a, spatial=4, max_features=100).shape == (8, 100)
    np.testing.assert_array_equal(reduce_activations(a, 4, 100), reduce_activations(a, 4, 100))
    assert reduce_activations(rng.normal(size=(8, 5, 32)), 2).shape == (8, 32)


def test_svcca_mean_matches_svcca_sum_threshold():
    """google/svcca cca_core.sum_threshold: the first i whose leading sum reaches the threshold."""
    def reference(array, threshold=0.98):
        for i in range(len(array)):
            if np.sum(array[:i]) / np.sum(array) >= threshold:
                return float(np.mean(array[:i]))
        return float(np.mean(array))

    rho = np.array([0.99, 0.9, 0.5, 0.2, 0.01, 0.005])
    assert svcca_mean(rho) == pytest.approx(reference(rho))
    assert svcca_mean(rho) > rho.mean()


def test_spatial_cca_of_a_network_with_itself_and_with_noise():
    import torch

    from ctssl.pretrain.sources import load_backbone

    model, _ = load_backbone("random:resnet18:3")
    x = torch.randn(12, 3, 32, 32)
    a = spatial_activations(model, x, positions=400, seed=1)
    b = spatial_activations(load_backbone("random:resnet18:3")[0], x, positions=400, seed=1)
    assert list(a) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    for layer in a:       # the same architecture and images: the same positions, the same activations
        np.testing.assert_array_equal(a[layer], b[layer])
    same = spatial_cca(a["conv1"], b["conv1"], channels=16, repeats=3)
    assert same["mean_cca"] > 0.999 and same["positions"] == len(a["conv1"]) >= 400
    noise = spatial_cca(a["conv1"], np.random.default_rng(0).normal(size=(len(a["conv1"]), 64)), channels=16)
    assert noise["mean_cca"] < 0.35
    deep = spatial_cca(a["layer4"], b["layer4"] + 0.0, channels=64)
    assert deep["channels"][0] <= max(1, len(a["layer4"]) // 10)     # at most one channel per 10 datapoints
    with pytest.raises(ValueError, match="NaN"):
        spatial_cca(a["conv1"] * np.nan, b["conv1"])
