"""The non-HU rule (data.hounsfield.not_hounsfield): robust shares and percentiles, on both sides of the line.

Refused: nibabel's own MR test volume (anatomical.nii: values -610..30393, 0.05% of its voxels below -50, which
defeated a rule on the minimum), an MR in scanner units with some air-like noise, normalised intensities and a
label map. Admitted: CT edge cases (a head CT with little air, a small field of view without air, CT with metal
at the clip), pydicom's CT_small.dcm, the synthetic corpus (tests/data/ingest/test_run.py ingests all of it).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctssl.data.hounsfield import (NOT_HU_CLIP_REASON, NOT_HU_NARROW_REASON, NOT_HU_REASON, ValueStats,
                                   not_hounsfield)
from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.shards.reader import iter_samples

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", "hounsfield-test-salt-0123456789")


def _stats(volume, slices=True) -> ValueStats:
    stats = ValueStats()
    for plane in (volume if slices else [volume]):
        stats.add(np.asarray(plane, dtype=np.float32))
    return stats


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2


def head_ct_little_air(rng, n=8, size=64):
    """A head filling its field of view: skull ring, brain, CSF; air only in the corners (about 2%)."""
    vol = np.full((n, size, size), -1000.0)
    head = _disc((size, size), (size / 2, size / 2), size * 0.62)
    vol[:, head] = 1500.0                                           # skull
    vol[:, _disc((size, size), (size / 2, size / 2), size * 0.56)] = 35.0   # brain
    vol[:, _disc((size, size), (size / 2, size / 2), size * 0.08)] = 8.0    # ventricles (CSF)
    return vol + rng.normal(0, 6, vol.shape)


def small_fov_liver(rng, n=8, size=64):
    """A 12 cm field of view inside the abdomen: liver, vessels, a rib, a band of fat; no air at all."""
    vol = np.full((n, size, size), 60.0)
    vol[:, :, :4] = -90.0                                           # fat at one edge (about 6%)
    vol[:, _disc((size, size), (20, 30), 5)] = 220.0                # contrast-filled vessel
    vol[:, 50:56, 10:40] = 1200.0                                   # rib
    return vol + rng.normal(0, 8, vol.shape)


def knee_ct_with_metal(rng, n=8, size=64):
    """A small field of view around a knee prosthesis: fat, muscle, bone, metal saturated at 3071 (about 4%)."""
    vol = np.full((n, size, size), -1000.0)
    vol[:, _disc((size, size), (32, 32), 30)] = -80.0              # subcutaneous fat
    vol[:, _disc((size, size), (32, 32), 26)] = 50.0               # muscle
    vol[:, _disc((size, size), (32, 32), 12)] = 900.0              # bone
    vol += rng.normal(0, 8, vol.shape)
    vol[:, _disc((size, size), (32, 32), 7)] = 3071.0               # the metal, at the clip
    return vol


def test_anatomical_nii_is_not_hu_though_a_few_voxels_lie_below_minus_100():
    data = np.asarray(nib.load(ANATOMICAL).dataobj, dtype=np.float32)
    stats = _stats(np.moveaxis(data, 2, 0))
    assert stats.lowest < -100                  # the minimum alone would call it CT (the defect)
    assert 0 < stats.share(stats.fat) < 0.001  # below -50 and stats.share(stats.clip) > 0.95
    assert not_hounsfield(stats) == NOT_HU_REASON


def test_each_rule_on_its_own():
    rng = np.random.default_rng(0)
    mr = np.asarray(nib.load(ANATOMICAL).dataobj, dtype=np.float32).copy()
    mr.reshape(-1)[rng.permutation(mr.size)[: mr.size // 50]] = -1000.0   # 2% air-like noise: rule 1 silent
    assert not_hounsfield(_stats(mr, slices=False)) == NOT_HU_CLIP_REASON
    zscored = rng.normal(0, 1, (6, 32, 32))                         # a z-scored MR
    assert not_hounsfield(_stats(zscored)) == NOT_HU_NARROW_REASON
    labels = (rng.random((6, 32, 32)) > 0.7).astype(np.float32)     # a label map taken for an image
    assert not_hounsfield(_stats(labels)) == NOT_HU_NARROW_REASON
    assert not_hounsfield(ValueStats()) is None                     # nothing loaded: nothing to say


@pytest.mark.parametrize("make", [head_ct_little_air, small_fov_liver, knee_ct_with_metal])
def test_ct_edge_cases_are_hu(make):
    vol = make(np.random.default_rng(1))
    stats = _stats(vol)
    assert not_hounsfield(stats) is None, stats.as_report()


def test_pydicoms_ct_small_is_hu():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    assert not_hounsfield(_stats(hu[None])) is None


def test_the_sample_is_bounded_and_the_counts_exact():
    rng = np.random.default_rng(2)
    stats = ValueStats()
    total = fat = 0
    for _ in range(12):
        plane = rng.normal(0, 500, (512, 512)).astype(np.float32)
        stats.add(plane)
        total, fat = total + plane.size, fat + int((plane < -50).sum())
    assert stats.count == total and stats.fat == fat
    assert stats._sampled <= ValueStats.CAP
    p1, p99 = stats.percentiles()
    assert abs(p1 + 1163) < 40 and abs(p99 - 1163) < 40              # normal(0, 500): +-2.326 sigma


def test_ingest_skips_anatomical_nii_and_keeps_the_ct_edge_cases(tmp_path):
    """End to end: the MR is a counted skip naming the rule, with its value statistics in the report; the CT edge
    cases (NIfTI) are written; allow_non_hu ingests the MR, noted."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "anatomical.nii").write_bytes(open(ANATOMICAL, "rb").read())
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for make in (head_ct_little_air, small_fov_liver, knee_ct_with_metal):
        vol = make(np.random.default_rng(3)).transpose(2, 1, 0)        # [x, y, z]
        nib.Nifti1Image(np.rint(vol).astype(np.int16), affine).to_filename(str(src / f"{make.__name__}.nii.gz"))
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    skipped = [r for r in report["series"] if r["outcome"] == "skipped"]
    assert [r["reason"] for r in skipped] == [f"{NOT_HU_REASON} (allow_non_hu=true ingests it)"]
    assert skipped[0]["value_stats"]["at_or_above_3071"] > 0.95 and skipped[0]["value_range"][0] < -100
    assert report["summary"]["series_written"] == 3
    assert report["summary"]["skip_reasons"] == {f"{NOT_HU_REASON} (allow_non_hu=true ingests it)": 1}
    allowed = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "allowed"), image_size=0,
                                      allow_non_hu=True))
    assert allowed["summary"]["series_written"] == 4
    assert sum(1 for s in iter_samples(tmp_path / "allowed") if s["meta"]["source_slices"] == 25) == 25
