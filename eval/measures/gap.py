"""Domain-gap measures between two sets of features ``x`` (n, d) and ``y`` (m, d).

- ``mmd2``: the unbiased estimate of squared Maximum Mean Discrepancy (Gretton et al. 2012, eq. 3)
  with a Gaussian kernel ``exp(-||a - b||^2 / (2 sigma^2))``; bandwidth rule: ``sigma`` = the
  median pairwise distance of the pooled sample (the median heuristic), reported with the value.
  Near 0 (it can be slightly negative) for one distribution, growing with the shift.
- ``frechet_distance``: ``||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^{1/2})``, the 2-Wasserstein
  distance between Gaussians with the features' means and covariances (as FID computes it). With
  fewer samples than feature dimensions the covariances are rank-deficient and the estimate is
  biased (``ctssl gap`` notes it); compare values only at equal sample sizes.
- ``domain_classifier``: a logistic regression told to separate the domains, 5-fold
  cross-validated accuracy on equal-size samples; proxy A-distance ``2 (1 - 2 err)`` (Ben-David
  et al. 2007): 0 = indistinguishable, 2 = perfectly separable.
- ``knn_purity``: the mean fraction of each sample's k nearest neighbours (cosine, itself
  excluded) from its own domain, against the chance level for equal-size domains;
- ``probe_gap``: a linear classifier trained on one domain, its accuracy on the same and on the other
  domain (the cross-domain "probe gap" of transfer studies).

Too few samples (``too_few``): each measure has a smallest number of samples per domain below which it is not
reported ("too few images" in the record and the report instead of a number):

- the domain classifier: 10 per domain (5 folds of at least one sample per domain each, and a held-out accuracy
  of 2 samples per fold moves in steps of 0.5);
- MMD²: 10 per domain (the unbiased estimate's spread between two samples of one distribution is of the order
  of the shifts it measures below that);
- the Fréchet distance: more samples per domain than feature dimensions (the covariances are otherwise
  rank-deficient and the distance depends on the sample size more than on the domains);
- kNN purity: k + 1 per domain (each sample's k neighbours could otherwise never all be of its own domain).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def check_domains(x, y, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets as float64 (n, d), (m, d), or a ValueError saying what makes a gap measure
    undefined: different dimensions, fewer than ``minimum`` samples in a set, NaN or infinite values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"the two feature sets must be (samples x the same features), got {x.shape} and {y.shape}")
    if min(len(x), len(y)) < minimum:
        raise ValueError(f"at least {minimum} samples per domain are needed, got {len(x)} and {len(y)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("the features hold NaN or infinite values")
    return x, y


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa, bb = np.sum(a * a, 1), np.sum(b * b, 1)
    return np.maximum(aa[:, None] + bb[None, :] - 2 * a @ b.T, 0)


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    pooled = np.concatenate([x, y]).astype(np.float64)
    d = np.sqrt(_sq_dists(pooled, pooled)[np.triu_indices(len(pooled), 1)])
    median = float(np.median(d))
    return median if median > 0 else 1.0


def mmd2(x: np.ndarray, y: np.ndarray, sigma: float | None = None) -> tuple[float, float]:
    """(unbiased MMD^2, sigma) with a Gaussian kernel; sigma by the median heuristic if None."""
    x, y = check_domains(x, y)
    sigma = sigma or median_bandwidth(x, y)
    gamma = 1.0 / (2 * sigma ** 2)
    kxx, kyy, kxy = (np.exp(-gamma * _sq_dists(a, b)) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    value = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
             - 2 * kxy.mean())
    return float(value), float(sigma)


def frechet_from_moments(mu1, s1, mu2, s2) -> float:
    import warnings

    with warnings.catch_warnings():       # a singular product is handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(np.asarray(s1) @ np.asarray(s2))
    if not np.isfinite(covmean).all():            # near-singular product: regularise as FID does
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = np.asarray(mu1) - np.asarray(mu2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    x, y = check_domains(x, y)
    return frechet_from_moments(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def balanced(x: np.ndarray, y: np.ndarray, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-size random samples of at most ``limit`` rows from each domain."""
    rng = np.random.default_rng(seed)
    n = min(len(x), len(y), limit)
    return (np.asarray(x)[np.sort(rng.choice(len(x), n, replace=False))],
            np.asarray(y)[np.sort(rng.choice(len(y), n, replace=False))])


def domain_classifier(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = check_domains(x, y, minimum=folds)
    data = np.concatenate([x, y])
    domain = np.r_[np.zeros(len(x)), np.ones(len(y))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    acc = float(np.mean(cross_val_score(clf, data, domain, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))))
    return {"accuracy": round(acc, 5), "proxy_a_distance": round(2 * (1 - 2 * (1 - acc)), 5), "folds": folds}


def knn_purity(x: np.ndarray, y: np.ndarray, k: int = 10) -> dict:
    x, y = check_domains(x, y)
    if k >= len(x) + len(y):
        raise ValueError(f"k ({k}) must be below the number of samples ({len(x) + len(y)})")
    data = np.concatenate([x, y]).astype(np.float64)
    data /= np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    domain = np.r_[np.zeros(len(x)), np.ones(len(y))]
    sims = data @ data.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argpartition(-sims, k, axis=1)[:, :k]
    purity = float(np.mean(domain[neighbours] == domain[:, None]))
    n = len(data)
    chance = float(((len(x) - 1) * len(x) + (len(y) - 1) * len(y)) / (n * (n - 1)))
    return {"k": k, "purity": round(purity, 5), "chance": round(chance, 5)}


def probe_gap(train_x: np.ndarray, train_y: np.ndarray, in_x: np.ndarray, in_y: np.ndarray, cross_x: np.ndarray,
              cross_y: np.ndarray) -> dict:
    """The cross-domain probe gap: a standardised, class-balanced logistic regression trained on one domain
    (``train``), its accuracy on held-out samples of the same domain (``in``) and of the other (``cross``), and
    their difference (in-domain minus cross-domain)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    clf.fit(train_x, train_y)
    in_domain, cross = float(np.mean(clf.predict(in_x) == in_y)), float(np.mean(clf.predict(cross_x) == cross_y))
    return {"in_domain_accuracy": round(in_domain, 5), "cross_domain_accuracy": round(cross, 5),
            "gap": round(in_domain - cross, 5), "n_train": len(train_y), "n_in": len(in_y), "n_cross": len(cross_y)}


MIN_PER_DOMAIN = {"domain_classifier": 10, "mmd2": 10}


def too_few(measure: str, n_per_domain: int, dim: int = 0, k: int = 10) -> str | None:
    """Why ``measure`` is not reported on ``n_per_domain`` samples per domain of ``dim`` features (module
    docstring), or None."""
    if measure == "frechet_distance":
        minimum, why = dim + 1, f"more samples than its {dim} feature dimensions, for full-rank covariances"
    elif measure == "knn_purity":
        minimum, why = k + 1, f"k + 1 = {k + 1}, so that a sample's {k} neighbours can all be of its own domain"
    else:
        minimum, why = MIN_PER_DOMAIN[measure], "below it the measure moves more with the sample than the domains"
    if n_per_domain >= minimum:
        return None
    return f"too few images (N = {n_per_domain} per domain; {measure.replace('_', ' ')} needs at least {minimum}: {why})"
