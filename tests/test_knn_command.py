"""`ctssl knn` on real shards: exported backbones load with their card; results are records."""

from __future__ import annotations

import json

import pytest
import torch

from ctssl.cli import main
from eval.features import eval_transform, extract, load_backbone
from pretrain.backbones import build_backbone
from pretrain.checkpoint import export_backbone


class _Holder(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def test_exported_backbone_round_trips(tmp_path):
    backbone, _ = build_backbone("resnet18", 3)
    card = {"backbone": "resnet18", "in_chans": 3, "method": "simclr", "data": {"windows": ["lung", "soft_tissue", "bone"]}}
    path = export_backbone(_Holder(backbone), tmp_path, card)
    loaded, loaded_card = load_backbone(str(path))
    assert loaded_card["method"] == "simclr"
    for a, b in zip(backbone.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="card"):
        (tmp_path / "backbone.json").unlink()
        load_backbone(str(path))


def test_features_carry_the_label_and_patient(ct_shards):
    model, card = load_backbone("random:resnet18:3")
    feats, labels, patients = extract(model, str(ct_shards), ["train"], "region", eval_transform(card, "ct", 32))
    assert feats.shape == (len(labels), 512) and len(set(labels)) >= 2 and all(patients)


def test_knn_command_writes_records(ct_shards, tmp_path, capsys):
    code = main(["knn", "--shards", str(ct_shards), "--label", "region", "--backbone", "random:resnet18:3",
                 "--k", "5", "--image-size", "32", "--out", str(tmp_path), "--query-split", "train"])
    assert code == 0
    record = json.loads((tmp_path / "knn.jsonl").read_text().splitlines()[0])
    assert record["k"] == 5 and 0.0 <= record["accuracy"] <= 1.0 and record["n_query"] > 0
    # Queries from the bank's own split: each query finds itself first, so accuracy is high.
    assert record["accuracy"] > 0.9
