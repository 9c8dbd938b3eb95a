"""The settings of each benchmark suite (``ctssl bench SUITE --set KEY=VALUE``; written beside the suite's
results as ``<results>-config.yaml``). Dataclasses only, so that the command line builds its options without
importing the suites."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Bench:
    out: str = "runs/bench"                 # work folder; corpora are cached here


@dataclass
class IngestBench(Bench):
    matrix: int = 512                       # input slice matrix


@dataclass
class PlanScaleBench(Bench):
    series: int = 100_000                   # series in the synthetic header index
    slices: int = 12_000_000                # images in all (~2 GB of work folder per 12M)
    tasks: int = 256                        # array tasks


@dataclass
class LoaderBench(Bench):
    samples: int = 256                      # two-view samples per timed pass
    repeats: int = 3


@dataclass
class BatchesBench(Bench):
    batch: int = 512
    batches: int = 24
    workers: int = 2


@dataclass
class TrainBench(Bench):
    batch: int = 32
    sizes: list[int] = field(default_factory=lambda: [96, 224])
    steps: int = 3                          # timed steps after a warm-up step


@dataclass
class KNNBench(Bench):
    bank: int = 200_000
    queries: int = 2_000
    dim: int = 512
    k: int = 20
    repeats: int = 3


@dataclass
class SegmentBench(Bench):
    backbones: list[str] = field(default_factory=lambda: ["resnet18", "resnet50"])
    sizes: list[int] = field(default_factory=lambda: [128, 256])
    batch: int = 8
    classes: int = 3                        # background, liver, tumour (LiTS)
    steps: int = 3                          # timed repeats after a warm-up
    slices: int = 200                       # masked slices decoded for the data path


@dataclass
class ExtractBench(Bench):
    sizes: list[int] = field(default_factory=lambda: [64, 224])
    workers: int = 2                        # loader workers of the worker path
    repeats: int = 2


@dataclass
class ScaleBench(Bench):
    bank_rows: int = 200_000                # bank measured on disk
    dim: int = 2048
    queries: int = 1_000
    k: int = 20
    target_rows: int = 12_000_000           # projected to


@dataclass
class SuiteBench(Bench):
    skip: list[str] = field(default_factory=list)     # suites left out
    scale_slices: int = 1_200_000           # plan-scale at this many slices (120 per series, 256 tasks)


@dataclass
class GPUBench(Bench):
    out: str = "runs/bench-gpu"             # work folder; the benchmark's CT shards are built here
    tiny: bool = False                      # tiny sizes for a CPU (the test suite), instead of the GPU sizes
    only: list[str] = field(default_factory=list)   # suites to run (simclr, compile, dino, extract, knn); [] = all
