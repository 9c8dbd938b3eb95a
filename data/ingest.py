"""``ctssl ingest``: DICOM / NIfTI CT volumes -> verified WebDataset shards of HU slices.

Flow: discover sources -> read DICOM headers (parallel) -> group into axial CT series (see
data.dicom_series) and NIfTI volumes -> pseudonyms and patient-level split per series -> for each
series, in a fixed order: load HU slices, thin, drop air, resize, encode -> per-split shards
closed at series boundaries once they reach the target size -> manifest and report.

Resume: each closed shard is recorded in ``ingest-journal.json`` (atomically) with the series it
holds and their report entries. A rerun with the same settings skips those series and starts the
next shard exactly where the interrupted run would have, so the result is the same set of shards.
Privacy: no header identifier (names, IDs, dates, UIDs, institution, free text) is written
anywhere; sources are referred to by keyed pseudonyms (see data.pseudonym, docs/ingest.md).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctssl import __version__
from ctssl.atomic import atomic_write_text, remove_stale_temporaries
from ctssl.config import ConfigError, to_dict
from data.dicom_headers import FrameRecord, discover, read_records
from data.dicom_series import DicomSeries, FrameLoader, group_series
from data.hounsfield import HU_CEILING, HU_FLOOR
from data.labels import LabelTable, SeriesLabels
from data.nifti_volume import NiftiError, load_nifti
from data.pseudonym import assign_split, load_salt, pseudonym
from data.slicing import air_fraction, resize_slice, thin_positions
from shards.encoding import encode_hu
from shards.manifest import MANIFEST_NAME, build_manifest, write_manifest
from shards.writer import ShardWriter

logger = logging.getLogger(__name__)

JOURNAL_NAME = "ingest-journal.json"
REPORT_NAME = "ingest-report.json"
# Errors that mean "this file's data is bad", counted and skipped; anything else is a bug.
DATA_ERRORS = (ValueError, RuntimeError, NotImplementedError, OSError, EOFError, NiftiError)


@dataclass
class SplitFractions:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass
class IngestConfig:
    sources: list[str] = field(default_factory=list)
    out: str = "runs/shards"
    image_size: int = 256             # output size (square); 0 keeps the native matrix
    min_slice_spacing: float = 0.0    # mm; thin-slice series otherwise give near-duplicates
    max_air_fraction: float = 1.0     # drop slices with more air (< -900 HU) than this; 1 keeps all
    hu_min: float = HU_FLOOR
    hu_max: float = HU_CEILING
    shard_size_mb: float = 256.0      # target shard size; shards close at series boundaries
    splits: SplitFractions = field(default_factory=SplitFractions)
    labels: list[str] = field(default_factory=list)          # label CSV files (data.labels)
    label_columns: list[str] = field(default_factory=list)   # empty: all non-key columns
    nifti_patient_pattern: str = r"^(.*?)(\.nii(\.gz)?)?$"  # regex on the file name; group 1
    salt_file: str | None = None      # else $CTSSL_SALT
    create_salt: bool = False
    workers: int = 1
    report_paths: bool = False        # write source paths in the report (only if they hold no PHI)


RUN_ONLY_KEYS = ("workers", "create_salt", "out")


def validate(cfg: IngestConfig) -> None:
    problems = []
    if not cfg.sources:
        problems.append("no sources given")
    if cfg.image_size < 0 or (0 < cfg.image_size < 16):
        problems.append(f"image_size must be 0 (native) or >= 16, got {cfg.image_size}")
    if not 0 < cfg.max_air_fraction <= 1:
        problems.append(f"max_air_fraction must be in (0, 1], got {cfg.max_air_fraction}")
    if cfg.hu_min >= cfg.hu_max:
        problems.append(f"hu_min ({cfg.hu_min}) must be below hu_max ({cfg.hu_max})")
    if cfg.shard_size_mb <= 0:
        problems.append(f"shard_size_mb must be positive, got {cfg.shard_size_mb}")
    if cfg.workers < 1:
        problems.append(f"workers must be >= 1, got {cfg.workers}")
    fractions = asdict(cfg.splits)
    if any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        problems.append(f"split fractions must be >= 0 with a positive sum, got {fractions}")
    try:
        re.compile(cfg.nifti_patient_pattern)
    except re.error as err:
        problems.append(f"nifti_patient_pattern is not a valid regex: {err}")
    if problems:
        raise ConfigError("; ".join(problems))


# --------------------------------------------------------------------------- work items


@dataclass
class Item:
    """One series to ingest (a DICOM series or a NIfTI volume), with its pseudonyms."""

    kind: str                     # "dicom" or "nifti"
    series_id: str                # pseudonyms (16 hex digits)
    study_id: str
    patient_id: str
    split: str
    source_id: str                # pseudonym (or relative path with report_paths) for the report
    labels: SeriesLabels
    dicom: DicomSeries | None = None
    nifti_path: str | None = None
    n_frames: int = 0


@dataclass
class ItemResult:
    series_id: str
    samples: list[tuple[str, bytes, bytes]]   # (key, .hu bytes, .json bytes)
    report: dict


def _scan_headers(paths: list[Path], workers: int):
    """(records, failures) over all DICOM files; header reading in ``workers`` processes."""
    records: list[FrameRecord] = []
    failures: list[tuple[str, str]] = []
    if workers > 1 and len(paths) > 64:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_read_records_safe, [str(p) for p in paths], chunksize=64)
    else:
        results = [_read_records_safe(str(p)) for p in paths]
    for path, result in zip(paths, results):
        if isinstance(result, str):
            failures.append((str(path), result))
        else:
            records.extend(result)
    return records, failures


def _read_records_safe(path: str):
    try:
        return read_records(Path(path))
    except DATA_ERRORS as err:
        return f"unreadable DICOM header ({type(err).__name__})"
    except Exception as err:  # noqa: BLE001 - pydicom raises assorted types on garbage
        if isinstance(err, (TypeError, AttributeError, KeyError, NameError)):
            return f"unreadable DICOM header ({type(err).__name__})"
        raise


class Planner:
    """Turns discovered sources into ordered work items, pseudonymised."""

    def __init__(self, cfg: IngestConfig, salt: bytes, labels: LabelTable | None):
        self.cfg, self.salt, self.labels = cfg, salt, labels
        self.fractions = asdict(cfg.splits)
        self.pattern = re.compile(cfg.nifti_patient_pattern)

    def source_id(self, path: str, roots: list[Path]) -> str:
        rel = _relative(Path(path), roots)
        return rel if self.cfg.report_paths else "src-" + pseudonym(self.salt, "path", rel)

    def dicom_item(self, series: DicomSeries, roots) -> Item:
        first = series.first
        patient = pseudonym(self.salt, "patient", first.patient_key)
        labels = self.labels.lookup(series_uid=series.series_uid, study_uid=first.study_uid,
                                    patient_id=first.patient_key) if self.labels else SeriesLabels()
        folder = str(Path(first.path).parent)
        return Item("dicom", pseudonym(self.salt, "series", f"{series.series_uid}|{series.group}"),
                    pseudonym(self.salt, "study", first.study_uid), patient,
                    assign_split(patient, self.fractions), self.source_id(folder, roots), labels,
                    dicom=series, n_frames=len(series.frames))

    def nifti_item(self, path: Path, root: Path, roots) -> Item:
        rel = path.relative_to(root).as_posix()
        match = self.pattern.match(path.name)
        patient_key = match.group(1) if match and match.group(1) else rel
        patient = pseudonym(self.salt, "patient", "nifti:" + patient_key)
        labels = self.labels.lookup(nifti_path=rel) if self.labels else SeriesLabels()
        return Item("nifti", pseudonym(self.salt, "series", "nifti:" + rel),
                    pseudonym(self.salt, "study", "nifti:" + rel), patient,
                    assign_split(patient, self.fractions), self.source_id(str(path), roots), labels,
                    nifti_path=str(path), n_frames=_nifti_depth(path))


def _nifti_depth(path: Path) -> int:
    try:
        import nibabel as nib

        shape = nib.load(str(path)).shape
        return int(max(shape[:3])) if len(shape) >= 3 else 0
    except Exception:  # noqa: BLE001 - only a progress estimate; errors surface when loading
        return 0


def _relative(path: Path, roots: list[Path]) -> str:
    for root in roots:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return path.name


# --------------------------------------------------------------------------- processing

_CTX: dict = {}


def _init_worker(cfg: IngestConfig) -> None:
    _CTX["cfg"] = cfg


def process_item(item: Item) -> ItemResult:
    """Load, slice, resize and encode one series. Runs in worker processes."""
    cfg: IngestConfig = _CTX["cfg"]
    skipped: Counter = Counter()
    meta_common = {"patient": item.patient_id, "study": item.study_id, "series": item.series_id,
                   "source": item.kind, "split": item.split}
    slices = []  # (source_index, z, hu float32 canonical, (row, col) spacing)
    extra: dict = {}
    if item.kind == "dicom":
        series = item.dicom
        loader = FrameLoader(cfg.hu_min, cfg.hu_max)
        first = series.first
        spacing = tuple(first.pixel_spacing)
        if series.transpose:
            spacing = spacing[::-1]
        keep = thin_positions(series.positions, cfg.min_slice_spacing)
        skipped["thinned (closer than min_slice_spacing)"] += len(series.frames) - len(keep)
        for i in keep:
            rec = series.frames[i]
            try:
                hu = loader.load(series, rec)
            except DATA_ERRORS as err:
                skipped[f"pixel data not decodable ({type(err).__name__})"] += 1
                continue
            slices.append((i, float(series.positions[i]), hu, spacing))
        diffs = np.diff(series.positions)
        extra = {
            "slice_thickness_mm": first.slice_thickness,
            "slice_spacing_mm": round(float(np.median(diffs)), 4) if len(diffs) else None,
            "manufacturer": first.manufacturer, "model": first.model, "kvp": first.kvp,
            "kernel": first.kernel, "body_part": _clean_code(first.body_part),
            "gantry_tilt_deg": round(series.tilt_deg, 3),
        }
        if loader.fallback_used:
            skipped["rescale tags missing: CT fallback applied (kept)"] += loader.fallback_used
        n_source = len(series.frames)
    else:
        try:
            volume = load_nifti(item.nifti_path, cfg.hu_min, cfg.hu_max)
        except DATA_ERRORS as err:
            reason = str(err) if isinstance(err, NiftiError) else f"unreadable NIfTI ({type(err).__name__})"
            return ItemResult(item.series_id, [], _report(item, 0, 0, Counter(), reason))
        keep = thin_positions(volume.z, cfg.min_slice_spacing)
        skipped["thinned (closer than min_slice_spacing)"] += len(volume.z) - len(keep)
        slices = [(i, float(volume.z[i]), volume.hu[i], volume.spacing) for i in keep]
        extra = {"slice_thickness_mm": None, "slice_spacing_mm": round(volume.slice_spacing, 4),
                 "manufacturer": "", "model": "", "kvp": None, "kernel": "", "body_part": "",
                 "oblique_deg": round(volume.oblique_deg, 3)}
        n_source = len(volume.z)

    samples = []
    tolerance = 0.25 * (extra.get("slice_spacing_mm") or 1.0)
    for source_index, z, hu, spacing in slices:
        if cfg.max_air_fraction < 1 and air_fraction(hu) > cfg.max_air_fraction:
            skipped["mostly air (above max_air_fraction)"] += 1
            continue
        out, out_spacing = resize_slice(hu, spacing, cfg.image_size, fill=cfg.hu_min)
        slice_index = len(samples)
        key = f"{item.series_id}-{source_index:05d}"
        meta = {**meta_common, "key": key, "slice_index": slice_index, "source_slice_index": source_index,
                "source_slices": n_source, "z_mm": round(z, 3),
                "pixel_spacing_mm": [round(v, 5) for v in out_spacing],
                "source_pixel_spacing_mm": [round(v, 5) for v in spacing],
                "source_shape": list(hu.shape), "shape": list(out.shape), **extra}
        if item.labels:
            meta["labels"] = item.labels.for_slice(source_index, z, tolerance)
        samples.append((key, encode_hu(out), json.dumps(meta, sort_keys=True).encode()))
    return ItemResult(item.series_id, samples, _report(item, len(samples), n_source, skipped, None))


def _clean_code(text: str) -> str:
    """A coded string (Body Part Examined) reduced to [A-Z0-9_], at most 16 characters."""
    return re.sub(r"[^A-Z0-9_]", "", text.upper())[:16]


def _report(item: Item, written: int, n_source: int, skipped: Counter, failure: str | None) -> dict:
    entry = {"source": item.source_id, "kind": item.kind, "series": item.series_id,
             "patient": item.patient_id, "split": item.split, "source_slices": n_source, "written": written}
    if failure:
        entry["outcome"], entry["reason"] = "skipped", failure
    else:
        entry["outcome"] = "written" if written else "skipped"
        if not written:
            entry["reason"] = "no slice left after filtering"
    if skipped:
        entry["slice_notes"] = dict(sorted(skipped.items()))
    return entry


# --------------------------------------------------------------------------- orchestration


class Journal:
    """Closed shards and their report entries, rewritten atomically after each shard."""

    def __init__(self, path: Path, config: dict):
        self.path, self.config = path, config
        self.shards: list[dict] = []
        self.reports: list[dict] = []
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("config") != config:
                raise ConfigError(f"{path.parent} holds an interrupted ingest with other settings; "
                                  "rerun with the same arguments or use a new --out folder.")
            self.shards, self.reports = data["shards"], data["reports"]

    def done_series(self) -> set[str]:
        return {s for shard in self.shards for s in shard["series"]} | {
            r["series"] for r in self.reports}

    def record(self, shard: dict | None, reports: list[dict]) -> None:
        if shard is not None:
            self.shards.append(shard)
        self.reports.extend(reports)
        atomic_write_text(self.path, json.dumps({"config": self.config, "shards": self.shards,
                                                 "reports": self.reports}) + "\n")


class SplitWriters:
    """One open shard per split; shards close at series boundaries past the target size."""

    def __init__(self, out: Path, journal: Journal, target_bytes: int):
        self.out, self.journal, self.target = out, journal, target_bytes
        self.open: dict[str, ShardWriter] = {}
        self.pending: dict[str, list[dict]] = {}
        self.counters = Counter(s["split"] for s in journal.shards)

    def add(self, item: Item, result: ItemResult) -> None:
        split = item.split
        if not result.samples:
            # Nothing to write: its report is journaled with the next shard of its split
            # (or at the end), so a resumed run reports it once.
            self.pending.setdefault(split, []).append(result.report)
            return
        writer = self.open.get(split)
        if writer is None:
            name = f"{split}-{self.counters[split]:06d}.tar"
            self.counters[split] += 1
            writer = self.open[split] = ShardWriter(self.out, name, split)
        for key, hu, meta in result.samples:
            writer.add(key, {"hu": hu, "json": meta})
        writer.series.append(item.series_id)
        self.pending.setdefault(split, []).append(result.report)
        if writer.size >= self.target:
            self._close(split)

    def _close(self, split: str) -> None:
        writer = self.open.pop(split, None)
        shard = asdict(writer.close()) if writer is not None else None
        self.journal.record(shard, self.pending.pop(split, []))

    def close_all(self) -> None:
        for split in sorted(set(self.open) | set(self.pending)):
            self._close(split)

    def abort(self) -> None:
        for writer in self.open.values():
            writer.abort()


def run_ingest(cfg: IngestConfig) -> dict:
    """Ingest ``cfg.sources`` into ``cfg.out``; returns the report dict (also written)."""
    validate(cfg)
    salt = load_salt(cfg.salt_file, cfg.create_salt)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    if (out / MANIFEST_NAME).exists():
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        if manifest.get("config") != config:
            raise ConfigError(f"{out} already holds shards made with other settings; "
                              "use a new --out folder.")
        logger.info("%s is complete (manifest present, same settings): nothing to do", out)
        return json.loads((out / REPORT_NAME).read_text())
    stale = remove_stale_temporaries(out)
    if stale:
        logger.info("removed %d incomplete shard(s) of an interrupted run", stale)
    journal = Journal(out / JOURNAL_NAME, config)

    start = time.perf_counter()
    roots = [Path(s) for s in cfg.sources]
    found = discover(cfg.sources)
    logger.info("found %d DICOM file(s), %d NIfTI file(s), %d other file(s) (ignored)",
                len(found.dicom), len(found.nifti), len(found.ignored))
    records, failures = _scan_headers(found.dicom, cfg.workers)
    series, frame_skips = group_series(records)
    labels = LabelTable(cfg.labels, cfg.label_columns) if cfg.labels else None
    planner = Planner(cfg, salt, labels)
    items = [planner.dicom_item(s, roots) for s in series]
    items += [planner.nifti_item(p, root, roots) for p, root in found.nifti]
    items.sort(key=lambda it: it.series_id)
    if len({it.series_id for it in items}) != len(items):
        raise RuntimeError("pseudonym collision between two series; please report this")
    done = journal.done_series()
    todo = [it for it in items if it.series_id not in done]
    logger.info("%d series to ingest (%d already in closed shards)", len(todo), len(items) - len(todo))

    writers = SplitWriters(out, journal, int(cfg.shard_size_mb * 1e6))
    bar = tqdm(total=sum(it.n_frames for it in todo), unit="slice", desc="ingest", disable=None)
    slices_written = 0
    try:
        if cfg.workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
                for item, result in zip(todo, pool.imap(process_item, todo, chunksize=1)):
                    writers.add(item, result)
                    slices_written += len(result.samples)
                    bar.update(item.n_frames)
        else:
            _init_worker(cfg)
            for item in todo:
                result = process_item(item)
                writers.add(item, result)
                slices_written += len(result.samples)
                bar.update(item.n_frames)
        writers.close_all()
    except BaseException:
        writers.abort()
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - start

    report = _final_report(cfg, planner, roots, found, failures, frame_skips, journal)
    report["this_run"] = {"seconds": round(elapsed, 3), "series": len(todo),
                          "slices_written": slices_written, "workers": cfg.workers,
                          "slices_per_second": round(slices_written / elapsed, 1) if elapsed else None}
    manifest = build_manifest(journal.shards, config, __version__,
                              {"image_size": cfg.image_size, "hu_range": [cfg.hu_min, cfg.hu_max]})
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    write_manifest(out, manifest)
    journal.path.unlink(missing_ok=True)
    return report


def _final_report(cfg, planner: Planner, roots, found, failures, frame_skips, journal: Journal) -> dict:
    files = [{"source": planner.source_id(path, roots), "kind": "dicom", "outcome": "skipped",
              "reason": reason} for path, reason in failures]
    for (path, reason), count in sorted(frame_skips.items()):
        files.append({"source": planner.source_id(path, roots), "kind": "dicom",
                      "outcome": "skipped", "reason": reason, "images": count})
    series = sorted(journal.reports, key=lambda r: r["series"])
    reasons = Counter(f["reason"] for f in files)
    reasons.update(r["reason"] for r in series if r["outcome"] == "skipped")
    splits = Counter()
    patients: dict[str, set] = {}
    for r in series:
        splits[r["split"]] += r["written"]
        if r["written"]:
            patients.setdefault(r["split"], set()).add(r["patient"])
    return {
        "ctssl_version": __version__,
        "summary": {
            "dicom_files": len(found.dicom), "nifti_files": len(found.nifti),
            "ignored_files": len(found.ignored),
            "series_written": sum(r["outcome"] == "written" for r in series),
            "series_skipped": sum(r["outcome"] == "skipped" for r in series),
            "slices_written": sum(r["written"] for r in series),
            "slices_per_split": dict(sorted(splits.items())),
            "skip_reasons": dict(sorted(reasons.items())),
        },
        "series": series,
        "skipped_files": files,
        "patients_per_split": {k: len(v) for k, v in sorted(patients.items())},
    }
