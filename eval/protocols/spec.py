"""The frozen-feature protocols, swept over backbones x label fractions x seeds.

``probe_runs`` and ``knn_runs`` take an ``EvalSpec`` (dataset, label, backbones, fractions, seeds,
input size, feature cache) and write one run record each (``eval.runs``). Features are extracted
once per backbone and split (``eval.features``) and shared by every fraction, seed, grid point
and k. Training data is the ``train`` split subsampled by patient (``eval.runs.subsample``),
selection uses ``val``, and numbers are reported on ``test`` only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import Dataset, open_dataset
from ctssl.eval.features.extract import cached_features
from ctssl.eval.measures.probe import ProbeConfig, logreg_crosscheck, predict, standardise, train_probe
from ctssl.eval.records.store import RunStore, metrics_with_ci, provenance, run_id, subsample

logger = logging.getLogger(__name__)


@dataclass
class EvalSpec:
    dataset: str
    backbones: list[str]
    label: str = "region"
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    image_size: int = 0             # 0: each backbone's pretraining size (eval.inputs)
    grey_window: str = "wide"       # CT inputs of grey/natural-picture backbones (eval.inputs)
    cache: str = ""                 # feature cache folder; default OUT/features
    batch_size: int = 0             # feature extraction batch; 0: 8 on CPU, 256 on GPU
    n_boot: int = 1000
    orders: list[int] = field(default_factory=list)   # backbone positions in a larger sweep; default 0, 1, ...

    def order(self, position: int) -> int:
        return self.orders[position] if self.orders else position


def _features(spec: EvalSpec, data: Dataset, source: str, out: Path):
    return cached_features(source, data, ["train", "val", "test"], spec.image_size, spec.cache or out / "features",
                           spec.batch_size or None, grey_window=spec.grey_window)


def _record(task: str, source: str, order: int, feats, data: Dataset, fraction: float, seed: int, config: dict,
            n_train: int, metrics: dict, rid: str, **extra) -> dict:
    backbone = feats["test"].provenance["backbone"]
    return {"run_id": rid, "task": task, "backbone": source, "backbone_order": order,
            "backbone_card": backbone, "dataset": data.describe(), "fraction": fraction, "seed": seed,
            "n_train": n_train, "n_val": len(feats["val"].targets), "n_test": len(feats["test"].targets),
            "config": config, "input": feats["test"].provenance["input"], "test": metrics,
            "feature_cache": feats["test"].provenance["cache"], "provenance": provenance(), **extra}


def _identity(task, source, feats, data, fraction, seed, config):
    return run_id(task=task, source=source, weights=feats["test"].provenance["backbone"].get("weights_sha256"),
                  dataset=data.fingerprint, label=data.label, fraction=fraction, seed=seed, config=config,
                  input=feats["test"].provenance["input"])


def probe_runs(spec: EvalSpec, cfg: ProbeConfig, out: str | Path, logreg: bool = True) -> list[dict]:
    """Linear probe (eval.probe) per backbone x fraction x seed; logistic-regression cross-check."""
    out, store = Path(out), RunStore(out)
    data = open_dataset(spec.dataset, spec.label)
    num_classes = len(data.classes)
    records = []
    for position, source in enumerate(spec.backbones):
        order = spec.order(position)
        feats = _features(spec, data, source, out)
        for fraction in spec.fractions:
            for seed in spec.seeds:
                config = {**asdict(cfg), "seed": seed, "logreg": logreg}
                rid = _identity("probe", source, feats, data, fraction, seed, config)
                if store.done(rid):
                    records.append(store.load(rid))
                    continue
                tr = feats["train"]
                idx = subsample(tr.targets, tr.groups, fraction, seed)
                idx = idx[tr.targets[idx] >= 0] if not data.multilabel else idx
                x_train, x_val, x_test = standardise(np.asarray(tr.features[idx]), feats["val"].features,
                                                     feats["test"].features)
                val_y = feats["val"].targets
                val_keep = np.ones(len(val_y), bool) if data.multilabel else val_y >= 0
                model = train_probe(x_train, tr.targets[idx], x_val[val_keep], val_y[val_keep],
                                    ProbeConfig(**{**asdict(cfg), "seed": seed}), num_classes, data.multilabel)
                te = feats["test"]
                scores = predict(model, x_test, data.multilabel)
                metrics = metrics_with_ci(te.targets, scores, te.groups, data.multilabel, spec.n_boot, seed)
                extra = {"selection": {"metric": model["select"], "best": model["best"], "grid": model["grid"]}}
                if logreg and not data.multilabel:
                    check = logreg_crosscheck(x_train, tr.targets[idx], x_val[val_keep], val_y[val_keep], x_test,
                                              num_classes, cfg.balanced, metric=model["select"]
                                              if model["select"] != "auroc" else "accuracy", seed=seed)
                    lr_metrics = metrics_with_ci(te.targets, check["test_scores"], te.groups, False, spec.n_boot, seed)
                    extra["logreg"] = {"C": check["C"], "test": lr_metrics}
                record = _record("probe", source, order, feats, data, fraction, seed, config, len(idx), metrics, rid,
                                 **extra)
                store.save(record, te.keys, te.groups, te.targets, scores)
                logger.info("probe %s fraction %g seed %d: %s", source, fraction, seed, headline(record))
                records.append(record)
    return records


def knn_runs(spec: EvalSpec, out: str | Path, ks=(10, 20, 100, 200), temperature: float = 0.07,
             index: str = "flat") -> list[dict]:
    """Weighted kNN (eval.knn, FAISS) per backbone x fraction x seed x k; the bank is the
    (subsampled) training split, queries the test split."""
    from ctssl.eval.measures.knn import faiss_knn_predict

    out, store = Path(out), RunStore(out)
    data = open_dataset(spec.dataset, spec.label)
    if data.multilabel:
        raise ValueError("kNN voting needs single-label classes; use ctssl probe for multi-label tasks.")
    records = []
    for position, source in enumerate(spec.backbones):
        order = spec.order(position)
        feats = _features(spec, data, source, out)
        tr, te = feats["train"], feats["test"]
        for fraction in spec.fractions:
            for seed in spec.seeds:
                idx = subsample(tr.targets, tr.groups, fraction, seed)
                idx = idx[tr.targets[idx] >= 0]
                bank = tr.features if len(idx) == len(tr.targets) else np.asarray(tr.features[idx])
                labels = tr.targets[idx]
                for k in ks:
                    config = {"k": k, "temperature": temperature, "index": index}
                    rid = _identity("knn", source, feats, data, fraction, seed, config)
                    if store.done(rid):
                        records.append(store.load(rid))
                        continue
                    votes = faiss_knn_predict(te.features, bank, labels, len(data.classes), k, temperature,
                                              index=index).numpy()
                    scores = votes / np.maximum(votes.sum(1, keepdims=True), 1e-30)
                    metrics = metrics_with_ci(te.targets, scores, te.groups, False, spec.n_boot, seed)
                    record = _record("knn", source, order, feats, data, fraction, seed, config, len(idx), metrics,
                                     rid, variant=f"k={k}")
                    store.save(record, te.keys, te.groups, te.targets, scores)
                    logger.info("knn %s k=%d fraction %g seed %d: %s", source, k, fraction, seed, headline(record))
                    records.append(record)
    return records


def headline(record: dict) -> str:
    """One line: the main test metric with its CI."""
    from ctssl.eval.records.store import main_metric

    test = record["test"]
    name = main_metric(record)
    m = {k: ("n/a" if v is None else f"{v:.3f}") for k, v in test[name].items()}
    return f"test {name} {m['value']} [{m['lower']}, {m['upper']}] (n={test['n']})"


def table(records: list[dict]) -> str:
    """A console table: one row per run, mean and spread over seeds left to the report."""
    rows = [("task", "backbone", "variant", "fraction", "seed", "n_train", "result")]
    for r in records:
        rows.append((r["task"], _short(r["backbone"]), r.get("variant", ""), f"{r['fraction']:g}", str(r["seed"]),
                     str(r["n_train"]), headline(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _short(source: str) -> str:
    return source if len(source) <= 48 else "..." + source[-45:]
