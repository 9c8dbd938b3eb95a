"""Fine-tuning (``finetune.finetune``) swept over backbones x label fractions x seeds, with the run records of
``eval.records.store``.

Inputs of each split are prepared once per backbone (its card decides windows and normalisation); every
fraction and seed reuses them. Each training gives two records, variants ``best_val`` (the epoch chosen on
validation) and ``final`` (the last epoch), both on the test split. Every record holds the chosen learning rate
and weight decay and the whole grid; a full network's also its "feature reuse" (the RadNet-12M study's measure:
RBF CKA between the pretrained and the fine-tuned weights of the first convolutions,
``eval.measures.similarity.weight_similarity``). With ``task="truncated"`` (the truncated-transfer recipe) the
variants are prefixed with the cut (``stage 2 best_val``, ``full final``) and the record holds the cut and the
trainable parameter count. ``save_model`` exports each best-validation full network beside the records.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ctssl.eval.features.extract import default_device
from ctssl.eval.features.layers import conv_weights
from ctssl.eval.inputs.datasets import Dataset, open_dataset
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.inputs.requirements import require_classes
from ctssl.pretrain.sources import load_backbone
from ctssl.eval.inputs.spec import InputSpec, input_spec, prepare
from ctssl.eval.measures.classification import metrics_with_ci, selection_metric
from ctssl.eval.measures.similarity import weight_similarity
from ctssl.eval.protocols.spec import EvalSpec, announce, backbone_orders, input_size, pretraining_overlap
from ctssl.eval.records.comparisons import headline, main_metric
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import RunStore, load_names, run_id
from ctssl.finetune.finetune import FinetuneConfig, finetune_grid, predict

logger = logging.getLogger(__name__)
VARIANTS = ("best_val", "final")


def cut_name(truncate: int) -> str:
    """The cut's name in variants and reports: ``stage k``, or ``full``."""
    return f"stage {truncate}" if truncate else "full"


class _Prepared:
    """The dataset's splits as float16 backbone inputs (N, C, S, S), prepared once, when first needed."""

    def __init__(self, data: Dataset, spec: InputSpec):
        self.data, self.spec, self.tensors = data, spec, {}

    def __getitem__(self, split: str) -> torch.Tensor:
        if split not in self.tensors:
            self.tensors[split] = torch.stack([prepare(s.image, self.spec) for s in self.data.split(split)]).half()
        return self.tensors[split]


def run_finetune(spec: EvalSpec, settings: FinetuneConfig, out: str | Path, task: str = "finetune",
                 orders: list[int] | None = None) -> list[dict]:
    """Fine-tuning per backbone x fraction x seed (module docstring); finished runs are loaded, not recomputed.
    ``orders``: the backbones' positions in a larger sweep."""
    out, store = Path(out), RunStore(out)
    prefix = f"{cut_name(settings.truncate)} " if task == "truncated" else ""
    data = open_dataset(spec.data, spec.label)
    require_classes(data, "fine-tuning", selection_metric(settings, data.multilabel, len(data.classes)))
    records, (size, why), names = [], input_size(spec), load_names(out)
    overlap = pretraining_overlap(logger, task, spec.backbones, data, spec.allow_pretraining_overlap, names)
    pairs = backbone_orders(spec, orders)
    for index, (order, source) in enumerate(pairs):
        backbone, card = load_backbone(source)
        inputs = input_spec(card, data.kind, size, spec.grey_window, why)
        prepared = _Prepared(data, inputs)
        for fraction in spec.fractions:
            for seed in spec.seeds:
                config = {**asdict(settings), "seed": seed}
                ids = {v: run_id(task=task, variant=prefix + v, source=source, weights=card.get("weights_sha256"),
                                 dataset=data.fingerprint, label=data.label, fraction=fraction, seed=seed,
                                 config=config, input=inputs.identity()) for v in VARIANTS}
                if all(store.done(i) for i in ids.values()):
                    records += [store.load(ids[v]) for v in VARIANTS]
                    continue
                announce(logger, task, source, index, len(pairs), names, fraction=fraction, seed=seed,
                         size=f"{inputs.size} px", grid=f"{len(settings.lrs)} lr x {len(settings.weight_decays)} wd")
                desc = f"{task} {names.get(source) or source}, fraction {fraction:g}, seed {seed}"
                run = _train(backbone, card, prepared, data, fraction, seed, settings, desc)
                if settings.save_model and settings.truncate == 0:
                    _export(run["result"], card, source, data, fraction, seed, config, out / "models" / ids["best_val"])
                base = {"task": task, "backbone": source, "backbone_order": order,
                        "backbone_card": {k: v for k, v in card.items() if k != "config"}, "dataset": data.describe(),
                        "fraction": fraction, "seed": seed, "config": config, "input": inputs.to_dict(),
                        "pretraining_overlap": overlap[source]}
                for variant in VARIANTS:
                    record = _record(run, variant, prefix, ids[variant], base, settings, prepared, data, spec.n_boot,
                                     store)
                    logger.info("%s %s (%s) fraction %g seed %d, lr %g chosen: %s", task, names.get(source) or source,
                                prefix + variant, fraction, seed, run["result"]["lr"], headline(record))
                    records.append(record)
    return records


def _train(backbone, card: dict, prepared: _Prepared, data: Dataset, fraction: float, seed: int,
           settings: FinetuneConfig, desc: str = "finetune") -> dict:
    """The lr x wd grid on ``fraction`` of the training patients, chosen on validation; with the feature reuse
    of a full network and the trainable parameters."""
    train_y, val_y = data.targets("train"), data.targets("val")
    idx = subsample(train_y, data.groups("train"), fraction, seed)
    idx = idx[train_y[idx] >= 0] if not data.multilabel else idx
    val_keep = np.ones(len(val_y), bool) if data.multilabel else val_y >= 0
    result = finetune_grid(backbone, card["backbone"], prepared["train"][idx], train_y[idx],
                           prepared["val"][val_keep], val_y[val_keep], len(data.classes), settings, seed,
                           data.multilabel, default_device(), desc)
    reuse = {} if settings.truncate else weight_similarity(conv_weights(backbone),
                                                          conv_weights(result["best_val"].export_backbone))
    return {"result": result, "n_train": len(idx), "n_val": int(val_keep.sum()), "feature_reuse": reuse,
            "parameters": sum(p.numel() for p in result["best_val"].parameters())}


def _export(result: dict, card: dict, source: str, data: Dataset, fraction: float, seed: int, config: dict,
            folder: Path) -> None:
    """The best-validation backbone as pretraining exports one (safetensors and card), for e.g. ctssl similarity."""
    from ctssl.pretrain.checkpoint import export_backbone

    folder.mkdir(parents=True, exist_ok=True)
    export_backbone(result["best_val"], folder, {
        **{k: v for k, v in card.items() if k not in ("source", "weights_sha256")},
        "method": f"{card.get('method')} + fine-tuned ({data.label}, fraction {fraction:g}, seed {seed})",
        "finetuned_from": source, "finetune": config, "best_epoch": result["best_epoch"],
        "chosen": {"lr": result["lr"], "weight_decay": result["weight_decay"]}})


def _record(run: dict, variant: str, prefix: str, rid: str, base: dict, settings: FinetuneConfig,
            prepared: _Prepared, data: Dataset, n_boot: int, store: RunStore) -> dict:
    """Variant ``variant``'s test predictions and record, saved to the store."""
    result, seed = run["result"], base["seed"]
    test, test_y, test_groups = data.split("test"), data.targets("test"), data.groups("test")
    scores = predict(result[variant], prepared["test"], device=default_device())
    record = {"run_id": rid, "task": base["task"], "variant": prefix + variant,
              **{k: base[k] for k in ("backbone", "backbone_order", "backbone_card", "dataset", "fraction", "seed",
                                      "pretraining_overlap")},
              "n_train": run["n_train"], "n_val": run["n_val"], "n_test": len(test),
              "n_test_patients": int(len(np.unique(test_groups))), "config": base["config"],
              "input": base["input"],
              "test": metrics_with_ci(test_y, scores, test_groups, data.multilabel, n_boot, seed, data.classes),
              "history": result["history"], "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
              "select": result["select"], "chosen": {"lr": result["lr"], "weight_decay": result["weight_decay"]},
              "grid": result["grid"], "cut": settings.truncate, "parameters": run["parameters"],
              "feature_reuse": run["feature_reuse"], "provenance": provenance()}
    if variant == "final" and settings.noise_sigmas:
        record["noise"] = _noise_sweep(result[variant], prepared["test"], test_y, test_groups, data, settings,
                                       n_boot, seed)
    store.save(record, [s.key for s in test], test_groups, test_y, scores)
    return record


def _noise_sweep(model, x, test_y, test_groups, data: Dataset, settings: FinetuneConfig, n_boot: int,
                 seed: int) -> list[dict]:
    """The final model's test metric with Gaussian noise of each ``settings.noise_sigmas`` added to its
    normalised inputs (the RadNet-12M study's test-time robustness sweep); the same noise for every backbone."""
    points = []
    for sigma in settings.noise_sigmas:
        generator = torch.Generator().manual_seed(seed)
        scores = predict(model, x, device=default_device(), noise=sigma, generator=generator)
        measured = metrics_with_ci(test_y, scores, test_groups, data.multilabel, n_boot, seed, data.classes)
        metric = main_metric({"test": measured, "dataset": data.describe()})
        points.append({"sigma": sigma, "metric": metric, metric: measured[metric]})
    return points
