"""What a protocol evaluates (``EvalSpec``: dataset, label, backbones, label fractions, seeds, input size,
feature cache) and the parts of a run record every frozen-feature protocol shares.

Features are extracted once per backbone and split (``eval.features.cache``) and shared by every fraction,
seed, grid point and k. Training data is the ``train`` split subsampled by patient
(``eval.inputs.folds.subsample``), selection uses ``val``, and numbers are reported on ``test`` only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.datasets import Dataset
from ctssl.eval.features.cache import cached_features
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import run_id

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
