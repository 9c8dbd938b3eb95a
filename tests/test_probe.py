"""Linear probe: the grid trained together matches scikit-learn's LogisticRegression."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from ctssl.eval.metrics import accuracy, macro_auroc
from ctssl.eval.probe import LinearGrid, ProbeConfig, logreg_crosscheck, predict, standardise, train_probe


def _blobs(class_sep: float, classes: int = 4, seed: int = 0):
    x, y = make_classification(n_samples=1500, n_features=48, n_informative=10, n_redundant=0, n_classes=classes,
                               n_clusters_per_class=1, class_sep=class_sep, random_state=seed)
    return standardise(x[:900], x[900:1200], x[1200:]), (y[:900], y[900:1200], y[1200:])


@pytest.mark.parametrize("class_sep,expected", [(3.0, 0.97), (0.5, None)])
def test_probe_matches_logistic_regression(class_sep, expected):
    (xtr, xva, xte), (ytr, yva, yte) = _blobs(class_sep)
    model = train_probe(xtr, ytr, xva, yva, ProbeConfig(epochs=60), 4)
    ours = accuracy(yte, predict(model, xte).argmax(1))
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(xtr, ytr)
    theirs = accuracy(yte, reference.predict(xte))
    assert abs(ours - theirs) <= 0.03, (ours, theirs)
    if expected:                       # separable: both near perfect
        assert ours >= expected
    else:                              # overlapping classes: far from perfect, far above chance
        assert 0.35 < ours < 0.9
    check = logreg_crosscheck(xtr, ytr, xva, yva, xte, 4)
    assert abs(accuracy(yte, check["test_scores"].argmax(1)) - ours) <= 0.03


def test_grid_heads_are_independent():
    """Training the grid together equals training each head alone (same batches, same init)."""
    import torch

    (xtr, xva, _), (ytr, yva, _) = _blobs(1.0, classes=3)
    cfg = ProbeConfig(lrs=[0.01, 0.3], weight_decays=[0.0, 1e-2], epochs=3, balanced=False)
    together = train_probe(xtr, ytr, xva, yva, cfg, 3)
    for point in together["grid"]:
        alone = train_probe(xtr, ytr, xva, yva, ProbeConfig(lrs=[point["lr"]], weight_decays=[point["weight_decay"]],
                                                            epochs=3, balanced=False), 3)
        key = "val_accuracy"
        assert alone["grid"][0][key] == pytest.approx(point[key], abs=1e-6)
    # Weight decay shrinks only the weights of its own head.
    grid = LinearGrid(4, 2, [0.1, 0.1], [0.0, 1.0], torch.Generator().manual_seed(0))
    grid.weight.grad = torch.zeros_like(grid.weight)
    grid.bias.grad = torch.zeros_like(grid.bias)
    before = grid.weight.detach().clone()
    grid.step(1.0, 0.0)
    torch.testing.assert_close(grid.weight[0], before[0])
    torch.testing.assert_close(grid.weight[1], before[1] * 0.9)


def test_best_head_is_chosen_on_validation():
    (xtr, xva, _), (ytr, yva, _) = _blobs(1.5)
    model = train_probe(xtr, ytr, xva, yva, ProbeConfig(epochs=20), 4)
    key = f"val_{model['select']}"
    assert model["best"][key] == pytest.approx(max(g[key] for g in model["grid"]), abs=1e-5)
    assert len(model["grid"]) == len(ProbeConfig().lrs) * len(ProbeConfig().weight_decays)


def test_multilabel_probe_learns_each_label():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 16)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5, x[:, 3] < -0.5], 1).astype(np.int64)
    model = train_probe(x[:600], y[:600], x[600:750], y[600:750], ProbeConfig(epochs=30), 3, multilabel=True)
    assert model["select"] == "auroc"
    assert macro_auroc(y[750:], predict(model, x[750:], multilabel=True)) > 0.95
