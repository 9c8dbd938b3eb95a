"""The run store: one JSON record per (task, backbone, dataset, label fraction, seed), with full provenance,
written so that runs can happen in any order, on any machine, and be resumed.

``OUT/runs/<run_id>.json`` is the record and ``OUT/runs/<run_id>.npz`` its test predictions (keys, patients,
targets, scores: logits or other log-scale class scores, ``eval.measures.classification``), both written
atomically; ``run_id`` hashes what defines the run (task, backbone source and
weights hash, dataset fingerprint and label, fraction, seed, task config), so a rerun skips finished runs and a
SLURM array task writes only its own files. ``OUT/names.json`` holds readable backbone names for the report;
``slug`` and ``pair_name`` name a record file after its sources.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ctssl.core.atomic import atomic_open, atomic_write_text


def slug(source: str) -> str:
    """A short file-name-safe name of a backbone or dataset source (its run folder for exports)."""
    stem = Path(source).parent.name if source.endswith((".safetensors", ".pt")) else source
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")[:40]


def pair_name(a: str, b: str) -> str:
    """The default name of a comparison of ``a`` with ``b`` (similarity, domain gap): ``A_vs_B``."""
    return f"{slug(a)}_vs_{slug(b)}"


# What a record and its predictions mean. 2: scores on a log scale (logits, log vote shares), intervals and
# p-values only where the test patients admit them (eval.measures.evidence). Part of every run id, so a record
# of an earlier format is computed again, never mixed into a comparison with records of this one.
RECORD_FORMAT = 2


def run_id(**identity) -> str:
    """A short hash of what defines a run (its keyword arguments and ``RECORD_FORMAT``)."""
    identity = {**identity, "record_format": RECORD_FORMAT}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStore:
    """OUT/runs/: each run's record (JSON) and test predictions (npz)."""

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


def load_names(out: str | Path) -> dict[str, str]:
    """OUT/names.json: readable names of backbone sources ({} when there is none)."""
    path = Path(out) / "names.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_names(out: str | Path, sources: list[str], names: list[str] | None) -> None:
    """Readable names of backbone sources for the report, merged into OUT/names.json."""
    if not names:
        return
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} --name for {len(sources)} --backbone; give one name per backbone, in order.")
    path = Path(out) / "names.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_text(path, json.dumps({**known, **dict(zip(sources, names))}, indent=1) + "\n")
