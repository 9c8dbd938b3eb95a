"""Keyed pseudonyms and patient-level splits.

Pseudonyms are HMAC-SHA256 of the original identifier under a secret salt, truncated to 16 hex
digits (64 bits): stable across runs and machines for the same salt, not reversible without it.
Keep the salt out of the shard folder: anyone holding it can test guessed identifiers (an 8-digit
MRN space is small). The salt comes from ``--salt-file`` or the ``CTSSL_SALT`` environment
variable; ``--create-salt`` writes a new random one (mode 0600) to the given file.

Splits are made per patient: patients are ordered by a hash of their pseudonym and cut at the
cumulative fractions, so no patient is in two splits, the proportions are exact even for a
handful of patients, and the assignment is the same on every run and machine for the same data
and salt. (Adding patients to an archive can move others across a cut; re-ingest as a whole.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SALT_ENV = "CTSSL_SALT"


class SaltError(ValueError):
    pass


@contextmanager
def fixed_salt(value: str) -> Iterator[None]:
    """``$CTSSL_SALT`` set to ``value`` inside the block and restored after it: for synthetic data (the demo,
    benchmarks, tests), whose pseudonyms protect no one and whose splits must not depend on a salt the user
    or an earlier caller happened to set."""
    before = os.environ.get(SALT_ENV)
    os.environ[SALT_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SALT_ENV, None)
        else:
            os.environ[SALT_ENV] = before


def load_salt(salt_file: str | None, create: bool = False) -> bytes:
    """The secret salt from ``salt_file`` or ``$CTSSL_SALT``; clear error when neither exists."""
    if salt_file:
        path = Path(salt_file)
        if not path.exists():
            if not create:
                raise SaltError(
                    f"Salt file '{path}' does not exist. Pass --create-salt to write a new random "
                    "salt there (keep it secret and outside the shard folder; the same salt gives "
                    "the same pseudonyms and splits).")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        salt = path.read_text().strip()
    else:
        salt = os.environ.get(SALT_ENV, "").strip()
        if not salt:
            raise SaltError(
                f"No salt: pass --salt-file FILE (with --create-salt the first time) or set "
                f"{SALT_ENV}. The salt keys the pseudonyms that replace patient identifiers.")
    if len(salt) < 16:
        raise SaltError("The salt must be at least 16 characters long.")
    return salt.encode("utf-8")


def pseudonym(salt: bytes, kind: str, value: str, length: int = 16) -> str:
    """Keyed pseudonym of ``value`` within namespace ``kind`` (hex, ``length`` digits). File names that are
    not valid UTF-8 (Python keeps their bytes as surrogates) are hashed byte for byte."""
    digest = hmac.new(salt, f"{kind}\0{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return digest[:length]


class Keyer:
    """``keyer(kind, value)``: the keyed pseudonym (32 hex digits) that replaces a header identifier the moment
    it is read (SOP/series/study UIDs, the patient key), so that nothing written, spilled or passed between
    processes ever holds the raw value; equal identifiers stay equal, which is all grouping and the label
    join need (label files are keyed the same way when loaded)."""

    def __init__(self, salt: bytes):
        self.salt = salt

    def __call__(self, kind: str, value: str) -> str:
        return pseudonym(self.salt, kind, value, 32) if value else ""


def split_key(patient_pseudonym: str) -> float:
    """A uniform number in [0, 1) from the patient pseudonym (the order patients are split in)."""
    return int(hashlib.sha256(b"split\0" + patient_pseudonym.encode()).hexdigest()[:13], 16) / 16**13


def assign_splits(patients, fractions: dict[str, float]) -> dict[str, str]:
    """Patient -> split with exact proportions: patients ordered by ``split_key`` are cut at the
    cumulative fractions (largest-remainder rounding; every split with a positive fraction gets at least
    one patient when there are as many patients as such splits). Deterministic for the same patients and salt."""
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"Split fractions must be non-negative with a positive sum, got {fractions}")
    ordered = sorted(set(patients), key=lambda p: (split_key(p), p))
    n = len(ordered)
    exact = {name: n * frac / total for name, frac in fractions.items()}
    counts = {name: int(v) for name, v in exact.items()}
    by_remainder = sorted(fractions, key=lambda name: (-(exact[name] - counts[name]), list(fractions).index(name)))
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    positive = [name for name, frac in fractions.items() if frac > 0]
    if n >= len(positive):  # no split with a positive fraction left empty
        for name in positive:
            if counts[name] == 0:
                counts[max(counts, key=counts.get)] -= 1
                counts[name] = 1
    out, start = {}, 0
    for name in fractions:
        for patient in ordered[start:start + counts[name]]:
            out[patient] = name
        start += counts[name]
    return out
