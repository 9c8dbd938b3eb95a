"""``ctssl bench knn``: weighted-kNN neighbour search, queries/s, on a bank of ``bank`` clustered random
features (dimension 512, unit norm) and ``queries`` queries, k = 20: FAISS exact flat search (in memory, and
streamed over a memory-mapped bank in chunks, as ``ctssl knn`` runs it for banks larger than memory), FAISS IVF
(approximate; 256 cells, 16 searched; with and without building the index; its recall of the exact neighbours
is reported), ctssl's torch brute force, against scikit-learn's ``NearestNeighbors(algorithm="brute",
metric="cosine")`` measured in the same run.

Each figure is the median of ``repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ctssl.bench.measure import median_rate
from ctssl.bench.settings import KNNBench

BENCHMARK = "eval-knn"        # its results: OUT/eval-knn-bench.json


def clustered_features(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(cfg: KNNBench) -> dict:
    from sklearn.neighbors import NearestNeighbors

    from ctssl.eval.measures.knn import faiss_search, knn_predict

    bank, queries, dim, k, repeats = cfg.bank, cfg.queries, cfg.dim, cfg.k, cfg.repeats
    b = clustered_features(bank, dim, 100, 0)
    q = clustered_features(queries, dim, 100, 1)
    labels = torch.zeros(bank, dtype=torch.long)
    rows = {}
    exact = {}

    def flat():
        exact["idx"] = faiss_search(q, b, k)[1]

    rows["faiss_flat"] = median_rate(flat, queries, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.npy"
        np.save(path, b)
        mapped = np.load(path, mmap_mode="r")
        chunked = {}

        def streamed():
            chunked["idx"] = faiss_search(q, mapped, k, chunk_rows=bank // 8)[1]

        rows["faiss_flat_streamed_8_chunks"] = median_rate(streamed, queries, repeats)
    approx = {}

    def ivf():
        approx["idx"] = faiss_search(q, b, k, index="ivf")[1]

    rows["faiss_ivf_with_index_build"] = median_rate(ivf, queries, repeats)
    rows["faiss_ivf_search_only"] = median_rate(_ivf_searcher(b, q, k), queries, repeats)
    bt, qt = torch.from_numpy(b), torch.from_numpy(q)
    rows["torch_brute_force"] = median_rate(lambda: knn_predict(qt, bt, labels, 1, k), queries, repeats)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(b)
    rows["sklearn_brute_cosine"] = median_rate(lambda: nn.kneighbors(q), queries, repeats)
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx["idx"], exact["idx"])])
    same = bool(np.array_equal(np.sort(chunked["idx"], 1), np.sort(exact["idx"], 1)))
    base = rows["sklearn_brute_cosine"]
    return {"bank": bank, "queries": queries, "dim": dim, "k": k, "threads": torch.get_num_threads(),
            "queries_per_s": {name: round(rate, 1) for name, rate in rows.items()},
            "vs_sklearn": {name: round(rate / base, 2) for name, rate in rows.items()},
            "ivf_recall_at_k": round(float(recall), 4), "streamed_equals_in_memory": same}


def _ivf_searcher(bank: np.ndarray, query: np.ndarray, k: int, nlist: int = 256, nprobe: int = 16):
    """A built IVF index (as eval.knn.faiss_search builds it); returns its search alone."""
    import faiss

    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(bank.shape[1]), bank.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(bank[:: max(1, len(bank) // (100 * nlist))])
    index.add(bank)
    index.nprobe = nprobe
    return lambda: index.search(query, k)


def format_table(result: dict) -> str:
    r = result["results"]
    lines = [f"kNN search: bank {r['bank']:,} x {r['dim']}, {r['queries']:,} queries, k = {r['k']} "
             f"({r['threads']} threads)"]
    for name, rate in r["queries_per_s"].items():
        lines.append(f"  {name:<30} {rate:>10.1f} queries/s  ({r['vs_sklearn'][name]:.2f}x scikit-learn)")
    lines.append(f"  IVF recall@k of the exact neighbours: {r['ivf_recall_at_k']:.3f}; streamed search equals "
                 f"in-memory: {r['streamed_equals_in_memory']}")
    return "\n".join(lines)


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    q, base = r["queries_per_s"], r["queries_per_s"]["sklearn_brute_cosine"]
    label = f"kNN k={r['k']}, bank {r['bank']:,}x{r['dim']}"
    rows = [[f"{label}: FAISS {name.removeprefix('faiss_').replace('_', ' ')}", f"{rate:,.0f} queries/s",
             f"scikit-learn brute force {base:,.0f}/s", f"{rate / base:.2f}x"]
            for name, rate in q.items() if name.startswith("faiss")]
    rows[-1][1] += f" (recall@k {r['ivf_recall_at_k']:.3f})" if "ivf" in rows[-1][0] else ""
    return rows
