"""`ctssl demo --quick`: the whole pipeline on the embedded data, down to the report, and a
resuming rerun."""

from __future__ import annotations

import json

from ctssl.cli.main import main

BACKBONES = ["random init", "SimCLR on CT", "DINO on CT", "SimCLR on natural images"]


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in BACKBONES:
        assert f"| {name} |" in printed
    assert str(out / "eval" / "report.html") in printed and str(out / "summary.md") in printed
    for stage in ("shards-ct/manifest.json", "shards-natural/manifest.json", "simclr-ct/backbone.safetensors",
                  "dino-ct/backbone.safetensors", "simclr-natural/backbone.safetensors",
                  "eval/similarity/ct_vs_natural.json", "eval/gap/ct_vs_natural.json",
                  "eval/confounders/tag-thorax.json", "shards-seg/manifest.json", "eval/report.md"):
        assert (out / stage).exists(), stage
    assert "## Lesion presence (headline)" in printed and "## Body region" in printed
    # Each stage's time, printed and in summary.md; two test patients: point values and why, no interval.
    assert "## Time per stage" in printed and "| 12. segmentation" in printed
    assert "## Time per stage" in (out / "summary.md").read_text()
    assert "(too few test patients, n = 2)" in printed and " [" not in printed.split("## Body region")[0]
    assert printed.index("Lesion presence") < printed.index("Body region")
    records = [json.loads(line) for line in (out / "eval" / "results.jsonl").read_text().splitlines()]
    segmented = [r for r in records if r["task"] == "segment"]
    records = [r for r in records if r["task"] != "segment"]
    assert {r["task"] for r in records} == {"knn", "probe", "finetune"}
    assert {r["dataset"]["label"] for r in records} == {"lesion", "region"}
    tuned = [r for r in records if r["task"] == "finetune"]
    assert len({r["backbone"] for r in tuned}) == 4 and all(r["dataset"]["label"] == "lesion" for r in tuned)
    assert all(r["chosen"]["lr"] in (3e-4, 1e-3, 3e-3) and len(r["grid"]) == 3 for r in tuned)
    assert "chosen lr" in printed
    assert len({r["backbone"] for r in records}) == 4 and {r["fraction"] for r in records} >= {0.1, 1.0}
    assert all(0.0 <= r["test"]["accuracy"]["value"] <= 1.0 for r in records)
    # Segmentation: the two SimCLR backbones x 2 protocols x 2 fractions, both models of each run; it learns.
    assert len(segmented) == 2 * 2 * 2 * 2 and {r["fraction"] for r in segmented} == {0.5, 1.0}
    assert {r["variant"] for r in segmented} == {f"{p} {v}" for p in ("frozen", "finetune")
                                                 for v in ("best_val", "final")}
    decoded = [r["test"]["mean_dice"]["value"] for r in segmented if r["variant"] == "frozen final"
               and r["fraction"] == 1.0]
    assert min(decoded) > 0.4, decoded          # from about 0.05 after the first epoch: it learns
    assert "## Segmentation (lung, liver, brain)" in printed
    page = (out / "eval" / "report.html").read_text()
    for section in ("Downstream results", "Fine-tuning choices", "Data efficiency", "Representation similarity",
                    "Domain gap", "Shortcut robustness", "Segmentation: test-time noise", "Provenance"):
        assert section in page

    # A rerun finds every stage complete and recomputes nothing.
    before = {p: p.stat().st_mtime_ns for p in (out / "eval" / "runs").iterdir()}
    pretrained = (out / "simclr-ct" / "backbone.safetensors").stat().st_mtime_ns
    assert main(["demo", "--set", "quick=true", "--out", str(out)]) == 0     # the same settings, by --set
    assert "quick: true" in (out / "demo-config.yaml").read_text()
    assert (out / "simclr-ct" / "backbone.safetensors").stat().st_mtime_ns == pretrained
    assert {p: p.stat().st_mtime_ns for p in (out / "eval" / "runs").iterdir()} == before
    assert "already complete" in (out / "demo.log").read_text()
