"""The report's answer states only what its test patients can carry (issue 27): from a run store of known
predictions, through collate (eval.records.comparisons) and the report (eval.report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.records.comparisons import collate
from ctssl.eval.records.store import RunStore
from ctssl.eval.report.build import write_report

CARDS = {"natural.safetensors": {"method": "simclr", "data": {"kind": "natural"}, "backbone": "resnet18"},
         "ct.safetensors": {"method": "simclr", "data": {"kind": "ct"}, "backbone": "resnet18"}}


def _store(out, patients: int, slices: int = 20, gain: float = 2.0, tasks=("probe",), seed: int = 0):
    """Two backbones on the same binary test samples: the CT one's logits separate the classes better by
    ``gain``; one record per task."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], slices)
    y = np.tile([0, 1], len(groups) // 2)
    keys = [f"k{i}" for i in range(len(y))]
    store = RunStore(out)
    for task in tasks:
        for order, (source, strength) in enumerate((("natural.safetensors", 0.5), ("ct.safetensors", 0.5 + gain))):
            logits = np.stack([np.zeros(len(y)), strength * (2 * y - 1) + rng.normal(0, 1.5, len(y))], 1)
            record = {"run_id": f"{task}-{order}", "task": task, "variant": "", "backbone": source,
                      "backbone_order": order, "backbone_card": {**CARDS[source], "source": source},
                      "dataset": {"spec": "shards", "label": "lesion", "fingerprint": "f", "kind": "ct",
                                  "classes": ["0", "1"], "multilabel": False, "counts": {"test": len(y)}},
                      "fraction": 1.0, "seed": 0, "n_train": 10, "input": {"size": 64, "rule": "test"},
                      "test": metrics_with_ci(y, logits, groups, False, 200, classes=["0", "1"])}
            store.save(record, keys, groups, y, logits)
    return out


def _report(out) -> tuple[list[dict], str]:
    collate(out, 200)
    _, md = write_report(out, "test")
    comparisons = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    return comparisons, md.read_text()


@pytest.mark.parametrize("patients", [1, 2])
def test_one_or_two_test_patients_give_no_verdict(tmp_path, patients):
    (c,), page = _report(_store(tmp_path, patients))
    assert c["insufficient"].startswith(f"too few test patients to compare (n = {patients}")
    assert c["p_value"] is None and c["lower"] is None and c["upper"] is None and c["delta"] > 0
    assert "detectable difference" not in page and "better than" not in page
    assert f"| n/a | n/a | too few test patients to compare (n = {patients}) |" in page     # p, adjusted p, words
    assert "Too few test patients to compare CT-pretrained backbones" in page
    assert f"(too few test patients, n = {patients})" in page


def test_enough_patients_give_an_interval_a_test_and_a_direction(tmp_path):
    (c,), page = _report(_store(tmp_path, 12))
    assert c["insufficient"] is None and c["lower"] < c["delta"] < c["upper"] and c["lower"] > 0
    # 12 patients: 2^11 = 2048 patterns > 200 resamples, so Monte Carlo, never below 1/201 (nor 2^-11).
    assert c["test"] == "paired patient swap (monte carlo, 200 patterns)" and c["p_value"] == pytest.approx(1 / 201)
    assert "1 of 1 comparisons show a detectable difference (1 better, 0 worse)" in page
    assert "CT-pretrained better than the baseline" in page


def test_a_direction_needs_the_adjusted_p_value(tmp_path):
    # 6 patients: the exact test's smallest p is 2^-5 = 0.031; four tests under Holm cannot reach 0.05.
    comparisons, page = _report(_store(tmp_path, 6, gain=4.0, tasks=("probe", "knn", "finetune", "truncated")))
    assert all(c["test"].startswith("paired patient swap (exact, 64 patterns)") for c in comparisons)
    assert min(c["p_value"] for c in comparisons) == pytest.approx(2 ** -5)
    assert "better than the baseline" not in page and "cannot reach the level here" in page
