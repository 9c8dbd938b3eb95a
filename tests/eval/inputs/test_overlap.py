"""No backbone is evaluated on patients it was pretrained on (eval.inputs.overlap): the record pretraining
writes, the check every evaluation makes, the refusal and its override."""

from __future__ import annotations

import json

import pytest
import torch

from ctssl.cli.main import main
from ctssl.eval.inputs.overlap import check_overlap, overlap_status
from ctssl.pretrain.backbones import build_backbone
from ctssl.pretrain.checkpoint import export_backbone
from ctssl.shards.patients import load_patients
from tests.helpers import ExportHolder


CT_CARD = {"backbone": "resnet18", "in_chans": 3, "method": "simclr",
           "data": {"kind": "ct", "windows": ["lung", "soft_tissue", "bone"], "image_size": 32}}


@pytest.fixture(scope="module")
def resplit_backbone(ct_shards, tmp_path_factory):
    """A backbone 'pretrained' on the training split of ``ct_shards`` (the session corpus under the test salt,
    split 0.8 / 0.1 / 0.1): evaluated on ``eval_shards`` (the same corpus split 0.5 / 0.25 / 0.25), some of its
    pretraining patients are validation or test patients there, as after a user's re-ingest."""
    recorded = load_patients(ct_shards)
    folder = tmp_path_factory.mktemp("resplit")
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", 3)
    patients = {"salt_check": recorded["salt_check"], "split": "train", "patients": recorded["splits"]["train"]}
    return export_backbone(ExportHolder(backbone), folder, CT_CARD, patients), recorded


def test_ingest_and_shuffle_record_the_patients_per_split(ct_shards, eval_shards, tmp_path):
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    a, b = load_patients(ct_shards), load_patients(eval_shards)
    assert a["salt_check"] == b["salt_check"] and len(a["salt_check"]) == 16     # one salt, never the salt itself
    assert set().union(*a["splits"].values()) == set().union(*b["splits"].values())   # the same patients...
    assert a["splits"] != b["splits"]                                                  # ...split differently
    assert all(len(p) == 16 for p in a["splits"]["train"])                             # pseudonyms
    run_shuffle(ct_shards, tmp_path / "shuffled", ShuffleConfig(shard_size_mb=1.0))
    assert load_patients(tmp_path / "shuffled") == a


def test_the_card_references_the_patients_file(resplit_backbone):
    path, recorded = resplit_backbone
    card = json.loads(path.with_suffix(".json").read_text())
    record = card["pretraining_patients"]
    stored = json.loads((path.parent / record["file"]).read_text())
    assert record["count"] == len(recorded["splits"]["train"]) == len(stored["patients"])
    assert record["salt_check"] == stored["salt_check"] == recorded["salt_check"] and record["split"] == "train"
    assert "salt" not in json.dumps(stored).replace("salt_check", "")


def test_evaluation_refuses_patients_the_backbone_was_pretrained_on(resplit_backbone, eval_shards, tmp_path, capsys):
    path, recorded = resplit_backbone
    evaluated = load_patients(eval_shards)["splits"]
    seen = recorded["splits"]["train"]
    expected = {s: len(seen & evaluated[s]) for s in ("val", "test")}
    assert sum(expected.values()) > 0           # the fixture does overlap: the test can fail
    args = ["knn", "--data", str(eval_shards), "--label", "region", "--backbone", "random:resnet18:3",
            "--backbone", str(path), "--k", "5", "--image-size", "32", "--n-boot", "20", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "pretrained on" in x)
    assert (f"pretrained on {expected['val']} of the {len(evaluated['val'])} val patients, {expected['test']} of the "
            f"{len(evaluated['test'])} test patients") in line and "--allow-pretraining-overlap" in line
    assert not (tmp_path / "features").exists()              # refused before anything was extracted
    assert main([*args, "--allow-pretraining-overlap"]) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    ours = next(r for r in records if r["backbone"] == str(path))
    assert ours["pretraining_overlap"]["status"] == "overlap" and ours["pretraining_overlap"]["allowed"]
    assert ours["pretraining_overlap"]["splits"]["test"]["overlap"] == expected["test"]
    other = next(r for r in records if r["backbone"] != str(path))
    assert other["pretraining_overlap"] == {"status": "not applicable", "why": "not pretrained on CT patients"}
    assert main(["report", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.md").read_text()
    assert "(evaluated with --allow-pretraining-overlap): its numbers are biased in its favour" in page


def test_statuses_that_cannot_be_checked(resplit_backbone, tmp_path):
    path, recorded = resplit_backbone
    card = {**json.loads(path.with_suffix(".json").read_text()), "source": str(path)}
    evaluated = {"val": {"x"}, "test": {"y"}}
    assert overlap_status(card, evaluated, recorded["salt_check"])["status"] == "clear"
    other_salt = overlap_status(card, evaluated, "0" * 16)
    assert other_salt == {"status": "unchecked", "why": "its pretraining patients are pseudonyms under another salt"}
    assert overlap_status(card, evaluated, None)["why"].startswith("the dataset's patient IDs are not ctssl")
    bare = {k: v for k, v in card.items() if k != "pretraining_patients"}
    assert overlap_status(bare, evaluated, recorded["salt_check"])["why"].startswith("its card records no")
    radimagenet = {"method": "supervised RadImageNet", "data": {}}
    assert overlap_status(radimagenet, evaluated, "s")["status"] == "unchecked"
    # Counts only, never a pseudonym, in what the check returns.
    status = check_overlap([(str(path), card)], {"test": set(recorded["splits"]["train"])}, recorded["salt_check"],
                           "data", allow=True)[str(path)]
    assert status["splits"]["test"]["overlap"] == len(recorded["splits"]["train"])
    assert not any(p in json.dumps(status) for p in recorded["splits"]["train"])
