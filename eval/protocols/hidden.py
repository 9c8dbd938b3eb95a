"""Hidden representations before and after fine-tuning, as Juodelyte, Jiménez-Sánchez and Cheplygina
measured them ("Revisiting Hidden Representations in Transfer Learning for Medical Imaging", TMLR 2024,
arXiv 2302.08272): ImageNet vs RadImageNet weights fine-tuned on a medical task with patient-grouped
cross-validation; for each fold, the mean CCA between the pretrained and the fine-tuned network at
``conv1`` and at the end of each ResNet stage, and the prediction similarity of the sources' fine-tuned
models against its chance level.

``run_hidden(spec, settings, finetune, out)``, for each backbone and fold:

1. every labelled sample of the dataset, whatever its ingest split, in ``folds`` patient-grouped folds
   (``eval.inputs.folds``: test = fold f, validation = fold f + 1, training = the rest; the same folds for
   every backbone);
2. fine-tuning with the sweep's ``finetune`` settings (the same lr x wd grid and epoch budget for every
   backbone, chosen on the fold's validation patients), test predictions kept (``eval.records``; paired
   comparisons between backbones on the same fold give the prediction similarity and its chance level
   ``acc_a acc_b + (1 - acc_a)(1 - acc_b)``);
3. activations of the pretrained and the fine-tuned network on up to ``images`` test images of the fold, at
   every layer of ``layer_modules(model, conv1=True)``; datapoints are spatial positions (about
   ``positions`` of them, the same positions for both networks), each repeat draws ``channels`` random
   channels (the same ones on both sides: channel i of the fine-tuned network is channel i of the pretrained
   one) and takes CCA (``eval.measures.similarity.spatial_cca``), ``repeats`` times.

Two means are recorded: the plain mean of all canonical correlations (``mean_cca``, what the report shows)
and google/svcca's ``get_cca_similarity`` "mean", the mean of the leading coefficients that hold 98% of
their sum (``svcca_mean98``; it reads higher).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ctssl.eval.features.extract import default_device
from ctssl.eval.features.layers import spatial_activations
from ctssl.eval.inputs.datasets import SPLITS, Dataset, open_dataset
from ctssl.eval.inputs.folds import fold_indices, patient_folds
from ctssl.pretrain.sources import load_backbone
from ctssl.eval.inputs.spec import input_spec, prepare_batch
from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.measures.similarity import spatial_cca
from ctssl.eval.protocols.spec import EvalSpec, backbone_orders, input_size, pretraining_overlap
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import RunStore, load_names, run_id
from ctssl.finetune.finetune import FinetuneConfig, finetune_grid, predict

logger = logging.getLogger(__name__)


@dataclass
class HiddenSettings:
    folds: int = 5                 # patient-grouped folds (the study: 5)
    fold_seed: int = 0             # how patients are dealt into folds (the same for every backbone)
    positions: int = 10_000        # spatial positions as CCA datapoints (the study: about 10,000)
    channels: int = 64             # random channels per side and repeat (the study: 64)
    repeats: int = 5               # repeats of the channel draw (the study: 5)
    images: int = 256              # test images of the fold whose activations are compared


def pooled_samples(data: Dataset) -> tuple[list, np.ndarray, np.ndarray]:
    """Every labelled sample of every split (images loaded), its targets and patients; samples of a class
    the dataset does not list (-1) are left out."""
    samples, targets = [], []
    for split in SPLITS:
        if data.has(split):
            samples += data.split(split)
            targets.append(data.targets(split))
    y = np.concatenate(targets)
    if not data.multilabel:
        keep = y >= 0
        samples, y = [s for s, k in zip(samples, keep) if k], y[keep]
    return samples, y, np.asarray([s.group for s in samples])


def prepare_all(samples: list, spec, block: int = 256) -> torch.Tensor:
    """(N, C, S, S) float16 inputs of ``samples`` (prepared in blocks, batched windowing for CT)."""
    return torch.cat([prepare_batch([s.image for s in samples[i:i + block]], spec).half()
                      for i in range(0, len(samples), block)])


def run_hidden(spec: EvalSpec, settings: HiddenSettings, finetune: FinetuneConfig, out: str | Path,
               folds: list[int] | None = None, orders: list[int] | None = None) -> list[dict]:
    """The study (module docstring) for every backbone of ``spec`` and every fold (or ``folds``); one run record
    per backbone and fold, finished ones loaded. ``orders``: the backbones' positions in a larger sweep."""
    if finetune.truncate:
        raise ValueError("the hidden-representation study fine-tunes the whole network (finetune.truncate: 0)")
    store = RunStore(out)
    data = open_dataset(spec.data, spec.label)
    config = {"finetune": asdict(finetune), "hidden": asdict(settings)}
    records, (size, why) = [], input_size(spec)
    # Every patient is a test patient of some fold.
    overlap = pretraining_overlap(logger, "hidden", spec.backbones, data, spec.allow_pretraining_overlap,
                                  load_names(out), {"test": set().union(*data.patients().values())})
    for order, source in backbone_orders(spec, orders):
        backbone, card = load_backbone(source)
        inputs = input_spec(card, data.kind, size, spec.grey_window, why)
        pooled = None
        for fold in range(settings.folds) if folds is None else folds:
            rid = run_id(task="hidden", source=source, weights=card.get("weights_sha256"), dataset=data.fingerprint,
                         label=spec.label, fold=fold, config=config, input=inputs.identity())
            if store.done(rid):
                records.append(store.load(rid))
                continue
            if pooled is None:
                samples, y, groups = pooled_samples(data)
                pooled = samples, y, groups, prepare_all(samples, inputs)
            sizes, results, test, scores = _fold(backbone, card, pooled, fold, settings, finetune, data, spec.n_boot)
            record = {"run_id": rid, "task": "hidden", "variant": f"fold {fold}", "backbone": source,
                      "backbone_order": order, "backbone_card": {k: v for k, v in card.items() if k != "config"},
                      "dataset": data.describe(), "fraction": 1.0, "seed": fold, "fold": fold,
                      "folds": settings.folds, **sizes, "config": config, "input": inputs.to_dict(), **results,
                      "pretraining_overlap": overlap[source], "provenance": provenance()}
            samples, y, groups, _ = pooled
            store.save(record, [samples[i].key for i in test], groups[test], y[test], scores)
            logger.info("hidden %s fold %d: %s; mean CCA %s", source, fold, headline(record),
                        {k: v.get("mean_cca") for k, v in record["cca_pretrained_vs_finetuned"].items()})
            records.append(record)
    return records


def _fold(backbone, card: dict, pooled, fold: int, settings: HiddenSettings, finetune: FinetuneConfig, data: Dataset,
          n_boot: int):
    """Fine-tuning on one fold, its test metrics and the CCA of each layer before and after: (sizes, results,
    test indices, test scores)."""
    samples, y, groups, x = pooled
    idx = fold_indices(patient_folds(groups, settings.folds, settings.fold_seed), fold, settings.folds)
    device = default_device()
    result = finetune_grid(backbone, card["backbone"], x[idx["train"]], y[idx["train"]], x[idx["val"]],
                           y[idx["val"]], len(data.classes), finetune, fold, data.multilabel, device,
                           f"hidden {card.get('source')}, fold {fold}")
    test = idx["test"]
    scores = predict(result["best_val"], x[test], device=device)
    picks = test[np.linspace(0, len(test) - 1, min(settings.images, len(test))).round().astype(int)]
    before = spatial_activations(backbone, x[picks], settings.positions, fold, device=device)
    after = spatial_activations(result["best_val"].export_backbone, x[picks], settings.positions, fold, device=device)
    layers = {}
    for name in before:
        try:
            layers[name] = spatial_cca(before[name], after[name], settings.channels, settings.repeats, fold)
        except ValueError as err:          # e.g. a layer constant on these images: say so, keep the rest
            layers[name] = {"mean_cca": None, "undefined": str(err)}
    sizes = {"n_train": int(len(idx["train"])), "n_val": int(len(idx["val"])), "n_test": int(len(test)),
             "patients": {s: int(len(np.unique(groups[i]))) for s, i in idx.items()}}
    results = {"test": metrics_with_ci(y[test], scores, groups[test], data.multilabel, n_boot, fold, data.classes),
               "chosen": {"lr": result["lr"], "weight_decay": result["weight_decay"]}, "grid": result["grid"],
               "best_epoch": result["best_epoch"], "cca_pretrained_vs_finetuned": layers, "cca_images": int(len(picks))}
    return sizes, results, test, scores
