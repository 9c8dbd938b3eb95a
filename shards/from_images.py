"""An ImageFolder tree (e.g. ImageNet's train folder) -> ctssl shards, encoded images kept as is.

``ROOT`` is either one ImageFolder (``ROOT/CLASS/image.jpg``, written as split ``train``) or a
folder of them per split (``ROOT/train/CLASS/...``, ``ROOT/val/CLASS/...``). Each sample is the
file's original bytes under its own extension (``KEY.jpg``, ``KEY.png``, ...) and ``KEY.json``
with ``class``, ``label`` (index in the sorted class list), ``split`` and ``source: natural``.
Samples are written in a seeded random order, so shards mix classes. The manifest says
``"kind": "natural"`` and lists the classes; the same loader reads both corpora.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ctssl import __version__
from ctssl.core.atomic import remove_stale_temporaries
from ctssl.shards.manifest import MANIFEST_NAME, build_manifest, write_manifest
from ctssl.shards.writer import ShardWriter

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}   # ctssl.shards.reader.IMAGE_MEMBERS
SPLITS = ("train", "val", "test")


@dataclass
class FromImagesConfig:
    """The settings of ``ctssl shards from-images`` (the manifest records them)."""
    out: str = ""                  # output shard folder
    shard_size_mb: float = 256.0   # target shard size
    seed: int = 0                  # order of the samples in the shards


def _image_folder(root: Path) -> list[tuple[Path, str]]:
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in EXTENSIONS:
                items.append((path, class_dir.name))
    return items


def images_to_shards(root: str | Path, out: str | Path, shard_size_mb: float = FromImagesConfig.shard_size_mb,
                     seed: int = FromImagesConfig.seed) -> dict:
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder '{root}' does not exist.")
    if (out / MANIFEST_NAME).exists():
        return json.loads((out / MANIFEST_NAME).read_text())
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not split_dirs:
        split_dirs = {"train": root}
    per_split = {split: _image_folder(folder) for split, folder in split_dirs.items()}
    classes = sorted({c for items in per_split.values() for _, c in items})
    if not classes:
        raise ValueError(f"No images in class folders under '{root}' (extensions {sorted(EXTENSIONS)}).")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    shards = []
    for split, items in per_split.items():
        random.Random(seed).shuffle(items)
        writer, index = None, 0
        for i, (path, cls) in enumerate(items):
            if writer is None:
                writer = ShardWriter(out, f"{split}-{index:05d}.tar", split)
                index += 1
            key = f"{split}-{i:08d}"
            meta = {"key": key, "class": cls, "label": classes.index(cls), "split": split, "source": "natural"}
            writer.add(key, {path.suffix.lower().lstrip("."): path.read_bytes(),
                             "json": json.dumps(meta, sort_keys=True).encode()})
            if writer.size >= shard_size_mb * 1e6:
                shards.append(asdict(writer.close()))
                writer = None
        if writer is not None:
            shards.append(asdict(writer.close()))
    manifest = build_manifest(shards, {"root": str(root), "shard_size_mb": shard_size_mb, "seed": seed},
                              __version__,
                              {"kind": "natural", "classes": classes, "order": "shuffled"})
    manifest["encoding"] = {"image": "the source file's bytes, unchanged", "json": "UTF-8 JSON metadata"}
    write_manifest(out, manifest)
    return manifest
