"""Bad input, everywhere: every command answers a bad command line or configuration with one line saying
what is wrong, exit status 2 and no traceback (--debug shows it); the guards that isolate untrusted files
(time budget, library messages) do what they say."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctssl.cli.main import COMMANDS, main


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
        (["ingest", src, "--out", out, "--masks", str(root / "labels.csv")], "needs columns image and mask"),
        (["ingest", src, "--out", out, "--masks", str(root / "missing.csv")], "columns image, mask"),
        (["ingest", src, "--out", out, "--set", "mask_tolerance=2"], "mask_tolerance"),
        (["ingest", src, "--out", out, "--set", "mask_labels={0: bg}"], "class ids 1..255"),
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


def test_help_explains_every_command_and_phase():
    """``ctssl --help`` in a process of its own; every command's and phase's help in this one (their defaults are
    looked up in the settings when the help is shown)."""
    import argparse

    from ctssl.cli.main import build_parser

    top = subprocess.run([sys.executable, "-m", "ctssl", "--help"], capture_output=True, text=True)
    assert top.returncode == 0, top.stderr
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        assert name in top.stdout
        sub = commands.choices[name]
        phases = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        runnable = [sub] if not phases or not phases[0].required else []     # a command run without a phase
        for parser in [*runnable, *(phases[0].choices.values() if phases else [])]:
            text = parser.format_help()
            assert "--log-level" in text and "%(" not in text, parser.prog
            assert ("--set" in text) == ("--config" in text), parser.prog


def test_bad_override_exits_2_with_message(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path / "o"), "--set", "no_such_key=1"])
    assert code == 2
    assert "no_such_key" in capsys.readouterr().err


def test_synth_cli_end_to_end(tmp_path):
    out = tmp_path / "cli"
    code = main(["synth", "--out", str(out), "--patients", "1", "--matrix", "48", "--no-natural",
                 "--set", "thickness_mm=[5.0]"])
    assert code == 0
    assert (out / "synth-config.yaml").read_text().count("patients: 1") == 1
    assert (out / "labels" / "slices.csv").exists()
    assert not (out / "natural-standin").exists()


def test_missing_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    code = main(["knn", "--data", str(tmp_path / "nowhere"), "--backbone", "random:resnet18:1",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err
