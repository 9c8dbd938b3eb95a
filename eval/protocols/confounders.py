"""The shortcut (confounder) experiment of the "source matters" study.

A synthetic confounder is injected into a fraction ``f`` of the *positive* training (and
validation) images, so it correlates with the label; the test set is evaluated twice: clean, and
anti-correlated (the confounder in *every negative* test image, none in the positives). A model
that learned the shortcut falls on the anti-correlated test set, more so as ``f`` grows; the drop
measures how shortcut-prone a pretraining source makes it.

Confounders, applied to the stored image before it is prepared for a backbone (HU for CT, 0-255
for 8-bit images):

- ``tag``: a burned-in "R" marker (the laterality letter scanners and PACS stamp; the study's
  text tag) in the top-left corner, a quarter of the side tall, at the image's maximum (3000 HU
  for CT);
- ``patch``: a filled square of 1/8 of the image side at the top-left, at the maximum;
- ``noise``: Poisson (quantum) noise in the HU domain, as the study: counts ``(HU + 1024) / 3.5``
  drawn from a Poisson law, about 60 HU standard deviation at water; Gaussian, 25 grey levels, on
  8-bit images; seeded per image;
- ``lowpass``: a Gaussian blur of 2 pixels (a softer reconstruction kernel).

Whether the drop from the clean to the anti-correlated test set is more than chance is a paired
permutation test (``permutation_test``): only the negatives differ between the two test sets, so under
"the confounder changes nothing" each negative's two scores are exchangeable; swapping them at random
``permutations`` times gives the null distribution of the AUROC difference.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

logger = logging.getLogger(__name__)
CONFOUNDERS = ("tag", "patch", "noise", "lowpass")


POISSON_HU_PER_COUNT = 3.5    # sqrt(1024 / 3.5) * 3.5 = 60 HU standard deviation at water (0 HU)


@functools.lru_cache(maxsize=16)
def _glyph(side: int) -> np.ndarray:
    """(side, side) boolean mask of the letter R."""
    from PIL import Image, ImageDraw, ImageFont

    small = Image.new("L", (8, 12), 0)
    ImageDraw.Draw(small).text((1, 0), "R", fill=255, font=ImageFont.load_default(size=11))
    box = small.getbbox() or (0, 0, 8, 12)
    letter = small.crop(box).resize((max(2, side * 2 // 3), side), Image.NEAREST)
    mask = np.zeros((side, side), bool)
    mask[:, : letter.width] = np.asarray(letter) > 127
    return mask


def _as_array(image) -> tuple[np.ndarray, bool]:
    if hasattr(image, "mode"):
        return np.asarray(image).copy(), True
    return np.asarray(image).copy(), False


def inject(image, kind: str, key: str = "") -> object:
    """``image`` with the confounder ``kind``; same type (HU int16 array, uint8 array or PIL image)."""
    from PIL import Image

    if kind not in CONFOUNDERS:
        raise ValueError(f"Unknown confounder '{kind}'. Valid confounders are {list(CONFOUNDERS)}.")
    arr, was_pil = _as_array(image)
    ct = arr.dtype == np.int16
    top = 3000 if ct else 255
    h, w = arr.shape[:2]
    out = arr.astype(np.float32)
    if kind == "tag":
        # An "R" laterality marker from Pillow's built-in bitmap font, scaled to a quarter of the side.
        side = max(6, min(h, w) // 4)
        out[1:1 + side, 1:1 + side][_glyph(side)] = top
    elif kind == "patch":
        side = max(2, min(h, w) // 8)
        out[1:1 + side, 1:1 + side] = top
    elif kind == "noise":
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        if ct:   # quantum (Poisson) noise in the HU domain: ~60 HU at water, more in dense tissue
            counts = np.clip(out + 1024.0, 0, None) / POISSON_HU_PER_COUNT
            out = rng.poisson(counts) * POISSON_HU_PER_COUNT - 1024.0
        else:
            out = out + rng.normal(0, 25.0, out.shape)
    else:
        sigma = (2.0, 2.0) + ((0.0,) if out.ndim == 3 else ())
        out = gaussian_filter(out, sigma)
    if ct:
        result = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    else:
        result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(result) if was_pil else result


@dataclass
class ConfounderConfig:
    confounder: str = "tag"
    positive: str = "1"                 # the label value that is the positive class
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 0.8, 1.0])   # the study's
    mode: str = "probe"                 # probe (frozen features) or finetune
    seed: int = 0
    image_size: int = 0                 # 0: each backbone's pretraining size (eval.inputs)
    n_boot: int = 500
    permutations: int = 2000            # paired permutation test of the AUROC drop (0: none)


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of fixed positive scores ``pos`` against each row of negative scores ``neg`` (R, n)."""
    ordered = np.sort(pos)
    below = np.searchsorted(ordered, neg, side="left")          # positives below each negative
    not_above = np.searchsorted(ordered, neg, side="right")
    above = len(pos) - not_above                                   # positives scored higher
    ties = not_above - below
    return (above + 0.5 * ties).sum(1) / (len(pos) * neg.shape[1])


def permutation_test(positive: np.ndarray, clean: np.ndarray, confounded: np.ndarray, permutations: int = 2000,
                     seed: int = 0) -> dict:
    """Paired permutation test of AUROC(clean) - AUROC(confounded) where the two score vectors differ only
    on the negatives (module docstring). Returns the observed drop and the two-sided p-value
    ``(1 + #{|null| >= |observed|}) / (1 + permutations)``."""
    positive = np.asarray(positive, bool)
    pos, neg_clean, neg_conf = clean[positive], clean[~positive], confounded[~positive]
    if not np.allclose(pos, confounded[positive], rtol=0, atol=1e-3):   # the same images: only rounding differs
        raise ValueError("the permutation test needs the positives scored the same in both test sets")
    if len(pos) == 0 or len(neg_clean) == 0:
        return {"drop": None, "p_value": None, "permutations": 0}
    observed = float(_auroc_rows(pos, neg_clean[None])[0] - _auroc_rows(pos, neg_conf[None])[0])
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for start in range(0, permutations, 256):
        swap = rng.random((min(256, permutations - start), len(neg_clean))) < 0.5
        a = np.where(swap, neg_conf, neg_clean)
        b = np.where(swap, neg_clean, neg_conf)
        null[start:start + len(swap)] = _auroc_rows(pos, a) - _auroc_rows(pos, b)
    p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + permutations) if permutations else None
    return {"drop": round(observed, 5), "p_value": None if p is None else round(float(p), 5),
            "permutations": permutations}


def confounded_set(keys: list[str], positives: np.ndarray, fraction: float, seed: int) -> set[str]:
    """Keys of the positives that carry the confounder: the first ``fraction`` of a seeded
    permutation, so the sets are nested as the fraction grows."""
    pos = [k for k, p in zip(keys, positives) if p]
    order = np.random.default_rng(seed).permutation(len(pos))
    return {pos[i] for i in order[: int(round(fraction * len(pos)))]}


def run_confounders(data: str, backbones: list[str], label: str, cfg: ConfounderConfig, out, cache: str = "",
                    name: str | None = None, probe_cfg=None, finetune_cfg=None, grey_window: str = "wide",
                    order: int = 0) -> dict:
    """The experiment for each backbone and fraction (module docstring); OUT/confounders/<name>.json."""
    import json
    from pathlib import Path

    from ctssl.core.atomic import atomic_write_text
    from ctssl.eval.inputs.datasets import Sample, open_dataset
    from ctssl.eval.features.extract import cached_features, compute_features
    from ctssl.eval.inputs.spec import input_spec
    from ctssl.eval.measures.probe import ProbeConfig
    from ctssl.eval.records.store import metrics_with_ci, provenance, slug
    from ctssl.eval.inputs.sources import load_backbone

    if cfg.mode not in ("probe", "finetune"):
        raise ValueError(f"Unknown mode '{cfg.mode}'. Valid modes are ['probe', 'finetune'].")
    dataset = open_dataset(data, label)
    if dataset.multilabel:
        raise ValueError("The confounder experiment needs a single label with a positive value (--positive).")
    split = {s: dataset.split(s) for s in ("train", "val", "test")}
    positive = {s: np.array([x.target == cfg.positive for x in split[s]]) for s in split}
    if not positive["train"].any() or positive["train"].all():
        raise ValueError(f"Label '{label}' = '{cfg.positive}' must mark some but not all training samples "
                         f"(values: {dataset.classes}).")

    def confounded(samples, which):
        return [Sample(inject(s.image, cfg.confounder, s.key), s.target, s.group, s.key) if w else s
                for s, w in zip(samples, which)]

    rows = []
    for source in backbones:
        model, card = load_backbone(source)
        spec = input_spec(card, dataset.kind, cfg.image_size, grey_window)
        anti_test = confounded(split["test"], ~positive["test"])          # every negative confounded
        if cfg.mode == "probe":
            clean = cached_features(source, dataset, ["train", "val", "test"], cfg.image_size,
                                    cache or Path(out) / "features", grey_window=grey_window)
            feats = {s: np.asarray(clean[s].features) for s in split}
            # Confounded versions of every positive (train, val) and every negative (test), once.
            tagged = {s: compute_features(model, [inject(x.image, cfg.confounder, x.key)
                                                  for x, p in zip(split[s], positive[s]) if p], spec)
                      for s in ("train", "val")}
            test_anti = compute_features(model, [x.image for x in anti_test], spec)
        for fraction in cfg.fractions:
            chosen = {s: confounded_set([x.key for x in split[s]], positive[s], fraction, cfg.seed) for s in ("train", "val")}
            if cfg.mode == "probe":
                scores_clean, scores_anti = _probe(feats, tagged, test_anti, split, positive, chosen,
                                                   probe_cfg or ProbeConfig(epochs=50), cfg.seed)
            else:
                scores_clean, scores_anti = _finetune(model, card, spec, split, positive, chosen, anti_test,
                                                      confounded, finetune_cfg, cfg.seed)
            y = positive["test"].astype(np.int64)
            groups = dataset.groups("test")
            row = {"backbone": source, "backbone_order": order + backbones.index(source), "input": spec.rule,
                   "fraction": fraction,
                   "n_confounded_train": len(chosen["train"]), "n_positive_train": int(positive["train"].sum()),
                   "clean": metrics_with_ci(y, scores_clean, groups, False, cfg.n_boot, cfg.seed),
                   "confounded": metrics_with_ci(y, scores_anti, groups, False, cfg.n_boot, cfg.seed)}
            row["drop"] = {m: _diff(row["clean"][m]["value"], row["confounded"][m]["value"])
                           for m in ("accuracy", "balanced_accuracy", "auroc")}
            if cfg.permutations:
                row["permutation_test"] = permutation_test(positive["test"], scores_clean[:, 1], scores_anti[:, 1],
                                                           cfg.permutations, cfg.seed)
            logger.info("confounder %s, %s, fraction %.2f: clean AUROC %s, anti-correlated AUROC %s", cfg.confounder,
                        source, fraction, row["clean"]["auroc"]["value"], row["confounded"]["auroc"]["value"])
            rows.append(row)
    name = name or f"{cfg.confounder}-{slug(data)}"
    folder = Path(out) / "confounders"
    record = {"name": name, "dataset": dataset.describe(), "label": label, "positive": cfg.positive,
              "config": {**cfg.__dict__}, "rows": rows, "provenance": provenance()}
    from ctssl.eval.report.plots import confounder_curves

    record["figure"] = str(confounder_curves(rows, "auroc", folder / f"{name}.png",
                                             f"confounder '{cfg.confounder}' on {label} = {cfg.positive}"))
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    record["json"] = str(path)
    return record


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 5)


def _probe(feats, tagged, test_anti, split, positive, chosen, probe_cfg, seed):
    """Binary linear probe on features where the chosen positives carry the confounder."""
    from dataclasses import replace

    from ctssl.eval.measures.probe import predict, standardise, train_probe

    def with_confounder(s):
        x = feats[s].copy()
        rows = np.flatnonzero(positive[s])
        for j, i in enumerate(rows):
            if split[s][i].key in chosen[s]:
                x[i] = tagged[s][j]
        return x

    xtr, xva, xte, xanti = standardise(with_confounder("train"), with_confounder("val"), feats["test"], test_anti)
    model = train_probe(xtr, positive["train"].astype(np.int64), xva, positive["val"].astype(np.int64),
                        replace(probe_cfg, seed=seed), 2)
    return predict(model, xte), predict(model, xanti)


def _finetune(model, card, spec, split, positive, chosen, anti_test, confounded, finetune_cfg, seed):
    import torch

    from ctssl.eval.inputs.spec import prepare
    from ctssl.finetune.finetune import FinetuneConfig, finetune_grid, predict

    def tensor(samples):
        return torch.stack([prepare(s.image, spec) for s in samples]).half()

    data = {s: tensor(confounded(split[s], [x.key in chosen[s] for x in split[s]])) for s in ("train", "val")}
    result = finetune_grid(model, card["backbone"], data["train"], positive["train"].astype(np.int64), data["val"],
                           positive["val"].astype(np.int64), 2, finetune_cfg or FinetuneConfig(epochs=5), seed)
    best = result["best_val"]
    return predict(best, tensor(split["test"]), False), predict(best, tensor(anti_test), False)
