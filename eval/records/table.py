"""Every evaluation record as one tidy row (``OUT/results.csv``, for pandas: ``pd.read_csv``), and the records
sent to experiment trackers (``ctssl report --log-with``), each evaluation run as one tracker run.

Columns: the run's identity (``run_id``, ``task``, ``variant``, ``backbone`` source, its readable ``name``,
``arm``, ``architecture``, ``in_chans``, ``continued_from``), the data (``dataset`` path, ``label``,
``fraction``, ``seed``, ``n_train``, ``n_test``), the input (``input_size``, ``input_rule``), and every test
measure as ``test_M``, ``test_M_lower``, ``test_M_upper`` (the interval, empty where the test patients admit
none). A run without a measure leaves its cell empty.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from ctssl.core.atomic import atomic_open
from ctssl.pretrain.sources import pretraining_arm

logger = logging.getLogger(__name__)

IDENTITY = ["run_id", "task", "variant", "backbone", "name", "arm", "architecture", "in_chans", "continued_from",
            "dataset", "label", "fraction", "seed", "n_train", "n_test", "input_size", "input_rule"]


def tidy_row(record: dict, names: dict | None = None) -> dict:
    """One record as a flat row (module docstring)."""
    card, data, inputs = record.get("backbone_card") or {}, record.get("dataset") or {}, record.get("input") or {}
    row = {"run_id": record.get("run_id"), "task": record.get("task"), "variant": record.get("variant"),
           "backbone": record.get("backbone"), "name": (names or {}).get(record.get("backbone"), ""),
           "arm": pretraining_arm(card) if card else "", "architecture": card.get("backbone"),
           "in_chans": card.get("in_chans"), "continued_from": (card.get("init") or {}).get("source", ""),
           "dataset": data.get("spec"), "label": data.get("label"),
           "fraction": record.get("fraction"), "seed": record.get("seed"), "n_train": record.get("n_train"),
           "n_test": record.get("n_test"), "input_size": inputs.get("size"), "input_rule": inputs.get("rule")}
    for measure, value in sorted((record.get("test") or {}).items()):
        if isinstance(value, dict) and "value" in value:
            row[f"test_{measure}"] = value.get("value")
            row[f"test_{measure}_lower"] = value.get("lower")
            row[f"test_{measure}_upper"] = value.get("upper")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            row[f"test_{measure}"] = value
    return row


def write_csv(records: list[dict], path: str | Path, names: dict | None = None) -> Path:
    """``path``: one row per record, the identity columns first, then every measure any record has."""
    rows = [tidy_row(r, names) for r in records]
    measures = sorted({k for row in rows for k in row if k not in IDENTITY})
    with atomic_open(Path(path), "w") as f:
        writer = csv.DictWriter(f, fieldnames=IDENTITY + measures, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return Path(path)


LOGGED = "trackers.json"


def log_records(records: list[dict], out: str | Path, trackers: list[str], names: dict | None = None) -> int:
    """Each record not yet sent (``OUT/trackers.json`` lists those that were, per tracker) as one tracker run
    named by its run id: its identity as the run's configuration, its test measures as metrics. Returns the
    number of runs sent."""
    from ctssl.core.trackers import check_trackers, finish, log, open_trackers

    problems = check_trackers(trackers)
    if problems:
        raise ValueError("; ".join(problems))
    out = Path(out)
    ledger_path = out / LOGGED
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    sent = 0
    for name in trackers:
        done = set(ledger.get(name, []))
        for record in records:
            if record["run_id"] in done:
                continue
            row = tidy_row(record, names)
            config = {k: row[k] for k in IDENTITY if row.get(k) is not None}
            metrics = {k: float(v) for k, v in row.items() if k.startswith("test_") and isinstance(v, (int, float))}
            opened = open_trackers([name], out / "trackers", f"eval/{record['run_id']}", config)
            log(opened, metrics, step=0)
            finish(opened)
            done.add(record["run_id"])
            sent += 1
        ledger[name] = sorted(done)
        with atomic_open(ledger_path, "w") as f:
            f.write(json.dumps(ledger, indent=1) + "\n")
    return sent
