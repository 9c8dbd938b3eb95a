"""Hidden representations before and after fine-tuning, as Juodelyte, Jiménez-Sánchez and Cheplygina
measured them ("Revisiting Hidden Representations in Transfer Learning for Medical Imaging", TMLR 2024,
arXiv 2302.08272): ImageNet vs RadImageNet weights fine-tuned on a medical task with patient-grouped
cross-validation; for each fold, the mean CCA between the pretrained and the fine-tuned network at
``conv1`` and at the end of each ResNet stage, and the prediction similarity of the sources' fine-tuned
models against its chance level.

One job = one backbone x one fold (``hidden_run``):

1. every labelled sample of the dataset, whatever its ingest split, in ``folds`` patient-grouped folds
   (``eval.folds``: test = fold f, validation = fold f + 1, training = the rest; the same folds for
   every backbone);
2. fine-tuning with the sweep's ``finetune`` settings (the same lr x wd grid and epoch budget for every
   backbone, chosen on the fold's validation patients), test predictions kept (``eval.runs``; paired
   comparisons between backbones on the same fold give the prediction similarity and its chance level
   ``acc_a acc_b + (1 - acc_a)(1 - acc_b)``);
3. activations of the pretrained and the fine-tuned network on up to ``images`` test images of the fold, at
   every layer of ``layer_modules(model, conv1=True)``; datapoints are spatial positions (about
   ``positions`` of them, the same positions for both networks), each repeat draws ``channels`` random
   channels (the same ones on both sides: channel i of the fine-tuned network is channel i of the pretrained
   one) and takes CCA (``spatial_cca``), ``repeats`` times.

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

from ctssl.eval.features.layers import spatial_activations
from ctssl.eval.measures.similarity import spatial_cca

logger = logging.getLogger(__name__)


@dataclass
class HiddenSettings:
    folds: int = 5                 # patient-grouped folds (the study: 5)
    fold_seed: int = 0             # how patients are dealt into folds (the same for every backbone)
    positions: int = 10_000        # spatial positions as CCA datapoints (the study: about 10,000)
    channels: int = 64             # random channels per side and repeat (the study: 64)
    repeats: int = 5               # repeats of the channel draw (the study: 5)
    images: int = 256              # test images of the fold whose activations are compared


def pooled_samples(data) -> tuple[list, np.ndarray, np.ndarray]:
    """Every labelled sample of every split (images loaded), its targets and patients; samples of a class
    the dataset does not list (-1) are left out."""
    from ctssl.eval.inputs.datasets import SPLITS

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
    from ctssl.eval.inputs.spec import prepare_batch

    return torch.cat([prepare_batch([s.image for s in samples[i:i + block]], spec).half()
                      for i in range(0, len(samples), block)])


def hidden_run(data_spec: str, label: str, source: str, order: int, fold: int, settings: HiddenSettings,
               finetune_cfg, out: str | Path, image_size: int = 0, grey_window: str = "wide",
               n_boot: int = 1000) -> dict:
    """One backbone x one fold of the study (module docstring); returns its run record (skipped if done)."""
    from ctssl.eval.inputs.datasets import open_dataset
    from ctssl.eval.inputs.folds import fold_indices, patient_folds
    from ctssl.eval.inputs.spec import input_spec
    from ctssl.eval.measures.classification import metrics_with_ci
    from ctssl.eval.records.comparisons import headline
    from ctssl.eval.records.provenance import provenance
    from ctssl.eval.records.store import RunStore, run_id
    from ctssl.eval.inputs.sources import load_backbone
    from ctssl.finetune.finetune import finetune_grid, predict

    if finetune_cfg.truncate:
        raise ValueError("the hidden-representation study fine-tunes the whole network (finetune.truncate: 0)")
    store = RunStore(out)
    data = open_dataset(data_spec, label)
    backbone, card = load_backbone(source)
    spec = input_spec(card, data.kind, image_size, grey_window)
    config = {"finetune": asdict(finetune_cfg), "hidden": asdict(settings)}
    rid = run_id(task="hidden", source=source, weights=card.get("weights_sha256"), dataset=data.fingerprint,
                 label=label, fold=fold, config=config, input=spec.to_dict())
    if store.done(rid):
        return store.load(rid)
    samples, y, groups = pooled_samples(data)
    folds = patient_folds(groups, settings.folds, settings.fold_seed)
    idx = fold_indices(folds, fold, settings.folds)
    x = prepare_all(samples, spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = finetune_grid(backbone, card["backbone"], x[idx["train"]], y[idx["train"]], x[idx["val"]],
                           y[idx["val"]], len(data.classes), finetune_cfg, fold, data.multilabel, device)
    test = idx["test"]
    scores = predict(result["best_val"], x[test], data.multilabel, device=device)
    metrics = metrics_with_ci(y[test], scores, groups[test], data.multilabel, n_boot, fold)
    picks = test[np.linspace(0, len(test) - 1, min(settings.images, len(test))).round().astype(int)]
    before = spatial_activations(backbone, x[picks], settings.positions, fold, device=device)
    after = spatial_activations(result["best_val"].export_backbone, x[picks], settings.positions, fold, device=device)
    layers = {}
    for name in before:
        try:
            layers[name] = spatial_cca(before[name], after[name], settings.channels, settings.repeats, fold)
        except ValueError as err:          # e.g. a layer constant on these images: say so, keep the rest
            layers[name] = {"mean_cca": None, "undefined": str(err)}
    record = {"run_id": rid, "task": "hidden", "variant": f"fold {fold}", "backbone": source, "backbone_order": order,
              "backbone_card": {k: v for k, v in card.items() if k != "config"}, "dataset": data.describe(),
              "fraction": 1.0, "seed": fold, "fold": fold, "folds": settings.folds,
              "n_train": int(len(idx["train"])), "n_val": int(len(idx["val"])), "n_test": int(len(test)),
              "patients": {s: int(len(np.unique(groups[i]))) for s, i in idx.items()},
              "config": config, "input": spec.to_dict(), "test": metrics,
              "chosen": {"lr": result["lr"], "weight_decay": result["weight_decay"]}, "grid": result["grid"],
              "best_epoch": result["best_epoch"], "cca_pretrained_vs_finetuned": layers,
              "cca_images": int(len(picks)), "provenance": provenance()}
    store.save(record, [samples[i].key for i in test], groups[test], y[test], scores)
    logger.info("hidden %s fold %d: %s; mean CCA %s", source, fold, headline(record),
                {k: v.get("mean_cca") for k, v in layers.items()})
    return record
