"""Benchmarks that anyone can rerun; each reports ratios against a baseline measured in the same
run, prints a table and writes JSON.

  ctssl bench ingest [--out DIR] [--matrix 512]
      ingest slices/s per core vs a naive pydicom + resize + PNG16 baseline doing the same work; JPEG 2000 input; shard
      decode slices/s; bytes per slice; candidate sample encodings
  ctssl bench plan-scale [--series 100000] [--slices 12000000] [--tasks 256]
      time and peak memory of the SLURM ingest's plan and merge phases on a synthetic header
      index of that size
  ctssl bench loader [--out DIR]
      CPU time per two-view SimCLR CT sample in the loader (device-side views) vs ctssl 0.1's
      per-sample CPU views and lightly's SimCLRTransform on PIL
  ctssl bench batches [--out DIR]
      distinct series and same-series pairs per 512-batch, series-ordered vs shuffled shards vs i.i.d.
  ctssl bench train [--out DIR]
      SimCLR ResNet-18 training images/s (CPU; GPU with bf16 + channels_last when present)
  ctssl bench knn [--out DIR]
      kNN queries/s: FAISS flat, streamed and IVF, torch brute force vs scikit-learn brute force
  ctssl bench extract [--out DIR]
      feature extraction images/s (data only, ResNet-18/50): batched in the main process and with 2
      loader workers, each vs the previous one-image-at-a-time path
  ctssl bench eval-scale [--out DIR]
      streamed exact kNN on a 200,000 x 2048 bank on disk, time and allocated memory, projected to 12M slices
  ctssl bench gpu [--out DIR] [--tiny] [--only SUITE]
      one call on a lent H100/H200 (< 8 minutes): SimCLR ResNet-50 and DINO ViT-S/16 fed by the real
      loader vs synthetic tensors (samples/s, MFU, peak memory, data wait, host syncs per step), compile
      on/off, ResNet-50 extraction vs one image at a time, kNN on 1M x 2048 (FAISS GPU, torch fp32/fp16)
      vs FAISS CPU; OUT/gpu-bench.md and .json. --tiny: the same on a CPU in seconds (the test suite)
  ctssl bench all [--out DIR] [--skip SUITE]
      every suite above (plan-scale at 1.2M slices), one table: OUT/bench-suite.md and .json
      (the table docs/benchmarks.md reproduces)

Each suite's settings (ctssl.bench.settings) take --config and --set, e.g. a quick kNN run:
  ctssl bench knn --set bank=20000 --set queries=200
and are written beside its results (OUT/<results>-config.yaml).
"""

from __future__ import annotations

import argparse

from ctssl.core.options import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    from ctssl.bench.suite import SUITES

    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, suite in SUITES.items():
        cmd = sub.add_parser(name, help=suite.help)
        settings = Settings(cmd, f"ctssl.bench.settings:{suite.settings}", example=suite.example)
        settings.option("--out", key="out", help="work folder; corpora are cached here")
        if name == "ingest":
            settings.option("--matrix", key="matrix", type=int, help="input slice matrix")
        if name == "plan-scale":
            settings.option("--series", key="series", type=int, help="series in the index")
            settings.option("--slices", key="slices", type=int, help="images in all (~2 GB of work folder per 12M)")
            settings.option("--tasks", key="tasks", type=int, help="array tasks")
    every = sub.add_parser("all", help="every suite, one table (bench-suite.md / .json)")
    settings = Settings(every, "ctssl.bench.settings:SuiteBench", example="skip=[ingest]")
    settings.option("--out", key="out", help="work folder")
    settings.option("--skip", key="skip", action="append", help="suite to leave out (repeatable)")
    settings.option("--scale-slices", key="scale_slices", type=int, help="plan-scale size")
    gpu = sub.add_parser("gpu", help="every GPU figure in one call on a lent H100/H200 (--tiny: on a CPU)")
    settings = Settings(gpu, "ctssl.bench.settings:GPUBench", example="tiny=true")
    settings.option("--out", key="out", help="work folder; the benchmark's shards are built here")
    settings.switch("--tiny", key="tiny", value=True, help="tiny sizes, for a CPU (the test suite runs it)")
    settings.option("--only", key="only", action="append", help="run only this suite (repeatable): simclr, compile, "
                    "dino, extract, knn")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctssl.bench import suite
    from ctssl.core.config import save_config
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve

    cfg = resolve(args)
    setup_logging("WARNING")
    if args.suite == "gpu":
        from ctssl.bench.gpu import GPUBenchSize, markdown, run_gpu_bench

        save_config(cfg, Path(cfg.out) / "gpu-bench-config.yaml")
        result = run_gpu_bench(cfg.out, GPUBenchSize.tiny() if cfg.tiny else None, cfg.only or None)
        print(markdown(result))
        print(f"written: {cfg.out}/gpu-bench.md, {cfg.out}/gpu-bench.json")
        return 1 if result["errors"] else 0
    if args.suite == "all":
        save_config(cfg, Path(cfg.out) / "bench-suite-config.yaml")
        result = suite.run_suite(cfg)
        print(suite.markdown(result))
        print(f"written: {cfg.out}/bench-suite.md, {cfg.out}/bench-suite.json")
        return 0
    path = suite.result_path(args.suite, cfg)
    save_config(cfg, path.with_name(f"{path.stem}-config.yaml"))
    print(suite.suite(args.suite).format_table(suite.run(args.suite, cfg)))
    print(f"written: {path}")
    return 0
