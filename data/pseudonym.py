"""Keyed pseudonyms and patient-level splits.

Pseudonyms are HMAC-SHA256 of the original identifier under a secret salt, truncated to 16 hex
digits (64 bits): stable across runs and machines for the same salt, not reversible without it.
Keep the salt out of the shard folder: anyone holding it can test guessed identifiers (an 8-digit
MRN space is small). The salt comes from ``--salt-file`` or the ``CTSSL_SALT`` environment
variable; ``--create-salt`` writes a new random one (mode 0600) to the given file.

Splits are drawn per patient from the patient pseudonym, so no patient is in two splits and the
assignment is stable wherever the same salt is used.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SALT_ENV = "CTSSL_SALT"


class SaltError(ValueError):
    pass


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
    """Keyed pseudonym of ``value`` within namespace ``kind`` (hex, ``length`` digits)."""
    digest = hmac.new(salt, f"{kind}\0{value}".encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:length]


def assign_split(patient_pseudonym: str, fractions: dict[str, float]) -> str:
    """Split of a patient: a uniform number from the pseudonym against cumulative fractions."""
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"Split fractions must be non-negative with a positive sum, got {fractions}")
    u = int(hashlib.sha256(b"split\0" + patient_pseudonym.encode()).hexdigest()[:13], 16) / 16**13
    edge = 0.0
    names = list(fractions)
    for name in names:
        edge += fractions[name] / total
        if u < edge:
            return name
    return names[-1]
