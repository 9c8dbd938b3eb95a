"""Which patients a shard set holds, per split, and under which salt: ``patients.json`` beside the manifest.

A pretraining run records the patients it trained on from here (``pretrain.train``), and every evaluation
checks its validation and test patients against each CT backbone's record (``eval.inputs.overlap``): a backbone
must never be evaluated on patients it was pretrained on, and a re-ingest with other split fractions moves
patients between splits. Patients are the keyed pseudonyms the samples carry (``data.pseudonym``), never an
identifier; the salt is represented by ingest's keyed check value (``salt_check`` of the manifest's config),
never itself, so two sets can be compared only when their pseudonyms come from one salt.

``patients.json``: ``{"salt_check": str, "splits": {split: [pseudonym, ...]}}`` (sorted). Ingest's merge writes
it from the series it wrote, ``ctssl shards shuffle`` copies its source's; a folder written before it existed is
read from its ``ingest-report.json`` (series written, with patient and split) and its manifest's ``salt_check``.
A set of 100,000 patients is about 2 MB; nothing here reads a shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ctssl.core.atomic import atomic_write_text

PATIENTS_NAME = "patients.json"
REPORT_NAME = "ingest-report.json"


def salt_check_of(config: dict | None) -> str | None:
    """The salt's check value of a manifest's config: ingest's own, or a shuffled set's source's."""
    config = config or {}
    return config.get("salt_check") or (config.get("source") or {}).get("salt_check")


def write_patients(folder: str | Path, salt_check: str | None, splits: dict[str, Iterable[str]]) -> Path:
    """``folder/patients.json`` (module docstring), atomically."""
    path = Path(folder) / PATIENTS_NAME
    body = {"salt_check": salt_check, "splits": {s: sorted(set(p)) for s, p in sorted(splits.items())}}
    atomic_write_text(path, json.dumps(body, indent=0) + "\n")
    return path


def load_patients(folder: str | Path) -> dict | None:
    """``{"salt_check", "splits": {split: set}}`` of a local shard folder (module docstring), or None where the
    folder records no patients (natural images, a folder from elsewhere)."""
    from ctssl.shards.location import Remote, location

    folder = location(folder)
    path = folder / PATIENTS_NAME
    if isinstance(folder, Remote):      # a remote shard folder (shards/location.py): its patients.json or none
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return {"salt_check": body.get("salt_check"), "splits": {s: set(v) for s, v in body["splits"].items()}}
    if path.is_file():
        body = json.loads(path.read_text())
        return {"salt_check": body.get("salt_check"), "splits": {s: set(v) for s, v in body["splits"].items()}}
    report, manifest = folder / REPORT_NAME, folder / "manifest.json"
    if not (report.is_file() and manifest.is_file()):
        return None
    series = json.loads(report.read_text()).get("series") or []
    splits: dict[str, set] = {}
    for entry in series:
        if entry.get("outcome") == "written" and entry.get("patient") and entry.get("split"):
            splits.setdefault(entry["split"], set()).add(entry["patient"])
    if not splits:
        return None
    return {"salt_check": salt_check_of(json.loads(manifest.read_text()).get("config")), "splits": splits}
