"""Feature extraction at scale: loader workers give the same features as one process; array tasks' parts
merge into the same bank; slurm/extract.sh does it on a real SLURM."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.features.cache import cached_features, extract_task, merge_parts, task_units

REPO = Path(__file__).resolve().parents[1]
SOURCE = "random:resnet18:3"


@pytest.fixture(scope="module")
def reference(ct_shards, tmp_path_factory):
    data = open_dataset(str(ct_shards), "region")
    feats = cached_features(SOURCE, data, ["train", "test"], 32, tmp_path_factory.mktemp("ref"), workers=0)
    return data, {s: np.asarray(f.features) for s, f in feats.items()}


def test_loader_workers_give_the_features_of_one_process(reference, tmp_path):
    data, ref = reference
    assert len(data.units["train"]) >= 2                   # several shards: the workers share them out
    feats = cached_features(SOURCE, data, ["train", "test"], 32, tmp_path, workers=2, batch=5)
    for split in ("train", "test"):
        np.testing.assert_allclose(np.asarray(feats[split].features), ref[split], rtol=1e-5, atol=1e-5)


def test_array_task_parts_merge_into_the_same_bank(reference, tmp_path):
    data, ref = reference
    assert [u for t in range(3) for u in task_units(7, t, 3)] == list(range(7))
    with pytest.raises(FileNotFoundError, match=r"tasks \[1\]"):
        extract_task(SOURCE, data, ["train", "test"], 32, tmp_path, 0, 3, workers=0)
        extract_task(SOURCE, data, ["train", "test"], 32, tmp_path, 2, 3, workers=0)
        merge_parts(SOURCE, data, ["train", "test"], 32, tmp_path, 3)
    extract_task(SOURCE, data, ["train", "test"], 32, tmp_path, 1, 3, workers=0)
    feats = merge_parts(SOURCE, data, ["train", "test"], 32, tmp_path, 3)
    for split in ("train", "test"):
        np.testing.assert_allclose(np.asarray(feats[split].features), ref[split], rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.rglob("parts/*.npy"))


def test_the_label_does_not_split_the_cache(ct_shards, tmp_path):
    """Region and lesion label every slice: one extraction serves both."""
    a = cached_features(SOURCE, open_dataset(str(ct_shards), "region"), ["test"], 32, tmp_path, workers=0)
    b = cached_features(SOURCE, open_dataset(str(ct_shards), "lesion"), ["test"], 32, tmp_path, workers=0)
    assert a["test"].provenance["cache"] == b["test"].provenance["cache"]


def test_extract_array_on_slurm(slurm, ct_shards, reference, tmp_path):
    _, ref = reference
    out = tmp_path / "eval"
    env = {"CTSSL": f"{sys.executable} -m ctssl", "CTSSL_TASKS": "2", "SBATCH_GPUS_PER_NODE": "0",
           "SBATCH_CPUS_PER_TASK": "2", "SBATCH_MEM": "4G"}
    submitted = slurm.run("bash", str(REPO / "slurm" / "extract.sh"), "--data", str(ct_shards), "--backbone",
                          SOURCE, "--image-size", "32", "--split", "train", "--split", "test", "--out", str(out),
                          env=env, cwd=tmp_path)
    tasks, merge = re.search(r"tasks (\d+) .*merge (\d+)", submitted).groups()
    states = slurm.wait(tasks, merge, timeout=600)
    assert all(s == "COMPLETED" for s in states.values()), (states, *(p.read_text()[-1500:] for p in tmp_path.glob("*.out")))
    feats = cached_features(SOURCE, open_dataset(str(ct_shards), "region"), ["train", "test"], 32, out / "features")
    for split in ("train", "test"):
        np.testing.assert_allclose(np.asarray(feats[split].features), ref[split], rtol=1e-5, atol=1e-5)
