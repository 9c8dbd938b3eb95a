"""An epoch is a pass, in a real two-process run with two loader workers each (accelerate launch, gloo):
every training sample once (but for the fewer than one global batch left over), a resumed run reads
exactly what an uninterrupted one reads, and torch.compile runs in the same group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "pretrain" / "main.py")]
SMALL = ["--batch-size", "4", "--set", "data.image_size=32", "--set", "monitor.knn_samples=16",
         "--set", "method.simclr.hidden_dim=32", "--set", "monitor.tensorboard=false", "--set", "monitor.knn_every=1000",
         "--set", "data.shuffle_buffer=16", "--set", "data.interleave=2"]


def _launch(out, shards, *extra):
    run = subprocess.run([*LAUNCH, "--shards", str(shards), "--out", str(out), *SMALL, *extra],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run.stderr


def _keys(out) -> list[tuple[int, str]]:
    rows = []
    for path in sorted((Path(out) / "keys").glob("rank*.txt")):
        rows += [(int(step), key) for step, key in (line.split("\t") for line in path.read_text().splitlines())]
    return sorted(rows)


def test_one_epoch_reads_every_training_sample_once_and_a_resumed_run_the_same(ct_shards, tmp_path):
    manifest = json.loads((Path(ct_shards) / "manifest.json").read_text())
    train = manifest["splits"]["train"]["samples"]
    per_epoch = train // 8
    whole = tmp_path / "whole"
    _launch(whole, ct_shards, "--max-steps", str(per_epoch), "--set", "data.num_workers=2",
            "--set", "data.record_keys=true")
    keys = _keys(whole)
    seen = [k for _, k in keys]
    assert len(seen) == per_epoch * 8 and len(set(seen)) == len(seen)        # each sample at most once...
    assert train - len(set(seen)) < 8                                         # ...and all but < one global batch
    from ctssl.shards.reader import iter_samples

    assert set(seen) <= {s["key"] for s in iter_samples(ct_shards, split="train")}
    # Interrupted half-way and resumed: the same samples at the same steps.
    parts = tmp_path / "parts"
    _launch(parts, ct_shards, "--max-steps", str(per_epoch // 2 + 1), "--set", "data.num_workers=2",
            "--set", "data.record_keys=true")
    _launch(parts, ct_shards, "--max-steps", str(per_epoch), "--set", "data.num_workers=2",
            "--set", "data.record_keys=true", "--accept-changes")
    assert _keys(parts) == keys


def test_compile_in_the_two_process_group(ct_shards, tmp_path):
    log = _launch(tmp_path / "compiled", ct_shards, "--max-steps", "2", "--set", "data.num_workers=0",
                  "--set", "compile=true", "--set", "monitor.log_every=1")
    assert "torch.compile:" in log and "graph(s)" in log
    metrics = [json.loads(line) for line in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2] and all(m["loss"] is not None for m in metrics
                                                                          if "loss" in m)


def test_resume_on_other_world_sizes_keeps_the_epoch_one_pass(ct_shards, tmp_path):
    """2 processes x 2 workers, then 1 process x 1 worker, then 2 x 1 (the global batch fixed, as a recipe
    fixes it): every training sample of the epoch once, the very samples of an uninterrupted run, counted by
    keys; each resume says what it dealt again and what its loader read to reach its position."""
    manifest = json.loads((Path(ct_shards) / "manifest.json").read_text())
    per_epoch = manifest["splits"]["train"]["samples"] // 8
    fixed = ["--set", "data.global_batch_size=8", "--set", "data.record_keys=true"]
    small = [a for a in SMALL if a not in ("--batch-size", "4")]

    def launch(out, processes, workers, steps):
        command = ([*LAUNCH[:3], *(["--multi_gpu"] if processes > 1 else []), "--num_processes", str(processes),
                    *LAUNCH[6:]])
        run = subprocess.run([*command, "--shards", str(ct_shards), "--out", str(out), *small, *fixed,
                              "--max-steps", str(steps), "--set", f"data.num_workers={workers}", "--accept-changes"],
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        return run.stderr

    whole = tmp_path / "whole"
    launch(whole, 2, 2, per_epoch)
    expected = sorted(k for _, k in _keys(whole))
    parts = tmp_path / "parts"
    launch(parts, 2, 2, per_epoch // 3)
    log_one = launch(parts, 1, 1, 2 * per_epoch // 3)
    log_two = launch(parts, 2, 1, per_epoch)
    keys = _keys(parts)
    assert [s for s, _ in keys] == sorted(s for s in range(per_epoch) for _ in range(8))   # 8 samples every step
    seen = sorted(k for _, k in keys)
    assert len(seen) == len(set(seen)) and seen == expected        # once each, the uninterrupted run's samples
    for log, (old, new) in ((log_one, ("2 x 2", "1 process(es) x 1")), (log_two, ("1 x 1", "2 process(es) x 1"))):
        assert f"resuming on {new} loader worker(s) (the checkpoint's: {old})" in log
        assert "samples read without decoding by this process's" in log
    reach = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()
             if "loader_reach_samples_read" in line]
    assert len(reach) == 3
    print("samples read to reach the position (rank 0):", [r["loader_reach_samples_read"] for r in reach],
          "of", manifest["splits"]["train"]["samples"], "training samples")


def test_another_world_size_with_a_per_process_batch_is_refused_in_one_line(ct_shards, tmp_path):
    out = tmp_path / "run"
    _launch(out, ct_shards, "--max-steps", "2", "--set", "data.num_workers=0")
    run = subprocess.run([sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", str(ct_shards), "--out",
                          str(out), *SMALL, "--max-steps", "4", "--set", "data.num_workers=0", "--accept-changes"],
                         capture_output=True, text=True, timeout=600)
    errors = [line for line in run.stderr.strip().splitlines() if line.startswith("pretrain")]   # not log lines
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert "2 process(es) x 4 samples (global batch 8), this launch has 1 x 4 = 4" in errors[0]
    assert "--set data.global_batch_size=8" in errors[0]
    assert "Traceback" not in run.stderr
