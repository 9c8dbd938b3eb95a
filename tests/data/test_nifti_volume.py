"""NIfTI: the same anatomy gives the same slices whatever the affine; bad volumes are reported."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.shards.reader import iter_samples


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", "nifti-test-salt-0123456789")


def _volume():
    """An asymmetric HU volume [x, y, z] (so any wrong flip shows) with a RAS affine."""
    rng = np.random.default_rng(0)
    vol = np.full((40, 36, 12), -1000.0)
    vol[5:30, 4:20, :] = 40.0
    vol[8:12, 6:9, 2:9] = 700.0       # a bone block off-centre
    vol += rng.normal(0, 5, vol.shape)
    affine = np.diag([0.7, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-14.0, -16.0, -300.0]
    return np.rint(vol), affine


def _save(vol, affine, axcodes, path, scaling):
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes))
    data = apply_orientation(vol, transform)
    new_affine = affine @ inv_ornt_aff(transform, vol.shape)
    if scaling == "raw":
        img = nib.Nifti1Image(np.rint(data + 1024).astype(np.int16), new_affine)
        img.header.set_slope_inter(1.0, -1024.0)
    elif scaling == "float":
        img = nib.Nifti1Image(data.astype(np.float32), new_affine)
    else:  # nibabel picks scl_slope / scl_inter for int16
        img = nib.Nifti1Image(data.astype(np.float32), new_affine)
        img.set_data_dtype(np.int16)
    img.to_filename(str(path))


def _slices(out):
    samples = sorted(iter_samples(out), key=lambda s: s["meta"]["z_mm"])
    return np.stack([s["hu"] for s in samples]), [s["meta"]["z_mm"] for s in samples]


@pytest.mark.parametrize("axcodes, scaling", [
    (("L", "P", "S"), "raw"), (("R", "A", "I"), "float"), (("P", "I", "R"), "auto"),
    (("S", "L", "A"), "raw"), (("A", "R", "S"), "float"),
])
def test_same_volume_any_affine_gives_identical_slices(tmp_path, axcodes, scaling):
    vol, affine = _volume()
    _save(vol, affine, ("R", "A", "S"), tmp_path / "ref" / "v.nii.gz", "float")
    _save(vol, affine, axcodes, tmp_path / "alt" / "v.nii.gz", scaling)
    for name in ("ref", "alt"):
        run_ingest(IngestConfig(sources=[str(tmp_path / name)], out=str(tmp_path / f"o-{name}"), image_size=0))
    ref, ref_z = _slices(tmp_path / "o-ref")
    alt, alt_z = _slices(tmp_path / "o-alt")
    assert ref.shape == (12, 36, 40)  # [z, y (rows), x (columns)]
    np.testing.assert_allclose(alt_z, ref_z, atol=1e-4)
    assert np.abs(alt.astype(int) - ref.astype(int)).max() <= (1 if scaling == "auto" else 0)
    # Display convention (columns toward patient left, rows toward posterior): the bone block at
    # RAS x -8..-6 mm (patient left) and RAS y -11..-8 mm (posterior) lies right and low.
    bone = np.argwhere(ref[5] > 500)
    assert bone[:, 1].mean() > 20 and bone[:, 0].mean() > 20


def test_4d_and_non_finite_volumes_are_reported(tmp_path):
    vol, affine = _volume()
    src = tmp_path / "src"
    src.mkdir()
    nib.Nifti1Image(np.stack([vol, vol], axis=-1).astype(np.float32), affine).to_filename(str(src / "fmri.nii.gz"))
    bad = vol.astype(np.float32)
    bad[0, 0, 0] = np.nan
    nib.Nifti1Image(bad, affine).to_filename(str(src / "nan.nii"))
    nib.Nifti1Image(vol.astype(np.float32), affine).to_filename(str(src / "good.nii.gz"))
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    reasons = report["summary"]["skip_reasons"]
    # A 4-D file is named for what it is, not "unreadable"; --strict does not stop at it (a rule's skip).
    assert reasons["not a CT volume: 4-D image (a time series or several channels per voxel); only 3-D volumes "
                   "are ingested"] == 1
    assert not any(r.startswith("unreadable") for r in reasons)
    assert any("non-finite values" in r for r in reasons)
    assert report["summary"]["series_written"] == 1 and report["summary"]["slices_written"] == 12
    (src / "nan.nii").unlink()
    strict = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "strict"), image_size=0, strict=True))
    assert strict["summary"]["slices_written"] == 12


def test_volumes_whose_values_are_not_hu_are_skipped_unless_allowed(tmp_path):
    """An MR volume (0..2500, no air) and a CT stored without its rescale (HU + 1024) are counted skips with the
    reason; allow_non_hu ingests them, noted. CT with air, and a tight CT crop with fat, are kept."""
    from ctssl.data.hounsfield import NOT_HU_REASON

    vol, affine = _volume()
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    mr = np.clip(800 + 600 * np.sin(np.arange(vol.size).reshape(vol.shape) / 50.0) + rng.normal(0, 50, vol.shape),
                 0, 2500)
    nib.Nifti1Image(mr.astype(np.float32), affine).to_filename(str(src / "t1.nii.gz"))
    nib.Nifti1Image((vol + 1024).astype(np.int16), affine).to_filename(str(src / "unrescaled.nii.gz"))
    nib.Nifti1Image(vol.astype(np.float32), affine).to_filename(str(src / "ct.nii.gz"))
    crop = vol[5:30, 4:20, :].copy()
    crop[0] = -80.0                                      # fat at the edge: soft tissue and bone otherwise
    nib.Nifti1Image(crop.astype(np.float32), affine).to_filename(str(src / "crop.nii.gz"))
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    skipped = {r["reason"] for r in report["series"] if r["outcome"] == "skipped"}
    assert skipped == {f"{NOT_HU_REASON} (allow_non_hu=true ingests it)"}
    assert report["summary"]["skip_reasons"][f"{NOT_HU_REASON} (allow_non_hu=true ingests it)"] == 2
    assert report["summary"]["series_written"] == 2
    ranges = sorted(r["value_range"] for r in report["series"] if r["outcome"] == "skipped")
    assert ranges[0][0] >= 0 and ranges[1][1] > 1000
    allowed = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "allowed"), image_size=0,
                                      allow_non_hu=True))
    assert allowed["summary"]["series_written"] == 4
    assert allowed["summary"]["slice_notes"]["values not in Hounsfield units, ingested as allow_non_hu asks (kept)"] == 24
