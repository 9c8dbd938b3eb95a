"""Weighted kNN (``eval.measures.knn``: DINO's vote, neighbours found with FAISS) on frozen features, per
backbone x label fraction x seed x k: the bank is the (subsampled) training split, the queries the test split.

``run_knn(spec, settings, out)`` writes one record per run to ``OUT/runs/`` (variant ``k=K``) and returns them all;
finished runs are loaded, not recomputed. A run's scores are the log of each class's share of the weighted
vote (scores on a log scale, ``eval.measures.classification``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.inputs.requirements import require_classes
from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.measures.knn import faiss_knn_predict
from ctssl.eval.protocols.spec import (EvalSpec, announce, backbone_orders, frozen_features, input_size,
                                       pretraining_overlap, run_identity, run_record)
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.store import RunStore, load_names

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
    require_classes(data, "kNN", splits=("train", "test"))
    records, size, names = [], input_size(spec), load_names(out)
    overlap = pretraining_overlap(logger, "knn", spec.backbones, data, spec.allow_pretraining_overlap, names)
    pairs = backbone_orders(spec, orders)
    for index, (order, source) in enumerate(pairs):
        announce(logger, "knn", source, index, len(pairs), names, size=f"{size[0] or 'own'} px")
        splits = ("train", "val", "test") if data.has("val") else ("train", "test")   # kNN needs no validation
        feats = frozen_features(spec, data, source, cache or out / "features", splits, size)
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
                    effective = min(k, len(idx))
                    if effective < k:
                        logger.warning("k=%d is more than the %d training samples of fraction %g: kNN votes with all "
                                       "of them (effective k=%d); pass a smaller --k or a larger --fraction.", k,
                                       len(idx), fraction, effective)
                    votes = faiss_knn_predict(te.features, bank, tr.targets[idx], len(data.classes), k,
                                              settings.temperature, index=settings.index).numpy()
                    with np.errstate(divide="ignore"):     # a class without votes: log share -inf
                        scores = np.log(votes / np.maximum(votes.sum(1, keepdims=True), 1e-30))
                    metrics = metrics_with_ci(te.targets, scores, te.groups, False, spec.n_boot, seed, data.classes)
                    record = run_record("knn", source, order, feats, data, fraction, seed, config, len(idx), metrics,
                                        rid, variant=f"k={k}", k_effective=effective,
                                        pretraining_overlap=overlap[source])
                    store.save(record, te.keys, te.groups, te.targets, scores)
                    logger.info("knn %s k=%d%s fraction %g seed %d: %s", names.get(source) or source, k,
                                f" (effective {effective})" if effective < k else "", fraction, seed,
                                headline(record))
                    records.append(record)
    return records
