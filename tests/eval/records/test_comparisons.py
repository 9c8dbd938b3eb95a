"""Run records: Welch's t-test across seeds pairs the right runs."""

from __future__ import annotations

import pytest
from scipy.stats import ttest_ind

from ctssl.eval.records.comparisons import seed_tests


def _record(backbone, order, seed, value, task="probe", fraction=1.0):
    return {"task": task, "backbone": backbone, "backbone_order": order, "seed": seed, "fraction": fraction,
            "dataset": {"fingerprint": "f", "label": "region", "spec": "shards"},
            "test": {"accuracy": {"value": value, "lower": None, "upper": None}}}


def test_welch_t_over_seeds_against_the_first_backbone():
    base = [0.80, 0.82, 0.79, 0.81]
    ours = [0.86, 0.88, 0.85, 0.90]
    records = ([_record("random", 0, s, v) for s, v in enumerate(base)] +
               [_record("ct", 1, s, v) for s, v in enumerate(ours)] +
               [_record("ct", 1, 0, 0.5, fraction=0.1), _record("random", 0, 0, 0.4, fraction=0.1)])
    (test,) = seed_tests(records)                        # fraction 0.1 has one seed: no test
    expected = ttest_ind(ours, base, equal_var=False)
    assert test["backbone"] == "ct" and test["baseline"] == "random" and test["n_seeds"] == [4, 4]
    assert test["p_value"] == pytest.approx(expected.pvalue, abs=1e-5)
    assert test["delta"] == pytest.approx(sum(ours) / 4 - sum(base) / 4, abs=1e-5)
