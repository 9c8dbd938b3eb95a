"""Patient-grouped subsets (eval.inputs.folds): label fractions drawn by patient."""

from __future__ import annotations

import numpy as np
import pytest

from ctssl.eval.inputs.folds import fold_indices, patient_folds, subsample


def test_subsample_draws_patients_and_keeps_every_class():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"P{i}" for i in range(50)], 10)
    targets = rng.integers(0, 3, 500)
    targets[groups == "P7"] = 3                     # a rare class held by one patient
    idx = subsample(targets, groups, 0.1, seed=1)
    chosen = set(groups[idx])
    assert set(np.flatnonzero(np.isin(groups, list(chosen)))) == set(idx)     # whole patients
    assert 40 <= len(idx) <= 80 and 3 in targets[idx]
    assert not np.array_equal(idx, subsample(targets, groups, 0.1, seed=2))
    np.testing.assert_array_equal(idx, subsample(targets, groups, 0.1, seed=1))
    assert len(subsample(targets, groups, 1.0, seed=0)) == 500


def test_patient_folds_are_grouped_balanced_and_fixed():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(23)], rng.integers(5, 60, 23))
    folds = patient_folds(groups, 5, seed=3)
    assert np.array_equal(folds, patient_folds(groups, 5, seed=3))
    for g in np.unique(groups):                                   # a patient sits in one fold only
        assert len(np.unique(folds[groups == g])) == 1
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 60   # within one patient of each other
    for f in range(5):
        idx = fold_indices(folds, f, 5)
        assert sorted(np.concatenate(list(idx.values()))) == list(range(len(groups)))
        assert not set(groups[idx["train"]]) & set(groups[idx["test"]])
        assert not set(groups[idx["val"]]) & set(groups[idx["test"]])
    with pytest.raises(ValueError, match="at least 5 patients"):
        patient_folds(np.array(["a", "b", "c"]), 5)
