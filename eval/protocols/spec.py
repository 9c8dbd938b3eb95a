"""What a protocol evaluates, and the parts of a run record the frozen-feature protocols share.

``EvalTarget``: backbones on one label of a dataset, each backbone seeing the images as it was pretrained
(``eval.inputs.spec``), all of one comparison at one input size (``input_size``) unless asked otherwise;
``EvalSpec`` adds label fractions x seeds. Features are extracted once per backbone and split
(``eval.features.cache``) and shared by every fraction, seed, grid point and k. Training data is the ``train``
split subsampled by patient (``eval.inputs.folds.subsample``), selection uses ``val``, and numbers are reported
on ``test`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctssl.eval.features.cache import Features, cached_features
from ctssl.eval.inputs.datasets import DEFAULT_LABEL, Dataset
from ctssl.eval.inputs.overlap import check_overlap, describe
from ctssl.pretrain.sources import backbone_card
from ctssl.eval.inputs.spec import GREY_WINDOW, comparison_size
from ctssl.eval.measures.classification import BOOTSTRAP_RESAMPLES
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import run_id


@dataclass
class EvalTarget:
    data: str = ""                         # dataset spec (eval.inputs.datasets): shards, imagefolder:, .csv, .npz
    label: str = DEFAULT_LABEL             # label key; a+b+c for multi-label
    backbones: list[str] = field(default_factory=list)   # sources (pretrain.sources); the first is the baseline
    image_size: int = 0                    # 0: one size for all, the largest pretraining size among them
    own_size: bool = False                 # each backbone at its own pretraining size instead (an ablation)
    grey_window: str = GREY_WINDOW         # CT window of backbones pretrained on grey or natural pictures
    n_boot: int = BOOTSTRAP_RESAMPLES      # bootstrap resamples of each CI
    comparison: list[str] = field(default_factory=list)   # every backbone of the comparison these belong to
                                           # (a sweep job's one backbone: the sweep's); []: backbones. Sets the size
    allow_pretraining_overlap: bool = False   # evaluate a backbone on val/test patients it was pretrained on
                                           # (eval.inputs.overlap), saying so in every record and the report


def input_size(target: EvalTarget) -> tuple[int, str]:
    """(size, why) of every backbone's input in ``target``'s comparison (``eval.inputs.spec.comparison_size``)."""
    cards = [backbone_card(source) for source in (target.comparison or target.backbones)]
    return comparison_size(cards, target.image_size, target.own_size)


@dataclass
class EvalSpec(EvalTarget):
    fractions: list[float] = field(default_factory=lambda: [1.0])   # of the training patients with labels
    seeds: list[int] = field(default_factory=lambda: [0])


def backbone_orders(spec: EvalTarget, orders: list[int] | None) -> list[tuple[int, str]]:
    """(order, source) of each backbone: its position, or ``orders`` (positions in a larger sweep)."""
    return list(zip(orders if orders is not None else range(len(spec.backbones)), spec.backbones, strict=True))


def frozen_features(spec: EvalSpec, data: Dataset, source: str, cache: str | Path, splits=("train", "val", "test"),
                    size: tuple[int, str] | None = None) -> dict[str, Features]:
    """Features of ``splits`` under ``source`` (cached in ``cache``) at the comparison's input ``size``."""
    size, why = size or input_size(spec)
    return cached_features(source, data, list(splits), size, cache, grey_window=spec.grey_window, size_rule=why)


def pretraining_overlap(log, task: str, backbones: list[str], data, allow: bool, names: dict,
                        patients: dict[str, set] | None = None) -> dict[str, dict]:
    """Each backbone's pretraining patients against ``data``'s validation and test patients (or ``patients``:
    split -> the patients it evaluates on) (``eval.inputs.overlap``), before anything is extracted: refused on an
    overlap unless ``allow``; logged."""
    status = check_overlap([(s, backbone_card(s)) for s in backbones], patients or data.patients(),
                           data.salt_check or None, data.spec, allow, names)
    for source, st in status.items():
        level = log.warning if st.get("allowed") else log.info
        level("%s: backbone %s, pretraining patients %s%s", task, names.get(source) or source, describe(st),
              " (allowed: --allow-pretraining-overlap)" if st.get("allowed") else "")
    return status


def announce(log, task: str, source: str, index: int, count: int, names: dict, **where) -> None:
    """A log line naming the run about to start: task, backbone (its readable name, i/n), then ``where``
    (fraction, seed, k, learning rate, ...)."""
    extra = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in where.items())
    log.info("%s: backbone %s (%d/%d)%s", task, names.get(source) or source, index + 1, count, extra)


def run_record(task: str, source: str, order: int, feats, data: Dataset, fraction: float, seed: int, config: dict,
               n_train: int, metrics: dict, rid: str, **extra) -> dict:
    """The record of one frozen-feature run (``eval.records.store``)."""
    backbone = feats["test"].provenance["backbone"]
    return {"run_id": rid, "task": task, "backbone": source, "backbone_order": order,
            "backbone_card": backbone, "dataset": data.describe(), "fraction": fraction, "seed": seed,
            "n_train": n_train, "n_val": len(feats["val"].targets) if "val" in feats else 0,
            "n_test": len(feats["test"].targets), "n_test_patients": int(len(set(feats["test"].groups.tolist()))),
            "config": config, "input": feats["test"].provenance["input"], "test": metrics,
            "feature_cache": feats["test"].provenance["cache"], "provenance": provenance(), **extra}


def run_identity(task, source, feats, data, fraction, seed, config) -> str:
    """The run id of a frozen-feature run: what defines its numbers."""
    return run_id(task=task, source=source, weights=feats["test"].provenance["backbone"].get("weights_sha256"),
                  dataset=data.fingerprint, label=data.label, fraction=fraction, seed=seed, config=config,
                  input={k: v for k, v in feats["test"].provenance["input"].items()
                         if k not in ("rule", "pretrained_size")})
