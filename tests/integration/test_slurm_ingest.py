"""The SLURM ingest scripts on a real single-node SLURM: same samples as one process; a task
killed mid-way and resubmitted leaves no duplicate or missing sample."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.shards.reader import iter_samples
from ctssl.shards.verify import verify_shards

REPO = Path(__file__).resolve().parents[2]
SALT = "slurm-test-salt-0123456789"


def _samples(folder):
    return {s["key"]: s["hu"] for s in iter_samples(folder)}


def test_array_ingest_with_a_killed_task_matches_single_process(corpus, slurm, tmp_path, monkeypatch):
    cfg, _ = corpus
    labels = str(Path(cfg.out) / "labels" / "slices.csv")
    options = ["--image-size", "0", "--shard-size-mb", "0.05", "--labels", labels]
    monkeypatch.setenv("CTSSL_SALT", SALT)
    reference = tmp_path / "single"
    run_ingest(IngestConfig(sources=[cfg.out], out=str(reference), image_size=0, shard_size_mb=0.05,
                            labels=[labels]))

    out = tmp_path / "array"
    env = {"CTSSL": f"{sys.executable} -m ctssl", "CTSSL_SALT": SALT, "CTSSL_OUT": str(out),
           "CTSSL_NUM_TASKS": "4", "CTSSL_FAULT_KILL": "1:1"}  # task 1 dies after one shard
    submitted = slurm.run("bash", str(REPO / "slurm" / "ingest.sh"), cfg.out, *options, env=env, cwd=tmp_path)
    plan_job, tasks_job, merge_job = re.search(r"plan (\d+), tasks (\d+) .*merge (\d+)", submitted).groups()
    states = slurm.wait(plan_job, tasks_job, merge_job)
    assert states[plan_job] == "COMPLETED"
    assert states[f"{tasks_job}_1"] == "FAILED"
    assert all(states[f"{tasks_job}_{i}"] == "COMPLETED" for i in (0, 2, 3))
    assert states[merge_job] == "PENDING"  # afterok never satisfied
    slurm.run("scancel", merge_job)
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert plan["tasks"][1]["series"] >= 2  # so the kill happened mid-task
    frames = [t["frames"] for t in plan["tasks"]]
    assert max(frames) - min(frames) <= max(plan["tasks"], key=lambda t: t["frames"])["frames"] / 2 + 200

    # Merge refuses and names the unfinished task.
    merge = subprocess.run([sys.executable, "-m", "ctssl", "ingest-array", "merge", "--out", str(out)],
                           capture_output=True, text=True)
    assert merge.returncode == 1 and "incomplete (started, not finished): 1" in merge.stderr

    # Resubmit only the failed index (without the fault), then merge as a job.
    del env["CTSSL_FAULT_KILL"]
    monkeypatch.delenv("CTSSL_FAULT_KILL", raising=False)
    rerun = slurm.submit(REPO / "slurm" / "ingest-task.sbatch", sbatch_args=("--array=1",), env=env, cwd=tmp_path)
    assert all(s == "COMPLETED" for s in slurm.wait(rerun).values())
    final = slurm.submit(REPO / "slurm" / "ingest-merge.sbatch", env=env, cwd=tmp_path)
    assert slurm.wait(final)[final] == "COMPLETED"

    assert verify_shards(out)[0] == []
    got, want = _samples(out), _samples(reference)
    assert sorted(got) == sorted(want)
    assert sum(1 for _ in iter_samples(out)) == len(want)  # no duplicate keys
    assert all(np.array_equal(got[k], want[k]) for k in want)

    # Rerunning a finished task is a no-op: nothing is rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = subprocess.run([sys.executable, "-m", "ctssl", "ingest-array", "task", "--out", str(out),
                            "--task-index", "0"], capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
