"""Linear probe: the grid trained together matches scikit-learn's LogisticRegression."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from ctssl.eval.measures.classification import accuracy, macro_auroc
from ctssl.eval.measures.probe import LinearGrid, ProbeConfig, logreg_crosscheck, predict, standardise, train_probe


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


def test_a_validation_split_of_one_class_is_a_clear_error_not_a_nan_argmax():
    (xtr, xva, _), (ytr, _, _) = _blobs(1.5, classes=2)
    with pytest.raises(ValueError, match="validation auroc is undefined for every head.*1 distinct target"):
        train_probe(xtr, ytr, xva, np.ones(len(xva), dtype=np.int64), ProbeConfig(epochs=2), 2)


def test_multilabel_probe_learns_each_label():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 16)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5, x[:, 3] < -0.5], 1).astype(np.int64)
    model = train_probe(x[:600], y[:600], x[600:750], y[600:750], ProbeConfig(epochs=30), 3, multilabel=True)
    assert model["select"] == "auroc"
    assert macro_auroc(y[750:], predict(model, x[750:])) > 0.95


def test_constant_training_features_cannot_blow_up():
    """Features constant on the training split (ReLU channels that a small subset never excites) carry nothing
    the probe can learn: their test values must not move a prediction, however far they are from training."""
    (xtr, xva, xte), (ytr, yva, yte) = _blobs(2.0)
    xtr, xva, xte = (np.hstack([x, np.zeros((len(x), 3))]) for x in (xtr, xva, xte))
    far = xte.copy()
    far[:, -3:] = 5e4 * np.random.default_rng(0).random((len(far), 3))
    ztr, zva, zte, zfar = standardise(xtr, xva, xte, far)
    assert np.all(zfar[:, -3:] == 0) and np.all(np.isfinite(zfar))
    model = train_probe(ztr, ytr, zva, yva, ProbeConfig(epochs=20), 4)
    np.testing.assert_allclose(predict(model, zfar), predict(model, zte), rtol=1e-6)


def test_more_labels_do_not_hurt_the_selected_probe():
    """Patients of 40 correlated samples each (as slices of a series), sparse non-negative features (as pooled
    ReLU features); the same test patients for both fractions: 100% of the labels is not worse than 10%."""
    from ctssl.eval.inputs.folds import subsample

    rng = np.random.default_rng(0)
    n_patients, per = 60, 40
    groups = np.repeat(np.arange(n_patients), per)
    y = rng.integers(0, 3, n_patients)[groups]
    centres = rng.normal(size=(3, 64))
    patient_shift = rng.normal(scale=1.5, size=(n_patients, 64))[groups]
    x = np.maximum(0.0, centres[y] + patient_shift + rng.normal(scale=1.0, size=(len(y), 64)) - 1.0)
    split = np.array(["train"] * 40 + ["val"] * 8 + ["test"] * 12)[groups]
    tr, va, te = (split == s for s in ("train", "val", "test"))
    results = {}
    for fraction in (0.1, 1.0):
        idx = subsample(y[tr], groups[tr].astype(str), fraction, 0)
        xtr, xva, xte = standardise(x[tr][idx], x[va], x[te])
        model = train_probe(xtr, y[tr][idx], xva, y[va], ProbeConfig(epochs=50), 3)
        results[fraction] = accuracy(y[te], predict(model, xte).argmax(1))
    assert results[1.0] >= results[0.1] - 0.01, results
    assert results[1.0] > 0.8
