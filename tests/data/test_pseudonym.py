"""Keyed pseudonyms and exact, deterministic patient-level splits."""

from __future__ import annotations

import os

import pytest

from ctssl.data.pseudonym import SaltError, assign_splits, fixed_salt, load_salt, pseudonym


def test_pseudonyms_are_keyed_and_stable():
    a, b = b"salt-one-0123456789", b"salt-two-0123456789"
    assert pseudonym(a, "patient", "MRN1") == pseudonym(a, "patient", "MRN1")
    assert pseudonym(a, "patient", "MRN1") != pseudonym(b, "patient", "MRN1")
    assert pseudonym(a, "patient", "X") != pseudonym(a, "study", "X")
    assert len(pseudonym(a, "series", "1.2.3")) == 16


@pytest.mark.parametrize("n", [3, 10, 12, 101])
def test_splits_have_exact_proportions_and_are_deterministic(n):
    patients = [f"p{i:04d}" for i in range(n)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = assign_splits(patients, fractions)
    counts = {s: sum(v == s for v in splits.values()) for s in fractions}
    assert sum(counts.values()) == n
    for name, frac in fractions.items():
        if n >= 10:
            assert abs(counts[name] - n * frac) < 1
        assert counts[name] >= 1  # n >= 3: every split gets a patient
    assert assign_splits(list(reversed(patients)), fractions) == splits
    assert assign_splits(patients, {"train": 1.0, "val": 0.0, "test": 0.0}) == {p: "train" for p in patients}


def test_salt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CTSSL_SALT", raising=False)
    with pytest.raises(SaltError, match="No salt"):
        load_salt(None)
    with pytest.raises(SaltError, match="does not exist"):
        load_salt(str(tmp_path / "salt"))
    salt = load_salt(str(tmp_path / "salt"), create=True)
    assert load_salt(str(tmp_path / "salt")) == salt and len(salt) >= 64
    assert (tmp_path / "salt").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("CTSSL_SALT", "short")
    with pytest.raises(SaltError, match="at least 16"):
        load_salt(None)


@pytest.mark.parametrize("before", [None, "the-users-own-salt-0123"])
def test_fixed_salt_holds_inside_the_block_and_restores_what_was_there(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("CTSSL_SALT", raising=False)
    else:
        monkeypatch.setenv("CTSSL_SALT", before)
    with pytest.raises(RuntimeError), fixed_salt("synthetic-data-salt-0123"):
        assert load_salt(None) == b"synthetic-data-salt-0123"
        raise RuntimeError("the block fails: the salt is restored all the same")
    assert os.environ.get("CTSSL_SALT") == before
