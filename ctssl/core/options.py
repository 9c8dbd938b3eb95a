"""One configuration path for every command: named command-line options bound to the keys of a settings
dataclass (``ctssl.core.config``).

A command declares its settings once, as a dataclass (the defaults), and binds its named options to keys of it:

    settings = Settings(parser, "ctssl.eval.commands.settings:KNNCommand", example="knn.k=[20]")
    settings.option("--k", key="knn.k", type=int, action="append", help="k (repeatable)")

``Settings`` adds ``--config FILE`` and ``--set KEY=VALUE`` (whose help shows ``example``, a setting of this
command), and each option's help ends with the default the dataclass states. An option not given is ``None``
and leaves the layers below it in place; ``resolve(args)`` merges them in one direction: dataclass defaults ->
``--config`` -> ``--set`` -> named options. Unknown keys and wrong types are one-line ``ConfigError``s that name
the key (``resolve_config``). The dataclass may be named as ``"module:Class"``: it is imported only when help
is shown or the command runs, so that the command line starts without the stages' heavy imports.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from ctssl.core.config import resolve_config

PREFIX = "setting:"          # argparse dest of a bound option: PREFIX + its key


class Settings:
    """The settings of one command or phase: ``--config``, ``--set`` and named options bound to ``schema``'s keys.
    ``suppress``: no defaults (a phase's parser under a command that also takes the options before the phase, so
    the phase does not reset them)."""

    def __init__(self, parser: argparse.ArgumentParser, schema: type | str, example: str, suppress: bool = False):
        self.parser, self.schema, self.suppress = parser, schema, suppress
        group = parser.add_argument_group("settings (defaults, then --config, then --set, then the options above)")
        group.add_argument("--config", metavar="FILE", default=self._default(None),
                           help="YAML file holding only the settings that differ from the defaults")
        group.add_argument("--set", metavar="KEY=VALUE", action="append", default=self._default([]), dest="overrides",
                           help=f"override one setting (repeatable), e.g. --set {example}; applied after --config")
        parser.set_defaults(_settings=schema)

    def option(self, *flags: str, key: str, help: str, **kwargs) -> None:
        """A named option that sets ``key``; its help ends with the dataclass's default."""
        if "choices" not in kwargs:
            kwargs.setdefault("metavar", flags[0].lstrip("-").upper().replace("-", "_"))
        action = self.parser.add_argument(*flags, dest=PREFIX + key, default=self._default(None),
                                          help=f"{help} (default: %(setting_default)s)", **kwargs)
        action.setting_default = _Default(self.schema, key)      # looked up when the help is shown

    def switch(self, *flags: str, key: str, value: Any, help: str) -> None:
        """A flag that sets ``key`` to ``value``."""
        action = self.parser.add_argument(*flags, dest=PREFIX + key, default=self._default(None), action="store_const",
                                          const=value, help=f"{help} (sets {key}: {show(value)}; default: "
                                                            "%(setting_default)s)")
        action.setting_default = _Default(self.schema, key)

    def _default(self, value):
        return argparse.SUPPRESS if self.suppress else value


def resolve(args: argparse.Namespace):
    """The command's settings: defaults, ``--config``, ``--set``, then the named options that were given."""
    return resolve_config(schema_of(args._settings), getattr(args, "config", None), getattr(args, "overrides", []),
                          named_options(args))


def named_options(args: argparse.Namespace) -> dict[str, Any]:
    """{key: value} of the bound options (``None``: not given), for a command that layers more itself."""
    return {name[len(PREFIX):]: value for name, value in vars(args).items() if name.startswith(PREFIX)}


def schema_of(schema: type | str) -> type:
    """The dataclass, imported when named as ``"module:Class"``."""
    if isinstance(schema, str):
        module, _, name = schema.partition(":")
        return getattr(importlib.import_module(module), name)
    return schema


class _Default:
    def __init__(self, schema: type | str, key: str):
        self.schema, self.key = schema, key

    def __str__(self) -> str:
        return show(default_of(schema_of(self.schema), self.key))


def default_of(schema: type, key: str) -> Any:
    """The default of a dotted ``key`` of a settings dataclass (every field of which has a default)."""
    value: Any = schema()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def show(value: Any) -> str:
    """A default as the help shows it."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    if value in ("", None):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
