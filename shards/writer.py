"""Deterministic, atomic WebDataset tar shards.

A shard is a plain tar (USTAR) whose members are grouped by sample key: ``KEY.hu`` (the HU image,
see shards.encoding) or an encoded picture, ``KEY.json`` (metadata) and ``KEY.crc`` (the CRC-32 of
each other member, checked by every reader: shards.reader). Member headers carry no time stamps or
owners, so the same samples give byte-identical shards. A shard is written under a temporary name
and renamed when closed; its SHA-256 is computed while writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ctssl.core.atomic import FILE_MODE, TMP_MARK
from ctssl.shards.reader import CHECKSUM_EXT, checksum_member


@dataclass
class ShardInfo:
    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    series: list[str]


class _HashingFile(io.RawIOBase):
    def __init__(self, handle):
        self.handle, self.sha, self.size = handle, hashlib.sha256(), 0

    def writable(self):
        return True

    def tell(self):
        return self.size

    def write(self, data):
        self.handle.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


class ShardWriter:
    """Writes one shard; ``add`` samples, then ``close`` (atomic rename) or ``abort``."""

    def __init__(self, folder: Path, name: str, split: str):
        self.folder, self.name, self.split = Path(folder), name, split
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=name + TMP_MARK, dir=self.folder)
        os.chmod(self._tmp, FILE_MODE)
        self._handle = os.fdopen(fd, "wb")
        self._hashing = _HashingFile(self._handle)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.series: list[str] = []

    @property
    def size(self) -> int:
        return self._hashing.size

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps extension (e.g. "hu", "json") to bytes; its ``.crc`` member
        is computed here (a ``.crc`` already among ``members``, as a shuffle copies it, is kept as is)."""
        if "." in key or "/" in key:
            raise ValueError(f"Sample key '{key}' must not contain '.' or '/'.")
        if CHECKSUM_EXT not in members:
            members = {**members, CHECKSUM_EXT: checksum_member(members)}
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.folder / self.name)
        return ShardInfo(self.name, self.split, self.samples, self._hashing.size,
                         self._hashing.sha.hexdigest(), list(self.series))

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            sha.update(block)
    return sha.hexdigest()
