"""The shortcut (confounder) experiment of the "source matters" study.

A synthetic confounder is injected into a fraction ``f`` of the *positive* training (and
validation) images, so it correlates with the label; the test set is evaluated twice: clean, and
anti-correlated (the confounder in *every negative* test image, none in the positives). A model
that learned the shortcut falls on the anti-correlated test set, more so as ``f`` grows; the drop
measures how shortcut-prone a pretraining source makes it. ``run_confounders`` runs one confounder with
one seed for every backbone and fraction and writes ``OUT/confounders/<name>.json`` with a figure beside it.

The confounders themselves are ``eval.inputs.confounders``; whether a drop from the clean to the
anti-correlated test set is more than chance, a paired permutation test (``eval.measures.confounders``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctssl.core.atomic import atomic_write_text
from ctssl.eval.features.extract import compute_features, default_device
from ctssl.eval.inputs.confounders import confounded_set, inject
from ctssl.eval.inputs.datasets import Sample, open_dataset
from ctssl.eval.inputs.requirements import require_splits
from ctssl.pretrain.sources import load_backbone
from ctssl.eval.inputs.spec import input_spec, prepare
from ctssl.eval.measures.classification import metrics_with_ci, ovr_scores
from ctssl.eval.measures.confounders import permutation_test
from ctssl.eval.measures.probe import ProbeConfig, predict, standardise, train_probe
from ctssl.eval.protocols.spec import (EvalTarget, announce, backbone_orders, frozen_features, input_size,
                                       pretraining_overlap)
from ctssl.eval.records.plots import confounder_curves
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import load_names, slug
from ctssl.finetune import finetune as finetuning

logger = logging.getLogger(__name__)
MODES = ("probe", "finetune")
CLASSES = ["other", "positive"]         # the experiment's two classes: the --positive value, and the rest


@dataclass
class ConfounderSettings:
    positive: str = "1"                 # the label value that is the positive class
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 0.8, 1.0])   # the study's
    mode: str = "probe"                 # probe (frozen features) or finetune
    permutations: int = 2000            # paired permutation test of the AUROC drop (0: none)


def run_confounders(target: EvalTarget, settings: ConfounderSettings, out: str | Path, kind: str = "tag",
                    seed: int = 0, probe: ProbeConfig | None = None, finetune: finetuning.FinetuneConfig | None = None,
                    cache: str = "", name: str | None = None, orders: list[int] | None = None) -> dict:
    """Confounder ``kind`` for every backbone of ``target`` and every fraction of ``settings`` (module docstring),
    learning by ``probe`` or ``finetune`` (whichever ``settings.mode`` names); features cached in ``cache``
    (default OUT/features). Returns the record, with its JSON path and figure."""
    if settings.mode not in MODES:
        raise ValueError(f"Unknown mode '{settings.mode}'. Valid modes are {list(MODES)}.")
    learner = {"probe": probe, "finetune": finetune}[settings.mode]
    if learner is None:
        raise ValueError(f"The confounder experiment in mode '{settings.mode}' needs its {settings.mode} settings.")
    dataset = open_dataset(target.data, target.label)
    if dataset.multilabel:
        raise ValueError("The confounder experiment needs a single label with a positive value (--positive).")
    require_splits(dataset, "The confounder experiment")
    split = {s: dataset.split(s) for s in ("train", "val", "test")}
    positive = {s: np.array([x.target == settings.positive for x in split[s]]) for s in split}
    for s in split:     # AUROC (selection on val, measure on test) needs both classes in every split
        if not positive[s].any() or positive[s].all():
            patients = len({x.group for x in split[s]})
            raise ValueError(
                f"Label '{target.label}' = '{settings.positive}' marks {int(positive[s].sum())} of {len(split[s])} "
                f"{s} samples ({patients} patient(s)): the experiment needs positives and negatives in train, val "
                f"and test (values: {dataset.classes}). Ingest with other --splits fractions, or choose another "
                f"--positive.")
    experiment = _Experiment(dataset, split, positive, kind, seed)
    rows, (size, why), names = [], input_size(target), load_names(out)
    overlap = pretraining_overlap(logger, "confounders", target.backbones, dataset, target.allow_pretraining_overlap,
                                  names)
    pairs = backbone_orders(target, orders)
    for index, (order, source) in enumerate(pairs):
        announce(logger, "confounders", source, index, len(pairs), names, confounder=kind, mode=settings.mode)
        model, card = load_backbone(source)
        spec = input_spec(card, dataset.kind, size, target.grey_window, why)
        if settings.mode == "probe":
            learn = experiment.probe(model, spec, source, target, cache or Path(out) / "features", learner,
                                         (size, why))
        else:
            learn = experiment.finetune(model, card, spec, learner, f"confounders {names.get(source) or source}")
        for fraction in settings.fractions:
            row = experiment.row(learn, fraction, source, order, spec.rule, settings, target.n_boot)
            row["pretraining_overlap"] = overlap[source]
            logger.info("confounder %s, %s, fraction %.2f: clean AUROC %s, anti-correlated AUROC %s", kind, source,
                        fraction, row["clean"]["auroc"]["value"], row["confounded"]["auroc"]["value"])
            rows.append(row)
    name = name or confounders_name(kind, target.data)
    folder = Path(out) / "confounders"
    config = {"confounder": kind, "positive": settings.positive, "fractions": list(settings.fractions),
              "mode": settings.mode, "seed": seed, "image_size": size, "n_boot": target.n_boot,
              "permutations": settings.permutations}
    record = {"name": name, "dataset": dataset.describe(), "label": target.label, "positive": settings.positive,
              "config": config, "rows": rows, "provenance": provenance()}
    record["figure"] = str(confounder_curves(rows, "auroc", folder / f"{name}.png",
                                             f"confounder '{kind}' on {target.label} = {settings.positive}"))
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    record["json"] = str(path)
    return record


def confounders_name(kind: str, data: str) -> str:
    """The default name of an experiment's record: CONFOUNDER-DATASET."""
    return f"{kind}-{slug(data)}"


class _Experiment:
    """One dataset, confounder and seed: which images carry the confounder, and one row per backbone and
    fraction."""

    def __init__(self, dataset, split: dict, positive: dict, kind: str, seed: int):
        self.dataset, self.split, self.positive, self.kind, self.seed = dataset, split, positive, kind, seed
        self.anti_test = self.confounded(split["test"], ~positive["test"])          # every negative confounded

    def confounded(self, samples: list[Sample], which) -> list[Sample]:
        return [Sample(inject(s.image, self.kind, s.key), s.target, s.group, s.key) if w else s
                for s, w in zip(samples, which)]

    def chosen(self, fraction: float) -> dict[str, set[str]]:
        """Keys of the training and validation positives that carry the confounder at ``fraction``."""
        return {s: confounded_set([x.key for x in self.split[s]], self.positive[s], fraction, self.seed)
                for s in ("train", "val")}

    def probe(self, model, spec, source: str, target: EvalTarget, cache, probe: ProbeConfig, size: tuple[int, str]):
        """A function fraction -> (clean, anti-correlated) test scores of a binary linear probe on frozen
        features whose chosen positives carry the confounder."""
        clean = frozen_features(target, self.dataset, source, cache, size=size)
        feats = {s: np.asarray(clean[s].features) for s in self.split}
        # Confounded versions of every positive (train, val) and every negative (test), once.
        tagged = {s: compute_features(model, [inject(x.image, self.kind, x.key)
                                              for x, p in zip(self.split[s], self.positive[s]) if p], spec)
                  for s in ("train", "val")}
        test_anti = compute_features(model, [x.image for x in self.anti_test], spec)

        def learn(fraction: float):
            chosen = self.chosen(fraction)

            def with_confounder(s):
                x = feats[s].copy()
                for j, i in enumerate(np.flatnonzero(self.positive[s])):
                    if self.split[s][i].key in chosen[s]:
                        x[i] = tagged[s][j]
                return x

            xtr, xva, xte, xanti = standardise(with_confounder("train"), with_confounder("val"), feats["test"],
                                               test_anti)
            head = train_probe(xtr, self.positive["train"].astype(np.int64), xva, self.positive["val"].astype(np.int64),
                               probe, 2, seed=self.seed)
            return chosen, predict(head, xte), predict(head, xanti)

        return learn

    def finetune(self, model, card: dict, spec, settings: finetuning.FinetuneConfig, desc: str = "confounders"):
        """A function fraction -> (clean, anti-correlated) test scores of the fine-tuned network, trained where
        the chosen positives carry the confounder."""
        device = default_device()

        def tensor(samples):
            return torch.stack([prepare(s.image, spec) for s in samples]).half()

        def learn(fraction: float):
            chosen = self.chosen(fraction)
            data = {s: tensor(self.confounded(self.split[s], [x.key in chosen[s] for x in self.split[s]]))
                    for s in ("train", "val")}
            result = finetuning.finetune_grid(model, card["backbone"], data["train"],
                                              self.positive["train"].astype(np.int64), data["val"],
                                              self.positive["val"].astype(np.int64), 2, settings, self.seed,
                                              device=device, desc=f"{desc}, confounded fraction {fraction:g}")
            best = result["best_val"]
            return (chosen, finetuning.predict(best, tensor(self.split["test"]), device=device),
                    finetuning.predict(best, tensor(self.anti_test), device=device))

        return learn

    def row(self, learn, fraction: float, source: str, order: int, rule: str, settings: ConfounderSettings,
            n_boot: int) -> dict:
        """Clean and anti-correlated test metrics at ``fraction``, their drop and its permutation test."""
        chosen, scores_clean, scores_anti = learn(fraction)
        y, groups = self.positive["test"].astype(np.int64), self.dataset.groups("test")
        row = {"backbone": source, "backbone_order": order, "input": rule, "fraction": fraction,
               "n_confounded_train": len(chosen["train"]), "n_positive_train": int(self.positive["train"].sum()),
               "clean": metrics_with_ci(y, scores_clean, groups, False, n_boot, self.seed, CLASSES),
               "confounded": metrics_with_ci(y, scores_anti, groups, False, n_boot, self.seed, CLASSES)}
        row["drop"] = {m: _diff(row["clean"][m]["value"], row["confounded"][m]["value"])
                       for m in ("accuracy", "balanced_accuracy", "auroc")}
        reason = (row["clean"]["auroc"].get("evidence") or {}).get("reason")
        if settings.permutations and reason:      # no test where the test patients cannot carry one
            row["permutation_test"] = {"drop": row["drop"]["auroc"], "p_value": None, "insufficient": reason}
        elif settings.permutations:
            row["permutation_test"] = permutation_test(self.positive["test"], ovr_scores(scores_clean)[:, 0],
                                                       ovr_scores(scores_anti)[:, 0], settings.permutations, self.seed,
                                                       groups)
        return row


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 5)
