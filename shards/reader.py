"""Reading ctssl shards: ``iter_samples(path)`` over a shard, a folder or a manifest."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

from ctssl.shards.encoding import decode_hu
from ctssl.shards.manifest import MANIFEST_NAME, load_manifest


def shard_paths(path: str | Path, split: str | None = None) -> list[Path]:
    """The shard files behind ``path``: a ``.tar``, a folder (its manifest if present), or a
    ``manifest.json``; ``split`` keeps one split (manifest only)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if path.is_dir() and (path / MANIFEST_NAME).exists():
        path = path / MANIFEST_NAME
    if path.is_file() and path.name.endswith(".json"):
        manifest = load_manifest(path)
        return [path.parent / s["name"] for s in manifest["shards"] if split is None or s["split"] == split]
    if path.is_dir():
        if split is not None:
            return sorted(path.glob(f"{split}-*.tar"))
        return sorted(path.glob("*.tar"))
    raise FileNotFoundError(f"'{path}' is not a shard (.tar), a shard folder or a manifest.json.")


def iter_shard(path: Path, decode: bool = True) -> Iterator[dict]:
    """Samples of one shard, in order: dicts with ``key``, ``hu`` and ``meta``.

    With ``decode=False`` the raw member bytes are returned under their extensions instead.
    """
    current, members = None, {}
    with tarfile.open(path, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            if current is not None and key != current:
                yield _sample(current, members, decode)
                members = {}
            current = key
            members[ext] = tar.extractfile(info).read()
    if current is not None:
        yield _sample(current, members, decode)


def _sample(key: str, members: dict[str, bytes], decode: bool) -> dict:
    if not decode:
        return {"key": key, **members}
    missing = {"hu", "json"} - members.keys()
    if missing:
        raise ValueError(f"sample '{key}' lacks member(s) {sorted(missing)}")
    return {"key": key, "hu": decode_hu(members["hu"]), "meta": json.loads(members["json"])}


def iter_samples(path: str | Path, split: str | None = None) -> Iterator[dict]:
    """Every sample under ``path`` (shard, folder or manifest): ``{"key", "hu", "meta"}``.

    ``hu`` is an int16 (H, W) array of Hounsfield units; ``meta`` the sample's JSON metadata.
    """
    for shard in shard_paths(path, split):
        yield from iter_shard(shard)
