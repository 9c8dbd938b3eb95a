"""OUT/results.csv: one tidy row per evaluation run, its cells the records' values; ``ctssl report --log-with
mlflow`` sends each run once to MLflow (offline, a file: tracking URI)."""

from __future__ import annotations

import csv

import pytest

from ctssl.cli.main import main
from ctssl.eval.protocols.knn import KNNSettings, run_knn
from ctssl.eval.protocols.spec import EvalSpec
from ctssl.eval.records.comparisons import collate


@pytest.fixture(scope="module")
def knn_out(eval_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    spec = EvalSpec(data=str(eval_shards), label="region", backbones=["random:resnet18:3", "random:resnet18:3:1"],
                    fractions=[0.5, 1.0], image_size=32, n_boot=20)
    return out, run_knn(spec, KNNSettings(k=[3]), out)


def test_results_csv_has_one_row_per_run_with_its_values(knn_out):
    out, records = knn_out
    collate(out, 20)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(records) == 4
    by_id = {r["run_id"]: r for r in records}
    for row in rows:
        record = by_id[row["run_id"]]
        assert row["backbone"] == record["backbone"] and float(row["fraction"]) == record["fraction"]
        assert float(row["test_accuracy"]) == pytest.approx(record["test"]["accuracy"]["value"])
        assert row["arm"] == "random" and row["architecture"] == "resnet18" and row["input_size"] == "32"


def test_report_sends_each_run_once_to_mlflow(knn_out, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny)")
    import mlflow

    out, records = knn_out
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main(["report", "--out", str(out), "--log-with", "mlflow"]) == 0
    assert "4 evaluation run(s) sent" in capsys.readouterr().out
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    accuracy = {r.data.params["run_id"]: r.data.metrics["test_accuracy"] for r in runs}
    assert accuracy == pytest.approx({r["run_id"]: r["test"]["accuracy"]["value"] for r in records})
    assert main(["report", "--out", str(out), "--log-with", "mlflow"]) == 0
    assert "0 evaluation run(s) sent" in capsys.readouterr().out
