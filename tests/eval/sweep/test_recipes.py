"""The seed studies as sweep recipes (eval/recipes/): each recipe holds its paper's protocol, runs end to end
on the synthetic corpus in a tiny configuration, and its report shows that paper's tables and figures; the
pieces the recipes add (patient-grouped folds, spatial CCA, svcca's 98% mean, the permutation test,
relative deltas) against independent references."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctssl.core.config import recipe_names
from ctssl.eval.sweep import jobs as sweep
from ctssl.eval.sweep.config import RECIPES, resolve_sweep_config
from ctssl.eval.measures.confounders import permutation_test

CTSSL = [sys.executable, "-m", "ctssl"]
BACKBONES = ["--backbone", "random:resnet18:3", "--backbone", "random:resnet18:3:1", "--name", "random A",
             "--name", "random B"]
TINY = ["--set", "image_size=32", "--set", "n_boot=50", "--set", "finetune.epochs=1", "--set", "finetune.lrs=[0.001]",
        "--set", "finetune.batch_size=64", "--set", "probe.epochs=10", "--set", "probe.lrs=[0.01,0.1]",
        "--set", "probe.weight_decays=[0.0]", "--log-level", "WARNING"]


def test_recipes_hold_their_papers_protocols():
    assert set(recipe_names(RECIPES)) == {"radnet12m", "hidden_representations", "source_matters", "truncated_transfer",
                                            "continued_pretraining"}
    cfg = {name: resolve_sweep_config(name, options={"data": "d", "backbones": ["a", "b"]})
           for name in recipe_names(RECIPES)}
    for name, c in cfg.items():
        sweep.validate(c)
        assert c.study == name and c.recipe == name and c.reference and c.title
        assert re.search(r"arXiv|FIELD-NOTES", c.reference), name
    assert cfg["radnet12m"].tasks == ["finetune", "probe", "segment"] and len(cfg["radnet12m"].seeds) == 4
    seg = cfg["radnet12m"].segment
    assert (seg.loss, seg.class_weights, seg.fractions) == ("ce", [1.0, 3.0, 10.0], [0.1, 0.5, 1.0])
    assert seg.protocols == ["frozen", "finetune"] and seg.noise_sigmas == [1e-4, 1e-3, 1e-2, 5e-2]
    assert len([j for j in sweep.jobs(cfg["radnet12m"]) if j["task"] == "segment"]) == 2 * 2 * 3 * 4
    h = cfg["hidden_representations"].hidden
    assert (h.folds, h.positions, h.channels, h.repeats) == (5, 10_000, 64, 5)
    assert cfg["source_matters"].confounders.fractions == [0.0, 0.1, 0.2, 0.5, 0.8, 1.0]
    assert set(cfg["source_matters"].confounders.kinds) == {"tag", "lowpass", "noise"}
    assert cfg["truncated_transfer"].truncation.cuts == [1, 2, 3, 0]
    assert not cfg["truncated_transfer"].finetune.truncate_pool           # head on the unpooled map
    assert "2106.05152" in cfg["truncated_transfer"].reference and "2302.08272" in cfg["hidden_representations"].reference


def test_job_lists_and_recipe_in_a_config_file(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("recipe: truncated_transfer\ndata: d\nbackbones: [a, b]\nseeds: [0]\n")
    cfg = resolve_sweep_config(None, str(config))
    assert cfg.study == "truncated_transfer" and cfg.seeds == [0]
    jobs = sweep.jobs(cfg)
    assert len(jobs) == 2 * 4 * 3 * 1 and {j["cut"] for j in jobs} == {0, 1, 2, 3}
    assert [j["index"] for j in jobs] == list(range(len(jobs)))
    hidden = resolve_sweep_config("hidden_representations", options={"data": "d", "backbones": ["a"]})
    assert [j["fold"] for j in sweep.jobs(hidden)] == [0, 1, 2, 3, 4]
    source = resolve_sweep_config("source_matters", options={"data": "d", "backbones": ["a", "b"]})
    assert len(sweep.jobs(source)) == 2 * 3 * 3
    from ctssl.core.config import ConfigError

    with pytest.raises(ConfigError, match="Unknown recipe 'nope'"):
        resolve_sweep_config("nope")
    with pytest.raises(ConfigError, match="hidden.folds must be at least 3"):
        sweep.validate(resolve_sweep_config("hidden_representations", overrides=["hidden.folds=2"],
                                                  options={"data": "d", "backbones": ["a"]}))


def _run(recipe: str, eval_shards, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*CTSSL, "sweep", "--recipe", recipe, "--data", str(eval_shards), "--out", str(out), *BACKBONES, *TINY,
           *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_radnet12m_recipe_end_to_end(eval_shards, tmp_path):
    out = tmp_path / "radnet"
    _run("radnet12m", eval_shards, out, "--label", "region", "--set", "fractions=[0.5,1.0]", "--set", "seeds=[0,1]",
         "--set", "tasks=[finetune,probe]")      # its segmentation arm: tests/eval/protocols/test_segment.py
    records = _records(out)
    assert {(r["task"], r["fraction"], r["seed"]) for r in records} == {
        (t, f, s) for t in ("finetune", "probe") for f in (0.5, 1.0) for s in (0, 1)}
    tuned = [r for r in records if r["task"] == "finetune"]
    assert all(r["chosen"]["lr"] == 0.001 and r["feature_reuse"]["conv1"] <= 1.0 for r in tuned)
    # The study's noise sweep on every final model: the recipe's sigmas, the task's metric with its CI.
    final = [r for r in tuned if r["variant"] == "final"]
    assert final and all([p["sigma"] for p in r["noise"]] == [1e-4, 1e-3, 1e-2, 5e-2] for r in final)
    assert all(p["metric"] == "accuracy" and 0 <= p["accuracy"]["value"] <= 1 and p["accuracy"]["lower"] is None
               and p["accuracy"]["evidence"]["patients"] == 2 for r in final for p in r["noise"])   # 2 test patients
    assert not any("noise" in r for r in tuned if r["variant"] == "best_val")
    comparisons = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    welch = [c for c in comparisons if c["seed"] == "all"]
    assert welch and all(c["relative_delta"] == pytest.approx(c["delta"] / c["means"][0], abs=1e-4)
                         for c in welch if c["relative_delta"] is not None)
    report = (out / "report.md").read_text()
    for heading in ("Study: radnet12m", "Table 1: fine-tuning and linear evaluation", "Table 2: feature reuse",
                    "Table 3: who knew what", "Fine-tuning choices", "Fine-tuning: test-time noise", "random B"):
        assert heading in report, heading


def test_hidden_representations_recipe_end_to_end(eval_shards, tmp_path):
    out = tmp_path / "hidden"
    _run("hidden_representations", eval_shards, out, "--label", "region", "--set", "hidden.folds=3",
         "--set", "hidden.positions=300", "--set", "hidden.images=16", "--set", "hidden.channels=16",
         "--set", "hidden.repeats=2")
    records = _records(out)
    assert sorted((r["backbone"], r["fold"]) for r in records) == sorted(
        (b, f) for b in ("random:resnet18:3", "random:resnet18:3:1") for f in range(3))
    for r in records:
        assert set(r["cca_pretrained_vs_finetuned"]) == {"conv1", "layer1", "layer2", "layer3", "layer4"}
        assert 0 < r["cca_pretrained_vs_finetuned"]["conv1"]["mean_cca"] <= 1
        assert r["n_train"] and r["n_val"] and r["n_test"]
    # The folds cover every labelled sample once, the same for both backbones.
    by_backbone = {}
    for r in records:
        by_backbone.setdefault(r["backbone"], 0)
        by_backbone[r["backbone"]] += r["n_test"]
    assert len(set(by_backbone.values())) == 1
    report = (out / "report.md").read_text()
    for heading in ("Table 1: fine-tuned performance", "Table 2: similarity of pretrained and fine-tuned",
                    "Table 3: prediction similarity", "figures/hidden-cca.png"):
        assert heading in report, heading
    assert (out / "figures" / "hidden-cca.png").stat().st_size > 1000
    assert "hidden fold" not in report                     # not in the generic tables


def test_truncated_transfer_recipe_end_to_end(eval_shards, tmp_path):
    out = tmp_path / "truncated"
    _run("truncated_transfer", eval_shards, out, "--label", "region", "--set", "truncation.cuts=[1,0]",
         "--set", "fractions=[1.0]", "--set", "seeds=[0]")
    records = [r for r in _records(out) if r["variant"].endswith("best_val")]
    assert {(r["variant"], r["cut"]) for r in records} == {("stage 1 best_val", 1), ("full best_val", 0)}
    params = {r["cut"]: r["parameters"] for r in records}
    assert params[1] < params[0] / 10                    # the truncated ResNet-18 keeps a small part
    report = (out / "report.md").read_text()
    assert "Table 1: test performance by cut point" in report and "figures/truncation-0.png" in report


def test_source_matters_recipe_end_to_end(eval_shards, tmp_path):
    out = tmp_path / "source"
    _run("source_matters", eval_shards, out, "--label", "region", "--set", "confounders.positive=thorax",
         "--set", "confounders.kinds=[tag,noise]", "--set", "confounders.fractions=[0.0,1.0]", "--set", "seeds=[0]",
         "--set", "confounders.permutations=200")
    files = sorted(p.name for p in (out / "confounders").glob("*.json"))
    assert len(files) == 4 and all(re.match(r"(tag|noise)-random-resnet18-3(-1)?-s0\.json", f) for f in files)
    rows = [row for f in (out / "confounders").glob("*.json") for row in json.loads(f.read_text())["rows"]]
    # Two test patients: no test of the drop (eval.measures.evidence), and the row says why.
    assert all(row["permutation_test"]["p_value"] is None and
               row["permutation_test"]["insufficient"].startswith("too few test patients") for row in rows)
    report = (out / "report.md").read_text()
    assert "Confounder 'tag'" in report and "Confounder 'noise'" in report and "median p" in report
    assert "## Shortcut robustness (confounders)" not in report      # the study's layout replaces the generic one


def test_sweep_command_errors_are_one_line(tmp_path):
    for args, needle in ((["sweep", "--recipe", "nope", "--data", "d", "--backbone", "a"], "Unknown recipe"),
                         (["sweep", "plan", "--recipe", "radnet12m"], "needs a dataset"),
                         (["sweep", "plan"], "needs --recipe NAME or --config")):
        result = subprocess.run([*CTSSL, *args, "--out", str(tmp_path / "x")], capture_output=True, text=True)
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr, result.stderr
