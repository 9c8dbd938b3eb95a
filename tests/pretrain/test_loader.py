"""The training loader: batches that look like random samples of the corpus (after ctssl shards shuffle),
per-rank and per-worker augmentation, exact resume, damaged samples counted, unreadable splits refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ctssl.pretrain.batch_stats import batch_composition, iid_expectation, simulate_iid, summarise
from ctssl.pretrain.config import resolve_pretrain_config
from ctssl.pretrain.loader import make_loader, preflight
from ctssl.pretrain.views import CTViewMaker, crop_specs


def _cfg(shards, *overrides):
    return resolve_pretrain_config(None, None, ["data.image_size=16", *overrides], {"data.shards": str(shards)})


def _compositions(shards, batch=128, batches=12, workers=2, *overrides):
    cfg = _cfg(shards, *overrides)
    out = []
    for b in make_loader(cfg, None, "meta", 0, 1, 0, batches, batch, workers):
        out.append(batch_composition([m["series"] for m in b["meta"]], [m["slice_index"] for m in b["meta"]]))
    return summarise(out)


def test_shuffled_shards_give_batches_like_iid_sampling_and_ordered_ones_do_not(corpora):
    ordered, shuffled = corpora
    iid = iid_expectation([100] * 50, 128)
    simulated = simulate_iid([(f"s{s}", i) for s in range(50) for i in range(100)], 128, 50)
    assert simulated["distinct_series"]["mean"] == pytest.approx(iid["distinct_series"], rel=0.03)
    assert simulated["same_series_pairs"]["mean"] == pytest.approx(iid["same_series_pairs"], rel=0.1)
    good = _compositions(shuffled)
    assert good["distinct_series"]["mean"] >= 0.9 * iid["distinct_series"]
    assert good["same_series_pairs"]["mean"] <= 2 * iid["same_series_pairs"]
    assert good["near_pairs"]["mean"] <= 2 * iid["near_pairs"] + 1
    # The series-ordered shards read through the same loader fail the same criteria (the metric can fail).
    bad = _compositions(ordered, 128, 12, 2, "data.interleave=1", "data.shuffle_buffer=64")
    assert bad["distinct_series"]["mean"] < 0.5 * iid["distinct_series"]
    assert bad["same_series_pairs"]["mean"] > 3 * iid["same_series_pairs"]


def test_ranks_read_disjoint_samples_each_epoch_augment_anew_and_rerun_identically(corpora, tmp_path):
    ordered, _ = corpora
    one = tmp_path / "one"          # one shard of 1,000 samples: an epoch of 62 steps of 2 x 8
    one.mkdir()
    manifest = json.loads((ordered / "manifest.json").read_text())
    first = manifest["shards"][0]
    shutil.copy(ordered / first["name"], one / first["name"])
    (one / "manifest.json").write_text(json.dumps({**manifest, "shards": [first], "splits": {
        "train": {"shards": 1, "samples": first["samples"], "bytes": first["bytes"], "series": 10}}}))
    cfg = _cfg(one, "data.shuffle_buffer=16")
    maker = CTViewMaker(cfg.data, crop_specs("simclr", cfg), 3)
    per_epoch = first["samples"] // 16

    def run(rank):
        return [b for b in make_loader(cfg, maker, "ct", rank, 2, 0, 2 * per_epoch, 8, 0)]

    r0, r0_again, r1 = run(0), run(0), run(1)
    epoch0 = [k for b in r0[:per_epoch] + r1[:per_epoch] for k in b["keys"]]
    assert len(epoch0) == len(set(epoch0)) == per_epoch * 16     # no sample twice in an epoch, across ranks
    for a, again in zip(r0, r0_again):                           # a rerun repeats rank 0 exactly
        assert a["keys"] == again["keys"] and all(torch.equal(a[k], again[k]) for k in a if k != "keys")
    boxes = {}
    for b in r0 + r1:
        for key, box in zip(b["keys"], b["box"]):
            boxes.setdefault(key, []).append(box)
    twice = [v for v in boxes.values() if len(v) == 2]           # samples met in both epochs are cropped anew
    assert len(twice) > 900 and all(not torch.equal(v[0], v[1]) for v in twice)


def test_a_resumed_loader_continues_the_same_stream(corpora):
    _, shuffled = corpora
    cfg = _cfg(shuffled)
    maker = CTViewMaker(cfg.data, crop_specs("simclr", cfg), 3)

    def batches(start, workers=2):
        return {int(b["step"]): b for b in make_loader(cfg, maker, "ct", 0, 1, start, 9, 8, workers)}

    whole, resumed = batches(0), batches(5)
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, b in resumed.items():
        assert all(torch.equal(b[k], whole[step][k]) for k in ("hu", "box", "hflip", "blur", "noise", "level"))
        assert b["keys"] == whole[step]["keys"]
    # Views rendered in the workers (CPU-only runs) are the same views the device would render.
    rendered = {int(b["step"]): b for b in make_loader(cfg, maker, "ct", 0, 1, 5, 9, 8, 2, render_in_workers=True)}
    from ctssl.pretrain.loader import derive_seed

    for step, b in rendered.items():
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise", 0, step))
        direct = maker.render({k: v for k, v in whole[step].items()
                               if k not in ("step", "skipped", "missing", "keys", "position")}, g)
        for x, y in zip(b["views"], direct):
            torch.testing.assert_close(x, y)


def _corrupt(path, member_suffix=".hu", nth=1):
    """Flip a byte inside the ``nth`` member whose name ends with ``member_suffix``."""
    data = bytearray(path.read_bytes())
    offset, seen = 0, 0
    while offset < len(data) and data[offset]:
        name = data[offset:offset + 100].split(b"\0")[0].decode()
        size = int(data[offset + 124:offset + 136].split(b"\0")[0].strip() or b"0", 8)
        if name.endswith(member_suffix):
            seen += 1
            if seen == nth:
                data[offset + 512 + size // 2] ^= 0xFF
                break
        offset += 512 + (size + 511) // 512 * 512
    path.write_bytes(bytes(data))


def test_damaged_samples_are_skipped_and_counted(corpora, tmp_path):
    ordered, _ = corpora
    bad = tmp_path / "bad"
    shutil.copytree(ordered, bad)
    shards = sorted(bad.glob("train-*.tar"))
    _corrupt(shards[0], ".hu", 3)
    _corrupt(shards[1], ".json", 5)
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2 // 512 * 512])       # cut at a member boundary
    cfg = _cfg(bad, "data.interleave=5", "data.shuffle_buffer=16")
    maker = CTViewMaker(cfg.data, crop_specs("simclr", cfg), 3)
    skipped = missing = 0
    for b in make_loader(cfg, maker, "ct", 0, 1, 0, 80, 64, 0):   # > 5000 samples: every shard read through
        skipped += int(b["skipped"])
        missing += int(b["missing"])
    assert skipped >= 2 and missing >= 400


def test_an_unreadable_split_is_refused_at_start(corpora, tmp_path):
    ordered, _ = corpora
    bad = tmp_path / "zeros"
    shutil.copytree(ordered, bad)
    for shard in bad.glob("train-*.tar"):
        shard.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="No decodable ct sample"):
        preflight(str(bad), "train", "ct")
    preflight(str(ordered), "train", "ct")
    with pytest.raises(ValueError, match="natural"):
        preflight(str(ordered), "train", "natural")
