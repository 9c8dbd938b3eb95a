"""What a number of patients can carry: the one rule every interval, p-value and verdict of ctssl follows, and
the paired test whose resolution follows the number of patients. Pure functions on arrays.

The rule (``assess``): an interval or a comparison needs at least ``MIN_PATIENTS`` test patients, and, where
classes matter (AUROC, balanced accuracy), at least ``MIN_PATIENTS_PER_CLASS`` patients carrying each class.
Below it a number is reported as a point value only, with ``Evidence.reason`` ("too few test patients to
compare (n = 1; ...)") instead of an interval or a p-value. Why these numbers:

- ``MIN_PATIENTS = 6``: the exact paired test below (``paired_permutation``) over n patients has 2^n equally
  likely swap patterns, so its smallest two-sided p-value is 2^(1-n): 0.0625 at n = 5, 0.031 at n = 6. Below 6
  patients no difference can reach p < 0.05, whatever the data, so a verdict is impossible by construction.
  A patient bootstrap is no better there: over n patients it has at most C(2n - 1, n) distinct resamples (1 at
  n = 1, 3 at n = 2, 126 at n = 5), so a "95% interval" of one or two patients has no width.
- ``MIN_PATIENTS_PER_CLASS = 2``: a class carried by one patient is that patient; its AUROC or recall moves
  with that one patient's slices and no resampling over patients can say how much.

Intervals that pass the rule are still flagged ``coarse`` while the patient bootstrap has fewer distinct
resamples (``distinct_resamples``) than the B drawn (n = 6: 462 < 1000): its percentiles then sit on a handful
of values.

The paired test (``paired_permutation``): the two backbones' outputs on the same test samples are swapped
patient by patient (every slice of a patient together), which under "the two backbones are exchangeable" leaves
the distribution of the metric difference unchanged (Good 2005, "Permutation, Parametric and Bootstrap Tests of
Hypotheses", paired designs). For a metric that is a mean over patients (accuracy per sample weighted, mean
Dice per case) this is the paired sign-flip test; for AUROC each backbone's scores are first replaced by their
ranks (``ranked``), as Venkatraman and Begg (1996, "A distribution-free procedure for comparing receiver
operating characteristic curves from a paired experiment", Biometrika 83) do, so that swapping mixes outputs of
one scale. Exact by enumeration while the 2^(n-1) patterns (a pattern and its complement give the same |Δ|)
number at most B, else B random patterns with ``(1 + hits) / (1 + B)`` (Phipson and Smyth 2010); either way
never below 2^(1-n), the smallest p the test can give.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_PATIENTS = 6              # smallest n whose exact paired test can reach p < 0.05 (2^(1-n) = 0.031)
MIN_PATIENTS_PER_CLASS = 2    # patients carrying each class, where classes matter
ALPHA = 0.05                  # the level at which an adjusted p-value counts as a detectable difference


def smallest_p(n_patients: int) -> float:
    """The smallest two-sided p-value a paired swap test over ``n_patients`` patients can give: 2^(1-n)."""
    return 1.0 if n_patients <= 1 else 2.0 ** (1 - n_patients)


def distinct_resamples(n_units: int) -> int:
    """Distinct bootstrap resamples (multisets) of ``n_units`` patients: C(2n - 1, n)."""
    return math.comb(2 * n_units - 1, n_units) if n_units > 0 else 0


@dataclass(frozen=True)
class Evidence:
    """How many test patients a number rests on (``assess``) and whether the rule admits an interval, a p-value
    and a verdict for it."""

    patients: int
    per_class: dict[str, int] | None = None     # patients carrying each class; None where classes do not matter

    @property
    def enough(self) -> bool:
        if self.patients < MIN_PATIENTS:
            return False
        return not self.per_class or min(self.per_class.values()) >= MIN_PATIENTS_PER_CLASS

    @property
    def reason(self) -> str | None:
        """Why no interval or p-value is given (None when the rule admits one)."""
        if self.enough:
            return None
        needed = f"at least {MIN_PATIENTS}" + (f", and {MIN_PATIENTS_PER_CLASS} per class," if self.per_class
                                               is not None else "")
        classes = ""
        if self.per_class:
            classes = "; patients per class: " + ", ".join(f"{k} {v}" for k, v in self.per_class.items())
        return f"too few test patients to compare (n = {self.patients}{classes}; {needed} needed)"

    def coarse(self, resamples: int) -> bool:
        """Whether a patient bootstrap of ``resamples`` draws has fewer distinct resamples than draws."""
        return distinct_resamples(self.patients) < resamples

    def to_dict(self, resamples: int) -> dict:
        return {"patients": self.patients, "per_class": self.per_class, "enough": self.enough,
                "reason": self.reason, "distinct_resamples": distinct_resamples(self.patients),
                "coarse_interval": self.enough and self.coarse(resamples), "smallest_p": smallest_p(self.patients)}


def _class_names(targets: np.ndarray, multilabel: bool, classes: list[str] | None) -> list[tuple[str, np.ndarray]]:
    """(name, mask over samples) of each class that matters: a single-label task's classes present in
    ``targets`` (unseen-class targets, -1, left out); a multi-label task's positives and negatives per label."""
    if multilabel:
        out = []
        for j in range(targets.shape[1]):
            name = classes[j] if classes and j < len(classes) else str(j)
            column = targets[:, j]
            if column.min() != column.max():       # a label with one value is left out of the macro AUROC
                out += [(f"{name}+", column == 1), (f"{name}-", column == 0)]
        return out
    present = [int(c) for c in np.unique(targets) if c >= 0]
    return [(classes[c] if classes and c < len(classes) else str(c), targets == c) for c in present]


def assess(groups, targets=None, multilabel: bool = False, classes: list[str] | None = None) -> Evidence:
    """The evidence of test samples from patients ``groups`` (N,): distinct patients, and with ``targets`` ((N,)
    class indices, or (N, C) multi-label 0/1) the patients carrying each class (module docstring)."""
    groups = np.asarray(groups)
    per_class = None
    if targets is not None:
        targets = np.asarray(targets)
        per_class = {name: int(len(np.unique(groups[mask]))) for name, mask in
                     _class_names(targets, multilabel, classes)}
    return Evidence(int(len(np.unique(groups))), per_class)


def ranked(scores: np.ndarray) -> np.ndarray:
    """Each column of ``scores`` (N,) or (N, K) replaced by its average ranks in [0, 1] (ties share a rank):
    the same AUROC, on a scale two backbones share (Venkatraman and Begg 1996)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    return rankdata(scores, axis=0, method="average") / max(1, len(scores))


def _members(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """The patient index of each sample and the number of patients."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return inverse.ravel(), int(inverse.max()) + 1 if len(inverse) else 0


def paired_permutation(statistic: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray,
                       groups, resamples: int = 1000, seed: int = 0) -> dict:
    """Two-sided paired swap test of ``statistic(a, b)`` (the difference b - a of a metric) over patients
    (module docstring). ``a``, ``b``: the two backbones' outputs, one row per test sample, on a shared scale
    (``ranked`` for rank metrics); ``groups``: the sample's patient.

    Returns ``{"delta", "p_value", "method", "patterns", "smallest_p", "patients"}``; ``p_value`` None where the
    observed difference is undefined (NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"paired outputs must have one shape, got {a.shape} and {b.shape}")
    patient, n = _members(groups)
    if len(patient) != len(a):
        raise ValueError(f"groups must give one patient per sample, got {len(patient)} for {len(a)} samples")
    observed = float(statistic(a, b))
    out = {"delta": observed, "patients": n, "smallest_p": smallest_p(n)}
    if not np.isfinite(observed) or n == 0:
        return {**out, "p_value": None, "method": "undefined", "patterns": 0}
    shape = (-1,) + (1,) * (a.ndim - 1)

    def delta(flips: np.ndarray) -> float:
        swap = flips[patient].reshape(shape)
        return float(statistic(np.where(swap, b, a), np.where(swap, a, b)))

    tolerance = 1e-12 * max(1.0, abs(observed))
    if n == 1 or 2 ** (n - 1) <= resamples:
        # Every pattern with the first patient unswapped: its complement gives -delta, the same |delta|.
        hits = total = 0
        for bits in itertools.product((False, True), repeat=n - 1):
            value = delta(np.array((False, *bits)))
            hits += np.isfinite(value) and abs(value) >= abs(observed) - tolerance
            total += 1
        p, method, patterns = hits / total, "exact", 2 ** n
    else:
        rng = np.random.default_rng(seed)
        hits = 0
        for _ in range(resamples):
            value = delta(rng.random(n) < 0.5)
            hits += np.isfinite(value) and abs(value) >= abs(observed) - tolerance
        p, method, patterns = (1 + hits) / (1 + resamples), "monte carlo", resamples
    return {**out, "p_value": float(max(p, smallest_p(n))), "method": method, "patterns": patterns}
