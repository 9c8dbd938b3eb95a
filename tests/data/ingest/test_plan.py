"""The ingest plan: slice counts of volume files come from their slice axis, and they balance the tasks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ctssl.data.ingest import IngestConfig
from ctssl.data.ingest.plan import build_plan


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("CTSSL_SALT", "plan-test-salt-0123456789")


def _ct(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 300, shape) - 400).astype(np.int16)


def test_single_slice_niftis_count_one_slice_each_and_tasks_balance_on_slices(tmp_path):
    """Five 512 x 512 x 1 files were "2176 frames" when counted by max(shape); they are five slices. A 40-slice
    volume stored sagittal-first (slices along the first voxel axis) is 40. Two tasks: the volume alone, the five
    single slices together."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        nib.Nifti1Image(_ct((512, 512, 1), i), np.diag([0.7, 0.7, 5.0, 1.0])).to_filename(str(src / f"single{i}.nii.gz"))
    sagittal = np.array([[0, 0.8, 0, 0], [0, 0, 0.8, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])  # voxel i -> world z
    nib.Nifti1Image(_ct((40, 64, 64)), sagittal).to_filename(str(src / "volume.nii.gz"))
    plan = build_plan(IngestConfig(sources=[str(src)], out=str(tmp_path / "out")), num_tasks=2)
    assert plan["frames"] == 45
    assert sorted((t["frames"], t["series"]) for t in plan["tasks"]) == [(5, 5), (40, 1)]
    assert json.loads((tmp_path / "out" / "plan" / "plan.json").read_text())["frames"] == 45
