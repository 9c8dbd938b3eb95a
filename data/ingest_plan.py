"""Phase 1 of a scaled-out ingest: scan headers once, group into series, balance over N tasks.

Memory stays flat in the size of the archive: header records never all sit in memory at once.

1. scan: DICOM headers are read (in ``workers`` processes) and appended, in pickled batches, to
   one of P partition files chosen by a hash of the SeriesInstanceUID, so every frame of a
   series lands in the same partition (P grows with the number of files, about
   ``RECORDS_PER_PARTITION`` each);
2. group: one partition at a time, records become axial CT series (data.dicom_series) and work
   items with their pseudonyms, split and labels; only a (series, frames, partition) summary per
   series stays in memory;
3. assign: series go to tasks by longest-processing-time-first on their frame counts (each to
   the currently lightest task), which balances slices across tasks; patients go to splits
   (data.pseudonym.assign_splits);
4. route: one partition at a time, items are appended to their task's item file.

The plan folder ``OUT/plan/`` holds ``plan.json`` (config, tasks, totals), ``plan-report.json``
(files skipped while scanning and grouping) and ``task-NNNNN.items`` (the task's work items), so
a task reads only its own items and never a header of another task's series.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import multiprocessing
import shutil
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import ConfigError
from ctssl.core.spill import PickleAppender, read_batches
from ctssl.data.pseudonym import assign_splits

logger = logging.getLogger(__name__)

PLAN_DIR = "plan"
PLAN_NAME = "plan.json"
PLAN_REPORT_NAME = "plan-report.json"
RECORDS_PER_PARTITION = 50_000
ITEM_BATCH = 8         # work items (a series each, ~100s of records) per pickled batch


def task_items_name(task: int) -> str:
    return f"task-{task:05d}.items"


def partition_of(series_uid: str, partitions: int) -> int:
    return zlib.crc32(series_uid.encode()) % partitions


def scan_to_partitions(paths: list[Path], workers: int, folder: Path, partitions: int) -> list[tuple[str, str]]:
    """Read DICOM headers into partition files; returns (path, reason) of unreadable files."""
    from ctssl.data.ingest import read_records_safe

    folder.mkdir(parents=True, exist_ok=True)
    appender = PickleAppender([folder / f"part-{p:05d}.records" for p in range(partitions)])
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), unit="file", desc="scan headers", disable=None)

    def consume(path: str, result) -> None:
        if isinstance(result, str):
            failures.append((path, result))
        else:
            for rec in result:
                appender.add(partition_of(rec.series_uid, partitions), rec)
        bar.update(1)

    names = [str(p) for p in paths]
    if workers > 1 and len(names) > 64:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for path, result in zip(names, pool.imap(read_records_safe, names, chunksize=64)):
                consume(path, result)
    else:
        for path in names:
            consume(path, read_records_safe(path))
    appender.close()
    bar.close()
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


def group_partitions(partition_files: list[Path], planner, roots, items_folder: Path):
    """Group each partition into items (written to ``items_folder``); returns the summaries
    [(series_id, frames, items file, patient)] and the frame-level skips {(path, reason): count}."""
    from ctssl.data.dicom_series import group_series

    summaries: list[tuple[str, int, str]] = []
    skips: dict[tuple[str, str], int] = defaultdict(int)
    items_folder.mkdir(parents=True, exist_ok=True)
    for part in tqdm(partition_files, unit="partition", desc="group series", disable=None):
        series, part_skips = group_series(list(read_batches(part)))
        for key, count in part_skips.items():
            skips[key] += count
        items = [planner.dicom_item(s, roots) for s in series]
        out = items_folder / (part.stem + ".items")
        appender = PickleAppender([out], ITEM_BATCH)
        for item in items:
            appender.add(0, item)
            summaries.append((item.series_id, item.n_frames, out.name, item.patient_id))
        appender.close()
        part.unlink(missing_ok=True)
    return summaries, skips


def route_items(summaries, assignment: dict[str, int], splits: dict[str, str], grouped: Path,
                work: Path, num_tasks: int) -> list[int]:
    """Give every grouped item its patient's split and append it to its task's item file,
    one items file at a time."""
    route = PickleAppender([work / task_items_name(t) for t in range(num_tasks)], ITEM_BATCH)
    series_per_task = [0] * num_tasks
    for items_file in sorted({s[2] for s in summaries}):
        for item in read_batches(grouped / items_file):
            item.split = splits[item.patient_id]
            task = assignment[item.series_id]
            route.add(task, item)
            series_per_task[task] += 1
    route.close()
    for t in range(num_tasks):  # every task has an items file, empty ones too
        (work / task_items_name(t)).touch()
    return series_per_task


def build_plan(cfg, num_tasks: int, workers: int = 1) -> dict:
    """Scan, group, assign and route; writes ``OUT/plan/`` atomically and returns plan.json."""
    from ctssl.data.dicom_headers import discover
    from ctssl.data.ingest import Planner, config_dict, validate
    from ctssl.data.labels import LabelTable
    from ctssl.data.pseudonym import load_salt

    validate(cfg)
    if num_tasks < 1:
        raise ConfigError(f"num_tasks must be >= 1, got {num_tasks}")
    out = Path(cfg.out)
    final = out / PLAN_DIR
    config = config_dict(cfg)
    if (final / PLAN_NAME).exists():
        plan = json.loads((final / PLAN_NAME).read_text())
        if plan["config"] != config or plan["num_tasks"] != num_tasks:
            raise ConfigError(f"{final} holds a plan with other settings (or task count); "
                              "use a new --out folder.")
        logger.info("plan exists with the same settings: reusing %s", final)
        return plan
    salt = load_salt(cfg.salt_file, cfg.create_salt)
    work = out / (PLAN_DIR + ".tmp-partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    roots = [Path(s) for s in cfg.sources]
    found = discover(cfg.sources)
    logger.info("found %d DICOM file(s), %d NIfTI file(s), %d other file(s) (ignored)",
                len(found.dicom), len(found.nifti), len(found.ignored))
    partitions = max(1, math.ceil(len(found.dicom) / RECORDS_PER_PARTITION))
    failures = scan_to_partitions(found.dicom, workers, work / "partitions", partitions)
    labels = LabelTable(cfg.labels, cfg.label_columns) if cfg.labels else None
    planner = Planner(cfg, salt, labels)
    part_files = [work / "partitions" / f"part-{p:05d}.records" for p in range(partitions)]
    summaries, frame_skips = group_partitions(part_files, planner, roots, work / "grouped")
    nifti_items = [planner.nifti_item(p, root, roots) for p, root in found.nifti]
    appender = PickleAppender([work / "grouped" / "nifti.items"], ITEM_BATCH)
    for item in nifti_items:
        appender.add(0, item)
        summaries.append((item.series_id, item.n_frames, "nifti.items", item.patient_id))
    appender.close()
    ids = [s[0] for s in summaries]  # (series, frames, items file, patient)
    if len(set(ids)) != len(ids):
        raise RuntimeError("pseudonym collision between two series; please report this")

    assignment, loads = assign_tasks(((s[0], s[1]) for s in summaries), num_tasks)
    splits = assign_splits((s[3] for s in summaries), planner.fractions)
    series_per_task = route_items(summaries, assignment, splits, work / "grouped", work, num_tasks)
    shutil.rmtree(work / "grouped")
    shutil.rmtree(work / "partitions", ignore_errors=True)

    files = [{"source": planner.source_id(path, roots), "kind": "dicom", "outcome": "skipped",
              "reason": reason} for path, reason in failures]
    for (path, reason), count in sorted(frame_skips.items()):
        files.append({"source": planner.source_id(path, roots), "kind": "dicom",
                      "outcome": "skipped", "reason": reason, "images": count})
    atomic_write_text(work / PLAN_REPORT_NAME, json.dumps(
        {"found": {"dicom_files": len(found.dicom), "nifti_files": len(found.nifti),
                   "ignored_files": len(found.ignored)}, "skipped_files": files}) + "\n")
    plan = {"ctssl_version": __version__, "num_tasks": num_tasks, "partitions": partitions,
            "series": len(summaries), "frames": sum(loads),
            "tasks": [{"index": t, "series": series_per_task[t], "frames": loads[t],
                       "items": task_items_name(t)} for t in range(num_tasks)],
            "config": config}
    atomic_write_text(work / PLAN_NAME, json.dumps(plan, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)
    logger.info("plan: %d series, %d frames over %d task(s); heaviest task %d frames, lightest %d",
                plan["series"], plan["frames"], num_tasks, max(loads), min(loads))
    return plan


def load_plan(out: str | Path) -> dict:
    path = Path(out) / PLAN_DIR / PLAN_NAME
    if not path.exists():
        raise FileNotFoundError(f"No ingest plan at '{path}'. Run `ctssl ingest-array plan` first.")
    return json.loads(path.read_text())


def task_items(out: str | Path, task: int) -> list:
    """The work items of ``task``, in processing order (by series pseudonym)."""
    items = list(read_batches(Path(out) / PLAN_DIR / task_items_name(task)))
    return sorted(items, key=lambda item: item.series_id)
