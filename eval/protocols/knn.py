"""Weighted kNN (``eval.measures.knn``: DINO's vote, neighbours found with FAISS) on frozen features, per
backbone x label fraction x seed x k: the bank is the (subsampled) training split, the queries the test split.

``run_knn(spec, settings, out)`` writes one record per run to ``OUT/runs/`` (variant ``k=K``) and returns them all;
finished runs are loaded, not recomputed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.measures.knn import faiss_knn_predict
from ctssl.eval.protocols.spec import EvalSpec, backbone_orders, frozen_features, run_identity, run_record
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.store import RunStore

logger = logging.getLogger(__name__)


@dataclass
class KNNSettings:
    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])    # DINO's k values
    temperature: float = 0.07                                           # vote weight exp(sim / T)
    index: str = "flat"                                                 # flat (exact) or ivf (approximate)


def run_knn(spec: EvalSpec, settings: KNNSettings, out: str | Path, cache: str = "",
            orders: list[int] | None = None) -> list[dict]:
    """kNN per backbone x fraction x seed x k (module docstring); features cached in ``cache`` (default
    OUT/features); ``orders``: the backbones' positions in a larger sweep."""
    out, store = Path(out), RunStore(out)
    data = open_dataset(spec.data, spec.label)
    if data.multilabel:
        raise ValueError("kNN voting needs single-label classes; use ctssl probe for multi-label tasks.")
    records = []
    for order, source in backbone_orders(spec, orders):
        feats = frozen_features(spec, data, source, cache or out / "features")
        tr, te = feats["train"], feats["test"]
        for fraction in spec.fractions:
            for seed in spec.seeds:
                idx = subsample(tr.targets, tr.groups, fraction, seed)
                idx = idx[tr.targets[idx] >= 0]
                bank = tr.features if len(idx) == len(tr.targets) else np.asarray(tr.features[idx])
                for k in settings.k:
                    config = {"k": k, "temperature": settings.temperature, "index": settings.index}
                    rid = run_identity("knn", source, feats, data, fraction, seed, config)
                    if store.done(rid):
                        records.append(store.load(rid))
                        continue
                    votes = faiss_knn_predict(te.features, bank, tr.targets[idx], len(data.classes), k,
                                              settings.temperature, index=settings.index).numpy()
                    scores = votes / np.maximum(votes.sum(1, keepdims=True), 1e-30)
                    metrics = metrics_with_ci(te.targets, scores, te.groups, False, spec.n_boot, seed)
                    record = run_record("knn", source, order, feats, data, fraction, seed, config, len(idx), metrics,
                                        rid, variant=f"k={k}")
                    store.save(record, te.keys, te.groups, te.targets, scores)
                    logger.info("knn %s k=%d fraction %g seed %d: %s", source, k, fraction, seed, headline(record))
                    records.append(record)
    return records
