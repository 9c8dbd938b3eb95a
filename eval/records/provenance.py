"""Provenance of every result: the ctssl version and git commit that produced it, the command, the time and
the machine."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
import sys
from pathlib import Path

from ctssl import __version__

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the ctssl checkout running (``+dirty`` with local changes); None when ctssl runs from
    an installed wheel (no checkout of its own: an enclosing repository would be someone else's)."""
    if not (REPO / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """What every record carries: ctssl version, git commit, command line, UTC time, machine."""
    from ctssl.core.machine import machine_info

    return {"ctssl": __version__, "git_commit": git_commit(), "command": sys.argv,
            "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info()}
