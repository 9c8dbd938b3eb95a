"""Downstream datasets: labelled images with their split and their patient (group).

One spec string names a dataset; ``open_dataset(spec, label)`` reads it into a ``Dataset`` whose
``split(name)`` lists ``Sample(image, target, group, key)``:

=====================================  ===========================================================
a ctssl shard folder (``manifest.json``)  CT (``.hu``) or natural-image shards; ``label`` is a key of
                                       the samples' labels (``ctssl ingest --labels``), or
                                       ``a+b+c`` for a multi-label task of 0/1 columns; splits and
                                       patients come from ingest (patient-level already);
                                       ``FOLDER@key=value`` keeps the samples whose metadata has
                                       that value (e.g. ``@manufacturer=SIEMENS``, ``@source=nifti``:
                                       one scanner or one source format as a domain)
``imagefolder:ROOT``                   ``ROOT/{train,val,test}/CLASS/*.png|jpg``
``FILE.csv``                           columns ``path,label`` and optionally ``split`` and
                                       ``patient``; paths relative to the CSV; without ``split``
                                       the split is a keyed hash of the patient (70/15/15), so a
                                       patient's images never cross splits
``FILE.npz``                           MedMNIST (``{train,val,test}_images``/``_labels``); labels
                                       (N, 1) are classes, (N, C > 1) multi-label (ChestMNIST)
=====================================  ===========================================================

Images are kept as they are stored: int16 HU arrays for CT shards, PIL images or uint8 arrays
otherwise (``eval.inputs`` prepares them for a backbone). ``Dataset.fingerprint`` identifies the
content (manifest or file hash) for caches and provenance.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Sample:
    image: object                  # np.ndarray (int16 HU or uint8) or PIL.Image
    target: object                 # class name (str) or tuple of 0/1 (multi-label)
    group: str                     # patient pseudonym (or the sample's own key)
    key: str


@dataclass
class Dataset:
    spec: str
    label: str
    kind: str                      # "ct" (HU arrays) or "image" (8-bit pictures)
    fingerprint: str
    samples: dict[str, list[Sample]]
    classes: list[str] = field(default_factory=list)   # class names, or label columns if multi-label
    multilabel: bool = False

    def split(self, name: str) -> list[Sample]:
        if name not in self.samples or not self.samples[name]:
            raise ValueError(f"Dataset '{self.spec}' has no samples with label '{self.label}' in split "
                             f"'{name}' (splits with samples: {[s for s in self.samples if self.samples[s]]}).")
        return self.samples[name]

    def has(self, split: str) -> bool:
        return bool(self.samples.get(split))

    def targets(self, split: str) -> np.ndarray:
        """(N,) class indices or (N, C) 0/1 for multi-label."""
        samples = self.split(split)
        if self.multilabel:
            return np.asarray([s.target for s in samples], dtype=np.int64)
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index.get(s.target, -1) for s in samples], dtype=np.int64)

    def groups(self, split: str) -> np.ndarray:
        return np.asarray([s.group for s in self.split(split)])

    def describe(self) -> dict:
        return {"spec": self.spec, "label": self.label, "kind": self.kind, "fingerprint": self.fingerprint,
                "classes": self.classes, "multilabel": self.multilabel,
                "counts": {s: len(v) for s, v in self.samples.items()}}


def open_dataset(spec: str, label: str = "region") -> Dataset:
    """Read the dataset named by ``spec`` (module docstring)."""
    if spec.startswith("imagefolder:"):
        data = _imagefolder(spec, Path(spec.split(":", 1)[1]))
    elif spec.endswith(".csv"):
        data = _csv(spec, Path(spec))
    elif spec.endswith(".npz"):
        data = _medmnist(spec, Path(spec), label)
    else:
        path, _, where = spec.partition("@")
        if where and "=" not in where:
            raise ValueError(f"Filter '@{where}' in '{spec}' must be @key=value.")
        data = _shards(spec, Path(path), label, tuple(where.split("=", 1)) if where else None)
    if not data.multilabel:
        # Classes are those of the training split; others are counted as unseen where used.
        data.classes = sorted({s.target for s in data.samples.get("train", [])} or
                              {s.target for v in data.samples.values() for s in v})
    return data


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _shards(spec: str, path: Path, label: str, where: tuple[str, str] | None = None) -> Dataset:
    from pretrain.loader import decode
    from shards.manifest import MANIFEST_NAME
    from shards.reader import iter_shard, shard_paths

    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"'{spec}' is not a shard folder (no {MANIFEST_NAME}), imagefolder:ROOT, "
                                ".csv or .npz dataset.")
    columns = label.split("+") if "+" in label else None
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    kind = None
    for split in SPLITS:
        for shard in shard_paths(manifest, split):
            for raw in iter_shard(shard, decode=False):
                image, meta = decode(raw)
                kind = kind or ("ct" if "hu" in raw else "image")
                if where and str(meta.get(where[0], (meta.get("labels") or {}).get(where[0]))) != where[1]:
                    continue
                labels = {**(meta.get("labels") or {}), **({"class": meta["class"]} if "class" in meta else {})}
                if columns:
                    if any(c not in labels for c in columns):
                        continue
                    target = tuple(int(float(labels[c]) > 0) for c in columns)
                elif label in labels and labels[label] not in (None, ""):
                    target = str(labels[label])
                else:
                    continue
                samples[split].append(Sample(image, target, str(meta.get("patient") or raw["key"]), raw["key"]))
    fingerprint = _hash_file(manifest) + (f"@{where[0]}={where[1]}" if where else "")
    return Dataset(spec, label, kind or "ct", fingerprint, samples,
                   classes=columns or [], multilabel=bool(columns))


def _load_image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def _imagefolder(spec: str, root: Path) -> Dataset:
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root '{root}' does not exist.")
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    digest = hashlib.sha256()
    for split in SPLITS:
        for class_dir in sorted(p for p in (root / split).glob("*") if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                key = f"{split}/{class_dir.name}/{file.name}"
                digest.update(key.encode() + str(file.stat().st_size).encode())
                samples[split].append(Sample(_load_image(file), class_dir.name, key, key))
    if not any(samples.values()):
        raise ValueError(f"No images under '{root}/{{train,val,test}}/CLASS/'.")
    return Dataset(spec, "class", "image", digest.hexdigest(), samples)


def split_of(group: str, fractions=(0.7, 0.15, 0.15)) -> str:
    """A stable split for a patient without one: a hash of its ID into [0, 1)."""
    u = int(hashlib.sha256(group.encode()).hexdigest()[:12], 16) / 16 ** 12
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def _csv(spec: str, path: Path) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"CSV dataset '{path}' does not exist.")
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"CSV dataset '{path}' lacks column(s) {sorted(missing)}; it needs path,label "
                             "and optionally split,patient.")
        for row in reader:
            file = (path.parent / row["path"]).resolve()
            if not file.is_file():
                raise FileNotFoundError(f"'{file}' listed in '{path}' does not exist.")
            group = row.get("patient") or row["path"]
            split = row.get("split") or split_of(group)
            if split not in samples:
                raise ValueError(f"Unknown split '{split}' in '{path}' (valid: {list(SPLITS)}).")
            samples[split].append(Sample(_load_image(file), row["label"], group, row["path"]))
    return Dataset(spec, "label", "image", _hash_file(path), samples)


def _medmnist(spec: str, path: Path, label: str) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file '{path}' does not exist (nothing is downloaded).")
    data = np.load(path)
    needed = [f"{s}_{p}" for s in SPLITS for p in ("images", "labels")]
    missing = [k for k in needed if k not in data.files]
    if missing:
        raise ValueError(f"'{path}' is not a MedMNIST file: missing arrays {missing}.")
    multilabel = data["train_labels"].ndim == 2 and data["train_labels"].shape[1] > 1
    samples: dict[str, list[Sample]] = {}
    for split in SPLITS:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        samples[split] = [
            Sample(images[i], tuple(int(v) for v in labels[i]) if multilabel else str(int(labels[i].reshape(-1)[0])),
                   f"{split}-{i}", f"{split}-{i}")
            for i in range(len(images))]
    classes = [str(c) for c in range(data["train_labels"].shape[1])] if multilabel else []
    return Dataset(spec, label if label != "region" else "label", "image", _hash_file(path), samples,
                   classes=classes, multilabel=multilabel)


def image_to_array(image) -> np.ndarray:
    """A PIL image or uint8 array as float32 (C, H, W) in [0, 1]."""
    if hasattr(image, "mode"):
        image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = arr.transpose(2, 0, 1)
    scale = 255.0 if arr.dtype == np.uint8 else (65535.0 if arr.dtype == np.uint16 else 1.0)
    return arr.astype(np.float32) / scale

