"""Where shards live: a local path (a cluster file system included), or any location webdataset's opener
reaches: ``http(s)://HOST/DIR``, ``s3://BUCKET/DIR`` (through the AWS CLI, ``aws s3 cp URL -``, as
webdataset's docs do it), ``gs://`` (gsutil) and ``pipe:CMD``, a shell command that writes the file to its
standard output, with ``{}`` where the file's name goes (``pipe:cat /data/ct/{}``, ``pipe:ssh host cat
/data/ct/{}``).

``location(spec)`` gives a ``pathlib.Path`` for a local path and a ``Remote`` otherwise, with the few path
operations the readers use (``/``, ``name``, ``parent``, ``suffix``, ``open``, ``read_text``), so that the
manifest and the shards are read the same way from everywhere. A remote location has no folder listing: a
remote shard folder is read through its ``manifest.json``.
"""

from __future__ import annotations

import functools
import os
import posixpath
from pathlib import Path

SCHEMES = ("http://", "https://", "s3://", "gs://")


def is_remote(spec) -> bool:
    text = str(spec)
    return text.startswith("pipe:") or text.startswith(SCHEMES)


def location(spec):
    """A ``Path`` for a local path, a ``Remote`` for a URL or ``pipe:`` command."""
    if isinstance(spec, (Path, Remote)):
        return spec
    return Remote(str(spec)) if is_remote(spec) else Path(spec)


class Remote:
    """A file or folder at a URL or behind a ``pipe:`` command (module docstring). Folders by convention: a
    location whose last part ends in ``.tar`` or ``.json`` is a file, any other a folder."""

    def __init__(self, url: str, leaf: str | None = None):
        if url.startswith("pipe:") and "{}" not in url:
            raise ValueError(f"'{url}': a pipe: shard location needs {{}} where the file name goes, e.g. "
                             "'pipe:cat /data/ct/{}' or 'pipe:aws s3 cp s3://bucket/ct/{} -'.")
        self.url, self.leaf = url.rstrip("/") if not url.startswith("pipe:") else url, leaf

    # ...................................................................... path operations
    def __truediv__(self, name: str) -> "Remote":
        if self.url.startswith("pipe:"):
            return Remote(self.url, posixpath.join(self.leaf, name) if self.leaf else name)
        return Remote(f"{self.url}/{name}")

    @property
    def name(self) -> str:
        if self.url.startswith("pipe:"):
            return posixpath.basename(self.leaf or "")
        return posixpath.basename(self.url)

    @property
    def parent(self) -> "Remote":
        if self.url.startswith("pipe:"):
            return Remote(self.url, posixpath.dirname(self.leaf or "") or None)
        return Remote(posixpath.dirname(self.url))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def is_file(self) -> bool:
        return self.suffix in (".tar", ".json")

    def is_dir(self) -> bool:
        return not self.is_file()

    def exists(self) -> bool:
        if self.is_dir():
            return True
        try:
            with self.open() as handle:
                handle.read(1)
            return True
        except OSError:
            return False

    def glob(self, pattern: str) -> list:
        return []                      # no listing: remote shard folders are read through their manifest

    def stat(self):
        raise OSError(f"{self}: a remote location has no file status")

    def __str__(self) -> str:
        if self.url.startswith("pipe:"):
            return self.url.replace("{}", self.leaf or "")
        return self.url

    def __repr__(self) -> str:
        return f"Remote({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Remote) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    # ...................................................................... reading
    def opener_url(self) -> str:
        """What webdataset's ``gopen`` opens: s3:// through the AWS CLI, the rest as given."""
        text = str(self)
        if text.startswith("s3://"):
            return f"pipe:aws s3 cp {text} -"
        return text

    def open(self, mode: str = "rb"):
        if mode != "rb":
            raise ValueError(f"{self}: remote shard locations are read-only (mode {mode!r})")
        from webdataset.gopen import gopen

        return gopen(self.opener_url(), "rb")

    def read_bytes(self) -> bytes:
        try:
            with self.open() as handle:
                return handle.read()
        except OSError as err:
            raise OSError(f"cannot read {self}: {err}") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def open_binary(spec):
    """A binary file object for reading ``spec`` (a local path or a remote location)."""
    where = location(spec)
    return where.open("rb") if isinstance(where, Remote) else open(where, "rb")


@functools.lru_cache(maxsize=16)
def remote_text(where: Remote) -> str:
    """A remote file's text, read once per process (manifests)."""
    return where.read_text()
