"""Named options bound to settings (ctssl.core.options): the layers in one direction, the default stated once
and shown by the help, switches, phases that do not reset what was given before them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from ctssl.core.config import ConfigError
from ctssl.core.options import Settings, resolve


@dataclass
class Inner:
    epochs: int = 100


@dataclass
class Example:
    out: str = ""
    k: list[int] = field(default_factory=lambda: [10, 20])
    inner: Inner = field(default_factory=lambda: Inner(epochs=50))
    flag: bool = True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    settings = Settings(parser, Example, example="inner.epochs=3")
    settings.option("--k", key="k", type=int, action="append", help="k values")
    settings.option("--epochs", key="inner.epochs", type=int, help="epochs")
    settings.switch("--no-flag", key="flag", value=False, help="off")
    return parser


def test_defaults_then_file_then_set_then_options(tmp_path):
    parser = _parser()
    assert resolve(parser.parse_args([])) == Example()
    path = tmp_path / "c.yaml"
    path.write_text("inner: {epochs: 7}\nk: [1]\n")
    cfg = resolve(parser.parse_args(["--config", str(path), "--set", "inner.epochs=8", "--no-flag"]))
    assert (cfg.inner.epochs, cfg.k, cfg.flag) == (8, [1], False)
    cfg = resolve(parser.parse_args(["--config", str(path), "--set", "inner.epochs=8", "--epochs", "9", "--k", "3"]))
    assert (cfg.inner.epochs, cfg.k) == (9, [3])
    with pytest.raises(ConfigError, match="unknown key 'inner.nope'; valid keys in 'inner': epochs"):
        resolve(parser.parse_args(["--set", "inner.nope=1"]))
    with pytest.raises(ConfigError, match="did you mean 'inner.epochs'"):
        resolve(parser.parse_args(["--set", "epochs=1"]))


def test_the_help_shows_the_dataclasss_defaults_and_an_example():
    text = " ".join(_parser().format_help().split())
    assert "k values (default: 10 20)" in text and "epochs (default: 50)" in text
    assert "off (sets flag: false; default: true)" in text and "e.g. --set inner.epochs=3" in text


def test_a_phase_keeps_what_was_given_before_it():
    parser = argparse.ArgumentParser(prog="x")
    Settings(parser, Example, example="k=[1]").option("--k", key="k", type=int, action="append", help="k")
    phase = parser.add_subparsers(dest="phase").add_parser("run")
    Settings(phase, Example, example="k=[1]", suppress=True).option("--k", key="k", type=int, action="append",
                                                                      help="k")
    assert resolve(parser.parse_args(["--k", "4", "--set", "out=o", "run"])) == Example(out="o", k=[4])
    assert resolve(parser.parse_args(["run", "--k", "5"])).k == [5]
