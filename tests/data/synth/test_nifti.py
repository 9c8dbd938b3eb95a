"""The synthetic corpus's NIfTI volumes read back through nibabel to the intended Hounsfield units."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from ctssl.data.synth import make_plan
from ctssl.data.synth.study import render_series


def _plans(cfg):
    return [make_plan(cfg, i) for i in range(cfg.patients)]


def test_nifti_reads_back_to_intended_hu(corpus):
    cfg, _ = corpus
    for plan in _plans(cfg):
        if plan.format != "nifti":
            continue
        series = plan.series[0]
        img = nib.load(Path(cfg.out) / plan.relpath)
        slope, inter = img.dataobj.slope, img.dataobj.inter
        assert (slope, inter) != (1.0, 0.0)  # scl_slope / scl_inter are in use
        assert nib.aff2axcodes(img.affine) != ("R", "A", "S")  # not stored in canonical order
        data = img.get_fdata()  # applies scl_slope / scl_inter
        # Bring the voxel axes to L-P-S order, i.e. [column, row, slice inferior first].
        to_lps = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
        volume = apply_orientation(data, to_lps).transpose(2, 1, 0)
        intended = render_series(plan, series)
        fov = series.fov_mask()
        err = np.abs(volume[:, fov] - intended[:, fov])
        assert err.max() <= abs(slope) / 2 + 1e-3
        # The affine puts slice k at the planned z (same number as DICOM's Image Position z).
        lps_affine = img.affine @ inv_ornt_aff(to_lps, img.shape)
        world_z = [(lps_affine @ np.array([0, 0, k, 1.0]))[2] for k in range(series.n_slices)]
        np.testing.assert_allclose(world_z, series.z, atol=1e-3)
