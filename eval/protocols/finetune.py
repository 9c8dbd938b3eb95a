"""Fine-tuning swept over backbones x label fractions x seeds, with the records of ``eval.runs``.

Inputs of each split are prepared once per backbone (its card decides windows and
normalisation); every fraction and seed reuses them. Each training gives two records, variants
``best_val`` (the epoch chosen on validation) and ``final`` (the last epoch), both on the test split.
Every record holds the chosen learning rate and weight decay and the whole grid; a full network's also
its "feature reuse" (the RadNet-12M study's measure: RBF CKA between the pretrained and the fine-tuned
weights of the first convolutions, ``eval.measures.similarity.weight_similarity``). With ``task="truncated"``
(the truncated-transfer recipe) the variants are prefixed with the cut (``stage 2 best_val``, ``full
final``) and the record holds the cut and the trainable parameter count.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ctssl.eval.features.layers import conv_weights
from ctssl.eval.inputs.datasets import open_dataset
from ctssl.eval.measures.similarity import weight_similarity
from ctssl.eval.inputs.spec import input_spec, prepare
from ctssl.eval.inputs.folds import subsample
from ctssl.eval.measures.classification import metrics_with_ci
from ctssl.eval.protocols.spec import EvalSpec
from ctssl.eval.records.comparisons import headline
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import RunStore, run_id
from ctssl.eval.inputs.sources import load_backbone
from ctssl.finetune.finetune import FinetuneConfig, finetune_grid, predict

logger = logging.getLogger(__name__)
VARIANTS = ("best_val", "final")


def cut_name(truncate: int) -> str:
    return f"stage {truncate}" if truncate else "full"


def finetune_runs(spec: EvalSpec, cfg: FinetuneConfig, out: str | Path, task: str = "finetune") -> list[dict]:
    out, store = Path(out), RunStore(out)
    prefix = f"{cut_name(cfg.truncate)} " if task == "truncated" else ""
    data = open_dataset(spec.dataset, spec.label)
    num_outputs = len(data.classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    records = []
    for position, source in enumerate(spec.backbones):
        order = spec.order(position)
        backbone, card = load_backbone(source)
        inputs = input_spec(card, data.kind, spec.image_size, spec.grey_window)
        tensors = {}

        def split_tensor(split):
            if split not in tensors:
                tensors[split] = torch.stack([prepare(s.image, inputs) for s in data.split(split)]).half()
            return tensors[split]

        for fraction in spec.fractions:
            for seed in spec.seeds:
                config = {**asdict(cfg), "seed": seed}
                ids = {v: run_id(task=task, variant=prefix + v, source=source, weights=card.get("weights_sha256"),
                                 dataset=data.fingerprint, label=data.label, fraction=fraction, seed=seed,
                                 config=config, input=inputs.to_dict()) for v in VARIANTS}
                if all(store.done(i) for i in ids.values()):
                    records += [store.load(ids[v]) for v in VARIANTS]
                    continue
                train_y, val_y = data.targets("train"), data.targets("val")
                idx = subsample(train_y, data.groups("train"), fraction, seed)
                idx = idx[train_y[idx] >= 0] if not data.multilabel else idx
                val_keep = np.ones(len(val_y), bool) if data.multilabel else val_y >= 0
                result = finetune_grid(backbone, card["backbone"], split_tensor("train")[idx], train_y[idx],
                                       split_tensor("val")[val_keep], val_y[val_keep], num_outputs, cfg, seed,
                                       data.multilabel, device)
                test = data.split("test")
                test_y, test_groups = data.targets("test"), data.groups("test")
                if cfg.save_model and cfg.truncate == 0:
                    from ctssl.pretrain.checkpoint import export_backbone

                    folder = out / "models" / ids["best_val"]
                    folder.mkdir(parents=True, exist_ok=True)
                    export_backbone(result["best_val"], folder, {
                        **{k: v for k, v in card.items() if k not in ("source", "weights_sha256")},
                        "method": f"{card.get('method')} + fine-tuned ({data.label}, fraction {fraction:g}, seed {seed})",
                        "finetuned_from": source, "finetune": config, "best_epoch": result["best_epoch"],
                        "chosen": {"lr": result["lr"], "weight_decay": result["weight_decay"]}})
                reuse = {}
                if not cfg.truncate:
                    reuse = weight_similarity(conv_weights(backbone), conv_weights(result["best_val"].export_backbone))
                parameters = sum(p.numel() for p in result["best_val"].parameters())
                for variant in VARIANTS:
                    scores = predict(result[variant], split_tensor("test"), data.multilabel, device=device)
                    metrics = metrics_with_ci(test_y, scores, test_groups, data.multilabel, spec.n_boot, seed)
                    record = {"run_id": ids[variant], "task": task, "variant": prefix + variant, "backbone": source,
                              "backbone_order": order, "backbone_card": {k: v for k, v in card.items() if k != "config"},
                              "dataset": data.describe(), "fraction": fraction, "seed": seed, "n_train": len(idx),
                              "n_val": int(val_keep.sum()), "n_test": len(test), "config": config,
                              "input": inputs.to_dict(), "test": metrics, "history": result["history"],
                              "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                              "select": result["select"],
                              "chosen": {"lr": result["lr"], "weight_decay": result["weight_decay"]},
                              "grid": result["grid"], "cut": cfg.truncate, "parameters": parameters,
                              "feature_reuse": reuse, "provenance": provenance()}
                    store.save(record, [s.key for s in test], test_groups, test_y, scores)
                    logger.info("%s %s (%s) fraction %g seed %d: %s", task, source, prefix + variant, fraction, seed,
                                headline(record))
                    records.append(record)
    return records
