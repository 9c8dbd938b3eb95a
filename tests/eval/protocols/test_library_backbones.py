"""timm, torchvision and Hugging Face backbones from local files through the kNN, probe and fine-tuning protocols
(segmentation: tests/eval/protocols/test_segment.py): each record carries the library's preprocessing and the
backbone's arm, and the features the protocol extracts are the library's own forward of the prepared inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.pretrain.sources import backbone_card
from ctssl.eval.inputs.spec import input_spec, prepare_batch
from ctssl.eval.measures.probe import ProbeConfig
from ctssl.eval.protocols.finetune import run_finetune
from ctssl.eval.protocols.knn import KNNSettings, run_knn
from ctssl.eval.protocols.probe import run_probe
from ctssl.eval.protocols.spec import EvalSpec, frozen_features
from ctssl.finetune.finetune import FinetuneConfig

pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra (transformers)")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from tests.library_backbones import library_sources

    return library_sources(tmp_path_factory.mktemp("library"))


def test_knn_and_probe_extract_the_library_forward(eval_shards, sources, tmp_path):
    backbones = [s for s, _ in sources]
    spec = EvalSpec(data=str(eval_shards), label="region", backbones=backbones, image_size=32, n_boot=20)
    knn = run_knn(spec, KNNSettings(k=[3]), tmp_path)
    probe = run_probe(spec, ProbeConfig(lrs=[0.1], weight_decays=[0.0], epochs=5), tmp_path, logreg=False)
    for records in (knn, probe):
        assert [r["backbone"] for r in records] == backbones
        for r in records:
            assert r["input"]["size"] == 32 and r["input"]["windows"] == ["wide"] * 3
            assert r["backbone_card"]["preprocessing"]["mean"] == r["input"]["mean"]
    assert [r["backbone_card"]["arm"] for r in knn] == ["natural", "natural", "medical"]
    data = open_dataset(str(eval_shards), "region")
    images = [s.image for s in data.split("test")]
    for source, reference in sources:
        cached = frozen_features(spec, data, source, tmp_path / "features", splits=("test",))["test"]
        x = prepare_batch(images, input_spec(backbone_card(source), "ct", 32))
        with torch.no_grad():
            expected = reference(x).numpy()
        np.testing.assert_allclose(np.asarray(cached.features), expected, atol=1e-4)


def test_finetune_trains_each_library_backbone(eval_shards, sources, tmp_path):
    spec = EvalSpec(data=str(eval_shards), label="region", backbones=[s for s, _ in sources], image_size=32, n_boot=20)
    settings = FinetuneConfig(epochs=1, batch_size=16, lrs=[1e-3], patience=1, augment=False)
    records = run_finetune(spec, settings, tmp_path)
    assert len(records) == 2 * len(sources)
    for r in records:
        assert r["n_train"] > 0 and r["parameters"] > 0 and np.isfinite(r["test"]["accuracy"]["value"])
