"""Training never loses a good state: non-finite loss, gradients, BatchNorm statistics or weights are
found without a per-step host synchronisation, the run stops with one line naming the step and what went
wrong, the last good checkpoint and export stay, and metrics stay valid JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from ctssl.pretrain.health import Health, NonFiniteError

REPO = Path(__file__).resolve().parents[2]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))


def test_health_names_the_first_bad_step_and_what_went_wrong():
    model = _model()
    health = Health(model, torch.device("cpu"))
    accelerator = Accelerator(cpu=True)
    finite = torch.tensor(1.0)
    health.observe(0, finite, finite)
    health.check(accelerator, 1, weights=True)                     # all finite: nothing happens
    health.observe(1, finite, torch.tensor(float("inf")))
    health.observe(2, torch.tensor(float("nan")), finite)
    with pytest.raises(NonFiniteError, match=r"the loss and the gradients became non-finite .* at step 2;"):
        health.check(accelerator, 3)
    model2 = _model()
    model2[1].running_var[0] = float("inf")                        # finite loss, broken BN statistics
    health = Health(model2, torch.device("cpu"))
    health.observe(7, finite, finite)
    with pytest.raises(NonFiniteError, match="BatchNorm running statistics became non-finite .* at step 8"):
        health.check(accelerator, 8)
    model3 = _model()
    with torch.no_grad():
        model3[0].weight[0, 0] = float("nan")
    health = Health(model3, torch.device("cpu"))
    health.check(accelerator, 4)                                   # weights are checked before saving only
    with pytest.raises(NonFiniteError, match="the weights became non-finite"):
        health.check(accelerator, 4, weights=True)


def _run(out, shards, *extra):
    cmd = [sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", str(shards), "--out", str(out),
           "--batch-size", "4", "--set", "data.image_size=32", "--set", "data.num_workers=0",
           "--set", "monitor.knn_samples=16", "--set", "method.simclr.hidden_dim=32", "--set", "optim.name=sgd",
           "--set", "optim.warmup_epochs=0", "--set", "monitor.tensorboard=false", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_a_diverging_run_stops_with_one_line_and_keeps_the_good_state(ct_shards, tmp_path):
    out = tmp_path / "run"
    good = _run(out, ct_shards, "--max-steps", "2", "--set", "optim.lr=0.01")
    assert good.returncode == 0, good.stderr[-2000:]
    backbone = (out / "backbone.safetensors").read_bytes()
    bad = _run(out, ct_shards, "--max-steps", "30", "--set", "optim.lr=1e12", "--set", "monitor.log_every=5",
               "--set", "checkpoint_every=5", "--accept-changes")
    assert bad.returncode == 1, bad.stderr[-2000:]
    last = [line for line in bad.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("pretrain: training stopped:") and "non-finite" in last and "at step" in last
    assert "Traceback" not in bad.stderr
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert (out / "backbone.safetensors").read_bytes() == backbone          # the good export stays
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]   # valid JSON
    assert all(r.get("loss") is None or math.isfinite(r["loss"]) for r in records)
