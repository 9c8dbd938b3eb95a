"""The linear probe (``eval.measures.probe``, DINOv2's protocol) on frozen features, per backbone x label
fraction x seed, with scikit-learn's logistic regression (C chosen on validation) as a cross-check.

``run_probe(spec, settings, out)`` writes one record per run to ``OUT/runs/`` and returns them all; finished runs
are loaded, not recomputed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ctssl.core.progress import Progress
from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.inputs.requirements import require_classes
from ctssl.eval.measures.classification import metrics_with_ci, selection_metric
from ctssl.eval.measures.probe import ProbeConfig, logreg_crosscheck, predict, standardise, train_probe
from ctssl.eval.protocols.spec import (EvalSpec, announce, backbone_orders, frozen_features, input_size,
                                       pretraining_overlap, run_identity, run_record)
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.store import RunStore, load_names

logger = logging.getLogger(__name__)


def run_probe(spec: EvalSpec, settings: ProbeConfig, out: str | Path, logreg: bool = True, cache: str = "",
              orders: list[int] | None = None) -> list[dict]:
    """The probe per backbone x fraction x seed (module docstring); features cached in ``cache`` (default
    OUT/features); ``orders``: the backbones' positions in a larger sweep."""
    out, store = Path(out), RunStore(out)
    data = open_dataset(spec.data, spec.label)
    require_classes(data, "the linear probe", selection_metric(settings, data.multilabel, len(data.classes)))
    records, size, names = [], input_size(spec), load_names(out)
    overlap = pretraining_overlap(logger, "probe", spec.backbones, data, spec.allow_pretraining_overlap, names)
    pairs = backbone_orders(spec, orders)
    for index, (order, source) in enumerate(pairs):
        feats = frozen_features(spec, data, source, cache or out / "features", size=size)
        for fraction in spec.fractions:
            for seed in spec.seeds:
                config = {**asdict(settings), "seed": seed, "logreg": logreg}
                rid = run_identity("probe", source, feats, data, fraction, seed, config)
                if store.done(rid):
                    records.append(store.load(rid))
                    continue
                announce(logger, "probe", source, index, len(pairs), names, fraction=fraction, seed=seed,
                         grid=f"{len(settings.lrs)} lr x {len(settings.weight_decays)} wd")
                desc = f"probe {names.get(source) or source}, fraction {fraction:g}, seed {seed}"
                n_train, metrics, extra, scores = _probe_run(feats, data, fraction, seed, settings, logreg, spec.n_boot,
                                                             desc)
                record = run_record("probe", source, order, feats, data, fraction, seed, config, n_train, metrics, rid,
                                    pretraining_overlap=overlap[source], **extra)
                te = feats["test"]
                store.save(record, te.keys, te.groups, te.targets, scores)
                logger.info("probe %s fraction %g seed %d: %s (lr %g, wd %g chosen on validation)",
                            names.get(source) or source, fraction, seed, headline(record),
                            extra["selection"]["best"]["lr"], extra["selection"]["best"]["weight_decay"])
                records.append(record)
    return records


def _probe_run(feats, data, fraction: float, seed: int, settings: ProbeConfig, logreg: bool, n_boot: int,
               desc: str = "probe"):
    """(training samples, test metrics, selection [and logistic-regression check], test scores) of one fraction
    and seed."""
    tr, te, va = feats["train"], feats["test"], feats["val"]
    num_classes = len(data.classes)
    idx = subsample(tr.targets, tr.groups, fraction, seed)
    idx = idx[tr.targets[idx] >= 0] if not data.multilabel else idx
    x_train, x_val, x_test = standardise(np.asarray(tr.features[idx]), va.features, te.features)
    val_keep = np.ones(len(va.targets), bool) if data.multilabel else va.targets >= 0
    with Progress(settings.epochs, desc, unit="epoch", log=logger) as progress:
        model = train_probe(x_train, tr.targets[idx], x_val[val_keep], va.targets[val_keep], settings, num_classes,
                            data.multilabel, seed, on_epoch=progress.update)
    scores = predict(model, x_test)
    metrics = metrics_with_ci(te.targets, scores, te.groups, data.multilabel, n_boot, seed, data.classes)
    extra = {"selection": {"metric": model["select"], "best": model["best"], "grid": model["grid"]}}
    if logreg and not data.multilabel:
        metric = model["select"] if model["select"] != "auroc" else "accuracy"
        check = logreg_crosscheck(x_train, tr.targets[idx], x_val[val_keep], va.targets[val_keep], x_test, num_classes,
                                  settings.balanced, metric=metric, seed=seed)
        extra["logreg"] = {"C": check["C"], "test": metrics_with_ci(te.targets, check["test_scores"], te.groups, False,
                                                                    n_boot, seed, data.classes)}
    return len(idx), metrics, extra, scores
