"""ctssl confounders end to end: a fully correlated confounder drops on the anti-correlated test set."""

from __future__ import annotations

import json

from ctssl.cli.main import main


def test_fully_correlated_confounder_drops_on_anti_correlated_test(eval_shards, tmp_path):
    code = main(["confounders", "--data", str(eval_shards), "--label", "region", "--positive", "thorax",
                 "--backbone", "random:resnet18:3", "--set", "confounders.fractions=[0,1]", "--image-size", "32",
                 "--epochs", "30", "--n-boot", "50", "--out", str(tmp_path)])
    assert code == 0
    (path,) = (tmp_path / "confounders").glob("*.json")
    record = json.loads(path.read_text())
    rows = {r["fraction"]: r for r in record["rows"]}
    assert sorted(rows) == [0.0, 1.0] and record["config"]["fractions"] == [0.0, 1.0]
    settings = (tmp_path / "confounders" / path.name.replace(".json", "-config.yaml")).read_text()
    assert "epochs: 30" in settings and "- 1.0" in settings
    # Without the confounder in training, tagging the test negatives changes little; with it in
    # every positive, the model follows the tag and the anti-correlated AUROC collapses.
    assert rows[1.0]["confounded"]["auroc"]["value"] < 0.5 < rows[1.0]["clean"]["auroc"]["value"]
    assert rows[1.0]["drop"]["auroc"] > rows[0.0]["drop"]["auroc"] + 0.3
    assert (tmp_path / "confounders" / path.name.replace(".json", ".png")).exists()
