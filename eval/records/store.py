"""Evaluation runs: one JSON record per (task, backbone, dataset, label fraction, seed), with full
provenance, written so that runs can happen in any order, on any machine, and be resumed.

``OUT/runs/<run_id>.json`` is the record and ``OUT/runs/<run_id>.npz`` its test predictions
(keys, patients, targets, scores), both written atomically; ``run_id`` hashes what defines the run
(task, backbone source and weights hash, dataset fingerprint and label, fraction, seed, task
config), so a rerun skips finished runs and a SLURM array task writes only its own files.
``collate(OUT)`` gathers every record into ``OUT/results.jsonl`` (sorted, rewritten atomically) and
adds ``OUT/comparisons.jsonl``: paired bootstraps of each backbone against the first one on the
same test samples (``eval.metrics.paired_bootstrap``, patients resampled; the difference also relative to
the baseline's value, the RadNet-12M study's "relative delta") and their prediction similarity
(``eval.agreement``: who got which sample right, error consistency, Cohen's kappa); with two or more seeds
per backbone, also Welch's t-test of the per-seed metrics (``seed: "all"``, with both means and the
relative delta of the means).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from ctssl import __version__
from ctssl.core.atomic import atomic_open, atomic_write_text
from ctssl.eval.measures.agreement import prediction_similarity
from ctssl.eval.measures.classification import accuracy, balanced_accuracy, bootstrap_ci, macro_auroc, paired_bootstrap

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the ctssl checkout running (``+dirty`` with local changes); None when ctssl runs from
    an installed wheel (no checkout of its own: an enclosing repository would be someone else's)."""
    if not (REPO / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    from ctssl.core.machine import machine_info

    return {"ctssl": __version__, "git_commit": git_commit(), "command": sys.argv,
            "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info()}


def slug(source: str) -> str:
    """A short file-name-safe name of a backbone or dataset source (its run folder for exports)."""
    stem = Path(source).parent.name if source.endswith((".safetensors", ".pt")) else source
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")[:40]


def run_id(**identity) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def main_metric(record: dict) -> str:
    """The metric a record is compared and reported by: AUROC for binary and multi-label tasks (accuracy of
    a rare positive class rewards predicting "negative"), accuracy for multi-class tasks."""
    dataset = record.get("dataset") or {}
    if "accuracy" not in record["test"] or len(dataset.get("classes") or []) == 2:
        return "auroc"
    return "accuracy"


def metrics_with_ci(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, multilabel: bool,
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """Point estimates with 95% percentile-bootstrap CIs, patients resampled. Multi-class: accuracy,
    balanced accuracy, macro one-vs-rest AUROC; multi-label: macro AUROC over labels. Samples
    of classes unseen in training (target -1) are left out and counted."""
    keep = np.ones(len(y), bool) if multilabel else y >= 0
    y, scores, groups = y[keep], scores[keep], groups[keep]
    metrics = {"auroc": lambda t, s: macro_auroc(t, s)}
    if not multilabel:
        metrics = {"accuracy": lambda t, s: accuracy(t, s.argmax(1)),
                   "balanced_accuracy": lambda t, s: balanced_accuracy(t, s.argmax(1)), **metrics}
    out = {}
    for name, fn in metrics.items():
        value, lower, upper = bootstrap_ci(fn, y, scores, n=n_boot, groups=groups, seed=seed)
        out[name] = {"value": _finite(value), "lower": _finite(lower), "upper": _finite(upper)}
    out["n"] = int(keep.sum())
    out["n_unseen_class"] = int((~keep).sum())
    return out


def _finite(value: float) -> float | None:
    """Rounded for the record; None where undefined (JSON has no NaN)."""
    return None if value is None or not np.isfinite(value) else round(float(value), 5)


class RunStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.folder = self.out / "runs"

    def done(self, rid: str) -> bool:
        return (self.folder / f"{rid}.json").exists()

    def load(self, rid: str) -> dict:
        return json.loads((self.folder / f"{rid}.json").read_text())

    def save(self, record: dict, keys, groups, targets, scores) -> None:
        rid = record["run_id"]
        with atomic_open(self.folder / f"{rid}.npz") as f:
            np.savez_compressed(f, keys=np.asarray(keys), groups=np.asarray(groups), targets=targets,
                                scores=np.asarray(scores, np.float32))
        atomic_write_text(self.folder / f"{rid}.json", json.dumps(record, indent=1, default=str) + "\n")

    def predictions(self, rid: str) -> dict:
        with np.load(self.folder / f"{rid}.npz") as data:
            return {k: data[k] for k in data.files}

    def records(self) -> list[dict]:
        if not self.folder.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


def save_names(out: str | Path, sources: list[str], names: list[str] | None) -> None:
    """Readable names of backbone sources for the report, merged into OUT/names.json."""
    if not names:
        return
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} --name for {len(sources)} --backbone; give one name per backbone, in order.")
    path = Path(out) / "names.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_text(path, json.dumps({**known, **dict(zip(sources, names))}, indent=1) + "\n")


def _comparison_key(r: dict) -> tuple:
    return (r["task"], r["dataset"]["fingerprint"], r["dataset"]["label"], r["fraction"], r["seed"],
            r.get("variant", ""))


def collate(out: str | Path, n_boot: int = 1000) -> tuple[Path, Path]:
    """Write OUT/results.jsonl and OUT/comparisons.jsonl from OUT/runs/ (module docstring)."""
    store = RunStore(out)
    records = sorted(store.records(), key=lambda r: (_comparison_key(r), r["backbone_order"], r["backbone"]))
    results = store.out / "results.jsonl"
    with atomic_open(results, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(_comparison_key(r), []).append(r)
    comparisons = store.out / "comparisons.jsonl"
    with atomic_open(comparisons, "w") as f:
        for key, runs in groups.items():
            base = runs[0]
            a = store.predictions(base["run_id"])
            for other in runs[1:]:
                b = store.predictions(other["run_id"])
                if list(a["keys"]) != list(b["keys"]):
                    continue      # not the same test samples: no paired comparison
                multilabel = a["targets"].ndim == 2
                metric = main_metric(base)
                fn = macro_auroc if metric == "auroc" else (lambda t, s: accuracy(t, s.argmax(1)))
                keep = np.ones(len(a["targets"]), bool) if multilabel else a["targets"] >= 0
                result = paired_bootstrap(fn, a["targets"][keep], a["scores"][keep], b["scores"][keep], n=n_boot,
                                          groups=a["groups"][keep])
                base_value = float(fn(a["targets"][keep], a["scores"][keep]))
                result["relative_delta"] = result["delta"] / base_value if base_value else float("nan")
                agreement = None if multilabel else prediction_similarity(
                    a["targets"][keep], a["scores"][keep].argmax(1), b["scores"][keep].argmax(1))
                f.write(json.dumps({"task": key[0], "dataset": base["dataset"]["spec"], "label": key[2],
                                    "fraction": key[3], "seed": key[4], "variant": key[5], "metric": metric,
                                    "baseline": base["backbone"], "backbone": other["backbone"],
                                    "agreement": agreement, **{k: _finite(v) for k, v in result.items()}},
                                   sort_keys=True) + "\n")
        for test in seed_tests(records):
            f.write(json.dumps(test, sort_keys=True) + "\n")
    return results, comparisons


def seed_tests(records: list[dict]) -> list[dict]:
    """Across seeds: for each backbone against the first, on the same task, data, fraction and
    variant, Welch's t-test of the per-seed test metric (needs 2+ seeds on each side)."""
    from scipy.stats import ttest_ind

    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        key = (r["task"], r["dataset"]["fingerprint"], r["dataset"]["label"], r["fraction"], r.get("variant", ""))
        groups.setdefault(key, {}).setdefault(r["backbone"], []).append(r)
    out = []
    for key, by_backbone in groups.items():
        ordered = sorted(by_backbone.items(), key=lambda item: item[1][0]["backbone_order"])
        base_name, base = ordered[0]
        metric = main_metric(base[0])
        a = [r["test"][metric]["value"] for r in base if r["test"][metric]["value"] is not None]
        for name, runs in ordered[1:]:
            b = [r["test"][metric]["value"] for r in runs if r["test"][metric]["value"] is not None]
            if len(a) < 2 or len(b) < 2:
                continue
            t, p = ttest_ind(b, a, equal_var=False)
            out.append({"task": key[0], "dataset": base[0]["dataset"]["spec"], "label": key[2], "fraction": key[3],
                        "variant": key[4], "seed": "all", "test": "welch_t", "metric": metric,
                        "baseline": base_name, "backbone": name, "n_seeds": [len(a), len(b)],
                        "delta": _finite(float(np.mean(b) - np.mean(a))),
                        "relative_delta": _finite(float((np.mean(b) - np.mean(a)) / np.mean(a))) if np.mean(a) else None,
                        "means": [_finite(float(np.mean(a))), _finite(float(np.mean(b)))], "lower": None, "upper": None,
                        "t": _finite(float(t)), "p_value": _finite(float(p)), "agreement": None})
    return out
