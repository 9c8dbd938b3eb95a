"""The synthetic studies (data.synth.study): the catalogue covers every archive quirk; labels agree with the
anatomy drawn, checked on the files as written."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest

from ctssl.data.synth import phantom
from ctssl.data.synth import make_plan
from ctssl.data.synth.study import CATALOGUE, render_series
from tests.helpers import read_dicom_folder


def _plans(cfg):
    return [make_plan(cfg, i) for i in range(cfg.patients)]


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _dicom_slices(folder: Path, uid: str):
    """z (3 decimals) -> HU image, for the axial slices of series ``uid`` in ``folder``."""
    out = {}
    for _, ds in read_dicom_folder(folder):
        if ds.get("SeriesInstanceUID") != uid or "LOCALIZER" in ds.ImageType:
            continue
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out[f"{float(ds.ImagePositionPatient[2]):.3f}"] = hu
    return out


def test_label_files_are_consistent(corpus):
    cfg, summary = corpus
    labels = Path(cfg.out) / "labels"
    slices = _rows(labels / "slices.csv")
    studies = _rows(labels / "studies.csv")
    series = _rows(labels / "series.csv")
    assert len(slices) == summary["axial_slices"]
    assert len(studies) == cfg.patients
    assert sum(int(r["n_slices"]) for r in series) == len(slices)
    assert {r["region"] for r in slices} == set(phantom.REGIONS)
    for study in studies:
        mine = [r for r in slices if r["case_id"] == study["case_id"]]
        assert study["regions"] == ";".join(r for r in phantom.REGIONS if r in {m["region"] for m in mine})
        assert int(study["lesion"]) == max(int(m["lesion"]) for m in mine)
    # Identifying values never appear in the label files (they carry only join keys).
    text = "".join(p.read_text() for p in labels.iterdir())
    for i in range(cfg.patients):
        ident = make_plan(cfg, i).identity
        assert ident.patient_id not in text and ident.patient_name not in text


def test_lesion_labels_match_lesion_voxels(corpus):
    """A slice labelled with a lesion shows it: HU inside its cross-section is the lesion's."""
    cfg, _ = corpus
    checked = 0
    for index in range(cfg.patients):
        plan = make_plan(cfg, index)
        if plan.format != "dicom" or not plan.anatomy.lesions:
            continue
        clean = copy.deepcopy(plan)
        clean.anatomy.lesions = []
        for s in plan.series:
            images = _dicom_slices(Path(cfg.out) / s.folder, s.uid)
            xs, ys = s.grid()
            for k in range(s.n_slices):
                labelled = plan.lesions_on_slice(s, k)
                for les in plan.anatomy.lesions:
                    r = les.cross_section_radius(s.u[k], plan.anatomy.z_scale)
                    if les.kind not in labelled or r < 2 * s.pixel_spacing:
                        continue
                    inner = ((xs[None, :] - les.x) ** 2 + (ys[:, None] - les.y) ** 2) <= (r - s.pixel_spacing) ** 2
                    if inner.sum() < 4:
                        continue
                    hu = images[f"{s.z[k]:.3f}"][inner].mean()
                    background = render_series(clean, s, [k])[0][inner].mean()
                    # Closer to the lesion's HU than to the tissue it sits in.
                    assert abs(hu - les.hu) < abs(hu - background), (plan.case_id, k, les)
                    checked += 1
                # Slices without the label do not intersect any lesion's centre plane.
                for les in plan.anatomy.lesions:
                    if les.kind not in labelled:
                        assert les.cross_section_radius(s.u[k], plan.anatomy.z_scale) < max(
                            phantom.LESION_MIN_RADIUS_PX * s.pixel_spacing, phantom.LESION_MIN_RADIUS_MM)
    assert checked >= 3


def test_region_labels_match_anatomy(corpus):
    """Thorax slices hold lung, head slices a skull, abdomen/pelvis slices neither."""
    cfg, _ = corpus
    seen = set()
    for index in range(cfg.patients):
        plan = make_plan(cfg, index)
        s = plan.series[0]
        rows = {int(r["slice_index"]): r["region"] for r in _rows(Path(cfg.out) / "labels" / "slices.csv")
                if r["case_id"] == plan.case_id and int(r["series_number"]) == s.series_number}
        picks = np.linspace(0, s.n_slices - 1, 8).astype(int)
        hu = render_series(plan, s, picks)
        xs, ys = s.grid()
        for img, k in zip(hu, picks):
            a, b = phantom.body_axes(plan.anatomy, float(s.u[k]))
            margin = 1.0 if plan.protocol == "head" else 0.95  # torso: leave out the table
            inside = (xs[None, :] / a) ** 2 + (ys[:, None] / b) ** 2 <= margin**2
            body = img[inside & np.isfinite(img)]
            lung = np.mean((body > -950) & (body < -700))
            skull = np.mean(body > 1200)
            region = rows[int(k)]
            seen.add(region)
            if region == "thorax" and s.u[k] > 430:
                assert lung > 0.03, (plan.case_id, k, lung)
            if region in ("abdomen", "pelvis"):
                assert lung < 0.02 and skull < 0.002, (plan.case_id, k, lung, skull)
            if region == "head":
                assert np.mean(body > 700) > 0.03 and lung < 0.03, (plan.case_id, k, lung, skull)
    assert seen == set(phantom.REGIONS)


@pytest.mark.parametrize("u, x, y, low, high", [
    (520, None, None, -900, -800),       # lung parenchyma near -850 HU
    (520, 0.0, "spine", 200, 1500),      # vertebral body: bone
])
def test_tissue_values_are_ct_like(u, x, y, low, high):
    rng = np.random.default_rng(0)
    anat = phantom.sample_anatomy(rng, "torso", phantom.COVERAGE["chest"], lesion_rate=0.0)
    xs = ys = np.arange(-250, 250, 1.0)
    img = phantom.render_plane(anat, u, xs, ys)
    if x is None:
        cx, cy, a, b = phantom.lung_geometry(anat, u, -1)
        value = img[np.argmin(abs(ys - cy)), np.argmin(abs(xs - (cx - 0.3 * a)))]
    else:
        ai, bi = phantom.inner_axes(anat, u)
        value = img[np.argmin(abs(ys - 0.58 * bi)), np.argmin(abs(xs - x))]
    assert low <= value <= high
    assert img.min() >= -1000 and img.max() <= 1600


def test_catalogue_covers_every_quirk(corpus):
    cfg, summary = corpus
    plans = _plans(cfg)
    quirks = {q for p in plans for q in p.quirks}
    for name in ("localizer", "shuffled_instances", "two_series", "no_preamble", "duplicate",
                 "stray_file", "nifti_las_raw", "nifti_pir_auto", "feet_first"):
        assert name in quirks
    syntaxes = {s.transfer_syntax for p in plans for s in p.series}
    assert {"jpeg2000_lossless", "rle_lossless", "deflated_le", "explicit_le"} <= syntaxes
    assert len({p.scanner_key for p in plans if p.format == "dicom"}) >= 3
    assert len({s.thickness for p in plans for s in p.series}) >= 2
    assert len({s.pixel_spacing for p in plans for s in p.series}) >= 4
    assert summary["studies"] == len(CATALOGUE)
