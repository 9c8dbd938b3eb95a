"""Weighted k-nearest-neighbour classification on features (DINO's protocol).

Cosine similarity on L2-normalised features; each of the top-k neighbours votes for its class
with weight ``exp(similarity / T)`` (Wu et al. 2018, "Unsupervised feature learning via
non-parametric instance discrimination"; Caron et al. 2021, DINO, ``knn_classifier``), T = 0.07.
"""

from __future__ import annotations

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


def faiss_knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    index: str = "flat",
    nlist: int = 256,
    nprobe: int = 16,
) -> torch.Tensor:
    """``knn_predict`` with the neighbour search done by FAISS (inner product on L2-normalised
    float32 features = cosine). ``index="flat"`` is exact; ``"ivf"`` (IndexIVFFlat, ``nlist``
    cells, ``nprobe`` searched) trades exactness for speed on large banks. Uses FAISS's GPU
    index when the installed faiss has GPUs. Returns class scores (Q, C)."""
    import faiss
    import numpy as np

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index not in ("flat", "ivf"):
        raise ValueError(f"Unknown index '{index}'. Valid indexes are ['flat', 'ivf'].")
    b = F.normalize(bank.float(), dim=1).cpu().numpy().astype(np.float32)
    q = F.normalize(query.float(), dim=1).cpu().numpy().astype(np.float32)
    dim = b.shape[1]
    k = min(k, b.shape[0])
    if index == "flat":
        search = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        search = faiss.IndexIVFFlat(quantizer, dim, min(nlist, b.shape[0]), faiss.METRIC_INNER_PRODUCT)
        search.train(b)
        search.nprobe = min(nprobe, search.nlist)
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        search = faiss.index_cpu_to_all_gpus(search)
    search.add(b)
    sims, idx = search.search(q, k)                      # (Q, k) each
    # IVF may find fewer than k neighbours (index -1); those cast no vote.
    return _vote(torch.from_numpy(sims), torch.from_numpy(idx), bank_labels.cpu(), num_classes, temperature)
