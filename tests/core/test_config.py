"""The ctssl command line and the configuration convention."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from ctssl.cli.main import COMMANDS, main
from ctssl.core.config import ConfigError, resolve_config, save_config, load_config


@dataclass
class Inner:
    rate: float = 0.1
    name: str = "a"


@dataclass
class Outer:
    seed: int = 0
    out: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("seed: 5\ninner:\n  rate: 0.5\n  name: file\n")
    cfg = resolve_config(Outer, path, ["inner.name=set", "seed=6"], {"seed": 7, "out": None})
    assert (cfg.seed, cfg.out, cfg.inner.rate, cfg.inner.name) == (7, "x", 0.5, "set")


def test_unknown_key_and_bad_type_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        resolve_config(Outer, None, ["nope=1"])
    with pytest.raises(ConfigError, match="seed"):
        resolve_config(Outer, None, ["seed=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        resolve_config(Outer, None, ["seed"])
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(Outer, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config(Outer, None, ["inner.rate=0.25"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Outer, tmp_path / "c.yaml") == cfg


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
        for parser in [sub, *(phases[0].choices.values() if phases else [])]:
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
