"""The evaluation commands (knn, probe, finetune) end to end on real shards, through their shared options:
records with provenance, paired comparisons, resumable runs, settings by --set."""

from __future__ import annotations

import json

from ctssl.cli.main import main
from ctssl.pretrain.sources import load_backbone


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_knn_probe_and_finetune_commands(eval_shards, exported, tmp_path, capsys):
    path, _ = exported
    common = ["--data", str(eval_shards), "--label", "region", "--backbone", "random:resnet18:3",
              "--backbone", str(path), "--image-size", "32", "--n-boot", "100", "--out", str(tmp_path)]
    assert main(["knn", *common, "--set", "knn.k=[5,20]", "--fraction", "0.5", "--fraction", "1"]) == 0
    assert "- 5" in (tmp_path / "knn-config.yaml").read_text()
    assert main(["probe", *common, "--set", "probe.epochs=5", "--lr", "0.01", "--lr", "0.1", "--wd", "0"]) == 0
    assert main(["finetune", *common, "--epochs", "2", "--truncate", "2", "--set", "finetune.llrd=0.5"]) == 0
    assert main(["finetune", *common, "--set", "finetune.epochs=1", "--seed", "1", "--save-model"]) == 0
    exports = sorted((tmp_path / "models").glob("*/backbone.safetensors"))
    assert len(exports) == 2                                   # one per backbone, full network only
    tuned, card = load_backbone(str(exports[0]))
    assert "fine-tuned" in card["method"] and card["finetuned_from"] in ("random:resnet18:3", str(path))
    printed = capsys.readouterr().out
    assert "paired knn" in printed and "test accuracy" in printed
    records = _records(tmp_path)
    assert {r["task"] for r in records} == {"knn", "probe", "finetune"}
    assert len([r for r in records if r["task"] == "knn"]) == 2 * 2 * 2            # backbones x fractions x k
    assert {r["variant"] for r in records if r["task"] == "finetune"} == {"best_val", "final"}
    assert {r["config"]["truncate"] for r in records if r["task"] == "finetune"} == {0, 2}
    # The settings given by --set are those the records hold.
    assert {r["config"]["k"] for r in records if r["task"] == "knn"} == {5, 20}
    assert {r["config"]["epochs"] for r in records if r["task"] == "probe"} == {5}
    assert {(r["config"]["epochs"], r["config"]["llrd"]) for r in records if r["task"] == "finetune"} == {(2, 0.5),
                                                                                                       (1, 1.0)}
    for r in records:
        acc = r["test"]["accuracy"]
        # Two test patients: a point value, no interval (eval.measures.evidence), and the record says why.
        assert acc["lower"] is None is acc["upper"] and 0 <= acc["value"] <= 1
        assert acc["evidence"]["reason"] == "too few test patients to compare (n = 2; at least 6 needed)"
        assert r["provenance"]["ctssl"] and r["backbone_card"]["source"] == r["backbone"]
        assert r["dataset"]["fingerprint"] and r["input"]["size"] == 32
    probe = next(r for r in records if r["task"] == "probe")
    assert len(probe["selection"]["grid"]) == 2 and "logreg" in probe
    half = [r for r in records if r["task"] == "knn" and r["fraction"] == 0.5]
    full = [r for r in records if r["task"] == "knn" and r["fraction"] == 1]
    assert max(r["n_train"] for r in half) < min(r["n_train"] for r in full)
    comparisons = [json.loads(line) for line in (tmp_path / "comparisons.jsonl").read_text().splitlines()]
    assert {c["task"] for c in comparisons} == {"knn", "probe", "finetune"}
    # Two test patients: each comparison is a paired difference without a test (no p, no interval).
    assert all(c["baseline"] == "random:resnet18:3" for c in comparisons)
    assert all(c["insufficient"] and c["p_value"] is None and c["lower"] is None for c in comparisons)

    # A rerun finds every run done and recomputes nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    assert main(["knn", *common, "--set", "knn.k=[5,20]", "--fraction", "0.5", "--fraction", "1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == stamps
