"""A run as users meet it: a resumed run is the same run, the batch plan is recorded, bad combinations are
one line, progress shows in logs without a terminal, warnings say what is wrong, a kill -9 leaves nothing
that blocks the next launch, and a full disk is one line that keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = ["--batch-size", "4", "--set", "data.image_size=32", "--set", "monitor.knn_samples=16",
        "--set", "method.simclr.hidden_dim=32", "--set", "monitor.tensorboard=false"]


def _main(out, shards, *extra, timeout=600, env=None):
    cmd = [sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", str(shards), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_resume_with_other_settings_is_refused_naming_them_then_accepted_and_recorded(ct_shards, tmp_path):
    out = tmp_path / "run"
    first = _main(out, ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    config = (out / "config.yaml").read_text()
    changed = _main(out, ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "2",
                    "--set", "optim.lr=0.5", "--set", "data.augment.hflip=0.1")
    assert changed.returncode == 2
    line = changed.stderr.strip().splitlines()[-1]
    assert "holds a run at step 2 with other settings" in line and "optim.lr 0.0 -> 0.5" in line
    assert "data.augment.hflip 0.5 -> 0.1" in line and "--accept-changes" in line
    assert (out / "config.yaml").read_text() == config              # the first settings are not overwritten
    # Settings that do not change what is trained (monitoring, workers) resume without a word.
    same = _main(out, ct_shards, *BASE, "--set", "data.num_workers=1", "--max-steps", "2",
                 "--set", "monitor.log_every=3")
    assert same.returncode == 0, same.stderr[-2000:]
    accepted = _main(out, ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "3",
                     "--set", "optim.lr=0.5", "--accept-changes")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    change = [h for h in history if h["event"] == "accepted changes"]
    assert len(change) == 1 and change[0]["step"] == 2 and change[0]["changes"]["optim.lr"] == [0.0, 0.5]


def test_the_batch_plan_is_recorded_and_batch_size_under_a_recipe_is_one_line(ct_shards, tmp_path):
    out = tmp_path / "micro"
    run = _main(out, ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "2",
                "--set", "memory.micro_batch_size=2", "--set", "monitor.log_every=1")
    assert run.returncode == 0, run.stderr[-2000:]
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert (resolved["batch_per_process"], resolved["micro_batch_size"], resolved["micro_batches"]) == (4, 2, 2)
    assert resolved["activation_gb_per_sample"] > 0 and resolved["estimated_activation_gb"] >= 0
    assert "2 micro-batches of 2" in run.stderr
    refused = _main(tmp_path / "r", ct_shards, "--recipe", "simclr_rn50_ct", "--batch-size", "32")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "data.global_batch_size 4096" in refused.stderr and "micro-batches" in refused.stderr
    odd = _main(tmp_path / "odd", ct_shards, *BASE, "--set", "memory.micro_batch_size=3", "--max-steps", "1")
    assert odd.returncode == 2 and "valid sizes are [1, 2, 4]" in odd.stderr


def test_progress_lines_without_a_terminal_and_a_warning_for_a_warmup_longer_than_the_run(ct_shards, tmp_path):
    run = _main(tmp_path / "p", ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "3",
                "--set", "monitor.log_every=1", "--set", "monitor.progress_seconds=0.01")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if " ctssl.pretrain: step " in line]
    assert len(lines) == 3 and "step 3/3 (100.0%)" in lines[-1]
    assert all(word in lines[0] for word in ("loss", "lr", "img/s", "ETA"))
    assert "warm-up (10 epochs" in run.stderr and "never reaches its peak" in run.stderr


def test_a_relaunch_right_after_kill_9_is_not_refused(ct_shards, tmp_path):
    """The output lock is not held by loader workers that outlive a killed training process."""
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", str(ct_shards), "--out", str(out),
           *BASE, "--set", "data.num_workers=2", "--max-steps", "400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    import psutil

    while time.time() < deadline and len(psutil.Process(proc.pid).children()) < 2:   # workers running
        time.sleep(0.2)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(w.is_running() for w in workers)       # the orphaned workers are still there...
    again = _main(out, ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "1", "--accept-changes")
    assert "in use by" not in again.stderr and again.returncode == 0, again.stderr[-1500:]   # ...yet no refusal
    for w in workers:
        if w.is_running():
            w.kill()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_last_checkpoint_stays(ct_shards, tmp_path):
    out = tmp_path / "full"
    first = _main(out, ct_shards, *BASE, "--set", "data.num_workers=0", "--max-steps", "2")
    assert first.returncode == 0
    saved = (out / "checkpoints" / "last.pt").read_bytes()
    # Files may not grow past 1 MB (RLIMIT_FSIZE): the next checkpoint's write fails like a full disk.
    script = ("import resource, signal, sys, runpy; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20)); "
              f"sys.argv = {[str(REPO / 'pretrain' / 'main.py'), '--shards', str(ct_shards), '--out', str(out), *BASE, '--set', 'data.num_workers=0', '--max-steps', '3', '--set', 'optim.lr=0.2', '--accept-changes']!r}; "
              f"runpy.run_path({str(REPO / 'pretrain' / 'main.py')!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain: cannot write last.pt") and "the previous one is intact" in last
    assert "Traceback" not in run.stderr
    assert (out / "checkpoints" / "last.pt").read_bytes() == saved
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
