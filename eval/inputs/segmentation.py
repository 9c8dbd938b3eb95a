"""Segmentation datasets: ctssl shards whose samples carry a mask (``KEY.seg``; docs/segmentation.md), read as
*cases*: one series' annotated slices stacked in slice order, with their masks and the voxel spacing in mm.

- Only samples with a mask take part; a series is one case, its patient the bootstrap unit; the split is the
  one ingest drew per patient.
- ``classes`` picks and orders the foreground classes by name (from the manifest's ``segmentation.labels``);
  every other class becomes background (e.g. ``[liver, liver_lesion]`` for a LiTS-style task). Empty: every
  class of the manifest.
- Geometry: each stored slice's ``affine_lps`` (ingest records it, data.stored_geometry) places the case in the
  source series' world, so ``SegCase.nifti_volume`` writes a mask that overlays the original CT (3D Slicer,
  ITK-SNAP); shards written before ingest recorded it get a diagonal affine from the spacing.
- Spacing: (slice spacing, row spacing, column spacing) of the stored slices: ``slice_spacing_mm`` (the
  series' median distance between slice positions; the slice thickness when ingest could not measure it,
  1 mm when neither is known, which the dataset's notes say) and ``pixel_spacing_mm``.

Slices are held as int16 HU and masks as uint8 (2 + 1 bytes per pixel: a LiTS-sized set of 60,000 slices at
256 x 256 is about 12 GB); models see them prepared batch by batch (eval.inputs.spec).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
logger = logging.getLogger(__name__)


@dataclass
class SegCase:
    key: str                       # the series pseudonym
    patient: str
    split: str
    slices: np.ndarray             # (Z, H, W) int16 HU, inferior first
    masks: np.ndarray              # (Z, H, W) uint8 class ids (after ``classes``)
    slice_keys: list[str]
    spacing: tuple[float, float, float]   # (slice, row, column) mm
    source_indices: list[int] = field(default_factory=list)   # each slice's index in its source series
    affines: list = field(default_factory=list)               # each slice's affine_lps (4 x 4), [] if not recorded

    def nifti_volume(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 voxels [column, row, slice], voxel -> RAS mm affine) of ``volume`` (Z, H, W), this case's stored
        slices (a prediction or the reference), in the source series' geometry: one slice per source-slice lattice
        point (data.stored_geometry.series_affine; slices ingest did not write are background). Without recorded
        geometry: the diagonal RAS affine from the spacing (columns right to left, rows anterior to posterior)."""
        if len(self.affines) != len(volume) or not self.affines:
            z, row, col = self.spacing
            return np.ascontiguousarray(np.transpose(volume, (2, 1, 0))).astype(np.uint8), \
                np.diag([-col, -row, z, 1.0])
        from ctssl.data.stored_geometry import RAS_FROM_LPS, series_affine

        slots, affine, off = series_affine(self.source_indices, [np.asarray(a) for a in self.affines])
        if off > 0.1:
            logger.warning("case %s: its slices are not evenly spaced (up to %.2f mm off one lattice); its NIfTI uses "
                           "their mean spacing", self.key, off)
        out = np.zeros((int(slots[-1]) + 1, *volume.shape[1:]), dtype=np.uint8)
        out[slots] = volume
        return np.ascontiguousarray(np.transpose(out, (2, 1, 0))), RAS_FROM_LPS @ affine


@dataclass
class SegDataset:
    spec: str
    fingerprint: str
    labels: list[str]              # class names by id, background first
    cases: dict[str, list[SegCase]]
    notes: list[str] = field(default_factory=list)
    salt_check: str = ""           # the salt's check value of the patient pseudonyms (eval.inputs.overlap)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def patients(self) -> dict[str, set]:
        """The patients of each split's annotated cases."""
        return {s: {c.patient for c in cases} for s, cases in self.cases.items()}

    def describe(self) -> dict:
        return {"spec": self.spec, "fingerprint": self.fingerprint, "label": "segmentation", "kind": "ct",
                "classes": self.labels, "cases": {s: len(c) for s, c in self.cases.items()},
                "slices": {s: int(sum(len(c.slices) for c in cs)) for s, cs in self.cases.items()},
                "counts": {s: int(sum(len(c.slices) for c in cs)) for s, cs in self.cases.items()},   # as datasets
                "notes": self.notes}


def _class_table(manifest_labels: dict, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """A lookup table stored id -> task id, and the task's class names (background first)."""
    by_name = {name: int(i) for i, name in manifest_labels.items()}
    if not classes:
        ids = sorted(int(i) for i in manifest_labels if int(i) != 0)
        classes = [manifest_labels[str(i)] for i in ids]
    unknown = [c for c in classes if c not in by_name or by_name[c] == 0]
    if unknown:
        valid = [n for n, i in sorted(by_name.items(), key=lambda kv: kv[1]) if i != 0]
        raise ValueError(f"Unknown segmentation class(es) {unknown}. Valid classes of these shards are {valid}.")
    table = np.zeros(256, np.uint8)
    for new, name in enumerate(classes, start=1):
        table[by_name[name]] = new
    return table, ["background", *classes]


def _spacing(meta: dict, notes: set) -> tuple[float, float, float]:
    z = meta.get("slice_spacing_mm") or meta.get("slice_thickness_mm")
    if not z:
        notes.add("some series lack a slice spacing: 1 mm assumed for their surface distances")
        z = 1.0
    row, col = meta.get("pixel_spacing_mm") or (1.0, 1.0)
    return float(z), float(row), float(col)


def open_segmentation(spec: str, classes: list[str] | None = None) -> SegDataset:
    """The annotated series of a shard folder as cases per split (module docstring)."""
    from ctssl.shards.manifest import load_manifest
    from ctssl.shards.reader import iter_samples

    from ctssl.shards.location import location

    path = location(spec)               # local or remote (shards/location.py)
    manifest = load_manifest(path)
    seg = manifest.get("segmentation")
    if not seg:
        raise ValueError(f"{spec} holds no segmentation masks (its manifest has no 'segmentation' entry): ingest "
                         "the images with their masks (an nnU-Net/MSD dataset, LiTS names, --masks CSV or DICOM SEG; "
                         "docs/segmentation.md).")
    table, labels = _class_table(seg["labels"], list(classes or []))
    grouped: dict[str, list[tuple]] = defaultdict(list)
    notes: set[str] = set()
    info: dict[str, tuple] = {}
    for sample in iter_samples(path, on_error=lambda key, reason: None):
        if sample.get("mask") is None:
            continue
        meta = sample["meta"]
        series = meta["series"]
        grouped[series].append((meta.get("slice_index", 0), sample["key"], sample["hu"], table[sample["mask"]],
                                meta.get("source_slice_index"), meta.get("affine_lps")))
        info.setdefault(series, (meta.get("patient", series), meta.get("split", "train"), _spacing(meta, notes)))
    cases: dict[str, list[SegCase]] = {s: [] for s in SPLITS}
    for series in sorted(grouped):
        rows = sorted(grouped[series], key=lambda r: r[0])
        patient, split, spacing = info[series]
        if split not in cases:
            continue
        geometry = all(r[4] is not None and r[5] is not None for r in rows)
        cases[split].append(SegCase(series, patient, split, np.stack([r[2] for r in rows]),
                                    np.stack([r[3] for r in rows]), [r[1] for r in rows], spacing,
                                    [r[4] for r in rows] if geometry else [], [r[5] for r in rows] if geometry else []))
    fingerprint = hashlib.sha256(json.dumps({"shards": [s.get("sha256") for s in manifest["shards"]],
                                             "labels": labels}, sort_keys=True).encode()).hexdigest()[:16]
    from ctssl.shards.patients import salt_check_of

    return SegDataset(spec, fingerprint, labels, cases, sorted(notes), salt_check_of(manifest.get("config")) or "")


def check_splits(data: SegDataset) -> None:
    """One line when a split has no annotated case, saying what to do."""
    counts = {s: len(data.cases[s]) for s in SPLITS}
    if min(counts.values()) == 0:
        raise ValueError(f"Segmentation needs annotated series in train, val and test; {data.spec} has "
                         f"{', '.join(f'{s} {n}' for s, n in counts.items())}. Ingest more annotated patients, or "
                         "change the split fractions at ingest (--set splits.val=...), so that every split holds one.")


def subsample_cases(cases: list[SegCase], fraction: float, seed: int) -> list[SegCase]:
    """A seeded ``fraction`` of the training *patients* (at least one), with all their cases."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    patients = sorted({c.patient for c in cases})
    if fraction == 1:
        return list(cases)
    rng = np.random.default_rng(seed)
    keep = set(rng.permutation(patients)[:max(1, math.ceil(fraction * len(patients)))].tolist())
    return [c for c in cases if c.patient in keep]
