"""slurm/shuffle.sh on a real SLURM: scatter and gather arrays, then merge; the result is byte for byte
what one process writes, and verifies."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ctssl.pretrain.batch_stats import series_ordered_corpus
from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

REPO = Path(__file__).resolve().parents[2]


def test_shuffle_arrays_equal_one_process(slurm, tmp_path):
    source = series_ordered_corpus(tmp_path / "ordered", series=30, slices=40, series_per_shard=5, size=8)
    reference = tmp_path / "single"
    run_shuffle(source, reference, ShuffleConfig(shard_size_mb=0.2, bucket_mb=1.0, scatter_tasks=3))
    out = tmp_path / "array"
    env = {"CTSSL": f"{sys.executable} -m ctssl"}
    submitted = slurm.run("bash", str(REPO / "slurm" / "shuffle.sh"), str(source), str(out), "--shard-size-mb", "0.2",
                          "--bucket-mb", "1", "--scatter-tasks", "3", env=env, cwd=tmp_path)
    scatter, n_scatter, gather, n_gather, merge = re.search(
        r"scatter (\d+) \((\d+) tasks\), gather (\d+) \((\d+) tasks\), merge (\d+)", submitted).groups()
    assert (n_scatter, int(n_gather) > 1) == ("3", True)
    states = slurm.wait(scatter, gather, merge, timeout=600)
    assert all(s == "COMPLETED" for s in states.values()), (states, *(p.read_text()[-1500:] for p in tmp_path.glob("*.out")))
    names = sorted(p.name for p in reference.glob("*.tar"))
    assert names == sorted(p.name for p in out.glob("*.tar"))
    assert all((out / n).read_bytes() == (reference / n).read_bytes() for n in names)
    assert (out / "manifest.json").read_text() == (reference / "manifest.json").read_text()
