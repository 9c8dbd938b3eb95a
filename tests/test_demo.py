"""`ctssl demo --quick`: the whole existing pipeline on the embedded data, and a resuming rerun."""

from __future__ import annotations

import json

from ctssl.cli import main


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| SimCLR on CT |" in printed and str(out / "summary.md") in printed
    rows = json.loads((out / "knn.json").read_text())
    assert [r["backbone"] for r in rows] == ["random init", "SimCLR on natural images", "SimCLR on CT"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_query"] > 0 for r in rows)
    for stage in ("shards-ct/manifest.json", "shards-natural/manifest.json",
                  "simclr-ct/backbone.safetensors", "simclr-natural/backbone.safetensors"):
        assert (out / stage).exists(), stage
    # A rerun finds every stage complete and only re-evaluates.
    before = (out / "simclr-ct" / "backbone.safetensors").stat().st_mtime_ns
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (out / "simclr-ct" / "backbone.safetensors").stat().st_mtime_ns == before
    assert "already complete" in (out / "demo.log").read_text()
