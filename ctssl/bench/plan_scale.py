"""``ctssl bench plan-scale``: the SLURM ingest's plan and merge phases at archive scale (no pixel data involved).

A synthetic header index (``--series`` series, ``--slices`` images in all, series sizes drawn
from a log-normal around the mean, as CT archives mix 1 mm and 5 mm series) is written as the
hash partitions the header scan produces. Then, each in a fresh process so that its peak memory
is its own:

- plan: group every partition into series and work items, balance them over ``--tasks`` tasks,
  route the items to per-task files (everything ``ctssl ingest-array plan`` does after reading
  headers);
- merge: read the tasks' done records (shards and series reports, synthesised at ~52 KB per
  slice and 256 MB shards) and write the manifest and report.

Reports time and peak resident memory (ru_maxrss) of each phase. Reading real headers is
measured separately (``ctssl bench ingest``); its cost is per file and parallel.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from ctssl.bench.settings import PlanScaleBench
from ctssl.core.atomic import atomic_write_text

BYTES_PER_SLICE = 52_273          # measured shard bytes per 256x256 slice (docs/ingest.md)
SHARD_BYTES = 256_000_000
SALT = b"scale-simulation-salt-0123456789"


def _series_sizes(series: int, slices: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=0.0, sigma=0.8, size=series)
    sizes = np.maximum(1, np.floor(raw / raw.sum() * slices)).astype(np.int64)
    sizes[: slices - sizes.sum()] += 1  # exact total
    return sizes


def write_index(folder: Path, series: int, slices: int) -> int:
    """Synthetic FrameRecords in hash partitions; returns the number of partitions."""
    from ctssl.data.dicom_headers import FrameRecord
    from ctssl.core.spill import PickleAppender
    from ctssl.data.ingest.plan import RECORDS_PER_PARTITION, partition_of

    sizes = _series_sizes(series, slices)
    partitions = max(1, int(np.ceil(slices / RECORDS_PER_PARTITION)))
    folder.mkdir(parents=True, exist_ok=True)
    appender = PickleAppender([folder / f"part-{p:05d}.records" for p in range(partitions)])
    for s, n in enumerate(sizes):
        uid = f"1.2.826.0.1.3680043.99.{s}"
        part = partition_of(uid, partitions)
        patient = f"MRN{s // 3:08d}"
        for k in range(int(n)):
            appender.add(part, FrameRecord(
                path=f"/archive/{patient}/{uid}/IM{k:05d}.dcm", frame=None, sop_uid=f"{uid}.{k}",
                series_uid=uid, study_uid=f"{uid}.0", patient_key=patient, modality="CT",
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                ipp=(-250.0, -250.0, -600.0 + 1.25 * k), pixel_spacing=(0.7, 0.7), rows=512, cols=512,
                slope=1.0, intercept=-1024.0, rescale_type="HU", pixel_representation=1,
                padding_value=-2000, padding_limit=None, acquisition=1, instance=k + 1,
                transfer_syntax="1.2.840.10008.1.2.1", manufacturer="SIEMENS", model="SOMATOM",
                kvp=120.0, kernel="Br40d", body_part="CHEST", slice_thickness=1.25))
    appender.close()
    return partitions


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it restarts at exec, so a
    spawned child does not inherit its parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _plan_phase(work: str, partitions: int, tasks: int, queue) -> None:
    from ctssl.data.ingest import IngestConfig
    from ctssl.data.ingest.plan import Planner
    from ctssl.data.ingest.plan import assign_tasks, group_partitions, route_items
    from ctssl.data.pseudonym import assign_splits

    start_mb = _peak_mb()
    start = time.perf_counter()
    work = Path(work)
    planner = Planner(IngestConfig(sources=["/archive"], out=str(work)), SALT, None)
    parts = [work / "partitions" / f"part-{p:05d}.records" for p in range(partitions)]
    summaries, _ = group_partitions(parts, planner, [Path("/archive")], work / "grouped")
    assignment, loads = assign_tasks(((s[0], s[1]) for s in summaries), tasks)
    splits = assign_splits((s[3] for s in summaries), planner.fractions)
    per_task = route_items(summaries, assignment, splits, work / "grouped", work, tasks)
    series = [(s[0], s[1], assignment[s[0]]) for s in summaries]
    atomic_write_text(work / "series.json", json.dumps(series))
    queue.put({"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(_peak_mb(), 1),
               "rss_after_imports_mb": round(start_mb, 1), "series": len(summaries),
               "frames": int(sum(loads)), "max_task_frames": int(max(loads)),
               "min_task_frames": int(min(loads)), "max_task_series": int(max(per_task))})


def _fake_task_outputs(work: Path, tasks: int) -> None:
    """Plan files and done records as ``tasks`` finished tasks would leave them."""
    from ctssl.data.ingest.task import task_paths
    from ctssl.data.ingest.plan import PLAN_DIR, PLAN_NAME, PLAN_REPORT_NAME

    series = json.loads((work / "series.json").read_text())
    plan_dir = work / PLAN_DIR
    plan_dir.mkdir(exist_ok=True)
    config = {"image_size": 256, "hu_min": -1024.0, "hu_max": 3071.0}
    atomic_write_text(plan_dir / PLAN_NAME, json.dumps(
        {"num_tasks": tasks, "tasks": [{"index": t, "items": f"task-{t:05d}.items"} for t in range(tasks)],
         "config": config}))
    atomic_write_text(plan_dir / PLAN_REPORT_NAME, json.dumps(
        {"found": {"dicom_files": sum(n for _, n, _ in series), "nifti_files": 0, "ignored_files": 0},
         "skipped_files": []}))
    by_task: dict[int, list] = {t: [] for t in range(tasks)}
    for s, n, t in series:
        by_task[t].append((s, n))
    for t, items in by_task.items():
        shards, reports, current, size = [], [], [], 0
        for s, n in items:
            reports.append({"source": "src-0", "kind": "dicom", "series": s, "patient": s[:8], "split": "train",
                            "source_slices": n, "written": n, "outcome": "written"})
            current.append(s)
            size += n * BYTES_PER_SLICE
            if size >= SHARD_BYTES:
                shards.append({"name": f"train-{t:05d}-{len(shards):05d}.tar", "split": "train",
                               "samples": size // BYTES_PER_SLICE, "bytes": size, "sha256": "0" * 64,
                               "series": current})
                current, size = [], 0
        if current:
            shards.append({"name": f"train-{t:05d}-{len(shards):05d}.tar", "split": "train",
                           "samples": size // BYTES_PER_SLICE, "bytes": size, "sha256": "0" * 64,
                           "series": current})
        _, done = task_paths(work, t)
        done.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(done, json.dumps({"task": t, "shards": shards, "reports": reports}))


def _merge_phase(work: str, queue) -> None:
    from ctssl.data.ingest.merge import merge

    start_mb = _peak_mb()
    start = time.perf_counter()
    report = merge(work)
    manifest = json.loads((Path(work) / "manifest.json").read_text())
    queue.put({"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(_peak_mb(), 1),
               "rss_after_imports_mb": round(start_mb, 1), "shards": manifest["totals"]["shards"],
               "slices": report["summary"]["slices_written"], "series": report["summary"]["series_written"]})


def _in_child(target, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def result_path(cfg: PlanScaleBench) -> Path:
    return Path(cfg.out) / f"scale-{cfg.series}-{cfg.slices}.json"


def run(cfg: PlanScaleBench) -> dict:
    """Measure, write OUT/scale-SERIES-SLICES.json and return the result."""
    series, slices, tasks = cfg.series, cfg.slices, cfg.tasks
    work = Path(cfg.out) / f"scale-{series}-{slices}"
    if work.exists():
        shutil.rmtree(work)
    start = time.perf_counter()
    partitions = write_index(work / "partitions", series, slices)
    index_seconds = time.perf_counter() - start
    plan = _in_child(_plan_phase, str(work), partitions, tasks)
    _fake_task_outputs(work, tasks)
    merge = _in_child(_merge_phase, str(work))
    result = {"benchmark": "ingest-plan-merge-scale", "series": series, "slices": slices, "tasks": tasks,
              "partitions": partitions, "index_generation_seconds": round(index_seconds, 1),
              "plan": plan, "merge": merge}
    shutil.rmtree(work)
    atomic_write_text(result_path(cfg), json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    p, m = result["plan"], result["merge"]
    return "\n".join([
        f"plan/merge at {result['series']:,} series, {result['slices']:,} slices, {result['tasks']} tasks "
        f"({result['partitions']} partitions)",
        f"  plan  (group + balance + route)  {p['seconds']:>8.1f} s   peak RSS {p['peak_rss_mb']:>8.1f} MB "
        f"(after imports {p['rss_after_imports_mb']:.1f})",
        f"        task balance: {p['min_task_frames']:,} .. {p['max_task_frames']:,} slices per task",
        f"  merge (manifest + report)        {m['seconds']:>8.1f} s   peak RSS {m['peak_rss_mb']:>8.1f} MB "
        f"(after imports {m['rss_after_imports_mb']:.1f}); {m['shards']:,} shards",
    ])


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    return [[f"SLURM ingest plan, {r['slices']:,} slices / {r['tasks']} tasks",
             f"{r['plan']['seconds']:.0f} s, {r['plan']['peak_rss_mb']:.0f} MB peak", "", ""],
            [f"SLURM ingest merge, {r['slices']:,} slices", f"{r['merge']['seconds']:.1f} s, "
             f"{r['merge']['peak_rss_mb']:.0f} MB peak", "", ""]]
