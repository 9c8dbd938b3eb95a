"""similarity, gap and report end to end on real shards: records, figures, a self-contained report."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from ctssl.cli.main import main


def test_similarity_gap_and_report(eval_shards, natural_shards, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["similarity", "--data", str(eval_shards), "--a", "random:resnet18:3", "--b", "random:resnet18:3:1",
                 "--samples", "60", "--image-size", "32", "--out", str(out), "--name", "seed0_vs_seed1",
                 "--set", "max_features=512"]) == 0
    record = json.loads((out / "similarity" / "seed0_vs_seed1.json").read_text())
    assert record["max_features"] == 512 and (out / "similarity" / "seed0_vs_seed1-config.yaml").exists()
    assert record["layers_a"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert set(record["matrices"]) == {"linear_cka", "rbf_cka", "unbiased_cka", "mean_cca", "svcca", "pwcca"}
    cka = record["matrices"]["linear_cka"]
    assert all(0 <= v <= 1 for row in cka for v in row) and (out / "similarity" / "seed0_vs_seed1.png").exists()
    # Same architecture: RBF CKA of the first convolutions' weights (feature reuse); a network
    # with itself gives exactly 1.
    assert "conv1" in record["weight_rbf_cka"] and all(0 <= v <= 1 for v in record["weight_rbf_cka"].values())
    from ctssl.eval.features.layers import conv_weights
    from ctssl.pretrain.sources import load_backbone
    from ctssl.eval.measures.similarity import weight_similarity

    weights = conv_weights(load_backbone("random:resnet18:3")[0])
    assert all(v == pytest.approx(1.0) for v in weight_similarity(weights, weights).values())

    assert main(["gap", "--a", str(eval_shards), "--b", str(natural_shards), "--label-b", "class",
                 "--backbone", "random:resnet18:3", "--max-samples", "40", "--image-size", "32",
                 "--out", str(out), "--name", "ct_vs_natural", "--set", "k=5"]) == 0
    gap = json.loads((out / "gap" / "ct_vs_natural.json").read_text())
    row = gap["rows"][0]
    assert row["knn_purity"]["k"] == 5 and (out / "gap" / "ct_vs_natural-config.yaml").exists()
    # The natural stand-in's held-out split has 8 images: too few for the domain classifier and MMD (10 per
    # domain) and for Frechet (more than 512), each None with its reason; kNN purity (k + 1 = 6) is reported.
    assert row["n_per_domain"] == 8 and row["domain_classifier"] is None is row["mmd2"] is row["frechet_distance"]
    assert set(row["too_few_images"]) == {"domain_classifier", "mmd2", "frechet_distance"}
    assert row["too_few_images"]["domain_classifier"].startswith("too few images (N = 8 per domain;")
    assert row["knn_purity"]["purity"] > row["knn_purity"]["chance"]
    assert row["probe_transfer"]["a_to_b"] is None          # no class in common: no probe gap

    assert main(["knn", "--data", str(eval_shards), "--backbone", "random:resnet18:3", "--backbone",
                 "random:resnet18:3:1", "--name", "random seed 0", "--name", "random seed 1", "--k", "10", "--fraction", "0.5", "--fraction", "1", "--image-size", "32",
                 "--n-boot", "50", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", "--out", str(out), "--set", "n_boot=50", "--set", "title=seed 0 against seed 1"]) == 0
    assert "report:" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert "<h1>seed 0 against seed 1</h1>" in page
    for section in ("Downstream results", "Paired comparisons", "Data efficiency", "Representation similarity",
                    "Domain gap", "Provenance"):
        assert section in page
    # Self-contained: every image is embedded, nothing is fetched.
    assert page.count('src="data:image/png;base64,') >= 3 and not re.search(r'(src|href)="(https?:)?//', page)
    HTMLParser().feed(page)
    summary = (out / "report.md").read_text()
    # Readable names where given (--name); the gap table reuses them for the same source.
    assert "| random seed 0 |" in summary and "| random seed 1 |" in summary and "proxy A-dist." in summary
