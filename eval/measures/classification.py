"""Classification metrics with honest uncertainty: pure functions on arrays.

Scores are on a log scale, never probabilities: ``scores`` (N, C) are a classifier's logits (or
log-probabilities, or log vote shares: anything equal to log p_c up to a per-sample constant), and a multi-label
task's (N, C) are per-label logits. Softmax saturates in float32 (class probabilities of exactly 1.0 for every
confident sample tie, and their order is lost); logits keep it.

- ``accuracy``, ``balanced_accuracy`` (mean per-class recall);
- ``ovr_scores``: each class's one-vs-rest log-odds ``s_c - logsumexp_{j != c} s_j`` (the positive class's
  log-odds alone for a binary task, a multi-label task's logits as they are): the order of p_c, exactly;
- ``macro_auroc``: AUROC from the Mann-Whitney U statistic (ties count one half) of ``ovr_scores``: the
  positive (second) class's AUROC for a binary task, the one-vs-rest macro average over the classes present in
  ``y`` for more classes, the per-label macro average for multi-label targets (N, C) of 0/1;
- ``bootstrap_ci``: percentile bootstrap CI, resampling patients (``groups``) rather than slices
  when given, since slices of one patient are not independent;
- ``paired_bootstrap``: the difference of a metric between two models on the same samples and its CI (its
  p-value is the paired swap test's, ``eval.measures.evidence.paired_permutation``);
- ``metrics_with_ci``: a run's test metrics with patient-bootstrap CIs where the number of test patients admits
  one (``eval.measures.evidence``), as its record holds them;
- ``score`` and ``selection_metric``: the validation metric a probe or a fine-tuning grid is chosen by.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ctssl.eval.measures.evidence import assess

BOOTSTRAP_RESAMPLES = 1000      # resamples of every bootstrap CI and paired comparison, unless set


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred)))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y), np.asarray(pred)
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return float(np.mean(recalls))


def _binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie), via average ranks."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ovr_scores(scores: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """One-vs-rest log-odds of log-scale class scores (N, C) (module docstring): (N, 1) for C = 2 (the positive,
    second class against the first), (N, C) otherwise; a multi-label task's logits unchanged."""
    from scipy.special import logsumexp

    scores = np.asarray(scores, dtype=np.float64)
    if multilabel:
        return scores
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"class scores must be (samples, classes >= 2), got shape {scores.shape}")
    if scores.shape[1] == 2:
        with np.errstate(invalid="ignore"):
            return (scores[:, 1] - scores[:, 0])[:, None]
    others = np.empty_like(scores)
    for c in range(scores.shape[1]):
        others[:, c] = logsumexp(np.delete(scores, c, axis=1), axis=1)
    with np.errstate(invalid="ignore"):
        return scores - others


def auroc_of_ovr(y: np.ndarray, ovr: np.ndarray) -> float:
    """``macro_auroc`` of scores already in one-vs-rest form (``ovr_scores``): one column (binary: the positive
    class, index 1), one per class, or one per label (``y`` (N, C) multi-label)."""
    y, ovr = np.asarray(y), np.asarray(ovr, dtype=np.float64)
    if y.ndim == 2:
        per = [_binary_auroc(y[:, c].astype(bool), ovr[:, c]) for c in range(y.shape[1])]
    elif ovr.shape[1] == 1:
        per = [_binary_auroc(y == 1, ovr[:, 0])]
    else:
        per = [_binary_auroc(y == c, ovr[:, c]) for c in np.unique(y) if c >= 0]
    per = [v for v in per if not np.isnan(v)]
    return float(np.mean(per)) if per else float("nan")


def macro_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of log-scale ``scores`` (N, C): binary, the positive class's; more classes, one-vs-rest macro;
    ``y`` (N, C) of 0/1, per-label macro (module docstring)."""
    y = np.asarray(y)
    return auroc_of_ovr(y, ovr_scores(scores, multilabel=y.ndim == 2))


class _Resampler:
    """Bootstrap index sets: samples, or whole groups (patients) with all their samples."""

    def __init__(self, n: int, groups: np.ndarray | None, seed: int):
        self.n, self.rng = n, np.random.default_rng(seed)
        self.members = None
        if groups is not None:
            _, inverse = np.unique(np.asarray(groups), return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.flatnonzero(np.diff(inverse[order])) + 1
            self.members = np.split(order, bounds)

    def __call__(self) -> np.ndarray:
        if self.members is None:
            return self.rng.integers(0, self.n, self.n)
        chosen = self.rng.integers(0, len(self.members), len(self.members))
        return np.concatenate([self.members[g] for g in chosen])


def bootstrap_ci(metric: Callable, y: np.ndarray, out: np.ndarray, n: int = BOOTSTRAP_RESAMPLES, alpha: float = 0.05,
                 groups: np.ndarray | None = None, seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, lower, upper) of ``metric(y, out)`` by the percentile bootstrap."""
    y, out = np.asarray(y), np.asarray(out)
    resample = _Resampler(len(y), groups, seed)
    values = []
    for _ in range(n):
        idx = resample()
        values.append(metric(y[idx], out[idx]))
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:          # undefined on every resample (e.g. AUROC with one class)
        return float(metric(y, out)), float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(metric(y, out)), float(lo), float(hi)


def paired_bootstrap(metric: Callable, y: np.ndarray, out_a: np.ndarray, out_b: np.ndarray,
                     n: int = BOOTSTRAP_RESAMPLES, alpha: float = 0.05, groups: np.ndarray | None = None,
                     seed: int = 0) -> dict:
    """Difference metric(b) - metric(a) on the same resamples: ``{"delta", "lower", "upper"}`` (the percentile
    interval; its test is ``eval.measures.evidence.paired_permutation``)."""
    y, out_a, out_b = np.asarray(y), np.asarray(out_a), np.asarray(out_b)
    resample = _Resampler(len(y), groups, seed)
    deltas = []
    for _ in range(n):
        idx = resample()
        deltas.append(metric(y[idx], out_b[idx]) - metric(y[idx], out_a[idx]))
    deltas = np.asarray(deltas, dtype=np.float64)
    deltas = deltas[~np.isnan(deltas)]
    delta = float(metric(y, out_b) - metric(y, out_a))
    if len(deltas) == 0:
        return {"delta": delta, "lower": float("nan"), "upper": float("nan")}
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return {"delta": delta, "lower": float(lo), "upper": float(hi)}


# Metrics whose value depends on how each class is represented among the test patients (evidence per class).
CLASS_METRICS = ("balanced_accuracy", "auroc")


def metrics_with_ci(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, multilabel: bool,
                    n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0, classes: list[str] | None = None) -> dict:
    """Point estimates with 95% percentile-bootstrap CIs, patients resampled, where the test patients admit an
    interval (``eval.measures.evidence.assess``: per class for balanced accuracy and AUROC); otherwise the
    point value with ``lower``/``upper`` None and the ``reason``. Multi-class: accuracy, balanced accuracy,
    macro one-vs-rest AUROC; multi-label: macro AUROC over labels; ``scores`` log-scale (module docstring).
    Samples of classes unseen in training (target -1) are left out and counted. Each metric's ``evidence``
    says what it rests on (patients, per class, distinct resamples, whether the interval is coarse)."""
    keep = np.ones(len(y), bool) if multilabel else y >= 0
    y, scores, groups = y[keep], scores[keep], groups[keep]
    metrics = {"auroc": lambda t, s: macro_auroc(t, s)}
    if not multilabel:
        metrics = {"accuracy": lambda t, s: accuracy(t, s.argmax(1)),
                   "balanced_accuracy": lambda t, s: balanced_accuracy(t, s.argmax(1)), **metrics}
    overall = assess(groups)
    by_class = assess(groups, y, multilabel, classes)
    out = {}
    for name, fn in metrics.items():
        evidence = by_class if name in CLASS_METRICS else overall
        if evidence.enough:
            value, lower, upper = bootstrap_ci(fn, y, scores, n=n_boot, groups=groups, seed=seed)
        else:
            value, lower, upper = float(fn(y, scores)), float("nan"), float("nan")
        out[name] = {"value": finite(value), "lower": finite(lower), "upper": finite(upper),
                     "evidence": evidence.to_dict(n_boot)}
    out["n"] = int(keep.sum())
    out["n_patients"] = overall.patients
    out["n_unseen_class"] = int((~keep).sum())
    return out


def finite(value: float) -> float | None:
    """Rounded for the record; None where undefined (JSON has no NaN)."""
    return None if value is None or not np.isfinite(value) else round(float(value), 5)


def selection_metric(cfg, multilabel: bool, num_classes: int = 0) -> str:
    """The validation metric of a probe or fine-tuning ``cfg`` (its ``select`` and ``balanced``): as set, or
    by task: AUROC for binary and multi-label tasks (what they are reported by), balanced accuracy (accuracy
    when the loss is not class-weighted) for multi-class ones."""
    if cfg.select != "auto":
        return cfg.select
    if multilabel or num_classes == 2:
        return "auroc"
    return "balanced_accuracy" if cfg.balanced else "accuracy"


def score(metric: str, y: np.ndarray, scores: np.ndarray, multilabel: bool) -> float:
    """``metric`` (accuracy, balanced_accuracy or auroc) of class scores (N, C); macro AUROC for multi-label."""
    if metric == "auroc" or multilabel:
        return macro_auroc(y, scores)
    pred = scores.argmax(1)
    if metric == "balanced_accuracy":
        return balanced_accuracy(y, pred)
    if metric == "accuracy":
        return accuracy(y, pred)
    raise ValueError(f"Unknown selection metric '{metric}'. Valid: accuracy, balanced_accuracy, auroc.")
