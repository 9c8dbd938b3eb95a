"""The configuration convention (ctssl.core.config): layers in order, errors naming the key, saved configs
read back."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

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
