"""Pretraining configuration: defaults here, an experiment YAML with its differences, overrides.

Learning rate: ``optim.lr = 0`` (default) derives it from the recipe and the *global* batch
(per-process batch x processes): SimCLR with LARS uses ``0.075 * sqrt(global batch)`` (lightly's
ImageNet benchmark, from the SimCLR paper's square-root scaling); otherwise
``base_lr * global batch / 256`` (linear scaling; DINO's ``0.0005 * batch / 256`` with AdamW).
The resolved value is written to ``OUT/config.yaml`` with everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CTAugment:
    """CT view augmentations, all in Hounsfield units before windowing (no RGB colour jitter)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    hflip: float = 0.5
    vflip: float = 0.0
    window_jitter: float = 0.1      # level +- jitter * width, width * (1 +- jitter)
    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 1.5])   # pixels
    noise_prob: float = 0.5
    noise_hu: list[float] = field(default_factory=lambda: [0.0, 20.0])    # sigma range, HU


@dataclass
class DataConfig:
    shards: str = "runs/demo/shards-ct"   # a shard folder (manifest.json) from ctssl ingest / from-images
    split: str = "train"
    kind: str = "auto"                     # "ct" (.hu samples), "natural" (encoded images) or auto
    image_size: int = 224                  # global view size
    batch_size: int = 64                   # per process
    num_workers: int = 2
    shuffle_buffer: int = 512
    epoch_samples: int = 0                 # samples per epoch; 0: the split's count in the manifest
    # CT only: windows stacked as channels (names from data.windowing.WINDOWS); one = 1 channel.
    windows: list[str] = field(default_factory=lambda: ["lung", "soft_tissue", "bone"])
    normalize_mean: float = 0.5            # after windowing to [0, 1]: (x - mean) / std
    normalize_std: float = 0.5
    augment: CTAugment = field(default_factory=CTAugment)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"             # resnet18, resnet50, vit_s16
    init: str = "scratch"                  # scratch, imagenet (local weights file), checkpoint
    weights: str | None = None             # file for imagenet / checkpoint init
    in_chans: int = 0                      # 0: number of CT windows, or 3 for natural images


@dataclass
class SimCLRConfig:
    temperature: float = 0.1
    hidden_dim: int = 2048
    output_dim: int = 128
    gather_distributed: bool = True        # negatives from every process (lightly default: False)


@dataclass
class DINOConfig:
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    output_dim: int = 4096                 # paper: 65536; smaller fits small data and CPUs
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum_start: float = 0.996          # teacher EMA, cosine to momentum_end over training
    momentum_end: float = 1.0
    freeze_last_layer_epochs: int = 1
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crops: int = 6
    local_size: int = 96
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])


@dataclass
class MethodConfig:
    name: str = "simclr"                   # simclr, dino
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)


@dataclass
class OptimConfig:
    name: str = "auto"                     # lars, adamw; auto: lars for SimCLR, adamw for DINO
    lr: float = 0.0                        # 0: derived from the recipe (module docstring)
    base_lr: float = 0.0005                # linear-scaling base (per 256 samples)
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0                 # max gradient norm; 0 = off


@dataclass
class MonitorConfig:
    log_every: int = 10                    # steps
    knn_every: int = 0                     # steps; 0 = at the end of each epoch
    knn_label: str = "region"              # label key in the samples' metadata (natural images: "class")
    knn_samples: int = 256                 # bank samples (training split) and query samples, each
    knn_split: str = "val"                 # split of the queries
    collapse_std: float = 0.3              # warn when embedding std * sqrt(dim) falls below this
    tensorboard: bool = True


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    seed: int = 0
    epochs: int = 100
    max_steps: int = 0                     # stop after this many steps (0: epochs decide)
    precision: str = "no"                  # no, bf16, fp16
    channels_last: bool = False
    compile: bool = False
    checkpoint_every: int = 500            # steps; also at each epoch end, at the end, on SIGTERM/USR1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
