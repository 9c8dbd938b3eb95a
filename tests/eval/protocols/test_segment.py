"""``ctssl segment`` end to end on shards with masks: it learns, records both models of each run, compares
backbones case by case, resumes, writes NIfTI predictions that match the stored masks, and the report shows it.
The decoder-only (frozen) protocol keeps the suite fast; ``ctssl demo --quick`` runs fine-tuning too."""

from __future__ import annotations

import csv
import json
import logging
import re

import nibabel as nib
import numpy as np
import pytest

from ctssl.cli.main import main
from ctssl.data.pseudonym import fixed_salt
from ctssl.eval.inputs.segmentation import open_segmentation

BACKBONES = ["random:resnet18:3", "random:resnet18:3:1"]   # two random inits (seeds 0 and 1)


@pytest.fixture(scope="module")
def seg_shards(tmp_path_factory):
    """16 synthetic patients, each NIfTI study with a label volume (lung, liver, brain and lesions), ingested at
    32 px: 6 / 4 / 3 annotated cases in train / val / test."""
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth

    root = tmp_path_factory.mktemp("segment")
    corpus = SynthConfig(out=str(root / "corpus"), patients=16, seed=11, matrix=64, thickness_mm=[5.0],
                         nifti_fraction=1.0, natural=NaturalConfig(enabled=False), contact_sheet=False)
    run_synth(corpus)
    with fixed_salt("segment-test-salt-0123456789"):
        run_ingest(IngestConfig(sources=[corpus.out], out=str(root / "shards"), image_size=32,
                                splits=SplitFractions(0.5, 0.25, 0.25)))
    return root / "shards"


@pytest.fixture(scope="module")
def segmented(seg_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("segment-out")
    args = ["segment", "--data", str(seg_shards), "--class", "lung", "--class", "brain", "--out", str(out),
            "--protocol", "frozen", "--epochs", "5", "--batch-size", "8", "--lr", "3e-3", "--n-boot", "100",
            "--noise-sigma", "0.5", "--save-predictions"]
    for backbone in BACKBONES:
        args += ["--backbone", backbone]
    assert main(args) == 0
    return out, args


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _chance_dice(seg_shards) -> float:
    """Mean per-case Dice of the best constant guess: each class predicted on every pixel of the case."""
    data = open_segmentation(str(seg_shards), ["lung", "brain"])
    per_case = []
    for case in data.cases["test"]:
        dice = [2 * (case.masks == c).sum() / ((case.masks == c).sum() + case.masks.size)
                for c in (1, 2) if (case.masks == c).any()]
        if dice:                           # a case without either class has no defined Dice
            per_case.append(np.mean(dice))
    return float(np.mean(per_case))


def test_segment_learns_and_records_both_models_of_every_run(segmented, seg_shards):
    out, _ = segmented
    records = _records(out)
    assert sorted((r["backbone"], r["variant"]) for r in records) == sorted(
        (b, f"frozen {v}") for b in BACKBONES for v in ("best_val", "final"))
    chance = _chance_dice(seg_shards)
    for r in records:
        test = r["test"]
        assert test["n"] == 3 and test["n_patients"] == 3
        assert test["mean_dice"]["value"] > max(0.5, 2 * chance), (r["backbone"], r["variant"], test["mean_dice"])
        # Three test patients (two with a defined Dice): the mean alone, no interval (eval.measures.evidence),
        # and why.
        assert test["mean_dice"]["lower"] is None is test["mean_dice"]["upper"]
        assert re.match(r"too few test patients to compare \(n = [23]; at least 6 needed\)$",
                        test["mean_dice"]["evidence"]["reason"])
        assert set(test["per_class"]) == {"lung", "brain"}
        assert test["mean_hd95_mm"]["value"] > 0 and 0 < test["mean_nsd"]["value"] <= 1
        assert "RadNet-12M" in test["slice_pooled_dice_radnet12m"]["note"]
        assert r["grid"][0]["lr"] == 3e-3 and r["select"] == "val_mean_dice"
        assert (r["variant"].endswith("final")) == ("noise" in r)
    # Noise far above the inputs' scale costs Dice: the sweep measures what it says.
    final = next(r for r in records if r["variant"] == "frozen final")
    assert final["noise"][0]["mean_dice"]["value"] < final["test"]["mean_dice"]["value"]


def test_backbones_are_compared_case_by_case_on_mean_dice(segmented):
    out, _ = segmented
    rows = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in rows} == {"frozen best_val", "frozen final"}
    for row in rows:
        assert row["task"] == "segment" and row["metric"] == "mean_dice"
        assert row["agreement"] is None
        base = next(r for r in _records(out) if r["backbone"] == BACKBONES[0] and r["variant"] == row["variant"])
        other = next(r for r in _records(out) if r["backbone"] == BACKBONES[1] and r["variant"] == row["variant"])
        assert row["delta"] == pytest.approx(other["test"]["mean_dice"]["value"] - base["test"]["mean_dice"]["value"],
                                             abs=2e-5)
        assert row["insufficient"].startswith("too few test patients") and row["p_value"] is None   # 3 patients


def test_predictions_are_nifti_of_the_stored_masks_and_overlays_share_slices(segmented, seg_shards):
    out, _ = segmented
    data = open_segmentation(str(seg_shards), ["lung", "brain"])
    records = _records(out)
    for r in records:
        folder = out / "predictions" / r["run_id"]
        rows = list(csv.DictReader(open(folder / "cases.csv")))
        assert [row["case"] for row in rows] == [c.key for c in data.cases["test"]]
        for case, row in zip(data.cases["test"], rows):
            reference = nib.load(folder / f"{case.key}_reference.nii.gz")
            assert np.array_equal(np.transpose(np.asarray(reference.dataobj), (2, 1, 0)), case.masks)
            assert np.allclose(np.abs(np.diag(reference.affine)[:3]), case.spacing[::-1])
            predicted = np.transpose(np.asarray(nib.load(folder / f"{case.key}_prediction.nii.gz").dataobj),
                                     (2, 1, 0))
            # docs/segmentation.md: a class absent from both is undefined (left out), absent from one side is 0
            dice = [2 * ((predicted == c) & (case.masks == c)).sum() / ((predicted == c).sum()
                                                                           + (case.masks == c).sum())
                    for c in (1, 2) if (case.masks == c).any() or (predicted == c).any()]
            if dice:
                assert float(row["mean_dice"]) == pytest.approx(np.mean(dice), abs=1e-4)
            else:
                assert np.isnan(float(row["mean_dice"]))
    overlays = {json.dumps(r["overlay"]) for r in records}
    assert len(overlays) == 1 and json.loads(overlays.pop())                # the same slices for everyone
    npz = np.load(out / "runs" / f"{records[0]['run_id']}.overlay.npz")
    assert npz["image"].shape == npz["reference"].shape == npz["prediction"].shape
    assert npz["reference"].any()


def test_a_rerun_loads_finished_runs_and_the_report_shows_segmentation(segmented, caplog):
    out, args = segmented
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert not [m for m in caplog.messages if "training cases" in m]        # nothing trained again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    assert main(["report", "--out", str(out), "--n-boot", "100"]) == 0
    text = (out / "report.md").read_text()
    assert "segmentation (frozen final)" in text and "slice-pooled Dice (RadNet-12M)" in text
    assert "test-time noise" in text


def test_shards_without_masks_are_one_line(natural_shards, tmp_path, capsys):
    assert main(["segment", "--data", str(natural_shards), "--backbone", "random:resnet18:3", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no segmentation masks" in err[0]


def test_the_radnet12m_recipes_segmentation_arm_runs_as_a_sweep(seg_shards, tmp_path):
    """The recipe's settings (weighted CE 1/3/10, final and best-validation models, noise sweep) reach the
    runs; the sweep's job is done once its records exist."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--recipe", "radnet12m", "--data", str(seg_shards), "--out", str(out),
                 "--backbone", "random:resnet18:3", "--set", "tasks=[segment]", "--set", "seeds=[0]",
                 "--set", "segment.classes=[lung,brain]", "--set", "segment.fractions=[0.5]",
                 "--set", "segment.protocols=[frozen]", "--set", "segment.epochs=1", "--set", "segment.lrs=[1e-3]",
                 "--set", "segment.noise_sigmas=[0.01]", "--set", "n_boot=50"]) == 0
    records = _records(out)
    assert sorted(r["variant"] for r in records) == ["frozen best_val", "frozen final"]
    for r in records:
        assert r["config"]["loss"] == "ce" and r["config"]["class_weights"] == [1.0, 3.0, 10.0]
        assert r["fraction"] == 0.5 and r["n_train_patients"] < 6
    assert [p["sigma"] for p in next(r for r in records if r["variant"] == "frozen final")["noise"]] == [0.01]
    assert "segmentation (frozen final)" in (out / "report.md").read_text()


def test_library_backbones_segment(seg_shards, tmp_path):
    """A timm ConvNeXt (its forward_intermediates stages), a torchvision ResNet-18 and a Hugging Face DINOv2 (the
    simple feature pyramid on its layers) each train a U-Net (frozen encoder, 1 epoch) and are recorded with their
    library's preprocessing."""
    pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra (transformers)")
    from ctssl.eval.protocols.segment import SegmentSpec, run_segment
    from ctssl.finetune.segment import SegmentConfig
    from tests.library_backbones import library_sources

    sources = [s for s, _ in library_sources(tmp_path)]
    spec = SegmentSpec(data=str(seg_shards), classes=["lung"], backbones=sources, n_boot=20)
    records = run_segment(spec, SegmentConfig(protocols=["frozen"], epochs=1, batch_size=8, lrs=[3e-3]), tmp_path / "out")
    assert sorted({r["backbone"] for r in records}) == sorted(sources)
    for r in records:
        assert r["backbone_card"]["preprocessing"]["mean"] == r["input"]["mean"] and r["input"]["size"] == 32
        assert np.isfinite(r["test"]["mean_dice"]["value"])
