"""The synthetic corpus's segmentation masks: an nnU-Net dataset for the NIfTI studies and DICOM SEG for some
DICOM studies, read back with nibabel and highdicom to the phantom's labels, stored in other voxel orders and
orientations than their images, and in agreement with the images and the slice labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np

from ctssl.data.synth import make_plan, phantom
from ctssl.data.synth.masks import NNUNET
from ctssl.data.synth.study import render_labels, render_series, slice_labels


def _masks(cfg) -> list[dict]:
    with open(Path(cfg.out) / "labels" / "masks.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _plan_of(cfg, case_id: str):
    return make_plan(cfg, int(case_id.split("-")[1]))


def test_the_catalogue_has_masks_in_several_layouts(corpus):
    cfg, summary = corpus
    rows = _masks(cfg)
    nifti = [r for r in rows if r["kind"] == "nifti"]
    seg = [r for r in rows if r["kind"] == "seg"]
    assert len(nifti) == summary["nifti_studies"] == summary["masks"]["nnunet_cases"]
    assert len(seg) == summary["masks"]["dicom_seg"] >= 3
    assert {r["stored"] for r in seg} >= {"image", "flipped", "transposed"}
    assert "image" in {r["stored"] for r in nifti} and len({r["stored"] for r in nifti}) >= 2
    for r in rows:
        assert (Path(cfg.out) / r["mask_path"]).is_file() and (Path(cfg.out) / r["image_path"]).exists()


def test_nnunet_dataset_layout(corpus):
    cfg, _ = corpus
    root = Path(cfg.out) / NNUNET
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, **{v: k for k, v in phantom.LABEL_CLASSES.items()}}
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    cases = sorted(p.name[: -len(".nii.gz")] for p in (root / "labelsTr").iterdir())
    assert meta["numTraining"] == len(cases) >= 2
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    for case in cases:        # imagesTr holds the NIfTI study itself, byte for byte
        assert (root / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == \
            (Path(cfg.out) / "nifti" / f"{case}.nii.gz").read_bytes()


def test_label_volumes_read_back_to_the_phantoms_labels(corpus):
    cfg, _ = corpus
    other_order = 0
    for row in _masks(cfg):
        if row["kind"] != "nifti":
            continue
        plan = _plan_of(cfg, row["case_id"])
        mask = nib.load(Path(cfg.out) / row["mask_path"])
        image = nib.load(Path(cfg.out) / plan.relpath)
        other_order += nib.aff2axcodes(mask.affine) != nib.aff2axcodes(image.affine)
        assert mask.get_data_dtype() == np.uint8
        canonical = np.asarray(nib.as_closest_canonical(mask).dataobj)          # RAS
        got = canonical[::-1, ::-1, :].transpose(2, 1, 0)                        # -> [z, posterior, left]
        np.testing.assert_array_equal(got, render_labels(plan, plan.series[0]))
        # The same voxel grid as the image, whatever the voxel order.
        np.testing.assert_allclose(nib.as_closest_canonical(mask).affine, nib.as_closest_canonical(image).affine,
                                   atol=1e-4)
    assert other_order >= 1


def _class_of_segments(seg) -> dict[int, int]:
    names = {v: k for k, v in phantom.LABEL_CLASSES.items()}
    out = {}
    for item in seg.SegmentSequence:
        out[int(item.SegmentNumber)] = names[str(item.SegmentLabel)]
    return out


def test_dicom_seg_reads_back_to_the_phantoms_labels(corpus):
    """highdicom reads each SEG; every frame, put back by its own orientation and position, is the phantom's
    label of that slice; the orientation is the planned one."""
    cfg, _ = corpus
    orientations = {"image": [1, 0, 0, 0, 1, 0], "flipped": [-1, 0, 0, 0, -1, 0], "transposed": [0, 1, 0, 1, 0, 0]}
    for row in _masks(cfg):
        if row["kind"] != "seg":
            continue
        plan = _plan_of(cfg, row["case_id"])
        series = plan.series[0]
        truth = render_labels(plan, series)
        seg = hd.seg.segread(Path(cfg.out) / row["mask_path"])
        assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
        shared = seg.SharedFunctionalGroupsSequence[0]
        iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        assert iop == orientations[row["stored"]]
        classes = _class_of_segments(seg)
        rebuilt = np.zeros_like(truth)
        pixels = seg.pixel_array if seg.NumberOfFrames > 1 else seg.pixel_array[None]
        for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
            z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
            k = int(np.argmin(np.abs(series.z - z)))
            assert abs(series.z[k] - z) < 1e-3
            plane = pixels[f]
            if row["stored"] == "flipped":
                plane = plane[::-1, ::-1]
            elif row["stored"] == "transposed":
                plane = plane.T
            ident = frame.get("SegmentIdentificationSequence") or \
                seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence   # one segment: shared
            number = int(ident[0].ReferencedSegmentNumber)
            rebuilt[k][plane > 0] = classes[number]
        np.testing.assert_array_equal(rebuilt, truth)
        # The SEG references the series it was made from, instance by instance.
        referenced = {uid for _, _, uid in seg.get_source_image_uids()}
        assert len(referenced) == series.n_slices


def test_masks_agree_with_the_images_and_the_slice_labels(corpus):
    """Per class, the rendered HU is what the phantom paints there; a slice's lesion flags are exactly the lesion
    classes its mask holds."""
    cfg, _ = corpus
    hu_ranges = {"lung": (-1000, -500), "liver": (20, 200), "brain": (10, 60)}
    medians: dict[str, list[float]] = {name: [] for name in hu_ranges}
    for index in range(cfg.patients):
        plan = make_plan(cfg, index)
        for series in plan.series:
            labels = render_labels(plan, series)
            for row, mask in zip(slice_labels(plan, series), labels):
                present = {phantom.LABEL_CLASSES[c] for c in np.unique(mask) if c}
                for kind in phantom.LESION_TYPES:
                    assert row[kind] == int(kind in present), (plan.case_id, row["slice_index"], kind)
            picks = list(range(0, series.n_slices, 7))
            hu = render_series(plan, series, picks)
            for j, k in enumerate(picks):
                for class_id, name in phantom.LABEL_CLASSES.items():
                    if name in hu_ranges and (labels[k] == class_id).sum() > 50:
                        medians[name].append(float(np.median(hu[j][labels[k] == class_id])))
    for name, (low, high) in hu_ranges.items():
        assert medians[name], name
        assert low <= np.median(medians[name]) <= high, (name, np.median(medians[name]))
