"""Representation similarity of two backbones: activations of both on the same images (each prepared as its
backbone was pretrained), every measure of ``eval.measures.similarity`` between every pair of layers, a JSON
record (``OUT/similarity/<name>.json``) and heat maps; for two networks of one architecture (e.g. before and
after fine-tuning), also RBF CKA of their convolutions' weights.

A measure the number of images cannot carry (``eval.measures.similarity.MIN_IMAGES``) is not computed: its
matrix is empty and ``too_few_images`` says why; the biased CKAs (linear, RBF) carry their chance level beside
them (``chance_level``: the same layers with one side's images shuffled)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctssl.core.atomic import atomic_write_text
from ctssl.eval.features.extract import default_device
from ctssl.eval.inputs.datasets import IMAGES_ONLY, open_dataset
from ctssl.eval.inputs.spec import GREY_WINDOW, comparison_size, input_spec, prepare
from ctssl.eval.features.layers import collect, conv_weights
from ctssl.eval.records.plots import heatmaps
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import pair_name
from ctssl.eval.measures.similarity import MEASURES, chance_level, reduce_activations, too_few, weight_similarity
from ctssl.pretrain.sources import backbone_card, load_backbone

logger = logging.getLogger(__name__)
BIASED = ("linear_cka", "rbf_cka")        # biased HSIC: reported with their chance level


@dataclass
class SimilaritySettings:
    split: str = "test"            # split whose images are used
    samples: int = 500             # images, evenly spaced over the split
    image_size: int = 0            # 0: one size for both, the larger pretraining size
    own_size: bool = False         # each backbone at its own pretraining size instead
    spatial: int = 2               # conv maps pooled to spatial x spatial positions
    max_features: int = 4096       # features kept per layer
    measures: list[str] = field(default_factory=lambda: list(MEASURES))
    label: str = IMAGES_ONLY       # a label selecting the samples that carry it; "": every image


def run_similarity(data: str, a: str, b: str, settings: SimilaritySettings, out: str | Path,
                   name: str | None = None) -> dict:
    """Every measure between every layer of backbone ``a`` and of ``b`` on ``data``'s images (module
    docstring); the record, with its JSON path and figure."""
    s = settings
    dataset = open_dataset(data, s.label)
    count = len(dataset.entries(s.split))
    picks = set(np.linspace(0, count - 1, min(s.samples, count)).round().astype(int).tolist())
    images = [image for i, image in enumerate(dataset.iter_images(s.split)) if i in picks]
    measures = s.measures
    unknown = set(measures) - set(MEASURES)
    if unknown:
        raise ValueError(f"Unknown measure(s) {sorted(unknown)}. Valid measures are {list(MEASURES)}.")
    device = default_device()
    acts, cards, models, inputs = [], [], [], []
    size, why = comparison_size([backbone_card(a), backbone_card(b)], s.image_size, s.own_size)
    for source in (a, b):
        logger.info("similarity: activations of %s on %d images", source, len(images))
        model, card = load_backbone(source)
        models.append(model)
        spec = input_spec(card, dataset.kind, size, grey_window=GREY_WINDOW, size_rule=why)
        inputs.append(spec.to_dict())
        x = torch.stack([prepare(im, spec) for im in images])
        acts.append(collect(model, x, lambda v: reduce_activations(v, s.spatial, s.max_features), device=device))
        cards.append({k: v for k, v in card.items() if k != "config"})
    layers_a, layers_b = list(acts[0]), list(acts[1])
    matrices, undefined, few, chance = {}, {}, {}, {}
    for measure in measures:
        fn = MEASURES[measure]
        reason = too_few(measure, len(images))
        if reason:                             # no number: the sample cannot carry this measure
            few[measure] = reason
            matrices[measure] = [[None] * len(layers_b) for _ in layers_a]
            logger.warning("similarity %s: %s", measure, reason)
            continue
        matrix, levels = [], []
        for la in layers_a:
            row, level = [], []
            for lb in layers_b:
                try:
                    value = fn(acts[0][la], acts[1][lb])
                    base = chance_level(fn, acts[0][la], acts[1][lb]) if measure in BIASED else None
                except ValueError as err:      # undefined here (e.g. a constant layer): say so, keep the rest
                    undefined[f"{measure} {la} x {lb}"] = str(err)
                    value, base = float("nan"), None
                row.append(None if not np.isfinite(value) else round(float(value), 5))
                level.append(None if base is None or not np.isfinite(base) else round(float(base), 5))
            matrix.append(row)
            levels.append(level)
        matrices[measure] = matrix
        if measure in BIASED:
            chance[measure] = levels
        logger.info("%s done", measure)
    name = name or pair_name(a, b)
    folder = Path(out) / "similarity"
    same_architecture = cards[0]["backbone"] == cards[1]["backbone"]
    weights = weight_similarity(conv_weights(models[0]), conv_weights(models[1])) if same_architecture else {}
    record = {"name": name, "a": a, "b": b, "card_a": cards[0], "card_b": cards[1], "dataset": dataset.describe(),
              "split": s.split, "n_images": len(images), "image_size": size, "inputs": {"a": inputs[0], "b": inputs[1]},
              "spatial": s.spatial,
              "max_features": s.max_features, "layers_a": layers_a, "layers_b": layers_b,
              "features_per_layer": {"a": {k: int(v.shape[1]) for k, v in acts[0].items()},
                                     "b": {k: int(v.shape[1]) for k, v in acts[1].items()}},
              "matrices": matrices, "undefined": undefined, "too_few_images": few, "chance_level": chance, "weight_rbf_cka": weights, "provenance": provenance()}
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    record["figure"] = str(heatmaps(record, folder / f"{name}.png"))
    record["json"] = str(path)
    atomic_write_text(path, json.dumps({k: v for k, v in record.items() if k != "json"}, indent=1) + "\n")
    return record
