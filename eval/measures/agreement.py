"""Prediction similarity of two models on the same test samples.

- ``breakdown``: how many samples both got right, only A, only B, neither;
- ``error_consistency``: observed agreement on correctness (both right or both wrong) against
  the agreement expected if their errors were independent given their accuracies,
  ``c_exp = p_a p_b + (1 - p_a)(1 - p_b)``, and the kappa ``(c_obs - c_exp) / (1 - c_exp)``
  (Geirhos et al. 2020): 0 = independent errors, 1 = identical correctness;
- ``cohen_kappa``: Cohen's kappa of the two models' predicted classes.
"""

from __future__ import annotations

import numpy as np


def prediction_similarity(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    y, pred_a, pred_b = map(np.asarray, (y, pred_a, pred_b))
    right_a, right_b = pred_a == y, pred_b == y
    n = len(y)
    p_a, p_b = right_a.mean(), right_b.mean()
    observed = float(np.mean(right_a == right_b))
    expected = float(p_a * p_b + (1 - p_a) * (1 - p_b))
    kappa_errors = (observed - expected) / (1 - expected) if expected < 1 else float("nan")
    return {"n": int(n),
            "both_right": int(np.sum(right_a & right_b)), "only_a_right": int(np.sum(right_a & ~right_b)),
            "only_b_right": int(np.sum(~right_a & right_b)), "both_wrong": int(np.sum(~right_a & ~right_b)),
            "agreement_on_correctness": round(observed, 5), "chance_agreement": round(expected, 5),
            "error_consistency_kappa": None if not np.isfinite(kappa_errors) else round(float(kappa_errors), 5),
            "cohen_kappa": _cohen_kappa(pred_a, pred_b)}


def _cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    classes = np.union1d(a, b)
    index = {c: i for i, c in enumerate(classes)}
    table = np.zeros((len(classes), len(classes)))
    for u, v in zip(a, b):
        table[index[u], index[v]] += 1
    table /= table.sum()
    observed = np.trace(table)
    expected = float(table.sum(1) @ table.sum(0))
    return None if expected >= 1 else round(float((observed - expected) / (1 - expected)), 5)
