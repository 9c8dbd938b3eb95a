"""Check a shard folder against its manifest: every byte, every sample."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ctssl.core.atomic import TMP_MARK
from ctssl.shards.manifest import load_manifest
from ctssl.shards.reader import IMAGE_MEMBERS, iter_shard
from ctssl.shards.writer import file_sha256


def verify_shards(folder: str | Path) -> tuple[list[str], dict]:
    """(problems, counts). No problems means every shard matches the manifest and decodes. Raises
    FileNotFoundError / ValueError when ``folder`` is not a shard folder at all."""
    folder = Path(folder)
    problems: list[str] = []
    manifest = load_manifest(folder)     # not a shard folder: an error (exit 2), not a list of problems
    listed = {s["name"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in folder.glob("*.tar")):
        if extra not in listed:
            problems.append(f"{extra}: shard not listed in the manifest")
    for leftover in sorted(p.name for p in folder.glob(f"*{TMP_MARK}*")):
        problems.append(f"{leftover}: incomplete file left by an interrupted write")
    keys: Counter = Counter()
    per_split: Counter = Counter()
    ct = manifest.get("kind", "ct") == "ct"
    for shard in manifest["shards"]:
        path = folder / shard["name"]
        if not path.exists():
            problems.append(f"{shard['name']}: missing")
            continue
        size = path.stat().st_size
        if size != shard["bytes"]:
            problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
        if file_sha256(path) != shard["sha256"]:
            problems.append(f"{shard['name']}: SHA-256 differs from the manifest (corrupted)")
        count = 0

        def problem(key, reason, shard=shard):
            problems.append(f"{shard['name']}: {key + ': ' if key else ''}{reason}")

        for sample in iter_shard(path, decode=ct, on_error=problem):
            count += 1
            keys[sample["key"]] += 1
            if not ct:   # natural images: the encoded picture and its metadata, checksums checked
                if "json" not in sample or not set(sample) & set(IMAGE_MEMBERS):
                    problems.append(f"{shard['name']}: {sample['key']} lacks its image or metadata")
                continue
            meta = sample["meta"]
            if list(sample["hu"].shape) != meta.get("shape"):
                problems.append(f"{shard['name']}: {sample['key']} image shape "
                                f"{list(sample['hu'].shape)} differs from its metadata {meta.get('shape')}")
            if meta.get("split") != shard["split"]:
                problems.append(f"{shard['name']}: {sample['key']} is in split {meta.get('split')}")
        if count != shard["samples"]:
            problems.append(f"{shard['name']}: {count} samples decoded, manifest says {shard['samples']}")
        per_split[shard["split"]] += count
    for key, n in keys.items():
        if n > 1:
            problems.append(f"sample key {key} appears {n} times")
    for split, entry in manifest["splits"].items():
        if per_split[split] != entry["samples"]:
            problems.append(f"split {split}: {per_split[split]} samples decoded, manifest says {entry['samples']}")
    return problems, {"shards": len(manifest["shards"]), "samples": sum(keys.values()),
                      "per_split": dict(sorted(per_split.items()))}
