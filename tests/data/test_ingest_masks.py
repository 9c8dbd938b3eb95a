"""Segmentation masks through ingest: nnU-Net/MSD, LiTS, a --masks CSV and DICOM SEG (made with highdicom).

Every image here encodes its own labels (HU = 100 * label - 1000), so a mask lies right exactly when
``mask == (hu + 1000) / 100`` on every pixel of every slice: a check that does not use ctssl's geometry code.
Masks are stored in other voxel orders and orientations than their images; bad masks are counted skips with
their reasons (the image kept); label volumes are never images; no identifier of a SEG reaches any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.data.guard import DataError
from ctssl.shards.reader import iter_samples, iter_shard, shard_paths
from ctssl.shards.verify import verify_shards
from tests.dicom_factory import ct_dataset, save

SALT = "mask-test-salt-0123456789"
SHAPE = (20, 16, 9)                                   # [x, y, z]


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", SALT)


# --------------------------------------------------------------------------- data that encodes its labels


def _labels(seed: int = 3, values=(1, 2)) -> np.ndarray:
    """An asymmetric label volume [x, y, z] (a wrong flip or transpose shows)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    for value in values:      # value 1 in the left half of x, 2 in the right half: both always present
        x, y, z = rng.integers(0, 4) + 10 * (value - 1), rng.integers(0, 8), rng.integers(0, 4)
        labels[x:x + 3 + 2 * value, y:y + 2 + value, z:z + 2 + value] = value
    return labels


def _affine() -> np.ndarray:
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-8.0, 12.0, -400.0]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray, axcodes=("R", "A", "S")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes))
    img = nib.Nifti1Image(apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape))
    img.to_filename(str(path))
    return path


def _image(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.float32) * 100 - 1000


def _samples(out: Path) -> dict[str, list[dict]]:
    """series pseudonym -> its samples, inferior first."""
    by_series = defaultdict(list)
    for sample in iter_samples(out):
        by_series[sample["meta"]["series"]].append(sample)
    return {k: sorted(v, key=lambda s: s["meta"]["z_mm"]) for k, v in by_series.items()}


def _aligned(sample: dict, ids: dict[int, int] | None = None) -> bool:
    """The mask is the image's own label on every pixel (``ids``: label value -> class id, when remapped)."""
    labels = np.rint((sample["hu"].astype(np.int32) + 1000) / 100).astype(np.int64)
    if ids is not None:
        labels = np.vectorize(lambda v: ids.get(v, v))(labels)
    return bool(np.array_equal(sample["mask"], labels))


def _report_masks(report: dict) -> dict[str, dict]:
    return {r["series"]: r.get("mask") for r in report["series"]}


def _dataset_json(folder: Path, labels: dict, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", **extra}))


# --------------------------------------------------------------------------- nnU-Net, MSD, LiTS, CSV

LAYOUTS = {   # case -> (image voxel order, mask voxel order, nudge the mask's affine)
    "same": (("R", "A", "S"), ("R", "A", "S"), False),
    "ras-vs-lps": (("R", "A", "S"), ("L", "P", "S"), False),
    "transposed": (("L", "A", "S"), ("A", "L", "S"), False),
    "flipped-slices": (("R", "A", "S"), ("R", "A", "I"), False),
    "slices-first": (("P", "I", "R"), ("S", "L", "P"), False),
    "compatible-affine": (("R", "A", "S"), ("L", "A", "I"), True),
}


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    """An nnU-Net dataset whose cases store image and mask in the LAYOUTS, ingested at native size and at 24 px
    (the salt set for these ingests only: tests that run later see the environment as it was)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTSSL_SALT", SALT)
        return _ingest_layouts(tmp_path_factory.mktemp("nnunet"))


def _ingest_layouts(root: Path) -> dict:
    ds = root / "src" / "Dataset007_Layouts"
    _dataset_json(ds, {"background": 0, "liver": 1, "tumour": 2}, channel_names={"0": "CT"})
    for i, (case, (image_codes, mask_codes, nudge)) in enumerate(LAYOUTS.items()):
        labels, affine = _labels(seed=i), _affine()
        _save(ds / "imagesTr" / f"{case}_0000.nii.gz", _image(labels), affine, image_codes)
        mask_affine = affine.copy()
        if nudge:      # 0.03 voxel off in x and a float32 sform: the same grid within tolerance
            mask_affine[0, 3] += 0.03 * 0.8
            mask_affine = mask_affine.astype(np.float32)
        _save(ds / "labelsTr" / f"{case}.nii.gz", labels, mask_affine, mask_codes)
    _save(ds / "imagesTs" / "unlabelled_0000.nii.gz", _image(_labels(seed=99)), _affine())
    outs = {}
    for size in (0, 24):
        out = root / f"out-{size}"
        outs[size] = (out, run_ingest(IngestConfig(sources=[str(root / "src")], out=str(out), image_size=size)))
    return outs


def test_masks_in_any_voxel_order_lie_on_their_slices(nnunet):
    out, report = nnunet[0]
    assert report["summary"]["series_written"] == len(LAYOUTS) + 1
    assert report["summary"]["masks_placed"] == len(LAYOUTS) and report["summary"]["masks_skipped"] == 0
    with_mask = 0
    for samples in _samples(out).values():
        if samples[0]["mask"] is None:               # imagesTs: an image without a mask
            assert all(s["mask"] is None and "mask" not in s["meta"] for s in samples)
            continue
        with_mask += 1
        assert len(samples) == SHAPE[2]
        assert all(_aligned(s) for s in samples)
        assert {int(v) for s in samples for v in np.unique(s["mask"])} == {0, 1, 2}
    assert with_mask == len(LAYOUTS)


def test_a_resized_mask_follows_its_slice_pixel_for_pixel(nnunet):
    """At 24 px the mask is the native mask sampled at the output pixel centres (nearest neighbour, the fit and
    padding of the image), computed here independently; and where the resized image is one class's HU over a
    3 x 3 neighbourhood, the mask is that class."""
    native = {s["key"]: s for v in _samples(nnunet[0][0]).values() for s in v}
    checked = pure_pixels = 0
    for samples in _samples(nnunet[24][0]).values():
        for s in samples:
            if s["mask"] is None:
                continue
            assert s["mask"].shape == s["hu"].shape == (24, 24)
            source = native[s["key"]]["mask"]
            h, w = source.shape
            scale = max(h * 0.7, w * 0.8) / 24                      # mm per output pixel (rows 0.7, columns 0.8 mm)
            new_h, new_w = round(h * 0.7 / scale), round(w * 0.8 / scale)
            top, left = (24 - new_h) // 2, (24 - new_w) // 2
            expected = np.zeros((24, 24), np.uint8)
            rows = np.floor((np.arange(new_h) + 0.5) * h / new_h).astype(int)
            cols = np.floor((np.arange(new_w) + 0.5) * w / new_w).astype(int)
            expected[top:top + new_h, left:left + new_w] = source[np.ix_(rows, cols)]
            np.testing.assert_array_equal(s["mask"], expected)
            hu = s["hu"].astype(np.int32)
            for value in (-1000, -900, -800):
                uniform = np.ones((22, 22), bool)
                for dr in range(3):
                    for dc in range(3):
                        uniform &= hu[dr:dr + 22, dc:dc + 22] == value
                inner = s["mask"][1:-1, 1:-1][uniform]
                assert np.all(inner == (value + 1000) // 100)
                pure_pixels += int(uniform.sum())
            checked += 1
    assert checked == len(LAYOUTS) * SHAPE[2] and pure_pixels > 1000


def test_manifest_segmentation_equals_a_direct_count(nnunet):
    for out, _report in nnunet.values():
        manifest = json.loads((out / "manifest.json").read_text())
        seg = manifest["segmentation"]
        assert seg["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
        direct = defaultdict(lambda: {"series": set(), "slices": 0, "pixels": Counter()})
        for sample in iter_samples(out):
            if sample["mask"] is None:
                continue
            entry = direct[sample["meta"]["split"]]
            entry["series"].add(sample["meta"]["series"])
            entry["slices"] += 1
            values, counts = np.unique(sample["mask"], return_counts=True)
            entry["pixels"].update(dict(zip(values.tolist(), counts.tolist())))
            assert sample["meta"]["mask"] is True
            assert sample["meta"]["mask_pixels"] == {str(v): int(n) for v, n in zip(values, counts)}
        assert seg["splits"] == {split: {"cases": len(e["series"]), "slices": e["slices"],
                                         "pixels": {str(c): n for c, n in sorted(e["pixels"].items())}}
                                 for split, e in direct.items()}
        assert manifest["encoding"]["seg"].startswith("CTSG v1")
        assert verify_shards(out)[0] == []


def test_verify_notices_a_mask_that_disagrees_with_its_metadata_or_the_manifest(nnunet, tmp_path):
    import shutil

    out, _ = nnunet[0]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    split = next(iter(manifest["segmentation"]["splits"]))
    manifest["segmentation"]["splits"][split]["pixels"]["1"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _ = verify_shards(copy)
    assert any("segmentation of split" in p for p in problems)
    # A sample whose mask_pixels disagree with its mask.
    (copy / "manifest.json").write_text((out / "manifest.json").read_text())
    shard = next(p for p in shard_paths(copy) if any("seg" in s for s in iter_shard(p, decode=False)))
    samples = list(iter_shard(shard, decode=False))
    target = next(s for s in samples if "seg" in s)
    meta = json.loads(target["json"])
    meta["mask_pixels"]["0"] += 1
    target["json"] = json.dumps(meta, sort_keys=True).encode()
    from ctssl.shards.writer import ShardWriter

    writer = ShardWriter(copy, shard.name, "train")
    for s in samples:
        writer.add(s["key"], {k: v for k, v in s.items() if k not in ("key", "crc")})
    writer.close()
    problems, _ = verify_shards(copy)
    assert any("mask_pixels" in p and target["key"] in p for p in problems), problems


def test_shuffle_carries_the_masks_and_inspect_draws_them(nnunet, tmp_path):
    from PIL import Image

    from ctssl.shards.inspect import inspect_shards
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    out, _ = nnunet[0]
    shuffled = tmp_path / "shuffled"
    manifest = run_shuffle(out, shuffled, ShuffleConfig(shard_size_mb=0.01))
    assert manifest["segmentation"] == json.loads((out / "manifest.json").read_text())["segmentation"]
    assert verify_shards(shuffled)[0] == []

    def raw(folder):
        return {s["key"]: s.get("seg") for p in shard_paths(folder) for s in iter_shard(p, decode=False)}

    before, after = raw(out), raw(shuffled)
    assert before == after and sum(v is not None for v in after.values()) == len(LAYOUTS) * SHAPE[2]
    summary = inspect_shards(out, tmp_path / "inspect", n_tiles=60)
    assert summary["masks"]["slices"] == len(LAYOUTS) * SHAPE[2]
    assert set(summary["masks"]["pixels"]) == {"0 background", "1 liver", "2 tumour"}
    sheet = np.asarray(Image.open(tmp_path / "inspect" / "contact_sheet.png"))
    assert sheet.ndim == 3                                    # colour: overlays drawn
    colours = {tuple(v) for v in sheet.reshape(-1, 3)}
    assert (230, 25, 75) in colours and (60, 180, 75) in colours   # class 1 and 2 contours


def test_msd_dataset_json_channels_and_test_images(tmp_path):
    """MSD's id -> name labels, ``modality`` and ``training`` list, images without a channel suffix; a non-CT
    channel is a counted skip; an imagesTs image is ingested without a mask."""
    root = tmp_path / "src"
    msd = root / "Task03_Liver"
    labels = _labels()
    _dataset_json(msd, {"0": "background", "1": "liver", "2": "cancer"}, modality={"0": "CT"},
                  training=[{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
                  test=["./imagesTs/liver_9.nii.gz"])
    _save(msd / "imagesTr" / "liver_0.nii.gz", _image(labels), _affine(), ("L", "P", "S"))
    _save(msd / "labelsTr" / "liver_0.nii.gz", labels, _affine(), ("R", "A", "I"))
    _save(msd / "imagesTs" / "liver_9.nii.gz", _image(_labels(5)), _affine())
    multi = root / "Dataset002_Multi"
    _dataset_json(multi, {"background": 0, "kidney": 1}, channel_names={"0": "CT", "1": "T2"})
    _save(multi / "imagesTr" / "k1_0000.nii.gz", _image(_labels(6, (1,))), _affine())
    _save(multi / "imagesTr" / "k1_0001.nii.gz", _image(_labels(7, (1,))), _affine())
    _save(multi / "labelsTr" / "k1.nii.gz", _labels(6, (1,)), _affine(), ("A", "R", "S"))
    report = run_ingest(IngestConfig(sources=[str(root)], out=str(tmp_path / "out"), image_size=0))
    summary = report["summary"]
    assert summary["series_written"] == 3 and summary["masks_placed"] == 2 and summary["mask_files"] == 2
    assert summary["skip_reasons"] == {"not a CT channel (dataset.json names channel 0001 'T2')": 1}
    # One class table by name: the first dataset found (Dataset002) keeps its ids, MSD's move to free ones.
    names = json.loads((tmp_path / "out" / "manifest.json").read_text())["segmentation"]["labels"]
    assert names == {"0": "background", "1": "kidney", "2": "liver", "3": "cancer"}
    samples = [v for v in _samples(tmp_path / "out").values() if v[0]["mask"] is not None]
    assert len(samples) == 2
    liver = [v for v in samples if any(2 in s["mask"] for s in v)]
    kidney = [v for v in samples if any(1 in s["mask"] for s in v)]
    assert len(liver) == len(kidney) == 1 and liver != kidney
    assert all(_aligned(s, {1: 2, 2: 3}) for s in liver[0]) and all(_aligned(s) for s in kidney[0])


def test_lits_names_and_a_csv_pairing(tmp_path):
    root = tmp_path / "src"
    labels = _labels()
    _save(root / "batch1" / "volume-0.nii", _image(labels), _affine())
    _save(root / "batch1" / "segmentation-0.nii", labels, _affine(), ("L", "P", "I"))
    _save(root / "batch1" / "volume-1.nii", _image(_labels(8)), _affine())           # no segmentation
    _save(root / "batch2" / "segmentation-2.nii", labels, _affine())                 # no volume
    # A CSV pairing: arbitrary names, the mask under the sources too (it must not become an image), and a
    # patient column tying two scans together.
    _save(root / "scans" / "scan_a.nii.gz", _image(_labels(11)), _affine())
    _save(root / "scans" / "scan_b.nii.gz", _image(_labels(12)), _affine(), ("S", "A", "R"))
    _save(root / "scans" / "roi_a.nii.gz", _labels(11), _affine(), ("A", "R", "S"))
    _save(tmp_path / "elsewhere" / "roi_b.nii.gz", _labels(12), _affine())
    table = tmp_path / "pairs.csv"
    table.write_text("image,mask,patient\nsrc/scans/scan_a.nii.gz,src/scans/roi_a.nii.gz,P1\n"
                     "src/scans/scan_b.nii.gz,elsewhere/roi_b.nii.gz,P1\n")
    report = run_ingest(IngestConfig(sources=[str(root)], out=str(tmp_path / "out"), image_size=0,
                                     masks=[str(table)], mask_labels={"1": "liver", "2": "liver_tumor"}))
    summary = report["summary"]
    assert summary["series_written"] == 4 and summary["slices_written"] == 4 * SHAPE[2]
    assert summary["mask_files"] == 4 and summary["masks_placed"] == 3
    assert summary["mask_skip_reasons"] == {"its image is not among the sources (missing image)": 1}
    samples = _samples(tmp_path / "out")
    masked = [v for v in samples.values() if v[0]["mask"] is not None]
    assert len(masked) == 3 and all(_aligned(s) for v in masked for s in v)
    patients = {v[0]["meta"]["patient"] for v in masked}
    assert len(patients) == 2                          # scan_a and scan_b: one patient (the CSV's)
    names = json.loads((tmp_path / "out" / "manifest.json").read_text())["segmentation"]["labels"]
    assert names == {"0": "background", "1": "liver", "2": "liver_tumor"}   # LiTS and the CSV agree by name


def test_a_dicom_series_with_a_nifti_mask_from_a_csv(tmp_path):
    """The CSV names a DICOM folder; the NIfTI mask (RAS, another voxel order) lies on the DICOM slices."""
    rng_labels = _labels(21)
    root = tmp_path / "src" / "series"
    # DICOM LPS: x = -RAS x, y = -RAS y. Slice k of the DICOM series is RAS z plane k.
    affine = _affine()
    for k in range(SHAPE[2]):
        # stored rows run +y (LPS), columns +x (LPS): RAS x index i has LPS x = -(ras_x0 + 0.8 i)
        plane = rng_labels[:, :, k]                                    # [RAS x, RAS y]
        lps = plane[::-1, ::-1].T                                      # [row: LPS y, col: LPS x]
        x0 = -(affine[0, 3] + 0.8 * (SHAPE[0] - 1))
        y0 = -(affine[1, 3] + 0.7 * (SHAPE[1] - 1))
        ds = ct_dataset((lps.astype(np.int32) * 100 - 1000 + 1024), affine[2, 3] + 3.0 * k,
                        series_uid="1.2.3.500", spacing=(0.7, 0.8), x0=x0, y0=y0, instance=k + 1)
        save(ds, root / f"{k:03d}.dcm")
    _save(tmp_path / "masks" / "m.nii.gz", rng_labels, affine, ("P", "S", "L"))
    table = tmp_path / "pairs.csv"
    table.write_text("image,mask\nsrc/series,masks/m.nii.gz\n")
    report = run_ingest(IngestConfig(sources=[str(tmp_path / "src")], out=str(tmp_path / "out"), image_size=0,
                                     masks=[str(table)], mask_labels={1: "a", 2: "b"}))
    assert report["summary"]["masks_placed"] == 1, report["summary"]
    samples = next(iter(_samples(tmp_path / "out").values()))
    assert len(samples) == SHAPE[2] and all(_aligned(s) for s in samples)
    assert sum(int((s["mask"] > 0).sum()) for s in samples) == int((rng_labels > 0).sum())


# --------------------------------------------------------------------------- DICOM SEG


def _world_label(x, y, z):
    """The ground truth in DICOM world coordinates (LPS mm): an asymmetric pattern that changes with z."""
    out = np.zeros(np.broadcast(x, y, z).shape, np.uint8)
    out[(x > -6) & (x < 5) & (y > -3) & (y < 9) & (z > 1) & (z < 12)] = 1
    out[(x > 1) & (x < 4) & (y > -2) & (y < 2) & (z > 4) & (z < 9)] = 2
    return out


def _grid(iop, position, rows, cols, spacing):
    i, j = np.mgrid[:rows, :cols]
    world = np.asarray(position)[None, None] + i[..., None] * spacing * np.asarray(iop[3:]) + \
        j[..., None] * spacing * np.asarray(iop[:3])
    return world[..., 0], world[..., 1], world[..., 2]


def _ct_series(folder: Path, series_uid: str, iop, marks: dict | None = None, n: int = 6,
               shape=(14, 18), spacing=1.0) -> list:
    """A CT series whose HU encode _world_label; returns its data sets (as highdicom wants them)."""
    datasets = []
    rows, cols = shape
    for k in range(n):
        z = 2.5 * k
        x0 = -9.0 if iop[0] > 0 or iop[3] > 0 else 9.0
        y0 = -7.0 if iop[4] > 0 or iop[1] > 0 else 7.0
        labels = _world_label(*_grid(iop, (x0, y0, z), rows, cols, spacing))
        ds = ct_dataset(labels.astype(np.int32) * 100 - 1000 + 1024, z, series_uid=series_uid, iop=iop,
                        spacing=(spacing, spacing), x0=x0, y0=y0, instance=k + 1, **(marks or {}))
        ds.FrameOfReferenceUID, ds.StudyID, ds.SeriesNumber = "1.2.3.4.5", "1", 1
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.PatientSex, ds.StudyTime = "ACC1", "", "F", "101010"
        save(ds, folder / f"{k:03d}.dcm")
        datasets.append(ds)
    return datasets


def _make_seg(sources: list, path: Path, variant: str = "same", sop: str = "1.2.3.900", series: str = "1.2.3.901",
              spacing: float | None = None, plant: dict | None = None) -> Path:
    """A BINARY SEG of _world_label on ``sources``' planes: ``same`` (their geometry), ``flipped`` (rows and columns
    reversed, frames superior first) or ``transposed``; ``spacing`` another pixel spacing (a misfit)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    first = sources[0]
    rows, cols = int(first.Rows), int(first.Columns)
    src_iop = [float(v) for v in first.ImageOrientationPatient]
    step = spacing or float(first.PixelSpacing[0])
    positions, frames = [], []
    order = range(len(sources))[::-1] if variant == "flipped" else range(len(sources))
    for k in order:
        ipp = np.array([float(v) for v in sources[k].ImagePositionPatient])
        row, col = np.array(src_iop[:3]), np.array(src_iop[3:])
        if variant == "flipped":
            iop = list(-row) + list(-col)
            ipp = ipp + (cols - 1) * step * row + (rows - 1) * step * col
            shape = (rows, cols)
        elif variant == "transposed":
            iop, shape = list(col) + list(row), (cols, rows)
        else:
            iop, shape = src_iop, (rows, cols)
        positions.append(hd.PlanePositionSequence("PATIENT", [float(v) for v in ipp]))
        frames.append(_world_label(*_grid(iop, ipp, *shape, step)))
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=(plant or {}).get("label", f"segment {i + 1}"),
        segmented_property_category=codes.SCT.Organ, segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, kind in enumerate((codes.SCT.Liver, codes.SCT.Neoplasm))]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(frames), segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=series, series_number=300, sop_instance_uid=sop,
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1", content_creator_name=(plant or {}).get("creator"),
        content_description=(plant or {}).get("description"),
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", iop),
        plane_positions=positions, pixel_measures=hd.PixelMeasuresSequence([step, step], 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def test_dicom_seg_in_any_orientation_lies_on_its_slices(tmp_path):
    src = tmp_path / "src"
    plain = _ct_series(src / "ct-plain", "1.2.3.10", (1, 0, 0, 0, 1, 0))
    mirrored = _ct_series(src / "ct-mirrored", "1.2.3.11", (-1, 0, 0, 0, 1, 0))     # columns run to patient right
    sideways = _ct_series(src / "ct-sideways", "1.2.3.12", (0, 1, 0, 1, 0, 0))      # rows along x
    _make_seg(plain, src / "seg-a" / "a.dcm", "same", "1.2.3.900", "1.2.3.901")
    _make_seg(mirrored, src / "seg-b" / "b.dcm", "flipped", "1.2.3.902", "1.2.3.903")
    _make_seg(sideways, src / "seg-c" / "c.dcm", "transposed", "1.2.3.904", "1.2.3.905")
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    summary = report["summary"]
    assert summary["series_written"] == 3 and summary["mask_files"] == 3, summary
    assert summary["masks_placed"] == 3 and summary["skip_reasons"] == {}      # SEGs are masks, not "not CT"
    samples = _samples(tmp_path / "out")
    for series in samples.values():
        assert len(series) == 6 and all(_aligned(s) for s in series)
        assert {int(v) for s in series for v in np.unique(s["mask"])} == {0, 1, 2}
    labels = json.loads((tmp_path / "out" / "manifest.json").read_text())["segmentation"]["labels"]
    assert labels == {"0": "background", "1": "liver", "2": "neoplasm"}       # coded names, not the free text


def test_a_seg_is_read_with_highdicom_like_ingest_reads_it(tmp_path):
    """Cross-check with highdicom's own reader on a SEG in the CT's geometry: its per-source-instance label
    map equals what ingest places."""
    import highdicom as hd

    src = tmp_path / "src"
    cts = _ct_series(src / "ct", "1.2.3.20", (1, 0, 0, 0, 1, 0))
    path = _make_seg(cts, src / "seg" / "s.dcm", "same")
    seg = hd.seg.segread(path)
    theirs = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in cts], combine_segments=True)
    run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    ours = np.stack([s["mask"] for s in next(iter(_samples(tmp_path / "out").values()))])
    np.testing.assert_array_equal(ours, theirs)


# --------------------------------------------------------------------------- bad masks, never images


def _bad_cases(ds: Path) -> dict[str, str]:
    """An nnU-Net dataset of bad masks (each case its own image): case -> the reason expected in the report."""
    affine = _affine()
    _dataset_json(ds, {"background": 0, "liver": 1, "tumour": 2}, channel_names={"0": "CT"})
    expected = {}

    def case(name, mask, mask_affine=affine, reason=""):
        labels = _labels(seed=len(expected))
        _save(ds / "imagesTr" / f"{name}_0000.nii.gz", _image(labels), affine)
        path = ds / "labelsTr" / f"{name}.nii.gz"
        if isinstance(mask, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(mask)
        else:
            _save(path, mask(labels), mask_affine)
        expected[name] = reason

    shifted = affine.copy()
    shifted[0, 3] += 0.4

    def unknown(labels):
        out = labels.copy()
        out[0, 0, 0] = 7
        return out

    case("offset", lambda labels: labels, shifted, "an offset")
    case("spacing", lambda labels: labels[::2], affine @ np.diag([2.0, 1, 1, 1]), "pixel spacing differ")
    case("extent", lambda labels: labels[:, :, :-1], affine, "another extent")
    case("unknown", unknown, affine, "labels not in dataset.json: [7]")
    case("fraction", lambda labels: labels.astype(np.float32) * 0.5, affine, "non-integer mask values")
    case("empty", b"", reason="empty mask file")
    case("garbage", os.urandom(3000), reason="unreadable mask")
    case("fourd", lambda labels: np.stack([labels, labels], -1), affine, "4-D mask")
    case("good", lambda labels: labels, affine, "")
    _save(ds / "labelsTr" / "ghost.nii.gz", _labels(), affine)                  # an orphan: no image
    return expected


def test_bad_masks_are_counted_skips_and_their_images_are_kept(tmp_path):
    expected = _bad_cases(tmp_path / "src" / "Dataset009_Bad")
    nolabels = tmp_path / "src" / "Dataset010_NoJson"
    _save(nolabels / "imagesTr" / "x_0000.nii.gz", _image(_labels(50)), _affine())
    _save(nolabels / "labelsTr" / "x.nii.gz", _labels(50), _affine())
    report = run_ingest(IngestConfig(sources=[str(tmp_path / "src")], out=str(tmp_path / "out"), image_size=0))
    summary = report["summary"]
    assert summary["series_written"] == len(expected) + 1          # every image ingested, with or without mask
    assert summary["masks_placed"] == 1
    reasons = summary["mask_skip_reasons"]
    assert summary["masks_skipped"] == len(expected) - 1 + 2 == sum(reasons.values())
    for name, reason in expected.items():
        if reason:
            assert sum(n for r, n in reasons.items() if reason in r) >= 1, (name, reason, reasons)
    assert reasons["its image is not among the sources (missing image)"] == 1
    assert reasons["no dataset.json beside labelsTr (label names unknown)"] == 1
    for entry in report["series"]:
        if entry.get("mask", {}).get("outcome") == "skipped":
            assert entry["outcome"] == "written" and entry["written"] == SHAPE[2]
    masked = [s for v in _samples(tmp_path / "out").values() for s in v if s["mask"] is not None]
    assert len(masked) == SHAPE[2] and all(_aligned(s) for s in masked)
    assert all("mask" not in s["meta"] for v in _samples(tmp_path / "out").values() for s in v if s["mask"] is None)
    with pytest.raises(DataError, match="mask"):
        run_ingest(IngestConfig(sources=[str(tmp_path / "src")], out=str(tmp_path / "strict"), strict=True))


def test_seg_misfits_and_orphans_are_counted(tmp_path):
    src = tmp_path / "src"
    cts = _ct_series(src / "ct", "1.2.3.30", (1, 0, 0, 0, 1, 0))
    _make_seg(cts, src / "seg-wide" / "w.dcm", spacing=1.5)                        # another pixel spacing
    other = _ct_series(tmp_path / "not-a-source", "1.2.3.31", (1, 0, 0, 0, 1, 0), n=3)
    _make_seg(other, src / "seg-orphan" / "o.dcm", sop="1.2.3.910", series="1.2.3.911")
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    summary = report["summary"]
    assert summary["series_written"] == 1 and summary["mask_files"] == 2 and summary["masks_placed"] == 0
    reasons = summary["mask_skip_reasons"]
    assert any("pixel spacing differ" in r for r in reasons), reasons
    assert any(r.startswith("its image series is not among the sources") for r in reasons), reasons


def test_a_seg_highdicom_cannot_read_gives_highdicoms_reason_without_header_values(tmp_path):
    """A SEG over a CT without Slice Thickness (the SEG's Pixel Measures lack it too, as a writer that copies the
    source's geometry leaves it): highdicom refuses to read it, and the skip says why in highdicom's words, not
    "unreadable mask (AttributeError)"; the CT is kept without its mask."""
    import pydicom

    src = tmp_path / "src"
    cts = _ct_series(src / "ct", "1.2.3.40", (1, 0, 0, 0, 1, 0), marks={"patient_name": "DOE^JANE"})
    path = _make_seg(cts, src / "seg" / "s.dcm", sop="1.2.3.940", series="1.2.3.941")
    for ct in (src / "ct").iterdir():                       # the CT without Slice Thickness ...
        ds = pydicom.dcmread(ct)
        del ds.SliceThickness
        ds.save_as(ct)
    seg = pydicom.dcmread(path)                             # ... and the SEG's Pixel Measures without it
    del seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    seg.save_as(path)
    report = run_ingest(IngestConfig(sources=[str(src)], out=str(tmp_path / "out"), image_size=0))
    summary = report["summary"]
    assert summary["series_written"] == 1 and summary["masks_placed"] == 0
    assert summary["mask_skip_reasons"] == {
        "highdicom cannot read this SEG (AttributeError: Sequence does not have the required attributes for a Pixel "
        "Measures Sequence.)": 1}
    raw = (tmp_path / "out" / "ingest-report.json").read_text()
    assert "1.2.3.94" not in raw and "DOE" not in raw and "unreadable mask" not in raw


def test_label_volumes_are_never_ingested_as_images(tmp_path):
    """Whatever folder ingest is pointed at: labelsTr alone, a LiTS segmentation, a CSV's mask, a SEG."""
    ds = tmp_path / "Dataset011_Only"
    _dataset_json(ds, {"background": 0, "liver": 1, "tumour": 2})
    for name in ("a", "b"):
        _save(ds / "labelsTr" / f"{name}.nii.gz", _labels(), _affine())
        _save(ds / "imagesTr" / f"{name}_0000.nii.gz", _image(_labels()), _affine())
    _save(tmp_path / "lits" / "segmentation-4.nii", _labels(), _affine())
    _save(tmp_path / "custom" / "organs.nii.gz", _labels(), _affine())
    (tmp_path / "pairs.csv").write_text("image,mask\nnowhere/img.nii.gz,custom/organs.nii.gz\n")
    cts = _ct_series(tmp_path / "ct", "1.2.3.40", (1, 0, 0, 0, 1, 0))
    _make_seg(cts, tmp_path / "seg" / "s.dcm")
    runs = {"labelsTr": ([ds / "labelsTr"], {}), "one label file": ([ds / "labelsTr" / "a.nii.gz"], {}),
            "LiTS": ([tmp_path / "lits"], {}), "CSV": ([tmp_path / "custom"], {"masks": [str(tmp_path / "pairs.csv")]}),
            "SEG": ([tmp_path / "seg"], {})}
    for name, (sources, extra) in runs.items():
        report = run_ingest(IngestConfig(sources=[str(s) for s in sources], out=str(tmp_path / f"out-{name}"), **extra))
        summary = report["summary"]
        assert summary["slices_written"] == 0 and summary["series_written"] == 0, name
        assert summary["mask_files"] == summary["masks_skipped"] >= 1, (name, summary)
        assert summary["nifti_files"] == 0 and summary["skip_reasons"] == {}, (name, summary)
        assert all("missing image" in r or "not among the sources" in r for r in summary["mask_skip_reasons"]), name


# --------------------------------------------------------------------------- privacy

MARKS = {"PatientName": "Quixotic^Zebedee", "PatientID": "MRN5550123", "PatientBirthDate": "19451108",
         "StudyDate": "20190317", "InstitutionName": "St Swithin Infirmary"}
SEG_MARKS = {"sop": "1.2.826.0.1.3680043.2.1125.77.1", "series": "1.2.826.0.1.3680043.2.1125.77.2",
             "label": "Zebedee liver", "creator": "Pennyworth^Alfred", "description": "for Zebedee at Acacia Avenue"}


def test_no_identifier_of_a_seg_reaches_any_output_byte(tmp_path):
    src = tmp_path / "src" / "Zebedee_19451108"           # a folder named after the patient
    marks = {"patient_id": MARKS["PatientID"], "patient_name": MARKS["PatientName"],
             "study_uid": "1.2.826.0.1.3680043.2.1125.77.3"}
    cts = _ct_series(src / "ct", "1.2.826.0.1.3680043.2.1125.77.4", (1, 0, 0, 0, 1, 0), marks)
    for ds, path in zip(cts, sorted((src / "ct").iterdir())):
        ds.PatientBirthDate, ds.StudyDate, ds.InstitutionName = (MARKS[k] for k in
                                                                ("PatientBirthDate", "StudyDate", "InstitutionName"))
        save(ds, path)
    _make_seg(cts, src / "seg" / "s.dcm", "flipped", SEG_MARKS["sop"], SEG_MARKS["series"], plant=SEG_MARKS)
    seg = pydicom.dcmread(src / "seg" / "s.dcm")
    planted = [MARKS[k] for k in MARKS] + list(SEG_MARKS.values()) + [str(ds.SOPInstanceUID) for ds in cts] + \
        [marks["study_uid"], str(cts[0].SeriesInstanceUID), "Zebedee", "Acacia"]
    assert seg.PatientName == MARKS["PatientName"] and seg.PatientID == MARKS["PatientID"]   # the SEG carries them
    env = {**os.environ, "CTSSL_SALT": SALT}
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ctssl", "ingest", str(tmp_path / "src"), "--out", str(out),
                          "--image-size", "0"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "ingest-report.json").read_text())
    assert report["summary"]["masks_placed"] == 1
    found = []
    for path in out.rglob("*"):
        blob = path.name.encode() + (path.read_bytes() if path.is_file() else b"")
        found += [(mark, path.name) for mark in planted if mark.encode() in blob]
    console = (run.stdout + run.stderr).encode()
    found += [(mark, "console") for mark in planted if mark.encode() in console]
    assert not found


def test_unnamed_csv_masks_beside_named_ones_are_refused(tmp_path):
    """Ids of a CSV without mask_labels would not mean what a dataset.json's mean: one line saying so."""
    from ctssl.core.config import ConfigError

    ds = tmp_path / "src" / "Dataset012_Named"
    _dataset_json(ds, {"background": 0, "liver": 1, "tumour": 2})
    _save(ds / "imagesTr" / "n_0000.nii.gz", _image(_labels(1)), _affine())
    _save(ds / "labelsTr" / "n.nii.gz", _labels(1), _affine())
    _save(tmp_path / "src" / "plain" / "scan.nii.gz", _image(_labels(2)), _affine())
    _save(tmp_path / "masks" / "m.nii.gz", _labels(2), _affine())
    (tmp_path / "pairs.csv").write_text("image,mask\nsrc/plain/scan.nii.gz,masks/m.nii.gz\n")
    config = dict(sources=[str(tmp_path / "src")], masks=[str(tmp_path / "pairs.csv")], image_size=0)
    with pytest.raises(ConfigError, match="mask_labels"):
        run_ingest(IngestConfig(out=str(tmp_path / "out"), **config))
    report = run_ingest(IngestConfig(out=str(tmp_path / "named"), mask_labels={2: "tumour", 1: "liver"}, **config))
    assert report["summary"]["masks_placed"] == 2
    assert all(_aligned(s) for v in _samples(tmp_path / "named").values() for s in v)
