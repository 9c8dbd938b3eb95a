"""Segmentation measures: per-case Dice, HD95 and normalised surface Dice in millimetres, and the RadNet-12M
study's slice-pooled Dice, as pure numpy functions (label arrays in, numbers out).

A *case* is one series: its 2-D slices stacked in order into a (Z, H, W) integer label volume (0 =
background, 1..C-1 the foreground classes), with ``spacing = (slice spacing, row spacing, column spacing)``
in millimetres (z from the distance between slice positions, not the slice thickness; y and x from Pixel
Spacing). Prediction and reference must be on the same grid.

Conventions (metric implementations disagree exactly here: Podobnik & Vrtovec, arXiv 2410.02630, found
HD differences over 100 mm between 11 open-source tools; Maier-Hein et al., "Metrics reloaded", Nat.
Methods 2024, and Reinke et al., "Understanding metric-related pitfalls", Nat. Methods 2024, ask that the
handling of empty masks be stated and such cases be reported, not silently folded into a mean):

================================  =========  ==============================  ===========
reference / prediction            Dice       HD95 (mm)                        NSD
================================  =========  ==============================  ===========
both non-empty                    formula    formula                          formula
reference empty, prediction not   0          worst case: the case's diagonal  0
reference not, prediction empty   0          worst case: the case's diagonal  0
both empty                        NaN        NaN                              NaN
================================  =========  ==============================  ===========

- Dice = 2|R ∩ P| / (|R| + |P|). Both empty is 0/0: undefined, NaN, left out of the mean over
  foreground classes and counted (nnU-Net's evaluation does the same: Isensee et al., Nat. Methods
  2021, ``evaluate_predictions``). Scoring it 1 (MetricsReloaded's ``dsc``, MONAI's
  ``ignore_empty=False``) rewards a class for being absent from a case and lifts means of rare
  classes; MONAI's default ``ignore_empty=True`` returns NaN whenever the reference is empty, which
  hides false-positive predictions (this module scores those 0).
- Surfaces are boundary voxels: voxels of the mask with a face neighbour (6-connectivity in 3-D) outside
  it, the outside of the volume counting as background (``mask & ~binary_erosion(mask)``, as MONAI's
  ``get_mask_edges`` without subvoxels and MetricsReloaded's ``border_map``). Distances are Euclidean
  between voxel centres, in mm, from scipy's exact anisotropic distance transform
  (``distance_transform_edt(sampling=spacing)``).
- HD95 is the larger of the two directed 95th percentiles, max(P95 d(∂P → ∂R), P95 d(∂R → ∂P)), with
  numpy's linear interpolation: the definition of MONAI's ``compute_hausdorff_distance(percentile=95)``
  and DeepMind's ``surface-distance`` (which weights by surfel area instead of counting voxels). MedPy's
  ``hd95`` takes one percentile of both directions pooled, Plastimatch the mean of the two: not the same
  number. One mask empty: the distance is undefined; this module returns the worst possible value, the
  diagonal of the case's volume in mm (sqrt((Z sz)² + (H sy)² + (W sx)²)), so a missed or hallucinated
  structure weighs as the worst prediction rather than vanishing (NaN) or making every mean infinite
  (MONAI returns inf or NaN). BraTS's 373.13 mm for such cases is this diagonal for its 240 x 240 x 155
  mm volumes.
- NSD (normalised surface Dice; Nikolov et al., "Clinically applicable segmentation of head and neck
  anatomy for radiotherapy", JMIR 2021) at a tolerance τ in mm: (|{b ∈ ∂P: d(b, ∂R) ≤ τ}| +
  |{b ∈ ∂R: d(b, ∂P) ≤ τ}|) / (|∂P| + |∂R|), counting boundary voxels (MONAI's ``compute_surface_dice``
  with ``use_subvoxels=False``; DeepMind's original weights surfels by area).
- The mean over foreground classes is the mean of the classes whose value is defined (not NaN); NaN when
  none is.

The RadNet-12M study's Dice is different: pooled over 2-D slices (``slice_pooled_dice``), so large
structures and slices with much foreground dominate and no volume enters as a unit. It is reported only
labelled as such, never as per-case Dice.

Every call computes on the bounding box of the two masks' union (plus one voxel): exact, since every
boundary voxel lies inside it, and fast on CT volumes where a structure fills a small part.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage

from ctssl.eval.measures.classification import bootstrap_ci
from ctssl.eval.measures.evidence import assess

HD_PERCENTILE = 95.0


# --- validation ------------------------------------------------------------------------------------------

def _masks(reference, prediction) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = np.asarray(reference), np.asarray(prediction)
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction must have the same shape, got {ref.shape} and {pred.shape}.")
    if ref.ndim not in (2, 3):
        raise ValueError(f"masks must be 2-D (H, W) or 3-D (Z, H, W), got {ref.ndim} dimensions {ref.shape}.")
    for name, a in (("reference", ref), ("prediction", pred)):
        if a.dtype == bool:
            continue
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be a boolean (or 0/1 integer) mask, got dtype {a.dtype}.")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"{name} must be a boolean (or 0/1 integer) mask, got values {a.min()}..{a.max()}; "
                             "pass (labels == c) for class c.")
    return ref.astype(bool, copy=False), pred.astype(bool, copy=False)


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive finite millimetre values (one per axis, "
                         f"{'(z, y, x)' if ndim == 3 else '(y, x)'}), got {spacing!r}.")
    return values


def _labels(reference, prediction, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = np.asarray(reference), np.asarray(prediction)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background and at least one class), got {num_classes!r}.")
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction must have the same shape, got {ref.shape} and {pred.shape}.")
    for name, a in (("reference", ref), ("prediction", pred)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{name} must hold integer labels 0..{num_classes - 1}, got dtype {a.dtype}.")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} labels must be in 0..{num_classes - 1} (num_classes={num_classes}), "
                             f"got values {a.min()}..{a.max()}.")
    return ref, pred


def _case(reference, prediction, num_classes: int, spacing) -> tuple[np.ndarray, np.ndarray, tuple]:
    ref, pred = _labels(reference, prediction, num_classes)
    if ref.ndim != 3:
        raise ValueError(f"a case is a (Z, H, W) volume of stacked slices, got shape {ref.shape}; "
                         "a single slice is a (1, H, W) case.")
    return ref, pred, _spacing(spacing, 3)


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


# --- binary masks ----------------------------------------------------------------------------------------

def dice(reference, prediction) -> float:
    """Dice 2|R ∩ P| / (|R| + |P|) of two boolean masks of one shape; NaN when both are empty (0/0), 0 when
    only one is (module docstring)."""
    ref, pred = _masks(reference, prediction)
    size = int(ref.sum()) + int(pred.sum())
    return 2.0 * int(np.logical_and(ref, pred).sum()) / size if size else float("nan")


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: those with a face neighbour outside the mask, the outside of the
    array counting as background (``mask & ~binary_erosion(mask)``, face connectivity)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union and padded with one background voxel on every
    side: the same boundaries (the voxels just outside the box are background, or outside the array, which
    counts as background) and the same distances (every boundary voxel is inside the box)."""
    box = ndimage.find_objects((ref | pred).astype(np.uint8))[0]
    return np.pad(ref[box], 1), np.pad(pred[box], 1)


def surface_distances(reference, prediction, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty boolean masks.

    Returns ``(prediction_to_reference, reference_to_prediction)``: for each boundary voxel of the
    prediction, the Euclidean distance (``spacing`` per axis, mm) to the nearest boundary voxel of the
    reference, and the other way round; 1-D arrays of length |∂P| and |∂R|.
    """
    ref, pred = _masks(reference, prediction)
    sampling = _spacing(spacing, ref.ndim)
    if not ref.any() or not pred.any():
        raise ValueError(f"surface distances need two non-empty masks, got {int(ref.sum())} reference and "
                         f"{int(pred.sum())} prediction voxels; hausdorff_distance and normalised_surface_dice "
                         "handle empty masks by the module's conventions.")
    ref, pred = _crop_to_union(ref, pred)
    edge_ref, edge_pred = boundary(ref), boundary(pred)
    to_ref = ndimage.distance_transform_edt(~edge_ref, sampling=sampling)[edge_pred]
    to_pred = ndimage.distance_transform_edt(~edge_pred, sampling=sampling)[edge_ref]
    return to_ref, to_pred


def worst_distance(shape: Sequence[int], spacing) -> float:
    """The diagonal of a volume of ``shape`` voxels at ``spacing`` mm: more than any distance between two of
    its voxels; the HD of a case where exactly one of reference and prediction is empty."""
    sampling = _spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sampling))))


def hausdorff_distance(reference, prediction, spacing, percentile: float = HD_PERCENTILE) -> float:
    """Percentile Hausdorff distance in mm between two boolean masks (2-D or 3-D, ``spacing`` one value per
    axis): max of the two directed ``percentile``-th percentiles of boundary-voxel distances (numpy's linear
    interpolation); ``percentile=100`` is the Hausdorff distance. Both masks empty: NaN; exactly one empty:
    ``worst_distance`` of the array (module docstring)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}.")
    ref, pred = _masks(reference, prediction)
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        _spacing(spacing, ref.ndim)
        return float("nan")
    if has_ref != has_pred:
        return worst_distance(ref.shape, spacing)
    to_ref, to_pred = surface_distances(ref, pred, spacing)
    return float(max(np.percentile(to_ref, percentile), np.percentile(to_pred, percentile)))


def normalised_surface_dice(reference, prediction, spacing, tolerance_mm: float) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) at ``tolerance_mm``: the fraction of both masks'
    boundary voxels within ``tolerance_mm`` of the other mask's boundary. Both empty: NaN; exactly one
    empty: 0 (module docstring)."""
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite distance >= 0 in mm, got {tolerance_mm!r}.")
    ref, pred = _masks(reference, prediction)
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        _spacing(spacing, ref.ndim)
        return float("nan")
    if has_ref != has_pred:
        _spacing(spacing, ref.ndim)
        return 0.0
    to_ref, to_pred = surface_distances(ref, pred, spacing)
    return float((np.sum(to_ref <= tolerance_mm) + np.sum(to_pred <= tolerance_mm)) / (len(to_ref) + len(to_pred)))


# --- cases (one series: slices stacked in order) ---------------------------------------------------------

def case_metrics(reference, prediction, num_classes: int, spacing, tolerance_mm: float) -> dict:
    """Per-class and mean measures of one case.

    ``reference``, ``prediction``: (Z, H, W) integer labels in 0..num_classes-1, the slices of one series
    stacked in order; ``spacing``: (slice spacing, row spacing, column spacing) in mm; ``tolerance_mm``:
    the NSD tolerance. Returns per foreground class (arrays of length num_classes - 1, entry k for class
    k + 1): ``dice``, ``hd95_mm``, ``nsd``, ``reference_voxels``, ``prediction_voxels``; and their means
    over the classes where defined: ``mean_dice``, ``mean_hd95_mm``, ``mean_nsd`` (NaN when no class is).
    Empty masks follow the module's conventions.
    """
    ref, pred, sampling = _case(reference, prediction, num_classes, spacing)
    foreground = range(1, num_classes)
    out = {key: np.full(num_classes - 1, np.nan) for key in ("dice", "hd95_mm", "nsd")}
    out["reference_voxels"] = np.zeros(num_classes - 1, dtype=np.int64)
    out["prediction_voxels"] = np.zeros(num_classes - 1, dtype=np.int64)
    for k, c in enumerate(foreground):
        r, p = ref == c, pred == c
        out["reference_voxels"][k], out["prediction_voxels"][k] = int(r.sum()), int(p.sum())
        out["dice"][k] = dice(r, p)
        out["hd95_mm"][k] = hausdorff_distance(r, p, sampling, HD_PERCENTILE)
        out["nsd"][k] = normalised_surface_dice(r, p, sampling, tolerance_mm)
    for key in ("dice", "hd95_mm", "nsd"):
        out[f"mean_{key}"] = _nanmean(out[key])
    return out


def case_table(cases: Iterable[tuple], num_classes: int, tolerance_mm: float,
               class_names: Sequence[str] | None = None) -> list[dict]:
    """One flat row per case from ``(case_id, reference, prediction, spacing)`` tuples (``case_metrics``).

    Columns: ``case``, ``mean_dice``, ``mean_hd95_mm``, ``mean_nsd``, then per foreground class NAME (from
    ``class_names``, one per foreground class, default "1", "2", ...): ``dice_NAME``, ``hd95_mm_NAME``,
    ``nsd_NAME``, ``reference_voxels_NAME``, ``prediction_voxels_NAME``. Undefined values stay NaN (a
    record writer turns them into nulls); the voxel counts say which masks were empty.
    """
    names = [str(c) for c in range(1, num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes - 1:
        raise ValueError(f"class_names must name the {num_classes - 1} foreground classes 1..{num_classes - 1} "
                         f"(not the background), got {len(names)}: {list(names)}.")
    rows = []
    for case in cases:
        if len(case) != 4:
            raise ValueError(f"each case must be (case_id, reference, prediction, spacing), got {len(case)} items.")
        case_id, reference, prediction, spacing = case
        m = case_metrics(reference, prediction, num_classes, spacing, tolerance_mm)
        row = {"case": case_id, "mean_dice": m["mean_dice"], "mean_hd95_mm": m["mean_hd95_mm"],
               "mean_nsd": m["mean_nsd"]}
        for k, name in enumerate(names):
            row.update({f"dice_{name}": float(m["dice"][k]), f"hd95_mm_{name}": float(m["hd95_mm"][k]),
                        f"nsd_{name}": float(m["nsd"][k]),
                        f"reference_voxels_{name}": int(m["reference_voxels"][k]),
                        f"prediction_voxels_{name}": int(m["prediction_voxels"][k])})
        rows.append(row)
    return rows


# --- uncertainty -----------------------------------------------------------------------------------------

def bootstrap_mean_ci(values, patients=None, n: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean of per-case ``values`` with a percentile-bootstrap CI, resampling ``patients`` (one id per
    value; a patient's cases stay together) or cases when None (``eval.measures.classification.bootstrap_ci``),
    where the number of patients admits an interval (``eval.measures.evidence``; else ``lower``/``upper`` NaN).

    Undefined values (NaN) are left out first and counted. Returns ``{"value", "lower", "upper", "n",
    "n_undefined", "evidence"}``; all NaN when no value is defined.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if patients is not None:
        patients = np.asarray(patients).ravel()
        if len(patients) != len(values):
            raise ValueError(f"patients must give one id per value, got {len(patients)} ids for {len(values)} values.")
    defined = ~np.isnan(values)
    out = {"n": int(defined.sum()), "n_undefined": int((~defined).sum())}
    groups = np.arange(int(defined.sum())) if patients is None else patients[defined]
    evidence = assess(groups)
    out["evidence"] = evidence.to_dict(n)
    if not defined.any():
        return {"value": float("nan"), "lower": float("nan"), "upper": float("nan"), **out}
    if not evidence.enough:
        return {"value": float(np.mean(values[defined])), "lower": float("nan"), "upper": float("nan"), **out}
    value, lower, upper = bootstrap_ci(lambda v, _: float(np.mean(v)), values[defined], values[defined], n=n,
                                       alpha=alpha, groups=groups, seed=seed)
    return {"value": value, "lower": lower, "upper": upper, **out}


def summarise_table(rows: Sequence[dict], patients=None, n: int = 1000, alpha: float = 0.05,
                    seed: int = 0) -> dict:
    """``bootstrap_mean_ci`` of every measure column of a ``case_table`` (the ``mean_*``, ``dice_*``,
    ``hd95_mm_*`` and ``nsd_*`` columns): ``{column: {"value", "lower", "upper", "n", "n_undefined"}}``.
    ``patients``: one id per row (rows of one patient are resampled together)."""
    if not rows:
        raise ValueError("summarise_table needs at least one case row, got none.")
    columns = [c for c in rows[0] if c.startswith(("mean_", "dice_", "hd95_mm_", "nsd_"))]
    return {c: bootstrap_mean_ci([r[c] for r in rows], patients, n=n, alpha=alpha, seed=seed) for c in columns}


# --- the RadNet-12M study's slice-pooled Dice ------------------------------------------------------------

def slice_counts(reference, prediction, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per 2-D slice and foreground class: ``intersections`` |R_c ∩ P_c| and ``sizes`` |R_c| + |P_c|, two
    (N, num_classes - 1) integer arrays for (N, H, W) slices (or one (H, W) slice)."""
    ref, pred = _labels(reference, prediction, num_classes)
    if ref.ndim == 2:
        ref, pred = ref[None], pred[None]
    if ref.ndim != 3:
        raise ValueError(f"slices must be (N, H, W) or one (H, W) slice, got shape {ref.shape}.")
    intersections = np.zeros((len(ref), num_classes - 1), dtype=np.int64)
    sizes = np.zeros((len(ref), num_classes - 1), dtype=np.int64)
    for k, c in enumerate(range(1, num_classes)):
        r, p = ref == c, pred == c
        intersections[:, k] = np.logical_and(r, p).sum(axis=(1, 2))
        sizes[:, k] = r.sum(axis=(1, 2)) + p.sum(axis=(1, 2))
    return intersections, sizes


def pooled_dice(intersections: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per class 2 Σ|R ∩ P| / Σ(|R| + |P|) over the slices (rows) given by ``slice_counts``; NaN for a
    class absent from every reference and prediction slice. (num_classes - 1,) array."""
    intersections, sizes = np.asarray(intersections, np.float64), np.asarray(sizes, np.float64)
    if intersections.shape != sizes.shape or intersections.ndim != 2:
        raise ValueError(f"intersections and sizes must be two (slices, classes) arrays of one shape, got "
                         f"{intersections.shape} and {sizes.shape}.")
    total = sizes.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersections.sum(axis=0) / total, np.nan)


def slice_pooled_dice(reference, prediction, num_classes: int) -> np.ndarray:
    """The RadNet-12M study's Dice, **slice-pooled**: per foreground class, intersections and sizes summed
    over every 2-D slice of the test set, then one ratio (the study accumulated them over shuffled batches
    of slices; the sum does not depend on the order). ``reference``, ``prediction``: (N, H, W) labels of all
    test slices. (num_classes - 1,) array, NaN for a class present in no slice. Not a per-case Dice and not
    comparable with 3-D results: report it labelled as slice-pooled."""
    return pooled_dice(*slice_counts(reference, prediction, num_classes))


def slice_pooled_dice_ci(intersections: np.ndarray, sizes: np.ndarray, patients, n: int = 1000,
                         alpha: float = 0.05, seed: int = 0) -> dict:
    """Slice-pooled Dice, mean over foreground classes, with a percentile-bootstrap CI over ``patients``
    (one id per slice row of ``slice_counts``) where their number admits one (``eval.measures.evidence``):
    ``{"value", "lower", "upper", "evidence"}``."""
    intersections, sizes = np.asarray(intersections), np.asarray(sizes)
    patients = np.asarray(patients).ravel()
    if len(patients) != len(intersections):
        raise ValueError(f"patients must give one id per slice, got {len(patients)} ids for {len(intersections)} slices.")
    statistic: Callable = lambda i, s: _nanmean(pooled_dice(i, s))  # noqa: E731
    evidence = assess(patients)
    if not evidence.enough:
        return {"value": statistic(intersections, sizes), "lower": float("nan"), "upper": float("nan"),
                "evidence": evidence.to_dict(n)}
    value, lower, upper = bootstrap_ci(statistic, intersections, sizes, n=n, alpha=alpha, groups=patients, seed=seed)
    return {"value": value, "lower": lower, "upper": upper, "evidence": evidence.to_dict(n)}
