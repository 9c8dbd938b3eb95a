"""Discovery (data.ingest.discover): an unreadable folder is counted, not a crash."""

from __future__ import annotations

import os

import pytest


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: permissions cannot make one unreadable")
def test_an_unreadable_folder_is_counted(tmp_path):
    from ctssl.data.ingest.discover import discover

    locked = tmp_path / "src" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    try:
        found = discover([tmp_path / "src"])
    finally:
        locked.chmod(0o755)
    assert [reason for _, reason in found.skipped] == ["folder no permission to read: its files cannot be listed"]


def test_every_entry_the_walk_sees_is_accounted_for(tmp_path, monkeypatch):
    """Root reads every folder, so the failures are injected into os.scandir: a folder that cannot be listed, one
    whose listing fails part-way (the entries listed before are kept), and an entry that cannot be examined;
    links that loop (a pair, a self link, a link through a folder link) or point nowhere; links to folders."""
    import errno

    from ctssl.data.ingest import discover as module

    src = tmp_path / "src"
    for folder in ("a", "b/c", "locked", "partial", "odd"):
        (src / folder).mkdir(parents=True)
    for name in ("a/notes.txt", "locked/x.dcm", "partial/1.txt", "partial/2.txt", "partial/3.txt", "odd/y.txt"):
        (src / name).write_text("not an image\n")
    os.symlink("loop2", src / "a" / "loop1")
    os.symlink("loop1", src / "a" / "loop2")
    os.symlink("self", src / "a" / "self")
    os.symlink("..", src / "b" / "up")                     # a link to an ancestor folder: a cycle if followed
    os.symlink("up/b/cycle", src / "b" / "cycle")         # resolves through a folder link back to itself
    os.symlink(src / "nowhere", src / "b" / "c" / "dangling.dcm")
    real = os.scandir

    class Listing:
        """os.scandir's iterator, failing after ``n`` entries (``fail_at``) or on an entry's is_dir (``odd``)."""

        def __init__(self, path, fail_at=None):
            self.inner, self.fail_at, self.count = real(path), fail_at, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def __iter__(self):
            for entry in sorted(self.inner, key=lambda e: e.name):
                if self.fail_at is not None and self.count == self.fail_at:
                    raise OSError(errno.EIO, "I/O error")
                self.count += 1
                yield Odd(entry) if entry.name == "y.txt" else entry

    class Odd:
        def __init__(self, entry):
            self.name = entry.name

        def is_symlink(self):
            raise PermissionError(errno.EACCES, "Permission denied")

    def scandir(path="."):
        if not isinstance(path, (str, os.PathLike)):
            return real(path)
        name = os.path.basename(path)
        if name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return Listing(path, 2 if name == "partial" else None)

    monkeypatch.setattr(module.os, "scandir", scandir)
    found = module.discover([src])
    reasons = {os.path.relpath(path, src): reason for path, reason in found.skipped}
    assert reasons == {
        "a/loop1": "symbolic link loop", "a/loop2": "symbolic link loop", "a/self": "symbolic link loop",
        "b/up": "link to a folder (not followed)", "b/cycle": "symbolic link loop",
        "b/c/dangling.dcm": "broken symbolic link",
        "locked": "folder no permission to read: its files cannot be listed",
        "partial": "folder listing failed part-way (unreadable (OSError EIO)): the 2 entries listed before are processed",
        "odd/y.txt": "no permission to read"}
    assert {os.path.relpath(p, src): n for p, n in found.ignored_in.items()} == {"a": 1, "partial": 2}
