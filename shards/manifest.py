"""The shard set's manifest: every shard with its sample count, size and checksum; totals."""

from __future__ import annotations

import json
from pathlib import Path

from ctssl.core.atomic import atomic_write_text

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "ctssl-shards"
FORMAT_VERSION = 1


def load_manifest(path) -> dict:
    """The manifest of a shard folder (or the ``manifest.json`` named), local or remote (shards/location.py)."""
    from ctssl.shards.location import Remote, location, remote_text

    given = location(path)
    path = given / MANIFEST_NAME if given.is_dir() else given
    if isinstance(path, Remote):
        try:
            return _parse(path, remote_text(path))
        except OSError as err:
            raise FileNotFoundError(f"cannot read the shard manifest {path} ({' '.join(str(err).split())[:200]}); "
                                    f"expected {MANIFEST_NAME} at that location.") from None
    if not path.exists():
        if not given.exists():
            raise FileNotFoundError(f"'{given}' does not exist; expected a ctssl shard folder (one holding "
                                    f"{MANIFEST_NAME}, written by ctssl ingest, ctssl shards from-images or shuffle).")
        tars = len(list(given.glob("*.tar"))) if given.is_dir() else 0
        found = f"it holds {tars} .tar file(s) but no manifest (an unfinished ingest?)" if tars else \
            "it is not a shard folder" if given.is_dir() else "it is a file"
        raise FileNotFoundError(f"'{given}' is not a ctssl shard folder: expected {MANIFEST_NAME} there "
                                f"(written by ctssl ingest, ctssl shards from-images or shuffle); {found}.")
    return _parse(path, path.read_text())


def _parse(path, text: str) -> dict:
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"'{path}' is not valid JSON: not a ctssl shard manifest, or a damaged one.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"'{path}' is not a ctssl shard manifest (format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT_NAME!r}).")
    return manifest


SEG_ENCODING = "CTSG v1: uint8 class ids (manifest segmentation.labels), Zstandard with its checksum (shards/FORMAT.md)"


def build_manifest(shards: list[dict], config: dict, version: str, extra: dict | None = None) -> dict:
    """The manifest of ``shards`` (ShardInfo dicts); ``extra`` adds top-level fields (``segmentation`` also adds
    the ``.seg`` encoding)."""
    splits: dict[str, dict] = {}
    for s in shards:
        entry = splits.setdefault(s["split"], {"shards": 0, "samples": 0, "bytes": 0, "series": 0})
        entry["shards"] += 1
        entry["samples"] += s["samples"]
        entry["bytes"] += s["bytes"]
        entry["series"] += len(s.get("series", []))
    encoding = {"hu": "CTHU v2: byte-shuffled little-endian int16 HU, Zstandard with its checksum (shards/FORMAT.md)",
                "json": "UTF-8 JSON metadata"}
    if extra and "segmentation" in extra:
        encoding["seg"] = SEG_ENCODING
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ctssl_version": version,
        "encoding": encoding,
        "sample_checksums": True,     # every sample carries KEY.crc (shards/FORMAT.md); readers require it
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
