"""The linear probe (``eval.measures.probe``, DINOv2's protocol) on frozen features, per backbone x label
fraction x seed, with scikit-learn's logistic regression as a cross-check."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.measures.probe import ProbeConfig, logreg_crosscheck, predict, standardise, train_probe
from ctssl.eval.protocols.spec import EvalSpec, _features, _identity, _record
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.store import RunStore

logger = logging.getLogger(__name__)


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
