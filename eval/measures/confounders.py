"""Whether a confounder's drop is more than chance: a paired permutation test of the AUROC difference between
the clean and the anti-correlated test set (the "source matters" study's shortcut experiment).

Only the negatives differ between the two test sets, so under "the confounder changes nothing" each patient's
two sets of scores are exchangeable; swapping them patient by patient (every slice of a patient together:
slices of one patient are not independent) gives the null distribution of the AUROC difference. The test is
``eval.measures.evidence.paired_permutation``, exact where its patterns can be enumerated, never below the
smallest p its number of patients allows (Good 2005, "Permutation, Parametric and Bootstrap Tests of
Hypotheses", paired designs).
"""

from __future__ import annotations

import numpy as np

from ctssl.eval.measures.evidence import paired_permutation


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of fixed positive scores ``pos`` against each row of negative scores ``neg`` (R, n)."""
    ordered = np.sort(pos)
    below = np.searchsorted(ordered, neg, side="left")          # positives below each negative
    not_above = np.searchsorted(ordered, neg, side="right")
    above = len(pos) - not_above                                   # positives scored higher
    ties = not_above - below
    return (above + 0.5 * ties).sum(1) / (len(pos) * neg.shape[1])


def permutation_test(positive: np.ndarray, clean: np.ndarray, confounded: np.ndarray, permutations: int = 2000,
                     seed: int = 0, groups=None) -> dict:
    """Paired permutation test of AUROC(clean) - AUROC(confounded), where the two score vectors (one score per
    test sample on a log scale, e.g. the positive class's log-odds) differ only on the negatives; ``groups``:
    each sample's patient (None: every sample its own). Returns the observed drop, the two-sided p-value and
    how it was computed (module docstring)."""
    positive = np.asarray(positive, bool)
    clean, confounded = np.asarray(clean, np.float64), np.asarray(confounded, np.float64)
    pos = clean[positive]
    if not np.allclose(pos, confounded[positive], rtol=1e-4, atol=1e-3):   # the same images: only rounding differs
        raise ValueError("the permutation test needs the positives scored the same in both test sets")
    if len(pos) == 0 or positive.all():
        return {"drop": None, "p_value": None, "permutations": 0}
    groups = np.arange(len(clean)) if groups is None else np.asarray(groups)
    confounded = np.where(positive, clean, confounded)          # identical positives: a swap moves negatives only
    negatives = ~positive

    def drop(conf: np.ndarray, cln: np.ndarray) -> float:
        rows = np.stack([cln[negatives], conf[negatives]])
        both = _auroc_rows(pos, rows)
        return float(both[0] - both[1])

    result = paired_permutation(drop, confounded, clean, groups, permutations, seed)
    return {"drop": round(result["delta"], 5), "p_value": None if result["p_value"] is None else
            round(result["p_value"], 5), "permutations": result["patterns"], "method": result["method"],
            "patients": result["patients"], "smallest_p": result["smallest_p"]}
