"""The README's "Step by step, with your own data" on shards ingested without --labels: every evaluation step
that needs no label runs; a step that needs one says in one line which labels the data carry."""

from __future__ import annotations

import json

from ctssl.cli.main import main
from ctssl.eval.inputs.datasets import open_dataset


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err            # one line, no traceback
    return err[0]


def test_readme_own_data_steps_on_unlabelled_shards(unlabelled_shards, natural_shards, tmp_path, capsys):
    data, out = str(unlabelled_shards), tmp_path / "eval"
    images = open_dataset(data, "")
    assert images.label_names == [] and all(images.has(s) for s in ("train", "val", "test"))
    backbones = ["--backbone", "random:resnet18:3", "--backbone", "random:resnet18:3:1"]
    # knn / probe / finetune name a label the data do not carry: one line saying the data carry none.
    for command in ("knn", "probe", "finetune"):
        assert main([command, "--data", data, "--label", "lesion", *backbones, "--image-size", "32",
                     "--out", str(out)]) == 2
        line = _error(capsys)
        assert "has no label 'lesion'" in line and "carry no labels" in line and "--labels" in line
    # The README's similarity, gap and (for SLURM arrays) extract lines need no label.
    assert main(["similarity", "--data", data, "--a", "random:resnet18:3", "--b", "random:resnet18:3:1",
                 "--samples", "30", "--image-size", "32", "--out", str(out), "--name", "a_vs_b",
                 "--set", "max_features=256"]) == 0
    assert json.loads((out / "similarity" / "a_vs_b.json").read_text())["n_images"] == 30
    assert main(["gap", "--a", data, "--b", str(natural_shards), "--label-b", "class", *backbones,
                 "--max-samples", "30", "--image-size", "32", "--out", str(out), "--name", "ct_vs_natural",
                 "--set", "k=5", "--set", "embed=false"]) == 0
    gap = json.loads((out / "gap" / "ct_vs_natural.json").read_text())
    assert len(gap["rows"]) == 2 and gap["rows"][0]["probe_transfer"]["a_to_b"] is None
    assert main(["extract", "--data", data, "--backbone", "random:resnet18:3", "--image-size", "32",
                 "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "features in" in printed
    assert all(f"{s} {len(images.entries(s))} x 512" in printed for s in ("train", "val", "test"))
    assert main(["report", "--out", str(out)]) == 0
    page = (out / "report.md").read_text()
    assert "Representation similarity" in page and "Domain gap" in page


def test_a_missing_label_lists_the_labels_present(eval_shards, tmp_path, capsys):
    assert main(["knn", "--data", str(eval_shards), "--label", "tumour", "--backbone", "random:resnet18:3",
                 "--image-size", "32", "--out", str(tmp_path)]) == 2
    line = _error(capsys)
    assert "has no label 'tumour'" in line and "its samples carry the labels" in line
    assert "'region'" in line and "'lesion'" in line


def test_k_larger_than_the_bank_prints_the_effective_k(eval_shards, tmp_path, capsys, caplog):
    with caplog.at_level("WARNING"):
        assert main(["knn", "--data", str(eval_shards), "--label", "region", "--backbone", "random:resnet18:3",
                     "--k", "100000", "--image-size", "32", "--n-boot", "20", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    effective = record["k_effective"]
    assert effective == record["n_train"] < 100000
    assert f"k={effective} (of 100000 asked)" in printed
    assert f"effective k={effective}" in caplog.text
