"""What the evaluation commands share: the named options of their common settings (``eval.commands.settings``:
what is evaluated, on what, with how many labels and seeds, where results go), the check and the resolved config
written before a command runs, and the console table printed after. Imports nothing heavy: the command line
builds every command's options at start."""

from __future__ import annotations

import json
from pathlib import Path

from ctssl.core.config import ConfigError, save_config
from ctssl.core.options import Settings


def add_image_size(settings: Settings) -> None:
    settings.option("--image-size", key="image_size", type=int,
                    help="backbone input size; 0: each backbone at the size it was pretrained at, 224 without one")


def add_cache(settings: Settings) -> None:
    settings.option("--cache", key="cache", help="feature cache folder (none: OUT/features)")


def add_target_options(settings: Settings) -> None:
    """What is evaluated and how each backbone sees its images."""
    settings.option("--data", "--shards", key="data",
                    help="dataset: a shard folder, imagefolder:ROOT, a .csv (path,label[,split,patient]) or a "
                         "MedMNIST .npz")
    settings.option("--backbone", key="backbones", action="append",
                    help="random:NAME:IN_CHANS, imagenet:NAME:FILE, radimagenet:FILE, a backbone.safetensors or a "
                         "checkpoint .pt (repeatable; the first is the baseline of paired comparisons)")
    settings.option("--label", key="label", help="label key in the shards; a+b+c for multi-label")
    add_image_size(settings)
    settings.option("--grey-window", key="grey_window",
                    help="HU window of CT inputs for backbones of grey or natural pictures (ImageNet, RadImageNet, "
                         "natural-image pretraining), replicated to their channels")
    settings.option("--n-boot", key="n_boot", type=int, help="bootstrap resamples for CIs")


def add_record_options(settings: Settings, folder: str, default: str) -> None:
    """The name and folder of a command that writes one named record (OUT/<folder>/<name>.json)."""
    settings.option("--name", key="name", help=f"name of the record; none: {default}")
    settings.option("--out", key="out", help=f"output folder ({folder}/<name>.json, with its figures and settings)")


def eval_settings(parser, schema: str, example: str, cache: bool) -> Settings:
    """The settings of an evaluation command of ``eval.commands.settings.EvalCommand``, its options, and the
    feature cache's where the command extracts features."""
    settings = Settings(parser, schema, example)
    add_eval_options(settings)
    if cache:
        add_cache(settings)
    return settings


def add_eval_options(settings: Settings) -> None:
    """The options of ``eval.commands.settings.EvalCommand``."""
    add_target_options(settings)
    settings.option("--name", key="names", action="append",
                    help="readable name of each --backbone, in the same order (repeatable; for the report)")
    settings.option("--fraction", key="fractions", type=float, action="append",
                    help="fraction of training patients with labels (repeatable)")
    settings.option("--seed", key="seeds", type=int, action="append", help="seed (repeatable)")
    settings.option("--out", key="out",
                    help="results folder: runs/ (one record per run), results.jsonl, comparisons.jsonl")


def require(command: str, cfg, *keys: str) -> None:
    """A ConfigError naming every setting of ``keys`` that is empty."""
    missing = [k for k in keys if not getattr(cfg, k)]
    if missing:
        flags = {"data": "--data", "backbones": "--backbone", "backbone": "--backbone", "out": "--out", "a": "--a",
                 "b": "--b"}
        raise ConfigError(f"ctssl {command} needs {', '.join(missing)}: pass "
                          f"{' '.join(flags.get(k, '--' + k) for k in missing)} or set them in --config.")


def prepare_record(command: str, cfg, folder: str, default_name: str, *required: str) -> str:
    """Check a command that writes one named record (OUT/<folder>/<name>.json), write its settings beside it
    (<name>-config.yaml) before anything runs; returns the record's name."""
    require(command, cfg, *required, "out")
    name = cfg.name or default_name
    write_settings(cfg, Path(cfg.out) / folder / f"{name}-config.yaml")
    return name


def write_settings(cfg, path: str | Path) -> Path:
    """The resolved settings, written atomically beside the command's outputs."""
    return save_config(cfg, path)


def prepare(command: str, cfg) -> None:
    """Check an evaluation command's settings, write them as OUT/<command>-config.yaml and the backbones' names
    as OUT/names.json, before anything runs."""
    require(command, cfg, "data", "backbones", "out")
    if cfg.names and len(cfg.names) != len(cfg.backbones):
        raise ConfigError(f"{len(cfg.names)} --name for {len(cfg.backbones)} --backbone; give one name per backbone, "
                          "in order.")
    from ctssl.eval.records.store import save_names

    write_settings(cfg, Path(cfg.out) / f"{command}-config.yaml")
    save_names(cfg.out, cfg.backbones, cfg.names)


def finish(cfg, records: list[dict]) -> int:
    """Collate OUT/results.jsonl and comparisons, print the table and the paired comparisons."""
    from ctssl.eval.records.comparisons import collate

    results, comparisons = collate(cfg.out, cfg.n_boot)
    print(table(records))
    tasks = {r["task"] for r in records}
    for line in comparisons.read_text().splitlines():
        c = json.loads(line)
        if c["task"] not in tasks:
            continue
        f = {k: ("n/a" if c[k] is None else f"{c[k]:+.3f}") for k in ("delta", "lower", "upper", "p_value")}
        print(f"paired {c['task']} {c.get('variant') or ''} fraction {c['fraction']:g} seed {c['seed']}: "
              f"{c['backbone']} - {c['baseline']} {c['metric']} {f['delta']} [{f['lower']}, {f['upper']}] "
              f"p={f['p_value'].lstrip('+')}")
    print(f"results: {results}\ncomparisons: {comparisons}")
    return 0


def table(records: list[dict]) -> str:
    """A console table: one row per run, mean and spread over seeds left to the report."""
    from ctssl.eval.records.comparisons import headline

    rows = [("task", "backbone", "variant", "fraction", "seed", "n_train", "result")]
    for r in records:
        rows.append((r["task"], _short(r["backbone"]), r.get("variant", ""), f"{r['fraction']:g}", str(r["seed"]),
                     str(r["n_train"]), headline(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _short(source: str) -> str:
    return source if len(source) <= 48 else "..." + source[-45:]
