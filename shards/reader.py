"""Reading ctssl shards: ``iter_samples(path)`` over a shard, a folder or a manifest; ``iter_shard`` over
one shard, with every sample checked.

Checks, on every read (training, evaluation, verification, shuffling): each sample's members against
its ``KEY.crc`` member (CRC-32 of each other member, shards/FORMAT.md), the ``.hu`` image's and the
``.seg`` mask's own Zstandard checksums when decoded, the sample's members being all there, and, given the count the
manifest promises, the shard not ending early. A damaged sample is skipped and reported through
``on_error(key, reason)``; damage to the tar itself (a broken header, a truncated file) ends the shard
and is reported with ``key=None``. Without ``on_error`` every problem raises ``ShardError``.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ctssl.shards.encoding import EncodingError, decode_hu, decode_seg
from ctssl.shards.manifest import MANIFEST_NAME, load_manifest

CHECKSUM_EXT = "crc"
MASK_EXT = "seg"                                        # segmentation mask (CTSG, shards/FORMAT.md)
IMAGE_MEMBERS = ("bmp", "jpeg", "jpg", "png", "webp")   # natural-image shards (shards.from_images)
OnError = Callable[[str | None, str], None]
_READ = [0]     # samples iter_shard has read in this process (what start-up reads is measured with it)


def samples_read() -> int:
    """How many samples ``iter_shard`` has read in this process so far (good and damaged)."""
    return _READ[0]


class ShardError(ValueError):
    """A damaged sample (``key`` set) or a damaged shard (``key`` None)."""

    def __init__(self, key: str | None, reason: str):
        super().__init__(f"sample {key}: {reason}" if key else reason)
        self.key, self.reason = key, reason


def checksum_member(members: dict[str, bytes]) -> bytes:
    """The ``KEY.crc`` member of a sample: ``ext:crc32hex`` per member, sorted, space-separated."""
    return " ".join(f"{ext}:{zlib.crc32(data):08x}" for ext, data in sorted(members.items())).encode()


def check_members(key: str, members: dict[str, bytes]) -> None:
    """Raise ShardError when a member differs from the sample's ``.crc`` record (no record: unchecked,
    as in shards written before ctssl 0.2)."""
    record = members.get(CHECKSUM_EXT)
    if record is None:
        return
    try:
        expected = dict(item.split(":", 1) for item in record.decode("ascii").split())
    except (UnicodeDecodeError, ValueError):
        raise ShardError(key, "unreadable checksum member") from None
    present = {ext for ext in members if ext != CHECKSUM_EXT}
    if set(expected) != present:
        raise ShardError(key, f"members {sorted(present)} differ from the checksummed {sorted(expected)}")
    for ext in sorted(present):
        if f"{zlib.crc32(members[ext]):08x}" != expected[ext]:
            raise ShardError(key, f"checksum mismatch in .{ext} (corrupted)")


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


def expected_counts(path: str | Path) -> dict[str, int]:
    """Shard file name -> sample count promised by the manifest of the folder holding ``path``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / MANIFEST_NAME).exists():
        return {}
    return {s["name"]: s["samples"] for s in load_manifest(folder)["shards"]}


def _raise(key: str | None, reason: str) -> None:
    raise ShardError(key, reason)


def iter_shard(path: Path, decode: bool = True, on_error: OnError | None = None,
               expected: int | None = None) -> Iterator[dict]:
    """Samples of one shard, in order, each checked (module docstring).

    With ``decode`` a sample is ``{"key", "hu", "meta", "mask"}`` (int16 HU image, its metadata, and its
    uint8 segmentation mask or None); without, ``{"key", <ext>: bytes, ...}`` with the raw members
    (checksums checked all the same).
    """
    report = on_error or _raise
    good = bad = 0
    current, members = None, {}

    def finish(key, parts):
        nonlocal good, bad
        _READ[0] += 1
        try:
            sample = _sample(key, parts, decode)
        except ShardError as err:
            bad += 1
            report(key, err.reason)
            return None
        good += 1
        return sample

    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                if current is not None and key != current:
                    sample = finish(current, members)
                    if sample is not None:
                        yield sample
                    members = {}
                current = key
                members[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        # A damaged tar: the samples read so far stand; the one being read is not trusted.
        current = None
        report(None, f"{Path(path).name}: unreadable after {good + bad} sample(s) ({type(err).__name__}: {err})")
    if current is not None:
        sample = finish(current, members)
        if sample is not None:
            yield sample
    if expected is not None and good + bad < expected:
        report(None, f"{Path(path).name}: ended after {good + bad} of {expected} samples "
                     f"({expected - good - bad} missing)")


def _sample(key: str, members: dict[str, bytes], decode: bool) -> dict:
    check_members(key, members)
    members.pop(CHECKSUM_EXT, None)
    if not decode:
        return {"key": key, **members}
    missing = {"hu", "json"} - members.keys()
    if missing:
        raise ShardError(key, f"lacks member(s) {sorted(missing)}")
    try:
        hu, meta = decode_hu(members["hu"]), json.loads(members["json"])
    except (EncodingError, ValueError) as err:   # json.JSONDecodeError is a ValueError
        raise ShardError(key, f"{type(err).__name__}: {err}") from None
    mask = decode_mask({"key": key, **members})
    if mask is not None and mask.shape != hu.shape:
        raise ShardError(key, f"mask shape {mask.shape} differs from the image's {hu.shape}")
    return {"key": key, "hu": hu, "meta": meta, "mask": mask}


def decode_mask(raw: dict) -> np.ndarray | None:
    """The uint8 (H, W) class-id mask of a raw sample (``iter_shard(..., decode=False)``), or None when the
    sample has no ``.seg`` member. Class ids are named in the manifest's ``segmentation.labels``. Raises
    ShardError when the member does not decode (its checksum included)."""
    data = raw.get(MASK_EXT)
    if data is None:
        return None
    try:
        return decode_seg(data)
    except EncodingError as err:
        raise ShardError(raw.get("key"), f"{type(err).__name__} in .{MASK_EXT}: {err}") from None


def decode_image(raw: dict):
    """(image, meta) of a raw sample: an int16 HU array for CT, an RGB PIL image for natural images.
    Raises ShardError when the image does not decode."""
    meta = json.loads(raw["json"]) if "json" in raw else {}
    try:
        if "hu" in raw:
            return decode_hu(raw["hu"]), meta
        for ext in IMAGE_MEMBERS:
            if ext in raw:
                from PIL import Image

                with Image.open(io.BytesIO(raw[ext])) as image:
                    return image.convert("RGB"), meta
    except (EncodingError, OSError, ValueError) as err:   # PIL raises OSError on truncated images
        raise ShardError(raw.get("key"), f"{type(err).__name__}: {err}") from None
    raise ShardError(raw.get("key"), f"no image member (.hu or one of {IMAGE_MEMBERS})")


def iter_samples(path: str | Path, split: str | None = None, on_error: OnError | None = None) -> Iterator[dict]:
    """Every sample under ``path`` (shard, folder or manifest): ``{"key", "hu", "meta", "mask"}``, checked.

    ``hu`` is an int16 (H, W) array of Hounsfield units; ``meta`` the sample's JSON metadata; ``mask`` the
    uint8 (H, W) segmentation mask lying on ``hu`` pixel for pixel, or None when the sample has none.
    """
    counts = expected_counts(path)
    for shard in shard_paths(path, split):
        yield from iter_shard(shard, on_error=on_error, expected=counts.get(shard.name))
