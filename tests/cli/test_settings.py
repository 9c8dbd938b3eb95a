"""One configuration path for every command: dataclass defaults -> --config FILE -> --set key=value -> named
options. Every command and phase answers an unknown key or a missing config file with one line and exit 2; a
command without settings takes no --config or --set; every help example is a setting that works and changes the
result; every named option sets a key of its command's settings; the resolved settings are written beside the
outputs. The end-to-end tests of each stage set their options through --set too (tests/eval/commands/, the
recipes, the demo)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from ctssl.cli.main import build_parser, main
from ctssl.core.config import resolve_config
from ctssl.core.options import PREFIX, default_of, schema_of

# Phases whose work is fully decided elsewhere (the plan, the folder, the backbone and format): no settings, so no
# --config or --set.
WITHOUT_SETTINGS = {("ingest-array", "task"), ("ingest-array", "merge"), ("shards", "verify"), ("shards", "inspect"),
                    ("export",)}


def _targets() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, parser in commands.choices.items():
        phases = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        out += [((name, phase), sub) for phase, sub in phases[0].choices.items()] if phases else [((name,), parser)]
    return out


TARGETS = _targets()


def _argv(words, parser) -> list[str]:
    """The command with a placeholder for every positional argument and required option."""
    args = list(words)
    for action in parser._actions:
        if not action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            args.append("placeholder")
        elif action.required:
            args += [action.option_strings[0], "placeholder"]
    return args


def _settings_action(parser):
    return next((a for a in parser._actions if "--set" in a.option_strings), None)


def _run(argv) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def test_only_phases_decided_elsewhere_take_no_settings():
    assert {words for words, parser in TARGETS if _settings_action(parser) is None} == WITHOUT_SETTINGS


@pytest.mark.parametrize("words, parser", TARGETS, ids=[" ".join(w) for w, _ in TARGETS])
def test_an_unknown_setting_is_one_line_naming_it(words, parser):
    code, lines = _run([*_argv(words, parser), "--set", "no.such.key=1"])
    assert code == 2 and len(lines) == 1 and "no.such.key" in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.parametrize("words, parser", TARGETS, ids=[" ".join(w) for w, _ in TARGETS])
def test_a_missing_config_file_is_one_line(words, parser, tmp_path):
    code, lines = _run([*_argv(words, parser), "--config", str(tmp_path / "missing.yaml")])
    expected = "unrecognized arguments: --config" if words in WITHOUT_SETTINGS else "missing.yaml' does not exist"
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines


def test_every_help_example_is_a_setting_that_changes_the_settings():
    for words, parser in TARGETS:
        action = _settings_action(parser)
        if action is None:
            continue
        example = re.search(r"e\.g\. --set (\S+);", action.help).group(1)
        schema = schema_of(parser.get_default("_settings"))
        assert resolve_config(schema, None, [example]) != schema(), (words, example)


def test_every_named_option_sets_a_key_of_its_settings():
    for words, parser in TARGETS:
        schema = parser.get_default("_settings")
        for action in parser._actions:
            if action.dest.startswith(PREFIX):
                default_of(schema_of(schema), action.dest[len(PREFIX):])     # raises for a key that is not there


def test_defaults_are_stated_once_in_the_settings_and_shown_by_the_help():
    def help_of(*words):
        return " ".join(dict(TARGETS)[words].format_help().split())

    knn = help_of("knn")
    assert "--k K" in knn and "(default: 10 20 100 200)" in knn and "e.g. --set knn.k=[20]" in knn
    confounders = help_of("confounders")
    assert "(default: lesion)" in confounders and "(default: 0.0 0.1 0.2 0.5 0.8 1.0)" in confounders


def test_a_named_option_wins_over_set_which_wins_over_the_file(tmp_path):
    path = tmp_path / "report.yaml"
    path.write_text("title: from the file\nn_boot: 7\n")
    out = tmp_path / "results"
    out.mkdir()
    assert main(["report", "--out", str(out), "--config", str(path), "--set", "title=from set",
                 "--title", "named"]) == 0
    written = yaml.safe_load((out / "report-config.yaml").read_text())
    assert written == {"out": str(out), "title": "named", "n_boot": 7, "adjust": "holm", "baseline": "", "log_with": []}
    assert "# named" in (out / "report.md").read_text()


def test_settings_change_the_results_of_the_cheap_commands(corpus, eval_shards, tmp_path, monkeypatch):
    """The commands whose runs are cheap; the others are run with --set in their own end-to-end tests."""
    cfg, _ = corpus
    natural = tmp_path / "natural"
    assert main(["shards", "from-images", str(Path(cfg.out) / "natural-standin"), "--out", str(natural),
                 "--set", "seed=3", "--set", "shard_size_mb=0.01"]) == 0
    assert json.loads((natural / "manifest.json").read_text())["config"]["seed"] == 3
    shuffled = tmp_path / "shuffled"
    assert main(["shards", "shuffle", str(eval_shards), "--out", str(shuffled), "--set", "seed=5"]) == 0
    assert json.loads((shuffled / "manifest.json").read_text())["config"]["shuffle"]["seed"] == 5
    monkeypatch.setenv("CTSSL_SALT", "pretrain-test-salt-0123456789")
    ingested = tmp_path / "ingested"
    assert main(["ingest", str(Path(cfg.out) / "dicom" / "case-0000"), "--out", str(ingested),
                 "--set", "image_size=24"]) == 0
    assert json.loads((ingested / "manifest.json").read_text())["config"]["image_size"] == 24
    planned = tmp_path / "planned"
    assert main(["ingest-array", "plan", str(Path(cfg.out) / "dicom" / "case-0000"), "--out", str(planned),
                 "--num-tasks", "1", "--set", "image_size=40"]) == 0
    assert json.loads((planned / "plan" / "plan.json").read_text())["config"]["image_size"] == 40
    extracted = tmp_path / "extracted"
    assert main(["extract", "--data", str(eval_shards), "--backbone", "random:resnet18:3", "--out", str(extracted),
                 "--image-size", "32", "--set", "splits=[test]"]) == 0
    (folder,) = (extracted / "features").iterdir()
    assert sorted(p.name for p in folder.glob("*.npy")) == ["test.npy"]
    assert yaml.safe_load((extracted / "extract-config.yaml").read_text())["splits"] == ["test"]
    bench = tmp_path / "bench"
    assert main(["bench", "knn", "--out", str(bench), "--set", "bank=3000", "--set", "queries=50", "--set", "dim=16",
                 "--set", "repeats=1"]) == 0
    assert json.loads((bench / "eval-knn-bench.json").read_text())["results"]["bank"] == 3000
    assert yaml.safe_load((bench / "eval-knn-bench-config.yaml").read_text())["bank"] == 3000
    assert main(["bench", "plan-scale", "--out", str(bench), "--set", "series=10", "--set", "slices=1000",
                 "--set", "tasks=2"]) == 0
    assert json.loads((bench / "scale-10-1000.json").read_text())["tasks"] == 2
    assert main(["bench", "train", "--out", str(bench), "--set", "sizes=[32]", "--set", "batch=2",
                 "--set", "steps=1"]) == 0
    rows = json.loads((bench / "pretrain-train-bench.json").read_text())["results"]["rows"]
    assert [(r["image_size"], r["batch"]) for r in rows] == [(32, 2)]
    assert main(["bench", "eval-scale", "--out", str(bench), "--set", "bank_rows=2000", "--set", "dim=16",
                 "--set", "queries=10"]) == 0
    assert json.loads((bench / "eval-scale-bench.json").read_text())["results"]["bank_rows"] == 2000
