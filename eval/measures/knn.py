"""Weighted k-nearest-neighbour classification on features (DINO's protocol).

Cosine similarity on L2-normalised features; each of the top-k neighbours votes for its class
with weight ``exp(similarity / T)`` (Wu et al. 2018, "Unsupervised feature learning via
non-parametric instance discrimination"; Caron et al. 2021, DINO, ``knn_classifier``), T = 0.07.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _vote(sims: torch.Tensor, idx: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
          temperature: float) -> torch.Tensor:
    """Class scores (Q, C): each neighbour (Q, k) votes exp(sim / T) for its label; idx < 0
    (no neighbour found) votes nothing."""
    weights = (sims / temperature).exp() * (idx >= 0)
    votes = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, bank_labels.to(idx.device)[idx.clamp(min=0)].long(), weights)
    return votes


def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (Q, C) of ``query`` (Q, D) against ``bank`` (N, D) with labels (N,).

    Features are L2-normalised here. Ties in similarity are broken by torch.topk.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    scores = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start:start + chunk].float(), dim=1)
        sim = q @ bank.T                                   # (q, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)              # (q, k)
        scores.append(_vote(top_sim, top_idx, bank_labels, num_classes, temperature))
    return torch.cat(scores)


def knn_accuracy(query, query_labels, bank, bank_labels, num_classes, k=20, temperature=0.07) -> float:
    """Top-1 accuracy of ``knn_predict``."""
    scores = knn_predict(query, bank, bank_labels, num_classes, k, temperature)
    return float((scores.argmax(1) == query_labels.to(scores.device)).float().mean())


def _normalised(rows) -> np.ndarray:
    rows = rows.detach().float().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows, np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


CHUNK_BYTES = 256 << 20      # one streamed chunk of the bank: 256 MiB of float32 rows


def chunk_rows_for(dim: int, k: int = 1) -> int:
    """Rows per streamed chunk: ``CHUNK_BYTES`` of float32 features (32,768 rows at 2048 dimensions)."""
    return max(k, CHUNK_BYTES // (4 * max(1, dim)))


def faiss_search(query, bank, k: int, index: str = "flat", nlist: int = 256, nprobe: int = 16,
                 chunk_rows: int | None = None):
    """(similarities, indices), each (Q, k), of the ``k`` nearest bank rows by cosine similarity.

    ``bank`` may be a memory-mapped array larger than memory: with ``index="flat"`` (exact) it is
    searched ``chunk_rows`` rows at a time (default: 256 MiB of rows, ``chunk_rows_for``) and the
    per-chunk top-k merged with FAISS's ``ResultHeap``, so memory stays bounded by a few chunks
    whatever the bank's size. ``"ivf"`` (IndexIVFFlat: ``nlist``
    cells trained on a sample of up to 100 points per cell, ``nprobe`` searched) holds the bank
    in memory and trades exactness for speed. FAISS's GPU index is used when available."""
    import faiss

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index not in ("flat", "ivf"):
        raise ValueError(f"Unknown index '{index}'. Valid indexes are ['flat', 'ivf'].")
    q = _normalised(query)
    n, dim = bank.shape
    k = min(k, n)
    chunk_rows = chunk_rows or chunk_rows_for(dim, k)
    gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0

    def on_device(search):
        return faiss.index_cpu_to_all_gpus(search) if gpu else search

    if index == "ivf":
        cells = max(1, min(nlist, n // 39))             # FAISS wants >= 39 training points per cell
        train = _normalised(bank[np.sort(np.random.default_rng(0).choice(n, min(n, 100 * cells), replace=False))])
        search = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        search.train(train)
        search.nprobe = min(nprobe, cells)
        search = on_device(search)
        for start in range(0, n, chunk_rows):
            search.add(_normalised(bank[start:start + chunk_rows]))
        return search.search(q, k)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for start in range(0, n, chunk_rows):
        search = on_device(faiss.IndexFlatIP(dim))
        search.add(_normalised(bank[start:start + chunk_rows]))
        sims, idx = search.search(q, min(k, search.ntotal))
        if sims.shape[1] < k:                          # a last chunk smaller than k
            sims = np.pad(sims, ((0, 0), (0, k - sims.shape[1])), constant_values=-np.inf)
            idx = np.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
        heap.add_result(np.ascontiguousarray(sims, np.float32), np.ascontiguousarray(np.where(idx >= 0, idx + start, -1)))
    heap.finalize()
    return heap.D, heap.I


def faiss_knn_predict(
    query,
    bank,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    index: str = "flat",
    nlist: int = 256,
    nprobe: int = 16,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``knn_predict`` with the neighbour search done by FAISS (``faiss_search``: inner product on
    L2-normalised float32 features = cosine). ``query`` and ``bank`` are tensors or (memory-mapped)
    arrays. Returns class scores (Q, C)."""
    sims, idx = faiss_search(query, bank, k, index, nlist, nprobe, chunk_rows)
    sims = torch.from_numpy(sims).nan_to_num(neginf=0.0)
    # IVF may find fewer than k neighbours (index -1); those cast no vote.
    return _vote(sims, torch.from_numpy(idx), torch.as_tensor(bank_labels).cpu(), num_classes, temperature)
