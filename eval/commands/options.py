"""What the evaluation commands share: the named options of their common settings (``eval.commands.settings``:
what is evaluated, on what, with how many labels and seeds, where results go), the check and the resolved config
written before a command runs, and the console table printed after. Imports nothing heavy: the command line
builds every command's options at start."""

from __future__ import annotations

import json
from pathlib import Path

from ctssl.core.config import ConfigError, save_config
from ctssl.core.options import Settings


def add_image_size(settings: Settings, own: bool = True) -> None:
    """--image-size, and (``own``) --own-size: the input size of every backbone of a comparison."""
    if not own:
        settings.option("--image-size", key="image_size", type=int,
                        help="backbone input size; 0: the size it was pretrained at, 224 without one (give the "
                             "size of the comparison to share the cache with ctssl knn / probe)")
        return
    settings.option("--image-size", key="image_size", type=int,
                    help="input size of every backbone; 0: one size for all, the largest any of them was pretrained "
                         "at (224 when none was)")
    settings.switch("--own-size", key="own_size", value=True,
                    help="each backbone at the size it was pretrained at instead (an ablation; the report says the "
                         "sizes differ)")


def add_cache(settings: Settings) -> None:
    settings.option("--cache", key="cache", help="feature cache folder (none: OUT/features)")


def add_target_options(settings: Settings) -> None:
    """What is evaluated and how each backbone sees its images."""
    settings.option("--data", "--shards", key="data",
                    help="dataset: a shard folder, imagefolder:ROOT, a .csv (path,label[,split,patient]) or a "
                         "MedMNIST .npz")
    settings.option("--backbone", key="backbones", action="append",
                    help="random:NAME:IN_CHANS, imagenet:NAME:FILE, radimagenet:FILE, timm:NAME:FILE, "
                         "torchvision:NAME:FILE, hf:DIR (suffix ?arm=natural|medical|ct declares the arm), a "
                         "backbone.safetensors or a checkpoint .pt (repeatable; the first is the baseline of paired "
                         "comparisons)")
    settings.option("--label", key="label", help="label key in the shards; a+b+c for multi-label")
    add_image_size(settings)
    settings.option("--grey-window", key="grey_window",
                    help="HU window of CT inputs for backbones of grey or natural pictures (ImageNet, RadImageNet, "
                         "natural-image pretraining), replicated to their channels")
    settings.option("--n-boot", key="n_boot", type=int, help="bootstrap resamples for CIs")
    add_overlap(settings)


def add_overlap(settings: Settings) -> None:
    settings.switch("--allow-pretraining-overlap", key="allow_pretraining_overlap", value=True,
                    help="evaluate a CT backbone on validation or test patients it was pretrained on (refused "
                         "otherwise); every record and the report then say so")


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
    add_baseline(settings)


def add_baseline(settings: Settings) -> None:
    settings.option("--baseline", key="baseline",
                    help="the backbone every other is compared with (a --backbone source or --name); none: the first "
                         "natural-image-pretrained one (ImageNet weights, SimCLR on natural images), else the first")


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

    from ctssl.eval.measures.multiplicity import adjust, format_p
    from ctssl.eval.records.store import load_names

    results, comparisons = collate(cfg.out, cfg.n_boot, cfg.baseline)
    names = load_names(cfg.out)
    print(table(records, names))
    tasks = {r["task"] for r in records}
    lines = [c for c in map(json.loads, comparisons.read_text().splitlines()) if c["task"] in tasks]
    adjusted = adjust([c["p_value"] for c in lines], "holm", [c.get("resamples") for c in lines])
    for c, (p_adj, bound) in zip(lines, adjusted):
        f = {k: ("n/a" if c[k] is None else f"{c[k]:+.3f}") for k in ("delta", "lower", "upper")}
        who = (f"paired {c['task']} {c.get('variant') or ''} fraction {c['fraction']:g} seed {c['seed']}: "
               f"{_short(names.get(c['backbone']) or c['backbone'])} - "
               f"{_short(names.get(c['baseline']) or c['baseline'])} {c['metric']} {f['delta']}")
        if c.get("insufficient"):
            print(f"{who} ({c['insufficient']})")
            continue
        print(f"{who} [{f['lower']}, {f['upper']}] p={format_p(c['p_value'], c.get('resamples'))} "
              f"(Holm over these {len(lines)}: {format_p(p_adj, None, bound)})")
    tested = [c for c in lines if not c.get("insufficient")]
    few = min((c.get("n_patients") or 10 ** 9 for c in tested), default=10 ** 9)
    if few < SMALL_TEST:
        print(f"caveat: {few} test patients; intervals and p-values from so few patients are coarse (the paired test "
              f"cannot go below p = {2.0 ** (1 - few):.3g}), and relative changes unstable (ctssl report says more).")
    print(f"results: {results}\ncomparisons: {comparisons}")
    return 0


SMALL_TEST = 10        # test patients under which the printout and the report add a small-sample caveat


def table(records: list[dict], names: dict | None = None) -> str:
    """A console table: one row per run, mean and spread over seeds left to the report; kNN's variant shows the
    effective k where the bank held fewer samples than k."""
    from ctssl.eval.records.comparisons import headline

    names = names or {}
    rows = [("task", "backbone", "variant", "fraction", "seed", "n_train", "input", "result")]
    for r in records:
        variant = r.get("variant", "")
        if r.get("k_effective") is not None and r["k_effective"] != r["config"].get("k"):
            variant = f"k={r['k_effective']} (of {r['config']['k']} asked)"
        rows.append((r["task"], _short(names.get(r["backbone"]) or r["backbone"]), variant, f"{r['fraction']:g}",
                     str(r["seed"]), str(r["n_train"]), f"{(r.get('input') or {}).get('size', '?')} px", headline(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _short(source: str) -> str:
    return source if len(source) <= 48 else "..." + source[-45:]
