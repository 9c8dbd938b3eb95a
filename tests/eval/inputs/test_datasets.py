"""Evaluation inputs: dataset formats, backbone sources, the feature cache, label fractions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ctssl.eval.inputs.datasets import open_dataset, split_of
from ctssl.eval.features.cache import cached_features
from ctssl.eval.inputs.spec import input_spec, prepare
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.inputs.sources import load_backbone, radimagenet_state_dict
from ctssl.pretrain.backbones import build_backbone


def _png(path, value: int, size: int = 20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def test_imagefolder_and_csv_datasets(tmp_path):
    for split in ("train", "val", "test"):
        for cls, value in (("cyst", 40), ("solid", 200)):
            for i in range(3):
                _png(tmp_path / "tree" / split / cls / f"{i}.png", value)
    data = open_dataset(f"imagefolder:{tmp_path / 'tree'}")
    assert data.classes == ["cyst", "solid"] and len(data.split("val")) == 6
    assert list(data.targets("test")) == [0, 0, 0, 1, 1, 1]

    # CSV without a split column: the split follows the patient, never the image.
    rows = ["path,label,patient"]
    for p in range(30):
        for i in range(2):
            _png(tmp_path / "csv" / f"p{p}_{i}.png", 10 * (p % 3))
            rows.append(f"p{p}_{i}.png,{'ab'[p % 2]},P{p}")
    (tmp_path / "csv" / "labels.csv").write_text("\n".join(rows) + "\n")
    data = open_dataset(str(tmp_path / "csv" / "labels.csv"))
    for split in ("train", "val", "test"):
        for sample in data.samples[split]:
            assert split_of(sample.group) == split
    assert sum(len(v) for v in data.samples.values()) == 60
    # Patients stay together and only pseudonyms leave the dataset: no raw ID or file name.
    groups = {s.group for v in data.samples.values() for s in v}
    assert len(groups) == 30 and not any(g.startswith("P") or "png" in g for g in groups)
    assert all("p0_" not in s.key for v in data.samples.values() for s in v)
    with pytest.raises(ValueError, match="lacks column"):
        (tmp_path / "bad.csv").write_text("file,y\n")
        open_dataset(str(tmp_path / "bad.csv"))


def test_medmnist_npz_single_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (n, 1))
    np.savez(tmp_path / "organamnist.npz", **arrays)
    data = open_dataset(str(tmp_path / "organamnist.npz"))
    assert not data.multilabel and set(data.classes) <= {"0", "1", "2"} and len(data.split("test")) == 6
    arrays = {k: (rng.integers(0, 2, (len(v), 5)) if k.endswith("labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    data = open_dataset(str(tmp_path / "chestmnist.npz"))
    assert data.multilabel and data.targets("train").shape == (12, 5)
    # A grey 28x28 image becomes a normalised 3-channel input for a 3-channel backbone.
    x = prepare(data.split("train")[0].image, input_spec({"in_chans": 3, "method": "simclr", "data": {}}, "image", 32))
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1])


def test_shard_dataset_multilabel_and_ct_input(ct_shards):
    data = open_dataset(str(ct_shards), "lung_nodule+liver_lesion+brain_hemorrhage")
    assert data.multilabel and data.targets("train").shape[1] == 3
    data = open_dataset(str(ct_shards), "region")
    sample = data.split("train")[0]
    spec = input_spec({"in_chans": 3, "method": "random init", "data": {}}, "ct", 32)
    x = prepare(sample.image, spec)
    # Channel 0 is the lung window: air (-1000 HU) maps to 0, i.e. -1 after (x - 0.5) / 0.5.
    assert x.shape == (3, 32, 32) and x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    assert spec.windows == ["lung", "soft_tissue", "bone"]


def test_random_source_is_reproducible_and_radimagenet_keys_map(tmp_path):
    a, card = load_backbone("random:resnet18:1")
    b, _ = load_backbone("random:resnet18:1")
    c, _ = load_backbone("random:resnet18:1:5")
    assert card["in_chans"] == 1 and torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    # A RadImageNet-style checkpoint: torchvision children under backbone.<index>.
    reference, _ = build_backbone("resnet50", 3)
    names = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    state = {}
    for key, value in reference.state_dict().items():
        head, rest = key.split(".", 1)
        state[f"module.backbone.{names[head]}.{rest}"] = value
    state["module.fc.weight"] = torch.zeros(1, 2048)
    assert radimagenet_state_dict({"state_dict": state}).keys() == reference.state_dict().keys()
    torch.save(state, tmp_path / "RadImageNet-ResNet50.pt")
    model, card = load_backbone(f"radimagenet:{tmp_path / 'RadImageNet-ResNet50.pt'}")
    torch.testing.assert_close(model.layer3[0].conv2.weight, reference.layer3[0].conv2.weight)
    assert card["mean"] == [0.485, 0.456, 0.406] and len(card["weights_sha256"]) == 64
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("imagenet:resnet50:/nonexistent/resnet50.pth")


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


def test_subsample_draws_patients_and_keeps_every_class():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"P{i}" for i in range(50)], 10)
    targets = rng.integers(0, 3, 500)
    targets[groups == "P7"] = 3                     # a rare class held by one patient
    idx = subsample(targets, groups, 0.1, seed=1)
    chosen = set(groups[idx])
    assert set(np.flatnonzero(np.isin(groups, list(chosen)))) == set(idx)     # whole patients
    assert 40 <= len(idx) <= 80 and 3 in targets[idx]
    assert not np.array_equal(idx, subsample(targets, groups, 0.1, seed=2))
    np.testing.assert_array_equal(idx, subsample(targets, groups, 0.1, seed=1))
    assert len(subsample(targets, groups, 1.0, seed=0)) == 500


def test_imagenet_file_and_ctssl_checkpoint_sources(tmp_path):
    """imagenet:NAME:FILE takes torchvision's state dict (fc dropped); a checkpoint .pt is read
    with the run's config.yaml for the architecture."""
    from omegaconf import OmegaConf
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18-imagenet.pth")
    model, card = load_backbone(f"imagenet:resnet18:{tmp_path / 'resnet18-imagenet.pth'}")
    torch.testing.assert_close(model.layer2[1].conv1.weight, reference.layer2[1].conv1.weight)
    assert card["method"] == "supervised ImageNet" and card["mean"] == [0.485, 0.456, 0.406]

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    backbone, _ = build_backbone("resnet18", 1)
    torch.save({"backbone": backbone.state_dict(), "step": 7}, run / "checkpoints" / "last.pt")
    OmegaConf.save({"model": {"backbone": "resnet18"}, "method": {"name": "dino"},
                    "data": {"shards": "s", "windows": ["lung"]},
                    "resolved": {"in_chans": 1, "data_kind": "ct"}}, run / "config.yaml")
    model, card = load_backbone(str(run / "checkpoints" / "last.pt"))
    assert card["method"] == "dino" and card["in_chans"] == 1 and card["data"]["windows"] == ["lung"]
    torch.testing.assert_close(model.conv1.weight, backbone.conv1.weight)
    with pytest.raises(ValueError, match="must be .safetensors"):
        (tmp_path / "weights.bin").write_bytes(b"0")
        load_backbone(str(tmp_path / "weights.bin"))


def test_input_spec_follows_the_backbone_card(tmp_path):
    """Size and channels from what each backbone was pretrained with; grey pictures' backbones get one grey
    window replicated with ImageNet normalisation; the user's size wins; every rule is written down."""
    reference, _ = build_backbone("resnet50", 3)
    torch.save(reference.state_dict(), tmp_path / "radimagenet.pt")
    _, radimagenet = load_backbone(f"radimagenet:{tmp_path / 'radimagenet.pt'}")
    spec = input_spec(radimagenet, "ct")
    assert spec.size == 224 and spec.windows == ["wide"] * 3 and spec.mean == [0.485, 0.456, 0.406]
    assert "grey window 'wide' replicated" in spec.rule and "ImageNet normalisation" in spec.rule
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    _, imagenet = load_backbone(f"imagenet:resnet50:{tmp_path / 'resnet50.pth'}")
    assert input_spec(imagenet, "ct", grey_window="soft_tissue").windows == ["soft_tissue"] * 3
    ct_card = {"in_chans": 3, "method": "simclr", "data": {"kind": "ct", "image_size": 96,
                                                           "windows": ["lung", "soft_tissue", "bone"]},
               "config": {"data": {"normalize_mean": 0.5, "normalize_std": 0.5}}}
    spec = input_spec(ct_card, "ct")
    assert (spec.size, spec.windows, spec.mean) == (96, ["lung", "soft_tissue", "bone"], [0.5] * 3)
    assert "the pretraining view size" in spec.rule
    assert input_spec(ct_card, "ct", 64).size == 64 and "as set" in input_spec(ct_card, "ct", 64).rule
    minmax = input_spec({"in_chans": 3, "method": "simclr", "data": {"kind": "ct", "image_size": 256,
                                                                     "intensity": "minmax"}}, "ct")
    assert minmax.intensity == "minmax" and minmax.size == 256
    natural = input_spec({"in_chans": 3, "method": "simclr", "data": {"kind": "natural", "image_size": 96}}, "ct")
    assert natural.windows == ["wide"] * 3 and natural.mean == [0.485, 0.456, 0.406] and natural.size == 96
    random_init = input_spec({"in_chans": 3, "method": "random init", "data": {}}, "ct")
    assert random_init.size == 224 and random_init.windows == ["lung", "soft_tissue", "bone"]
    with pytest.raises(ValueError, match="window"):
        input_spec(radimagenet, "ct", grey_window="no-such-window")
