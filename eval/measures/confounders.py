"""Whether a confounder's drop is more than chance: a paired permutation test of the AUROC difference between
the clean and the anti-correlated test set (the "source matters" study's shortcut experiment).

Only the negatives differ between the two test sets, so under "the confounder changes nothing" each negative's
two scores are exchangeable; swapping them at random ``permutations`` times gives the null distribution of the
AUROC difference (Good 2005, "Permutation, Parametric and Bootstrap Tests of Hypotheses", paired designs).
"""

from __future__ import annotations

import numpy as np


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of fixed positive scores ``pos`` against each row of negative scores ``neg`` (R, n)."""
    ordered = np.sort(pos)
    below = np.searchsorted(ordered, neg, side="left")          # positives below each negative
    not_above = np.searchsorted(ordered, neg, side="right")
    above = len(pos) - not_above                                   # positives scored higher
    ties = not_above - below
    return (above + 0.5 * ties).sum(1) / (len(pos) * neg.shape[1])


def permutation_test(positive: np.ndarray, clean: np.ndarray, confounded: np.ndarray, permutations: int = 2000,
                     seed: int = 0) -> dict:
    """Paired permutation test of AUROC(clean) - AUROC(confounded) where the two score vectors differ only
    on the negatives (module docstring). Returns the observed drop and the two-sided p-value
    ``(1 + #{|null| >= |observed|}) / (1 + permutations)``."""
    positive = np.asarray(positive, bool)
    pos, neg_clean, neg_conf = clean[positive], clean[~positive], confounded[~positive]
    if not np.allclose(pos, confounded[positive], rtol=0, atol=1e-3):   # the same images: only rounding differs
        raise ValueError("the permutation test needs the positives scored the same in both test sets")
    if len(pos) == 0 or len(neg_clean) == 0:
        return {"drop": None, "p_value": None, "permutations": 0}
    observed = float(_auroc_rows(pos, neg_clean[None])[0] - _auroc_rows(pos, neg_conf[None])[0])
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for start in range(0, permutations, 256):
        swap = rng.random((min(256, permutations - start), len(neg_clean))) < 0.5
        a = np.where(swap, neg_conf, neg_clean)
        b = np.where(swap, neg_clean, neg_conf)
        null[start:start + len(swap)] = _auroc_rows(pos, a) - _auroc_rows(pos, b)
    p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + permutations) if permutations else None
    return {"drop": round(observed, 5), "p_value": None if p is None else round(float(p), 5),
            "permutations": permutations}
