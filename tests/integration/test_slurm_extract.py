"""slurm/extract.sh on a real SLURM: array tasks and the merge give the one bank."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.features.cache import cached_features

REPO = Path(__file__).resolve().parents[2]
SOURCE = "random:resnet18:3"


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
