"""The settings of every evaluation command: what its ``--config`` file holds and ``--set`` changes, composed of
the protocols' settings, with the same keys as a sweep (``eval.sweep.config``): ``ctssl probe --set
probe.epochs=10`` and ``ctssl sweep --set probe.epochs=10`` mean the same. Each default is stated once, here or
in the protocol's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ctssl.eval.inputs.datasets import IMAGES_ONLY
from ctssl.eval.inputs.spec import GREY_WINDOW
from ctssl.eval.measures.classification import BOOTSTRAP_RESAMPLES
from ctssl.eval.measures.probe import ProbeConfig
from ctssl.eval.protocols.confounders import ConfounderSettings
from ctssl.eval.protocols.gap import GapSettings
from ctssl.eval.protocols.knn import KNNSettings
from ctssl.eval.protocols.similarity import SimilaritySettings
from ctssl.eval.protocols.spec import EvalSpec, EvalTarget
from ctssl.eval.report.build import TITLE
from ctssl.eval.protocols.segment import SegmentSpec
from ctssl.finetune.finetune import FinetuneConfig
from ctssl.finetune.segment import SegmentConfig


@dataclass
class EvalCommand(EvalSpec):
    out: str = ""                                        # results folder
    names: list[str] = field(default_factory=list)       # readable names of the backbones, in order (report)
    baseline: str = ""                                   # compared with: a source or name; "": the first natural-
                                                         # image-pretrained backbone, else the first


@dataclass
class KNNCommand(EvalCommand):
    cache: str = ""                                      # feature cache folder; "": OUT/features
    knn: KNNSettings = field(default_factory=KNNSettings)


@dataclass
class ProbeCommand(EvalCommand):
    cache: str = ""                                      # feature cache folder; "": OUT/features
    logreg: bool = True                                  # scikit-learn LogisticRegression cross-check
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class FinetuneCommand(EvalCommand):
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class SegmentCommand(SegmentSpec):
    out: str = ""                                        # results folder
    names: list[str] = field(default_factory=list)       # readable names of the backbones, in order (report)
    baseline: str = ""                                   # compared with: a source or name; "": the first natural-
                                                         # image-pretrained backbone, else the first
    save_predictions: bool = False                       # NIfTI masks and per-case CSV under OUT/predictions/
    segment: SegmentConfig = field(default_factory=SegmentConfig)


@dataclass
class ExtractCommand:
    out: str = ""                                        # results folder; the cache is OUT/features unless cache
    data: str = ""
    backbone: str = ""
    label: str = IMAGES_ONLY                             # a label selecting the samples carrying it; "": all
    splits: list[str] = field(default_factory=list)      # []: every split the dataset has
    image_size: int = 0                                  # 0: the backbone's pretraining size
    grey_window: str = GREY_WINDOW
    cache: str = ""
    batch_size: int = 0                                  # 0: 8 on CPU, 256 on GPU
    workers: Optional[int] = None                        # loader workers; null: with a GPU the CPUs less one (<= 8),
                                                         # on CPU none


@dataclass
class SimilarityCommand(SimilaritySettings):
    out: str = ""                                        # folder of similarity/<name>.json and heat maps
    data: str = ""
    a: str = ""                                          # backbone sources A and B
    b: str = ""
    name: str = ""                                       # "": A_vs_B


@dataclass
class GapCommand(GapSettings):
    out: str = ""                                        # folder of gap/<name>.json
    a: str = ""                                          # datasets A and B (FOLDER@key=value filters)
    b: str = ""
    backbones: list[str] = field(default_factory=list)
    cache: str = ""                                      # feature cache; "": OUT/features
    name: str = ""                                       # "": A_vs_B


@dataclass
class ConfoundersCommand(EvalTarget):
    label: str = "lesion"
    out: str = ""                                        # folder of confounders/<name>.json
    confounder: str = "tag"                              # tag, patch, noise or lowpass
    seed: int = 0
    cache: str = ""                                      # feature cache (probe mode); "": OUT/features
    name: str = ""                                       # "": CONFOUNDER-DATASET
    confounders: ConfounderSettings = field(default_factory=ConfounderSettings)
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(epochs=50))              # mode probe
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=5))     # mode finetune


@dataclass
class ReportCommand:
    out: str = ""                                        # the results folder
    title: str = TITLE
    n_boot: int = BOOTSTRAP_RESAMPLES                    # bootstrap resamples of the paired comparisons
    baseline: str = ""                                   # compared with: a source or name; "": the first natural-
                                                         # image-pretrained backbone, else the first
    adjust: str = "holm"                                 # p-values adjusted over each table: holm or bh
    log_with: list[str] = field(default_factory=list)    # Accelerate trackers to send each run to (mlflow, wandb, ...)
