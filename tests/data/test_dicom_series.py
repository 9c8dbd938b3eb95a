"""DICOM corner cases: every transfer syntax, enhanced multi-frame, rescale, padding, bad files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.shards.reader import iter_samples
from tests.dicom_factory import SYNTAXES, ct_dataset, enhanced_ct, phantom_stored, save
from tests.helpers import reference_hu

SALT = "test-salt-0123456789abcdef"


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", SALT)


def ingest(src, out, **changes):
    cfg = IngestConfig(sources=[str(src)], out=str(out), **{"image_size": 0, **changes})
    return run_ingest(cfg), sorted(iter_samples(out), key=lambda s: s["meta"]["z_mm"])


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_every_transfer_syntax_gives_reference_hu(tmp_path, syntax):
    rng = np.random.default_rng(1)
    originals = []
    for k, z in enumerate([10.0, 12.5, 15.0]):
        ds = ct_dataset(phantom_stored(rng), z, series_uid="1.2.3.100", instance=3 - k)
        save(ds, tmp_path / "src" / f"f{k}.dcm", syntax)
        originals.append(ds)
    report, samples = ingest(tmp_path / "src", tmp_path / "out")
    assert report["summary"]["slices_written"] == 3, report
    for ds, sample in zip(originals, samples):
        assert sample["meta"]["z_mm"] == float(ds.ImagePositionPatient[2])
        np.testing.assert_array_equal(sample["hu"], reference_hu(ds))


def test_enhanced_multiframe_ct(tmp_path):
    rng = np.random.default_rng(2)
    zs = [30.0, 20.0, 25.0, 35.0]            # frames stored out of anatomical order
    slopes, intercepts = [1.0, 0.5, 1.0, 2.0], [-1024.0, -1024.0, -1000.0, -1024.0]
    frames = np.stack([phantom_stored(rng, intercept=b, slope=m) // 1 for m, b in zip(slopes, intercepts)])
    frames = np.clip(frames, -32768, 32767)
    ds = enhanced_ct(frames, zs, slopes, intercepts, series_uid="1.2.3.200")
    save(ds, tmp_path / "src" / "enhanced.dcm")
    _, samples = ingest(tmp_path / "src", tmp_path / "out")
    assert [s["meta"]["z_mm"] for s in samples] == sorted(zs)
    for sample in samples:
        i = zs.index(sample["meta"]["z_mm"])
        expected = np.clip(np.rint(frames[i] * slopes[i] + intercepts[i]), -1024, 3071)
        np.testing.assert_array_equal(sample["hu"], expected)


@pytest.mark.parametrize("pixel_representation, intercept", [(0, -1024.0), (1, 0.0)])
def test_missing_rescale_uses_documented_fallback(tmp_path, pixel_representation, intercept):
    rng = np.random.default_rng(3)
    stored = phantom_stored(rng, intercept=intercept)
    if pixel_representation == 0:
        stored = np.clip(stored, 0, None)  # unsigned storage
    for k in range(2):
        ds = ct_dataset(stored, 5.0 * k, series_uid="1.2.3.300", slope=None, intercept=None,
                        pixel_representation=pixel_representation)
        save(ds, tmp_path / "src" / f"f{k}.dcm")
    report, samples = ingest(tmp_path / "src", tmp_path / "out")
    np.testing.assert_array_equal(samples[0]["hu"], np.clip(stored + intercept, -1024, 3071))
    notes = report["series"][0]["slice_notes"]
    assert notes["rescale tags missing: CT fallback applied (kept)"] == 2


def test_padding_and_values_below_air_become_air(tmp_path):
    rng = np.random.default_rng(4)
    stored = phantom_stored(rng, shape=(96, 80))
    stored[:, :6] = -2000                     # padding outside the reconstruction circle
    stored[:3, 10:20] = -1500                 # below air after rescale (-2524 HU)
    for k in range(2):
        save(ct_dataset(stored, 2.0 * k, series_uid="1.2.3.400", padding=-2000), tmp_path / "src" / f"{k}.dcm")
    _, native = ingest(tmp_path / "src", tmp_path / "native")
    assert np.all(native[0]["hu"][:, :6] == -1024) and native[0]["hu"].min() == -1024
    _, resized = ingest(tmp_path / "src", tmp_path / "resized", image_size=48)
    hu = resized[0]["hu"]
    assert hu.shape == (48, 48) and hu.min() >= -1024
    # Aspect kept: 96x80 pixels of 0.8 mm fit 48 rows; columns padded with air on both sides.
    assert np.all(hu[:, :3] == -1024) and np.all(hu[:, -3:] == -1024)
    assert resized[0]["meta"]["pixel_spacing_mm"] == [pytest.approx(96 * 0.8 / 48)] * 2


def test_bad_files_are_skipped_counted_and_reported(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    for k in range(3):
        save(ct_dataset(phantom_stored(rng), 3.0 * k, series_uid="1.2.3.500"), src / f"ct{k}.dcm")
    mr = ct_dataset(phantom_stored(rng), 0.0, series_uid="1.2.3.501", modality="MR")
    save(mr, src / "mr.dcm")
    whole = save(ct_dataset(phantom_stored(rng), 9.0, series_uid="1.2.3.500"), src / "half.dcm").read_bytes()
    (src / "half.dcm").write_bytes(whole[: len(whole) - 2000])        # truncated pixel data
    (src / "stub.dcm").write_bytes(whole[:200])                        # truncated header
    (src / "notes.txt").write_text("not an image\n")
    (src / "DICOMDIR_like").write_bytes(b"\x00" * 64)
    report, samples = ingest(src, tmp_path / "out")
    summary = report["summary"]
    assert summary["slices_written"] == 3 and len(samples) == 3
    assert summary["ignored_files"] == 2
    reasons = summary["skip_reasons"]
    assert reasons["not CT (modality MR)"] == 1
    assert summary["series_written"] == 1
    assert reasons["no SOP Instance UID: not a DICOM image"] == 1                  # the truncated header
    # The truncated pixel data is refused from its header, before any decoding.
    assert reasons["the file is too small for its Rows x Columns x Number of Frames (truncated, or a corrupt header)"] == 1
    # Sources are named by pseudonyms, not by path.
    assert all(f["source"].startswith("src-") for f in report["skipped_files"])


def test_reference_reader_agrees_on_compressed_corpus_file(tmp_path):
    """Sanity of the reference itself on a file pydicom ships (CT, explicit VR)."""
    from pydicom import examples

    ds = examples.ct
    ds.SeriesInstanceUID = "1.2.3.600"
    save(ds, tmp_path / "src" / "a.dcm")
    ds2 = ds.copy()
    ds2.SOPInstanceUID = "1.2.3.600.2"
    ds2.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 5]
    save(ds2, tmp_path / "src" / "b.dcm")
    _, samples = ingest(tmp_path / "src", tmp_path / "out")
    np.testing.assert_array_equal(samples[0]["hu"], reference_hu(pydicom.dcmread(tmp_path / "src" / "a.dcm")))


def test_a_dicom_ct_series_whose_values_are_not_hu_is_skipped(tmp_path):
    """Modality CT, signed storage, an explicit intercept 0, yet the values are HU + 1024 (an export that lost
    its rescale): not HU, a counted skip, never clipped into wrong CT."""
    from ctssl.data.hounsfield import NOT_HU_REASON

    rng = np.random.default_rng(6)
    src = tmp_path / "src"
    for k in range(3):
        save(ct_dataset(phantom_stored(rng), 3.0 * k, series_uid="1.2.3.600", intercept=0.0), src / f"x{k}.dcm")
        save(ct_dataset(phantom_stored(rng), 3.0 * k, series_uid="1.2.3.601"), src / f"ct{k}.dcm")
    report, samples = ingest(src, tmp_path / "out")
    (skipped,) = [r for r in report["series"] if r["outcome"] == "skipped"]
    assert skipped["reason"].startswith(NOT_HU_REASON) and skipped["value_range"][0] > -100
    assert len(samples) == 3 and report["summary"]["series_written"] == 1
