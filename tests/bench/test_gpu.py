"""`ctssl bench gpu` runs end to end in its tiny configuration on a CPU, so that a lent GPU's quarter of an
hour is never spent debugging it: every suite produces its figures and its same-run baseline."""

from __future__ import annotations

import json

from ctssl.bench.gpu import GPUBenchSize, run_gpu_bench


def test_the_one_shot_gpu_benchmark_runs_tiny_on_a_cpu(tmp_path):
    size = GPUBenchSize.tiny()
    result = run_gpu_bench(tmp_path, size)
    assert result["errors"] == {}, result["errors"]
    s = result["suites"]
    for method in ("simclr", "dino"):
        t = s[method]
        assert t["loader"]["samples_per_s"] > 0 and t["synthetic"]["samples_per_s"] > 0
        assert t["synthetic"]["flops_per_sample"] > 0 and 0 <= t["loader"]["data_wait_fraction"] <= 1
        assert t["views_per_sample"] == (2 if method == "simclr" else 2 + size.dino_local)
        # The timed window is the stated steps after the warm-up; the synthetic step uses the method's optimizer.
        assert t["loader"]["timed_steps"] == f"{size.warmup_steps + 1}-{size.warmup_steps + size.steps}"
        assert t["synthetic"]["optimizer"] == ("LARS" if method == "simclr" else "AdamW")
    assert s["extract"]["batched_images_per_s"] > 0 and s["extract"]["one_at_a_time_images_per_s"] > 0
    knn = s["knn"]
    assert knn["recall_vs_exact_fp32"]["faiss_cpu_flat (baseline)"] > 0.99      # FAISS agrees with torch's exact search
    assert set(knn["queries_per_s"]) >= {"torch_fp32", "faiss_cpu_flat (baseline)"}
    written = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert written["suites"]["simclr"]["batch"] == size.simclr_batch
    table = (tmp_path / "gpu-bench.md").read_text()
    assert "loader-fed" in table and "same-run baseline" in table and "FAISS CPU" in table


def test_the_card_s_peak_comes_from_its_exact_model():
    from ctssl.bench.gpu import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12          # SXM
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA H200 NVL") == 835e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA B200") is None                       # not in the table: no MFU rather than a wrong one
