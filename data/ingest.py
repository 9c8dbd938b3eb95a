"""``ctssl ingest``: DICOM / NIfTI CT volumes -> verified WebDataset shards of HU slices.

Flow: discover sources -> read DICOM headers (parallel) -> group into axial CT series (see
data.dicom_series) and NIfTI volumes -> pseudonyms and patient-level split per series -> for each
series, in a fixed order: load HU slices, thin, drop air, resize, encode -> per-split shards
closed at series boundaries once they reach the target size -> manifest and report.

The work is split in three phases so that it scales out as a SLURM array (data.ingest_plan,
``run_task``, data.ingest_merge); ``run_ingest`` runs all three on one node with one task.
Resume: each closed shard is recorded in the task's journal (``OUT/tasks/``, atomically) with
the series it holds and their report entries. A rerun skips those series and starts the next
shard exactly where the interrupted run would have, so the result is the same set of shards.
Privacy: no header identifier (names, IDs, dates, UIDs, institution, free text) is written
anywhere; sources are referred to by keyed pseudonyms (see data.pseudonym, docs/ingest.md).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.core.config import ConfigError, to_dict
from ctssl.data.dicom_headers import read_records
from ctssl.data.dicom_series import DicomSeries, FrameLoader
from ctssl.data.hounsfield import HU_CEILING, HU_FLOOR
from ctssl.data.labels import LabelTable, SeriesLabels
from ctssl.data.nifti_volume import NiftiError, load_nifti
from ctssl.data.pseudonym import pseudonym
from ctssl.data.slicing import air_fraction, resize_slice, thin_positions
from ctssl.shards.encoding import encode_hu
from ctssl.shards.manifest import MANIFEST_NAME
from ctssl.shards.writer import ShardWriter

logger = logging.getLogger(__name__)

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
    split: str                    # set when the plan knows every patient (data.ingest_plan)
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


def read_records_safe(path: str):
    """Header records of one file, or the reason it cannot be read (a string)."""
    try:
        return read_records(Path(path))
    except DATA_ERRORS as err:
        return f"unreadable DICOM header ({type(err).__name__})"
    except (TypeError, AttributeError, KeyError, IndexError) as err:
        # pydicom raises these on some malformed headers; a file is not a bug of ours.
        return f"unreadable DICOM header ({type(err).__name__})"


def config_dict(cfg: IngestConfig) -> dict:
    """The settings that define an ingest's output (run-only keys left out)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}


def config_from_dict(data: dict) -> IngestConfig:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(IngestConfig), data))


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
        item = Item("dicom", pseudonym(self.salt, "series", f"{series.series_uid}|{series.group}"),
                    pseudonym(self.salt, "study", first.study_uid), patient,
                    "", self.source_id(folder, roots), labels, n_frames=len(series.frames))
        # The pseudonyms are made: drop the identifiers from what travels on to the tasks
        # (in place: the records were read for this plan and serve nothing else).
        series.series_uid = ""
        for frame in series.frames:
            frame.sop_uid = frame.series_uid = frame.study_uid = frame.patient_key = ""
        item.dicom = series
        return item

    def nifti_item(self, path: Path, root: Path, roots) -> Item:
        rel = path.relative_to(root).as_posix()
        match = self.pattern.match(path.name)
        patient_key = match.group(1) if match and match.group(1) else rel
        patient = pseudonym(self.salt, "patient", "nifti:" + patient_key)
        labels = self.labels.lookup(nifti_path=rel) if self.labels else SeriesLabels()
        return Item("nifti", pseudonym(self.salt, "series", "nifti:" + rel),
                    pseudonym(self.salt, "study", "nifti:" + rel), patient,
                    "", self.source_id(str(path), roots), labels,
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
    """A task's closed shards and their report entries, rewritten atomically after each shard."""

    def __init__(self, path: Path, config: dict):
        self.path, self.config = path, config
        self.shards: list[dict] = []
        self.reports: list[dict] = []
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("config") != config:
                raise ConfigError(f"{path} belongs to an ingest with other settings; "
                                  "rerun with the same arguments or use a new --out folder.")
            self.shards, self.reports = data["shards"], data["reports"]

    def done_series(self) -> set[str]:
        return {s for shard in self.shards for s in shard["series"]} | {r["series"] for r in self.reports}

    def record(self, shard: dict | None, reports: list[dict]) -> None:
        if shard is not None:
            self.shards.append(shard)
        self.reports.extend(reports)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"config": self.config, "shards": self.shards,
                                                 "reports": self.reports}) + "\n")


class SplitWriters:
    """One open shard per split; shards close at series boundaries past the target size."""

    def __init__(self, out: Path, journal: Journal, target_bytes: int, task: int):
        self.out, self.journal, self.target, self.task = out, journal, target_bytes, task
        self.open: dict[str, ShardWriter] = {}
        self.pending: dict[str, list[dict]] = {}
        self.counters = Counter(s["split"] for s in journal.shards)
        self.closed_this_run = 0

    def add(self, item: Item, result: ItemResult) -> None:
        split = item.split
        if not result.samples:
            # Nothing to write: its report is journaled with the next shard of its split
            # (or at the end), so a resumed run reports it once.
            self.pending.setdefault(split, []).append(result.report)
            return
        writer = self.open.get(split)
        if writer is None:
            name = shard_name(split, self.task, self.counters[split])
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
        if shard is not None:
            self.closed_this_run += 1
            _fault_injection(self.task, self.closed_this_run)

    def close_all(self) -> None:
        for split in sorted(set(self.open) | set(self.pending)):
            self._close(split)

    def abort(self) -> None:
        for writer in self.open.values():
            writer.abort()


def shard_name(split: str, task: int, index: int) -> str:
    return f"{split}-{task:05d}-{index:05d}.tar"


FAULT_ENV = "CTSSL_FAULT_KILL"


def _fault_injection(task: int, closed: int) -> None:
    """Test hook: ``CTSSL_FAULT_KILL=TASK:N`` SIGKILLs task TASK after it closed N shards,
    as a preempted or failed job dies (used by the SLURM tests)."""
    spec = os.environ.get(FAULT_ENV)
    if spec:
        want_task, want_closed = (int(v) for v in spec.split(":"))
        if want_task == task and want_closed == closed:
            logger.warning("fault injection: killing task %d after %d shard(s)", task, closed)
            os.kill(os.getpid(), signal.SIGKILL)


def task_paths(out: Path, task: int) -> tuple[Path, Path]:
    """(journal, done marker) of a task."""
    folder = out / "tasks"
    return folder / f"task-{task:05d}.journal.json", folder / f"task-{task:05d}.done.json"


def run_task(out: str | Path, task: int, workers: int = 1) -> dict:
    """Run task ``task`` of the plan in ``out``; a finished task is a no-op, a failed or
    preempted one resumes after its last closed shard. Returns the task's done record."""
    from ctssl.data.ingest_plan import load_plan, task_items

    out = Path(out)
    plan = load_plan(out)
    if not 0 <= task < plan["num_tasks"]:
        raise ConfigError(f"task index {task} is outside the plan's 0..{plan['num_tasks'] - 1}")
    journal_path, done_path = task_paths(out, task)
    if done_path.exists():
        logger.info("task %d is already complete: nothing to do", task)
        return json.loads(done_path.read_text())
    for leftover in out.glob(f"*-{task:05d}-*.tar{TMP_MARK}*"):
        leftover.unlink()
    cfg = config_from_dict(plan["config"])
    journal = Journal(journal_path, plan["config"])
    done = journal.done_series()
    todo = [it for it in task_items(out, task) if it.series_id not in done]
    logger.info("task %d: %d series to ingest (%d already in closed shards)", task, len(todo), len(done))
    writers = SplitWriters(out, journal, int(cfg.shard_size_mb * 1e6), task)
    bar = tqdm(total=sum(it.n_frames for it in todo), unit="slice", desc=f"ingest task {task}", disable=None)
    start, written = time.perf_counter(), 0
    try:
        if workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
                for item, result in zip(todo, pool.imap(process_item, todo, chunksize=1)):
                    writers.add(item, result)
                    written += len(result.samples)
                    bar.update(item.n_frames)
        else:
            _init_worker(cfg)
            for item in todo:
                result = process_item(item)
                writers.add(item, result)
                written += len(result.samples)
                bar.update(item.n_frames)
        writers.close_all()
    except BaseException:
        writers.abort()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    record = {"task": task, "shards": journal.shards, "reports": journal.reports,
              "this_run": {"seconds": round(seconds, 3), "series": len(todo), "slices_written": written,
                           "workers": workers,
                           "slices_per_second": round(written / seconds, 1) if seconds else None}}
    atomic_write_text(done_path, json.dumps(record) + "\n")
    journal_path.unlink(missing_ok=True)
    return record


def run_ingest(cfg: IngestConfig) -> dict:
    """Single-node ingest: plan with one task, run it with ``cfg.workers``, merge.

    Returns the report dict (also written to ``OUT/ingest-report.json``).
    """
    from ctssl.data.ingest_merge import merge
    from ctssl.data.ingest_plan import build_plan

    validate(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_NAME).exists():
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        if manifest.get("config") != config_dict(cfg):
            raise ConfigError(f"{out} already holds shards made with other settings; "
                              "use a new --out folder.")
        logger.info("%s is complete (manifest present, same settings): nothing to do", out)
        return json.loads((out / REPORT_NAME).read_text())
    start = time.perf_counter()
    build_plan(cfg, num_tasks=1, workers=cfg.workers)
    record = run_task(out, 0, cfg.workers)
    report = merge(out)
    seconds = time.perf_counter() - start
    report["this_run"] = {**record["this_run"], "seconds": round(seconds, 3),
                          "slices_per_second": round(record["this_run"]["slices_written"] / seconds, 1)}
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    return report
