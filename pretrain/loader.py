"""The training loader: shards (CT ``.hu`` slices or encoded natural images) -> batches, exactly one per
training step, every training sample once per epoch, reproducible from the run seed and resumable at
any step.

An epoch is a pass (docs/pretraining.md, "Epochs and batches"):

- an epoch is ``steps_per_epoch = samples // global batch`` steps; step ``s`` of a process is built by
  its loader worker ``s mod W`` (a *virtual worker*, so that the mapping survives a restart with the same
  ``W``), so each of the ``R x W`` readers (rank, virtual worker) knows from the manifest alone how many
  samples it needs in the epoch (its *quota*: its steps x the per-process batch);
- the split's shards are put in a random order drawn for the epoch (the same on every process), their
  samples concatenated, and the sequence cut into consecutive slices of the readers' quotas: every
  sample goes to exactly one reader (a shard may be split between two neighbouring readers, each
  reading its own range), and the ``samples mod global batch`` left at the end wait for a later epoch
  (a different order every epoch);
- a reader takes its slice ``data.interleave`` pieces at a time (a *chunk*), drawing each sample from
  one of them at random through a buffer of ``data.shuffle_buffer`` still-encoded samples, emptied at
  the chunk's end, so that where a reader stands is known from a count alone;
- a sample that fails its checksum or decoding, or that a shard ending early never delivered, still
  takes its place in the count (a *slot*); its batch takes the next slot instead, and a reader whose
  quota runs out that way continues with a second pass over its own slice. Every rank yields exactly
  the steps' batches whatever the shards hold, so no collective can hang (webdataset #188/#225).

On series-ordered shards (the ingest output) this still puts runs of neighbouring slices of few series
into each batch; ``ctssl shards shuffle`` writes shards in uniformly random order, after which batches
are i.i.d. samples of the corpus (``ctssl bench batches`` measures both).

Randomness, per rank and per worker, reproducible (docs/pretraining.md, "Seeds"): a reader's stream in
epoch ``e`` is seeded by (run seed, epoch, rank, virtual worker), and every sample's augmentation by
(stream seed, slot). Each batch carries the reader's position (slots consumed in the epoch); the
checkpoint keeps them, and a resumed run skips whole chunks without reading and replays at most one
chunk without decoding: it sees the same batches as a run that was never interrupted, given the same
number of processes and workers, and its start does not grow with the corpus. Resumed on another number of
processes or workers (the same global batch), the rest of the epoch is dealt again over the new readers
(``dealt_pieces``): the epoch is still one pass over the same samples. The shards may be local or remote
(``shards/location.py``).

Bad data (docs/ingest.md): each batch carries the counts since the worker's previous batch
(``skipped``: damaged samples; ``missing``: samples a shard that ended early never delivered), which
the training loop logs per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ctssl.shards.location import Remote, location
from ctssl.shards.manifest import load_manifest
from ctssl.shards.reader import ShardError, decode_image, iter_shard

logger = logging.getLogger(__name__)

BAD_SLOT = None          # a slot whose sample could not be read


def data_kind(shards: str, kind: str = "auto") -> str:
    if kind != "auto":
        if kind not in ("ct", "natural"):
            raise ValueError(f"Unknown data kind '{kind}'. Valid kinds are ['auto', 'ct', 'natural'].")
        return kind
    return load_manifest(shards).get("kind", "ct")


def split_shards(shards: str, split: str) -> list[tuple[str, int]]:
    """(path, sample count) of the split's shards, from the manifest."""
    manifest = load_manifest(shards)
    where = location(shards)
    folder = where.parent if where.suffix == ".json" else where
    if not isinstance(folder, Remote):
        folder = folder.absolute()
    # Local shards by their path (a string); remote ones as locations (shards/location.py).
    listed = [(folder / s["name"] if isinstance(folder, Remote) else str(folder / s["name"]), s["samples"])
              for s in manifest["shards"] if s["split"] == split]
    if not listed:
        raise ValueError(f"No '{split}' shards in {shards} (splits: {sorted(manifest['splits'])}).")
    return listed


def preflight(shards: str, split: str, kind: str, tries: int = 64) -> None:
    """Refuse, before anything starts, a split that is empty or whose first samples all fail to read
    or decode (a wrong folder, a wrong kind, an unreadable disk), instead of a loader that spins.
    Reads at most ``tries`` samples of at most 8 shards, whatever the corpus size."""
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


def epoch_samples(cfg) -> int:
    """The samples an epoch is made of: ``data.epoch_samples``, or the split's count in the manifest."""
    manifest = load_manifest(cfg.data.shards)
    split = manifest["splits"].get(cfg.data.split)
    if split is None:
        raise ValueError(f"Split '{cfg.data.split}' is not in {cfg.data.shards} (has {sorted(manifest['splits'])}).")
    return cfg.data.epoch_samples or split["samples"]


def steps_per_epoch(cfg, global_batch: int) -> int:
    return max(1, epoch_samples(cfg) // global_batch)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (ints, strings): the same on every machine and Python."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def owned_steps(start: int, stop: int, workers: int, virtual: int) -> list[int]:
    """The steps in [start, stop) that virtual worker ``virtual`` (of ``workers``) builds."""
    first = start + (virtual - start) % workers
    return list(range(first, stop, workers))


# ---------------------------------------------------------------------------------------- who reads what
@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of one shard (which holds ``count`` samples by its manifest), but for the
    indices in ``skip`` (read elsewhere: what a resume on another world size leaves out, see ``redeal``)."""

    path: object        # a local path (str) or a remote location (shards/location.py)
    start: int
    stop: int
    count: int
    skip: frozenset = frozenset()

    def __len__(self) -> int:
        return self.stop - self.start - len(self.skip)

    def wants(self, index: int) -> bool:
        return self.start <= index < self.stop and index not in self.skip

    def indices(self) -> list[int]:
        return [i for i in range(self.start, self.stop) if i not in self.skip]


def quotas(per_epoch: int, epoch: int, world: int, workers: int, batch: int, first: int | None = None) -> list[int]:
    """Samples each reader (index ``rank * workers + virtual``) needs in ``epoch``, from step ``first`` (the
    epoch's first step unless given) to the epoch's end."""
    end = (epoch + 1) * per_epoch
    first = epoch * per_epoch if first is None else first
    per_worker = [len(owned_steps(first, end, workers, v)) * batch for v in range(workers)]
    return per_worker * world


def epoch_pieces(shards: list[tuple[str, int]], seed: int, epoch: int, needs: list[int]) -> list[list[Piece]]:
    """Each reader's slice of the epoch: the split's shards in the epoch's random order (as many orders
    one after another as the quotas ask for, when an epoch is set longer than the split), their samples
    concatenated and cut into consecutive runs of ``needs[i]`` samples (module docstring)."""
    out: list[list[Piece]] = [[] for _ in needs]
    if not any(needs) or not any(n for _, n in shards):
        return out
    reader, wanted, repeat = 0, needs[0], 0
    while True:
        order = list(range(len(shards)))
        random.Random(derive_seed(seed, "epoch-order", epoch, repeat)).shuffle(order)
        for index in order:
            path, count = shards[index]
            start = 0
            while start < count:
                while wanted == 0:
                    reader += 1
                    if reader == len(needs):
                        return out
                    wanted = needs[reader]
                take = min(wanted, count - start)
                out[reader].append(Piece(path, start, start + take, count))
                start += take
                wanted -= take
        repeat += 1


# --------------------------------------------------------------------------------------------- streams
def piece_slots(piece: Piece, counts: Counter) -> Iterator[dict | None]:
    """Exactly ``len(piece)`` slots of a shard's samples [start, stop): raw samples, or ``BAD_SLOT`` for
    one that is damaged or that the shard never delivered (counted in ``counts``)."""
    position, lost = 0, [0]

    def report(key, reason):
        if key:
            lost[0] += 1
        if key is None or piece.wants(position + lost[0] - 1):   # this piece's samples only
            logger.warning("loader: %s%s: %s", location(piece.path).name, f" {key}" if key else "", reason)

    def slots_for_lost():
        nonlocal position
        while lost[0]:
            lost[0] -= 1
            if piece.wants(position):
                counts["skipped"] += 1
                yield BAD_SLOT
            position += 1

    for sample in iter_shard(piece.path, decode=False, on_error=report):
        yield from slots_for_lost()
        if position >= piece.stop:
            return
        if piece.wants(position):
            yield sample
        else:
            counts["passed"] += 1       # read (not decoded) only to get past it: a tar is read in order
        position += 1
        if position >= piece.stop:
            return
    yield from slots_for_lost()
    shortfall = len([i for i in range(max(position, piece.start), piece.stop) if i not in piece.skip])
    if shortfall > 0:                   # the shard ended before the manifest's count
        counts["missing"] += shortfall
        logger.warning("loader: %s ended %d sample(s) short of its manifest count", location(piece.path).name,
                       shortfall)
        for _ in range(shortfall):
            yield BAD_SLOT


def chunk_slots(pieces: list[Piece], seed: int, buffer: int, counts: Counter) -> Iterator[dict | None]:
    """The slots of one chunk (a few pieces read at once), mixed: each slot drawn from one of the pieces
    at random, through a shuffle buffer that is emptied at the end (so the chunk yields exactly the sum of
    its pieces' lengths)."""
    return _mix([piece_slots(p, counts) for p in pieces if len(p)], seed, buffer)


def chunk_order(pieces: list[Piece], seed: int, buffer: int) -> list[tuple[int, int]]:
    """The order in which ``chunk_slots`` yields a chunk's slots, as (piece number, sample index in its shard),
    computed without reading anything: the mixing depends only on the pieces' lengths."""
    kept = [(n, p) for n, p in enumerate(pieces) if len(p)]
    return list(_mix([iter([(n, i) for i in p.indices()]) for n, p in kept], seed, buffer))


def _mix(streams: list, seed: int, buffer: int) -> Iterator:
    rng = random.Random(seed)
    buf: list = []
    while streams:
        i = rng.randrange(len(streams))
        slot = next(streams[i], StopIteration)
        if slot is StopIteration:
            streams.pop(i)
            continue
        if len(buf) < buffer:
            buf.append(slot)
            continue
        j = rng.randrange(buffer)
        out, buf[j] = buf[j], slot
        yield out
    rng.shuffle(buf)
    yield from buf


class ReaderStream:
    """The slots one reader (rank, virtual worker) reads in one epoch, from ``position`` on: its slice,
    ``interleave`` pieces per chunk, then further passes over the same slice (new mixing seeds) for as
    long as damaged samples make it ask for more."""

    def __init__(self, pieces: list[Piece], seed: int, interleave: int, buffer: int, counts: Counter):
        self.chunks = [pieces[i:i + interleave] for i in range(0, len(pieces), max(1, interleave))]
        self.sizes = [sum(len(p) for p in chunk) for chunk in self.chunks]
        self.seed, self.buffer, self.counts = seed, max(1, buffer), counts

    def slots(self, position: int = 0) -> Iterator[dict | None]:
        period = sum(self.sizes)
        if period == 0:
            return
        passes, offset = divmod(position, period)
        while True:
            for c, (chunk, size) in enumerate(zip(self.chunks, self.sizes)):
                if offset >= size:             # consumed before the restart: skipped without reading
                    offset -= size
                    continue
                stream = chunk_slots(chunk, derive_seed(self.seed, passes, c), self.buffer, self.counts)
                for _ in range(offset):        # replayed without decoding
                    next(stream)
                self.counts["passed"] += offset
                offset = 0
                yield from stream
            passes += 1


# ------------------------------------------------------------------------------ another world size on resume
def remaining_pieces(pieces: list[Piece], seed: int, interleave: int, buffer: int, position: int) -> list[Piece]:
    """What one reader (its slice ``pieces``, stream seed ``seed``) has not yet read after ``position`` slots,
    in slice order: the chunks after its current one whole, and of the current one the samples its mixing
    (replayed on indices, nothing read) has not yet yielded. After a second pass has begun, nothing."""
    stream = ReaderStream(pieces, seed, interleave, buffer, Counter())
    if position >= sum(stream.sizes):
        return []
    left: list[Piece] = []
    offset = position
    for c, (chunk, size) in enumerate(zip(stream.chunks, stream.sizes)):
        if offset >= size:
            offset -= size
            continue
        if offset:
            done: dict[int, set] = {}
            for n, index in chunk_order(chunk, derive_seed(seed, 0, c), stream.buffer)[:offset]:
                done.setdefault(n, set()).add(index)
            for n, piece in enumerate(chunk):
                rest = [i for i in piece.indices() if i not in done.get(n, ())]
                if rest:
                    left.append(Piece(piece.path, rest[0], rest[-1] + 1, piece.count,
                                      frozenset(range(rest[0], rest[-1] + 1)) - frozenset(rest)))
            offset = 0
        else:
            left.extend(p for p in chunk if len(p))
    return left


def cut(pieces: list[Piece], needs: list[int]) -> list[list[Piece]]:
    """``pieces`` (in order) cut into consecutive runs of ``needs[i]`` samples; a piece may be split."""
    out: list[list[Piece]] = [[] for _ in needs]
    reader, wanted = 0, needs[0] if needs else 0
    for piece in pieces:
        indices = piece.indices()
        while indices:
            while wanted == 0:
                reader += 1
                if reader == len(needs):
                    return out
                wanted = needs[reader]
            take, indices = indices[:wanted], indices[wanted:]
            out[reader].append(Piece(piece.path, take[0], take[-1] + 1, piece.count,
                                     frozenset(i for i in piece.skip if take[0] <= i <= take[-1])))
            wanted -= len(take)
    return out


@dataclass(frozen=True)
class Layout:
    """Who read an epoch from step ``step`` on: ``world`` processes x ``workers`` loader workers, ``batch``
    samples per process and step; ``positions`` (per rank, virtual worker -> (epoch, slots)) where its
    readers stood when the next layout took over (empty for the current one)."""

    step: int
    world: int
    workers: int
    batch: int
    positions: tuple = ()

    def to_dict(self) -> dict:
        return {"step": self.step, "world": self.world, "workers": self.workers, "batch": self.batch,
                "positions": [{str(v): list(p) for v, p in rank.items()} for rank in self.positions]}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(int(d["step"]), int(d["world"]), int(d["workers"]), int(d["batch"]),
                   tuple({int(v): tuple(p) for v, p in rank.items()} for rank in d.get("positions", [])))


def stream_seed(seed: int, epoch: int, rank: int, virtual: int, layout_step: int | None = None) -> int:
    """A reader's stream seed; a layout that took over inside the epoch (``layout_step``) draws its own."""
    if layout_step is None:
        return derive_seed(seed, "stream", epoch, rank, virtual)
    return derive_seed(seed, "stream", epoch, rank, virtual, "dealt", layout_step)


def slot_position(layout: Layout, positions: dict, epoch: int, virtual: int, step: int) -> int:
    """A reader's slots consumed at ``step``: saved, else one per sample of its batches since the layout began."""
    saved = positions.get(virtual)
    if saved is not None and saved[0] == epoch:
        return int(saved[1])
    return len(owned_steps(layout.step, step, layout.workers, virtual)) * layout.batch


def dealt_pieces(shards: list[tuple[str, int]], seed: int, epoch: int, per_epoch: int, interleave: int,
                 buffer: int, layouts: list[Layout]) -> list[list[Piece]]:
    """Each reader's slice of ``epoch`` under the last of ``layouts`` (the epoch's readers one after another,
    each but the last with the positions it stopped at): the first layout's deal (``epoch_pieces``), then at
    every change what its readers had not read, in their order, cut into the next layout's quotas for the
    rest of the epoch. Every sample of the epoch is read once whatever the processes and workers."""
    first = layouts[0]
    pieces = epoch_pieces(shards, seed, epoch, quotas(per_epoch, epoch, first.world, first.workers, first.batch,
                                                      first.step))
    for k, (old, new) in enumerate(zip(layouts, layouts[1:])):
        left: list[Piece] = []
        for rank in range(old.world):
            saved = old.positions[rank] if rank < len(old.positions) else {}
            for virtual in range(old.workers):
                reader = rank * old.workers + virtual
                position = slot_position(old, saved, epoch, virtual, new.step)
                left += remaining_pieces(pieces[reader], stream_seed(seed, epoch, rank, virtual,
                                                                     old.step if k else None),
                                         interleave, buffer, position)
        pieces = cut(left, quotas(per_epoch, epoch, new.world, new.workers, new.batch, new.step))
    return pieces


# --------------------------------------------------------------------------------------------- batches
class TrainBatches(torch.utils.data.IterableDataset):
    """The batches of one process for steps [start, stop): whole batches built in the workers.

    ``positions``: virtual worker -> (epoch, slots consumed) at ``start``, from the checkpoint; without
    it, a worker resuming inside an epoch assumes one slot per sample of its earlier batches. ``deal``:
    (epoch, earlier layouts) when the run resumed inside that epoch on another world size or number of
    workers (``dealt_pieces``); this run's readers then read the rest of that epoch as dealt again."""

    def __init__(self, shards: list[tuple[str, int]], maker, kind: str, batch: int, seed: int, rank: int,
                 world: int, start: int, stop: int, workers: int, interleave: int, buffer: int, per_epoch: int,
                 render: bool = False, positions: dict | None = None, deal: tuple | None = None):
        super().__init__()
        self.render = render and kind == "ct"   # CPU-only runs: the workers render the views too
        self.shards, self.maker, self.kind, self.batch = shards, maker, kind, batch
        self.seed, self.rank, self.world, self.start, self.stop = seed, rank, world, start, stop
        self.workers, self.interleave, self.buffer = max(1, workers), interleave, buffer
        self.per_epoch, self.positions = per_epoch, dict(positions or {})
        self.deal = deal if deal and deal[1] else None

    def _stream(self, virtual: int, epoch: int, step: int, counts: Counter):
        reader = self.rank * self.workers + virtual
        if self.deal is not None and epoch == self.deal[0]:
            earlier = list(self.deal[1])
            layout = Layout(self.deal[2], self.world, self.workers, self.batch)
            pieces = dealt_pieces(self.shards, self.seed, epoch, self.per_epoch, self.interleave, self.buffer,
                                  earlier + [layout])[reader]
            seed = stream_seed(self.seed, epoch, self.rank, virtual, layout.step)
        else:
            layout = Layout(epoch * self.per_epoch, self.world, self.workers, self.batch)
            needs = quotas(self.per_epoch, epoch, self.world, self.workers, self.batch)
            pieces = epoch_pieces(self.shards, self.seed, epoch, needs)[reader]
            seed = stream_seed(self.seed, epoch, self.rank, virtual)
        position = slot_position(layout, self.positions, epoch, virtual, step)
        stream = ReaderStream(pieces, seed, self.interleave, self.buffer, counts)
        return stream.slots(position), seed, position

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        virtual = (worker + self.start) % self.workers
        counts: Counter = Counter()
        current_epoch, slots, position, stream_seed = None, None, 0, 0
        for step in owned_steps(self.start, self.stop, self.workers, virtual):
            epoch = step // self.per_epoch
            if epoch != current_epoch:
                current_epoch = epoch
                slots, stream_seed, position = self._stream(virtual, epoch, step, counts)
            items, keys, failed = [], [], 0
            while len(items) < self.batch:
                raw = next(slots, StopIteration)
                if raw is StopIteration:
                    raise RuntimeError(f"rank {self.rank} worker {virtual} has no samples in epoch {epoch}: "
                                       "the training split is empty.")
                sample_seed = derive_seed(stream_seed, position)
                position += 1
                if raw is BAD_SLOT:
                    failed += 1
                else:
                    try:
                        items.append(self._prepare(raw, sample_seed))
                        keys.append(raw["key"])
                        continue
                    except (ShardError, OSError, ValueError) as err:
                        counts["skipped"] += 1
                        failed += 1
                        logger.warning("loader: sample %s skipped: %s", raw.get("key"), err)
                if failed > 10 * self.batch + 100:
                    raise RuntimeError(f"{failed} samples in a row could not be read or decoded; is this a "
                                       f"{self.kind} shard set? (ctssl shards verify tells what is wrong)")
            batch = self._collate(items)
            if self.render:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, "noise", self.rank, step))
                batch = {"views": self.maker.render(batch, generator)}
            batch["keys"] = keys
            batch["step"] = torch.tensor(step)
            batch["position"] = torch.tensor([virtual, epoch, position])
            batch["skipped"] = torch.tensor(counts.pop("skipped", 0))
            batch["missing"] = torch.tensor(counts.pop("missing", 0))
            batch["passed"] = torch.tensor(counts.pop("passed", 0))
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


PREFETCH = 4     # batches each loader worker prepares ahead


def make_loader(cfg, maker, kind: str, rank: int, world: int, start: int, stop: int, batch: int, workers: int,
                pin_memory: bool = False, render_in_workers: bool = False, positions: dict | None = None,
                deal: tuple | None = None):
    """A DataLoader yielding the batches of steps [start, stop) of process ``rank``. ``kind`` "ct" or
    "natural"; "meta" yields each batch's sample metadata only (what the batch is made of). ``deal``:
    (epoch, earlier layouts, this layout's first step) after a resume on another world size."""
    per_epoch = steps_per_epoch(cfg, batch * world)
    dataset = TrainBatches(split_shards(cfg.data.shards, cfg.data.split), maker, kind, batch, cfg.seed, rank, world,
                           start, stop, workers, cfg.data.interleave, cfg.data.shuffle_buffer, per_epoch,
                           render=render_in_workers and workers > 0, positions=positions, deal=deal)
    extra = {"prefetch_factor": PREFETCH, "worker_init_fn": _worker_init} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       **extra)


def resume_deal(loader: list, saved_deal: dict | None, old: tuple[int, int, int], new: tuple[int, int, int],
                rank: int, start: int, per_epoch: int) -> tuple[dict, tuple | None]:
    """This process's reader positions and the epoch's deal for a run resumed at ``start``: ``loader`` the
    checkpoint's positions (per rank), ``saved_deal`` its deal record (``deal_record``), ``old`` and ``new``
    (processes, loader workers, per-process batch) of the checkpointed and of this run. The same readers
    continue where they stood; other readers (another world size or number of workers, the same global
    batch) read the rest of the epoch dealt again (``dealt_pieces``). Another global batch is refused: its
    steps would not cut the epoch at the same samples, on another world size (on the same one it is a settings
    change, refused or accepted as such)."""
    (world0, workers0, batch0), (world, workers, batch) = old, new
    workers0, workers = max(1, workers0), max(1, workers)
    epoch = start // per_epoch
    if world0 * batch0 != world * batch and world0 == world:
        # Another batch on the same processes: a settings change (refused unless --accept-changes, then the
        # readers continue from their positions, as before this re-deal existed).
        positions = {int(v): tuple(p) for v, p in loader[rank].items()} if len(loader) == world else {}
        return positions, None
    if world0 * batch0 != world * batch:
        from ctssl.core.config import ConfigError

        raise ConfigError(f"the checkpoint at step {start} is of {world0} process(es) x {batch0} samples (global batch "
                          f"{world0 * batch0}), this launch has {world} x {batch} = {world * batch}: resume with "
                          f"--set data.global_batch_size={world0 * batch0} (split over any number of processes), or "
                          f"on {world0} process(es), or start anew in another --out.")
    earlier = [Layout.from_dict(d) for d in saved_deal["layouts"]] if saved_deal and saved_deal["epoch"] == epoch \
        else []
    first = int(saved_deal["step"]) if earlier else epoch * per_epoch
    if (world0, workers0, batch0) == (world, workers, batch):
        positions = {int(v): tuple(p) for v, p in loader[rank].items()} if len(loader) == world else {}
        return positions, ((epoch, earlier, first) if earlier else None)
    if start % per_epoch == 0:
        return {}, None                     # a new epoch: dealt to the new readers from its start
    positions = tuple({int(v): tuple(p) for v, p in r.items()} for r in loader) if len(loader) == world0 else ()
    return {}, (epoch, earlier + [Layout(first, world0, workers0, batch0, positions)], start)


def deal_record(deal: tuple | None, step: int, per_epoch: int) -> dict | None:
    """The checkpoint's record of ``deal`` at ``step``: kept while its epoch lasts."""
    if deal is None or step // per_epoch != deal[0] or not deal[1]:
        return None
    return {"epoch": deal[0], "layouts": [layout.to_dict() for layout in deal[1]], "step": deal[2]}
