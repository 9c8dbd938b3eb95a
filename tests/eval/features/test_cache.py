"""The feature cache (eval.features.cache): reused with its provenance, assembled from array tasks' parts,
shared by labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctssl.eval.features.cache import cached_features, extract_task, merge_parts, task_units
from ctssl.eval.inputs.datasets import open_dataset

SOURCE = "random:resnet18:3"


def test_feature_cache_is_reused_with_provenance(ct_shards, tmp_path):
    data = open_dataset(str(ct_shards), "region")
    first = cached_features("random:resnet18:3", data, ["train", "test"], 32, tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    stamp = (folder / "train.npy").stat().st_mtime_ns
    second = cached_features("random:resnet18:3", data, ["train", "test"], 32, tmp_path)
    assert (folder / "train.npy").stat().st_mtime_ns == stamp          # not recomputed
    np.testing.assert_array_equal(first["train"].features, second["train"].features)
    assert first["train"].features.shape == (len(data.split("train")), 512)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["backbone"]["source"] == "random:resnet18:3" and provenance["input"]["size"] == 32
    assert provenance["dataset"]["fingerprint"] == data.fingerprint
    # Another input size is another cache entry.
    cached_features("random:resnet18:3", data, ["test"], 24, tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_array_task_parts_merge_into_the_same_bank(reference, tmp_path):
    data, ref = reference
    assert [u for t in range(3) for u in task_units(7, t, 3)] == list(range(7))
    with pytest.raises(FileNotFoundError, match=r"tasks \[1\]"):
        extract_task(SOURCE, data, ["train", "test"], 32, tmp_path, 0, 3, workers=0)
        extract_task(SOURCE, data, ["train", "test"], 32, tmp_path, 2, 3, workers=0)
        merge_parts(SOURCE, data, ["train", "test"], 32, tmp_path, 3)
    extract_task(SOURCE, data, ["train", "test"], 32, tmp_path, 1, 3, workers=0)
    feats = merge_parts(SOURCE, data, ["train", "test"], 32, tmp_path, 3)
    for split in ("train", "test"):
        np.testing.assert_allclose(np.asarray(feats[split].features), ref[split], rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.rglob("parts/*.npy"))


def test_the_label_does_not_split_the_cache(ct_shards, tmp_path):
    """Region and lesion label every slice: one extraction serves both."""
    a = cached_features(SOURCE, open_dataset(str(ct_shards), "region"), ["test"], 32, tmp_path, workers=0)
    b = cached_features(SOURCE, open_dataset(str(ct_shards), "lesion"), ["test"], 32, tmp_path, workers=0)
    assert a["test"].provenance["cache"] == b["test"].provenance["cache"]


def _export_raw(folder, model, card) -> str:
    """A backbone file written as pretraining's export writes it, without its checks (a damaged file)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(json.dumps(card))
    return str(folder / "backbone.safetensors")


def test_non_finite_backbones_are_refused_by_name(ct_shards, tmp_path):
    """NaN weights, or finite weights that overflow to non-finite features: one error naming the backbone,
    never a chance-level result."""
    import torch

    from ctssl.pretrain.backbones import build_backbone

    data = open_dataset(str(ct_shards), "region")
    card = {"backbone": "resnet18", "in_chans": 3, "method": "simclr",
            "data": {"kind": "ct", "windows": ["lung", "soft_tissue", "bone"], "image_size": 32}}
    model, _ = build_backbone("resnet18", 3)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    nan = _export_raw(tmp_path / "nan", model, card)
    with pytest.raises(ValueError, match=r"Backbone '.*nan/backbone.safetensors' has non-finite weights"):
        cached_features(nan, data, ["test"], 32, tmp_path / "cache")
    with torch.no_grad():
        model.conv1.weight.fill_(3e38)          # finite, but the activations overflow
    huge = _export_raw(tmp_path / "huge", model, card)
    with pytest.raises(ValueError, match=r"Backbone '.*huge/backbone.safetensors' gives non-finite features") as err:
        cached_features(huge, data, ["test"], 32, tmp_path / "cache", workers=0)
    assert "cannot be evaluated" in str(err.value)
    assert not list((tmp_path / "cache").rglob("test.npy"))       # nothing non-finite is cached
