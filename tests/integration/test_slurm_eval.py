"""slurm/eval-sweep.sh on a real SLURM: array jobs in any order, partial runs resumed, a report step
that names unfinished jobs; the same records as running the sweep in one process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CTSSL = [sys.executable, "-m", "ctssl"]


def _sweep(path: Path, shards, out: Path) -> Path:
    path.write_text(f"""out: {out}
data: {shards}
label: region
backbones: ["random:resnet18:3", "random:resnet18:3:1"]
tasks: [knn, probe]
seeds: [0]
image_size: 32
n_boot: 100
knn: {{k: [5, 20]}}
probe: {{epochs: 10, lrs: [0.01, 0.1], weight_decays: [0.0]}}
""")
    return path


def _metrics(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {(r["task"], r["backbone"], r.get("variant", ""), r["seed"]): r["test"] for r in records}


def test_sweep_array_any_order_and_report(slurm, eval_shards, tmp_path):
    out = tmp_path / "sweep"
    config = _sweep(tmp_path / "sweep.yaml", eval_shards, out)
    assert subprocess.run([*CTSSL, "sweep", "plan", "--config", str(config), "--count"], capture_output=True,
                          text=True, check=True).stdout.strip() == "4"
    # Two jobs out of order on this machine; the report names the two that have not run.
    for index in (3, 1):
        subprocess.run([*CTSSL, "sweep", "task", "--config", str(config), "--index", str(index)], check=True)
    report = subprocess.run([*CTSSL, "sweep", "report", "--config", str(config)], capture_output=True, text=True)
    assert report.returncode == 1 and "indexes [0, 2]" in report.stdout, report.stdout + report.stderr
    done = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}

    # The whole array on SLURM: finished jobs are no-ops, the others run, then the report step.
    env = {"CTSSL": " ".join(CTSSL), "CTSSL_SWEEP": str(config)}
    submitted = slurm.run("bash", str(REPO / "slurm" / "eval-sweep.sh"), "--gpus-per-node=0", "--cpus-per-task=2",
                          "--mem=4G", env=env, cwd=tmp_path)
    tasks, report_job = re.search(r"sweep (\d+) .*report (\d+)", submitted).groups()
    states = slurm.wait(tasks, report_job, timeout=600)
    assert all(s == "COMPLETED" for s in states.values()), (states, *(p.read_text()[-1500:] for p in tmp_path.glob("*.out")))
    assert all((out / "runs" / name).stat().st_mtime_ns == stamp for name, stamp in done.items())

    # One process, in order, elsewhere: the same numbers.
    reference = tmp_path / "reference"
    subprocess.run([*CTSSL, "sweep", "run", "--config", str(config), "--set", f"out={reference}"], check=True,
                   capture_output=True)
    assert _metrics(out) == _metrics(reference)
    assert len(_metrics(out)) == 2 * (2 + 1)             # backbones x (2 k + probe)
    comparisons = (out / "comparisons.jsonl").read_text().splitlines()
    assert len(comparisons) == 3 and all('"baseline": "random:resnet18:3"' in c for c in comparisons)
