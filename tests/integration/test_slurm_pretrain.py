"""slurm/pretrain.sbatch on a real SLURM: two processes (gloo on CPU), rendezvous from the SLURM
environment; a requeued job (as before the time limit or on preemption) resumes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "pretrain.sbatch"
SBATCH = ("--nodes=1", "--gpus-per-node=0", "--cpus-per-task=4", "--mem=4G")
ARGS = ("--batch-size", "4", "--set", "data.image_size=32", "--set", "data.num_workers=1",
        "--set", "monitor.log_every=1", "--set", "monitor.knn_samples=16", "--set", "stop_check_every=1",
        "--set", "method.simclr.hidden_dim=64")


def _env(tmp_path):
    return {"CTSSL_ACCELERATE": f"{sys.executable} -m accelerate.commands.launch", "CTSSL_PROCS_PER_NODE": "2",
            "CTSSL_REPO": str(REPO)}


def _steps(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]


def test_pretrain_job_runs_two_processes(slurm, ct_shards, tmp_path):
    out = tmp_path / "run dir"       # an argument with a space reaches pretrain/main.py whole
    job = slurm.submit(SCRIPT, "--shards", str(ct_shards), "--out", str(out), "--max-steps", "3", *ARGS,
                       sbatch_args=SBATCH, env=_env(tmp_path), cwd=tmp_path)
    assert slurm.wait(job, timeout=300)[job] == "COMPLETED", (tmp_path / f"ctssl-pretrain-{job}.out").read_text()
    assert "processes: 2" in (out / "config.yaml").read_text()
    assert _steps(out) == [1, 2, 3] and (out / "backbone.safetensors").exists()


def test_requeued_job_checkpoints_and_resumes(slurm, ct_shards, tmp_path):
    out = tmp_path / "requeue"
    job = slurm.submit(SCRIPT, "--shards", str(ct_shards), "--out", str(out), "--max-steps", "40", *ARGS,
                       sbatch_args=SBATCH, env=_env(tmp_path), cwd=tmp_path)
    deadline = time.time() + 240
    while len(_steps(out)) < 3 and time.time() < deadline:
        time.sleep(0.5)
    assert len(_steps(out)) >= 3, "training did not start"
    slurm.run("scontrol", "requeue", job)  # what the USR1 trap does before the time limit
    # SLURM holds a requeued job for a while before it may start again; release it at once.
    deadline = time.time() + 120
    while slurm.states(job).get(job) != "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    # slurmd refuses a credential made in the second its job's previous one was revoked ("Job credential
    # revoked"); a cluster's requeue waits longer than that before the job starts again, the test waits 3 s.
    time.sleep(3)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    states = slurm.wait(job, timeout=600)
    log = (out / "logs" / "rank0.log").read_text()
    assert states[job] == "COMPLETED", log[-2000:]
    assert "SIGTERM received: checkpoint saved at step" in log
    assert "resumed from" in log
    steps = _steps(out)
    assert steps[-1] == 40 and len(steps) == len(set(steps)) and steps == sorted(steps)


def test_time_limit_signal_checkpoints_first_then_requeues(slurm, ct_shards, tmp_path):
    """SIGUSR1 to the batch script (what --signal=B:USR1@300 sends before the time limit): training is
    asked to stop, saves its checkpoint and exits; only then does the script requeue the job."""
    out = tmp_path / "usr1"
    job = slurm.submit(SCRIPT, "--shards", str(ct_shards), "--out", str(out), "--max-steps", "40", *ARGS,
                       sbatch_args=SBATCH, env=_env(tmp_path), cwd=tmp_path)
    deadline = time.time() + 240
    while len(_steps(out)) < 3 and time.time() < deadline:
        time.sleep(0.5)
    assert len(_steps(out)) >= 3, "training did not start"
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    deadline = time.time() + 180
    while slurm.states(job).get(job) != "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    log = (out / "logs" / "rank0.log").read_text()
    assert "stop requested (stop file): checkpoint saved at step" in log, log[-2000:]
    assert "SIGTERM" not in log                       # it stopped on its own, before the requeue
    time.sleep(3)                                     # the credential race, as above
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    states = slurm.wait(job, timeout=600)
    log = (out / "logs" / "rank0.log").read_text()
    assert states[job] == "COMPLETED", log[-2000:]
    assert "resumed from" in log
    steps = _steps(out)
    assert steps[-1] == 40 and len(steps) == len(set(steps)) and steps == sorted(steps)
