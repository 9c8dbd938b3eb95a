"""``ctssl bench segment``: every step kind is timed against the classification step of the same run, and the
data path decodes masked slices with and without their mask."""

from __future__ import annotations

import pytest

from ctssl.bench import segment
from ctssl.bench.settings import SegmentBench


def test_steps_and_ratios_at_a_tiny_size(monkeypatch, tmp_path):
    monkeypatch.setattr(segment, "_data_path", lambda cfg: {"slices": 0})
    result = segment.measure(SegmentBench(out=str(tmp_path), backbones=["resnet18"], sizes=[32], batch=2, steps=1))
    (row,) = result["rows"]
    for kind in ("classification_finetune", "unet_finetune", "unet_frozen", "unet_inference"):
        assert row[f"{kind}_images_per_s"] > 0
    assert row["unet_finetune_vs_classification"] == pytest.approx(
        row["unet_finetune_images_per_s"] / row["classification_finetune_images_per_s"], rel=0.05, abs=0.02)
    assert "U-Net fine-tuned" in segment.format_table({"results": result})
    assert segment.summary_rows(result)[0][-1].endswith("x")


def test_the_data_path_decodes_masked_slices(ct_shards, monkeypatch, tmp_path):
    import ctssl.bench.corpus

    monkeypatch.setattr(ctssl.bench.corpus, "bench_shards", lambda out: ct_shards)
    data = segment._data_path(SegmentBench(out=str(tmp_path), slices=10, steps=1))
    assert data["slices"] == 10 and data["hu_and_mask_ms_per_slice"] > 0 and data["seg_bytes_per_slice"] > 0
    assert data["hu_and_mask_ms_per_slice"] > data["hu_ms_per_slice"] * 0.5     # timed, not a constant
