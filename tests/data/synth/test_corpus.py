"""Determinism, resume after interruption, and refusal of mismatched reruns."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from ctssl.core.config import ConfigError
from ctssl.data.synth import run_synth
from tests.conftest import small_config


def _digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file, leaving out the run log and timing summary."""
    skip = {"synth.log", "synth-summary.json", "synth-config.yaml"}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def test_same_seed_gives_byte_identical_output_any_worker_count(corpus, tmp_path):
    cfg, _ = corpus
    again = small_config(tmp_path / "again", workers=2)
    run_synth(again)
    first, second = _digest(Path(cfg.out)), _digest(Path(again.out))
    assert len(first) > 50
    assert first == second


def test_other_seed_differs(corpus, tmp_path):
    cfg, _ = corpus
    other = small_config(tmp_path / "other", seed=8, patients=2)
    run_synth(other)
    mine, theirs = _digest(Path(cfg.out)), _digest(Path(other.out))
    common = [k for k in theirs if k.startswith("dicom/case-0000/") and k in mine]
    assert common and all(mine[k] != theirs[k] for k in common)


def test_interrupted_run_resumes_to_identical_output(corpus, tmp_path):
    cfg, _ = corpus
    out = tmp_path / "resume"
    shutil.copytree(cfg.out, out)
    # Simulate an interruption: one study missing, one half-written temporary left behind.
    shutil.rmtree(out / "dicom" / "case-0001")
    (out / "nifti" / "case-0003.nii.gz").unlink()
    partial = out / "dicom" / "case-0001.tmp-partial"
    partial.mkdir()
    (partial / "IMG00001.dcm").write_bytes(b"half")
    summary = run_synth(small_config(out))
    assert summary["this_run"]["studies_generated"] == 2
    assert not partial.exists()
    assert _digest(out) == _digest(Path(cfg.out))
    # A second rerun has nothing left to do.
    assert run_synth(small_config(out))["this_run"]["studies_generated"] == 0


def test_rerun_with_other_settings_is_refused(corpus, tmp_path):
    cfg, _ = corpus
    out = tmp_path / "refuse"
    shutil.copytree(cfg.out, out)
    with pytest.raises(ConfigError, match="seed"):
        run_synth(small_config(out, seed=123))


def test_invalid_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="patients must be >= 1"):
        run_synth(small_config(tmp_path / "bad", patients=0))


def test_case_prefix_names_a_second_corpus_of_other_patients(tmp_path):
    """A NIfTI file's name is its patient key at ingest: a second corpus (the demo's segmentation corpus, another
    seed) whose files are named as the first's shares its NIfTI patients' pseudonyms; another prefix keeps its
    patients apart (DICOM patients differ by seed already)."""
    from ctssl.data.ingest import IngestConfig, run_ingest
    from ctssl.data.pseudonym import fixed_salt
    from ctssl.data.synth import NaturalConfig
    from ctssl.shards.patients import load_patients

    def patients(seed, prefix):
        # NIfTI: the catalogue's studies 3 and 6, and 8 and 9 after it (nifti_fraction 1).
        cfg = small_config(tmp_path / f"{prefix}{seed}", seed=seed, patients=10, matrix=32, nifti_fraction=1.0,
                           case_prefix=prefix, natural=NaturalConfig(enabled=False), contact_sheet=False)
        run_synth(cfg)
        studies = (Path(cfg.out) / "labels" / "studies.csv").read_text().splitlines()[1:]
        assert [line.split(",")[0] for line in studies] == [f"{prefix}-{i:04d}" for i in range(10)]
        with fixed_salt("case-prefix-test-salt"):
            run_ingest(IngestConfig(sources=[cfg.out], out=str(tmp_path / f"shards-{prefix}{seed}"), image_size=32))
        return set().union(*load_patients(tmp_path / f"shards-{prefix}{seed}")["splits"].values())

    first, same_names, other_names = patients(0, "case"), patients(11, "case"), patients(11, "seg")
    assert len(first & same_names) == 4 and not first & other_names and len(other_names) == 10
    with pytest.raises(ConfigError, match="case_prefix"):
        run_synth(small_config(tmp_path / "bad", case_prefix="../x"))


def test_natural_standin_is_an_image_folder(corpus):
    cfg, summary = corpus
    root = Path(cfg.out) / "natural-standin"
    train = ImageFolder(root / "train")
    assert train.classes == ["bars", "disks", "squares", "triangles"]
    assert len(train) == 4 * cfg.natural.train_per_class
    img, label = train[0]
    assert img.mode == "RGB" and img.size == (cfg.natural.size, cfg.natural.size)
    assert summary["natural_standin_images"] == 4 * (cfg.natural.train_per_class + cfg.natural.val_per_class)


def test_contact_sheet_is_written(corpus):
    cfg, _ = corpus
    sheet = Image.open(Path(cfg.out) / "contact_sheet.png")
    assert sheet.format == "PNG" and sheet.size[0] == 4 * 160
    assert len(np.unique(np.asarray(sheet))) > 50  # an image, not a blank
