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
    assert [reason for _, reason in found.skipped] == ["folder no permission to read"]
