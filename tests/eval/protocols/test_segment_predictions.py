"""``ctssl segment --save-predictions`` writes NIfTI in the source series' geometry (issue 28): a volume with an
oblique, flipped affine is ingested with its mask; the reference mask, saved as a prediction by
``_save_predictions`` and resampled back onto the original image grid with nibabel (nearest neighbour), equals the
original mask on every voxel ingest wrote (all of them when no slice is thinned out; the stored grid is the source's
or finer, so nearest neighbour loses nothing).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
from ctssl.eval.inputs.segmentation import open_segmentation
from ctssl.eval.protocols.segment import _save_predictions


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", "geometry-test-salt-0123456789")


def _oblique_case():
    """An asymmetric CT volume [i, j, k], its label map, and a voxel -> RAS affine: i towards patient right, k
    inferior (both flipped against RAS), rotated 12 degrees about z and 5 about x, anisotropic voxels."""
    rng = np.random.default_rng(0)
    vol = np.full((30, 26, 10), -1000.0)
    vol[4:24, 3:20, :] = 40.0
    vol += rng.normal(0, 5, vol.shape)
    labels = np.zeros(vol.shape, np.uint8)
    labels[6:20, 5:15, 2:8] = 1
    labels[8:11, 6:9, 3:6] = 2                 # an off-centre block: any flip or shift shows
    labels[18:22, 15:19, 7] = 1                # one slice only: slice order shows
    tz, tx = np.radians(12), np.radians(5)
    rz = np.array([[np.cos(tz), -np.sin(tz), 0], [np.sin(tz), np.cos(tz), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(tx), -np.sin(tx)], [0, np.sin(tx), np.cos(tx)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-0.8, 0.9, -2.5])
    affine[:3, 3] = [31.0, -12.0, 40.0]
    return np.rint(vol).astype(np.int16), labels, affine


def _dataset(root, vol, labels, affine):
    folder = root / "Dataset001_Geo"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "liver": 1, "tumour": 2}}))
    nib.Nifti1Image(vol, affine).to_filename(str(folder / "imagesTr" / "case_0000.nii.gz"))
    nib.Nifti1Image(labels, affine).to_filename(str(folder / "labelsTr" / "case.nii.gz"))


@pytest.mark.parametrize("image_size, min_slice_spacing", [(0, 0.0), (64, 0.0), (64, 4.9)])
def test_a_saved_prediction_resampled_onto_the_original_grid_is_the_original_mask(tmp_path, image_size,
                                                                                   min_slice_spacing):
    vol, labels, affine = _oblique_case()
    _dataset(tmp_path / "src", vol, labels, affine)
    out = tmp_path / "shards"
    run_ingest(IngestConfig(sources=[str(tmp_path / "src")], out=str(out), image_size=image_size,
                            min_slice_spacing=min_slice_spacing, splits=SplitFractions(0.0, 0.0, 1.0)))
    data = open_segmentation(str(out))
    (case,) = data.cases["test"]
    folder = tmp_path / "predictions"
    _save_predictions(folder, case.masks.copy(), data, [{"case": case.key, "mean_dice": 1.0}])
    saved = nib.load(folder / f"{case.key}_prediction.nii.gz")
    back = np.asarray(resample_from_to(saved, (vol.shape, affine), order=0).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}
    written = sorted({int(v) for v in case.source_indices})     # canonical slices: inferior first
    original_k = [vol.shape[2] - 1 - k for k in written]        # the file stores k superior first (flipped)
    assert len(written) == (10 if not min_slice_spacing else 5)
    np.testing.assert_array_equal(back[:, :, original_k], labels[:, :, original_k])
    reference = nib.load(folder / f"{case.key}_reference.nii.gz")
    assert np.array_equal(reference.affine, saved.affine) and np.array_equal(reference.dataobj, saved.dataobj)
    # World geometry: voxel centres of the saved grid lie where the image's do (the slice normal of the file).
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    assert abs(abs(np.dot(saved.affine[:3, 2], normal)) - 2.5 * (1 if not min_slice_spacing else 2)) < 1e-3
    # Thinned to every second slice, the saved volume holds just the written slices (lattice step 2).
    assert np.array_equal(np.transpose(np.asarray(saved.dataobj), (2, 1, 0)), case.masks)


def test_shards_without_recorded_geometry_keep_the_diagonal_affine(tmp_path):
    """A case from shards written before ingest recorded ``affine_lps``: the former diagonal RAS affine."""
    from ctssl.eval.inputs.segmentation import SegCase

    masks = np.zeros((3, 4, 5), np.uint8)
    case = SegCase("k", "p", "test", masks.astype(np.int16), masks, ["a", "b", "c"], (2.0, 0.5, 0.7))
    voxels, affine = case.nifti_volume(masks)
    assert voxels.shape == (5, 4, 3) and np.array_equal(affine, np.diag([-0.7, -0.5, 2.0, 1.0]))
