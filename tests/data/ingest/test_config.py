"""Ingest settings (data.ingest.config): what a refused rerun names."""

from __future__ import annotations

from ctssl.data.ingest.config import settings_changes


def test_settings_changes_name_keys_not_paths():
    saved = {"image_size": 256, "splits": {"train": 0.8}, "sources": ["src-aa"], "salt_check": "x1",
             "labels": [{"file": "labels-1", "sha256": "h1"}]}
    assert settings_changes(saved, {**saved, "image_size": 128, "splits": {"train": 0.7}}) == \
        "image_size 256 -> 128, splits.train 0.8 -> 0.7"
    moved = {**saved, "labels": [{"file": "labels-2", "sha256": "h1"}]}
    assert settings_changes(saved, moved) == "labels: the same content from another path"
    edited = {**saved, "labels": [{"file": "labels-1", "sha256": "h2"}], "sources": ["src-bb"]}
    assert settings_changes(saved, edited) == "labels: 1 file(s) -> 1 file(s), other content, sources ['src-aa'] -> ['src-bb']"
    assert settings_changes(saved, {**saved, "salt_check": "x2", "sources": ["src-cc"]}) == "salt: another salt"
