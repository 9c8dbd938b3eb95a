"""The training loader: shards (CT ``.hu`` slices or encoded natural images) -> batches, exactly one per
training step, reproducible from the run seed and resumable at any step.

Sampling (docs/pretraining.md, "Batches"):

- each process (rank) reads its own stream; each of its ``W`` loader workers builds whole batches;
- a worker draws shards with replacement (so no rank or worker ever runs dry and every rank yields
  exactly the number of batches the step count asks for; uneven shards cannot hang a collective,
  webdataset #188/#225), keeps ``data.interleave`` shards open and takes each sample from one of them at
  random, through a shuffle buffer of ``data.shuffle_buffer`` still-encoded samples;
- on series-ordered shards (the ingest output) this still puts runs of neighbouring slices of few
  series into each batch; ``ctssl shards shuffle`` writes shards in uniformly random order, after which
  batches are i.i.d. samples of the corpus (``ctssl bench batches`` measures both).

Randomness, per rank and per worker, reproducible (docs/pretraining.md, "Seeds"): training step ``s``
is built by *virtual worker* ``s mod W``; its stream restarts every ``SEGMENT_STEPS`` steps from a seed
derived from (run seed, rank, virtual worker, segment), and every sample's augmentation comes from its
own generator seeded by (stream seed, position in the stream). So two ranks never share crops, and a
run resumed at step ``s`` (its workers skip, without decoding, what the segment already consumed)
sees the same batches as a run that was never interrupted, given the same number of processes and
workers.

Bad data (docs/ingest.md): a sample whose checksum or decoding fails is skipped and replaced by the
next; a shard that ends early or whose tar is damaged is counted; each batch carries the counts
since the worker's previous batch (``skipped``, ``missing``), which the training loop logs per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
from collections import Counter
from typing import Iterator

import numpy as np
import torch

from ctssl.shards.manifest import load_manifest
from ctssl.shards.reader import ShardError, decode_image, iter_shard

logger = logging.getLogger(__name__)

SEGMENT_STEPS = 500


def data_kind(shards: str, kind: str = "auto") -> str:
    if kind != "auto":
        if kind not in ("ct", "natural"):
            raise ValueError(f"Unknown data kind '{kind}'. Valid kinds are ['auto', 'ct', 'natural'].")
        return kind
    return load_manifest(shards).get("kind", "ct")


def split_shards(shards: str, split: str) -> list[tuple[str, int]]:
    """(path, sample count) of the split's shards, from the manifest."""
    manifest = load_manifest(shards)
    folder = os.path.dirname(os.path.abspath(os.path.join(shards, "manifest.json")))
    listed = [(os.path.join(folder, s["name"]), s["samples"]) for s in manifest["shards"] if s["split"] == split]
    if not listed:
        raise ValueError(f"No '{split}' shards in {shards} (splits: {sorted(manifest['splits'])}).")
    return listed


def preflight(shards: str, split: str, kind: str, tries: int = 64) -> None:
    """Refuse, before anything starts, a split that is empty or whose first samples all fail to read
    or decode (a wrong folder, a wrong kind, an unreadable disk), instead of a loader that spins."""
    listed = split_shards(shards, split)
    if sum(n for _, n in listed) == 0:
        raise ValueError(f"Split '{split}' of {shards} holds no samples.")
    problems: list[str] = []
    attempts = 0
    for path, _ in listed[:8]:
        for raw in iter_shard(path, decode=False, on_error=lambda key, reason: problems.append(reason)):
            attempts += 1
            try:
                image, _ = decode_image(raw)
            except ShardError as err:
                problems.append(err.reason)
            else:
                if (kind == "ct") == isinstance(image, np.ndarray):
                    return
                problems.append(f"a {'natural image' if kind == 'ct' else 'CT slice'} in a {kind} run")
            if attempts >= tries:
                break
        if attempts >= tries:
            break
    raise ValueError(f"No decodable {kind} sample among the first {attempts} of split '{split}' in {shards}"
                     f"{' (' + problems[0] + ')' if problems else ''}; `ctssl shards verify {shards}` tells more.")


def steps_per_epoch(cfg, global_batch: int) -> int:
    manifest = load_manifest(cfg.data.shards)
    split = manifest["splits"].get(cfg.data.split)
    if split is None:
        raise ValueError(f"Split '{cfg.data.split}' is not in {cfg.data.shards} (has {sorted(manifest['splits'])}).")
    samples = cfg.data.epoch_samples or split["samples"]
    return max(1, samples // global_batch)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (ints, strings): the same on every machine and Python."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def owned_steps(start: int, stop: int, workers: int, virtual: int) -> list[int]:
    """The steps in [start, stop) that virtual worker ``virtual`` (of ``workers``) builds."""
    first = start + (virtual - start) % workers
    return list(range(first, stop, workers))


class SampleStream:
    """The raw samples one virtual worker reads in one segment (module docstring), in order.

    ``shards`` are this worker's own: it reads them in a random order, each once per pass (a new order
    every pass), ``interleave`` at a time, so a sample never meets itself in a batch."""

    def __init__(self, shards: list[tuple[str, int]], seed: int, interleave: int, buffer: int, counts: Counter):
        self.shards, self.rng = shards, random.Random(seed)
        self.interleave, self.buffer, self.counts = max(1, min(interleave, len(shards))), max(1, buffer), counts
        self._order: list[int] = []
        self._empty = 0

    def _next_shard(self) -> tuple[str, int]:
        if not self._order:
            self._order = list(range(len(self.shards)))
            self.rng.shuffle(self._order)
        return self.shards[self._order.pop()]

    def _shard(self) -> Iterator[dict]:
        path, expected = self._next_shard()

        def report(key, reason):
            if key:
                self.counts["skipped"] += 1
            else:
                self.counts["missing"] += _missing(reason)
            logger.warning("loader: %s%s: %s", os.path.basename(path), f" {key}" if key else "", reason)

        yielded = False
        for sample in iter_shard(path, decode=False, on_error=report, expected=expected):
            yielded = True
            yield sample
        self._empty = 0 if yielded else self._empty + 1
        if self._empty > max(100, 10 * len(self.shards)):
            raise RuntimeError(f"{self._empty} shards in a row held no readable sample: the training split is "
                               "unreadable (ctssl shards verify tells what is wrong).")

    def __iter__(self) -> Iterator[dict]:
        streams = [self._shard() for _ in range(self.interleave)]
        buf: list[dict] = []
        while True:
            i = self.rng.randrange(len(streams))
            sample = next(streams[i], None)
            if sample is None:          # that shard is done: open the next one in its place
                streams[i] = self._shard()
                continue
            if len(buf) < self.buffer:
                buf.append(sample)
                continue
            j = self.rng.randrange(self.buffer)
            out, buf[j] = buf[j], sample
            yield out


def worker_shards(shards: list[tuple[str, int]], seed: int, segment: int, rank: int, world: int, virtual: int,
                  workers: int, interleave: int) -> list[tuple[str, int]]:
    """The shards a (rank, virtual worker) reads in a segment: a disjoint share of a permutation common
    to all processes, so no two workers read one shard at once (no sample twice in a global batch);
    every shard when there are too few to give each worker ``interleave`` of its own."""
    readers = world * workers
    if len(shards) < readers * max(1, interleave):
        return list(shards)
    order = list(range(len(shards)))
    random.Random(derive_seed(seed, "partition", segment)).shuffle(order)
    return [shards[i] for i in order[rank * workers + virtual::readers]]


def _missing(reason: str) -> int:
    """The number of samples a shard-level problem cost (``ended after a of b samples (n missing)``)."""
    if "missing)" in reason:
        try:
            return int(reason.rsplit("(", 1)[1].split()[0])
        except (IndexError, ValueError):
            return 1
    return 0


class TrainBatches(torch.utils.data.IterableDataset):
    """The batches of one process for steps [start, stop): whole batches built in the workers."""

    def __init__(self, shards: list[tuple[str, int]], maker, kind: str, batch: int, seed: int, rank: int,
                 world: int, start: int, stop: int, workers: int, interleave: int, buffer: int,
                 segment: int = SEGMENT_STEPS, render: bool = False):
        super().__init__()
        self.render = render and kind == "ct"   # CPU-only runs: the workers render the views too
        self.shards, self.maker, self.kind, self.batch = shards, maker, kind, batch
        self.seed, self.rank, self.world, self.start, self.stop = seed, rank, world, start, stop
        self.workers, self.interleave, self.buffer, self.segment = max(1, workers), interleave, buffer, segment

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        virtual = (worker + self.start) % self.workers
        counts: Counter = Counter()
        current_segment, stream, position, stream_seed = None, None, 0, 0
        for step in owned_steps(self.start, self.stop, self.workers, virtual):
            segment = step // self.segment
            if segment != current_segment:
                current_segment = segment
                stream_seed = derive_seed(self.seed, "stream", self.rank, virtual, segment)
                mine = worker_shards(self.shards, self.seed, segment, self.rank, self.world, virtual, self.workers,
                                     self.interleave)
                stream = iter(SampleStream(mine, stream_seed, self.interleave, self.buffer, counts))
                position = 0
                # Resuming inside a segment: what the segment's earlier steps of this worker read.
                skip = len(owned_steps(segment * self.segment, step, self.workers, virtual)) * self.batch
                for _ in range(skip):
                    next(stream)
                position = skip
            items, failed = [], 0
            while len(items) < self.batch:
                raw = next(stream)
                sample_seed = derive_seed(stream_seed, position)
                position += 1
                try:
                    items.append(self._prepare(raw, sample_seed))
                except (ShardError, OSError, ValueError) as err:
                    counts["skipped"] += 1
                    failed += 1
                    logger.warning("loader: sample %s skipped: %s", raw.get("key"), err)
                    if failed > 10 * self.batch + 100:
                        raise RuntimeError(f"{failed} samples in a row could not be decoded; is this a "
                                           f"{self.kind} shard set?") from err
            batch = self._collate(items)
            if self.render:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, "noise", self.rank, step))
                batch = {"views": self.maker.render(batch, generator)}
            batch["step"] = torch.tensor(step)
            batch["skipped"] = torch.tensor(counts.pop("skipped", 0))
            batch["missing"] = torch.tensor(counts.pop("missing", 0))
            yield batch

    def _prepare(self, raw: dict, sample_seed: int):
        if self.kind == "meta":   # what a batch is made of, without decoding (ctssl bench batches)
            return json.loads(raw["json"])
        image, _ = decode_image(raw)
        if self.kind == "ct":
            return image, self.maker.draw(random.Random(sample_seed), *image.shape)
        # lightly's transforms draw from the global generators: seed them for this sample.
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        torch.manual_seed(sample_seed)
        return self.maker(image)

    def _collate(self, items) -> dict:
        if self.kind == "meta":
            return {"meta": items}
        if self.kind == "ct":
            return self.maker.collate([i[0] for i in items], [i[1] for i in items])
        return {"views": [torch.stack(v) for v in zip(*items)]}


def _worker_init(worker_id: int) -> None:
    """SLURM sends SIGTERM to every process of a job; loader workers leave it to the training process,
    which checkpoints and exits (the workers end with it). One thread per worker: the workers are the
    parallelism."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    torch.set_num_threads(1)


def default_workers(processes_per_node: int) -> int:
    """CPUs per process less one (the process itself), at least 1, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus // max(1, processes_per_node) - 1))


def make_loader(cfg, maker, kind: str, rank: int, world: int, start: int, stop: int, batch: int, workers: int,
                pin_memory: bool = False, render_in_workers: bool = False):
    """A DataLoader yielding the batches of steps [start, stop) of process ``rank``. ``kind`` "ct" or
    "natural"; "meta" yields each batch's sample metadata only (what the batch is made of)."""
    dataset = TrainBatches(split_shards(cfg.data.shards, cfg.data.split), maker, kind, batch, cfg.seed, rank, world,
                           start, stop, workers, cfg.data.interleave, cfg.data.shuffle_buffer,
                           render=render_in_workers and workers > 0)
    extra = {"prefetch_factor": 4, "worker_init_fn": _worker_init} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       **extra)
