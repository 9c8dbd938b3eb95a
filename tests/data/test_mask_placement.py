"""Mask placement by world coordinates: the same per-slice mask whatever the mask's voxel order or
orientation, checked against nibabel's own reorientation; anything that would shift a mask is refused with
its reason; DICOM slice grids against an independent world-coordinate map."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ctssl.data.label_volume import RAS_TO_LPS, as_labels
from ctssl.data.mask_placement import MaskError, MaskFrame, dicom_grid, nifti_grid, place_frames, place_volume
from ctssl.data.nifti_volume import load_nifti

SHAPE = (20, 16, 9)                      # [x, y, z] of the reference RAS array


def _reference():
    """An asymmetric label volume [x, y, z] and its RAS affine (any wrong flip or transpose shows)."""
    rng = np.random.default_rng(3)
    labels = np.zeros(SHAPE, np.uint8)
    for value in (1, 2, 3, 4):
        x, y, z = rng.integers(0, 12), rng.integers(0, 9), rng.integers(0, 5)
        labels[x:x + 1 + value * 2, y:y + 4 + value, z:z + 1 + value] = value
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-8.0, 12.0, -400.0]
    return labels, affine


def _reorient(data, affine, axcodes):
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes))
    return apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape)


def _image_grid(tmp_path, axcodes=("R", "A", "S"), rotate_deg=0.0):
    """The slice grid ingest computes for the reference image stored in ``axcodes`` (through load_nifti)."""
    labels, affine = _reference()
    if rotate_deg:
        t = np.radians(rotate_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        affine = rot @ affine
    data, stored_affine = _reorient(labels.astype(np.float32) * 100 - 1000, affine, axcodes)
    path = tmp_path / "image.nii.gz"
    nib.Nifti1Image(data, stored_affine).to_filename(str(path))
    volume = load_nifti(path)
    return nifti_grid(volume.affine, len(volume.z), volume.hu.shape[1:]), volume, affine


def _place(labels, affine, grid, tol=0.1):
    return place_volume(as_labels(labels), RAS_TO_LPS @ affine, grid, tol)


@pytest.mark.parametrize("image_codes, mask_codes", [
    (("R", "A", "S"), ("R", "A", "S")),          # same layout
    (("R", "A", "S"), ("L", "P", "S")),          # RAS image, LPS mask
    (("L", "A", "S"), ("A", "R", "S")),          # transposed in-plane axes
    (("R", "A", "S"), ("R", "A", "I")),          # flipped slice order
    (("P", "I", "R"), ("S", "L", "P")),          # both non-canonical, slices first
])
def test_any_voxel_order_gives_the_image_slices_mask(tmp_path, image_codes, mask_codes):
    labels, _ = _reference()
    grid, volume, affine = _image_grid(tmp_path, image_codes)
    mask, mask_affine = _reorient(labels, affine, mask_codes)
    placed = _place(mask, mask_affine, grid)
    # Independent: the image itself encodes the labels (HU = 100 * label - 1000), slice by slice.
    np.testing.assert_array_equal(placed, np.rint((volume.hu + 1000) / 100).astype(np.uint8))
    # And nibabel's own reorientation of the mask, brought to [z, posterior, patient left].
    canonical = nib.as_closest_canonical(nib.Nifti1Image(mask, mask_affine)).get_fdata()
    np.testing.assert_array_equal(placed, canonical[::-1, ::-1, :].transpose(2, 1, 0))


def test_an_oblique_image_with_its_mask_in_another_order(tmp_path):
    labels, _ = _reference()
    grid, volume, affine = _image_grid(tmp_path, ("A", "L", "I"), rotate_deg=12.0)
    mask, mask_affine = _reorient(labels, affine, ("R", "P", "S"))
    np.testing.assert_array_equal(_place(mask, mask_affine, grid), np.rint((volume.hu + 1000) / 100))


def test_a_different_but_compatible_affine(tmp_path):
    """A float32 sform, an origin 0.04 voxel off and a 0.01 degree rotation: within tolerance, placed exactly."""
    labels, _ = _reference()
    grid, volume, affine = _image_grid(tmp_path)
    mask, mask_affine = _reorient(labels, affine, ("L", "A", "I"))
    t = np.radians(0.01)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    nudged = (rot @ mask_affine).astype(np.float32).astype(np.float64)
    nudged[:3, 3] += 0.04 * np.array([0.8, 0.7, 3.0])
    assert not np.allclose(nudged, mask_affine)
    np.testing.assert_array_equal(_place(mask, nudged, grid), np.rint((volume.hu + 1000) / 100))


@pytest.mark.parametrize("change, reason", [
    ("half a voxel off in x", "an offset"),
    ("a third of a slice off", "an offset"),
    ("twice the pixel spacing", "mask axes or pixel spacing differ"),
    ("1% other pixel spacing", "pixel spacing differ"),
    ("one slice fewer", "another extent"),
    ("two more columns", "another extent"),
    ("rotated by 20 degrees", "mask axes or pixel spacing differ"),
    ("slices twice as thick", "slice spacing or orientation differs"),
])
def test_a_mask_that_would_shift_is_refused_with_its_reason(tmp_path, change, reason):
    labels, _ = _reference()
    grid, _, affine = _image_grid(tmp_path)
    mask, mask_affine = labels.copy(), affine.copy()
    if change == "half a voxel off in x":
        mask_affine[0, 3] += 0.4
    elif change == "a third of a slice off":
        mask_affine[2, 3] += 1.0
    elif change == "twice the pixel spacing":
        mask, mask_affine = labels[::2], affine @ np.diag([2.0, 1, 1, 1])
    elif change == "1% other pixel spacing":
        mask_affine = affine @ np.diag([1.01, 1, 1, 1])
    elif change == "one slice fewer":
        mask = labels[:, :, :-1]
    elif change == "two more columns":
        mask = np.concatenate([labels, np.zeros((2, *labels.shape[1:]), np.uint8)])
    elif change == "rotated by 20 degrees":
        t = np.radians(20)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        mask_affine = rot @ affine
    else:
        mask, mask_affine = labels[:, :, ::2], affine @ np.diag([1, 1, 2.0, 1])
        mask = np.concatenate([mask, mask], axis=2)[:, :, :labels.shape[2]]   # same voxel count
    with pytest.raises(MaskError, match=reason):
        _place(mask, mask_affine, grid)


def test_label_values_are_checked():
    assert as_labels(np.array([[0.0, 2.0]], np.float32)).dtype == np.uint8
    for bad, reason in ((np.array([0.5]), "non-integer"), (np.array([np.nan]), "non-finite"),
                        (np.array([-1]), "outside 0..255"), (np.array([300]), "outside 0..255")):
        with pytest.raises(MaskError, match=reason):
            as_labels(bad)


def _loader_canonical(stored, transpose, flip_rows, flip_cols):
    """data.dicom_series.FrameLoader.load's orientation steps, applied to any (R, C, ...) array."""
    out = stored.transpose(1, 0, *range(2, stored.ndim)) if transpose else stored
    if flip_rows:
        out = out[::-1]
    if flip_cols:
        out = out[:, ::-1]
    return out


@pytest.mark.parametrize("transpose, flip_rows, flip_cols", list(itertools.product([False, True], repeat=3)))
def test_dicom_grid_is_the_loaders_orientation(transpose, flip_rows, flip_cols):
    rows, cols, d_row, d_col = 5, 7, 0.6, 0.9
    # The orientation for which data.dicom_series chooses these steps (its _order_and_split).
    x, y = (-1.0 if flip_cols else 1.0), (-1.0 if flip_rows else 1.0)
    iop = np.array([0, y, 0, x, 0, 0]) if transpose else np.array([x, 0, 0, 0, y, 0])
    positions = np.array([[10.0, -4.0, z] for z in (-30.0, -27.5, -25.0)])
    grid = dicom_grid(iop, (d_row, d_col), positions, (rows, cols), transpose, flip_rows, flip_cols)
    i, j = np.mgrid[:rows, :cols]
    for k, ipp in enumerate(positions):
        world = ipp + i[..., None] * d_row * iop[3:] + j[..., None] * d_col * iop[:3]     # (R, C, 3)
        expected = _loader_canonical(world, transpose, flip_rows, flip_cols)
        r, c = np.mgrid[:grid.shape[0], :grid.shape[1]]
        got = grid.origins[k] + r[..., None] * grid.row_step + c[..., None] * grid.col_step
        np.testing.assert_allclose(got, expected, atol=1e-9)
        # The display convention: columns towards patient left (+x), rows towards posterior (+y).
        assert grid.col_step[0] > 0 and grid.row_step[1] > 0


def _frame(labels, position, iop, spacing=(1.0, 1.0)):
    return MaskFrame(labels.astype(np.uint8), np.asarray(position, float), np.asarray(iop, float), spacing)


def test_seg_frames_land_on_their_slices_in_any_orientation():
    grid = nifti_grid(np.diag([1.0, 1.0, 2.0, 1.0]), 4, (3, 5))      # slices at z 0, 2, 4, 6; x 0..4, y 0..2
    truth = np.zeros((4, 3, 5), np.uint8)
    truth[1, 0, 4] = 1
    truth[2, 1:, :2] = 2
    truth[3] = 3
    frames = []
    for k in (3, 1, 2):                                               # any frame order; slice 0 has none
        frames.append(_frame(truth[k][::-1, ::-1], (4.0, 2.0, 2.0 * k), (-1, 0, 0, 0, -1, 0)))   # flipped
    np.testing.assert_array_equal(place_frames(frames, grid, 0.1), truth)
    transposed = [_frame(truth[k].T, (0.0, 0.0, 2.0 * k), (0, 1, 0, 1, 0, 0)) for k in range(4)]
    np.testing.assert_array_equal(place_frames(transposed, grid, 0.1), truth)
    with pytest.raises(MaskError, match="from the nearest image slice"):
        place_frames([_frame(truth[1], (0.0, 0.0, 3.0), (1, 0, 0, 0, 1, 0))], grid, 0.1)
    with pytest.raises(MaskError, match="not parallel"):
        place_frames([_frame(truth[1], (0.0, 0.0, 2.0), (1, 0, 0, 0, 0, 1))], grid, 0.1)
    with pytest.raises(MaskError, match="another extent"):
        place_frames([_frame(np.ones((3, 4)), (0.0, 0.0, 2.0), (1, 0, 0, 0, 1, 0))], grid, 0.1)
