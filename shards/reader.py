"""Reading ctssl shards: ``iter_samples(path)`` over a shard, a folder or a manifest; ``iter_shard`` over
one shard, with every sample checked.

Checks, on every read (training, evaluation, verification, shuffling): each sample's member set and members
against its ``KEY.crc`` member (the CRC-32 of each other member, shards/FORMAT.md), the ``.hu`` image's and the
``.seg`` mask's own Zstandard checksums when decoded, the sample's members being all there (its metadata and
its image), and, given the count the manifest promises, the shard not ending early. In a shard set whose
manifest says its samples carry checksums (``sample_checksums``; every set written since ``.crc`` exists), a
sample without ``.crc`` is itself damaged: a flipped bit in a member's name can move a member to another key or
rename ``.crc``, and the sample is then reported, never read incomplete. Members that a damaged name split off
their sample are put back together by the ``.crc`` that follows them (members come in the order ``.hu``,
``.json``, [``.seg``], ``.crc``) and reported as one damaged sample, so the count stays the manifest's. A
damaged sample is skipped and reported through ``on_error(key, reason)``; damage to the tar itself (a broken
header, a truncated file) ends the shard and is reported with ``key=None``. Without ``on_error`` every problem
raises ``ShardError``.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ctssl.shards.encoding import EncodingError, decode_hu, decode_seg
from ctssl.shards.location import Remote, location, open_binary
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


def checksummed_members(record: bytes) -> dict[str, str] | None:
    """The ``.crc`` record as {ext: crc32 hex}, or None when it cannot be read."""
    try:
        return dict(item.split(":", 1) for item in record.decode("ascii").split())
    except (UnicodeDecodeError, ValueError):
        return None


def check_members(key: str, members: dict[str, bytes], required: bool = False) -> None:
    """Raise ShardError when the sample's member set or a member differs from its ``.crc`` record. No record:
    damaged when ``required`` (the set's samples carry checksums), else unchecked (shards of ctssl 0.1)."""
    record = members.get(CHECKSUM_EXT)
    present = {ext for ext in members if ext != CHECKSUM_EXT}
    if record is None:
        if required:
            raise ShardError(key, f"no .{CHECKSUM_EXT} member (a damaged member name?): members "
                                  f"{sorted(present)} cannot be checked")
        return
    expected = checksummed_members(record)
    if expected is None:
        raise ShardError(key, "unreadable checksum member")
    if set(expected) != present:
        missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
        raise ShardError(key, "; ".join(
            ([f"lacks member(s) {['.' + e for e in missing]} its .{CHECKSUM_EXT} covers"] if missing else []) +
            ([f"member(s) {['.' + e for e in extra]} not covered by its .{CHECKSUM_EXT} (a damaged name?)"]
             if extra else [])))
    for ext in sorted(present):
        if f"{zlib.crc32(members[ext]):08x}" != expected[ext]:
            raise ShardError(key, f"checksum mismatch in .{ext} (corrupted)")


def sample_checksums(manifest: dict) -> bool:
    """Whether a shard set's samples all carry ``.crc`` (shards/FORMAT.md): the manifest says so, or, for
    manifests written before it did, it has ``order`` (written by the same ctssl release as ``.crc``)."""
    return bool(manifest.get("sample_checksums", "order" in manifest))


@functools.lru_cache(maxsize=64)
def _folder_checksums(manifest_path: str, stamp: tuple) -> bool | None:
    try:
        return sample_checksums(load_manifest(manifest_path))
    except (OSError, ValueError):
        return None


def checksums_required(shard) -> bool | None:
    """Whether the manifest beside ``shard`` says every sample carries ``.crc``; None without a manifest."""
    where = location(shard)
    if isinstance(where, Remote):
        try:
            return sample_checksums(load_manifest(where.parent))
        except (OSError, ValueError):
            return None
    manifest = Path(shard).parent / MANIFEST_NAME
    try:
        info = manifest.stat()
    except OSError:
        return None
    return _folder_checksums(str(manifest), (info.st_mtime_ns, info.st_size, info.st_ino))


def shard_paths(path, split: str | None = None) -> list:
    """The shard files behind ``path``: a ``.tar``, a folder (its manifest if present), or a
    ``manifest.json``; ``split`` keeps one split (manifest only). Local paths or remote locations
    (shards/location.py; a remote folder through its manifest)."""
    path = location(path)
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if isinstance(path, Remote) and path.is_dir():
        path = path / MANIFEST_NAME
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


def expected_counts(path) -> dict[str, int]:
    """Shard file name -> sample count promised by the manifest of the folder holding ``path``."""
    path = location(path)
    folder = path if path.is_dir() else path.parent
    if isinstance(folder, Remote):
        return {s["name"]: s["samples"] for s in load_manifest(folder)["shards"]}
    if not (folder / MANIFEST_NAME).exists():
        return {}
    return {s["name"]: s["samples"] for s in load_manifest(folder)["shards"]}


def _raise(key: str | None, reason: str) -> None:
    raise ShardError(key, reason)


def iter_shard(path: Path, decode: bool = True, on_error: OnError | None = None,
               expected: int | None = None, checksums: bool | None = None) -> Iterator[dict]:
    """Samples of one shard, in order, each checked (module docstring).

    With ``decode`` a sample is ``{"key", "hu", "meta", "mask"}`` (int16 HU image, its metadata, and its
    uint8 segmentation mask or None); without, ``{"key", <ext>: bytes, ...}`` with the raw members
    (checksums and the member set checked all the same). ``checksums``: whether every sample must carry
    ``.crc``; None: as the manifest beside the shard says (without one: required once a sample had one).
    """
    report = on_error or _raise
    required = checksums_required(path) if checksums is None else checksums
    counts = {"good": 0, "bad": 0}
    pending: list[tuple[str, dict]] = []          # fragments without .crc, waiting for the .crc that follows

    def bad(key, reason):
        counts["bad"] += 1
        report(key, reason)

    def finish(key, parts):
        _READ[0] += 1
        try:
            sample = _sample(key, parts, decode, bool(required))
        except ShardError as err:
            bad(key, err.reason)
            return None
        counts["good"] += 1
        return sample

    def resolve(key, parts):
        """One fragment (consecutive members of one key): a sample, or part of one split by a damaged name."""
        nonlocal required
        if required is None and CHECKSUM_EXT in parts:
            required = True                           # no manifest: this shard's samples carry checksums
        if not required:
            return finish(key, parts)
        if CHECKSUM_EXT not in parts:
            pending.append((key, parts))
            if len(pending) > 4:                      # no sample has more members: the first is on its own
                flush(1)
            return None
        if pending:
            # The fragments just before this .crc belong to its sample when their members' CRCs complete the
            # ones it records (a damaged name moved them to another key or extension): one damaged sample,
            # not several. Older fragments that do not fit are samples of their own, each reported.
            record = sorted((checksummed_members(parts[CHECKSUM_EXT]) or {}).values())
            own = [f"{zlib.crc32(data):08x}" for ext, data in parts.items() if ext != CHECKSUM_EXT]
            for start in range(len(pending)):
                found = own + [f"{zlib.crc32(data):08x}" for _, frag in pending[start:] for data in frag.values()]
                if record and sorted(found) == record:
                    split_over = [k for k, _ in pending[start:]] + [key]
                    flush(start)
                    pending.clear()
                    _READ[0] += 1
                    bad(key, f"member names damaged: the members its .{CHECKSUM_EXT} covers are split over "
                             f"{len(split_over)} fragments (keys {sorted(set(split_over))})")
                    return None
            flush(len(pending))
        return finish(key, parts)

    def flush(n):
        for key, parts in pending[:n]:
            finish(key, parts)                        # reported: no .crc where the set requires one
        del pending[:n]

    current, members = None, {}
    try:
        with open_binary(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                if current is not None and (key != current or ext in members):
                    sample = resolve(current, members)
                    if sample is not None:
                        yield sample
                    members = {}
                current = key
                members[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        # A damaged tar: the samples read so far stand; the one being read is not trusted.
        current = None
        report(None, f"{location(path).name}: unreadable after {counts['good'] + counts['bad']} sample(s) "
                     f"({type(err).__name__}: {err})")
    if current is not None:
        sample = resolve(current, members)
        if sample is not None:
            yield sample
    flush(len(pending))
    seen = counts["good"] + counts["bad"]
    if expected is not None and seen < expected:
        report(None, f"{location(path).name}: ended after {seen} of {expected} samples ({expected - seen} missing)")


def _sample(key: str, members: dict[str, bytes], decode: bool, required: bool = False) -> dict:
    check_members(key, members, required)
    members.pop(CHECKSUM_EXT, None)
    missing = [ext for ext, present in (("json", "json" in members),
                                        ("hu or an image", bool(members.keys() & {"hu", *IMAGE_MEMBERS})))
               if not present]
    if missing:
        raise ShardError(key, f"lacks member(s) {missing}")
    if not decode:
        return {"key": key, **members}
    if "hu" not in members:
        raise ShardError(key, "lacks member(s) ['hu']")
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
