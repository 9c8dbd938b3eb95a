"""ctssl shards inspect: counts, the HU histogram and a contact sheet."""

from __future__ import annotations

import json

from ctssl.cli.main import main
from ctssl.shards.reader import iter_samples


def test_inspect_writes_summary_and_contact_sheet(ct_shards, tmp_path):
    samples = list(iter_samples(ct_shards))
    assert main(["shards", "inspect", str(ct_shards), "--out", str(tmp_path / "i"), "--window", "lung"]) == 0
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert summary["samples"] == len(samples)
    assert sum(summary["hu_histogram"]["counts"]) == sum(s["hu"].size for s in samples)
    assert (tmp_path / "i" / "contact_sheet.png").stat().st_size > 1000
