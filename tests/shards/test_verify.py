"""ctssl shards verify: every sample decoded and checked against the manifest; corruption and truncation
named, exit 1."""

from __future__ import annotations

import shutil

from ctssl.cli.main import main
from ctssl.shards.reader import shard_paths
from ctssl.shards.verify import verify_shards


def test_verify_catches_corruption_and_truncation(ct_shards, tmp_path, capsys):
    assert verify_shards(ct_shards)[0] == []
    assert main(["shards", "verify", str(ct_shards)]) == 0
    out = tmp_path / "damaged"
    shutil.copytree(ct_shards, out)
    shards = shard_paths(out)
    blob = bytearray(shards[0].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shards[0].write_bytes(bytes(blob))
    shards[1].write_bytes(shards[1].read_bytes()[:5000])
    problems, _ = verify_shards(out)
    assert any(shards[0].name in p and "SHA-256" in p for p in problems)
    assert any(shards[1].name in p and "bytes" in p for p in problems)
    assert main(["shards", "verify", str(out)]) == 1
    assert "problem" in capsys.readouterr().err
