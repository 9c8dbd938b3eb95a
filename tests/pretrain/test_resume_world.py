"""A resume on another world size or number of loader workers: the rest of the epoch is dealt again over
the new readers, so the epoch stays one pass (every sample once, the same samples as an uninterrupted run),
through 2 -> 1 -> 2 processes and other worker counts; another global batch is refused in one line. The
readers run in this process (each "worker" is TrainBatches with its worker id), yielding sample keys only."""

from __future__ import annotations

from collections import Counter
from unittest import mock

import pytest
import torch

from ctssl.core.config import ConfigError
from ctssl.pretrain.loader import TrainBatches, deal_record, resume_deal, split_shards
from ctssl.shards import reader as shard_reader

SEED, INTERLEAVE, BUFFER = 3, 2, 32


class _Worker:
    def __init__(self, id):
        self.id = id


def read(shards, per_epoch, world, workers, batch, start, stop, positions=None, deal=None):
    """{step: keys of every rank}, each rank's positions {virtual: (epoch, slots)} at ``stop``, samples read
    without decoding to reach the positions (``passed``) and all samples iter_shard read."""
    keys: dict[int, list] = {}
    saved = [dict((positions or [{}] * world)[r]) for r in range(world)]
    passed, before = 0, shard_reader.samples_read()
    for rank in range(world):
        for worker in range(workers):
            data = TrainBatches(shards, None, "meta", batch, SEED, rank, world, start, stop, workers, INTERLEAVE,
                                BUFFER, per_epoch, positions=saved[rank], deal=deal)
            with mock.patch.object(torch.utils.data, "get_worker_info", lambda w=worker: _Worker(w)):
                for b in data:
                    keys.setdefault(int(b["step"]), []).extend(b["keys"])
                    virtual, epoch, position = (int(v) for v in b["position"])
                    saved[rank][virtual] = (epoch, position)
                    passed += int(b["passed"])
    return keys, saved, passed, shard_reader.samples_read() - before


def _checkpoint(saved):
    return [{str(v): list(p) for v, p in rank.items()} for rank in saved]


def test_two_to_one_to_two_processes_read_every_sample_of_the_epoch_once(corpora):
    ordered, _ = corpora
    shards = split_shards(str(ordered), "train")
    total = sum(n for _, n in shards)
    global_batch = 48
    per_epoch = total // global_batch
    whole, _, _, _ = read(shards, per_epoch, 2, 2, 24, 0, per_epoch)
    expected = Counter(k for ks in whole.values() for k in ks)
    assert sum(expected.values()) == per_epoch * global_batch and max(expected.values()) == 1

    # 2 processes x 2 workers to step 17, then 1 x 3, then (from step 60) 2 x 1.
    s1, s2 = 17, 60
    a, pos_a, _, _ = read(shards, per_epoch, 2, 2, 24, 0, s1)
    positions, deal = resume_deal(_checkpoint(pos_a), None, (2, 2, 24), (1, 3, 48), 0, s1, per_epoch)
    assert positions == {} and deal[0] == 0 and deal[2] == s1
    b, pos_b, passed_b, read_b = read(shards, per_epoch, 1, 3, 48, s1, s2, deal=deal)
    record = deal_record(deal, s2, per_epoch)       # what the checkpoint at s2 keeps
    deal2 = None
    for rank in range(2):
        positions, deal2 = resume_deal(_checkpoint(pos_b), record, (1, 3, 48), (2, 1, 24), rank, s2, per_epoch)
        assert positions == {}
    c, _, passed_c, read_c = read(shards, per_epoch, 2, 1, 24, s2, per_epoch, deal=deal2)
    steps = {**a, **b, **c}
    assert sorted(steps) == list(range(per_epoch)) and all(len(k) == global_batch for k in steps.values())
    got = Counter(k for ks in steps.values() for k in ks)
    assert max(got.values()) == 1                   # no sample twice...
    assert got == expected                          # ...and the very samples of the uninterrupted epoch
    # What the new readers read beyond their samples: the start of a shard before their first piece, passed
    # without decoding (counted), and what their shuffle buffers hold at the stop.
    for got_read, passed, used, readers in ((read_b, passed_b, (s2 - s1) * global_batch, 3),
                                            (read_c, passed_c, (per_epoch - s2) * global_batch, 2)):
        assert used + passed <= got_read <= used + passed + readers * (BUFFER + 1)
    # The next epoch is dealt from its start to the readers of the day.
    nxt, _, _, _ = read(shards, per_epoch, 2, 1, 24, per_epoch, per_epoch + 3, deal=deal2)
    assert len({k for ks in nxt.values() for k in ks}) == 3 * global_batch


def test_one_to_two_processes_and_more_workers(corpora):
    ordered, _ = corpora
    shards = split_shards(str(ordered), "train")
    per_epoch = sum(n for _, n in shards) // 32
    whole, _, _, _ = read(shards, per_epoch, 1, 1, 32, 0, per_epoch)
    expected = Counter(k for ks in whole.values() for k in ks)
    a, pos_a, _, _ = read(shards, per_epoch, 1, 1, 32, 0, 9)
    steps = dict(a)
    for rank in range(2):
        _, deal = resume_deal(_checkpoint(pos_a), None, (1, 1, 32), (2, 3, 16), rank, 9, per_epoch)
    b, _, _, _ = read(shards, per_epoch, 2, 3, 16, 9, per_epoch, deal=deal)
    steps.update(b)
    assert Counter(k for ks in steps.values() for k in ks) == expected


def test_the_same_readers_continue_where_they_stood(corpora):
    ordered, _ = corpora
    shards = split_shards(str(ordered), "train")
    per_epoch = sum(n for _, n in shards) // 32
    whole, _, _, _ = read(shards, per_epoch, 2, 2, 16, 0, 30)
    a, pos_a, _, _ = read(shards, per_epoch, 2, 2, 16, 0, 11)
    positions = [resume_deal(_checkpoint(pos_a), None, (2, 2, 16), (2, 2, 16), r, 11, per_epoch) for r in range(2)]
    assert all(deal is None for _, deal in positions)
    b, _, _, _ = read(shards, per_epoch, 2, 2, 16, 11, 30, positions=[p for p, _ in positions])
    assert {**a, **b} == whole


def test_another_global_batch_is_refused_naming_both_world_sizes():
    with pytest.raises(ConfigError) as err:
        resume_deal([{}, {}], None, (2, 2, 16), (1, 2, 16), 0, 11, 100)
    message = str(err.value)
    assert "2 process(es) x 16" in message and "1 x 16 = 16" in message
    assert "--set data.global_batch_size=32" in message
