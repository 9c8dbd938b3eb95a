"""Bad input, everywhere: every command answers a bad command line or configuration with one line saying
what is wrong, exit status 2 and no traceback (--debug shows it); the guards that isolate untrusted files
(time budget, library messages) do what they say."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from ctssl.data.guard import BudgetExceeded, LibraryMessages, time_budget

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "bad.yaml").write_text("seed: [unclosed\n  - x: {\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "labels.csv").write_text("case,region\n1,thorax\n")
    (root / "a_file").write_text("I am a file, not a folder\n")
    (root / "empty").mkdir()
    (root / "sweep.yaml").write_text("out: x\n")
    return root


def _cases(root: Path, shards: Path):
    out = str(root / "out")
    src = str(root / "empty")
    return [
        (["ingest", src, "--out", out, "--config", str(root / "bad.yaml")], "not valid YAML"),
        (["ingest", src, "--out", out, "--config", str(root / "list.yaml")], "mapping"),
        (["ingest", src, "--out", out, "--config", str(root / "missing.yaml")], "does not exist"),
        (["ingest", str(root / "nowhere"), "--out", out], "does not exist"),
        (["ingest", src, "--out", str(root / "a_file")], "is a file"),
        (["ingest", src, "--out", out, "--labels", str(root / "labels.csv")], "key columns"),
        (["ingest", src, "--out", out, "--image-size", "3"], "image_size"),
        (["ingest", src, "--out", out, "--workers", "0"], "workers"),
        (["ingest", src, "--out", out, "--set", "splits.train=-1"], "split fractions"),
        (["ingest", src, "--out", out, "--set", "nope=1"], "nope"),
        (["ingest", src, "--out", out, "--set", "image_size=abc"], "image_size"),
        (["ingest", src, "--out", out, "--salt-file", str(root / "nosalt")], "Salt file"),
        (["ingest-array", "task", "--out", str(root / "empty"), "--task-index", "0"], "No ingest plan"),
        (["ingest-array", "merge", "--out", str(root / "empty")], "No ingest plan"),
        (["shards", "verify", str(root / "empty")], "not a ctssl shard folder"),
        (["shards", "verify", str(root / "nowhere")], "does not exist"),
        (["shards", "inspect", str(shards), "--window", "nope"], "Unknown window"),
        (["shards", "shuffle", str(root / "empty"), "--out", out], "not a ctssl shard folder"),
        (["shards", "shuffle", str(shards), "--out", str(shards)], "folder of their own"),
        (["shards", "shuffle", str(shards), "--out", out, "--split", "nope"], "nope"),
        (["knn", "--data", str(root / "empty"), "--backbone", "random:resnet18:3", "--out", out], "shard folder"),
        (["probe", "--data", str(shards), "--backbone", "nonsense:1", "--out", out], "nonsense"),
        (["knn", "--data", str(shards), "--backbone", "random:resnet18:3", "--out", out, "--label", "nope"], "nope"),
        (["sweep", "plan", "--config", str(root / "sweep.yaml")], "dataset"),
        (["sweep", "plan", "--config", str(root / "bad.yaml")], "not valid YAML"),
        (["synth", "--out", out, "--set", "patients=-1"], "patients"),
        (["report", "--out", str(root / "a_file")], "a_file"),
    ]


def test_every_bad_command_line_is_one_clear_line(files, eval_shards):
    failures = []
    env = {**os.environ, "CTSSL_SALT": "bad-input-salt-0123456789"}
    for args, expected in _cases(files, eval_shards):
        run = subprocess.run([sys.executable, "-m", "ctssl", *args], capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in env.items() if not (args[0] == "ingest" and "--salt-file" in args
                                                                        and k == "CTSSL_SALT")})
        lines = [line for line in run.stderr.splitlines() if line.strip() and "WARNING" not in line]
        ok = run.returncode == 2 and "Traceback" not in run.stderr and expected.lower() in run.stderr.lower() \
            and len(lines) == 1
        if not ok:
            failures.append((args, run.returncode, run.stderr[-600:]))
    assert not failures, "\n\n".join(map(str, failures))


def test_debug_shows_the_traceback(files):
    run = subprocess.run([sys.executable, "-m", "ctssl", "ingest", str(files / "empty"), "--out", str(files / "o"),
                          "--config", str(files / "bad.yaml"), "--debug"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" in run.stderr


def test_time_budget_stops_a_slow_block():
    start = time.perf_counter()
    with pytest.raises(BudgetExceeded, match="longer than 0.2 s"):
        with time_budget(0.2):
            while True:
                pass
    assert time.perf_counter() - start < 2
    with time_budget(5):              # a block within its budget is untouched, and the alarm is cleared
        pass
    time.sleep(0.05)


def test_library_messages_are_counted_without_their_text(caplog):
    messages = LibraryMessages()
    with messages.capture():
        warnings.warn("Invalid value for VR UI: '1.2.03.SECRET'", UserWarning)
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^SECRET'")
    counts = messages.take()
    assert sum(counts.values()) == 2 and not any("SECRET" in k for k in counts)
    assert "SECRET" not in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: permissions cannot make one unreadable")
def test_an_unreadable_folder_is_counted(tmp_path):
    from ctssl.data.ingest.discover import discover

    locked = tmp_path / "src" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    try:
        found = discover([tmp_path / "src"])
    finally:
        locked.chmod(0o755)
    assert [reason for _, reason in found.skipped] == ["folder no permission to read"]
