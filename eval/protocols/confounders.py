"""The shortcut (confounder) experiment of the "source matters" study.

A synthetic confounder is injected into a fraction ``f`` of the *positive* training (and
validation) images, so it correlates with the label; the test set is evaluated twice: clean, and
anti-correlated (the confounder in *every negative* test image, none in the positives). A model
that learned the shortcut falls on the anti-correlated test set, more so as ``f`` grows; the drop
measures how shortcut-prone a pretraining source makes it.

The confounders themselves are ``eval.inputs.confounders``; whether a drop from the clean to the
anti-correlated test set is more than chance, a paired permutation test (``eval.measures.confounders``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ctssl.eval.inputs.confounders import CONFOUNDERS, confounded_set, inject
from ctssl.eval.measures.confounders import permutation_test

logger = logging.getLogger(__name__)


@dataclass
class ConfounderConfig:
    confounder: str = "tag"
    positive: str = "1"                 # the label value that is the positive class
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 0.8, 1.0])   # the study's
    mode: str = "probe"                 # probe (frozen features) or finetune
    seed: int = 0
    image_size: int = 0                 # 0: each backbone's pretraining size (eval.inputs)
    n_boot: int = 500
    permutations: int = 2000            # paired permutation test of the AUROC drop (0: none)


def run_confounders(data: str, backbones: list[str], label: str, cfg: ConfounderConfig, out, cache: str = "",
                    name: str | None = None, probe_cfg=None, finetune_cfg=None, grey_window: str = "wide",
                    order: int = 0) -> dict:
    """The experiment for each backbone and fraction (module docstring); OUT/confounders/<name>.json."""
    import json
    from pathlib import Path

    from ctssl.core.atomic import atomic_write_text
    from ctssl.eval.inputs.datasets import Sample, open_dataset
    from ctssl.eval.features.cache import cached_features
    from ctssl.eval.features.extract import compute_features
    from ctssl.eval.inputs.spec import input_spec
    from ctssl.eval.measures.probe import ProbeConfig
    from ctssl.eval.measures.classification import metrics_with_ci
    from ctssl.eval.records.provenance import provenance
    from ctssl.eval.records.store import slug
    from ctssl.eval.inputs.sources import load_backbone

    if cfg.mode not in ("probe", "finetune"):
        raise ValueError(f"Unknown mode '{cfg.mode}'. Valid modes are ['probe', 'finetune'].")
    dataset = open_dataset(data, label)
    if dataset.multilabel:
        raise ValueError("The confounder experiment needs a single label with a positive value (--positive).")
    split = {s: dataset.split(s) for s in ("train", "val", "test")}
    positive = {s: np.array([x.target == cfg.positive for x in split[s]]) for s in split}
    if not positive["train"].any() or positive["train"].all():
        raise ValueError(f"Label '{label}' = '{cfg.positive}' must mark some but not all training samples "
                         f"(values: {dataset.classes}).")

    def confounded(samples, which):
        return [Sample(inject(s.image, cfg.confounder, s.key), s.target, s.group, s.key) if w else s
                for s, w in zip(samples, which)]

    rows = []
    for source in backbones:
        model, card = load_backbone(source)
        spec = input_spec(card, dataset.kind, cfg.image_size, grey_window)
        anti_test = confounded(split["test"], ~positive["test"])          # every negative confounded
        if cfg.mode == "probe":
            clean = cached_features(source, dataset, ["train", "val", "test"], cfg.image_size,
                                    cache or Path(out) / "features", grey_window=grey_window)
            feats = {s: np.asarray(clean[s].features) for s in split}
            # Confounded versions of every positive (train, val) and every negative (test), once.
            tagged = {s: compute_features(model, [inject(x.image, cfg.confounder, x.key)
                                                  for x, p in zip(split[s], positive[s]) if p], spec)
                      for s in ("train", "val")}
            test_anti = compute_features(model, [x.image for x in anti_test], spec)
        for fraction in cfg.fractions:
            chosen = {s: confounded_set([x.key for x in split[s]], positive[s], fraction, cfg.seed) for s in ("train", "val")}
            if cfg.mode == "probe":
                scores_clean, scores_anti = _probe(feats, tagged, test_anti, split, positive, chosen,
                                                   probe_cfg or ProbeConfig(epochs=50), cfg.seed)
            else:
                scores_clean, scores_anti = _finetune(model, card, spec, split, positive, chosen, anti_test,
                                                      confounded, finetune_cfg, cfg.seed)
            y = positive["test"].astype(np.int64)
            groups = dataset.groups("test")
            row = {"backbone": source, "backbone_order": order + backbones.index(source), "input": spec.rule,
                   "fraction": fraction,
                   "n_confounded_train": len(chosen["train"]), "n_positive_train": int(positive["train"].sum()),
                   "clean": metrics_with_ci(y, scores_clean, groups, False, cfg.n_boot, cfg.seed),
                   "confounded": metrics_with_ci(y, scores_anti, groups, False, cfg.n_boot, cfg.seed)}
            row["drop"] = {m: _diff(row["clean"][m]["value"], row["confounded"][m]["value"])
                           for m in ("accuracy", "balanced_accuracy", "auroc")}
            if cfg.permutations:
                row["permutation_test"] = permutation_test(positive["test"], scores_clean[:, 1], scores_anti[:, 1],
                                                           cfg.permutations, cfg.seed)
            logger.info("confounder %s, %s, fraction %.2f: clean AUROC %s, anti-correlated AUROC %s", cfg.confounder,
                        source, fraction, row["clean"]["auroc"]["value"], row["confounded"]["auroc"]["value"])
            rows.append(row)
    name = name or f"{cfg.confounder}-{slug(data)}"
    folder = Path(out) / "confounders"
    record = {"name": name, "dataset": dataset.describe(), "label": label, "positive": cfg.positive,
              "config": {**cfg.__dict__}, "rows": rows, "provenance": provenance()}
    from ctssl.eval.records.plots import confounder_curves

    record["figure"] = str(confounder_curves(rows, "auroc", folder / f"{name}.png",
                                             f"confounder '{cfg.confounder}' on {label} = {cfg.positive}"))
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    record["json"] = str(path)
    return record


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 5)


def _probe(feats, tagged, test_anti, split, positive, chosen, probe_cfg, seed):
    """Binary linear probe on features where the chosen positives carry the confounder."""
    from dataclasses import replace

    from ctssl.eval.measures.probe import predict, standardise, train_probe

    def with_confounder(s):
        x = feats[s].copy()
        rows = np.flatnonzero(positive[s])
        for j, i in enumerate(rows):
            if split[s][i].key in chosen[s]:
                x[i] = tagged[s][j]
        return x

    xtr, xva, xte, xanti = standardise(with_confounder("train"), with_confounder("val"), feats["test"], test_anti)
    model = train_probe(xtr, positive["train"].astype(np.int64), xva, positive["val"].astype(np.int64),
                        replace(probe_cfg, seed=seed), 2)
    return predict(model, xte), predict(model, xanti)


def _finetune(model, card, spec, split, positive, chosen, anti_test, confounded, finetune_cfg, seed):
    import torch

    from ctssl.eval.inputs.spec import prepare
    from ctssl.finetune.finetune import FinetuneConfig, finetune_grid, predict

    def tensor(samples):
        return torch.stack([prepare(s.image, spec) for s in samples]).half()

    data = {s: tensor(confounded(split[s], [x.key in chosen[s] for x in split[s]])) for s in ("train", "val")}
    result = finetune_grid(model, card["backbone"], data["train"], positive["train"].astype(np.int64), data["val"],
                           positive["val"].astype(np.int64), 2, finetune_cfg or FinetuneConfig(epochs=5), seed)
    best = result["best_val"]
    return predict(best, tensor(split["test"]), False), predict(best, tensor(anti_test), False)
