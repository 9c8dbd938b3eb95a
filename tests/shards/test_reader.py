"""Readers check each sample's member set against its ``.crc`` record: a damaged member name (another key,
another extension, a member that is no longer a file) costs its sample, reported with its reason, in the
reader itself, the training loader and the evaluation reader; shards written before ``.crc`` read as before."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ctssl.shards.encoding import encode_hu
from ctssl.shards.manifest import build_manifest, write_manifest
from ctssl.shards.reader import ShardError, iter_shard
from ctssl.shards.writer import ShardWriter

KEYS = ["0123456789abcdef-00001", "0123456789abcdef-00002", "0123456789abcdef-00003", "0123456789abcdef-00004"]
NAME = "train-00000-00000.tar"


def _members(i: int) -> dict[str, bytes]:
    hu = np.full((4, 4), i * 10, np.int16)
    meta = {"key": KEYS[i], "patient": f"p{i % 2}", "split": "train", "labels": {"region": f"r{i % 2}"}}
    return {"hu": encode_hu(hu), "json": json.dumps(meta).encode()}


def _shard_set(folder: Path, checksums: bool = True, manifest: bool = True) -> Path:
    """A one-shard CT set of four samples; ``checksums=False`` writes it as ctssl 0.1 did (no ``.crc``,
    a manifest without ``order`` or ``sample_checksums``)."""
    writer = ShardWriter(folder, NAME, "train")
    for i, key in enumerate(KEYS):
        if checksums:
            writer.add(key, _members(i))
        else:                                   # bypass the writer's .crc, as a 0.1 shard
            for ext, data in _members(i).items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                writer._tar.addfile(info, io.BytesIO(data))
            writer.samples += 1
    info = writer.close()
    if manifest:
        built = build_manifest([dict(vars(info))], {}, "test")
        if not checksums:
            built.pop("sample_checksums")
        write_manifest(folder, built)
    return folder / NAME


def _rewrite(shard: Path, change) -> None:
    """Rewrite ``shard`` member by member; ``change(TarInfo)`` may rename a member or change its type."""
    out = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isfile() else b""
            change(info)
            if not info.isfile():
                info.size = 0
            dst.addfile(info, io.BytesIO(data) if info.isfile() else None)
    shard.write_bytes(out.getvalue())


def _read(shard: Path, **kwargs):
    problems: list[tuple[str | None, str]] = []
    samples = list(iter_shard(shard, decode=False, on_error=lambda key, reason: problems.append((key, reason)),
                              **kwargs))
    return samples, problems


def _rename(old: str, new: str):
    def change(info):
        if info.name == old:
            info.name = new
    return change


DAMAGES = {
    # .json moved to another key: its sample is split in three fragments, put back together by its .crc.
    "json under another key": (_rename(f"{KEYS[1]}.json", f"{KEYS[1][:-1]}6.json"), "member names damaged"),
    # .json moved to the NEXT sample's key: same, and the next sample stays intact.
    "json under the next key": (_rename(f"{KEYS[1]}.json", f"{KEYS[2]}.json"), "member names damaged"),
    "another extension": (_rename(f"{KEYS[1]}.json", f"{KEYS[1]}.jsoN"), "lacks member(s) ['.json']"),
    "the .crc renamed": (_rename(f"{KEYS[1]}.crc", f"{KEYS[1]}.crb"), "no .crc member"),
    "the .crc under another key": (_rename(f"{KEYS[1]}.crc", f"{KEYS[1][:-1]}0.crc"), "member names damaged"),
    "the .hu no longer a file": (lambda info: setattr(info, "type", tarfile.DIRTYPE)
                                 if info.name == f"{KEYS[1]}.hu" else None, "lacks member(s) ['.hu']"),
    "a dot flipped into a slash": (_rename(f"{KEYS[1]}.json", f"{KEYS[1]}/json"), "member names damaged"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_member_name_costs_its_sample_with_a_report(tmp_path, damage):
    shard = _shard_set(tmp_path)
    change, reason = DAMAGES[damage]
    _rewrite(shard, change)
    samples, problems = _read(shard, expected=len(KEYS))
    assert [s["key"] for s in samples] == [KEYS[0], KEYS[2], KEYS[3]]
    for s in samples:                                     # what is yielded is whole and unchanged
        assert {k: v for k, v in s.items() if k != "key"} == _members(KEYS.index(s["key"]))
    assert len(problems) == 1 and problems[0][0] is not None, problems
    assert reason in problems[0][1], problems
    with pytest.raises(ShardError):                       # without on_error: raised, never dropped
        list(iter_shard(shard, decode=False))


def _flip_name_bit(data: bytearray, offset: int, byte: int, bit: int) -> None:
    """Flip one bit of a member's name in its tar header, with the header checksum made valid again (so
    that only the ctssl checks can see it)."""
    data[offset + byte] ^= 1 << bit
    header = data[offset:offset + 512]
    header[148:156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(header)


def test_every_single_bit_flip_in_a_member_name_is_reported_or_harmless(tmp_path):
    """The issue's fault injection, in small: every bit of every member name of the first three samples."""
    shard = _shard_set(tmp_path)
    clean = shard.read_bytes()
    with tarfile.open(shard) as tar:
        headers = [(info.offset, len(info.name)) for info in tar.getmembers()][:9]
    outcomes = Counter()
    for offset, length in headers:
        for byte in range(length):
            for bit in range(8):
                data = bytearray(clean)
                _flip_name_bit(data, offset, byte, bit)
                shard.write_bytes(bytes(data))
                samples, problems = _read(shard, expected=len(KEYS))
                for s in samples:             # every sample yielded is an original one, whole and unchanged
                    assert s["key"] in KEYS
                    assert {k: v for k, v in s.items() if k != "key"} == _members(KEYS.index(s["key"]))
                lost = len(KEYS) - len(samples)
                reported = [p for p in problems if p[0] is not None]
                assert lost == 0 or reported or any(p[0] is None for p in problems), (offset, byte, bit)
                assert len(samples) + len(reported) >= len(KEYS), (offset, byte, bit, problems)
                outcomes["lost and reported" if lost else "harmless"] += 1
    assert outcomes["lost and reported"] > 0


def test_shards_without_checksums_read_as_before(tmp_path):
    """A set written by ctssl 0.1 (no .crc, a manifest without sample_checksums): nothing is required."""
    shard = _shard_set(tmp_path, checksums=False)
    samples, problems = _read(shard, expected=len(KEYS))
    assert [s["key"] for s in samples] == KEYS and not problems
    # Without a manifest either: the same.
    bare = tmp_path / "bare"
    bare.mkdir()
    shard.rename(bare / NAME)
    samples, problems = _read(bare / NAME)
    assert [s["key"] for s in samples] == KEYS and not problems


def test_without_a_manifest_a_missing_crc_is_noticed_once_the_shard_has_shown_one(tmp_path):
    shard = _shard_set(tmp_path, manifest=False)
    _rewrite(shard, _rename(f"{KEYS[2]}.crc", f"{KEYS[2]}.crb"))
    samples, problems = _read(shard)
    assert [s["key"] for s in samples] == [KEYS[0], KEYS[1], KEYS[3]]
    assert [key for key, _ in problems] == [KEYS[2]] and "no .crc member" in problems[0][1]


def test_training_loader_gives_the_damaged_sample_a_bad_slot(tmp_path, caplog):
    from ctssl.pretrain.loader import BAD_SLOT, Piece, piece_slots

    shard = _shard_set(tmp_path)
    _rewrite(shard, _rename(f"{KEYS[1]}.json", f"{KEYS[1][:-1]}6.json"))
    counts: Counter = Counter()
    with caplog.at_level(logging.WARNING, logger="ctssl.pretrain.loader"):
        slots = list(piece_slots(Piece(str(shard), 0, len(KEYS), len(KEYS)), counts))
    assert len(slots) == len(KEYS)                   # the epoch's length stays the manifest's
    assert slots[1] is BAD_SLOT and [s["key"] for s in slots if s is not BAD_SLOT] == [KEYS[0], KEYS[2], KEYS[3]]
    assert counts == Counter(skipped=1)
    assert "member names damaged" in caplog.text


def test_evaluation_reader_counts_the_damaged_sample(tmp_path, caplog):
    from ctssl.eval.inputs.datasets import open_dataset

    shard = _shard_set(tmp_path)
    _rewrite(shard, _rename(f"{KEYS[1]}.json", f"{KEYS[1]}.jsoN"))
    with caplog.at_level(logging.WARNING, logger="ctssl.eval.inputs.datasets"):
        data = open_dataset(str(tmp_path), label="region")
    assert [s.key for s in data.samples["train"]] == [KEYS[0], KEYS[2], KEYS[3]]
    assert data.damaged == {"train": 1}
    assert "lacks member(s) ['.json']" in caplog.text and "damaged samples left out: 1 in train" in caplog.text
    assert len(list(data.stream("train"))) == 3      # the image pass sees the same samples
