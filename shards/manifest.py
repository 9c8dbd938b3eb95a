"""The shard set's manifest: every shard with its sample count, size and checksum; totals."""

from __future__ import annotations

import json
from pathlib import Path

from ctssl.core.atomic import atomic_write_text

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "ctssl-shards"
FORMAT_VERSION = 1


def load_manifest(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"No manifest at '{path}'. Is this a ctssl shard folder?")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"'{path}' is not a ctssl shard manifest (format {manifest.get('format')!r}).")
    return manifest


def build_manifest(shards: list[dict], config: dict, version: str, extra: dict | None = None) -> dict:
    splits: dict[str, dict] = {}
    for s in shards:
        entry = splits.setdefault(s["split"], {"shards": 0, "samples": 0, "bytes": 0, "series": 0})
        entry["shards"] += 1
        entry["samples"] += s["samples"]
        entry["bytes"] += s["bytes"]
        entry["series"] += len(s.get("series", []))
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ctssl_version": version,
        "encoding": {"hu": "CTHU v1: byte-shuffled little-endian int16 HU, Zstandard (shards/FORMAT.md)",
                     "json": "UTF-8 JSON metadata"},
        "shards": shards,
        "splits": dict(sorted(splits.items())),
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards)},
        **(extra or {}),
        "config": config,
    }


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return path
