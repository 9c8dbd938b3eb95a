"""Pretraining's metrics through Accelerate's trackers (monitor.log_with): TensorBoard by default, MLflow offline
(a file: tracking URI) receiving the same training losses as metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from ctssl.core.config import ConfigError
from ctssl.pretrain.config import resolve_pretrain_config, validate

TINY = ["data.image_size=32", "data.global_batch_size=4", "max_steps=2", "data.num_workers=0", "monitor.log_every=1",
        "method.simclr.hidden_dim=64", "monitor.knn_samples=8", "checkpoint_every=0", "data.shuffle_buffer=8"]


def test_mlflow_and_tensorboard_receive_the_training_metrics(ct_shards, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny)")
    import mlflow
    from ctssl.pretrain.train import train

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")     # MLflow 3 keeps the file store behind this opt-in
    cfg = resolve_pretrain_config(None, None, [*TINY, "monitor.log_with=[tensorboard,mlflow]"],
                                  {"data.shards": str(ct_shards), "out": str(tmp_path / "run")})
    train(cfg)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == 2
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.params["method"] == "simclr"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(losses, rel=1e-6)
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


def test_an_unknown_or_missing_tracker_is_one_line():
    with pytest.raises(ConfigError, match="unknown tracker 'nope'"):
        validate(resolve_pretrain_config(None, None, ["monitor.log_with=[nope]"]))
