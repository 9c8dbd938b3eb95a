"""Evaluation benchmarks.

- ``knn``: weighted-kNN neighbour search, queries/s, on a bank of ``bank`` clustered random
  features (dimension 512, unit norm) and ``queries`` queries, k = 20: FAISS exact flat search
  (in memory, and streamed over a memory-mapped bank in chunks, as ``ctssl knn`` runs it for
  banks larger than memory), FAISS IVF (approximate; 256 cells, 16 searched; with and without
  building the index; its recall of the exact neighbours is reported), ctssl's torch brute force,
  against scikit-learn's ``NearestNeighbors(algorithm="brute", metric="cosine")`` measured in the
  same run.
- ``extract``: frozen-feature extraction images/s through ``eval.features.extract_units`` (ResNet-18
  and ResNet-50 at 64 and 224 px, CT slices prepared as the evaluation stages prepare them): every
  image decoded and prepared in the main process (the previous, single-process path) against whole batches
  prepared in the main process and against 2 DataLoader workers preparing them while the main process runs
  the model, in the same run; on the GPU too when there is one.
- ``eval-scale``: streamed exact kNN over a 200,000 x 2048 float32 bank on disk (as ``ctssl knn``
  reads a bank larger than memory), its time and peak memory, projected to 12 million rows.

Each figure is the median of ``repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctssl.core.atomic import atomic_write_text
from ctssl.bench.pretrain import _median_rate


def clustered_features(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_knn(bank: int = 200_000, queries: int = 2_000, dim: int = 512, k: int = 20, repeats: int = 3) -> dict:
    from sklearn.neighbors import NearestNeighbors

    from ctssl.eval.knn import faiss_search, knn_predict

    b = clustered_features(bank, dim, 100, 0)
    q = clustered_features(queries, dim, 100, 1)
    labels = torch.zeros(bank, dtype=torch.long)
    rows = {}
    exact = {}

    def flat():
        exact["idx"] = faiss_search(q, b, k)[1]

    rows["faiss_flat"] = _median_rate(flat, queries, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.npy"
        np.save(path, b)
        mapped = np.load(path, mmap_mode="r")
        chunked = {}

        def streamed():
            chunked["idx"] = faiss_search(q, mapped, k, chunk_rows=bank // 8)[1]

        rows["faiss_flat_streamed_8_chunks"] = _median_rate(streamed, queries, repeats)
    approx = {}

    def ivf():
        approx["idx"] = faiss_search(q, b, k, index="ivf")[1]

    rows["faiss_ivf_with_index_build"] = _median_rate(ivf, queries, repeats)
    rows["faiss_ivf_search_only"] = _median_rate(_ivf_searcher(b, q, k), queries, repeats)
    bt, qt = torch.from_numpy(b), torch.from_numpy(q)
    rows["torch_brute_force"] = _median_rate(lambda: knn_predict(qt, bt, labels, 1, k), queries, repeats)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(b)
    rows["sklearn_brute_cosine"] = _median_rate(lambda: nn.kneighbors(q), queries, repeats)
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


def _extract_previous(model, data, split, spec, out, batch, device) -> None:
    """ctssl 0.2's extraction before the loader workers (kept as the benchmark's baseline only): the images
    streamed and prepared one at a time in the main process, stacked, fp32."""
    from ctssl.eval.inputs import prepare

    pending, row = [], 0
    with torch.inference_mode():
        for image in data.iter_images(split):
            pending.append(prepare(image, spec))
            if len(pending) == batch:
                out[row:row + batch] = model(torch.stack(pending).to(device)).float().cpu().numpy()
                row, pending = row + batch, []
        if pending:
            out[row:] = model(torch.stack(pending).to(device)).float().cpu().numpy()


def bench_extract(sizes=(64, 224), workers: int = 2, repeats: int = 2) -> dict:
    """Extraction images/s on the benchmark's CT shards (8 shards): the previous path (every image prepared
    one at a time in the main process) against ``extract_units`` with no workers (batched preparation in
    the main process) and with ``workers`` DataLoader workers preparing batches while the main process runs
    the model, in the same run; ResNet-18 and ResNet-50, and the data side alone (a pooling layer for a
    model: the ceiling a GPU would be fed at); on the GPU too when there is one."""
    from ctssl.eval.datasets import open_dataset
    from ctssl.eval.features import default_batch, extract_units
    from ctssl.eval.inputs import input_spec
    from ctssl.eval.sources import load_backbone
    from ctssl.bench.pretrain import bench_shards

    out = Path(os.environ.get("CTSSL_BENCH_DIR", "runs/bench"))
    data = open_dataset(str(bench_shards(out)), "region")
    split = "train"
    n = len(data.entries(split))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cases = [("none (data only)", pool, "cpu")] + [
        (name, load_backbone(f"random:{name}:3")[0], device) for name in ("resnet18", "resnet50") for device in devices]
    card = load_backbone("random:resnet18:3")[1]
    rows = []
    for name, model, device in cases:
        model = model.to(device).eval()
        for size in sizes:
            spec = input_spec(card, "ct", size)
            with torch.inference_mode():
                dim = int(model(torch.zeros(1, 3, size, size, device=device)).shape[1])
            batch = default_batch(device)
            target = np.zeros((n, dim), np.float32)
            previous = _median_rate(lambda: _extract_previous(model, data, split, spec, target, batch, device),
                                    n, repeats)
            reference = target.copy()
            rates = {}
            for w in (0, workers):
                target[:] = 0
                rates[w] = _median_rate(lambda w=w: extract_units(model, data, split, spec, target, batch=batch,
                                                                  device=device, workers=w), n, repeats)
            rows.append({"backbone": name, "device": device, "image_size": size, "images": n, "batch": batch,
                         "images_per_s_previous": round(previous, 1),
                         "images_per_s_main_process": round(rates[0], 1),
                         "images_per_s_workers": round(rates[workers], 1),
                         "workers_vs_previous": round(rates[workers] / previous, 2),
                         "workers_vs_main_process": round(rates[workers] / rates[0], 2),
                         "max_abs_diff_vs_previous": float(np.abs(target - reference).max())})
    return {"rows": rows, "workers": workers, "threads": torch.get_num_threads(), "shards": len(data.units[split])}


class _PeakAnonymous:
    """Peak anonymous resident memory (RssAnon: what the process allocated, not the page cache of files it
    maps) while the block runs, sampled every 10 ms; VmHWM would count a memory-mapped bank's pages."""

    def __enter__(self):
        import threading

        self.peak, self.base = 0.0, self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def read() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.read())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def bench_scale(bank_rows: int = 200_000, dim: int = 2048, queries: int = 1_000, k: int = 20,
                target_rows: int = 12_000_000) -> dict:
    """The 12M-slice question, measured at a size this machine holds and projected: streamed exact kNN
    (FAISS flat over a memory-mapped float32 bank on disk, read in chunks of 256 MiB as ``ctssl knn`` reads a
    bank larger than memory) on ``bank_rows`` x ``dim``, its time and the memory it allocates, then linear
    projections (search time grows with bank rows x dim; allocated memory is a few chunks plus the queries'
    heap, whatever the bank)."""
    from ctssl.eval.knn import chunk_rows_for, faiss_search

    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSSL_BENCH_DIR", None)) as tmp:
        path = Path(tmp) / "bank.npy"
        bank = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(bank_rows, dim))
        rng = np.random.default_rng(0)
        for start in range(0, bank_rows, 20_000):
            block = rng.standard_normal((min(20_000, bank_rows - start), dim), dtype=np.float32)
            bank[start:start + len(block)] = block
        bank.flush()
        del bank
        mapped = np.load(path, mmap_mode="r")
        q = rng.standard_normal((queries, dim), dtype=np.float32)
        with _PeakAnonymous() as memory:
            start = time.perf_counter()
            faiss_search(q, mapped, k)
            seconds = time.perf_counter() - start
        del mapped
    rate = queries / seconds
    scale = target_rows / bank_rows
    bank_gb = target_rows * dim * 4 / 1e9
    allocated = memory.peak - memory.base
    return {"bank_rows": bank_rows, "dim": dim, "queries": queries, "k": k, "chunk_rows": chunk_rows_for(dim, k),
            "measured": {"seconds": round(seconds, 2), "queries_per_s": round(rate, 1),
                         "peak_allocated_mb": round(allocated, 1), "bank_mb": round(bank_rows * dim * 4 / 1e6, 1)},
            "projected_12m": {"rows": target_rows, "bank_gb_float32": round(bank_gb, 1),
                              "bank_gb_float16": round(bank_gb / 2, 1),
                              "queries_per_s": round(rate / scale, 2),
                              "hours_for_1m_queries": round(1e6 / (rate / scale) / 3600, 1),
                              "allocated_mb": round(allocated, 1),
                              "note": "exact search streams the bank: allocated memory stays a few chunks; "
                                      "time is linear in rows"}}


def run_eval_bench(out: str | Path, which: str) -> dict:
    from ctssl.core.machine import machine_info

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CTSSL_BENCH_DIR", str(out))
    start = time.perf_counter()
    name = which if which.startswith("eval-") else f"eval-{which}"
    result = {"benchmark": name, "machine": machine_info()}
    result["results"] = {"knn": bench_knn, "extract": bench_extract, "eval-scale": bench_scale}[which]()
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(out / f"{name}-bench.json", json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    r = result["results"]
    if result["benchmark"] == "eval-knn":
        lines = [f"kNN search: bank {r['bank']:,} x {r['dim']}, {r['queries']:,} queries, k = {r['k']} "
                 f"({r['threads']} threads)"]
        for name, rate in r["queries_per_s"].items():
            lines.append(f"  {name:<30} {rate:>10.1f} queries/s  ({r['vs_sklearn'][name]:.2f}x scikit-learn)")
        lines.append(f"  IVF recall@k of the exact neighbours: {r['ivf_recall_at_k']:.3f}; streamed search equals "
                     f"in-memory: {r['streamed_equals_in_memory']}")
        return "\n".join(lines)
    if result["benchmark"] == "eval-scale":
        m, p = r["measured"], r["projected_12m"]
        return "\n".join([
            f"streamed exact kNN, bank {r['bank_rows']:,} x {r['dim']} float32 on disk ({m['bank_mb']:,.0f} MB), "
            f"{r['queries']:,} queries, k = {r['k']}, chunks of {r['chunk_rows']:,} rows",
            f"  measured: {m['seconds']:.1f} s ({m['queries_per_s']:.1f} queries/s), memory allocated at peak "
            f"{m['peak_allocated_mb']:.0f} MB",
            f"  projected to {p['rows']:,} rows: bank {p['bank_gb_float32']:.0f} GB float32 ({p['bank_gb_float16']:.0f} GB "
            f"float16), {p['queries_per_s']:.2f} queries/s ({p['hours_for_1m_queries']:.1f} h per million queries "
            f"on this machine), memory ~{p['allocated_mb']:.0f} MB"])
    lines = [f"feature extraction ({r['threads']} threads, {r['shards']} shards): previous path (one image at a time) -> "
             f"batched in the main process -> {r['workers']} loader workers"]
    for row in r["rows"]:
        lines.append(f"  {row['backbone']} {row['image_size']}x{row['image_size']} on {row['device']} (batch {row['batch']}): "
                     f"{row['images_per_s_previous']:.1f} -> {row['images_per_s_main_process']:.1f} -> "
                     f"{row['images_per_s_workers']:.1f} images/s ({row['workers_vs_previous']:.2f}x the previous path; "
                     f"features differ by at most {row['max_abs_diff_vs_previous']:.1e})")
    return "\n".join(lines)
