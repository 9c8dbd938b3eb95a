"""Pretraining configuration, resolved in layers, each overriding the one before:

1. the dataclass defaults below;
2. the method's reference settings (``METHOD_DEFAULTS``: SimCLR as the SimCLR paper and lightly's
   ImageNet benchmark run it, DINO as facebookresearch/dino's ``main_dino.py``), chosen by
   ``method.name`` as the later layers set it;
3. a study recipe (``--recipe NAME`` = ``pretrain/recipes/NAME.yaml``, only its differences);
4. the user's experiment file (``--config FILE``);
5. ``--set key=value`` and the named options.

The resolved configuration, with the derived learning rate, global batch and steps, is written to
``OUT/config.yaml``. Settings left ``null`` are chosen at run time from the machine (``precision``:
bf16 on a GPU that has it, else fp32; ``channels_last``: on for ResNets on a GPU; ``data.num_workers``:
the CPUs per process less one, at most 16) and the resolved value is what ``config.yaml`` records.

Learning rate: ``optim.lr = 0`` derives it from ``optim.base_lr`` and the *global* batch (per-process
batch x processes) by ``optim.lr_scaling``: ``sqrt`` (``base_lr x sqrt(batch)``, SimCLR's square-root
rule, 0.075 in lightly's benchmark), ``linear`` (``base_lr x batch / 256``: DINO's 0.0005, the SimCLR
paper's 0.3) or ``none`` (``base_lr`` as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass
class CTAugment:
    """CT view augmentations, in Hounsfield units before the intensity mapping (no RGB colour jitter)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])   # SimCLR's RandomResizedCrop
    hflip: float = 0.5
    vflip: float = 0.0
    window_jitter: float = 0.1      # level +- jitter * width, width * (1 +- jitter), per view and window
    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 1.5])   # pixels of the view
    noise_prob: float = 0.5
    noise_hu: list[float] = field(default_factory=lambda: [0.0, 20.0])    # sigma range, HU
    intensity_jitter_prob: float = 0.0   # brightness/contrast on the [0, 1] image (SimCLR's jitter on grey)
    brightness: float = 0.8
    contrast: float = 0.8


@dataclass
class DataConfig:
    shards: str = "runs/demo/shards-ct"   # a shard folder (manifest.json); for CT, `ctssl shards shuffle` output
    split: str = "train"
    kind: str = "auto"                     # "ct" (.hu samples), "natural" (encoded images) or auto
    image_size: int = 224                  # global view size
    batch_size: Optional[int] = None       # per process; null: 64 (only one of batch_size, global_batch_size)
    global_batch_size: int = 0             # 0: batch_size x processes; else split evenly over the processes
    num_workers: Optional[int] = None      # loader workers per process; null: CPUs per process - 1 (<= 16)
    interleave: int = 4                    # shards each worker reads at once, samples drawn at random among them
    shuffle_buffer: int = 1024             # samples (still encoded) each worker draws from at random
    epoch_samples: int = 0                 # samples per epoch; 0: the split's count in the manifest
    record_keys: bool = False              # audit: each step's sample keys to OUT/keys/rank{R}.txt
    # CT only. intensity "windows": each window of `windows` (data.windowing.WINDOWS) becomes a channel;
    # "minmax": per-slice min-max to [0, 1] (the RadNet-12M recipe), replicated to model.in_chans.
    intensity: str = "windows"
    windows: list[str] = field(default_factory=lambda: ["lung", "soft_tissue", "bone"])
    normalize_mean: float = 0.5            # after the intensity mapping to [0, 1]: (x - mean) / std
    normalize_std: float = 0.5
    augment: CTAugment = field(default_factory=CTAugment)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"             # resnet18, resnet50, vit_s16
    init: str = "scratch"                  # scratch, imagenet (local weights file), checkpoint, or a backbone
                                           # source (timm:NAME:FILE, hf:DIR, ...): continued pretraining
    weights: Optional[str] = None          # file for imagenet / checkpoint init
    in_chans: int = 0                      # 0: number of CT windows (minmax: 3), or 3 for natural images
    sync_bn: bool = True                   # BatchNorm synchronised over all processes (when > 1 run)
    drop_path: float = 0.0                 # ViT stochastic depth (DINO ViT-S: 0.1)


@dataclass
class SimCLRConfig:
    temperature: float = 0.1
    hidden_dim: int = 2048
    output_dim: int = 128
    num_layers: int = 2                    # projection head layers (SimCLR v1: 2; v2: 3)
    gather_distributed: bool = True        # negatives from every process (lightly default: False)


DEFAULT_BATCH = 64


@dataclass
class MemoryConfig:
    """How a process's batch is split to fit memory (docs/pretraining.md, "Memory")."""

    micro_batch_size: int = 0              # 0: auto (GPU: the largest that fits budget_gb; CPU: the whole batch)
    budget_gb: Optional[float] = None      # activation memory per process; null: 60% of the GPU's memory


@dataclass
class DINOConfig:
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    output_dim: int = 65536                # main_dino.py's out_dim
    norm_last_layer: bool = True           # main_dino.py: True (ViT-S runs use False for best results)
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum_start: float = 0.996          # teacher EMA, cosine to momentum_end over training
    momentum_end: float = 1.0
    freeze_last_layer_epochs: int = 1
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crops: int = 8
    local_size: int = 96
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    # main_dino.py's DataAugmentationDINO: blur p 1.0 on the first global view, 0.1 on the second (which is
    # also solarised with p 0.2), 0.5 on the local views. CT: blur in HU, solarisation of the windowed image.
    global_blur_prob: list[float] = field(default_factory=lambda: [1.0, 0.1])
    global_solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.2])
    local_blur_prob: float = 0.5


@dataclass
class MethodConfig:
    name: str = "simclr"                   # simclr, dino
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)


@dataclass
class OptimConfig:
    name: str = "lars"                     # lars, adamw, sgd
    lr: float = 0.0                        # 0: base_lr scaled by the global batch (lr_scaling)
    base_lr: float = 0.075
    lr_scaling: str = "sqrt"               # sqrt, linear (per 256 samples), none
    weight_decay: float = 1e-6             # on weights only, never on biases and norms
    weight_decay_end: Optional[float] = None   # cosine schedule to this value (DINO 0.04 -> 0.4); null: constant
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    min_lr: float = 0.0                    # the cosine schedule's end (DINO: 1e-6)
    clip_grad: float = 0.0                 # 0 = off
    clip_mode: str = "norm"                # norm: global gradient norm; per_param: each parameter (DINO)


@dataclass
class MonitorConfig:
    log_every: int = 10                    # steps
    knn_every: int = 0                     # steps; 0 = at the end of each epoch
    knn_label: str = "region"              # label key in the samples' metadata (natural images: "class")
    knn_samples: int = 256                 # bank samples (training split) and query samples, each
    knn_split: str = "val"                 # split of the queries
    knn_shards: str = ""                   # shards of the monitor's samples; "" = data.shards
    collapse_std: float = 0.3              # warn when std(L2-normalised embedding) * sqrt(dim) falls below
    knn_scan: int = 4096                   # samples read at most, per split, to draw the kNN monitor's samples
    progress_seconds: float = 60.0         # without a terminal (SLURM logs): a progress line at most this often
    sync_debug: bool = False               # CUDA: count host synchronisations of ordinary steps (and where)
    tensorboard: bool = True               # false: tensorboard left out of log_with
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])   # Accelerate's trackers (core.trackers)


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    seed: int = 0
    epochs: int = 100
    max_steps: int = 0                     # stop after this many steps (0: epochs decide)
    precision: Optional[str] = None        # no, bf16, fp16; null: bf16 on a GPU that has it, else no
    channels_last: Optional[bool] = None   # null: on for ResNets on a GPU
    compile: bool = False
    checkpoint_every: int = 500            # steps; also at each epoch end, at the end, on SIGTERM/USR1
    stop_check_every: int = 10             # steps between the processes' agreement on a stop signal
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)


# The methods' reference optimisation settings (layer 2 of the module docstring).
METHOD_DEFAULTS: dict[str, dict] = {
    # SimCLR paper (Chen et al. 2020, appendix B.1) and lightly's ImageNet benchmark: LARS, square-root
    # scaled lr 0.075 x sqrt(batch), weight decay 1e-6, momentum 0.9, 10 warm-up epochs then cosine to 0.
    "simclr": {"optim": {"name": "lars", "base_lr": 0.075, "lr_scaling": "sqrt", "weight_decay": 1e-6,
                         "weight_decay_end": None, "warmup_epochs": 10, "min_lr": 0.0, "clip_grad": 0.0,
                         "clip_mode": "norm"}},
    # facebookresearch/dino main_dino.py defaults: AdamW, lr 0.0005 x batch / 256 after 10 warm-up
    # epochs, cosine to min_lr 1e-6; weight decay cosine 0.04 -> 0.4; each parameter's gradient
    # clipped at norm 3.0; last layer frozen in the first epoch.
    "dino": {"optim": {"name": "adamw", "base_lr": 0.0005, "lr_scaling": "linear", "weight_decay": 0.04,
                       "weight_decay_end": 0.4, "warmup_epochs": 10, "min_lr": 1e-6, "clip_grad": 3.0,
                       "clip_mode": "per_param"}},
}


def resolve_pretrain_config(recipe: str | None = None, config_file: str | None = None, overrides=(),
                            options: dict | None = None) -> PretrainConfig:
    """The layers of the module docstring, merged; the method (and so its defaults) is whatever the
    recipe, the file, the overrides and the options finally choose."""
    from ctssl.core.config import recipe_path, resolve_config

    layers = ([recipe_path(RECIPES, recipe)] if recipe else []) + ([config_file] if config_file else [])
    overrides = list(overrides)
    first = resolve_config(PretrainConfig, layers, overrides, options)
    if first.method.name not in METHOD_DEFAULTS:
        from ctssl.core.config import ConfigError

        raise ConfigError(f"Unknown method '{first.method.name}'. Valid methods are {sorted(METHOD_DEFAULTS)}.")
    return resolve_config(PretrainConfig, [METHOD_DEFAULTS[first.method.name], *layers], overrides, options)


def batch_per_process(cfg: PretrainConfig, world: int) -> int:
    """The per-process batch: ``data.global_batch_size`` split over the processes, else ``data.batch_size``."""
    if cfg.data.global_batch_size:
        if cfg.data.global_batch_size % world:
            from ctssl.core.config import ConfigError

            raise ConfigError(f"data.global_batch_size {cfg.data.global_batch_size} is not divisible by the "
                              f"{world} processes.")
        return cfg.data.global_batch_size // world
    return cfg.data.batch_size or DEFAULT_BATCH


def _init_source_problems(cfg: PretrainConfig) -> list[str]:
    """``model.init`` as a backbone source (continued pretraining): it must exist and match ``model.backbone``."""
    from ctssl.pretrain.sources import backbone_card

    try:
        card = backbone_card(cfg.model.init)
    except (ValueError, FileNotFoundError, ImportError) as err:
        return [f"model.init must be scratch, imagenet, checkpoint or a backbone source: {err}"]
    if card["backbone"] != cfg.model.backbone:
        return [f"model.backbone must be {card['backbone']} for model.init {cfg.model.init!r} (--init sets it), "
                f"got {cfg.model.backbone!r}"]
    return []


def validate(cfg: PretrainConfig) -> None:
    """Every setting checked before anything runs; one ConfigError naming each bad key and its valid values."""
    from ctssl.core.config import ConfigError
    from ctssl.data.windowing import WINDOWS
    from ctssl.pretrain.backbones import architecture, is_init_source

    problems = []

    def check(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    from ctssl.core.trackers import check_trackers

    problems += [f"monitor.log_with: {p}" for p in check_trackers(list(cfg.monitor.log_with))]
    check(cfg.precision in (None, "no", "bf16", "fp16"), f"precision must be no, bf16, fp16 or null (auto), got {cfg.precision!r}")
    check(cfg.method.name in METHOD_DEFAULTS, f"method.name must be one of {sorted(METHOD_DEFAULTS)}, got {cfg.method.name!r}")
    if is_init_source(cfg.model.init):
        problems += _init_source_problems(cfg)
    else:
        try:
            architecture(cfg.model.backbone)
        except (ValueError, ImportError) as err:
            problems.append(f"model.backbone: {err}")
    check(cfg.model.drop_path == 0 or cfg.model.backbone.startswith("vit"), "model.drop_path applies to ViTs only")
    check(0 <= cfg.model.drop_path < 1, f"model.drop_path must be in [0, 1), got {cfg.model.drop_path}")
    check(cfg.model.in_chans >= 0, f"model.in_chans must be >= 0, got {cfg.model.in_chans}")
    check(cfg.data.kind in ("auto", "ct", "natural"), f"data.kind must be auto, ct or natural, got {cfg.data.kind!r}")
    check(cfg.data.intensity in ("windows", "minmax"), f"data.intensity must be windows or minmax, got {cfg.data.intensity!r}")
    unknown = [w for w in cfg.data.windows if w not in WINDOWS]
    check(not unknown, f"data.windows: unknown window(s) {unknown}; valid windows are {sorted(WINDOWS)}")
    check(bool(cfg.data.windows) or cfg.data.intensity == "minmax", "data.windows is empty")
    check(cfg.data.batch_size is None or cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    check(cfg.data.global_batch_size >= 0, f"data.global_batch_size must be >= 0, got {cfg.data.global_batch_size}")
    check(not (cfg.data.batch_size and cfg.data.global_batch_size),
          f"data.batch_size (--batch-size) {cfg.data.batch_size} and data.global_batch_size "
          f"{cfg.data.global_batch_size} are both set: the global batch (a recipe sets it) is split over the "
          "processes and, where it does not fit in memory, into micro-batches with the same loss "
          "(memory.micro_batch_size); change it with --set data.global_batch_size=N, or drop --batch-size")
    check(cfg.memory.micro_batch_size >= 0, f"memory.micro_batch_size must be >= 0, got {cfg.memory.micro_batch_size}")
    check(cfg.memory.budget_gb is None or cfg.memory.budget_gb > 0, f"memory.budget_gb must be positive or null, got {cfg.memory.budget_gb}")
    check(cfg.data.image_size >= 8, f"data.image_size must be >= 8, got {cfg.data.image_size}")
    check(cfg.data.num_workers is None or cfg.data.num_workers >= 0, f"data.num_workers must be >= 0 or null, got {cfg.data.num_workers}")
    check(cfg.data.interleave >= 1 and cfg.data.shuffle_buffer >= 1, "data.interleave and data.shuffle_buffer must be >= 1")
    check(cfg.data.normalize_std > 0, f"data.normalize_std must be positive, got {cfg.data.normalize_std}")
    a = cfg.data.augment
    check(len(a.crop_scale) == 2 and 0 < a.crop_scale[0] <= a.crop_scale[1] <= 1,
          f"data.augment.crop_scale must be [low, high] with 0 < low <= high <= 1, got {a.crop_scale}")
    for name in ("hflip", "vflip", "blur_prob", "noise_prob", "intensity_jitter_prob"):
        check(0 <= getattr(a, name) <= 1, f"data.augment.{name} must be a probability, got {getattr(a, name)}")
    check(len(a.blur_sigma) == 2 and 0 <= a.blur_sigma[0] <= a.blur_sigma[1], f"data.augment.blur_sigma must be [low, high], got {a.blur_sigma}")
    check(len(a.noise_hu) == 2 and 0 <= a.noise_hu[0] <= a.noise_hu[1], f"data.augment.noise_hu must be [low, high], got {a.noise_hu}")
    check(0 <= a.window_jitter < 1, f"data.augment.window_jitter must be in [0, 1), got {a.window_jitter}")
    check(cfg.epochs >= 1 or cfg.max_steps >= 1, "epochs or max_steps must be >= 1")
    check(cfg.max_steps >= 0 and cfg.checkpoint_every >= 0, "max_steps and checkpoint_every must be >= 0")
    check(cfg.stop_check_every >= 1 and cfg.monitor.log_every >= 1, "stop_check_every and monitor.log_every must be >= 1")
    o = cfg.optim
    check(o.name in ("lars", "adamw", "sgd"), f"optim.name must be lars, adamw or sgd, got {o.name!r}")
    check(o.lr_scaling in ("sqrt", "linear", "none"), f"optim.lr_scaling must be sqrt, linear or none, got {o.lr_scaling!r}")
    check(o.clip_mode in ("norm", "per_param"), f"optim.clip_mode must be norm or per_param, got {o.clip_mode!r}")
    check(o.lr >= 0 and o.base_lr > 0 and o.min_lr >= 0, "optim.lr must be >= 0, optim.base_lr > 0, optim.min_lr >= 0")
    check(o.weight_decay >= 0 and (o.weight_decay_end is None or o.weight_decay_end >= 0), "weight decays must be >= 0")
    check(o.warmup_epochs >= 0 and o.clip_grad >= 0, "optim.warmup_epochs and optim.clip_grad must be >= 0")
    d = cfg.method.dino
    probs = [*d.global_blur_prob, *d.global_solarize_prob, d.local_blur_prob]
    check(len(d.global_blur_prob) == 2 and len(d.global_solarize_prob) == 2 and all(0 <= p <= 1 for p in probs),
          "method.dino.global_blur_prob and global_solarize_prob must be two probabilities each (one per global "
          f"view), local_blur_prob a probability; got {d.global_blur_prob}, {d.global_solarize_prob}, {d.local_blur_prob}")
    check(cfg.monitor.knn_scan >= 1 and cfg.monitor.progress_seconds > 0,
          "monitor.knn_scan must be >= 1 and monitor.progress_seconds > 0")
    check(d.local_crops >= 0 and d.local_size >= 8, f"method.dino.local_crops >= 0 and local_size >= 8, got {d.local_crops}, {d.local_size}")
    check(cfg.method.simclr.temperature > 0 and d.student_temp > 0 and d.teacher_temp > 0, "temperatures must be positive")
    if problems:
        raise ConfigError("Invalid pretraining configuration: " + "; ".join(problems) + ".")
