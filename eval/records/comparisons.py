"""Comparisons between backbones, gathered from the run store.

``collate(OUT)`` gathers every record of ``OUT/runs/`` into ``OUT/results.jsonl`` (sorted, rewritten
atomically) and adds ``OUT/comparisons.jsonl``: each backbone against the baseline (``choose_baseline``: the one
the user names; else the first natural-image-pretrained backbone, the arm CT pretraining is meant to beat; else
the first) on the same test samples: the difference of the main metric, its percentile interval from a paired
patient bootstrap (``eval.measures.classification.paired_bootstrap``; the difference also relative to the
baseline's value, the RadNet-12M study's "relative delta") and its p-value from the paired patient swap test
(``eval.measures.evidence.paired_permutation``: exact where it can be enumerated, never below 2^(1-n) for n
patients), and their prediction similarity (``eval.measures.agreement``: who got which sample right, error
consistency, Cohen's kappa); with two or more seeds per backbone, also Welch's t-test of the per-seed metrics
(``seed: "all"``, with both means and the relative delta of the means).

Every comparison follows ``eval.measures.evidence``'s rule: with too few test patients (or too few per class,
where the metric depends on classes) it carries the difference as a point value, no interval and no p-value, and
``insufficient`` says why; an interval from fewer distinct patient resamples than drawn is ``coarse_interval``.
Each comparison carries what its reader needs to weigh it: the test and its patterns, the smallest p it could
give, the test patients, and each backbone's pretraining arm. ``main_metric`` says which metric a record is
compared and reported by.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctssl.core.atomic import atomic_open
from ctssl.pretrain.sources import pretraining_arm
from ctssl.eval.measures.agreement import prediction_similarity
from ctssl.eval.measures.classification import (BOOTSTRAP_RESAMPLES, CLASS_METRICS, accuracy, auroc_of_ovr, finite,
                                                ovr_scores, paired_bootstrap)
from ctssl.eval.measures.evidence import assess, paired_permutation, ranked
from ctssl.eval.records.store import RunStore, load_names


def main_metric(record: dict) -> str:
    """The metric a record is compared and reported by: the mean over cases of per-case mean Dice for
    segmentation; AUROC for binary and multi-label tasks (accuracy of a rare positive class rewards predicting
    "negative"), accuracy for multi-class tasks."""
    if "mean_dice" in record["test"]:
        return "mean_dice"
    dataset = record.get("dataset") or {}
    if "accuracy" not in record["test"] or len(dataset.get("classes") or []) == 2:
        return "auroc"
    return "accuracy"


def headline(record: dict) -> str:
    """One line: the main test metric with its CI."""
    test = record["test"]
    name = main_metric(record)
    m = {k: ("n/a" if v is None else f"{v:.3f}") for k, v in test[name].items() if k in ("value", "lower", "upper")}
    reason = (test[name].get("evidence") or {}).get("reason")
    interval = f"({reason})" if reason else f"[{m['lower']}, {m['upper']}]"
    return f"test {name} {m['value']} {interval} (n={test['n']})"


def _comparison_key(r: dict) -> tuple:
    return (r["task"], r["dataset"]["fingerprint"], r["dataset"]["label"], r["fraction"], r["seed"],
            r.get("variant", ""))


def arm(record: dict) -> str:
    """The pretraining arm of a record's backbone (``pretrain.sources.pretraining_arm``)."""
    return pretraining_arm(record.get("backbone_card") or {})


def choose_baseline(records: list[dict], names: dict, baseline: str = "") -> str | None:
    """The source every backbone is compared with: ``baseline`` (a source or a readable name), else the first
    natural-image-pretrained backbone (by order), else the first backbone; None without records."""
    ordered = list(dict.fromkeys(r["backbone"] for r in sorted(records, key=lambda r: r["backbone_order"])))
    if baseline:
        chosen = [s for s in ordered if baseline in (s, names.get(s))]
        if not chosen:
            raise ValueError(f"Unknown baseline '{baseline}'. Valid baselines are the evaluated backbones: "
                             f"{[names.get(s) or s for s in ordered]}.")
        return chosen[0]
    natural = [s for s in ordered if arm(next(r for r in records if r["backbone"] == s)) == "natural"]
    return (natural or ordered or [None])[0]


def collate(out: str | Path, n_boot: int = BOOTSTRAP_RESAMPLES, baseline: str = "") -> tuple[Path, Path]:
    """Write OUT/results.jsonl and OUT/comparisons.jsonl from OUT/runs/ (module docstring); ``baseline``: a
    backbone source or readable name (``choose_baseline``)."""
    store = RunStore(out)
    records = sorted(store.records(), key=lambda r: (_comparison_key(r), r["backbone_order"], r["backbone"]))
    results = store.out / "results.jsonl"
    with atomic_open(results, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
    from ctssl.eval.records.table import write_csv

    write_csv(records, store.out / "results.csv", load_names(out))     # the same runs, one tidy row each
    reference = choose_baseline(records, load_names(out), baseline)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(_comparison_key(r), []).append(r)
    comparisons = store.out / "comparisons.jsonl"
    with atomic_open(comparisons, "w") as f:
        for key, runs in groups.items():
            base = next((r for r in runs if r["backbone"] == reference), runs[0])
            a = store.predictions(base["run_id"])
            for other in (r for r in runs if r is not base):
                b = store.predictions(other["run_id"])
                if list(a["keys"]) != list(b["keys"]):
                    continue      # not the same test samples: no paired comparison
                row = paired(base, other, a, b, n_boot)
                f.write(json.dumps({"task": key[0], "dataset": base["dataset"]["spec"], "label": key[2],
                                    "fraction": key[3], "seed": key[4], "variant": key[5], **row}, sort_keys=True)
                        + "\n")
        for test in seed_tests(records, reference):
            f.write(json.dumps(test, sort_keys=True) + "\n")
    return results, comparisons


def paired(base: dict, other: dict, a: dict, b: dict, n_boot: int = BOOTSTRAP_RESAMPLES) -> dict:
    """One backbone (``other``, predictions ``b``) against the baseline (``base``, ``a``) on the same test
    samples (module docstring)."""
    multilabel = a["targets"].ndim == 2
    metric = main_metric(base)
    keep = np.ones(len(a["targets"]), bool) if multilabel else a["targets"] >= 0
    y, groups = a["targets"][keep], a["groups"][keep]
    fn, comparable = _compared(metric, multilabel)
    out_a, out_b = comparable(a["scores"][keep]), comparable(b["scores"][keep])
    classes = (base.get("dataset") or {}).get("classes")
    evidence = assess(groups, y, multilabel, classes) if metric in CLASS_METRICS else assess(groups)
    values = [float(fn(y, out_a)), float(fn(y, out_b))]
    row = {"metric": metric, "baseline": base["backbone"], "backbone": other["backbone"],
           "arms": [arm(base), arm(other)], "resamples": n_boot, "n_patients": evidence.patients,
           "n_samples": int(keep.sum()), "values": [finite(v) for v in values], "delta": finite(values[1] - values[0]),
           "relative_delta": finite((values[1] - values[0]) / values[0]) if values[0] else None,
           "evidence": evidence.to_dict(n_boot), "insufficient": evidence.reason, "k_effective": base.get("k_effective"),
           "lower": None, "upper": None, "p_value": None, "test": "paired patient swap",
           "agreement": None if multilabel or metric == "mean_dice" else
           prediction_similarity(y, a["scores"][keep].argmax(1), b["scores"][keep].argmax(1))}
    if not evidence.enough:
        return row
    interval = paired_bootstrap(fn, y, out_a, out_b, n=n_boot, groups=groups)
    # Swapping mixes the two backbones' outputs: rank metrics swap ranks (a shared scale), the others their rows.
    swap_a, swap_b = (ranked(out_a), ranked(out_b)) if metric == "auroc" else (out_a, out_b)
    test = paired_permutation(lambda p, q: fn(y, q) - fn(y, p), swap_a, swap_b, groups, n_boot)
    row.update({"lower": finite(interval["lower"]), "upper": finite(interval["upper"]),
                "p_value": test["p_value"], "test": f"paired patient swap ({test['method']}, {test['patterns']} "
                                                    "patterns)",
                "patterns": test["patterns"], "smallest_p": test["smallest_p"],
                "coarse_interval": evidence.coarse(n_boot)})
    return row


def _compared(metric: str, multilabel: bool):
    """(metric(targets, outputs), outputs(scores)) of a run's saved predictions: AUROC on one-vs-rest log-odds
    (``eval.measures.classification.ovr_scores``), accuracy on the scores' argmax; segmentation records save each
    test case's mean Dice as its score (eval.protocols.segment), whose mean over cases (defined ones) is
    compared."""
    if metric == "mean_dice":
        return (lambda t, s: float(np.nanmean(s[:, 0])) if np.isfinite(s[:, 0]).any() else float("nan")), \
            (lambda s: np.asarray(s, np.float64))
    if metric == "auroc":
        return auroc_of_ovr, lambda s: ovr_scores(s, multilabel)
    return (lambda t, s: accuracy(t, s.argmax(1))), (lambda s: np.asarray(s, np.float64))


def seed_tests(records: list[dict], baseline: str | None = None) -> list[dict]:
    """Across seeds: for each backbone against ``baseline`` (default: the first), on the same task, data,
    fraction and variant, Welch's t-test of the per-seed test metric (needs 2+ seeds on each side, and test
    patients that ``eval.measures.evidence`` admits: every seed is tested on the same patients)."""
    from scipy.stats import ttest_ind

    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        key = (r["task"], r["dataset"]["fingerprint"], r["dataset"]["label"], r["fraction"], r.get("variant", ""))
        groups.setdefault(key, {}).setdefault(r["backbone"], []).append(r)
    out = []
    for key, by_backbone in groups.items():
        ordered = sorted(by_backbone.items(), key=lambda item: item[1][0]["backbone_order"])
        base_name, base = next((item for item in ordered if item[0] == baseline), ordered[0])
        metric = main_metric(base[0])
        a = [r["test"][metric]["value"] for r in base if r["test"][metric]["value"] is not None]
        for name, runs in (item for item in ordered if item[0] != base_name):
            b = [r["test"][metric]["value"] for r in runs if r["test"][metric]["value"] is not None]
            if len(a) < 2 or len(b) < 2:
                continue
            evidence = [(r["test"][metric].get("evidence") or {}) for r in base + runs]
            insufficient = next((e["reason"] for e in evidence if e.get("reason")), None)
            t, p = ttest_ind(b, a, equal_var=False) if insufficient is None else (float("nan"), float("nan"))
            patients = [e["patients"] for e in evidence if "patients" in e] or \
                [r.get("n_test_patients") or r["test"].get("n_patients") or 0 for r in base + runs]
            out.append({"task": key[0], "dataset": base[0]["dataset"]["spec"], "label": key[2], "fraction": key[3],
                        "variant": key[4], "seed": "all", "test": "welch_t", "metric": metric,
                        "baseline": base_name, "backbone": name, "n_seeds": [len(a), len(b)],
                        "arms": [arm(base[0]), arm(runs[0])], "resamples": None,
                        "n_patients": min(patients) or None, "insufficient": insufficient,
                        "delta": finite(float(np.mean(b) - np.mean(a))),
                        "relative_delta": finite(float((np.mean(b) - np.mean(a)) / np.mean(a))) if np.mean(a) else None,
                        "means": [finite(float(np.mean(a))), finite(float(np.mean(b)))], "lower": None, "upper": None,
                        "t": finite(float(t)), "p_value": finite(float(p)), "agreement": None})
    return out
