"""Two machines for real: the two-machine launch as docs/pretraining.md writes it, run as two `accelerate launch
--num_machines 2 --machine_rank 0|1` groups on this host (one process each, gloo, rendezvous on 127.0.0.1),
equals a one-machine run of the same world size: the same samples at every step and the same losses."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = ("accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 "
       "--main_process_port 29500 --num_processes 16 -m ctssl.pretrain.main --recipe simclr_rn50_ct "
       "--shards /scratch/ct-shuffled --out /scratch/run1")
SMALL = ("--backbone resnet18 --set data.global_batch_size=8 --set data.image_size=32 --set data.num_workers=1 "
         "--set monitor.log_every=1 --set monitor.knn_samples=16 --set method.simclr.hidden_dim=64 "
         "--set data.record_keys=true --max-steps 6")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(doc: str, shards, out, **changes) -> list[str]:
    line = doc.replace("accelerate launch", f"{sys.executable} -m accelerate.commands.launch", 1)
    line = line.replace("/scratch/ct-shuffled", str(shards)).replace("/scratch/run1", str(out))
    for old, new in changes.items():
        line = line.replace(old, new)
    return shlex.split(line) + shlex.split(SMALL)


def _losses(out):
    return {m["step"]: m["loss"] for m in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
            if "loss" in m}


def _keys(out):
    rows = {}
    for path in sorted((Path(out) / "keys").glob("rank*.txt")):
        for line in path.read_text().splitlines():
            step, key = line.split("\t")
            rows.setdefault(int(step), []).append(key)
    return {s: sorted(k) for s, k in rows.items()}


def test_doc_command_is_the_docs():
    assert DOC in (REPO / "docs" / "pretraining.md").read_text()


def test_two_machines_equal_one_machine_of_the_same_world_size(ct_shards, tmp_path):
    two, one, port = tmp_path / "two", tmp_path / "one", str(_port())
    groups = [subprocess.Popen(_command(DOC, ct_shards, two, **{"--machine_rank 0": f"--machine_rank {rank}",
                                                                   "10.0.0.1": "127.0.0.1", "29500": port,
                                                                   "--num_processes 16": "--num_processes 2"}),
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for rank in (0, 1)]
    outputs = [g.communicate(timeout=600)[0] for g in groups]
    assert [g.returncode for g in groups] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    single = _command(DOC, ct_shards, one, **{"--num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 "
                                               "--main_process_port 29500 ": "",
                                               "--num_processes 16": "--num_processes 2"})
    run = subprocess.run(single, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "processes: 2" in (two / "config.yaml").read_text() and (two / "logs" / "rank1.log").exists()
    assert _keys(two) == _keys(one) and sorted(_keys(two)) == list(range(6))
    assert all(len(k) == 8 for k in _keys(two).values())
    a, b = _losses(two), _losses(one)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    difference = max(abs(a[s] - b[s]) for s in a)
    print("two machines vs one, largest loss difference over 6 steps:", difference, "losses", a)
    assert difference <= 1e-5 * max(abs(v) for v in b.values())
