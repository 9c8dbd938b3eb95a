"""Representation similarity between two sets of activations of the same N examples.

All functions take ``x`` (N, p) and ``y`` (N, q) as numpy arrays (rows = examples).

- ``linear_cka``: Kornblith et al. 2019, ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on
  column-centred features (equal to HSIC with linear kernels).
- ``rbf_cka``: CKA with Gaussian kernels ``exp(-d^2 / (2 sigma^2))``, ``sigma = threshold x median``
  pairwise distance (Kornblith et al.'s rule, threshold 1 by default), biased HSIC.
- ``unbiased_cka``: CKA from the unbiased HSIC estimator of Song et al. 2012 (Nguyen et al. 2021),
  which does not drift with N or feature count; ``minibatch_cka`` accumulates unbiased HSIC over
  mini-batches (Nguyen et al.), for sets too large for one N x N kernel.
- ``cca``: canonical correlations (QR + SVD of ``Q_x^T Q_y``, Björck & Golub), ``mean_cca`` their
  mean; ``svcca``: CCA after keeping the top singular directions explaining 99% of each set's
  variance (Raghu et al. 2017); ``pwcca``: correlations weighted by how much of the side with fewer
  neurons each canonical variate accounts for (Morcos et al. 2018; google/svcca's choice of side).
- ``spatial_cca``: mean CCA of one network before and after fine-tuning with spatial positions as datapoints and
  random channel draws, as Juodelyte et al. measured it ("Revisiting Hidden Representations in Transfer
  Learning for Medical Imaging", TMLR 2024); ``svcca_mean`` is google/svcca's "mean" (the leading coefficients
  that hold 98% of their sum).

Every measure refuses, with a ValueError saying why, what makes it undefined: NaN or infinite
activations, constant activations, too few examples (``check_pair``).

Too few images (``MIN_IMAGES``, ``too_few``): each measure has a smallest number of images below which its value
says more about the sample size than about the networks, and ``ctssl similarity`` reports "too few images"
instead of a number:

- linear and RBF CKA (biased HSIC): 50. With few images against many features the biased estimator reads close
  to 1 for unrelated networks (2 images: exactly 1, by construction; independent Gaussian features of 64
  dimensions read 0.87 at 10 images, 0.76 at 20, 0.57 at 50; of 512 dimensions 0.91 at 50). Above the minimum
  the bias is still there, so every value is reported beside its chance level, the CKA of the same activations
  with the images of one side shuffled (``chance_level``).
- unbiased CKA: 20. Defined from 4 images (the U-statistic), but between independent features its standard
  deviation is 0.75 at 4 images, 0.18 at 10, 0.08 at 20.
- mean CCA, SVCCA, PWCCA: 50. CCA over nearly as many features as images finds perfect spurious correlations;
  ``cca_features`` keeps at most N / 10 features, so 50 images allow 5.


Activations of a convolutional layer (N, C, H, W) are reduced by ``reduce_activations``: average
pooled to at most ``spatial`` x ``spatial`` positions and flattened, then a fixed random subset of
at most ``max_features`` features is kept (the subsampling of spatial positions and channels used
in the literature to keep kernels and CCA tractable). CCA with nearly as many features as examples
finds spurious perfect correlations, so ``cca_features`` keeps at most N / 10 features (a fixed
random subset; Raghu et al. recommend many more datapoints than neurons).
"""

from __future__ import annotations

import numpy as np


def check_pair(x, y, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both activation sets as float64 (N, p) and (N, q), or a ValueError saying what makes the measure
    undefined: different N, fewer than ``minimum`` examples, NaN or infinite values, or a set whose
    features are all constant (a similarity to a constant is 0/0)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"activations must be 2-D (examples x features), got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"the two sets describe different numbers of examples ({len(x)} and {len(y)})")
    if len(x) < minimum:
        raise ValueError(f"at least {minimum} examples are needed, got {len(x)}")
    for name, a in (("first", x), ("second", y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"the {name} activations hold NaN or infinite values")
        if a.shape[1] == 0 or np.all(np.ptp(a, axis=0) <= 1e-12 * max(1.0, float(np.abs(a).max()))):
            raise ValueError(f"the {name} activations are constant over the examples: similarity is undefined")
    return x, y


def _center(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = check_pair(x, y)
    x, y = _center(x), _center(y)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _gram_rbf(x: np.ndarray, threshold: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sq = np.sum(x * x, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    median = np.median(np.sqrt(d2[np.triu_indices(len(x), 1)]))
    sigma = threshold * median if median > 0 else 1.0
    return np.exp(-d2 / (2 * sigma ** 2))


def _center_gram(k: np.ndarray) -> np.ndarray:
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def _cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    kc, lc = _center_gram(k), _center_gram(l)
    return float(np.sum(kc * lc) / (np.linalg.norm(kc) * np.linalg.norm(lc)))


def rbf_cka(x: np.ndarray, y: np.ndarray, threshold: float = 1.0) -> float:
    x, y = check_pair(x, y)
    return _cka_from_grams(_gram_rbf(x, threshold), _gram_rbf(y, threshold))


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012's unbiased HSIC of two Gram matrices (n >= 4)."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"Unbiased HSIC needs at least 4 examples, got {n}.")
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    ones = np.ones(n)
    term1 = np.sum(k * l)
    term2 = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    term3 = 2 * (ones @ k @ l @ ones) / (n - 2)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Features are centred first: the U-statistic does not change (it is invariant to a feature offset),
    but without centring a large offset swamps the Gram matrices and costs the result its precision."""
    x, y = check_pair(x, y, minimum=4)
    x, y = _center(x), _center(y)
    k, l = x @ x.T, y @ y.T
    return float(unbiased_hsic(k, l) / np.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l, l)))


def minibatch_cka(x: np.ndarray, y: np.ndarray, batch: int = 256, seed: int = 0) -> float:
    """Linear CKA from unbiased HSIC summed over shuffled mini-batches (Nguyen et al. 2021)."""
    x, y = check_pair(x, y, minimum=4)
    n = len(x)
    if batch < 4:
        raise ValueError(f"mini-batches of at least 4 examples are needed, got {batch}")
    order = np.random.default_rng(seed).permutation(n)
    xy = xx = yy = 0.0
    for start in range(0, n - 3, batch):
        idx = order[start:start + batch]
        if len(idx) < 4:
            break
        xb, yb = np.asarray(x[idx], np.float64), np.asarray(y[idx], np.float64)
        k, l = xb @ xb.T, yb @ yb.T
        xy += unbiased_hsic(k, l)
        xx += unbiased_hsic(k, k)
        yy += unbiased_hsic(l, l)
    return float(xy / np.sqrt(xx * yy))


def cca(x: np.ndarray, y: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """Canonical correlations, descending, min(rank x, rank y) of them."""
    x, y = check_pair(x, y)
    qx = _orthonormal_basis(_center(x), eps)
    qy = _orthonormal_basis(_center(y), eps)
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


def _orthonormal_basis(x: np.ndarray, eps: float) -> np.ndarray:
    """An orthonormal basis of x's column space (rank-revealing via SVD)."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, s > eps * max(s[0], 1e-300)] if len(s) else u


def mean_cca(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(cca(x, y)))


def _svd_reduce(x: np.ndarray, keep: float) -> np.ndarray:
    x = _center(x)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    energy = np.cumsum(s ** 2) / np.sum(s ** 2)
    dims = int(np.searchsorted(energy, keep) + 1)
    return u[:, :dims] * s[:dims]


def svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    x, y = check_pair(x, y)
    return mean_cca(_svd_reduce(x, keep), _svd_reduce(y, keep))


def _projection_weighted(base: np.ndarray, q: np.ndarray, u: np.ndarray, rho: np.ndarray) -> float:
    """sum_i alpha_i rho_i / sum_i alpha_i, alpha_i = sum_j |<h_i, base_j>| for the canonical variates h_i
    of ``base`` (orthonormal basis ``q``, rotation ``u``)."""
    variates = q @ u[:, : len(rho)]                       # canonical variates (N, d), unit norm
    weights = np.abs(variates.T @ base).sum(1)
    return float(np.sum(weights * rho) / np.sum(weights))


def pwcca(x: np.ndarray, y: np.ndarray, eps: float = 1e-10) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): canonical correlations weighted by how much of one
    side's neurons each canonical variate accounts for. As google/svcca's ``compute_pwcca``, the side is
    the one with fewer neurons (non-degenerate directions here); when both have as many, the mean of the
    two weightings (svcca takes the first argument), so that pwcca(x, y) == pwcca(y, x) always."""
    x, y = check_pair(x, y)
    xc, yc = _center(x), _center(y)
    qx = _orthonormal_basis(xc, eps)
    qy = _orthonormal_basis(yc, eps)
    ux, rho, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)
    on_x = _projection_weighted(xc, qx, ux, rho)
    on_y = _projection_weighted(yc, qy, vt.T, rho)
    if qx.shape[1] != qy.shape[1]:
        return on_x if qx.shape[1] < qy.shape[1] else on_y
    return 0.5 * (on_x + on_y)


def reduce_activations(a: np.ndarray, spatial: int = 2, max_features: int = 4096, seed: int = 0) -> np.ndarray:
    """(N, C, H, W) or (N, T, D) or (N, D) activations -> (N, F) with F <= max_features."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(a)
    if a.ndim == 4:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        t = F.adaptive_avg_pool2d(t, (min(spatial, a.shape[2]), min(spatial, a.shape[3])))
        a = t.flatten(1).numpy()
    elif a.ndim == 3:                                     # tokens: mean over tokens
        a = a.mean(1)
    if a.shape[1] > max_features:
        keep = np.sort(np.random.default_rng(seed).choice(a.shape[1], max_features, replace=False))
        a = a[:, keep]
    return a


def cca_features(a: np.ndarray, seed: int = 0, ratio: int = 10) -> np.ndarray:
    """At most N / ``ratio`` features (a fixed random subset), so CCA is not spuriously high."""
    limit = max(1, a.shape[0] // ratio)
    if a.shape[1] <= limit:
        return a
    keep = np.sort(np.random.default_rng(seed).choice(a.shape[1], limit, replace=False))
    return a[:, keep]


def svcca_mean(rho: np.ndarray, threshold: float = 0.98) -> float:
    """google/svcca ``cca_core.get_cca_similarity``'s "mean": the mean of the leading coefficients whose
    sum first reaches ``threshold`` of the total (its ``sum_threshold``)."""
    rho = np.sort(np.asarray(rho, np.float64))[::-1]
    total = rho.sum()
    if total <= 0:
        return 0.0
    for i in range(1, len(rho) + 1):
        if rho[:i].sum() / total >= threshold:
            return float(rho[:i].mean())
    return float(rho.mean())


def spatial_cca(a: np.ndarray, b: np.ndarray, channels: int = 64, repeats: int = 5, seed: int = 0) -> dict:
    """Mean CCA of two (P, C) activation sets over the same P positions: ``repeats`` draws of ``channels``
    random channels (at most P / 10; the same channels on both sides when they are as wide, i.e. one network
    before and after fine-tuning; channels constant over the positions are left out first: a dead ReLU carries
    no direction); mean and standard deviation over the repeats, and svcca's 98% mean."""
    a, b = check_pair(a, b, minimum=2)
    live_a = np.flatnonzero(np.ptp(a, axis=0) > 0)
    live_b = np.flatnonzero(np.ptp(b, axis=0) > 0)
    # CCA with nearly as many channels as datapoints finds spurious perfect correlations: at most one channel
    # per 10 positions (a deep layer of a small input has few positions).
    cap = max(1, len(a) // 10)
    # One network before and after fine-tuning: channel i of one is channel i of the other, so both sides take
    # the same channels (of those live in both); layers of different widths draw their own.
    paired = a.shape[1] == b.shape[1]
    if paired:
        live_a = live_b = np.intersect1d(live_a, live_b)
        if len(live_a) == 0:
            raise ValueError("no channel varies over the positions in both activation sets")
    take_a, take_b = min(channels, len(live_a), cap), min(channels, len(live_b), cap)
    means, means98 = [], []
    for r in range(repeats):
        rng = np.random.default_rng((seed, r))
        ca = np.sort(rng.choice(live_a, take_a, replace=False))
        cb = ca if paired else np.sort(rng.choice(live_b, take_b, replace=False))
        rho = cca(a[:, ca], b[:, cb])
        means.append(float(rho.mean()))
        means98.append(svcca_mean(rho))
    return {"mean_cca": round(float(np.mean(means)), 5), "sd": round(float(np.std(means)), 5),
            "svcca_mean98": round(float(np.mean(means98)), 5), "positions": int(len(a)),
            "channels": [int(take_a), int(take_b)],
            "live_channels": [int(len(live_a)), int(len(live_b))], "repeats": repeats}


def weight_similarity(a: dict[str, np.ndarray], b: dict[str, np.ndarray], max_layers: int = 8) -> dict[str, float]:
    """RBF CKA (median-distance bandwidth) between the convolution WEIGHTS of two networks of one architecture
    (``{layer: (filters, in x k x k)}``, ``eval.features.layers.conv_weights``), layer by layer from the input:
    the RadNet-12M study's "feature reuse", how much of a pretrained layer survives fine-tuning. Each filter is
    one example; layers of different shapes or with fewer than 4 filters are skipped."""
    out = {}
    for name in list(a)[:max_layers]:
        wa, wb = a[name], b.get(name)
        if wb is not None and wa.shape == wb.shape and wa.shape[0] >= 4:
            out[name] = round(float(rbf_cka(wa, wb)), 5)
    return out


MEASURES = {
    "linear_cka": linear_cka,
    "rbf_cka": rbf_cka,
    "unbiased_cka": unbiased_cka,
    "mean_cca": lambda x, y: mean_cca(cca_features(x), cca_features(y)),
    "svcca": lambda x, y: svcca(cca_features(x), cca_features(y)),
    "pwcca": lambda x, y: pwcca(cca_features(x), cca_features(y)),
}

MIN_IMAGES = {"linear_cka": 50, "rbf_cka": 50, "unbiased_cka": 20, "mean_cca": 50, "svcca": 50, "pwcca": 50}
WHY = {"linear_cka": "the biased estimator reads near 1 for unrelated features on few images",
       "rbf_cka": "the biased estimator reads near 1 for unrelated features on few images",
       "unbiased_cka": "its spread between unrelated features is wider than the values it would compare",
       "mean_cca": "CCA needs many more images than features (at most N/10 features are kept)",
       "svcca": "CCA needs many more images than features (at most N/10 features are kept)",
       "pwcca": "CCA needs many more images than features (at most N/10 features are kept)"}


def too_few(measure: str, n_images: int) -> str | None:
    """Why ``measure`` is not reported on ``n_images`` images (module docstring), or None."""
    minimum = MIN_IMAGES.get(measure, 2)
    if n_images >= minimum:
        return None
    return f"too few images (N = {n_images}; {measure.replace('_', ' ')} needs at least {minimum}: {WHY[measure]})"


def chance_level(measure, x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """``measure`` between ``x`` and ``y`` with ``y``'s rows (images) shuffled: the value unrelated activations of
    these shapes read, which a biased estimator's value should be compared with."""
    order = np.random.default_rng(seed).permutation(len(y))
    return float(measure(x, np.asarray(y)[order]))
