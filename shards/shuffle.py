"""``ctssl shards shuffle``: series-ordered shards in, shards whose every batch is a random sample of the
corpus out.

Ingest writes whole series in slice order (shards/FORMAT.md): perfect for evaluation (a patient's
slices together, splits by patient) and wrong for self-supervised training, where a loader reading a
few shards at a time fills each batch with neighbouring, near-identical slices of a few series
(false negatives for SimCLR, a centre over a few patients for DINO). This pass writes a second shard
folder in which samples are assigned to shards uniformly at random, a bucketed external shuffle that
runs in bounded memory at any corpus size, on one node or as SLURM arrays (slurm/shuffle.sh):

1. plan: read the source manifest; per split, ``buckets = ceil(bytes / bucket_mb)``; input shards are
   balanced over ``scatter`` tasks by size. Writes ``OUT/shuffle/plan.json``.
2. scatter (task t of T): every sample of task t's input shards goes to bucket
   ``hash(seed, key) mod buckets`` of its split, appended to the spill file
   ``OUT/shuffle/parts/<split>-b<bucket>-t<t>.bin`` (checksums checked on read; damaged samples
   counted, never copied). Memory: a few MB per bucket of buffers.
3. gather (task g: one bucket of one split): the bucket's samples from every scatter task, sorted by
   key (so the result does not depend on which task ran first), permuted with a generator seeded by
   (seed, split, bucket), written as shards of ``shard_size_mb``. Memory: one bucket.
4. merge: the manifest (``"order": "shuffled"``; a source's ``segmentation`` recounted over the samples
   written, from their ``mask_pixels``), a report of what was skipped; spill files deleted.

Every member of a sample is copied as it is, the segmentation mask (``KEY.seg``) and checksums included.

Every sample lands in a bucket independently and uniformly, and each bucket is permuted uniformly, so
every output shard, and every stretch of consecutive samples in it, is a uniform random sample of the
split (without replacement). Splits stay separate (patient-level splits are kept). Each phase writes
atomically and leaves a done marker: a rerun skips finished tasks, redoes a killed one from its start,
and gives byte-identical shards for the same source and seed. The shuffled folder is a complete shard
folder (every split), read by the same loader and verifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ctssl import __version__
from ctssl.core.atomic import TMP_MARK, atomic_write_text
from ctssl.core.config import ConfigError
from ctssl.core.lock import OutputLock
from ctssl.core.pool import fork_pool
from ctssl.core.spill import PickleAppender, read_batches
from ctssl.shards.manifest import MANIFEST_NAME, build_manifest, load_manifest, write_manifest
from ctssl.shards.patients import load_patients, write_patients
from ctssl.shards.reader import iter_shard
from ctssl.shards.writer import ShardWriter

logger = logging.getLogger(__name__)

WORK = "shuffle"
PLAN_NAME = "plan.json"
REPORT_NAME = "shuffle-report.json"
SPILL_BUDGET = 512 << 20    # a scatter task's buffers, all buckets together, before they are spilled


class IncompleteShuffle(RuntimeError):
    """A phase needs tasks of the phase before it that have not finished; the message names them."""


@dataclass
class ShuffleConfig:
    seed: int = 0
    shard_size_mb: float = 256.0    # output shards
    bucket_mb: float = 1024.0       # the most a gather task holds in memory (one bucket)
    scatter_tasks: int = 0          # 0: one per input shard, at most 64
    splits: list[str] = field(default_factory=list)   # empty: every split of the source


def _manifest_sha256(source: Path) -> str:
    return hashlib.sha256((source / MANIFEST_NAME).read_bytes()).hexdigest()


def bucket_of(seed: int, key: str, buckets: int) -> int:
    """A uniform bucket for ``key``, the same on every machine (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def plan_shuffle(source: str | Path, out: str | Path, cfg: ShuffleConfig) -> dict:
    """Write (or reuse) ``OUT/shuffle/plan.json``; returns it."""
    source, out = Path(source), Path(out)
    manifest = load_manifest(source)
    if cfg.shard_size_mb <= 0 or cfg.bucket_mb <= 0 or cfg.scatter_tasks < 0:
        raise ConfigError("shard_size_mb and bucket_mb must be positive and scatter_tasks >= 0; got "
                          f"{cfg.shard_size_mb}, {cfg.bucket_mb}, {cfg.scatter_tasks}.")
    if source.resolve() == out.resolve():
        raise ConfigError("The shuffled shards need a folder of their own (--out differs from the source).")
    splits = cfg.splits or sorted(manifest["splits"])
    unknown = sorted(set(splits) - set(manifest["splits"]))
    if unknown:
        raise ConfigError(f"Split(s) {unknown} are not in {source} (it has {sorted(manifest['splits'])}).")
    inputs = [s for s in manifest["shards"] if s["split"] in splits]
    if not inputs:
        raise ConfigError(f"{source} holds no shards of split(s) {splits}.")
    tasks = cfg.scatter_tasks or min(len(inputs), 64)
    tasks = min(tasks, len(inputs))
    # Longest first onto the lightest task: tasks of about equal bytes.
    loads, assignment = [0] * tasks, [[] for _ in range(tasks)]
    for shard in sorted(inputs, key=lambda s: (-s["bytes"], s["name"])):
        t = loads.index(min(loads))
        loads[t] += shard["bytes"]
        assignment[t].append(shard["name"])
    buckets = []
    for split in splits:
        size = manifest["splits"][split]["bytes"]
        for b in range(max(1, math.ceil(size / (cfg.bucket_mb * 1e6)))):
            buckets.append({"split": split, "bucket": b})
    plan = {"ctssl_version": __version__, "source_manifest_sha256": _manifest_sha256(source),
            "config": asdict(cfg) | {"splits": splits}, "scatter": [sorted(names) for names in assignment],
            "buckets_per_split": {s: sum(b["split"] == s for b in buckets) for s in splits},
            "gather": buckets}
    path = out / WORK / PLAN_NAME
    if path.exists():
        old = json.loads(path.read_text())
        if old != plan:
            raise ConfigError(f"{path} holds a shuffle plan for another source or other settings; "
                              "use a new --out folder.")
        return old
    atomic_write_text(path, json.dumps(plan, indent=1) + "\n")
    logger.info("shuffle plan: %d scatter task(s), %d bucket(s) %s", tasks, len(buckets), plan["buckets_per_split"])
    return plan


def load_plan(source: str | Path, out: str | Path) -> dict:
    path = Path(out) / WORK / PLAN_NAME
    if not path.exists():
        raise FileNotFoundError(f"No shuffle plan at '{path}'. Run the plan phase first "
                                "(`ctssl shards shuffle SRC --out DST --phase plan`).")
    plan = json.loads(path.read_text())
    if plan["source_manifest_sha256"] != _manifest_sha256(Path(source)):
        raise ConfigError(f"The shuffle plan in {out} was made for other source shards than {source}.")
    return plan


def _done(out: Path, phase: str, task: int) -> Path:
    return out / WORK / "done" / f"{phase}-{task:05d}.json"


def _part(out: Path, split: str, bucket: int, task: int) -> Path:
    return out / WORK / "parts" / f"{split}-b{bucket:05d}-t{task:05d}.bin"


def _task_lock(out: Path, phase: str, task: int):
    """Tasks of a phase run side by side (a shared lock on OUT), each task once at a time (its own lock)."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(OutputLock(out, f"a shuffle {phase} task", shared=True))
    stack.enter_context(OutputLock(out / WORK, f"shuffle {phase} task {task}", name=f".{phase}-{task:05d}.lock"))
    return stack


def _open_task(source: Path, out: Path, phase: str, task: int) -> tuple[dict, Path]:
    """The plan and the done-marker of task ``task`` of ``phase``; a task outside the plan is a ConfigError."""
    plan = load_plan(source, out)
    if not 0 <= task < len(plan[phase]):
        raise ConfigError(f"{phase} task {task} is outside the plan's 0..{len(plan[phase]) - 1}")
    return plan, _done(out, phase, task)


def scatter(source: str | Path, out: str | Path, task: int, lock: bool = True) -> dict:
    """Scatter task ``task`` (module docstring); a finished task is a no-op."""
    source, out = Path(source), Path(out)
    if lock:
        with _task_lock(out, "scatter", task):
            return scatter(source, out, task, lock=False)
    plan, done = _open_task(source, out, "scatter", task)
    if done.exists():
        return json.loads(done.read_text())
    (out / WORK / "parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / WORK / "parts").glob(f"*-t{task:05d}.bin"):   # a killed run of this task
        stale.unlink()
    seed, per_split = plan["config"]["seed"], plan["buckets_per_split"]
    listed = {s["name"]: s for s in load_manifest(source)["shards"]}
    index = {(g["split"], g["bucket"]): i for i, g in enumerate(plan["gather"])}
    appender = PickleAppender([_part(out, g["split"], g["bucket"], task) for g in plan["gather"]],
                              batch=1 << 30,
                              max_bytes=max(256 << 10, min(8 << 20, SPILL_BUDGET // len(plan["gather"]))), sizeof=lambda rec: sum(map(len, rec[1].values())))
    skipped: Counter = Counter()
    samples = 0
    for name in plan["scatter"][task]:
        split = listed[name]["split"]

        def report(key, reason, name=name):
            skipped[reason.split(" (")[0] if key else "damaged shard: samples after the damage lost"] += 1
            logger.warning("shuffle: %s %s: %s", name, key or "", reason)

        for sample in iter_shard(source / name, decode=False, on_error=report, expected=listed[name]["samples"]):
            key = sample.pop("key")
            appender.add(index[(split, bucket_of(seed, key, per_split[split]))], (key, sample))
            samples += 1
    appender.close()
    record = {"task": task, "samples": samples, "skipped": dict(skipped)}
    atomic_write_text(done, json.dumps(record) + "\n")
    return record


def _missing(out: Path, phase: str, count: int) -> list[int]:
    return [t for t in range(count) if not _done(out, phase, t).exists()]


def gather(source: str | Path, out: str | Path, task: int, lock: bool = True) -> dict:
    """Gather task ``task`` (one bucket of one split; module docstring); a finished task is a no-op."""
    source, out = Path(source), Path(out)
    if lock:
        with _task_lock(out, "gather", task):
            return gather(source, out, task, lock=False)
    plan, done = _open_task(source, out, "gather", task)
    if done.exists():
        return json.loads(done.read_text())
    missing = _missing(out, "scatter", len(plan["scatter"]))
    if missing:
        raise IncompleteShuffle(f"gather needs every scatter task; not finished: {missing}.")
    split, bucket = plan["gather"][task]["split"], plan["gather"][task]["bucket"]
    for stale in out.glob(f"{split}-s{bucket:05d}-*.tar{TMP_MARK}*"):
        stale.unlink()
    records = [rec for t in range(len(plan["scatter"])) for rec in read_batches(_part(out, split, bucket, t))]
    records.sort(key=lambda rec: rec[0])
    masks = _mask_tally(records)
    random.Random(f"{plan['config']['seed']}/{split}/{bucket}").shuffle(records)
    target = plan["config"]["shard_size_mb"] * 1e6
    shards, writer = [], None
    for key, members in records:
        if writer is None:
            writer = ShardWriter(out, f"{split}-s{bucket:05d}-{len(shards):05d}.tar", split)
        writer.add(key, members)
        if writer.size >= target:
            shards.append(asdict(writer.close()))
            writer = None
    if writer is not None:
        shards.append(asdict(writer.close()))
    record = {"task": task, "split": split, "bucket": bucket, "samples": len(records), "shards": shards}
    if masks["slices"]:
        record["masks"] = masks
    atomic_write_text(done, json.dumps(record) + "\n")
    return record


def _mask_tally(records: list) -> dict:
    """Series, slices and pixels per class of the samples with a mask (their metadata's ``mask_pixels``)."""
    series, slices, pixels = set(), 0, Counter()
    for _key, members in records:
        if "seg" in members and "json" in members:
            meta = json.loads(members["json"])
            series.add(meta.get("series"))
            slices += 1
            pixels.update({int(c): n for c, n in meta.get("mask_pixels", {}).items()})
    return {"series": sorted(series), "slices": slices, "pixels": {str(c): n for c, n in sorted(pixels.items())}}


def _segmentation(source: dict, gathered: list[dict]) -> dict:
    """The shuffled folder's ``segmentation``: the source's class names, counts over the samples written."""
    splits: dict[str, dict] = {}
    for g in gathered:
        if "masks" not in g:
            continue
        entry = splits.setdefault(g["split"], {"series": set(), "slices": 0, "pixels": Counter()})
        entry["series"].update(g["masks"]["series"])
        entry["slices"] += g["masks"]["slices"]
        entry["pixels"].update({int(c): n for c, n in g["masks"]["pixels"].items()})
    return {"labels": source["labels"],
            "splits": {split: {"cases": len(e["series"]), "slices": e["slices"],
                               "pixels": {str(c): n for c, n in sorted(e["pixels"].items())}}
                       for split, e in sorted(splits.items())}}


def merge(source: str | Path, out: str | Path, lock: bool = True) -> dict:
    """The shuffled folder's manifest and report; spill files deleted. Returns the manifest."""
    source, out = Path(source), Path(out)
    if lock:
        with OutputLock(out, "a shuffle merge"):
            return merge(source, out, lock=False)
    plan = load_plan(source, out)
    missing = _missing(out, "gather", len(plan["gather"]))
    if missing:
        raise IncompleteShuffle(f"merge needs every gather task; not finished: {missing}.")
    scattered = [json.loads(_done(out, "scatter", t).read_text()) for t in range(len(plan["scatter"]))]
    gathered = [json.loads(_done(out, "gather", t).read_text()) for t in range(len(plan["gather"]))]
    src = load_manifest(source)
    shards = sorted((s for g in gathered for s in g["shards"]), key=lambda s: s["name"])
    for s in shards:
        s["series"] = []      # every shard mixes the split's series; the source manifest lists them
    keep = {k: v for k, v in src.items() if k in ("kind", "classes", "image_size", "hu_range")}
    if "segmentation" in src:
        keep["segmentation"] = _segmentation(src["segmentation"], gathered)
    manifest = build_manifest(shards, {"shuffle": plan["config"], "source": src.get("config")}, __version__,
                              {**keep, "order": "shuffled",
                               "source_manifest_sha256": plan["source_manifest_sha256"]})
    for split, entry in manifest["splits"].items():
        entry["series"] = src["splits"].get(split, {}).get("series", 0)
    skipped: Counter = Counter()
    for s in scattered:
        skipped.update(s["skipped"])
    report = {"ctssl_version": __version__, "source_samples": {s: src["splits"][s]["samples"]
                                                               for s in plan["config"]["splits"]},
              "written": {s: e["samples"] for s, e in manifest["splits"].items()}, "skipped": dict(skipped)}
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    patients = load_patients(source)     # the same patients, in the splits shuffled
    if patients is not None:
        write_patients(out, patients["salt_check"], {s: patients["splits"].get(s, set())
                                                     for s in plan["config"]["splits"]})
    write_manifest(out, manifest)
    shutil.rmtree(out / WORK / "parts", ignore_errors=True)
    return manifest


def run_shuffle(source: str | Path, out: str | Path, cfg: ShuffleConfig, workers: int = 1) -> dict:
    """Every phase on this machine (``workers`` processes); a complete output is left as it is."""
    source, out = Path(source), Path(out)
    with OutputLock(out, "a shuffle"):
        return _run_shuffle(source, out, cfg, workers)


def _run_shuffle(source: Path, out: Path, cfg: ShuffleConfig, workers: int) -> dict:
    if (out / MANIFEST_NAME).exists() and (out / WORK / PLAN_NAME).exists():
        load_plan(source, out)      # same source?
        plan_shuffle(source, out, cfg)   # same settings?
        return load_manifest(out)
    plan = plan_shuffle(source, out, cfg)
    for phase, count in ((scatter, len(plan["scatter"])), (gather, len(plan["gather"]))):
        jobs = [(phase, str(source), str(out), t, False) for t in range(count)]
        if workers > 1 and count > 1:
            with fork_pool(min(workers, count)) as pool:
                pool.map(_call, jobs, chunksize=1)
        else:
            for job in jobs:
                _call(job)
    return merge(source, out, lock=False)


def _call(job):
    phase, *args = job
    return phase(*args)
