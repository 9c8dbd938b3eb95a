"""Phase 3 of an ingest: one manifest and one report over all tasks (uses ``config``, ``plan``, ``task``).

Refuses, naming them, when tasks are missing (never finished) or incomplete (started, with a
journal, not finished); rerunning those tasks and then merge again completes the set.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text
from ctssl.core.lock import OutputLock
from ctssl.data.ingest.config import REPORT_NAME
from ctssl.data.ingest.plan import PLAN_DIR, PLAN_REPORT_NAME, load_plan
from ctssl.data.ingest.task import task_paths
from ctssl.shards.manifest import build_manifest, write_manifest
from ctssl.shards.patients import write_patients


class IncompleteIngest(RuntimeError):
    """Some tasks have not finished; the message names them."""


def merge(out: str | Path, lock: bool = True) -> dict:
    """Write ``manifest.json`` and ``ingest-report.json`` over all tasks; returns the report."""
    out = Path(out)
    if lock:
        with OutputLock(out, "an ingest merge"):
            return merge(out, lock=False)
    plan = load_plan(out)
    n = plan["num_tasks"]
    missing, incomplete, records = [], [], []
    for task in range(n):
        journal, done = task_paths(out, task)
        if done.exists():
            records.append(json.loads(done.read_text()))
        elif journal.exists():
            incomplete.append(task)
        else:
            missing.append(task)
    if missing or incomplete:
        parts = []
        if incomplete:
            parts.append(f"incomplete (started, not finished): {_ranges(incomplete)}")
        if missing:
            parts.append(f"missing (never finished): {_ranges(missing)}")
        raise IncompleteIngest(
            f"cannot merge {out}: {len(missing) + len(incomplete)} of {n} task(s) not done; "
            + "; ".join(parts) + ". Rerun them (`ctssl ingest-array task --out DIR --task-index I`, "
            "or resubmit those array indices), then merge again.")
    shards = sorted((s for r in records for s in r["shards"]), key=lambda s: s["name"])
    series = sorted((rep for r in records for rep in r["reports"]), key=lambda rep: rep["series"])
    plan_report = json.loads((out / PLAN_DIR / PLAN_REPORT_NAME).read_text())
    report = _report(plan_report, series)
    extra = {"image_size": plan["config"]["image_size"],
             "hu_range": [plan["config"]["hu_min"], plan["config"]["hu_max"]], "tasks": n, "order": "series"}
    if "segmentation" in plan:
        extra["segmentation"] = segmentation_summary(plan["segmentation"]["labels"], series)
    manifest = build_manifest(shards, plan["config"], __version__, extra)
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    patients: dict[str, set] = {}
    for r in series:
        if r["written"]:
            patients.setdefault(r["split"], set()).add(r["patient"])
    write_patients(out, plan["config"].get("salt_check"), patients)     # before the manifest completes the set
    write_manifest(out, manifest)
    # The task item files hold source paths (needed to read the sources); the set is complete.
    for task in plan["tasks"]:
        (out / PLAN_DIR / task["items"]).unlink(missing_ok=True)
    return report


def segmentation_summary(labels: dict[str, str], series: list[dict]) -> dict:
    """The manifest's ``segmentation``: class names, and per split the series (cases) written with a mask, their
    slices and pixels per class (the sum of the samples' ``mask_pixels``). Class ids a mask holds without a name
    (``--masks`` without ``mask_labels``) are named ``label_N``."""
    splits: dict[str, dict] = {}
    for r in series:
        mask = r.get("mask")
        if not mask or mask["outcome"] != "placed" or not mask["slices"]:
            continue
        entry = splits.setdefault(r["split"], {"cases": 0, "slices": 0, "pixels": Counter()})
        entry["cases"] += 1
        entry["slices"] += mask["slices"]
        entry["pixels"].update({int(c): n for c, n in mask["pixels"].items()})
    names = dict(labels)
    for entry in splits.values():
        names.update({str(c): f"label_{c}" for c in entry["pixels"] if str(c) not in names})
        entry["pixels"] = {str(c): n for c, n in sorted(entry["pixels"].items())}
    return {"labels": dict(sorted(names.items(), key=lambda kv: int(kv[0]))), "splits": dict(sorted(splits.items()))}


def _mask_summary(plan_report: dict, series: list[dict]) -> dict:
    """The report's mask counts: files found, series written with their mask, masks skipped and why."""
    reasons = Counter(m["reason"] for m in plan_report.get("masks", []))
    placed = 0
    for r in series:
        mask = r.get("mask")
        if mask and mask["outcome"] == "placed" and r["written"]:
            placed += 1
        elif mask and mask["outcome"] == "skipped":
            reasons[mask["reason"]] += 1
    return {"masks_placed": placed, "masks_skipped": sum(reasons.values()),
            "mask_skip_reasons": dict(sorted(reasons.items()))}


def _label_summary(join: dict, series: list[dict]) -> dict:
    """The report's label join: the plan's row accounting (data.labels.LabelTable.join_report) and the per-slice rows
    that matched a series but no written slice of it (summed over series; a row keyed by patient or study is
    offered to each of its series and counted in each one that has no slice for it)."""
    summary = {k: v for k, v in join.items() if k != "unmatched"}
    summary["slice_rows_without_a_written_slice"] = sum(r.get("label_slice_rows_unmatched", 0) for r in series)
    summary["unmatched"] = join["unmatched"]
    return summary


def _report(plan_report: dict, series: list[dict]) -> dict:
    files = plan_report["skipped_files"]
    reasons = Counter(f["reason"] for f in files)
    reasons.update(r["reason"] for r in series if r["outcome"] == "skipped")
    per_split: Counter = Counter()
    patients: dict[str, set] = {}
    slice_notes: Counter = Counter()
    messages: Counter = Counter(plan_report.get("library_messages", {}))
    for r in series:
        per_split[r["split"]] += r["written"]
        if r["written"]:
            patients.setdefault(r["split"], set()).add(r["patient"])
        slice_notes.update(r.get("slice_notes", {}))
        messages.update(r.get("library_messages", {}))
    return {
        "ctssl_version": __version__,
        "summary": {
            **plan_report["found"],
            "series_written": sum(r["outcome"] == "written" for r in series),
            "series_skipped": sum(r["outcome"] == "skipped" for r in series),
            "slices_written": sum(r["written"] for r in series),
            "slices_per_split": dict(sorted(per_split.items())),
            "patients_per_split": {k: len(v) for k, v in sorted(patients.items())},
            "skip_reasons": dict(sorted(reasons.items())),
            "slice_notes": dict(sorted(slice_notes.items())),
            # Warnings and log records of the reading libraries, counted by kind: their text is never kept,
            # since it may quote header values.
            "library_messages": dict(sorted(messages.items())),
            **(_mask_summary(plan_report, series) if plan_report["found"].get("mask_files") else {}),
            **({"labels": _label_summary(plan_report["labels"], series)} if "labels" in plan_report else {}),
        },
        "series": series,
        "skipped_files": files,
        "ignored_files": plan_report.get("ignored", []),
        **({"masks": plan_report.get("masks", [])} if plan_report["found"].get("mask_files") else {}),
    }


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form sbatch --array takes)."""
    out, start, prev = [], None, None
    for v in sorted(values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out)
