"""The configuration convention shared by every ctssl stage.

A stage declares its settings as a dataclass (the defaults). A run's configuration is resolved in
one direction, each layer overriding the one before (as dinov2 does with OmegaConf):

1. the dataclass defaults,
2. an experiment file (YAML) holding only its differences (``--config FILE``),
3. ``--set key.sub=value`` overrides and the stage's named command-line options.

Unknown keys and values of the wrong type are errors that name the key. The resolved
configuration is written beside the stage's outputs (``save_config``) and is what the next stage
reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ctssl.core.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be resolved; the message says which key and why."""


def recipe_names(folder: str | Path) -> list[str]:
    """The recipes in ``folder`` (one YAML layer each, named by its file), sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def recipe_path(folder: str | Path, name: str) -> Path:
    """The YAML layer of recipe ``name`` in ``folder``; an unknown name is a ConfigError listing the valid ones."""
    path = Path(folder) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"Unknown recipe '{name}'. Valid recipes are {recipe_names(folder)}.")
    return path


def resolve_config(
    schema: type[T],
    config_file: str | Path | Sequence[str | Path | Mapping] | None = None,
    overrides: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
) -> T:
    """Merge defaults, experiment file(s) and overrides into a typed config object.

    Args:
        schema: dataclass type holding the defaults.
        config_file: optional YAML file with the experiment's differences, or a list of layers
            (YAML files or mappings) merged in order, e.g. a recipe then the user's file.
        overrides: ``key.sub=value`` strings (``--set``), applied after the files.
        options: named command-line options (dotted key -> value); ``None`` values mean
            "not given" and are skipped. Applied last.

    Returns:
        An instance of ``schema`` (nested dataclasses are instantiated).
    """
    layers = [] if config_file is None else (
        list(config_file) if isinstance(config_file, (list, tuple)) else [config_file])
    cfg = OmegaConf.structured(schema)
    for layer in layers:
        where = "a recipe's settings" if isinstance(layer, Mapping) else f"config file '{layer}'"
        cfg = _merged(cfg, layer if isinstance(layer, Mapping) else load_yaml_layer(layer), where)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key=value (e.g. --set seed=3).")
        cfg = _merged(cfg, OmegaConf.from_dotlist([item]), f"--set {item}")
    for key, value in (options or {}).items():
        if value is not None:
            try:
                OmegaConf.update(cfg, key, value, merge=False)
            except OmegaConfBaseException as err:
                raise ConfigError(_message(cfg, err, f"option for '{key}'")) from None
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_message(cfg, err, "the settings")) from None


def _merged(cfg: DictConfig, layer, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as err:
        raise ConfigError(_message(cfg, err, where)) from None


def _message(cfg: DictConfig, err: OmegaConfBaseException, where: str) -> str:
    """One line naming the key, what is wrong and, for an unknown key, the valid keys beside it."""
    key = getattr(err, "full_key", None) or ""
    first_line = str(err).splitlines()[0]
    if "not in" in first_line or "Missing key" in first_line:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        valid = sorted(f"{k}.*" if isinstance(node[k], DictConfig) else k for k in node) \
            if isinstance(node, DictConfig) else []
        nested = [k for k in _keys(cfg) if k.endswith("." + name)]
        return (f"Invalid configuration in {where}: unknown key '{key}'"
                + (f" (did you mean {' or '.join(repr(k) for k in nested)}?)" if nested else "")
                + (f"; valid keys{' in ' + repr(parent) if parent else ''}: {', '.join(valid)}" if valid else "") + ".")
    if "ListConfig" in first_line:
        return f"Invalid configuration in {where}: key '{key}' takes a list, e.g. {key}=[a,b]."
    # OmegaConf's messages name the expected type; keep them, drop the noise.
    return f"Invalid configuration in {where} (key '{key}'): {first_line}"


def _keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a config, nested sections included."""
    out = []
    for k in node:
        out.append(prefix + str(k))
        if isinstance(node[k], DictConfig):
            out += _keys(node[k], f"{prefix}{k}.")
    return out


def load_yaml_layer(path: str | Path) -> DictConfig:
    """One experiment file: a YAML mapping; a clear ConfigError when it is missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        layer = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"Config file '{path}' is not valid YAML{where}: "
                          f"{getattr(err, 'problem', None) or err}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Config file '{path}' cannot be read ({type(err).__name__}).") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"Config file '{path}' must hold a mapping of settings (key: value), not a list.")
    return layer


def to_yaml(cfg: Any) -> str:
    """The YAML text of a config dataclass (or plain mapping)."""
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    elif not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: Any) -> dict:
    """A plain, JSON-serialisable dict of a config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    atomic_write_text(path, to_yaml(cfg))
    return path


def load_config(schema: type[T], path: str | Path) -> T:
    """Read a config written by ``save_config`` back into its dataclass."""
    return resolve_config(schema, config_file=path)
