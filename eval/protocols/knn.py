"""Weighted kNN (``eval.measures.knn``, DINO's protocol, FAISS) on frozen features, per backbone x label
fraction x seed x k."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.measures.knn import faiss_knn_predict
from ctssl.eval.protocols.spec import EvalSpec, _features, _identity, _record
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.store import RunStore

logger = logging.getLogger(__name__)


def knn_runs(spec: EvalSpec, out: str | Path, ks=(10, 20, 100, 200), temperature: float = 0.07,
             index: str = "flat") -> list[dict]:
    """Weighted kNN (eval.knn, FAISS) per backbone x fraction x seed x k; the bank is the
    (subsampled) training split, queries the test split."""
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
