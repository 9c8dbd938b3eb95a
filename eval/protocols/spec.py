"""What a protocol evaluates, and the parts of a run record the frozen-feature protocols share.

``EvalTarget``: backbones on one label of a dataset, each backbone seeing the images as it was pretrained
(``eval.inputs.spec``); ``EvalSpec`` adds label fractions x seeds. Features are extracted once per backbone and split
(``eval.features.cache``) and shared by every fraction, seed, grid point and k. Training data is the ``train``
split subsampled by patient (``eval.inputs.folds.subsample``), selection uses ``val``, and numbers are reported
on ``test`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctssl.eval.features.cache import Features, cached_features
from ctssl.eval.inputs.datasets import DEFAULT_LABEL, Dataset
from ctssl.eval.inputs.spec import GREY_WINDOW
from ctssl.eval.measures.classification import BOOTSTRAP_RESAMPLES
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import run_id


@dataclass
class EvalTarget:
    data: str = ""                         # dataset spec (eval.inputs.datasets): shards, imagefolder:, .csv, .npz
    label: str = DEFAULT_LABEL             # label key; a+b+c for multi-label
    backbones: list[str] = field(default_factory=list)   # sources (eval.inputs.sources); the first is the baseline
    image_size: int = 0                    # 0: each backbone at its pretraining size (eval.inputs.spec)
    grey_window: str = GREY_WINDOW         # CT window of backbones pretrained on grey or natural pictures
    n_boot: int = BOOTSTRAP_RESAMPLES      # bootstrap resamples of each CI


@dataclass
class EvalSpec(EvalTarget):
    fractions: list[float] = field(default_factory=lambda: [1.0])   # of the training patients with labels
    seeds: list[int] = field(default_factory=lambda: [0])


def backbone_orders(spec: EvalTarget, orders: list[int] | None) -> list[tuple[int, str]]:
    """(order, source) of each backbone: its position, or ``orders`` (positions in a larger sweep)."""
    return list(zip(orders if orders is not None else range(len(spec.backbones)), spec.backbones, strict=True))


def frozen_features(spec: EvalSpec, data: Dataset, source: str, cache: str | Path) -> dict[str, Features]:
    """Features of the three splits under ``source`` (cached in ``cache``)."""
    return cached_features(source, data, ["train", "val", "test"], spec.image_size, cache, grey_window=spec.grey_window)


def run_record(task: str, source: str, order: int, feats, data: Dataset, fraction: float, seed: int, config: dict,
               n_train: int, metrics: dict, rid: str, **extra) -> dict:
    """The record of one frozen-feature run (``eval.records.store``)."""
    backbone = feats["test"].provenance["backbone"]
    return {"run_id": rid, "task": task, "backbone": source, "backbone_order": order,
            "backbone_card": backbone, "dataset": data.describe(), "fraction": fraction, "seed": seed,
            "n_train": n_train, "n_val": len(feats["val"].targets), "n_test": len(feats["test"].targets),
            "config": config, "input": feats["test"].provenance["input"], "test": metrics,
            "feature_cache": feats["test"].provenance["cache"], "provenance": provenance(), **extra}


def run_identity(task, source, feats, data, fraction, seed, config) -> str:
    """The run id of a frozen-feature run: what defines its numbers."""
    return run_id(task=task, source=source, weights=feats["test"].provenance["backbone"].get("weights_sha256"),
                  dataset=data.fingerprint, label=data.label, fraction=fraction, seed=seed, config=config,
                  input=feats["test"].provenance["input"])
