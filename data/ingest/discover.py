"""Find CT sources (second module of the ingest: uses only ``config``).

Discovery recognises DICOM by content, with or without the 128-byte preamble and file meta, whatever
the file name; volume files by their names: NIfTI (``.nii`` / ``.nii.gz``), NRRD (``.nrrd`` / ``.nhdr``) and
MetaImage (``.mha`` / ``.mhd``; data.itk_volume). A detached data file beside its header (``CASE.raw`` or
``.zraw`` beside ``CASE.mhd``, ``CASE.raw.gz`` beside ``CASE.nhdr``) is read with it, not counted. Everything
else is counted as ignored, per folder.
Every entry of every folder the walk can list is accounted for: what cannot be walked or opened is a
counted skip with its reason, never a crash and never silence: a folder that cannot be listed (no
permission; its files cannot be named, so the folder is), a folder whose listing fails part-way (the
entries listed before the failure are still processed), an entry that cannot be examined, a symbolic link
that loops or points nowhere, a link to a folder (not followed), a FIFO or device, a name that is not UTF-8
(read, and hashed byte for byte: data.pseudonym). Folders are walked in sorted order, without following
links to folders (no cycles), so every run sees the same list.

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
ITK_HEADER_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_HEADER_SUFFIXES
# Groups a DICOM data set without preamble can plausibly start with.
_FIRST_GROUPS = {0x0002, 0x0008}


@dataclass
class Sources:
    dicom: list[Path]
    volumes: list[tuple[Path, Path]]           # NIfTI, NRRD, MetaImage files: (file, the SRC root it was found under)
    ignored: int = 0                           # files that are neither DICOM nor NIfTI
    skipped: list[tuple[Path, str]] = field(default_factory=list)   # (path, reason): could not be read
    ignored_in: dict[Path, int] = field(default_factory=dict)       # folder -> its ignored files


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


def is_volume_file(name: str) -> bool:
    """True for the name of a NIfTI, NRRD or MetaImage file (by its suffix, any case for the ITK formats)."""
    return name.endswith(NIFTI_SUFFIXES) or name.lower().endswith(ITK_HEADER_SUFFIXES)


def _detached_data(path: Path) -> bool:
    """True for a MetaImage's or NRRD's detached pixel data beside its header (module docstring)."""
    from ctssl.data.itk_volume import DETACHED_DATA

    lower = path.name.lower()
    suffix = next((s for s in DETACHED_DATA if lower.endswith(s)), None)
    if suffix is None:
        return False
    stem = path.name[: -len(suffix)]
    return any((path.parent / (stem + header)).is_file() for header in (".mhd", ".MHD", ".nhdr", ".NHDR"))


def _unreadable(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT:
        return "broken symbolic link"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "no permission to read"
    code = errno.errorcode.get(err.errno or 0)
    return f"unreadable ({type(err).__name__}{' ' + code if code else ''})"


def discover(sources: list[str | Path]) -> Sources:
    """Walk the sources (files or folders); see the module docstring."""
    found = Sources([], [])
    for src in sources:
        root = Path(src)
        if not os.path.lexists(root):
            raise FileNotFoundError(f"Source '{root}' does not exist.")
        if root.is_dir():
            for path in _walk(root, found):
                _classify(path, root, found)
        else:
            _classify(root, root.parent, found)
    return found


def _walk(folder: Path, found: Sources):
    """The files under ``folder`` in sorted order (links to files included); folders and links that cannot be
    walked go to ``found.skipped`` with their reason."""
    entries = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                entries.append(entry)
    except OSError as err:
        reason = _unreadable(err)
        found.skipped.append((folder, f"folder {reason}: its files cannot be listed" if not entries else
                                      f"folder listing failed part-way ({reason}): the {len(entries)} entries "
                                      "listed before are processed"))
    folders = []
    for entry in sorted(entries, key=lambda e: e.name):      # a folder's files first, then its folders
        path = folder / entry.name
        try:
            link, is_dir = entry.is_symlink(), entry.is_dir(follow_symlinks=False)
        except OSError as err:
            found.skipped.append((path, _unreadable(err)))
            continue
        if is_dir:
            folders.append(path)
        elif link and os.path.isdir(path):
            found.skipped.append((path, "link to a folder (not followed)"))
        else:
            yield path          # files and links to files; broken and looping links are named by _classify
    for path in folders:
        yield from _walk(path, found)


def _classify(path: Path, base: Path, found: Sources) -> None:
    """Sort one file: DICOM, NIfTI (with the SRC root it was found under), ignored, or a skip with its reason."""
    try:
        info = os.stat(path)                    # follows file links; loops and dangling links fail
    except OSError as err:
        found.skipped.append((path, _unreadable(err)))
        return
    if not stat.S_ISREG(info.st_mode):
        found.skipped.append((path, "not a regular file"))
        return
    if is_volume_file(path.name):
        found.volumes.append((path, base))
        return
    if _detached_data(path):
        return
    try:
        dicom = looks_like_dicom(path)
    except OSError as err:
        found.skipped.append((path, _unreadable(err)))
        return
    if dicom:
        found.dicom.append(path)
    else:
        found.ignored += 1
        found.ignored_in[path.parent] = found.ignored_in.get(path.parent, 0) + 1


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
