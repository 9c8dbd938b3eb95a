"""Phase 1 of an ingest: scan headers once, group into series, pair masks, balance over N tasks (uses
``config``, ``discover`` and ``pairs``).

Memory stays flat in the size of the archive: header records never all sit in memory at once.

1. scan: DICOM headers are read (in ``workers`` processes), identifiers keyed as they are read
   (data.pseudonym.Keyer: no raw UID ever reaches a file), and appended, in pickled batches, to one of
   P partition files chosen by a hash of the series key, so every frame of a series lands in the same
   partition (P grows with the number of files, about ``RECORDS_PER_PARTITION`` each);
2. group: one partition at a time, records become axial CT series (data.dicom_series) and work items
   with their pseudonyms, split and labels; only a (series, frames, partition) summary per series
   stays in memory. DICOM SEG headers are kept apart (with their keyed references, in memory) and each
   is matched to the series holding most of the instances it references; masks of NIfTI images and of a
   ``--masks`` CSV are paired by ``pairs``;
3. assign: series go to tasks by longest-processing-time-first on their frame counts (each to the
   currently lightest task), which balances slices across tasks; patients go to splits
   (data.pseudonym.assign_splits);
4. route: one partition at a time, items are appended to their task's item file.

The plan folder ``OUT/plan/`` holds ``plan.json`` (settings without paths, tasks, totals),
``plan-report.json`` (files skipped while scanning and grouping, by pseudonym) and ``task-NNNNN.items``
(the task's work items: the source files' paths, which a task needs to read them; deleted at merge).
The plan is built in ``OUT/plan.tmp-partial`` and renamed when complete; a failed plan deletes it, and
a plan killed outright leaves it to be deleted by the next run, before anything else.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import re
import shutil
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from ctssl import __version__
from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.core.config import ConfigError
from ctssl.core.pool import fork_pool
from ctssl.core.spill import PickleAppender, read_batches
from ctssl.data.dicom_seg import SegRecord
from ctssl.data.dicom_series import DicomSeries, is_problem
from ctssl.data.guard import DataError
from ctssl.data.ingest.config import IngestConfig, config_dict, settings_changes, validate
from ctssl.data.ingest.discover import Sources, discover, read_header
from ctssl.data.ingest.pairs import ClassTable, MaskRef, check_names, pair_masks
from ctssl.data.labels import LabelTable, SeriesLabels
from ctssl.data.nifti_volume import volume_kind
from ctssl.data.pseudonym import Keyer, assign_splits, load_salt, pseudonym

logger = logging.getLogger(__name__)

PLAN_DIR = "plan"
PLAN_NAME = "plan.json"
PLAN_REPORT_NAME = "plan-report.json"
WORK_DIR = PLAN_DIR + TMP_MARK + "partial"
RECORDS_PER_PARTITION = 50_000
ITEM_BATCH = 8         # work items (a series each, ~100s of records) per pickled batch


@dataclass
class Item:
    """One series to ingest (a DICOM series or a volume file: NIfTI, NRRD, MetaImage), with its pseudonyms."""

    kind: str                     # "dicom", or a volume file's format: "nifti", "nrrd", "metaimage"
    series_id: str                # pseudonyms (16 hex digits)
    study_id: str
    patient_id: str
    split: str                    # set when the plan knows every patient
    source_id: str                # pseudonym (or relative path with report_paths) for the report
    labels: SeriesLabels
    dicom: DicomSeries | None = None
    volume_path: str | None = None
    n_frames: int = 0
    mask: MaskRef | None = None   # its segmentation mask (data.ingest.pairs), placed by the task


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
        labels = SeriesLabels()
        if self.labels:
            labels = self.labels.lookup(series_uid=series.series_uid, study_uid=first.study_uid,
                                        patient_id=first.patient_key)
            self.labels.see_folded("patient_id", first.patient_id_folded)
        item = Item("dicom", pseudonym(self.salt, "series", f"{series.series_uid}|{series.group}"),
                    pseudonym(self.salt, "study", first.study_uid), pseudonym(self.salt, "patient", first.patient_key),
                    "", self.source_id(str(Path(first.path).parent), roots), labels, n_frames=len(series.frames))
        item.dicom = series
        return item

    def volume_item(self, path: Path, root: Path, roots, patient: str | None = None) -> Item:
        """``patient``: the patient key a dataset layout gives (nnU-Net case, CSV column), else from the name."""
        rel = path.relative_to(root).as_posix()
        match = self.pattern.match(path.name)
        patient_key = patient or (match.group(1) if match and match.group(1) else rel)
        labels = SeriesLabels()
        if self.labels:
            labels = self.labels.lookup(nifti_path=rel)
            self.labels.see_folded("nifti_path", self.labels.fold("nifti_path", rel))
        return Item(volume_kind(path), pseudonym(self.salt, "series", "nifti:" + rel),
                    pseudonym(self.salt, "study", "nifti:" + rel), pseudonym(self.salt, "patient", "nifti:" + patient_key),
                    "", self.source_id(str(path), roots), labels,
                    volume_path=str(path), n_frames=_volume_depth(path))


def _volume_depth(path: Path) -> int:
    """The number of axial slices ingest will make of a volume file (data.nifti_volume.slice_count: along the voxel
    axis nearest the world's superior-inferior axis), read from its header; it balances the tasks
    (``assign_tasks``) and sizes the progress bars. Reading problems surface, counted, when the task loads it."""
    try:
        from ctssl.data.guard import LibraryMessages
        from ctssl.data.nifti_volume import slice_count, volume_header

        with LibraryMessages().capture():
            shape, affine = volume_header(path)
            return slice_count(shape, affine)
    except Exception:  # noqa: BLE001 - only an estimate: the task reads the file, counted, either way
        return 0


def _relative(path: Path, roots: list[Path]) -> str:
    """``path`` relative to the source root it was found under (no ``resolve``: links may loop)."""
    import os

    for root in roots:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    return path.name


def task_items_name(task: int) -> str:
    return f"task-{task:05d}.items"


def partition_of(series_key: str, partitions: int) -> int:
    return zlib.crc32(series_key.encode()) % partitions


_SCAN: dict = {}


def _scan_init(keyer: Keyer, max_frames: int, seconds: float, strict: bool) -> None:
    _SCAN.update(keyer=keyer, max_frames=max_frames, seconds=seconds, strict=strict)


def _scan_one(path: str):
    return read_header(path, _SCAN["keyer"], _SCAN["max_frames"], _SCAN["seconds"], _SCAN["strict"])


def scan_to_partitions(paths: list[Path], cfg: IngestConfig, keyer: Keyer, folder: Path, partitions: int,
                       messages: Counter, name_of, segs: list) -> list[tuple[str, str]]:
    """Read DICOM headers into partition files (DICOM SEG records appended to ``segs``); returns (path, reason) of
    files that could not be read (with ``cfg.strict``, raises DataError naming the first, by ``name_of(path)``)."""
    folder.mkdir(parents=True, exist_ok=True)
    appender = PickleAppender([folder / f"part-{p:05d}.records" for p in range(partitions)])
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), unit="file", desc="scan headers", disable=None)

    def consume(path: str, result) -> None:
        records, counts = result
        messages.update(counts)
        if isinstance(records, str):
            if cfg.strict:
                raise DataError(f"{name_of(path)}: {records}")
            failures.append((path, records))
        else:
            for rec in records:
                if isinstance(rec, SegRecord):
                    segs.append(rec)
                else:
                    appender.add(partition_of(rec.series_uid, partitions), rec)
        bar.update(1)

    names = [str(p) for p in paths]
    args = (keyer, cfg.max_frames, cfg.file_seconds, False)
    try:
        if cfg.workers > 1 and len(names) > 64:
            with fork_pool(cfg.workers, _scan_init, args) as pool:
                for path, result in zip(names, pool.imap(_scan_one, names, chunksize=64)):
                    consume(path, result)
        else:
            _scan_init(*args)
            for path in names:
                consume(path, _scan_one(path))
    finally:
        bar.close()
    appender.close()
    return failures


def assign_tasks(summaries: Iterable[tuple[str, int]], num_tasks: int) -> tuple[dict[str, int], list[int]]:
    """Longest-processing-time-first: (series -> task, frames per task). Deterministic."""
    heap = [(0, t) for t in range(num_tasks)]
    loads = [0] * num_tasks
    assignment: dict[str, int] = {}
    for series_id, frames in sorted(summaries, key=lambda s: (-s[1], s[0])):
        load, task = heapq.heappop(heap)
        assignment[series_id] = task
        loads[task] = load + frames
        heapq.heappush(heap, (loads[task], task))
    return assignment, loads


class MaskMatcher:
    """Which DICOM series each DICOM mask belongs to: a SEG by the instances it references (keyed, as the
    images' are), a ``--masks`` CSV row by the file or folder it names. ``hits`` counts, per mask, the
    matching instances (SEG) or series (CSV) of every series seen."""

    def __init__(self, segs: list[SegRecord], csv_images: dict[str, list[MaskRef]]):
        self.segs, self.csv_images = segs, csv_images
        self.by_sop: dict[str, list[int]] = defaultdict(list)
        for i, rec in enumerate(segs):
            for sop in rec.references:
                self.by_sop[sop].append(i)
        self.hits: dict[tuple, Counter] = defaultdict(Counter)

    def see(self, series: DicomSeries, series_id: str) -> None:
        if self.by_sop:
            for frame in series.frames:
                for i in self.by_sop.get(frame.sop_uid, ()):
                    self.hits[("seg", i)][series_id] += 1
        if self.csv_images:
            places = {os.path.abspath(f.path) for f in series.frames} | \
                     {os.path.dirname(os.path.abspath(f.path)) for f in series.frames}
            for place in places & self.csv_images.keys():
                self.hits[("csv", place)][series_id] += 1


def group_partitions(partition_files: list[Path], planner: Planner, roots, items_folder: Path,
                     matcher: MaskMatcher | None = None):
    """Group each partition into items (written to ``items_folder``); returns the summaries
    [(series_id, frames, items file, patient)] and the frame-level skips {(path, reason): count}. ``matcher``
    sees every series (DICOM masks)."""
    from ctssl.data.dicom_series import group_series

    summaries: list[tuple[str, int, str, str]] = []
    skips: dict[tuple[str, str], int] = defaultdict(int)
    items_folder.mkdir(parents=True, exist_ok=True)
    for part in tqdm(partition_files, unit="partition", desc="group series", disable=None):
        series, part_skips = group_series(list(read_batches(part)), planner.cfg.min_slices)
        for key, count in part_skips.items():
            skips[key] += count
        items = [planner.dicom_item(s, roots) for s in series]
        if matcher is not None:
            for s, item in zip(series, items):
                matcher.see(s, item.series_id)
        out = items_folder / (part.stem + ".items")
        appender = PickleAppender([out], ITEM_BATCH)
        for item in items:
            appender.add(0, item)
            summaries.append((item.series_id, item.n_frames, out.name, item.patient_id))
        appender.close()
        part.unlink(missing_ok=True)
    return summaries, skips


def route_items(summaries, assignment: dict[str, int], splits: dict[str, str], grouped: Path,
                work: Path, num_tasks: int, masks: dict[str, MaskRef] | None = None) -> list[int]:
    """Give every grouped item its patient's split (and its DICOM mask, from ``masks`` by series) and append
    it to its task's item file, one items file at a time."""
    route = PickleAppender([work / task_items_name(t) for t in range(num_tasks)], ITEM_BATCH)
    series_per_task = [0] * num_tasks
    for items_file in sorted({s[2] for s in summaries}):
        for item in read_batches(grouped / items_file):
            item.split = splits[item.patient_id]
            if masks and item.series_id in masks:
                item.mask = masks[item.series_id]
            task = assignment[item.series_id]
            route.add(task, item)
            series_per_task[task] += 1
    route.close()
    for t in range(num_tasks):  # every task has an items file, empty ones too
        (work / task_items_name(t)).touch()
    return series_per_task


def build_plan(cfg: IngestConfig, num_tasks: int) -> dict:
    """Scan, group, assign and route; writes ``OUT/plan/`` atomically and returns plan.json."""
    validate(cfg)
    if num_tasks < 1:
        raise ConfigError(f"num_tasks must be >= 1, got {num_tasks}")
    out = Path(cfg.out)
    final = out / PLAN_DIR
    salt = load_salt(cfg.salt_file, cfg.create_salt)
    config = config_dict(cfg, salt)
    if (final / PLAN_NAME).exists():
        plan = json.loads((final / PLAN_NAME).read_text())
        if plan["config"] != config or plan["num_tasks"] != num_tasks:
            changes = settings_changes({**plan["config"], "num_tasks": plan["num_tasks"]},
                                       {**config, "num_tasks": num_tasks})
            raise ConfigError(f"{final} holds a plan with other settings: {changes}. Rerun with its settings, "
                              "or use a new --out folder.")
        logger.info("plan exists with the same settings: reusing it")
        return plan
    work = out / WORK_DIR
    if work.exists():         # a plan killed outright: its spill files may hold paths; start clean
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        plan = _build(cfg, num_tasks, salt, config, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)
    loads = [t["frames"] for t in plan["tasks"]]
    logger.info("plan: %d series, %d frames over %d task(s); heaviest task %d frames, lightest %d",
                plan["series"], plan["frames"], num_tasks, max(loads), min(loads))
    return plan


def _build(cfg: IngestConfig, num_tasks: int, salt: bytes, config: dict, work: Path) -> dict:
    keyer = Keyer(salt)
    roots = [Path(s) for s in cfg.sources]
    labels = LabelTable(cfg.labels, cfg.label_columns, keyer) if cfg.labels else None   # bad labels: fail first
    found: Sources = discover(cfg.sources)
    planner = Planner(cfg, salt, labels)
    table = ClassTable()
    pairing = pair_masks(found, cfg, table, lambda path: planner.source_id(str(path), roots))   # bad CSVs: fail first
    logger.info("found %d DICOM file(s), %d volume image(s) (NIfTI, NRRD, MetaImage), %d volume mask(s), %d other "
                "file(s) (ignored), "
                "%d unreadable", len(found.dicom), len(pairing.images) + len(pairing.skipped_images),
                pairing.mask_files, found.ignored, len(found.skipped))
    if cfg.strict and found.skipped:
        raise DataError(f"{_strict_name(cfg, salt, found.skipped[0][0], roots)}: {found.skipped[0][1]}")
    partitions = max(1, math.ceil(len(found.dicom) / RECORDS_PER_PARTITION))
    messages: Counter = Counter()
    segs: list[SegRecord] = []
    failures = scan_to_partitions(found.dicom, cfg, keyer, work / "partitions", partitions, messages,
                                  lambda path: _strict_name(cfg, salt, path, roots), segs)
    matcher = MaskMatcher(sorted(segs, key=lambda rec: rec.path), pairing.dicom_masks)
    part_files = [work / "partitions" / f"part-{p:05d}.records" for p in range(partitions)]
    summaries, frame_skips = group_partitions(part_files, planner, roots, work / "grouped", matcher)
    problems = sorted((path, reason) for path, reason in frame_skips if is_problem(reason))
    if cfg.strict and problems:
        raise DataError(f"{_strict_name(cfg, salt, problems[0][0], roots)}: {problems[0][1]}")
    dicom_masks, mask_skips = match_dicom_masks(matcher, table, lambda path: planner.source_id(path, roots))
    mask_skips = pairing.mask_skips + mask_skips
    check_names([*pairing.masks.values(), *dicom_masks.values()], table)
    if cfg.strict and mask_skips:
        raise DataError(f"{_strict_name(cfg, salt, mask_skips[0][0], roots)}: mask: {mask_skips[0][2]}")
    appender = PickleAppender([work / "grouped" / "nifti.items"], ITEM_BATCH)
    for path, root in pairing.images:
        here = os.path.abspath(path)
        item = planner.volume_item(path, root, roots, pairing.patients.get(here))
        item.mask = pairing.masks.get(here)
        appender.add(0, item)
        summaries.append((item.series_id, item.n_frames, "nifti.items", item.patient_id))
    appender.close()
    ids = [s[0] for s in summaries]  # (series, frames, items file, patient)
    if len(set(ids)) != len(ids):
        raise RuntimeError("pseudonym collision between two series; please report this")

    assignment, loads = assign_tasks(((s[0], s[1]) for s in summaries), num_tasks)
    splits = assign_splits((s[3] for s in summaries), planner.fractions)
    series_per_task = route_items(summaries, assignment, splits, work / "grouped", work, num_tasks, dicom_masks)
    shutil.rmtree(work / "grouped")
    shutil.rmtree(work / "partitions", ignore_errors=True)

    def name(path) -> str:
        return planner.source_id(str(path), roots)

    files = [{"source": name(path), "kind": "file", "outcome": "skipped", "reason": reason}
             for path, reason in found.skipped]
    files += [{"source": name(path), "kind": "dicom", "outcome": "skipped", "reason": reason}
              for path, reason in failures]
    for (path, reason), count in sorted(frame_skips.items()):
        files.append({"source": name(path), "kind": "dicom", "outcome": "skipped", "reason": reason, "images": count})
    files += [{"source": name(path), "kind": volume_kind(path), "outcome": "skipped", "reason": reason}
              for path, reason in pairing.skipped_images]
    kinds = Counter(volume_kind(path) for path, _ in [*pairing.images, *pairing.skipped_images])
    masks = [{"source": name(path), "kind": kind, "outcome": "skipped", "reason": reason}
             for path, kind, reason in mask_skips]
    mask_files = pairing.mask_files + len(segs)
    atomic_write_text(work / PLAN_REPORT_NAME, json.dumps(
        {"found": {"dicom_files": len(found.dicom), "nifti_files": kinds["nifti"], "nrrd_files": kinds["nrrd"],
                   "metaimage_files": kinds["metaimage"],
                   "mask_files": mask_files, "ignored_files": found.ignored, "unreadable_paths": len(found.skipped)},
         "skipped_files": files, "masks": masks, "library_messages": dict(sorted(messages.items())),
         "ignored": [{"source": name(folder), "kind": "folder", "files": n,
                      "reason": "neither DICOM nor NIfTI (ignored)"} for folder, n in sorted(found.ignored_in.items())],
         **({"labels": labels.join_report()} if labels else {})}) + "\n")
    plan = {"ctssl_version": __version__, "num_tasks": num_tasks, "partitions": partitions,
            "series": len(summaries), "frames": sum(loads),
            "tasks": [{"index": t, "series": series_per_task[t], "frames": loads[t],
                       "items": task_items_name(t)} for t in range(num_tasks)],
            "config": config}
    if mask_files:
        plan["segmentation"] = {"labels": table.as_json()}
    atomic_write_text(work / PLAN_NAME, json.dumps(plan, indent=1) + "\n")
    return plan


def match_dicom_masks(matcher: MaskMatcher, table: ClassTable, name_of) -> tuple[dict[str, MaskRef], list]:
    """(series pseudonym -> its mask, [(path, kind, reason)] of DICOM masks left unused). A ``--masks`` CSV row
    goes with every series found at the file or folder it names; a SEG with the series that holds most of the
    instances it references (ties: the smaller pseudonym). One mask per series: the CSV's, then SEGs in path
    order."""
    by_series: dict[str, MaskRef] = {}
    skips: list[tuple[str, str, str]] = []
    missing = "its image is not among the sources (missing image)"
    for place, refs in sorted(matcher.csv_images.items()):
        hits = matcher.hits.get(("csv", place))
        for ref in refs:
            if not hits:
                skips.append((ref.path, ref.kind, missing))
            for series_id in sorted(hits or ()):
                by_series.setdefault(series_id, ref)
    for i, rec in enumerate(matcher.segs):
        hits = matcher.hits.get(("seg", i))
        if not hits:
            skips.append((rec.path, "seg", "its image series is not among the sources (the instances it references "
                                           "were not found)"))
            continue
        series_id = max(sorted(hits), key=lambda s: hits[s])
        if series_id in by_series:
            skips.append((rec.path, "seg", "another mask of the same series is used"))
            continue
        by_series[series_id] = MaskRef("seg", rec.path, name_of(rec.path), table.add(rec.segments), "the SEG")
    return by_series, skips


def _strict_name(cfg: IngestConfig, salt: bytes, path, roots) -> str:
    """How --strict names the input it stopped at: its pseudonym, or its relative path with report_paths."""
    rel = _relative(Path(path), roots)
    return rel if cfg.report_paths else "src-" + pseudonym(salt, "path", rel)


def load_plan(out: str | Path) -> dict:
    path = Path(out) / PLAN_DIR / PLAN_NAME
    if not path.exists():
        raise FileNotFoundError(f"No ingest plan in '{out}' (expected {PLAN_DIR}/{PLAN_NAME}). Run "
                                "`ctssl ingest-array plan` first.")
    return json.loads(path.read_text())


def task_items(out: str | Path, task: int) -> list:
    """The work items of ``task``, in processing order (by series pseudonym)."""
    items = list(read_batches(Path(out) / PLAN_DIR / task_items_name(task)))
    return sorted(items, key=lambda item: item.series_id)
