"""Patient-grouped subsets of a labelled dataset: label fractions and cross-validation folds.

``subsample`` draws a fraction of the labelled training set by patient (the label-fraction experiments).

The seed studies that cross-validate (e.g. Juodelyte et al.'s "revisiting hidden representations": 5
folds grouped by patient) pool every labelled sample, whatever split ingest gave it, and deal the
patients into ``k`` folds: fold ``f`` is the test set, fold ``f + 1`` (mod k) the validation set that
chooses the epoch and the learning rate, the rest the training set. A patient's images never sit in two
of them. Patients are dealt in a seeded random order, each to the fold with the fewest samples so far
(largest patients first), so folds hold nearly equal numbers of images.
"""

from __future__ import annotations

import numpy as np


def patient_folds(groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of every sample; every fold gets at least one patient."""
    groups = np.asarray(groups)
    patients, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if k < 3:
        raise ValueError(f"patient-grouped cross-validation here needs at least 3 folds (test, validation and "
                         f"training), got {k}")
    if len(patients) < k:
        raise ValueError(f"{k} patient-grouped folds need at least {k} patients, the dataset has {len(patients)}")
    order = np.random.default_rng(seed).permutation(len(patients))
    order = order[np.argsort(-counts[order], kind="stable")]        # largest first, ties in seeded order
    sizes = np.zeros(k, np.int64)
    fold_of = np.empty(len(patients), np.int64)
    for rank, p in enumerate(order):
        f = rank if rank < k else int(np.argmin(sizes))             # one patient per fold first
        fold_of[p] = f
        sizes[f] += counts[p]
    return fold_of[inverse]


def fold_indices(folds: np.ndarray, fold: int, k: int) -> dict[str, np.ndarray]:
    """Sample indices of train / val / test for ``fold`` (test = fold, val = the next fold)."""
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    val = (fold + 1) % k
    return {"train": np.flatnonzero((folds != fold) & (folds != val)), "val": np.flatnonzero(folds == val),
            "test": np.flatnonzero(folds == fold)}


def subsample(targets: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a ``fraction`` of the labelled training set, drawn by patient: patients are
    shuffled with ``seed`` and taken until the fraction of samples is reached, then patients
    holding any class still missing are added (every class keeps at least one patient).
    ``fraction = 1`` keeps everything."""
    if not 0 < fraction <= 1:
        raise ValueError(f"Label fraction must be in (0, 1], got {fraction}.")
    n = len(groups)
    if fraction >= 1:
        return np.arange(n)
    unique, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    want = max(1, int(round(fraction * n)))
    counts = np.bincount(inverse, minlength=len(unique))
    chosen = order[: int(np.searchsorted(np.cumsum(counts[order]), want) + 1)]
    keep = np.isin(inverse, chosen)
    if targets.ndim == 1:
        for c in np.unique(targets[targets >= 0]):
            if not np.any(targets[keep] == c):
                candidates = [g for g in order if np.any(targets[inverse == g] == c)]
                keep |= inverse == candidates[0]
    return np.flatnonzero(keep)
