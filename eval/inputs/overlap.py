"""No backbone is evaluated on patients it was pretrained on: each CT backbone's recorded pretraining patients
against the validation and test patients of the dataset it is evaluated on, before anything is extracted.

A ctssl CT pretraining run records whom it trained on (``backbone.patients.json`` beside its export, referenced
from the card's ``pretraining_patients`` with the salt's check value; ``shards.patients``). Evaluating a
backbone on patients it saw in pretraining favours it, and favours exactly the arm under test, the in-domain one
(Wald et al., CVPR 2025, state the rule for medical SSL benchmarks); a re-ingest of the same archive with other
split fractions, or another archive that shares patients, does it silently. ``check_overlap`` gives, per
backbone, one of:

- ``clear``: checked, no validation or test patient among its pretraining patients;
- ``overlap``: checked, with the counts (refused in one line unless ``allow``; then every record and the report
  say so);
- ``unchecked``: it cannot be checked, and why: a backbone pretrained elsewhere or exported without the record,
  pseudonyms under another salt, a dataset whose patient IDs are not ctssl pseudonyms;
- ``not applicable``: not pretrained on CT patients (random initialisation, natural images).

Only counts leave this module, never a pseudonym. The check is a set intersection: at 100,000 pretraining
patients and 12M slices it reads one JSON file of about 2 MB per backbone (cached per process) and no shard.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ctssl.pretrain.sources import pretraining_arm

CHECKED_SPLITS = ("val", "test")


@functools.lru_cache(maxsize=32)
def _recorded(path: str, mtime: float) -> tuple[str | None, frozenset]:
    body = json.loads(Path(path).read_text())
    return body.get("salt_check"), frozenset(body.get("patients") or [])


def pretraining_patients(card: dict) -> tuple[str | None, frozenset] | str:
    """(salt check, patients) a backbone's card records, or why there is no record."""
    record = card.get("pretraining_patients")
    source = card.get("source") or ""
    if not record and source.endswith(".pt"):
        return "a pretraining checkpoint: its export (backbone.safetensors) records its pretraining patients"
    if not record:
        return ("its card records no pretraining patients (pretrained elsewhere, or exported before ctssl "
                "recorded them)")
    folder = Path(source).parent if source else Path(".")
    path = folder / record["file"]
    if not path.is_file():
        return f"its pretraining patients file ({record['file']}) is not beside the backbone"
    return _recorded(str(path), path.stat().st_mtime)


def overlap_status(card: dict, patients: dict[str, set], salt_check: str | None) -> dict:
    """One backbone's status (module docstring) against ``patients`` (split -> pseudonyms) of a dataset whose
    pseudonyms have ``salt_check`` (None: not ctssl pseudonyms)."""
    arm = pretraining_arm(card)
    if arm in ("random", "natural"):
        return {"status": "not applicable", "why": "not pretrained on CT patients"}
    if arm != "ct":
        return {"status": "unchecked", "why": "pretrained elsewhere: its patients are not known"}
    recorded = pretraining_patients(card)
    if isinstance(recorded, str):
        return {"status": "unchecked", "why": recorded}
    salt, seen = recorded
    if salt_check is None:
        return {"status": "unchecked", "why": "the dataset's patient IDs are not ctssl pseudonyms (not a ctssl "
                                              "shard folder)"}
    if salt != salt_check:
        return {"status": "unchecked", "why": "its pretraining patients are pseudonyms under another salt"}
    counts = {s: {"overlap": len(seen & patients.get(s, set())), "patients": len(patients.get(s, set()))}
              for s in CHECKED_SPLITS if s in patients}
    status = "overlap" if any(c["overlap"] for c in counts.values()) else "clear"
    return {"status": status, "splits": counts, "pretraining_patients": len(seen)}


def describe(status: dict) -> str:
    """One status in words, for logs and the report."""
    if status["status"] == "overlap":
        return "pretrained on " + ", ".join(f"{c['overlap']} of the {c['patients']} {s} patients"
                                            for s, c in status["splits"].items())
    if status["status"] == "clear":
        return (f"checked: none of its {status['pretraining_patients']} pretraining patients among the "
                + " and ".join(f"{c['patients']} {s}" for s, c in status["splits"].items()) + " patients")
    return f"{status['status']}: {status['why']}"


def check_overlap(sources_cards: list[tuple[str, dict]], patients: dict[str, set], salt_check: str | None,
                  data_spec: str, allow: bool = False, names: dict | None = None) -> dict[str, dict]:
    """The status of every (source, card) (module docstring); a ValueError naming the first backbone whose
    pretraining patients include validation or test patients, unless ``allow`` (then ``allowed`` is set)."""
    names = names or {}
    out = {}
    for source, card in sources_cards:
        status = overlap_status({**card, "source": card.get("source") or source}, patients, salt_check)
        if status["status"] == "overlap":
            if not allow:
                raise ValueError(
                    f"Backbone '{names.get(source) or source}' was {describe(status)} of '{data_spec}': evaluated "
                    "on patients it was pretrained on, it would be favoured. Evaluate on shards whose validation "
                    "and test patients it never saw (ingest with its pretraining's salt and split fractions), or "
                    "pass --allow-pretraining-overlap to evaluate anyway (every record and the report then say so).")
            status["allowed"] = True
        out[source] = status
    return out
