"""Linear probing on frozen features: a grid of linear classifiers trained together (DINOv2's
protocol), the best chosen on the validation split, reported once on the test split.

Every (learning rate, weight decay) pair of the grid is its own linear head; all heads see the same
mini-batches in the same order, with SGD (momentum 0.9), a cosine learning-rate schedule and
weight decay applied to the weights (not the biases), so one pass over the data trains the whole
grid. Features are standardised with the training split's mean and standard deviation first: an
affine map a linear classifier absorbs, which puts every backbone's features on the scale the
grid assumes; features that are constant on the training split carry no information the probe could
learn and are set to 0 (``standardise``). Multi-class tasks use cross-entropy (class-weighted by
inverse frequency when
``balanced``, so rare classes count), multi-label tasks one logistic loss per label.

``logreg_crosscheck`` fits scikit-learn's ``LogisticRegression`` (L-BFGS, C chosen on the same
validation split) on the same standardised features: the probe should match it.

Predictions are logits (``eval.measures.classification``: scores on a log scale), never probabilities: a
softmax saturates in float32 and loses the order a rank metric needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.eval.measures.classification import score, selection_metric


@dataclass
class ProbeConfig:
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0])
    # DINOv2 searches learning rates only; small labelled medical subsets (a few patients of correlated
    # slices) also need regularisation, so weight decay is searched too, up to 0.1.
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2, 1e-1])
    epochs: int = 100
    batch_size: int = 256
    momentum: float = 0.9
    balanced: bool = True          # inverse-frequency class weights in the loss
    select: str = "auto"           # validation metric: accuracy, balanced_accuracy, auroc; auto by task


def constant_features(train: np.ndarray, rel_eps: float = 1e-4) -> np.ndarray:
    """Mask of features that do not vary over the training samples: standard deviation at most ``rel_eps``
    times the median standard deviation of the varying ones (ReLU features of a small labelled subset are
    often exactly constant, e.g. always 0)."""
    std = np.asarray(train, np.float64).std(0)
    varying = std[std > 0]
    scale = float(np.median(varying)) if len(varying) else 1.0
    return std <= rel_eps * scale


def standardise(train: np.ndarray, *others: np.ndarray):
    """Standardise with the training split's mean and standard deviation; features constant on the training
    split are set to 0 everywhere. (Scaling them by a near-zero deviation made test values up to 5e4 where
    the training values were 0, and the probe's weights for them, never trained, decided the test predictions:
    the root cause of a probe that got worse with more labels, measured on the demo's features.)"""
    train = np.asarray(train, np.float32)
    mean = train.mean(0, keepdims=True)
    constant = constant_features(train)
    std = np.where(constant, 1.0, train.std(0)).astype(np.float32)[None]
    out = []
    for x in (train, *others):
        z = (np.asarray(x, np.float32) - mean) / std
        z[:, constant] = 0.0
        out.append(z)
    return out


class LinearGrid:
    """H linear heads (H, D, C) trained at once; head h has lr[h] and weight decay wd[h]. All
    heads start from the same initialisation, so they differ only by their hyper-parameters."""

    def __init__(self, dim: int, classes: int, lrs, wds, generator: torch.Generator):
        self.lr = torch.tensor(lrs, dtype=torch.float32).view(-1, 1, 1)
        self.wd = torch.tensor(wds, dtype=torch.float32).view(-1, 1, 1)
        heads = len(lrs)
        bound = 1 / math.sqrt(dim)   # nn.Linear's initialisation, the same for every head
        init = (torch.rand(dim, classes, generator=generator) * 2 - 1) * bound
        self.weight = init.repeat(heads, 1, 1).requires_grad_()
        self.bias = torch.zeros(heads, 1, classes, requires_grad=True)
        self.buffers = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,hdc->hbc", x, self.weight) + self.bias

    @torch.no_grad()
    def step(self, scale: float, momentum: float) -> None:
        for param, buf, decay in ((self.weight, self.buffers[0], self.wd), (self.bias, self.buffers[1], 0.0)):
            grad = param.grad + decay * param
            buf.mul_(momentum).add_(grad)
            param.sub_(self.lr * scale * buf)
            param.grad = None


def train_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                cfg: ProbeConfig, num_classes: int, multilabel: bool = False, seed: int = 0,
                on_epoch: Callable[[int], None] | None = None) -> dict:
    """Train the grid on standardised features; returns the heads' validation scores and the
    chosen head's weights. ``on_epoch(1)`` is called after each epoch (progress). A validation metric undefined
    for every head (e.g. AUROC on validation samples of one class) is a ValueError."""
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    y = torch.from_numpy(np.asarray(train_y))
    heads = LinearGrid(x.shape[1], num_classes, [g[0] for g in grid], [g[1] for g in grid], gen)
    if multilabel:
        pos = y.float().mean(0).clamp(1e-3, 1 - 1e-3)
        pos_weight = ((1 - pos) / pos) if cfg.balanced else None
        class_weight = None
    else:
        counts = torch.bincount(y, minlength=num_classes).float()
        class_weight = (counts.sum() / (num_classes * counts.clamp(min=1))) if cfg.balanced else None
        class_weight = class_weight * (counts > 0) if class_weight is not None else None
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            logits = heads.logits(x[idx])                         # (H, B, C)
            if multilabel:
                target = y[idx].float().expand(len(grid), -1, -1)
                loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight,
                                                          reduction="none").mean((1, 2)).sum()
            else:
                loss = F.cross_entropy(logits.reshape(-1, num_classes), y[idx].repeat(len(grid)),
                                       weight=class_weight, reduction="none").view(len(grid), -1)
                if class_weight is not None:
                    loss = loss.sum(1) / class_weight[y[idx]].sum()
                else:
                    loss = loss.mean(1)
                loss = loss.sum()
            loss.backward()
            heads.step(0.5 * (1 + math.cos(math.pi * step / total)), cfg.momentum)
            step += 1
        if on_epoch is not None:
            on_epoch(1)
    metric = selection_metric(cfg, multilabel, num_classes)
    with torch.no_grad():
        val_logits = heads.logits(torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32)))
    val_scores = [score(metric, val_y, v.numpy(), multilabel) for v in val_logits]
    if np.all(np.isnan(val_scores)):
        raise ValueError(f"The validation {metric} is undefined for every head of the grid (the validation split "
                         f"holds {len(np.unique(val_y, axis=0))} distinct target(s) in {len(val_y)} samples): "
                         f"the probe cannot choose its learning rate.")
    best = int(np.nanargmax(val_scores))
    return {"grid": [{"lr": lr, "weight_decay": wd, f"val_{metric}": round(float(s), 5)}
                     for (lr, wd), s in zip(grid, val_scores)],
            "best": {"lr": grid[best][0], "weight_decay": grid[best][1], f"val_{metric}": float(val_scores[best])},
            "select": metric, "weight": heads.weight[best].detach().clone(), "bias": heads.bias[best].detach().clone()}


def predict(model: dict, x: np.ndarray) -> np.ndarray:
    """Logits (N, C) of the chosen head (per-label logits for a multi-label task): log-scale scores
    (``eval.measures.classification``)."""
    with torch.no_grad():
        logits = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) @ model["weight"] + model["bias"][0]
    return logits.numpy()


def logreg_crosscheck(train_x, train_y, val_x, val_y, test_x, num_classes: int, balanced: bool = True,
                      cs=(1e-3, 1e-2, 0.1, 1.0, 10.0), metric: str = "accuracy", seed: int = 0) -> dict:
    """scikit-learn LogisticRegression (multinomial, L-BFGS) with C chosen on validation;
    test scores (N, num_classes) of the chosen C, on a log scale (``_full_logits``)."""
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None,
                                 random_state=seed)
        clf.fit(train_x, train_y)
        val = score(metric, val_y, _full_logits(clf, val_x, num_classes), False)
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    return {"C": c, f"val_{metric}": float(val), "test_scores": _full_logits(clf, test_x, num_classes)}


def _full_logits(clf, x, num_classes: int) -> np.ndarray:
    """The fitted classifier's decision function as (N, num_classes) logits: a binary fit's one column is the
    log-odds of its second class (the first class's logit 0); classes it never saw get -inf."""
    decision = clf.decision_function(x)
    if decision.ndim == 1:
        decision = np.stack([np.zeros_like(decision), decision], axis=1)
    out = np.full((len(x), num_classes), -np.inf)
    out[:, clf.classes_] = decision
    return out
