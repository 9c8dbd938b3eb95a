"""`accelerate launch --multi_gpu --num_processes 2 pretrain/main.py` on CPU (gloo), for real:
SimCLR and DINO run, checkpoint, resume, stop on SIGTERM and resume, and ranks with uneven
shards finish."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
SMALL = ["--batch-size", "4", "--set", "data.image_size=32", "--set", "data.num_workers=1",
         "--set", "monitor.log_every=1", "--set", "monitor.knn_samples=16", "--set", "checkpoint_every=2",
         "--set", "method.simclr.hidden_dim=64", "--set", "method.dino.hidden_dim=64",
         "--set", "method.dino.output_dim=128", "--set", "method.dino.local_size=16",
         "--set", "method.dino.local_crops=2"]


def launch(out, shards, *extra, background=False, module=False):
    """``accelerate launch pretrain/main.py`` (as documented for a checkout), or with ``module``
    ``accelerate launch -m ctssl.pretrain.main`` (as documented for an installed ctssl)."""
    entry = ["-m", "ctssl.pretrain.main"] if module else [str(REPO / "pretrain" / "main.py")]
    cmd = [*ACCELERATE, *entry, "--shards", str(shards), "--out", str(out), *SMALL, *extra]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_simclr_two_processes_then_resume(ct_shards, tmp_path):
    out = tmp_path / "simclr"
    launch(out, ct_shards, "--max-steps", "3")
    config = (out / "config.yaml").read_text()
    assert "processes: 2" in config and "global_batch: 8" in config
    assert "sync_bn: true" in config.split("resolved:")[1]          # ResNet on 2 processes: synchronised BN
    import torch

    rngs = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])   # each rank its own stream
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert (out / "checkpoints" / "last.pt").exists() and (out / "backbone.safetensors").exists()
    card = json.loads((out / "backbone.json").read_text())
    assert card["method"] == "simclr" and card["steps"] == 3 and card["in_chans"] == 3
    log = launch(out, ct_shards, "--max-steps", "5", "--accept-changes")   # a longer schedule: a changed setting
    assert "resumed from" in log and "at step 3" in log
    steps = [m["step"] for m in metrics(out) if "loss" in m]
    assert steps == [1, 2, 3, 4, 5]  # continued, not restarted


def test_dino_two_processes_on_natural_images(natural_shards, tmp_path):
    out = tmp_path / "dino"
    launch(out, natural_shards, "--method", "dino", "--max-steps", "3", "--set", "monitor.knn_label=class",
           module=True)
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert any("knn_accuracy" in m for m in metrics(out))
    card = json.loads((out / "backbone.json").read_text())
    assert card["data"]["kind"] == "natural" and card["exported"] == "teacher"


def test_sigterm_saves_and_the_next_launch_continues(ct_shards, tmp_path):
    out = tmp_path / "preempted"
    proc = launch(out, ct_shards, "--max-steps", "400", "--set", "checkpoint_every=1000", background=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and sum("loss" in m for m in metrics(out)) >= 3:
            break
        time.sleep(0.5)
    # SLURM signals every process of the job step: do the same to the two workers.
    import psutil

    def is_launcher(p):
        return any("accelerate" in part for part in p.cmdline())

    # The two training processes: children of the launcher (not their data-loader workers).
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if not is_launcher(p) and is_launcher(p.parent())
               and any("pretrain/main.py" in part for part in p.cmdline())]
    assert len(workers) == 2
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert "SIGTERM received: checkpoint saved at step" in output
    import torch

    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 3 <= saved < 400
    log = launch(out, ct_shards, "--max-steps", str(saved + 2), "--accept-changes")
    assert f"at step {saved}" in log
    assert [m["step"] for m in metrics(out) if "loss" in m][-2:] == [saved + 1, saved + 2]


def test_uneven_shards_finish(ct_shards, tmp_path):
    manifest = json.loads((Path(ct_shards) / "manifest.json").read_text())
    sizes = [s["samples"] for s in manifest["shards"] if s["split"] == "train"]
    assert len(sizes) >= 3 and max(sizes) >= 2 * min(sizes)  # the shards really are uneven
    out = tmp_path / "uneven"
    launch(out, ct_shards, "--max-steps", "4", "--set", "data.num_workers=2")
    assert [m["step"] for m in metrics(out) if "loss" in m] == [1, 2, 3, 4]


def test_plain_python_with_bf16_and_channels_last(ct_shards, tmp_path):
    out = tmp_path / "bf16"
    cmd = [sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", str(ct_shards), "--out", str(out),
           *SMALL, "--max-steps", "2", "--set", "precision=bf16", "--set", "channels_last=true",
           "--backbone", "resnet18"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert "precision: bf16" in (out / "config.yaml").read_text()


def test_bad_config_is_a_clear_error(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "pretrain" / "main.py"), "--set", "optim.nope=1"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "optim.nope" in run.stderr
