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
        assert len(data.samples[split]) == 2 * sum(split_of(f"P{p}") == split for p in range(30))
    assert sum(len(v) for v in data.samples.values()) == 60
    # Patients stay together and only pseudonyms leave the dataset: no raw ID or file name.
    groups = {s.group for v in data.samples.values() for s in v}
    assert len(groups) == 30 and not any(g.startswith("P") or "png" in g for g in groups)
    assert all("p0_" not in s.key for v in data.samples.values() for s in v)
    with pytest.raises(ValueError, match="lacks column"):
        (tmp_path / "bad.csv").write_text("file,y\n")
        open_dataset(str(tmp_path / "bad.csv"))


def _csv_dataset(folder, rows: list[str], header: str = "path,label,patient"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder / "data.csv"


def test_csv_png16_keeps_its_values_as_hu(tmp_path):
    """CT exported as PNG16 (HU + 1024) comes back as the same HU, never through 8 bits; the record says so."""
    hu = np.linspace(-1000, 2000, 24 * 24).reshape(24, 24).astype(np.int16)
    rows = []
    for p in range(6):
        Image.fromarray((hu + 1024 + p).astype(np.uint16)).save(tmp_path / f"s{p}.png")
        rows.append(f"s{p}.png,{'ab'[p % 2]},P{p},{('train', 'val', 'test')[p % 3]}")
    path = _csv_dataset(tmp_path, rows, "path,label,patient,split")
    data = open_dataset(str(path))
    assert data.kind == "ct" and "HU = stored value - 1024" in data.describe()["intensity"]
    images = {s.group: s.image for v in data.samples.values() for s in v}
    assert len(images) == 6
    for image in images.values():
        assert image.dtype == np.int16 and image.shape == (24, 24)
    got = sorted(int(im[0, 0]) for im in images.values())
    assert got == [-1000 + p for p in range(6)]
    assert any(np.array_equal(im, hu) for im in images.values())
    # Another offset, stated in the spec; the cache fingerprint follows it.
    shifted = open_dataset(f"{path}@hu_offset=1000")
    assert sorted(int(s.image[0, 0]) for v in shifted.samples.values() for s in v) == [-976 + p for p in range(6)]
    assert shifted.fingerprint != data.fingerprint
    # 8-bit and 16-bit in one dataset: refused, not silently mixed.
    _png(tmp_path / "e.png", 7, 24)
    with pytest.raises(ValueError, match="mixes 8-bit and 16-bit"):
        open_dataset(str(_csv_dataset(tmp_path, [*rows, "e.png,a,P9,train"], "path,label,patient,split")))


def test_csv_without_patients_is_refused_unless_each_image_is_its_own(tmp_path, caplog):
    rows = []
    for i in range(12):
        _png(tmp_path / f"{i}.png", i)
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    path = _csv_dataset(tmp_path, rows, "path,label")
    with pytest.raises(ValueError, match="no patient column") as err:
        open_dataset(str(path))
    assert "@patients=per-image" in str(err.value)
    with caplog.at_level("WARNING"):
        data = open_dataset(f"{path}@patients=per-image")
    assert "each image is its own patient" in caplog.text
    assert sum(len(v) for v in data.samples.values()) == 12
    assert len({s.group for v in data.samples.values() for s in v}) == 12
    assert "patients=per-image" in data.describe()["intensity"]
    with pytest.raises(ValueError, match="Unknown CSV dataset option"):
        open_dataset(f"{path}@patient=per-image")


def test_csv_splits_follow_patient_ids_not_the_file(tmp_path):
    """Adding a row (a new patient) changes the CSV's bytes and keys, and moves no other patient."""
    rows = []
    for p in range(40):
        _png(tmp_path / f"p{p}.png", p)
        rows.append(f"p{p}.png,{'ab'[p % 2]},P{p}")
    before = open_dataset(str(_csv_dataset(tmp_path / "a", [f"../{r}" for r in rows])))
    _png(tmp_path / "new.png", 99)
    after = open_dataset(str(_csv_dataset(tmp_path / "b", [f"../{r}" for r in rows] + ["../new.png,a,NEW"])))
    assert before.fingerprint != after.fingerprint

    def sizes(data):       # per split: the images' pixel values (one value per patient here)
        return {s: sorted(int(np.asarray(x.image)[0, 0]) for x in data.samples[s]) for s in data.samples}

    b, a = sizes(before), sizes(after)
    for split in b:
        assert [v for v in a[split] if v != 99] == b[split]


def test_csv_label_picks_the_column_and_errors_name_rows_not_paths(tmp_path):
    rows = []
    for p in range(12):
        _png(tmp_path / "Doe^John" / f"{p}.png", p)
        rows.append(f"Doe^John/{p}.png,{'ab'[p % 2]},{'xyz'[p % 3]},P{p}")
    path = _csv_dataset(tmp_path, rows, "path,label,texture,patient")
    assert set(open_dataset(str(path)).classes) <= {"a", "b"}
    texture = open_dataset(str(path), "texture")
    assert texture.label == "texture" and set(texture.classes) <= {"x", "y", "z"} and len(texture.classes) >= 2
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['margin'\].*labels present: \['label', 'texture'\]"):
        open_dataset(str(path), "margin")
    images = open_dataset(str(path), "")
    assert images.classes == [] and sum(len(v) for v in images.samples.values()) == 12
    # A listed file that is missing, or not a picture (a DICOM file): the row, never the path.
    (tmp_path / "Doe^John" / "ct.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    for extra, match in (("Doe^John/gone.png,a,x,P1", "row 14"), ("Doe^John/ct.dcm,a,x,P1", "Row 14")):
        with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
            open_dataset(str(_csv_dataset(tmp_path, [*rows, extra], "path,label,texture,patient")))
        assert "Doe" not in str(err.value)


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
