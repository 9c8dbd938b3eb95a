"""Phase 2 of an ingest: run one task of the plan (uses ``config`` and ``plan``).

For each series of the task, in a fixed order: load HU slices, thin, drop air, resize, encode; per-split
shards close at series boundaries once they reach the target size. A series with a mask
(data.ingest.pairs) has it read and placed on its slices by world coordinates (data.mask_placement), each
slice's mask resized exactly as the slice is (nearest neighbour) and stored beside it (``KEY.seg``). Every slice
records where its stored pixels lie in the world (``affine_lps``, data.stored_geometry), so predictions can be
written in the source series' geometry; a mask
that cannot be read or placed is a counted skip with its reason, and its series is written without a mask.
Every series is processed in isolation: whatever goes wrong with it or any of its slices (undecodable or
absurd pixel data, a codestream that does not match its transfer syntax, a slice that takes longer than
``file_seconds``, any error of a reading library) becomes a counted skip with its reason in the report, and
the task goes on; ``strict`` stops at the first one instead. Library messages are counted, never shown (data.guard).

Resume: each closed shard is recorded in the task's journal (``OUT/tasks/``, atomically) with the
series it holds and their report entries. A rerun skips those series and starts the next shard exactly
where the interrupted run would have, so the result is the same set of shards. A second run of the
same task while one runs exits at once (a lock per task; tasks of one plan run side by side).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.core.config import ConfigError
from ctssl.core.lock import OutputLock
from ctssl.core.pool import fork_pool
from ctssl.data.dicom_seg import load_seg_frames
from ctssl.data.dicom_series import FrameLoader, is_problem
from ctssl.data.hounsfield import not_hounsfield
from ctssl.data.guard import BudgetExceeded, DataError, LibraryMessages, describe, is_data_failure, time_budget
from ctssl.data.ingest.config import IngestConfig, processing_config, settings_changes
from ctssl.data.ingest.pairs import MaskRef
from ctssl.data.ingest.plan import Item, load_plan, task_items
from ctssl.data.label_volume import load_label_volume
from ctssl.data.mask_placement import MaskError, SliceGrid, dicom_grid, nifti_grid, place_frames, place_volume
from ctssl.data.nifti_volume import VolumeError, load_volume
from ctssl.data.slicing import air_fraction, resize_mask, resize_slice, thin_positions
from ctssl.data.stored_geometry import slice_affine
from ctssl.shards.encoding import encode_hu, encode_seg
from ctssl.shards.writer import ShardWriter

logger = logging.getLogger(__name__)


@dataclass
class ItemResult:
    series_id: str
    samples: list[tuple[str, dict[str, bytes]]]   # (key, members: .hu, .json and, with a mask, .seg)
    report: dict


_CTX: dict = {}


def _init_worker(cfg: IngestConfig) -> None:
    _CTX["cfg"] = cfg


def process_item(item: Item) -> ItemResult:
    """One series, isolated (module docstring). Runs in worker processes."""
    cfg: IngestConfig = _CTX["cfg"]
    messages = LibraryMessages()
    try:
        with messages.capture():
            result = _process(item, cfg)
    except BaseException as err:  # noqa: BLE001 - an untrusted series: any failure is this series' problem
        if not is_data_failure(err):
            raise
        # ctssl's own reasons as they are (a 4-D NIfTI is not a CT volume, not an unreadable one); a library's by type.
        reason = describe(err) if isinstance(err, VolumeError) else f"unreadable series ({describe(err)})"
        if cfg.strict and is_problem(reason):
            raise DataError(f"{item.source_id}: {reason}") from err
        result = ItemResult(item.series_id, [], _report(item, 0, 0, Counter(), reason))
    counts = messages.take()
    if counts:
        result.report["library_messages"] = counts
    return result


def _process(item: Item, cfg: IngestConfig) -> ItemResult:
    skipped: Counter = Counter()
    meta_common = {"patient": item.patient_id, "study": item.study_id, "series": item.series_id,
                   "source": item.kind, "split": item.split}
    slices = []  # (source_index, z, hu float32 canonical, (row, col) spacing)
    if item.kind == "dicom":
        series = item.dicom
        loader = FrameLoader(cfg.hu_min, cfg.hu_max)
        first = series.first
        spacing = tuple(first.pixel_spacing)
        if series.transpose:
            spacing = spacing[::-1]
        keep = thin_positions(series.positions, cfg.min_slice_spacing)
        if len(keep) < len(series.frames):
            skipped["thinned (closer than min_slice_spacing)"] += len(series.frames) - len(keep)
        for i in keep:
            try:
                with time_budget(cfg.file_seconds):
                    hu = loader.load(series, series.frames[i])
            except BaseException as err:  # noqa: BLE001 - one slice's damage costs that slice only
                if not is_data_failure(err):
                    raise
                reason = f"pixel data not decodable ({describe(err)})"
                if cfg.strict:
                    raise DataError(f"{item.source_id}: {reason}") from err
                skipped[reason] += 1
                continue
            slices.append((i, float(series.positions[i]), hu, spacing))
        diffs = np.diff(series.positions)
        extra = {
            "slice_thickness_mm": first.slice_thickness,
            "slice_spacing_mm": round(float(np.median(diffs)), 4) if len(diffs) else None,
            "manufacturer": _clean_text(first.manufacturer), "model": _clean_text(first.model), "kvp": first.kvp,
            "kernel": _clean_text(first.kernel), "body_part": _clean_code(first.body_part),
            "gantry_tilt_deg": round(series.tilt_deg, 3),
        }
        if loader.fallback_used:
            skipped["rescale tags missing: CT fallback applied (kept)"] += loader.fallback_used
        if loader.duplicates_used:
            skipped["duplicate copy used (the first copy did not decode) (kept)"] += loader.duplicates_used
        n_source = len(series.frames)
        grid = dicom_grid(first.iop, first.pixel_spacing, [f.ipp for f in series.frames], (first.rows, first.cols),
                          series.transpose, series.flip_rows, series.flip_cols)
        thickness = first.slice_thickness
    else:
        with time_budget(cfg.file_seconds):
            volume = load_volume(item.volume_path, cfg.hu_min, cfg.hu_max)
        keep = thin_positions(volume.z, cfg.min_slice_spacing)
        if len(keep) < len(volume.z):
            skipped["thinned (closer than min_slice_spacing)"] += len(volume.z) - len(keep)
        slices = [(i, float(volume.z[i]), volume.hu[i], volume.spacing) for i in keep]
        extra = {"slice_thickness_mm": None, "slice_spacing_mm": round(volume.slice_spacing, 4),
                 "manufacturer": "", "model": "", "kvp": None, "kernel": "", "body_part": "",
                 "oblique_deg": round(volume.oblique_deg, 3)}
        n_source = len(volume.z)
        grid = nifti_grid(volume.affine, n_source, volume.hu.shape[1:])
        thickness = volume.slice_spacing
    stats = loader.stats if item.kind == "dicom" else volume.stats
    not_hu = not_hounsfield(stats) if slices else None
    if not_hu and not cfg.allow_non_hu:
        report = _report(item, 0, n_source, skipped, f"{not_hu} (allow_non_hu=true ingests it)")
        report["value_range"], report["value_stats"] = [round(v, 1) for v in stats.value_range], stats.as_report()
        return ItemResult(item.series_id, [], report)

    masks, mask_entry = _load_mask(item.mask, grid, cfg)
    samples = []
    label_rows_used: set = set()       # the per-slice label rows a written slice took
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
                "source_shape": list(hu.shape), "shape": list(out.shape),
                "affine_lps": _rounded(slice_affine(grid, source_index, spacing, cfg.image_size, thickness)), **extra}
        if item.labels:
            meta["labels"] = item.labels.for_slice(source_index, z, tolerance, label_rows_used)
        members = {"hu": encode_hu(out)}
        if masks is not None:
            mask = resize_mask(masks[source_index], spacing, cfg.image_size)
            meta["mask"], meta["mask_pixels"] = True, class_pixels(mask)
            members["seg"] = encode_seg(mask)
            mask_entry["slices"] += 1
            mask_entry["pixels"].update({int(c): n for c, n in meta["mask_pixels"].items()})
        members["json"] = json.dumps(meta, sort_keys=True).encode()
        samples.append((key, _ordered(members)))
    report = _report(item, len(samples), n_source, skipped, None)
    if not_hu:
        report["value_range"], report["value_stats"] = [round(v, 1) for v in stats.value_range], stats.as_report()
        report["slice_notes"] = {**report.get("slice_notes", {}), "values not in Hounsfield units, ingested as allow_non_hu asks (kept)": len(samples)}
    if item.labels and item.labels.slice_rows() > len(label_rows_used):
        # Per-slice label rows of this series that no written slice took (no slice at that z or index, or the
        # slice was not written): counted, as docs/ingest.md says.
        report["label_slice_rows_unmatched"] = item.labels.slice_rows() - len(label_rows_used)
    if mask_entry is not None:
        if "pixels" in mask_entry:
            mask_entry["pixels"] = {str(c): n for c, n in sorted(mask_entry["pixels"].items())}
        report["mask"] = mask_entry
    return ItemResult(item.series_id, samples, report)


def _rounded(affine: np.ndarray) -> list[list[float]]:
    """A (4, 4) affine as JSON: rows, 6 decimals (a micrometre)."""
    return [[round(float(v), 6) + 0.0 for v in row] for row in affine]


def _ordered(members: dict[str, bytes]) -> dict[str, bytes]:
    """Members in tar order: .hu, .json, then .seg (samples without a mask are as ctssl 0.2 wrote them)."""
    return {ext: members[ext] for ext in ("hu", "json", "seg") if ext in members}


def class_pixels(mask: np.ndarray) -> dict[str, int]:
    """{class id: pixel count} of the classes present in a uint8 mask (background included)."""
    counts = np.bincount(mask.ravel(), minlength=1)
    return {str(c): int(n) for c, n in enumerate(counts) if n}


def place_mask(ref: MaskRef, grid: SliceGrid, tol: float) -> np.ndarray:
    """uint8 (n, H, W) class ids of the mask ``ref`` on the image's ``grid``; raises MaskError (or a reading
    library's exception) when it cannot be read or placed."""
    if ref.kind == "seg":
        return place_frames(load_seg_frames(ref.path, ref.lut), grid, tol)
    labels, affine = load_label_volume(ref.path)
    return place_volume(apply_lut(labels, ref.lut, ref.table), affine, grid, tol)


def apply_lut(labels: np.ndarray, lut: dict[int, int] | None, table: str) -> np.ndarray:
    """Stored label values -> class ids; values ``lut`` does not define raise MaskError (None: values are ids)."""
    if lut is None:
        return labels
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    unknown = [int(v) for v in present if int(v) not in lut]
    if unknown:
        raise MaskError(f"labels not in {table}: {unknown[:8]}")
    table_array = np.zeros(256, dtype=np.uint8)
    for value, class_id in lut.items():
        table_array[value] = class_id
    return table_array[labels]


def _load_mask(ref: MaskRef | None, grid: SliceGrid | None, cfg: IngestConfig) -> tuple[np.ndarray | None, dict | None]:
    """(uint8 (n_source, H, W) mask or None, the report's mask entry or None without a mask)."""
    if ref is None:
        return None, None
    entry = {"source": ref.source_id, "kind": ref.kind}
    try:
        with time_budget(cfg.file_seconds):
            masks = place_mask(ref, grid, cfg.mask_tolerance)
    except BaseException as err:  # noqa: BLE001 - an untrusted mask: any failure costs the mask only
        if not is_data_failure(err):
            raise
        reason = describe(err)
        if not isinstance(err, (MaskError, DataError, BudgetExceeded)):
            reason = f"unreadable mask ({reason})"
        if cfg.strict:
            raise DataError(f"{ref.source_id}: mask: {reason}") from err
        return None, {**entry, "outcome": "skipped", "reason": reason}
    return masks, {**entry, "outcome": "placed", "slices": 0, "pixels": Counter()}


def _clean_code(text: str) -> str:
    """A coded string (Body Part Examined) reduced to [A-Z0-9_], at most 16 characters."""
    return re.sub(r"[^A-Z0-9_]", "", text.upper())[:16]


def _clean_text(text: str) -> str:
    """A scanner description (manufacturer, model, kernel): printable ASCII, at most 64 characters."""
    return re.sub(r"[^ -~]", "", text)[:64].strip()


def _report(item: Item, written: int, n_source: int, skipped: Counter, failure: str | None) -> dict:
    entry = {"source": item.source_id, "kind": item.kind, "series": item.series_id,
             "patient": item.patient_id, "split": item.split, "source_slices": n_source, "written": written}
    if failure:
        entry["outcome"], entry["reason"] = "skipped", failure
    else:
        entry["outcome"] = "written" if written else "skipped"
        if not written:
            damaged = [r for r in skipped if is_problem(r) and not r.endswith("(kept)")]
            entry["reason"] = damaged[0] if damaged else "no slice left after filtering"
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
                raise ConfigError(f"{path} belongs to an ingest with other settings: "
                                  f"{settings_changes(data.get('config'), config)}; rerun with the same arguments "
                                  "or use a new --out folder.")
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
        for key, members in result.samples:
            writer.add(key, members)
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


def run_task(out: str | Path, task: int, workers: int = 1, strict: bool = False, lock: bool = True) -> dict:
    """Run task ``task`` of the plan in ``out``; a finished task is a no-op, a failed or
    preempted one resumes after its last closed shard. Returns the task's done record. ``lock``: False when
    the caller already holds the folder (a single-node ingest)."""
    out = Path(out)
    plan = load_plan(out)
    if not 0 <= task < plan["num_tasks"]:
        raise ConfigError(f"task index {task} is outside the plan's 0..{plan['num_tasks'] - 1}")
    journal_path, done_path = task_paths(out, task)
    if done_path.exists():
        logger.info("task %d is already complete: nothing to do", task)
        return json.loads(done_path.read_text())
    if not lock:
        return _run_task(out, plan, task, workers, strict, journal_path, done_path)
    with OutputLock(out, "an ingest task", shared=True), OutputLock(out / "tasks", f"ingest task {task}",
                                                                         name=f".task-{task:05d}.lock"):
        return _run_task(out, plan, task, workers, strict, journal_path, done_path)


def _run_task(out: Path, plan: dict, task: int, workers: int, strict: bool, journal_path: Path, done_path: Path) -> dict:
    for leftover in out.glob(f"*-{task:05d}-*.tar{TMP_MARK}*"):
        leftover.unlink()
    cfg = processing_config(plan["config"])
    cfg.strict = strict
    journal = Journal(journal_path, plan["config"])
    done = journal.done_series()
    todo = [it for it in task_items(out, task) if it.series_id not in done]
    logger.info("task %d: %d series to ingest (%d already in closed shards)", task, len(todo), len(done))
    writers = SplitWriters(out, journal, int(cfg.shard_size_mb * 1e6), task)
    bar = tqdm(total=sum(it.n_frames for it in todo), unit="slice", desc=f"ingest task {task}", disable=None)
    start, written = time.perf_counter(), 0
    try:
        if workers > 1:
            with fork_pool(workers, _init_worker, (cfg,)) as pool:
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
