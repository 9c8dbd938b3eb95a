"""slurm/pretrain.sbatch on a real SLURM, submitted exactly as slurm/README.md writes it, from a folder outside the
checkout, with only the variables the docs name: two nodes (two slurmd daemons on this host) with one granted
GPU each, one node with one GPU (one process: no --multi_gpu), CPU processes by CTSSL_PROCS_PER_NODE, the
one-line refusal without either; a requeued job (as before the time limit or on preemption) resumes. The
granted GPUs are plain files (tests/slurm_cluster.py): the processes run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "slurm" / "README.md").read_text()

# The commands as slurm/README.md writes them (checked below: they must stay copies).
DOC_TWO_NODES = ("sbatch --nodes=2 ~/ctssl/slurm/pretrain.sbatch --recipe simclr_rn50_ct "
                 "--shards /scratch/ct-shuffled --out /scratch/run1")
DOC_ONE_GPU = ("sbatch --nodes=1 --gpus-per-node=1 ~/ctssl/slurm/pretrain.sbatch --recipe simclr_rn50_ct "
               "--shards /scratch/ct-shuffled --out /scratch/run1")
DOC_CPU = ("CTSSL_PROCS_PER_NODE=2 sbatch --nodes=1 --gpus-per-node=0 --cpus-per-task=4 "
           "~/ctssl/slurm/pretrain.sbatch --shards /scratch/ct-shuffled --out /scratch/run1")
# Appended to each command: a run small enough for this machine (the recipe's model and batch would not be).
SMALL = ("--backbone resnet18 --set data.image_size=32 --set data.num_workers=1 --set monitor.log_every=1 "
         "--set monitor.knn_samples=16 --set stop_check_every=1 --set method.simclr.hidden_dim=64")
RECIPE_SMALL = SMALL + " --set data.global_batch_size=4"
CPU_SMALL = SMALL + " --batch-size 4"


@pytest.fixture(scope="module")
def slurm2(tmp_path_factory):
    """Two nodes with two (file) GPUs each."""
    from tests.slurm_cluster import SlurmCluster, missing_binaries

    if missing_binaries():
        if os.environ.get("CTSSL_REQUIRE_SLURM"):
            pytest.fail(f"SLURM is not installed (missing {missing_binaries()})")
        pytest.skip("SLURM is not installed")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2, gpus=2, cpus=64).start()
    yield cluster
    cluster.stop()


def test_doc_commands_are_the_readme_s():
    for command in (DOC_TWO_NODES, DOC_ONE_GPU, DOC_CPU):
        assert command in README, command


def _submit(slurm, command: str, shards, out, extra: str, cwd: Path, env: dict | None = None) -> str:
    """Run ``command`` as written in a shell in ``cwd`` (outside the checkout), the installed ctssl's
    environment active (its bin on PATH, as a user's activated venv), ~/ctssl being this checkout."""
    line = (command.replace("~/ctssl", shlex.quote(str(REPO))).replace("/scratch/ct-shuffled", shlex.quote(str(shards)))
            .replace("/scratch/run1", shlex.quote(str(out))).replace("sbatch ", "sbatch --parsable ", 1) + " " + extra)
    environ = {**slurm.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    environ.pop("CTSSL_PROCS_PER_NODE", None) if "CTSSL_PROCS_PER_NODE" not in command else None
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _steps(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]


def _job_log(cwd: Path, job: str) -> str:
    path = cwd / f"ctssl-pretrain-{job}.out"
    return path.read_text() if path.exists() else "(no job log)"


def test_two_nodes_as_documented(slurm2, ct_shards, tmp_path):
    """Two nodes, one process each: the GPUs SLURM grants decide the processes (SBATCH_GPUS_PER_NODE, sbatch's
    own variable, asks for one per node: this machine cannot run the script's eight)."""
    out = tmp_path / "run dir"       # an argument with a space reaches ctssl.pretrain.main whole
    job = _submit(slurm2, DOC_TWO_NODES, ct_shards, out, RECIPE_SMALL + " --max-steps 3", tmp_path,
                  env={"SBATCH_GPUS_PER_NODE": "1"})
    assert slurm2.wait(job, timeout=400)[job] == "COMPLETED", _job_log(tmp_path, job)
    log = _job_log(tmp_path, job)
    assert "2 node(s) x 1 process(es) = 2, 64 CPUs per node, rendezvous 127.0.0.1:" in log
    config = (out / "config.yaml").read_text()
    assert "processes: 2" in config and "global_batch: 4" in config
    assert (out / "logs" / "rank1.log").exists()
    assert _steps(out) == [1, 2, 3] and (out / "backbone.safetensors").exists()


def test_one_gpu_runs_one_process(slurm2, ct_shards, tmp_path):
    out = tmp_path / "one"
    job = _submit(slurm2, DOC_ONE_GPU, ct_shards, out, RECIPE_SMALL + " --max-steps 2", tmp_path)
    assert slurm2.wait(job, timeout=300)[job] == "COMPLETED", _job_log(tmp_path, job)
    assert "1 node(s) x 1 process(es) = 1" in _job_log(tmp_path, job)
    assert "processes: 1" in (out / "config.yaml").read_text() and _steps(out) == [1, 2]


def test_no_gpu_granted_fails_in_one_line(slurm2, ct_shards, tmp_path):
    command = DOC_CPU.replace("CTSSL_PROCS_PER_NODE=2 ", "")
    job = _submit(slurm2, command, ct_shards, tmp_path / "none", CPU_SMALL, tmp_path)
    assert slurm2.wait(job, timeout=120)[job] == "FAILED"
    log = _job_log(tmp_path, job).strip().splitlines()
    assert len(log) == 1 and "SLURM granted no GPUs" in log[0] and "CTSSL_PROCS_PER_NODE" in log[0], log


def test_cpu_processes_as_documented(slurm2, ct_shards, tmp_path):
    out = tmp_path / "cpu"
    job = _submit(slurm2, DOC_CPU, ct_shards, out, CPU_SMALL + " --max-steps 3", tmp_path)
    assert slurm2.wait(job, timeout=300)[job] == "COMPLETED", _job_log(tmp_path, job)
    assert "1 node(s) x 2 process(es) = 2, 4 CPUs per node" in _job_log(tmp_path, job)
    assert "processes: 2" in (out / "config.yaml").read_text()
    assert _steps(out) == [1, 2, 3] and (out / "backbone.safetensors").exists()


def _wait_for_steps(out, n, timeout=240):
    deadline = time.time() + timeout
    while len(_steps(out)) < n and time.time() < deadline:
        time.sleep(0.5)
    assert len(_steps(out)) >= n, "training did not start"


def test_requeued_job_checkpoints_and_resumes(slurm2, ct_shards, tmp_path):
    out = tmp_path / "requeue"
    job = _submit(slurm2, DOC_CPU, ct_shards, out, CPU_SMALL + " --max-steps 40", tmp_path)
    _wait_for_steps(out, 3)
    slurm2.run("scontrol", "requeue", job)  # what the USR1 trap does before the time limit
    # SLURM holds a requeued job for a while before it may start again; release it at once.
    deadline = time.time() + 120
    while slurm2.states(job).get(job) != "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    # slurmd refuses a credential made in the second its job's previous one was revoked ("Job credential
    # revoked"); a cluster's requeue waits longer than that before the job starts again, the test waits 3 s.
    time.sleep(3)
    slurm2.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    states = slurm2.wait(job, timeout=600)
    log = (out / "logs" / "rank0.log").read_text()
    assert states[job] == "COMPLETED", log[-2000:]
    assert "SIGTERM received: checkpoint saved at step" in log
    assert "resumed from" in log
    steps = _steps(out)
    assert steps[-1] == 40 and len(steps) == len(set(steps)) and steps == sorted(steps)


def test_time_limit_signal_checkpoints_first_then_requeues(slurm2, ct_shards, tmp_path):
    """SIGUSR1 to the batch script (what --signal=B:USR1@300 sends before the time limit): training is
    asked to stop, saves its checkpoint and exits; only then does the script requeue the job."""
    out = tmp_path / "usr1"
    job = _submit(slurm2, DOC_CPU, ct_shards, out, CPU_SMALL + " --max-steps 40", tmp_path)
    _wait_for_steps(out, 3)
    slurm2.run("scancel", "--signal=USR1", "--batch", job)
    deadline = time.time() + 180
    while slurm2.states(job).get(job) != "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    log = (out / "logs" / "rank0.log").read_text()
    assert "stop requested (stop file): checkpoint saved at step" in log, log[-2000:]
    assert "SIGTERM" not in log                       # it stopped on its own, before the requeue
    time.sleep(3)                                     # the credential race, as above
    slurm2.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    states = slurm2.wait(job, timeout=600)
    log = (out / "logs" / "rank0.log").read_text()
    assert states[job] == "COMPLETED", log[-2000:]
    assert "resumed from" in log
    steps = _steps(out)
    assert steps[-1] == 40 and len(steps) == len(set(steps)) and steps == sorted(steps)
