"""Find CT sources (second module of the ingest: uses only ``config``).

Discovery recognises DICOM by content, with or without the 128-byte preamble and file meta, whatever
the file name; NIfTI by its ``.nii`` / ``.nii.gz`` name. Everything else is counted as ignored. What
cannot be walked or opened is a counted skip with its reason, never a crash: a folder without read
permission, a symbolic link that loops or points nowhere, a FIFO or device, a name that is not UTF-8
(read, and hashed byte for byte: data.pseudonym). Folders are walked in sorted order, without
following links to folders (no cycles), so every run sees the same list.

``read_header`` reads one file's header records in isolation: library messages counted, not shown
(data.guard), a time budget, and any failure returned as a reason instead of raised.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ctssl.data.guard import BudgetExceeded, DataError, LibraryMessages, describe, is_data_failure, time_budget

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Groups a DICOM data set without preamble can plausibly start with.
_FIRST_GROUPS = {0x0002, 0x0008}


@dataclass
class Sources:
    dicom: list[Path]
    nifti: list[tuple[Path, Path]]             # (file, the SRC root it was found under)
    ignored: int = 0                           # files that are neither DICOM nor NIfTI
    skipped: list[tuple[Path, str]] = field(default_factory=list)   # (path, reason): could not be read


def looks_like_dicom(path: Path) -> bool:
    """DICOM by content: 'DICM' after a preamble, or a plausible first tag without one."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in _FIRST_GROUPS or element > 0x0100:
        return False
    # Explicit VR: two upper-case letters follow the tag; implicit VR: a 4-byte length.
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return length < 1 << 16


def _unreadable(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT:
        return "broken symbolic link"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "no permission to read"
    return f"unreadable ({type(err).__name__})"


def discover(sources: list[str | Path]) -> Sources:
    """Walk the sources (files or folders); see the module docstring."""
    found = Sources([], [])
    for src in sources:
        root = Path(src)
        if not os.path.lexists(root):
            raise FileNotFoundError(f"Source '{root}' does not exist.")
        if not root.is_dir():
            files, base = [root], root.parent
        else:
            files, base = [], root

            def walk_error(err: OSError) -> None:
                found.skipped.append((Path(err.filename or root), f"folder {_unreadable(err)}"))

            for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
                dirnames.sort()
                files.extend(Path(dirpath) / name for name in sorted(filenames))
                # Links to folders are not followed (os.walk's default); say so rather than skip silently.
                for name in dirnames:
                    if os.path.islink(os.path.join(dirpath, name)):
                        found.skipped.append((Path(dirpath) / name, "link to a folder (not followed)"))
        for path in files:
            try:
                info = os.stat(path)                    # follows file links; loops and dangling links fail
            except OSError as err:
                found.skipped.append((path, _unreadable(err)))
                continue
            if not stat.S_ISREG(info.st_mode):
                found.skipped.append((path, "not a regular file"))
                continue
            if path.name.endswith(NIFTI_SUFFIXES):
                found.nifti.append((path, base))
                continue
            try:
                dicom = looks_like_dicom(path)
            except OSError as err:
                found.skipped.append((path, _unreadable(err)))
                continue
            if dicom:
                found.dicom.append(path)
            else:
                found.ignored += 1
    return found


def read_header(path: str, keyer, max_frames: int, seconds: float, strict: bool = False):
    """(records or a reason string, library message counts) for one DICOM file."""
    from ctssl.data.dicom_headers import read_records

    messages = LibraryMessages()
    try:
        with messages.capture(), time_budget(seconds):
            records = read_records(Path(path), keyer, max_frames)
    except (DataError, BudgetExceeded) as err:
        if strict:
            raise
        return f"{'unreadable DICOM header: ' if isinstance(err, BudgetExceeded) else ''}{describe(err)}", \
            messages.take()
    except BaseException as err:  # noqa: BLE001 - an untrusted file: whatever a reader raises is this file's problem
        if not is_data_failure(err):
            raise
        if strict:
            raise DataError(f"unreadable DICOM header ({describe(err)})") from err
        return f"unreadable DICOM header ({describe(err)})", messages.take()
    return records, messages.take()
