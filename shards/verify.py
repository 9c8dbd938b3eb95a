"""Check a shard folder against its manifest: every byte, every sample, every mask."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

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
    masks = MaskTally()
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
            problems.extend(f"{shard['name']}: {sample['key']} {p}" for p in masks.add(sample, shard["split"]))
        if count != shard["samples"]:
            problems.append(f"{shard['name']}: {count} samples decoded, manifest says {shard['samples']}")
        per_split[shard["split"]] += count
    for key, n in keys.items():
        if n > 1:
            problems.append(f"sample key {key} appears {n} times")
    for split, entry in manifest["splits"].items():
        if per_split[split] != entry["samples"]:
            problems.append(f"split {split}: {per_split[split]} samples decoded, manifest says {entry['samples']}")
    if ct:
        problems.extend(masks.compare(manifest.get("segmentation")))
    return problems, {"shards": len(manifest["shards"]), "samples": sum(keys.values()),
                      "per_split": dict(sorted(per_split.items()))}


class MaskTally:
    """Masks as the samples hold them, against their metadata and the manifest's ``segmentation``."""

    def __init__(self):
        self.splits: dict[str, dict] = {}

    def add(self, sample: dict, split: str) -> list[str]:
        """Problems of one decoded sample's mask (its shape is checked by the reader); tallies it."""
        mask, meta = sample.get("mask"), sample["meta"]
        if mask is None:
            return ["has mask metadata but no .seg member"] if meta.get("mask") or "mask_pixels" in meta else []
        counts = np.bincount(mask.ravel(), minlength=1)
        pixels = {str(c): int(n) for c, n in enumerate(counts) if n}
        problems = [] if meta.get("mask") is True else ["has a .seg member but its metadata lacks \"mask\": true"]
        if meta.get("mask_pixels") != pixels:
            problems.append(f"mask_pixels {meta.get('mask_pixels')} differ from its mask's {pixels}")
        entry = self.splits.setdefault(split, {"series": set(), "slices": 0, "pixels": Counter()})
        entry["series"].add(meta.get("series"))
        entry["slices"] += 1
        entry["pixels"].update({int(c): n for c, n in pixels.items()})
        return problems

    def compare(self, segmentation: dict | None) -> list[str]:
        """Problems of the manifest's ``segmentation`` against the tallied masks."""
        if segmentation is None:
            return [f"{sum(e['slices'] for e in self.splits.values())} samples hold masks but the manifest has no "
                    "segmentation"] if self.splits else []
        problems = []
        labels = segmentation.get("labels", {})
        listed = segmentation.get("splits", {})
        for split in sorted(set(listed) | set(self.splits)):
            found = self.splits.get(split, {"series": set(), "slices": 0, "pixels": Counter()})
            have = {"cases": len(found["series"]), "slices": found["slices"],
                    "pixels": {str(c): n for c, n in sorted(found["pixels"].items())}}
            if listed.get(split) != have:
                problems.append(f"segmentation of split {split}: manifest says {listed.get(split)}, "
                                f"the masks hold {have}")
            unnamed = sorted(c for c in found["pixels"] if str(c) not in labels)
            if unnamed:
                problems.append(f"segmentation of split {split}: class ids {unnamed} have no name in "
                                "segmentation.labels")
        return problems
