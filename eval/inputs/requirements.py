"""What a protocol needs of a labelled dataset, checked before any feature is extracted or any network is
trained: each split it reads holds samples, the training split two classes, and the splits that choose
(validation) and report (test) a metric on which it is defined. Degenerate data is a one-line ``ValueError`` that
says what the data lack and what to do, never a NaN, an ``n/a`` row or an error from inside numpy or torch.

A test split with fewer patients than ``eval.measures.evidence`` needs for an interval or a comparison is not
refused: the protocol runs, its records carry point values with "too few test patients", and the command says so
in one warning before it starts (``require_splits``).

Messages name splits, counts and label values, never a patient or a sample (pseudonyms are identifiers too).
"""

from __future__ import annotations

import logging

import numpy as np

from ctssl.eval.inputs.datasets import SPLITS, Dataset
from ctssl.eval.measures.evidence import MIN_PATIENTS, MIN_PATIENTS_PER_CLASS

logger = logging.getLogger(__name__)

MORE_PATIENTS = ("ingest more patients, or give the small splits a larger share (ctssl ingest --set "
                 "splits.train=0.6 --set splits.val=0.2 --set splits.test=0.2)")


def patients(data: Dataset, split: str) -> int:
    """Distinct patients of ``split`` with the label (0 when the split is empty)."""
    return len({s.group for s in data.samples.get(split, [])})


def _per_split(data: Dataset) -> str:
    return ", ".join(f"{s} {patients(data, s)}" for s in SPLITS)


def _values(data: Dataset, split: str) -> list[str]:
    """The label values present in ``split`` (single-label)."""
    return sorted({str(s.target) for s in data.samples.get(split, [])})


def _both_values(data: Dataset, split: str) -> bool:
    """A binary or multi-label AUROC is defined on ``split``: some label column holds both values."""
    if data.multilabel:
        y = np.asarray([s.target for s in data.samples[split]])
        return bool(np.any((y.min(0) == 0) & (y.max(0) == 1)))
    return len(set(_values(data, split)) & set(data.classes)) >= 2


def require_splits(data: Dataset, task: str, splits=SPLITS) -> None:
    """Every split of ``splits`` holds samples with the label; a test split with fewer than
    ``eval.measures.evidence.MIN_PATIENTS`` patients is a warning (``warn_few``)."""
    what = f"label '{data.label}'" if data.label else "images"
    for split in splits:
        if not data.samples.get(split):
            raise ValueError(f"{task} needs patients with {what} in the {split} split, and '{data.spec}' has none "
                             f"there (patients per split: {_per_split(data)}): {MORE_PATIENTS}.")
    if "test" in splits:
        warn_few(task, patients(data, "test"), f"'{data.spec}'")


def warn_few(task: str, n_test: int, where: str) -> None:
    """One warning where the test split has fewer patients than an interval or a comparison needs."""
    if n_test < MIN_PATIENTS:
        logger.warning("%s: the test split of %s has %d patient(s), too few to compare (at least %d, and %d per "
                       "class for AUROC, are needed): its results get point values only, no intervals, p-values or "
                       "verdicts. To compare, %s.", task, where, n_test, MIN_PATIENTS, MIN_PATIENTS_PER_CLASS,
                       MORE_PATIENTS)


def require_classes(data: Dataset, task: str, select: str | None = None, splits=SPLITS) -> None:
    """The training split holds two classes; validation (which chooses by ``select``, when given) and test hold
    samples of training classes, and both values where the metric is an AUROC (binary and multi-label tasks:
    it is undefined on one class)."""
    require_splits(data, task, splits)
    binary = data.multilabel or len(data.classes) == 2
    if not data.multilabel:
        train = _values(data, "train")
        if len(train) < 2:
            others = [n for n in data.label_names if n != data.label]
            hint = f"choose another label ({others})" if others else "choose another label"
            raise ValueError(f"Label '{data.label}' has one value ('{train[0]}') in the training split of "
                             f"'{data.spec}': there is nothing to tell apart; {hint}, or add patients with other "
                             f"values.")
    for split, role in (("val", "chooses the settings by"), ("test", "reports")):
        if split not in splits:
            continue
        seen = _values(data, split) if not data.multilabel else ["0", "1"]
        if not data.multilabel and not set(seen) & set(data.classes):
            raise ValueError(f"No {split} sample of '{data.spec}' has a '{data.label}' value seen in training "
                             f"({split}: {seen}, training: {data.classes}): {MORE_PATIENTS}.")
        metric = "AUROC" if split == "test" and binary else (select or "").replace("_", " ")
        if metric.lower() == "auroc" and binary and not _both_values(data, split):
            fix = (" or choose by accuracy (--select accuracy / --set finetune.select=accuracy)"
                   if split == "val" else "")
            raise ValueError(f"The {split} split of '{data.spec}' holds one value of '{data.label}' ({seen}, "
                             f"{patients(data, split)} patient(s)), and {task} {role} its AUROC, which needs "
                             f"both: {MORE_PATIENTS}{fix}.")
