"""The domain gap between two datasets in each backbone's feature space.

For every backbone: features of both datasets (cached, ``eval.features.cache``), L2-normalised (feature scales
differ between backbones by orders of magnitude; on the unit sphere MMD and Frechet values compare across
backbones); on equal-size samples of one split (default test, at most ``max_samples`` each): the domain
classifier and proxy A-distance, MMD^2 (Gaussian kernel, median-heuristic bandwidth), Frechet distance, kNN
domain purity (``eval.measures.gap``); the cross-domain probe gap when both datasets carry labels of common
classes (logistic regression trained on one domain's training split, tested on both domains' test splits, both
directions); a t-SNE of the pooled sample coloured by domain and by label. ``run_gap`` writes
``OUT/gap/<name>.json`` with the figures beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctssl.core.atomic import atomic_write_text
from ctssl.eval.features.cache import cached_features
from ctssl.eval.inputs.datasets import IMAGES_ONLY, Dataset, open_dataset
from ctssl.pretrain.sources import backbone_card
from ctssl.eval.inputs.spec import comparison_size
from ctssl.eval.measures.gap import (balanced, domain_classifier, frechet_distance, knn_purity, mmd2, probe_gap,
                                     too_few)
from ctssl.eval.records.plots import embedding
from ctssl.eval.records.provenance import provenance
from ctssl.eval.records.store import pair_name, slug

logger = logging.getLogger(__name__)


@dataclass
class GapSettings:
    label: str = IMAGES_ONLY        # label of A: for the cross-domain probe and the t-SNE's colours; "": none
    label_b: str = ""               # label of B; "" = as A (natural-image shards: class)
    split: str = "test"             # split compared (a dataset without it: val, then train)
    max_samples: int = 1000         # samples per domain
    image_size: int = 0             # 0: one size for every backbone, the largest pretraining size among them
    own_size: bool = False          # each backbone at its own pretraining size instead
    k: int = 10                     # neighbours for the kNN domain purity
    embed: bool = True              # the t-SNE figure
    seed: int = 0                   # the samples drawn, the classifier's folds, the t-SNE


def run_gap(a: str, b: str, backbones: list[str], settings: GapSettings, out: str | Path, cache: str = "",
            name: str | None = None) -> dict:
    """The gap between datasets ``a`` and ``b`` under each backbone (module docstring); the record, with its
    JSON path. Features are cached in ``cache`` (default OUT/features)."""
    s = settings
    data_a, data_b = open_dataset(a, s.label), open_dataset(b, s.label_b or s.label)
    # A dataset without the split (an ImageFolder with train and val only) uses val, then train.
    use = {id(d): next((x for x in (s.split, "val", "train") if d.has(x)), None) for d in (data_a, data_b)}
    for d in (data_a, data_b):
        if use[id(d)] is None:
            raise ValueError(f"Dataset '{d.spec}' has no samples in any split (train, val, test).")
    held_out = {id(d): next((x for x in ("test", "val") if d.has(x)), None) for d in (data_a, data_b)}
    cache = cache or str(Path(out) / "features")
    folder = Path(out) / "gap"
    name = name or pair_name(a, b)
    size, why = comparison_size([backbone_card(source) for source in backbones], s.image_size, s.own_size)
    rows = []
    for i, source in enumerate(backbones):
        logger.info("gap: backbone %s (%d/%d)", source, i + 1, len(backbones))
        fa, fb = (cached_features(source, d, sorted({use[id(d)], held_out[id(d)], "train" if d.has("train") else None}
                                                    - {None}),
                                  size, cache, size_rule=why) for d in (data_a, data_b))
        sa, sb = use[id(data_a)], use[id(data_b)]
        row = _row(source, fa[sa].features, fb[sb].features, s)
        row["input"] = {"a": fa[sa].provenance["input"], "b": fb[sb].provenance["input"]}
        row["probe_transfer"] = {
            "a_to_b": _probe_transfer(fa, fb, held_out[id(data_a)], held_out[id(data_b)], data_a, data_b),
            "b_to_a": _probe_transfer(fb, fa, held_out[id(data_b)], held_out[id(data_a)], data_b, data_a)}
        if s.embed:
            row["figure"] = str(_embedding(fa[sa], fb[sb], data_a, data_b, source, s.seed,
                                           folder / f"{name}-{slug(source)}.png", min(s.max_samples, 400)))
        shown = headline_values(row)
        logger.info("gap %s: proxy A-distance %s, MMD2 %s, Frechet %s, kNN purity %s%s", source, *shown.values(),
                    f" ({len(row['too_few_images'])} measure(s) not reported: too few images)"
                    if row["too_few_images"] else "")
        rows.append(row)
    record = {"name": name, "a": data_a.describe(), "b": data_b.describe(), "split": {"a": use[id(data_a)],
              "b": use[id(data_b)]}, "image_size": size,
              "rows": rows, "provenance": provenance()}
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    record["json"] = str(path)
    return record


def _row(source: str, features_a, features_b, s: GapSettings) -> dict:
    """The gap measures on equal-size, L2-normalised samples of the two domains; a measure the sample size cannot
    carry is None, with its reason in ``too_few_images`` (``eval.measures.gap.too_few``)."""
    x, y = balanced(features_a, features_b, s.max_samples, s.seed)
    # L2-normalised, so that distances compare across backbones whose feature scales differ.
    x, y = (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in (x, y))
    n, dim = len(x), int(x.shape[1])
    few = {m: r for m in ("domain_classifier", "mmd2", "frechet_distance", "knn_purity")
           if (r := too_few(m, n, dim, s.k))}
    row = {"backbone": source, "n_per_domain": n, "feature_dim": dim, "too_few_images": few,
           "domain_classifier": None if "domain_classifier" in few else domain_classifier(x, y, seed=s.seed),
           "mmd2": None, "frechet_distance": None if "frechet_distance" in few else round(frechet_distance(x, y), 5),
           "knn_purity": None if "knn_purity" in few else knn_purity(x, y, s.k)}
    if "mmd2" not in few:
        value, sigma = mmd2(x, y)
        row["mmd2"] = {"value": round(value, 6), "kernel": "gaussian", "sigma": round(sigma, 5),
                       "bandwidth_rule": "median pairwise distance of the pooled sample"}
    return row


def headline_values(row: dict) -> dict[str, str]:
    """A row's four headline numbers as text: proxy A-distance, MMD², Fréchet distance, kNN purity; "n/a (too
    few images)" where the sample cannot carry one."""
    out = {}
    for name, value, field in (("A-dist", row["domain_classifier"], "proxy_a_distance"), ("MMD2", row["mmd2"], "value"),
                               ("Frechet", row["frechet_distance"], None), ("purity", row["knn_purity"], "purity")):
        out[name] = "n/a (too few images)" if value is None else f"{(value[field] if field else value):.4g}"
    return out


def _probe_transfer(src, dst, src_test, dst_test, data_src: Dataset, data_dst: Dataset) -> dict | None:
    """The probe gap (``eval.measures.gap.probe_gap``) from src's train split to src's and dst's held-out splits
    (test, else val), over the classes both share; None when fewer than 2 are shared."""
    if data_src.multilabel or data_dst.multilabel or src_test is None or dst_test is None or "train" not in src:
        return None
    shared = sorted(set(data_src.classes) & set(data_dst.classes))
    if len(shared) < 2:
        return None

    def subset(feats, classes):
        names = np.array([classes[t] if t >= 0 else "" for t in feats.targets])
        keep = np.isin(names, shared)
        return np.asarray(feats.features)[keep], names[keep]

    return {"classes": shared, **probe_gap(*subset(src["train"], data_src.classes),
                                           *subset(src[src_test], data_src.classes),
                                           *subset(dst[dst_test], data_dst.classes))}


def _embedding(fa, fb, data_a, data_b, source, seed, path, per_domain):
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    ia = np.sort(rng.choice(len(fa.targets), min(per_domain, len(fa.targets)), replace=False))
    ib = np.sort(rng.choice(len(fb.targets), min(per_domain, len(fb.targets)), replace=False))
    x = np.concatenate([np.asarray(fa.features)[ia], np.asarray(fb.features)[ib]])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    points = TSNE(n_components=2, perplexity=min(30, max(5, len(x) // 4)), init="pca",
                  random_state=seed).fit_transform(x)

    def names(feats, data, idx):
        return [data.classes[t] if not data.multilabel and t >= 0 else "?" for t in feats.targets[idx]]

    domains = ["A"] * len(ia) + ["B"] * len(ib)
    return embedding(points, domains, names(fa, data_a, ia) + names(fb, data_b, ib), path,
                     f"t-SNE of {source} features\nA = {data_a.spec}\nB = {data_b.spec}")
