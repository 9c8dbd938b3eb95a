"""NRRD and MetaImage (SimpleITK): the same voxels and affine as a NIfTI twin give the same HU, slices and geometry;
masks in those formats are placed as NIfTI masks are; nnU-Net datasets with such a file_ending; damaged files
are counted skips.

The twins are written from one array and one affine: NIfTI with nibabel (RAS), NRRD and MetaImage with SimpleITK
(LPS: origin and direction negated in x and y), so only a reader that converts between the two frames gives equal
slices.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.data.ingest.plan import build_plan
from ctssl.shards.reader import iter_samples


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", "itk-test-salt-0123456789")


def _rotation(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def twin_volume():
    """An asymmetric CT volume [i, j, k] (HU) and a voxel -> RAS affine with flipped axes and a 10-degree tilt."""
    rng = np.random.default_rng(0)
    vol = np.full((40, 36, 12), -1000.0)
    vol[5:30, 4:20, :] = 40.0
    vol[8:12, 6:9, 2:9] = 700.0                 # a bone block off-centre
    vol += rng.normal(0, 5, vol.shape)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(10) @ np.diag([-0.7, 0.9, -2.5])   # i towards patient right, k inferior
    affine[:3, 3] = [14.0, -16.0, 20.0]
    return np.rint(vol).astype(np.int16), affine


def twin_labels(shape):
    labels = np.zeros(shape, np.uint8)
    labels[5:30, 4:20, 3:10] = 1
    labels[8:12, 6:9, 4:8] = 2
    return labels


def write_nifti(data, affine, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, affine).to_filename(str(path))


def write_itk(data, ras_affine, path, compress=False):
    """``data`` [i, j, k] with its voxel -> RAS affine, as SimpleITK stores it (LPS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
    sitk.WriteImage(image, str(path), compress)
    return path


def _by_series(out):
    """{source kind: its one series' samples, inferior first}."""
    series: dict[str, list] = {}
    for sample in iter_samples(out):
        series.setdefault(sample["meta"]["source"], []).append(sample)
    return {k: sorted(v, key=lambda s: s["meta"]["z_mm"]) for k, v in series.items()}


@pytest.mark.parametrize("image_size", [0, 64])
def test_metaimage_and_nrrd_equal_their_nifti_twin(tmp_path, image_size):
    vol, affine = twin_volume()
    src = tmp_path / "src"
    write_nifti(vol, affine, src / "nifti" / "case.nii.gz")
    write_itk(vol, affine, src / "mha" / "case.mha")
    write_itk(vol, affine, src / "mhd" / "case.mhd")           # header + detached case.raw (or .zraw)
    write_itk(vol, affine, src / "nrrd" / "case.nrrd", compress=True)
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=image_size))
    summary = report["summary"]
    assert summary["series_written"] == 4 and summary["skip_reasons"] == {}
    assert summary["nifti_files"] == 1 and summary["metaimage_files"] == 2 and summary["nrrd_files"] == 1
    assert summary["ignored_files"] == 0                       # the .mhd's data file belongs to it
    volumes: dict[str, list] = {}
    for sample in iter_samples(tmp_path / "out"):
        volumes.setdefault(sample["meta"]["series"], []).append(sample)
    by_kind = sorted(((v[0]["meta"]["source"], sorted(v, key=lambda s: s["meta"]["z_mm"])) for v in volumes.values()),
                     key=lambda pair: pair[0])
    assert [kind for kind, _ in by_kind] == ["metaimage", "metaimage", "nifti", "nrrd"]
    nifti = dict(by_kind)["nifti"]
    assert len(nifti) == 12
    reference = np.stack([s["hu"] for s in nifti])
    for kind, samples in by_kind:
        assert np.array_equal(np.stack([s["hu"] for s in samples]), reference), kind
        for a, b in zip(samples, nifti):
            for key in ("z_mm", "pixel_spacing_mm", "slice_spacing_mm", "oblique_deg", "source_shape", "shape"):
                assert a["meta"][key] == b["meta"][key], (kind, key)
    assert abs(nifti[0]["meta"]["oblique_deg"] - 10) < 1e-3          # the tilt came through


def test_itk_masks_and_an_nnunet_dataset_with_an_itk_file_ending(tmp_path):
    """nnU-Net datasets whose images and labels are .mha and .nrrd: every slice's mask equals the NIfTI dataset's."""
    vol, affine = twin_volume()
    labels = twin_labels(vol.shape)
    src = tmp_path / "src"
    for name, ending in (("Dataset001_Nii", ".nii.gz"), ("Dataset002_Mha", ".mha"), ("Dataset003_Nrrd", ".nrrd")):
        folder = src / name
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": 1, "file_ending": ending}))
        writer = write_nifti if ending == ".nii.gz" else write_itk
        writer(vol, affine, folder / "imagesTr" / f"case_0000{ending}")
        writer(labels, affine, folder / "labelsTr" / f"case{ending}")
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    summary = report["summary"]
    assert summary["series_written"] == 3 and summary["masks_placed"] == 3, summary
    series = _by_series(tmp_path / "out")
    reference = np.stack([s["mask"] for s in series["nifti"]])
    assert set(np.unique(reference)) == {0, 1, 2}
    for kind in ("metaimage", "nrrd"):
        assert np.array_equal(np.stack([s["mask"] for s in series[kind]]), reference), kind
    kinds = sorted(r["mask"]["kind"] for r in report["series"])
    assert kinds == ["metaimage", "nifti", "nrrd"]


def test_damaged_and_unsupported_itk_files_are_counted_skips(tmp_path):
    vol, affine = twin_volume()
    src = tmp_path / "src"
    good = write_itk(vol, affine, src / "good.mha")
    data = good.read_bytes()
    (src / "truncated.mha").write_bytes(data[: len(data) // 2])
    (src / "garbage.nrrd").write_bytes(b"NRRD0004\nthis is not a header\n" + bytes(range(256)) * 8)
    write_itk(vol, affine, src / "lost.mhd")
    (src / "lost.raw").unlink()                                 # its data file is missing
    vector = sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.int16), isVector=True)
    sitk.WriteImage(vector, str(src / "vector.nrrd"))
    mr = np.clip(800 + np.random.default_rng(1).normal(0, 300, vol.shape), 0, None).astype(np.int16)
    write_itk(mr, affine, src / "mr.nrrd")
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    reasons = {r["source"]: r.get("reason") for r in report["series"]}
    summary = report["summary"]
    assert summary["series_written"] == 1 and summary["slices_written"] == 12
    got = sorted(summary["skip_reasons"])
    assert summary["skip_reasons"]["unreadable metaimage file (SimpleITK cannot read its pixel data: damaged, "
                                   "truncated, or its data file missing)"] == 2          # truncated.mha, lost.mhd
    assert any(r.startswith("unreadable nrrd file") for r in got), got
    assert "not a CT volume: 3 values per voxel (a colour or vector image)" in got
    assert any(r.startswith("not Hounsfield units (almost nothing below -50") for r in got), got
    assert len(reasons) == 6
    raw = (tmp_path / "out" / "ingest-report.json").read_text()
    assert str(tmp_path) not in raw and "truncated.mha" not in raw and "garbage" not in raw and "lost" not in raw


def test_the_plan_counts_an_itk_volumes_slices_from_its_slice_axis(tmp_path):
    vol, affine = twin_volume()
    write_itk(vol, affine, tmp_path / "src" / "case.mha")
    single = np.zeros((512, 512, 1), np.int16) - 1000
    single[100:400, 100:400] = 40
    write_itk(single, np.diag([0.7, 0.7, 5.0, 1.0]), tmp_path / "src" / "single.nrrd")
    plan = build_plan(IngestConfig(sources=[str(tmp_path / "src")], out=str(tmp_path / "out")), num_tasks=2)
    assert plan["frames"] == 13 and sorted(t["frames"] for t in plan["tasks"]) == [1, 12]
