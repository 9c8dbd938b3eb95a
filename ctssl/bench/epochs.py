"""What one epoch reads, at the corpus's proportions, without reading anything: ctssl 0.2's loader (shards
re-dealt to the loader workers every 500 steps, each worker's stream restarted) against today's (an
epoch is a pass: pretrain.loader), simulated on sample positions from the shard counts alone.

  python -m ctssl.bench.epochs [--samples 12000000] [--shard-samples 19000] [--ranks 8] [--workers 7]

Prints the fraction of the samples an epoch reads at least once, and how many it reads two or more times.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

from ctssl.pretrain.loader import derive_seed, epoch_pieces, owned_steps, quotas

OLD_SEGMENT = 500


def old_epoch(counts: list[int], ranks: int, workers: int, batch: int, per_epoch: int, interleave: int = 4,
              seed: int = 0) -> Counter:
    """(shard, position) -> times read in epoch 0 by ctssl 0.2's loader (its dealing and streams, replayed
    on positions: every segment each reader takes a disjoint share of a new shard permutation and restarts
    its stream, reading ``interleave`` shards at a time from their beginning)."""
    reads: Counter = Counter()
    readers = ranks * workers
    for segment in range(0, per_epoch, OLD_SEGMENT):
        stop = min(per_epoch, segment + OLD_SEGMENT)
        order = list(range(len(counts)))
        random.Random(derive_seed(seed, "partition", segment // OLD_SEGMENT)).shuffle(order)
        for rank in range(ranks):
            for virtual in range(workers):
                mine = order[rank * workers + virtual::readers] if len(counts) >= readers * interleave else order
                rng = random.Random(derive_seed(seed, "stream", rank, virtual, segment // OLD_SEGMENT))
                need = len(owned_steps(segment, stop, workers, virtual)) * batch
                queue = mine[:]
                rng.shuffle(queue)
                open_ = [[queue.pop(), 0] for _ in range(min(interleave, len(queue)))]
                while need > 0 and open_:
                    stream = open_[rng.randrange(len(open_))]
                    if stream[1] >= counts[stream[0]]:
                        if not queue:
                            queue = mine[:]
                            rng.shuffle(queue)
                        stream[0], stream[1] = queue.pop(), 0
                        continue
                    reads[(stream[0], stream[1])] += 1
                    stream[1] += 1
                    need -= 1
    return reads


def new_epoch(counts: list[int], ranks: int, workers: int, batch: int, per_epoch: int, seed: int = 0) -> Counter:
    """The same for today's loader: every reader's slice of the epoch (pretrain.loader.epoch_pieces)."""
    reads: Counter = Counter()
    shards = [(str(i), n) for i, n in enumerate(counts)]
    for reader in epoch_pieces(shards, seed, 0, quotas(per_epoch, 0, ranks, workers, batch)):
        for piece in reader:
            for position in range(piece.start, piece.stop):
                reads[(int(piece.path), position)] += 1
    return reads


def coverage(samples: int, shard_samples: int, ranks: int, workers: int, global_batch: int) -> dict:
    counts = [shard_samples] * (samples // shard_samples) + ([samples % shard_samples] if samples % shard_samples else [])
    batch = global_batch // ranks
    per_epoch = samples // global_batch
    out = {"samples": samples, "shards": len(counts), "readers": ranks * workers, "steps_per_epoch": per_epoch}
    for name, reads in (("ctssl 0.2", old_epoch(counts, ranks, workers, batch, per_epoch)),
                        ("today", new_epoch(counts, ranks, workers, batch, per_epoch))):
        out[name] = {"read_at_least_once": round(len(reads) / samples, 4),
                     "read_twice_or_more": round(sum(1 for v in reads.values() if v > 1) / samples, 4),
                     "reads": sum(reads.values())}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12_000_000)
    parser.add_argument("--shard-samples", type=int, default=19_000, help="samples per shard (~1 GB of CT slices)")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=7)
    parser.add_argument("--global-batch", type=int, default=4096)
    a = parser.parse_args()
    print(coverage(a.samples, a.shard_samples, a.ranks, a.workers, a.global_batch))
