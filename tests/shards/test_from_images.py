"""ctssl shards from-images: an ImageFolder tree to shards, each image's bytes kept, classes indexed in sorted
order, samples in a seeded order that mixes classes, the settings in the manifest."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from ctssl.shards.from_images import images_to_shards
from ctssl.shards.reader import iter_shard, shard_paths


def _folder(root, classes=("cat", "dog"), per_class=6):
    files = {}
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(classes):
            for i in range(per_class):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 100 * s + 40 * c + i, np.uint8)).save(path)
                files[path.read_bytes()] = (split, name)
    return files


def test_images_keep_their_bytes_class_and_split_in_a_seeded_mixed_order(tmp_path):
    files = _folder(tmp_path / "root")
    manifest = images_to_shards(tmp_path / "root", tmp_path / "shards", shard_size_mb=0.001, seed=3)
    assert manifest["kind"] == "natural" and manifest["classes"] == ["cat", "dog"]
    assert manifest["config"]["seed"] == 3 and manifest["totals"]["samples"] == len(files)
    seen, train_classes = {}, []
    for split in ("train", "val"):
        for path in shard_paths(tmp_path / "shards", split):
            for sample in iter_shard(path, decode=False):
                meta = json.loads(sample["json"])
                seen[sample["png"]] = (meta["split"], meta["class"])
                assert meta["label"] == ["cat", "dog"].index(meta["class"]) and meta["source"] == "natural"
                Image.open(io.BytesIO(sample["png"])).load()
                if split == "train":
                    train_classes.append(meta["class"])
    assert seen == files                                              # every image once, bytes unchanged
    assert train_classes != sorted(train_classes)                     # classes mixed, not in folder order
    again = images_to_shards(tmp_path / "root", tmp_path / "again", shard_size_mb=0.001, seed=3)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    other = images_to_shards(tmp_path / "root", tmp_path / "other", shard_size_mb=0.001, seed=4)
    assert [s["sha256"] for s in other["shards"]] != [s["sha256"] for s in manifest["shards"]]
