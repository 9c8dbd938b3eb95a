"""A protocol called from Python (eval.protocols.knn.run_knn, as dinov2's eval_knn_with_model): a spec and its
settings to run records, one per backbone x fraction x seed x k, in a larger sweep's backbone order; a rerun
loads the records instead of recomputing them."""

from __future__ import annotations

from ctssl.eval.protocols.knn import KNNSettings, run_knn
from ctssl.eval.protocols.spec import EvalSpec


def test_run_knn_from_a_spec_and_settings(eval_shards, tmp_path):
    spec = EvalSpec(data=str(eval_shards), label="region", backbones=["random:resnet18:3"], fractions=[0.5, 1.0],
                    image_size=32, n_boot=20)
    records = run_knn(spec, KNNSettings(k=[3, 7]), tmp_path, orders=[4])
    assert sorted((r["fraction"], r["config"]["k"]) for r in records) == [(0.5, 3), (0.5, 7), (1.0, 3), (1.0, 7)]
    assert {r["backbone_order"] for r in records} == {4} and {r["variant"] for r in records} == {"k=3", "k=7"}
    assert all(r["input"]["size"] == 32 and 0 <= r["test"]["accuracy"]["value"] <= 1 for r in records)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    assert run_knn(spec, KNNSettings(k=[3, 7]), tmp_path, orders=[4]) == records
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == stamps
