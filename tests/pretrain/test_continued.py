"""Continued pretraining (``model.init`` = a backbone source, ``pretrain/main.py --init``): the backbone starts
exactly from the file's weights (DINO's teacher too), trains with SimCLR or DINO, and its export's card records
the init (source and the weights' SHA-256) and loads back for evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ctssl.pretrain.sources import file_sha256, load_backbone
from ctssl.pretrain.sources import init_backbone
from ctssl.pretrain.config import resolve_pretrain_config
from ctssl.pretrain.methods import build_method
from tests.library_backbones import hf_dinov2, timm_convnext

TINY = ["data.image_size=32", "data.global_batch_size=4", "max_steps=2", "data.num_workers=0",
        "method.dino.output_dim=128", "method.dino.hidden_dim=64", "method.dino.bottleneck_dim=32",
        "method.dino.local_size=16", "method.dino.local_crops=2", "method.simclr.hidden_dim=64",
        "monitor.knn_samples=8", "monitor.tensorboard=false", "checkpoint_every=0", "data.shuffle_buffer=8"]


def test_the_backbone_and_dinos_teacher_start_from_the_file(tmp_path):
    path, reference = timm_convnext(tmp_path)
    source = f"timm:convnext_atto:{path}"
    backbone, dim, card = init_backbone("timm:convnext_atto", 3, source)
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("head.fc.")}
    assert dim == 320 and card["weights_sha256"] == file_sha256(path)
    assert backbone.state_dict().keys() == expected.keys()
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in expected.items())
    cfg = resolve_pretrain_config(None, None, ["method.name=dino", *TINY])
    method = build_method("dino", backbone, dim, cfg.method)
    assert all(torch.equal(method.export_backbone.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match="set model.backbone=timm:convnext_atto"):
        init_backbone("resnet18", 3, source)
    with pytest.raises(ValueError, match="3 window"):
        init_backbone("timm:convnext_atto", 1, source)


@pytest.mark.parametrize("method,library", [("simclr", "timm"), ("dino", "hf")])
def test_continued_pretraining_trains_and_its_card_records_the_init(method, library, ct_shards, tmp_path):
    from ctssl.pretrain.train import train

    if library == "hf":
        pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra (transformers)")
        folder, _ = hf_dinov2(tmp_path)
        source, weights = f"hf:{folder}", folder / "model.safetensors"
    else:
        weights, _ = timm_convnext(tmp_path)
        source = f"timm:convnext_atto:{weights}"
    from ctssl.pretrain.sources import backbone_card

    arch = backbone_card(source)["backbone"]
    cfg = resolve_pretrain_config(None, None, [f"method.name={method}", *TINY],
                                  {"data.shards": str(ct_shards), "out": str(tmp_path / "run"), "model.init": source,
                                   "model.backbone": arch})
    result = train(cfg)
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])
    card = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert card["backbone"] == arch and card["init"]["source"] == source
    if library == "timm":
        assert card["init"]["weights_sha256"] == file_sha256(weights)
    model, loaded = load_backbone(str(tmp_path / "run" / "backbone.safetensors"))
    assert loaded["init"]["source"] == source and model(torch.zeros(1, 3, 32, 32)).ndim == 2
