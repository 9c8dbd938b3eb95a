"""Weighted kNN (eval.measures.knn) against a brute-force numpy reference written from the formula; FAISS
neighbour search (exact flat and exhaustive IVF) equal to brute force, also streamed over a memory map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctssl.eval.measures.knn import faiss_knn_predict, knn_accuracy, knn_predict


def reference(query, bank, labels, classes, k, t):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = np.zeros((len(q), classes))
    for i, row in enumerate(q @ b.T):
        for j in np.argsort(-row, kind="stable")[:k]:
            out[i, labels[j]] += np.exp(row[j] / t)
    return out


@pytest.mark.parametrize("k, t", [(1, 0.07), (10, 0.07), (20, 0.5), (200, 0.07)])
def test_matches_bruteforce_reference(k, t):
    rng = np.random.default_rng(k)
    bank, query = rng.normal(size=(150, 16)), rng.normal(size=(40, 16))
    labels = rng.integers(0, 5, 150)
    got = knn_predict(torch.tensor(query), torch.tensor(bank), torch.tensor(labels), 5, k, t, chunk=7)
    want = reference(query, bank, labels, 5, min(k, 150), t)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4)
    assert (got.argmax(1).numpy() == want.argmax(1)).all()


def test_hand_computed_vote():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 1, 1])
    scores = knn_predict(torch.tensor([[1.0, 0.0]]), bank, labels, 2, k=2, temperature=1.0)
    s1 = 1.0 / np.sqrt(1.01)  # cosine to [1, 0.1]
    np.testing.assert_allclose(scores.numpy(), [[np.e, np.exp(s1)]], rtol=1e-6)
    assert knn_accuracy(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), bank, labels, 2, k=1) == 1.0


@pytest.mark.parametrize("k", [1, 10, 20, 100])
def test_faiss_flat_equals_bruteforce_and_ivf_exhaustive_too(k):
    rng = np.random.default_rng(k)
    bank, query = torch.tensor(rng.normal(size=(500, 32))), torch.tensor(rng.normal(size=(60, 32)))
    labels = torch.tensor(rng.integers(0, 6, 500))
    brute = knn_predict(query, bank, labels, 6, k)
    flat = faiss_knn_predict(query, bank, labels, 6, k, index="flat")
    torch.testing.assert_close(flat.double(), brute.double(), rtol=1e-4, atol=1e-4)
    ivf = faiss_knn_predict(query, bank, labels, 6, k, index="ivf", nlist=8, nprobe=8)  # all cells
    assert (ivf.argmax(1) == brute.argmax(1)).all()


@pytest.mark.parametrize("k", [1, 20, 100])
def test_streamed_flat_search_over_a_memory_map_equals_bruteforce(k, tmp_path):
    """Chunks of 37 rows (the last one, 19 rows, smaller than k), merged top-k: exact."""
    rng = np.random.default_rng(k)
    bank, query = rng.normal(size=(500, 32)).astype(np.float32), rng.normal(size=(60, 32)).astype(np.float32)
    np.save(tmp_path / "bank.npy", bank)
    mapped = np.load(tmp_path / "bank.npy", mmap_mode="r")
    labels = torch.tensor(rng.integers(0, 6, 500))
    brute = knn_predict(torch.tensor(query), torch.tensor(bank), labels, 6, k)
    streamed = faiss_knn_predict(query, mapped, labels, 6, k, chunk_rows=37)
    torch.testing.assert_close(streamed.double(), brute.double(), rtol=1e-4, atol=1e-4)
