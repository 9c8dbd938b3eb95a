"""Ingest of the synthetic corpus: reference HU, labels, privacy, splits, resume, verify."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import ctssl.data.ingest.task as ingest_module
from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.data.pseudonym import pseudonym
from ctssl.data.synth import make_plan
from ctssl.shards.reader import iter_samples, shard_paths
from ctssl.shards.verify import verify_shards
from tests.helpers import read_dicom_folder, reference_hu

SALT = "corpus-test-salt-0123456789"


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", SALT)


def _config(corpus_cfg, out, **changes) -> IngestConfig:
    labels = str(Path(corpus_cfg.out) / "labels" / "slices.csv")
    settings = {"image_size": 0, "labels": [labels], "shard_size_mb": 0.5, **changes}
    return IngestConfig(sources=[corpus_cfg.out], out=str(out), **settings)


@pytest.fixture(scope="module")
def native(corpus, tmp_path_factory):
    """The corpus ingested at native size: (config, report, samples by key)."""
    from ctssl.data.pseudonym import fixed_salt

    cfg, _ = corpus
    out = tmp_path_factory.mktemp("ingest") / "native"
    with fixed_salt(SALT):     # module-scoped: the autouse fixture's monkeypatch is not there yet
        report = run_ingest(_config(cfg, out))
    return out, report, {s["key"]: s for s in iter_samples(out)}


def _slice_rows(cfg):
    with open(Path(cfg.out) / "labels" / "slices.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_labelled_slice_is_ingested_once(corpus, native):
    cfg, _ = corpus
    out, report, samples = native
    rows = _slice_rows(cfg)
    assert len(samples) == len(rows) == report["summary"]["slices_written"]
    reasons = report["summary"]["skip_reasons"]
    # The NIfTI studies are also in the corpus's nnU-Net dataset (imagesTr holds byte copies): each read once.
    nifti = sum(make_plan(cfg, i).format == "nifti" for i in range(cfg.patients))
    assert reasons == {"duplicate SOP Instance UID (another copy is read; this one is its fallback)": 1, "localizer": 1,
                       "duplicate NIfTI file (the same bytes as another source file; read once)": nifti}
    # Every mask of the corpus (labels/masks.csv) is placed on its series; none is ingested as an image.
    with open(Path(cfg.out) / "labels" / "masks.csv", newline="") as handle:
        masks = list(csv.DictReader(handle))
    assert report["summary"]["mask_files"] == len(masks) >= 4
    assert report["summary"]["masks_placed"] == len(masks) and report["summary"]["masks_skipped"] == 0
    assert report["summary"]["ignored_files"] >= 1  # the stray text file and corpus extras


def test_dicom_hu_equals_pydicom_reference(corpus, native):
    cfg, _ = corpus
    _, _, samples = native
    checked = 0
    for i in range(cfg.patients):
        plan = make_plan(cfg, i)
        if plan.format != "dicom":
            continue
        for s in plan.series:
            series_id = _series_id(s.uid)
            for path, ds in read_dicom_folder(Path(cfg.out) / s.folder):
                if ds.SeriesInstanceUID != s.uid or "LOCALIZER" in ds.ImageType:
                    continue
                if path.name.startswith("copy_of_"):  # the duplicated instance
                    continue
                k = int(np.argmin(np.abs(s.z - float(ds.ImagePositionPatient[2]))))
                sample = samples[f"{series_id}-{k:05d}"]
                assert sample["meta"]["z_mm"] == pytest.approx(float(ds.ImagePositionPatient[2]))
                np.testing.assert_array_equal(sample["hu"], reference_hu(ds))
                checked += 1
    assert checked == sum(1 for _ in _slice_rows(cfg)) - sum(
        make_plan(cfg, i).series[0].n_slices for i in range(cfg.patients) if make_plan(cfg, i).format == "nifti")


def test_nifti_hu_equals_nibabel_reference(corpus, native):
    cfg, _ = corpus
    _, _, samples = native
    for i in range(cfg.patients):
        plan = make_plan(cfg, i)
        if plan.format != "nifti":
            continue
        img = nib.as_closest_canonical(nib.load(Path(cfg.out) / plan.relpath))  # RAS
        volume = img.get_fdata()[::-1, ::-1, :].transpose(2, 1, 0)             # -> [z, P, L]
        expected = np.clip(np.rint(volume), -1024, 3071)
        series_id = pseudonym(SALT.encode(), "series", "nifti:" + plan.relpath)
        got = np.stack([samples[f"{series_id}-{k:05d}"]["hu"] for k in range(expected.shape[0])])
        assert np.abs(got - expected).max() <= 1  # rounding of scaled float data
        z = [samples[f"{series_id}-{k:05d}"]["meta"]["z_mm"] for k in range(expected.shape[0])]
        np.testing.assert_allclose(z, plan.series[0].z, atol=1e-3)


def _series_id(uid: str) -> str:
    """The series pseudonym ingest gives a DICOM series: the UID is keyed as read, then the series named."""
    from ctssl.data.pseudonym import Keyer

    return pseudonym(SALT.encode(), "series", f"{Keyer(SALT.encode())('series-uid', uid)}|")


def test_labels_are_joined_per_slice(corpus, native):
    cfg, _ = corpus
    _, _, samples = native
    by_series = defaultdict(dict)
    for row in _slice_rows(cfg):
        series_id = _series_id(row["series_uid"]) if row["series_uid"] else \
            pseudonym(SALT.encode(), "series", "nifti:" + row["nifti_path"])
        by_series[series_id][int(row["slice_index"])] = row
    for sample in samples.values():
        meta = sample["meta"]
        row = by_series[meta["series"]][meta["source_slice_index"]]
        assert meta["labels"]["region"] == row["region"]
        assert meta["labels"]["lesion"] == int(row["lesion"])
        assert "case_id" not in meta["labels"] and "series_uid" not in meta["labels"]


def test_shuffled_instance_numbers_do_not_change_order(corpus, native):
    cfg, _ = corpus
    _, _, samples = native
    plan = next(make_plan(cfg, i) for i in range(cfg.patients) if "shuffled_instances" in make_plan(cfg, i).quirks)
    series_id = _series_id(plan.series[0].uid)
    zs = [samples[f"{series_id}-{k:05d}"]["meta"]["z_mm"] for k in range(plan.series[0].n_slices)]
    assert zs == sorted(zs)


def test_no_identifier_reaches_any_output_byte(corpus, native):
    cfg, _ = corpus
    out, _, _ = native
    secrets = set()
    for i in range(cfg.patients):
        plan = make_plan(cfg, i)
        ident = plan.identity
        secrets.update([ident.patient_id, ident.patient_name, ident.patient_name.replace("^", " "),
                        ident.birth_date, ident.accession, ident.study_date, ident.institution,
                        ident.institution_address, ident.referring_physician, ident.operator,
                        ident.station, plan.study_uid, plan.frame_uid, plan.case_id])
        secrets.update(s.uid for s in plan.series)
        secrets.update(ident.patient_name.split("^"))
    secrets = {s for s in secrets if len(s) >= 6}
    blobs = {p.name: p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}
    assert any(name.endswith(".tar") for name in blobs) and "ingest-report.json" in blobs
    for name, blob in blobs.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret!r} found in {name}"
    # And nothing identifying in file names either.
    assert all(secret not in name for name in blobs for secret in secrets)


def test_splits_are_patient_level_and_stable(corpus, native, tmp_path, monkeypatch):
    cfg, _ = corpus
    _, _, samples = native
    split_of = defaultdict(set)
    for sample in samples.values():
        split_of[sample["meta"]["patient"]].add(sample["meta"]["split"])
    assert all(len(s) == 1 for s in split_of.values())
    # Same salt, another machine's run: the same keys and splits. Another salt: other pseudonyms.
    again = {s["key"]: s["meta"]["split"] for s in iter_samples(_run(cfg, tmp_path / "again"))}
    assert again == {k: s["meta"]["split"] for k, s in samples.items()}
    monkeypatch.setenv("CTSSL_SALT", "another-salt-0123456789")
    other = {s["key"] for s in iter_samples(_run(cfg, tmp_path / "other"))}
    assert not other & set(samples)


def _run(cfg, out, **changes):
    run_ingest(_config(cfg, out, **changes))
    return out


def test_interrupted_ingest_resumes_to_identical_shards(corpus, native, tmp_path, monkeypatch):
    cfg, _ = corpus
    reference, _, _ = native
    original = ingest_module.process_item
    calls = {"n": 0}

    def flaky(item):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the job is killed mid-way
        return original(item)

    monkeypatch.setattr(ingest_module, "process_item", flaky)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_ingest(_config(cfg, out))
    assert (out / "tasks" / "task-00000.journal.json").exists() and not (out / "manifest.json").exists()
    monkeypatch.setattr(ingest_module, "process_item", original)
    report = run_ingest(_config(cfg, out))
    assert report["this_run"]["series"] < len(report["series"])  # closed shards were not redone
    names = sorted(p.name for p in shard_paths(reference))
    assert names == sorted(p.name for p in shard_paths(out))
    for name in names:
        assert (out / name).read_bytes() == (Path(reference) / name).read_bytes()
    assert verify_shards(out)[0] == []
    # A rerun of a complete ingest does nothing.
    assert run_ingest(_config(cfg, out))["summary"] == report["summary"]


def test_resize_and_thinning(corpus, tmp_path):
    cfg, _ = corpus
    out = _run(cfg, tmp_path / "small", image_size=32, min_slice_spacing=6.0)
    samples = list(iter_samples(out))
    assert samples and all(s["hu"].shape == (32, 32) for s in samples)
    by_series = defaultdict(list)
    for s in samples:
        by_series[s["meta"]["series"]].append(s["meta"]["z_mm"])
    for zs in by_series.values():
        assert np.all(np.diff(sorted(zs)) >= 6.0 - 1e-6)
    assert "thinned" in (out / "ingest-report.json").read_text()


def test_air_filter_drops_exactly_the_mostly_air_slices(corpus, native, tmp_path):
    cfg, _ = corpus
    _, _, samples = native
    out = _run(cfg, tmp_path / "air", max_air_fraction=0.75)
    kept = {s["key"] for s in iter_samples(out)}
    expected = {k for k, s in samples.items() if np.mean(s["hu"] < -900) <= 0.75}
    assert kept == expected and len(kept) < len(samples)


def test_worker_count_does_not_change_the_shards(corpus, native, tmp_path):
    cfg, _ = corpus
    reference, _, _ = native
    out = _run(cfg, tmp_path / "workers", workers=2)
    names = sorted(p.name for p in shard_paths(reference))
    assert names == sorted(p.name for p in shard_paths(out))
    assert all((out / n).read_bytes() == (Path(reference) / n).read_bytes() for n in names)


def test_masks_are_the_phantoms_labels_on_every_slice(corpus, native):
    """Each synthetic mask (nnU-Net label volume or DICOM SEG, in whatever voxel order or orientation it was
    stored) lands on its series as the phantom's labels of each slice, under the manifest's class names."""
    import json

    from ctssl.data.synth import phantom
    from ctssl.data.synth.study import render_labels

    cfg, _ = corpus
    out, _, samples = native
    names = json.loads((Path(out) / "manifest.json").read_text())["segmentation"]["labels"]
    ids = {name: int(i) for i, name in names.items()}
    to_class = np.zeros(256, np.uint8)
    for phantom_id, name in phantom.LABEL_CLASSES.items():
        to_class[phantom_id] = ids.get(name, 0)
    with open(Path(cfg.out) / "labels" / "masks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_series = defaultdict(list)
    for sample in samples.values():
        by_series[sample["meta"]["series"]].append(sample)
    for row in rows:
        plan = make_plan(cfg, int(row["case_id"].split("-")[1]))
        series = plan.series[0]
        series_id = _series_id(series.uid) if row["kind"] == "seg" else \
            pseudonym(SALT.encode(), "series", "nifti:" + plan.relpath)
        truth = to_class[render_labels(plan, series)]
        mine = by_series[series_id]
        assert len(mine) == series.n_slices and all(s["mask"] is not None for s in mine), row
        for sample in mine:
            np.testing.assert_array_equal(sample["mask"], truth[sample["meta"]["source_slice_index"]])
    unmasked = [s for s in samples.values() if s["mask"] is None]
    assert unmasked and all("mask" not in s["meta"] for s in unmasked)


def test_a_rerun_with_other_settings_is_refused_naming_them(corpus, native, tmp_path, monkeypatch):
    """A complete folder and a plan alike: the refusal names each differing key, never a path or the salt."""
    from ctssl.core.config import ConfigError
    from ctssl.data.ingest.plan import build_plan

    cfg, _ = corpus
    out, _, _ = native
    with pytest.raises(ConfigError) as err:
        run_ingest(_config(cfg, out, image_size=128, max_air_fraction=0.9))
    message = str(err.value)
    assert "with other settings: image_size 0 -> 128, max_air_fraction 1.0 -> 0.9." in message
    monkeypatch.setenv("CTSSL_SALT", "another-salt-0123456789")
    with pytest.raises(ConfigError, match="other settings: salt: another salt[.]") as err:
        run_ingest(_config(cfg, out))
    assert "another-salt" not in str(err.value) and SALT not in str(err.value)
    monkeypatch.setenv("CTSSL_SALT", SALT)
    planned = tmp_path / "planned"
    build_plan(_config(cfg, planned), num_tasks=2)
    with pytest.raises(ConfigError, match="holds a plan with other settings: min_slices 1 -> 2, num_tasks 2 -> 3[.]") as err:
        build_plan(_config(cfg, planned, min_slices=2), num_tasks=3)
    assert str(cfg.out) not in str(err.value)



def test_label_rows_that_match_nothing_are_counted_and_listed(corpus, native, tmp_path, caplog):
    """Exact matching: a patient ID in the wrong case, an unknown ID, a row without a key and a per-slice row
    past the series' end are each counted and listed by file pseudonym, key and line, never by value."""
    import logging

    from ctssl.data.ingest.command import log_report

    cfg, _ = corpus
    _, report, _ = native
    join = report["summary"]["labels"]     # the corpus's own per-slice file: every row matched a slice
    assert join["rows"] == join["rows_matched"] > 0 and join["rows_unmatched"] == 0 and join["unmatched"] == []
    assert join["slice_rows_without_a_written_slice"] == 0 and join["matching"].startswith("exact")
    ids = [make_plan(cfg, i).identity.patient_id for i in range(2)]
    extra = tmp_path / "patients.csv"
    extra.write_text("patient_id,nifti_path,slice_index,cohort\n"
                     f"{ids[0].lower()},,,a\nMRN00000000,,,b\n{ids[1]},,,c\n,,,d\n"
                     ",nifti/case-0003.nii.gz,9999,e\n")
    out = _run(cfg, tmp_path / "joined", labels=[str(extra)], image_size=32)
    report = __import__("json").loads((out / "ingest-report.json").read_text())
    join = report["summary"]["labels"]
    assert (join["rows"], join["rows_matched"], join["rows_unmatched"], join["rows_without_key"]) == (5, 2, 3, 1)
    assert join["slice_rows_without_a_written_slice"] == 1
    (group,) = join["unmatched"]
    assert group["key"] == "patient_id" and group["rows"] == 2 and group["lines"] == [2, 3]
    assert group["match_if_case_ignored"] == 1 and group["file"].startswith("labels-")
    assert group["file"] == report_config(out)["labels"][0]["file"]       # the name the recorded settings use
    with caplog.at_level(logging.INFO):
        log_report(report, str(out))
    console = caplog.text
    assert "2 row(s) whose patient_id matched no series (lines 2,3); 1 of them match a source only when case" in console
    assert "1 per-slice label row(s) matched a series but no written slice" in console
    for value in (*ids, ids[0].lower(), "MRN00000000", "patients.csv"):
        assert value not in console and value not in (out / "ingest-report.json").read_text()


def report_config(out):
    return __import__("json").loads((Path(out) / "manifest.json").read_text())["config"]
