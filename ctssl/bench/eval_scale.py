"""``ctssl bench eval-scale``: streamed exact kNN over a 200,000 x 2048 float32 bank on disk (as ``ctssl knn``
reads a bank larger than memory), its time and peak memory, projected to 12 million rows."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ctssl.bench.settings import ScaleBench

BENCHMARK = "eval-scale"        # its results: OUT/eval-scale-bench.json


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


def measure(cfg: ScaleBench) -> dict:
    """The 12M-slice question, measured at a size this machine holds and projected: streamed exact kNN
    (FAISS flat over a memory-mapped float32 bank on disk, read in chunks of 256 MiB as ``ctssl knn`` reads a
    bank larger than memory) on ``bank_rows`` x ``dim``, its time and the memory it allocates, then linear
    projections (search time grows with bank rows x dim; allocated memory is a few chunks plus the queries'
    heap, whatever the bank)."""
    from ctssl.eval.measures.knn import chunk_rows_for, faiss_search

    bank_rows, dim, queries, k, target_rows = cfg.bank_rows, cfg.dim, cfg.queries, cfg.k, cfg.target_rows
    with tempfile.TemporaryDirectory(dir=cfg.out) as tmp:
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


def format_table(result: dict) -> str:
    r = result["results"]
    m, p = r["measured"], r["projected_12m"]
    return "\n".join([
        f"streamed exact kNN, bank {r['bank_rows']:,} x {r['dim']} float32 on disk ({m['bank_mb']:,.0f} MB), "
        f"{r['queries']:,} queries, k = {r['k']}, chunks of {r['chunk_rows']:,} rows",
        f"  measured: {m['seconds']:.1f} s ({m['queries_per_s']:.1f} queries/s), memory allocated at peak "
        f"{m['peak_allocated_mb']:.0f} MB",
        f"  projected to {p['rows']:,} rows: bank {p['bank_gb_float32']:.0f} GB float32 ({p['bank_gb_float16']:.0f} GB "
        f"float16), {p['queries_per_s']:.2f} queries/s ({p['hours_for_1m_queries']:.1f} h per million queries "
        f"on this machine), memory ~{p['allocated_mb']:.0f} MB"])


def summary_rows(r: dict) -> list[list[str]]:
    """The suite's lines in ``ctssl bench all``'s table: what, figure, baseline (same run), ratio."""
    m, p = r["measured"], r["projected_12m"]
    return [[f"streamed exact kNN, bank {r['bank_rows']:,}x{r['dim']} on disk, k={r['k']}",
             f"{m['queries_per_s']:,.1f} queries/s, {m['peak_allocated_mb']:,.0f} MB allocated", "", ""],
            [f"projected: bank {p['rows']:,}x{r['dim']} ({p['bank_gb_float32']:.0f} GB)",
             f"{p['queries_per_s']:.2f} queries/s, ~{p['allocated_mb']:,.0f} MB allocated", "", ""]]
