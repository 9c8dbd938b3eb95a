"""Segmentation measures against MONAI (a second implementation: exact KD-tree distances, not a distance
transform) and hand computations, including empty masks, where the conventions differ exactly as
eval/measures/segmentation.py documents."""

from __future__ import annotations

import math
import warnings

import monai.metrics as monai_metrics   # the test extra installs it
import numpy as np
import pytest
import torch
from scipy import ndimage

from ctssl.eval.measures.segmentation import (boundary, bootstrap_mean_ci, case_metrics, case_table, dice,
                                              hausdorff_distance, normalised_surface_dice, pooled_dice,
                                              slice_counts, slice_pooled_dice, slice_pooled_dice_ci,
                                              summarise_table, surface_distances, worst_distance)
from ctssl.eval.measures.classification import bootstrap_ci

SPACING = (2.5, 0.7, 0.9)   # anisotropic (z, y, x) mm: slice spacing, row and column pixel spacing


def _onehot(labels, num_classes: int) -> torch.Tensor:
    """(Z, H, W) labels -> MONAI's (1, C, Z, H, W) float one-hot."""
    t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return torch.nn.functional.one_hot(t, num_classes).movedim(-1, 0)[None].float()


def _monai(reference, prediction, num_classes: int, spacing, tolerance: float, ignore_empty: bool = True) -> dict:
    """MONAI's per-class Dice, HD95 and NSD (foreground classes) of one case."""
    y, y_pred = _onehot(reference, num_classes), _onehot(prediction, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # MONAI warns about empty masks
        return {
            "dice": monai_metrics.compute_dice(y_pred, y, include_background=False, ignore_empty=ignore_empty)[0].numpy(),
            "hd95_mm": monai_metrics.compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95,
                                                                spacing=list(spacing))[0].numpy(),
            "nsd": monai_metrics.compute_surface_dice(y_pred, y, [tolerance] * (num_classes - 1),
                                                      include_background=False, spacing=list(spacing),
                                                      use_subvoxels=False)[0].numpy(),
        }


def _blobs(rng, shape, num_classes: int) -> np.ndarray:
    """Smooth random structures: each foreground class a thresholded blurred noise field."""
    labels = np.zeros(shape, dtype=np.int64)
    for c in range(1, num_classes):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1.0, 2.5, 2.5))
        labels[field > np.quantile(field, 0.85)] = c
    return labels


def _perturbed(rng, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A prediction: the reference shifted by a voxel or two, with some voxels relabelled at random."""
    pred = np.roll(labels, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
    noise = rng.random(labels.shape) < 0.01
    pred[noise] = rng.integers(0, num_classes, int(noise.sum()))
    return pred


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_equal_monai(seed):
    rng = np.random.default_rng(seed)
    num_classes = 3
    reference = _blobs(rng, (7, 40, 36), num_classes)
    prediction = _perturbed(rng, reference, num_classes)
    ours = case_metrics(reference, prediction, num_classes, SPACING, tolerance_mm=1.5)
    theirs = _monai(reference, prediction, num_classes, SPACING, tolerance=1.5)
    assert (ours["reference_voxels"] > 0).all() and (ours["prediction_voxels"] > 0).all()
    np.testing.assert_allclose(ours["dice"], theirs["dice"], rtol=1e-6)
    np.testing.assert_allclose(ours["hd95_mm"], theirs["hd95_mm"], rtol=1e-5)   # MONAI returns float32
    np.testing.assert_allclose(ours["nsd"], theirs["nsd"], rtol=1e-6)
    assert 0 < ours["mean_nsd"] < 1 and ours["mean_hd95_mm"] > 0
    assert ours["mean_dice"] == pytest.approx(np.mean(theirs["dice"]), rel=1e-6)


def test_random_2d_masks_equal_monai_and_spacing_matters():
    rng = np.random.default_rng(11)
    reference = ndimage.gaussian_filter(rng.standard_normal((48, 48)), 3) > 0.05
    prediction = ndimage.gaussian_filter(rng.standard_normal((48, 48)), 3) > 0.05
    y, y_pred = (torch.stack([~torch.as_tensor(m), torch.as_tensor(m)])[None].float() for m in (reference, prediction))
    for spacing in [(1.0, 1.0), (0.6, 1.7)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = monai_metrics.compute_hausdorff_distance(y_pred, y, percentile=95, spacing=list(spacing)).item()
            hd100 = monai_metrics.compute_hausdorff_distance(y_pred, y, spacing=list(spacing)).item()
            nsd = monai_metrics.compute_surface_dice(y_pred, y, [2.0], spacing=list(spacing)).item()
        assert hausdorff_distance(reference, prediction, spacing) == pytest.approx(hd, rel=1e-5)
        assert hausdorff_distance(reference, prediction, spacing, percentile=100) == pytest.approx(hd100, rel=1e-5)
        assert normalised_surface_dice(reference, prediction, spacing, 2.0) == pytest.approx(nsd, rel=1e-6)
    assert hausdorff_distance(reference, prediction, (0.6, 1.7)) != pytest.approx(
        hausdorff_distance(reference, prediction, (1.0, 1.0)), rel=1e-3)


def test_single_voxels_give_the_anisotropic_euclidean_distance():
    reference, prediction = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    reference[1, 1, 1] = prediction[3, 2, 4] = True          # 2 slices, 1 row, 3 columns apart
    distance = math.sqrt((2 * 2.5) ** 2 + (1 * 0.7) ** 2 + (3 * 0.9) ** 2)
    assert hausdorff_distance(reference, prediction, SPACING) == pytest.approx(distance)
    assert normalised_surface_dice(reference, prediction, SPACING, distance + 1e-9) == 1.0
    assert normalised_surface_dice(reference, prediction, SPACING, distance - 1e-6) == 0.0
    assert dice(reference, prediction) == 0.0


def test_cube_against_a_shifted_cube_by_hand():
    """A 4-voxel cube and the same cube shifted 2 voxels along x, at spacing (z, y, x) = (2, 2, 0.5) mm.

    Boundary voxels of the shifted cube P, by x layer (x = 2..5; the reference R spans x = 0..3): layer
    x=2, a full face of 16: its 12 ring voxels are on R's boundary (0), its 4 centre voxels are inside R,
    0.5 mm (one x step) from R's face x=3; layer x=3, a ring of 12 on R's face (0); layer x=4, a ring of
    12, 0.5 mm from R's face; layer x=5, a full face of 16, 1.0 mm from it. So 56 distances: 24 x 0,
    16 x 0.5, 16 x 1.0 (and the mirror image from R to P): HD = HD95 = 1.0 mm; NSD at 0.5 mm = (40 + 40)
    / (56 + 56); Dice = 2 * 32 / 128. One far voxel added to P moves the HD, not the HD95.
    """
    spacing = (2.0, 2.0, 0.5)
    reference, prediction = np.zeros((6, 6, 12), bool), np.zeros((6, 6, 12), bool)
    reference[1:5, 1:5, 0:4] = True
    prediction[1:5, 1:5, 2:6] = True
    to_ref, to_pred = surface_distances(reference, prediction, spacing)
    assert sorted(to_ref) == sorted(to_pred) == [0.0] * 24 + [0.5] * 16 + [1.0] * 16
    assert hausdorff_distance(reference, prediction, spacing) == 1.0
    assert hausdorff_distance(reference, prediction, spacing, percentile=100) == 1.0
    assert normalised_surface_dice(reference, prediction, spacing, 0.5) == pytest.approx(80 / 112)
    assert normalised_surface_dice(reference, prediction, spacing, 0.49) == pytest.approx(48 / 112)
    assert dice(reference, prediction) == pytest.approx(0.5)
    prediction[1, 1, 11] = True            # 8 x steps (4 mm) from R's nearest boundary voxel (1, 1, 3)
    assert hausdorff_distance(reference, prediction, spacing, percentile=100) == pytest.approx(4.0)
    assert hausdorff_distance(reference, prediction, spacing) == 1.0       # 1 of 57 distances: above P95
    theirs = _monai(reference.astype(int), prediction.astype(int), 2, spacing, tolerance=0.5)
    assert theirs["hd95_mm"][0] == pytest.approx(1.0) and theirs["nsd"][0] == pytest.approx(
        normalised_surface_dice(reference, prediction, spacing, 0.5))


def test_boundary_counts_the_volume_edge_as_background():
    mask = np.ones((3, 4, 4), bool)           # fills the array: every voxel touches the outside but the core
    assert boundary(mask).sum() == mask.size - (1 * 2 * 2)
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    assert boundary(mask).sum() == 26 and not boundary(mask)[2, 2, 2]


EMPTY = np.zeros((4, 8, 8), np.int64)
FULL = EMPTY.copy()
FULL[1:3, 2:6, 2:5] = 1


@pytest.mark.parametrize("reference, prediction, expected", [
    (EMPTY, EMPTY, {"dice": math.nan, "hd95_mm": math.nan, "nsd": math.nan}),
    (EMPTY, FULL, {"dice": 0.0, "hd95_mm": "worst", "nsd": 0.0}),
    (FULL, EMPTY, {"dice": 0.0, "hd95_mm": "worst", "nsd": 0.0}),
], ids=["both-empty", "reference-empty", "prediction-empty"])
def test_empty_masks_follow_the_documented_conventions_and_differ_from_monai_only_there(reference, prediction,
                                                                                     expected):
    spacing = (3.0, 0.8, 0.8)
    worst = math.sqrt((4 * 3.0) ** 2 + (8 * 0.8) ** 2 + (8 * 0.8) ** 2)
    assert worst_distance(EMPTY.shape, spacing) == pytest.approx(worst)
    ours = case_metrics(reference, prediction, 2, spacing, tolerance_mm=1.0)
    for key, value in expected.items():
        value = worst if value == "worst" else value
        assert ours[key][0] == pytest.approx(value, nan_ok=True), key
    monai_default = _monai(reference, prediction, 2, spacing, tolerance=1.0)                      # ignore_empty=True
    monai_scored = _monai(reference, prediction, 2, spacing, tolerance=1.0, ignore_empty=False)
    reference_empty, prediction_empty = not reference.any(), not prediction.any()
    # NSD: the same convention as MONAI (NaN when both are empty, 0 when one is).
    assert ours["nsd"][0] == pytest.approx(monai_default["nsd"][0], nan_ok=True)
    # Dice: MONAI's ignore_empty=True gives NaN whenever the reference is empty, ignore_empty=False gives 1
    # when both are; ours is NaN for both empty and 0 for a prediction on an empty reference.
    if reference_empty and prediction_empty:
        assert math.isnan(monai_default["dice"][0]) and monai_scored["dice"][0] == 1.0
    elif reference_empty:
        assert math.isnan(monai_default["dice"][0]) and monai_scored["dice"][0] == ours["dice"][0] == 0.0
    else:
        assert monai_default["dice"][0] == monai_scored["dice"][0] == ours["dice"][0] == 0.0
    # HD95: MONAI gives no finite number when one mask is empty; ours the case's diagonal.
    if reference_empty != prediction_empty:
        assert not np.isfinite(monai_default["hd95_mm"][0])
    else:
        assert math.isnan(monai_default["hd95_mm"][0])
    assert math.isnan(ours["mean_dice"]) == (reference_empty and prediction_empty)


def test_mean_over_foreground_classes_leaves_out_undefined_classes():
    reference = np.zeros((2, 6, 6), np.int64)
    reference[0, 1:3, 1:3] = 1                   # class 1 present, class 2 absent from both, class 3 missed
    reference[1, 3:5, 3:5] = 3
    prediction = reference.copy()
    prediction[1] = 0
    m = case_metrics(reference, prediction, 4, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    np.testing.assert_array_equal(m["dice"], [1.0, np.nan, 0.0])
    assert m["mean_dice"] == 0.5
    np.testing.assert_array_equal(m["reference_voxels"], [4, 0, 4])
    np.testing.assert_array_equal(m["prediction_voxels"], [4, 0, 0])
    assert m["hd95_mm"][0] == 0.0 and m["hd95_mm"][2] == pytest.approx(worst_distance((2, 6, 6), (1, 1, 1)))
    nothing = case_metrics(np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), 3, (1, 1, 1), 1.0)
    assert math.isnan(nothing["mean_dice"]) and math.isnan(nothing["mean_nsd"])


def test_slice_pooled_dice_by_hand_and_unlike_the_per_case_mean():
    """Two cases: a large structure segmented well, a small one missed. Pooled over slices, the large one
    dominates; per case, both count once."""
    large_ref, large_pred = np.zeros((2, 10, 10), int), np.zeros((2, 10, 10), int)
    large_ref[:, 0:8, 0:8] = 1                     # 2 x 64 voxels
    large_pred[:, 0:8, 0:7] = 1                    # 2 x 56, all inside
    small_ref, small_pred = np.zeros((2, 10, 10), int), np.zeros((2, 10, 10), int)
    small_ref[0, 4:6, 4:6] = 1                     # 4 voxels, prediction empty
    per_case = [case_metrics(r, p, 2, (1, 1, 1), 1.0)["mean_dice"]
                for r, p in ((large_ref, large_pred), (small_ref, small_pred))]
    assert per_case == [pytest.approx(2 * 112 / 240), 0.0]
    slices_ref, slices_pred = np.concatenate([large_ref, small_ref]), np.concatenate([large_pred, small_pred])
    pooled = slice_pooled_dice(slices_ref, slices_pred, 2)
    assert pooled[0] == pytest.approx(2 * 112 / (128 + 4 + 112))
    assert pooled[0] > 0.9 > np.mean(per_case)
    order = np.random.default_rng(0).permutation(4)
    assert slice_pooled_dice(slices_ref[order], slices_pred[order], 2)[0] == pytest.approx(pooled[0])
    intersections, sizes = slice_counts(slices_ref, slices_pred, 2)
    np.testing.assert_array_equal(intersections[:, 0], [56, 56, 0, 0])
    np.testing.assert_array_equal(sizes[:, 0], [120, 120, 4, 0])
    assert np.isnan(slice_pooled_dice(np.zeros((3, 4, 4), int), np.zeros((3, 4, 4), int), 3)).all()
    # Two patients: a bootstrap has three distinct resamples ({a, a}, {a, b}, {b, b}) and its "interval" would be
    # 0 .. 0.93; the rule gives the value alone and says why.
    ci = slice_pooled_dice_ci(intersections, sizes, ["a", "a", "b", "b"], n=200)
    assert ci["value"] == pytest.approx(pooled[0]) and np.isnan(ci["lower"]) and np.isnan(ci["upper"])
    assert ci["evidence"]["reason"].startswith("too few test patients to compare (n = 2;")
    assert ci["evidence"]["distinct_resamples"] == 3


def test_case_table_and_patient_bootstrap():
    rng = np.random.default_rng(3)
    cases = []
    for i in range(6):
        reference = _blobs(rng, (4, 24, 24), 3)
        cases.append((f"case{i}", reference, _perturbed(rng, reference, 3), (2.0, 0.8, 0.8)))
    cases.append(("empty", np.zeros((4, 24, 24), int), np.zeros((4, 24, 24), int), (2.0, 0.8, 0.8)))
    rows = case_table(cases, 3, tolerance_mm=2.0, class_names=["liver", "tumour"])
    assert [r["case"] for r in rows] == [c[0] for c in cases]
    assert set(rows[0]) == {"case", "mean_dice", "mean_hd95_mm", "mean_nsd",
                            *(f"{m}_{n}" for m in ("dice", "hd95_mm", "nsd", "reference_voxels", "prediction_voxels")
                              for n in ("liver", "tumour"))}
    direct = case_metrics(cases[2][1], cases[2][2], 3, (2.0, 0.8, 0.8), 2.0)
    assert rows[2]["dice_tumour"] == direct["dice"][1] and rows[2]["hd95_mm_liver"] == direct["hd95_mm"][0]
    few = summarise_table(rows, ["p0", "p0", "p1", "p2", "p2", "p3", "p3"], n=300)   # 4 patients: no interval
    assert np.isnan(few["mean_dice"]["lower"]) and few["mean_dice"]["evidence"]["patients"] == 4
    patients = ["p0", "p1", "p2", "p3", "p4", "p5", "p5"]           # the empty case (undefined) shares p5
    summary = summarise_table(rows, patients, n=300)
    evidence = summary["mean_dice"]["evidence"]
    assert evidence["enough"] and evidence["distinct_resamples"] == 462 and not evidence["coarse_interval"]  # 462 > 300
    assert summary["mean_dice"]["n"] == 6 and summary["mean_dice"]["n_undefined"] == 1
    values = np.array([r["mean_dice"] for r in rows[:6]])
    assert summary["mean_dice"]["value"] == pytest.approx(values.mean())
    expected = bootstrap_ci(lambda v, _: float(np.mean(v)), values, values, n=300, groups=patients[:6], seed=0)
    assert (summary["mean_dice"]["lower"], summary["mean_dice"]["upper"]) == pytest.approx(expected[1:])
    with pytest.raises(ValueError, match="2 foreground classes"):
        case_table(cases, 3, 2.0, class_names=["background", "liver", "tumour"])


def test_patient_bootstrap_is_wider_than_treating_a_patients_cases_as_independent():
    rng = np.random.default_rng(5)
    per_patient = rng.uniform(0.5, 0.95, 8)
    values = np.repeat(per_patient, 10)            # 10 near-identical cases (e.g. series) per patient
    patients = np.repeat(np.arange(8), 10)
    by_patient = bootstrap_mean_ci(values, patients, n=500)
    by_case = bootstrap_mean_ci(values, None, n=500)
    assert by_patient["value"] == by_case["value"] == pytest.approx(values.mean())
    assert by_patient["upper"] - by_patient["lower"] > 2 * (by_case["upper"] - by_case["lower"])
    undefined = bootstrap_mean_ci([np.nan, np.nan])
    assert undefined["n"] == 0 and undefined["n_undefined"] == 2 and math.isnan(undefined["value"])


@pytest.mark.parametrize("call, message", [
    (lambda: dice(np.zeros((3, 3)), np.zeros((3, 4))), "same shape"),
    (lambda: dice(np.full((2, 2), 2), np.zeros((2, 2), int)), "0/1 integer"),
    (lambda: hausdorff_distance(np.ones((2, 2, 2), bool), np.ones((2, 2, 2), bool), (1.0, 1.0)), "3 positive"),
    (lambda: hausdorff_distance(np.ones((2, 2), bool), np.ones((2, 2), bool), (1.0, -1.0)), "positive finite"),
    (lambda: hausdorff_distance(np.ones((2, 2), bool), np.ones((2, 2), bool), (1, 1), percentile=101), "percentile"),
    (lambda: normalised_surface_dice(np.ones((2, 2), bool), np.ones((2, 2), bool), (1, 1), -1.0), "tolerance_mm"),
    (lambda: case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), 2, (1, 1, 1), 1.0), r"\(1, H, W\) case"),
    (lambda: case_metrics(np.full((1, 2, 2), 3), np.zeros((1, 2, 2), int), 3, (1, 1, 1), 1.0), "0..2"),
    (lambda: case_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 3, (1, 1, 1), 1.0), "integer labels"),
    (lambda: case_metrics(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int), 1, (1, 1, 1), 1.0), ">= 2"),
    (lambda: surface_distances(np.zeros((2, 2), bool), np.ones((2, 2), bool), (1, 1)), "non-empty"),
    (lambda: pooled_dice(np.zeros((2, 1)), np.zeros((3, 1))), "one shape"),
    (lambda: bootstrap_mean_ci([0.5, 0.6], ["a"]), "one id per value"),
])
def test_bad_inputs_say_what_was_received(call, message):
    with pytest.raises(ValueError, match=message):
        call()
