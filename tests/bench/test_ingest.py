"""``ctssl bench ingest``'s naive baseline does the work ingest does: HU, resized to the same 256x256 output,
written as 16-bit PNGs into a tar, so the ratio compares like with like."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image

from ctssl.bench.ingest import OUTPUT_SIZE, naive_baseline
from ctssl.data.slicing import resize_slice
from tests.dicom_factory import ct_dataset, phantom_stored, save


def test_naive_baseline_writes_what_ingest_writes(tmp_path):
    rng = np.random.default_rng(0)
    stored = [phantom_stored(rng, shape=(96, 96)) for _ in range(3)]
    files = [save(ct_dataset(s, z=float(i), series_uid="1.2.3.9"), tmp_path / "dicom" / f"{i}.dcm")
             for i, s in enumerate(stored)]
    n, seconds = naive_baseline(files, tmp_path / "naive")
    assert n == 3 and seconds > 0
    assert naive_baseline(files, None)[0] == 3                  # the read-only floor reads the same slices
    with tarfile.open(tmp_path / "naive" / "naive-00000.tar") as tar:
        pngs = [np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read()))) for m in tar.getmembers()]
    assert len(pngs) == 3
    for png, s in zip(pngs, stored):
        assert png.shape == (OUTPUT_SIZE, OUTPUT_SIZE)        # the output size ingest writes, not the source's
        hu = png.astype(np.int32) - 32768
        expected, _ = resize_slice((s - 1024).astype(np.float32), (0.8, 0.8), OUTPUT_SIZE)
        np.testing.assert_allclose(hu, expected, atol=1)        # ingest's resize of the same slice
