"""ctssl shards shuffle: every sample once, byte-identical reruns, phases in any order that resume and name
what is missing."""

from __future__ import annotations

import json

import pytest

from ctssl.shards.shuffle import ShuffleConfig, run_shuffle


def test_shuffle_keeps_every_sample_once_and_reruns_identically(corpora, tmp_path):
    ordered, shuffled = corpora
    from ctssl.shards.reader import iter_samples
    from ctssl.shards.verify import verify_shards

    assert verify_shards(shuffled)[0] == []
    keys = [s["key"] for s in iter_samples(shuffled)]
    assert sorted(keys) == sorted(s["key"] for s in iter_samples(ordered)) and len(set(keys)) == len(keys)
    manifest = json.loads((shuffled / "manifest.json").read_text())
    assert manifest["order"] == "shuffled" and manifest["kind"] == "ct"
    again = tmp_path / "again"
    run_shuffle(ordered, again, ShuffleConfig(shard_size_mb=0.5, bucket_mb=2.0), workers=1)
    for shard in manifest["shards"]:
        assert (again / shard["name"]).read_bytes() == (shuffled / shard["name"]).read_bytes()


def test_shuffle_phases_in_any_order_resume_and_name_what_is_missing(corpora, tmp_path):
    from ctssl.shards import shuffle

    ordered, shuffled = corpora
    out = tmp_path / "phased"
    cfg = ShuffleConfig(shard_size_mb=0.5, bucket_mb=2.0, scatter_tasks=3)
    plan = shuffle.plan_shuffle(ordered, out, cfg)
    assert len(plan["scatter"]) == 3 and len(plan["gather"]) >= 2
    shuffle.scatter(ordered, out, 2)
    with pytest.raises(shuffle.IncompleteShuffle, match=r"\[0, 1\]"):
        shuffle.gather(ordered, out, 0)
    (out / "shuffle" / "parts" / "train-b00000-t00001.bin").write_bytes(b"half-written")   # a killed task 1
    shuffle.scatter(ordered, out, 1)
    shuffle.scatter(ordered, out, 0)
    assert shuffle.scatter(ordered, out, 0)["task"] == 0                                  # done: a no-op
    with pytest.raises(shuffle.IncompleteShuffle, match="gather"):
        shuffle.merge(ordered, out)
    for g in reversed(range(len(plan["gather"]))):
        shuffle.gather(ordered, out, g)
    manifest = shuffle.merge(ordered, out)
    assert manifest["totals"]["samples"] == 5000
    assert not (out / "shuffle" / "parts").exists()
