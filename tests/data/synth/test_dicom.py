"""The synthetic corpus's DICOM files read back through pydicom to the intended Hounsfield units, with the
quirks the catalogue plans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctssl.data.synth import make_plan
from ctssl.data.synth.dicom import TRANSFER_SYNTAXES
from ctssl.data.synth.study import render_series
from tests.helpers import read_dicom_folder


def _plans(cfg):
    return [make_plan(cfg, i) for i in range(cfg.patients)]


def test_dicom_reads_back_to_intended_hu(corpus):
    cfg, _ = corpus
    root = Path(cfg.out)
    checked = 0
    for plan in _plans(cfg):
        if plan.format != "dicom":
            continue
        sc = plan.scanner
        for s_idx, series in enumerate(plan.series):
            intended = render_series(plan, series)
            by_z = {f"{z:.3f}": k for k, z in enumerate(series.z)}
            items = [(p, ds) for p, ds in read_dicom_folder(root / series.folder)
                     if ds.SeriesInstanceUID == series.uid and "LOCALIZER" not in ds.ImageType
                     and not p.name.startswith("copy_of_")]
            assert len(items) == series.n_slices
            for path, ds in items:
                assert ds.Modality == "CT"
                if "no_preamble" in plan.quirks and s_idx == 1:
                    assert path.read_bytes()[128:132] != b"DICM"
                else:
                    assert path.read_bytes()[128:132] == b"DICM"
                    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[series.transfer_syntax]
                k = by_z[f"{float(ds.ImagePositionPatient[2]):.3f}"]
                assert float(ds.SliceThickness) == series.thickness
                assert [float(v) for v in ds.PixelSpacing] == pytest.approx([series.pixel_spacing] * 2)
                stored = ds.pixel_array  # decodes JPEG 2000 / RLE / deflate through the plugins
                hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                fov = series.fov_mask()
                err = np.abs(hu[fov] - intended[k][fov])
                # Quantisation: half a stored step; clipping only at the stored range.
                assert err.max() <= float(ds.RescaleSlope) / 2 + 1e-3
                if sc.padding is not None:
                    assert int(ds.PixelPaddingValue) == sc.padding
                    assert np.all(stored[~fov] == sc.padding)
                checked += 1
    assert checked > 100


def test_instance_numbers_are_not_the_slice_order_where_planned(corpus):
    cfg, _ = corpus
    plan = next(p for p in _plans(cfg) if "shuffled_instances" in p.quirks)
    series = plan.series[0]
    items = read_dicom_folder(Path(cfg.out) / series.folder)
    z_by_instance = sorted((int(ds.InstanceNumber), float(ds.ImagePositionPatient[2])) for _, ds in items)
    zs = [z for _, z in z_by_instance]
    assert zs != sorted(zs) and zs != sorted(zs, reverse=True)


def test_localizer_two_series_duplicate_and_stray_file(corpus):
    cfg, _ = corpus
    root = Path(cfg.out)
    plans = _plans(cfg)
    loc_plan = next(p for p in plans if "localizer" in p.quirks)
    items = read_dicom_folder(root / loc_plan.series[0].folder)
    localizers = [ds for _, ds in items if "LOCALIZER" in ds.ImageType]
    assert len(localizers) == 1
    assert localizers[0].SeriesInstanceUID == loc_plan.series[0].uid
    assert [float(v) for v in localizers[0].ImageOrientationPatient] != [1, 0, 0, 0, 1, 0]

    two = next(p for p in plans if "two_series" in p.quirks)
    uids = {ds.SeriesInstanceUID for _, ds in read_dicom_folder(root / two.relpath)}
    assert uids == {s.uid for s in two.series}

    dup = next(p for p in plans if "duplicate" in p.quirks)
    folder = root / dup.series[0].folder
    sops = [ds.SOPInstanceUID for _, ds in read_dicom_folder(folder)]
    assert len(sops) == dup.series[0].n_slices + 1 and len(set(sops)) == dup.series[0].n_slices
    assert (folder / "export_notes.txt").exists()
