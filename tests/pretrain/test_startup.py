"""Start-up does not grow with the corpus: on unlabelled shards and on the same shards listed 20 times
over, pretraining reads the same few samples before step 0 (the kNN monitor says once that it is off)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ctssl.pretrain.config import resolve_pretrain_config
from ctssl.pretrain.train import train


@pytest.fixture(scope="module")
def unlabelled(corpus, tmp_path_factory):
    from ctssl.data.ingest import IngestConfig, run_ingest
    from ctssl.data.pseudonym import fixed_salt

    cfg, _ = corpus
    out = tmp_path_factory.mktemp("startup") / "small"
    with fixed_salt("pretrain-test-salt-0123456789"):
        run_ingest(IngestConfig(sources=[cfg.out], out=str(out), image_size=32, shard_size_mb=0.05))
    return out


def _scaled(small: Path, out: Path, factor: int) -> Path:
    """The same shards ``factor`` times over (hard links under new names): a corpus ``factor`` x larger."""
    manifest = json.loads((small / "manifest.json").read_text())
    out.mkdir()
    shards = []
    for copy in range(factor):
        for shard in manifest["shards"]:
            name = f"c{copy:02d}-{shard['name']}"
            os.link(small / shard["name"], out / name)
            shards.append({**shard, "name": name})
    splits = {s: {**v, "shards": v["shards"] * factor, "samples": v["samples"] * factor,
                  "bytes": v["bytes"] * factor} for s, v in manifest["splits"].items()}
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": shards, "splits": splits}))
    return out


def _start(shards: Path, out: Path) -> dict:
    cfg = resolve_pretrain_config(None, None, ["data.image_size=32", "data.num_workers=1", "max_steps=1",
                                               "monitor.tensorboard=false", "method.simclr.hidden_dim=32",
                                               "optim.warmup_epochs=0", "monitor.knn_scan=256"],
                                  {"data.shards": str(shards), "out": str(out), "data.batch_size": 4})
    train(cfg)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def test_what_is_read_before_step_0_does_not_grow_with_the_corpus(unlabelled, tmp_path, caplog):
    small_manifest = json.loads((unlabelled / "manifest.json").read_text())
    large = _scaled(unlabelled, tmp_path / "large", 20)
    small_start = _start(unlabelled, tmp_path / "run-small")
    large_start = _start(large, tmp_path / "run-large")
    assert small_start["startup_samples_read"] == large_start["startup_samples_read"]
    # preflight's first decodable sample and the monitor's bounded look for labels (monitor.knn_scan)
    assert 256 <= large_start["startup_samples_read"] <= 64 + 256 < small_manifest["totals"]["samples"]
    off = [r.message for r in caplog.records if "kNN monitor off" in r.message]
    assert len(off) == 2 and "carries the label 'region'" in off[0] and "labels in the data: none" in off[0]
