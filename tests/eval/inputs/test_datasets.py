"""Downstream datasets (eval.inputs.datasets): ImageFolder, CSV, MedMNIST and shard folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctssl.eval.inputs.datasets import open_dataset, split_of
from ctssl.eval.inputs.spec import input_spec, prepare


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
