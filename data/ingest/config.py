"""Ingest settings (the first module of the ingest; it uses none of the others).

``config_dict`` is what an ingest's output records about its settings (manifest, plan, journals): the
settings that define the output, with every path replaced, since paths as typed can name patients
(an archive folder per patient is common): sources, label files and mask CSVs become keyed pseudonyms of
their absolute paths, label files and mask CSVs also the SHA-256 of their content, the salt file is left
out and the salt is represented by a keyed check value (a rerun with another salt is noticed without
revealing it).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field

from ctssl.core.config import ConfigError, to_dict
from ctssl.data.hounsfield import HU_CEILING, HU_FLOOR

REPORT_NAME = "ingest-report.json"


@dataclass
class SplitFractions:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass
class IngestConfig:
    sources: list[str] = field(default_factory=list)
    out: str = "runs/shards"
    image_size: int = 256             # output size (square); 0 keeps the native matrix
    min_slice_spacing: float = 0.0    # mm; thin-slice series otherwise give near-duplicates
    min_slices: int = 1               # series with fewer slices are skipped (1: single-image CT series kept)
    max_air_fraction: float = 1.0     # drop slices with more air (< -900 HU) than this; 1 keeps all
    hu_min: float = HU_FLOOR
    hu_max: float = HU_CEILING
    shard_size_mb: float = 256.0      # target shard size; shards close at series boundaries
    splits: SplitFractions = field(default_factory=SplitFractions)
    labels: list[str] = field(default_factory=list)          # label CSV files (data.labels)
    label_columns: list[str] = field(default_factory=list)   # empty: all non-key columns
    nifti_patient_pattern: str = r"^(.*?)(\.nii(\.gz)?|\.nrrd|\.nhdr|\.mha|\.mhd)?$"  # regex on a volume file's name; group 1
    masks: list[str] = field(default_factory=list)           # mask CSVs: image, mask[, patient] (data.ingest.pairs)
    mask_labels: dict[int, str] = field(default_factory=dict)  # class id -> name of the --masks CSVs' label values
    mask_tolerance: float = 0.1       # voxel: how far a mask voxel may lie off its image pixel (data.mask_placement)
    max_frames: int = 4096            # a DICOM file claiming more frames is refused (a corrupt header)
    allow_non_hu: bool = False        # ingest volumes whose values do not look like HU (data.hounsfield.not_hounsfield)
                                      # instead of skipping them
    file_seconds: float = 120.0       # time budget to read one file's header or one slice's pixels
    salt_file: str | None = None      # else $CTSSL_SALT
    create_salt: bool = False
    workers: int = 1
    strict: bool = False              # stop at the first bad input instead of skipping it
    report_paths: bool = False        # write source paths in the report (only if they hold no PHI)

    def __post_init__(self):
        # mask_labels keys are class ids; "1" (as JSON and some callers spell them) is 1.
        self.mask_labels = {int(k) if str(k).strip().isdigit() else k: v for k, v in dict(self.mask_labels).items()}


RUN_ONLY_KEYS = ("workers", "create_salt", "out", "strict", "salt_file")


def validate(cfg: IngestConfig) -> None:
    problems = []
    if not cfg.sources:
        problems.append("no sources given")
    if cfg.image_size < 0 or (0 < cfg.image_size < 16):
        problems.append(f"image_size must be 0 (native) or >= 16, got {cfg.image_size}")
    if not 0 < cfg.max_air_fraction <= 1:
        problems.append(f"max_air_fraction must be in (0, 1], got {cfg.max_air_fraction}")
    if cfg.hu_min >= cfg.hu_max:
        problems.append(f"hu_min ({cfg.hu_min}) must be below hu_max ({cfg.hu_max})")
    if cfg.shard_size_mb <= 0:
        problems.append(f"shard_size_mb must be positive, got {cfg.shard_size_mb}")
    if cfg.workers < 1:
        problems.append(f"workers must be >= 1, got {cfg.workers}")
    if cfg.min_slices < 1 or cfg.max_frames < 1 or cfg.file_seconds < 0 or cfg.min_slice_spacing < 0:
        problems.append("min_slices and max_frames must be >= 1, file_seconds and min_slice_spacing >= 0")
    fractions = asdict(cfg.splits)
    if any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        problems.append(f"split fractions must be >= 0 with a positive sum, got {fractions}")
    if not 0 < cfg.mask_tolerance <= 0.5:
        problems.append(f"mask_tolerance must be in (0, 0.5] voxel, got {cfg.mask_tolerance}")
    bad = [k for k in cfg.mask_labels if not (str(k).isdigit() and 1 <= int(k) <= 255)]
    if bad:
        problems.append(f"mask_labels keys must be class ids 1..255, got {bad}")
    try:
        re.compile(cfg.nifti_patient_pattern)
    except re.error as err:
        problems.append(f"nifti_patient_pattern is not a valid regex: {err}")
    if problems:
        raise ConfigError("; ".join(problems))


def _file_sha256(path: str, option: str = "--labels") -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as err:
        what = "a label CSV (docs/ingest.md, Labels)" if option == "--labels" else \
            "a CSV with columns image, mask (optional patient)"
        raise ConfigError(f"{option} file cannot be read ({type(err).__name__}); give {what}.") from None
    return digest.hexdigest()


def config_dict(cfg: IngestConfig, salt: bytes) -> dict:
    """The settings that define an ingest's output, without a path as typed (module docstring)."""
    from ctssl.data.pseudonym import pseudonym

    out = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    out["sources"] = ["src-" + pseudonym(salt, "source-root", os.path.abspath(s)) for s in cfg.sources]
    out["labels"] = [{"file": "labels-" + pseudonym(salt, "labels-file", os.path.abspath(p)),
                      "sha256": _file_sha256(p)} for p in cfg.labels]
    out["masks"] = [{"file": "masks-" + pseudonym(salt, "masks-file", os.path.abspath(p)),
                     "sha256": _file_sha256(p, "--masks")} for p in cfg.masks]
    out["mask_labels"] = {str(k): str(v) for k, v in sorted(cfg.mask_labels.items())}   # as JSON holds them
    out["salt_check"] = pseudonym(salt, "salt-check", "ctssl")
    return out


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def settings_changes(saved: dict, current: dict, limit: int = 8) -> str:
    """The settings (dotted keys) that differ between what an output records (``config_dict``) and this run, as
    ``image_size 256 -> 128, splits.train 0.8 -> 0.7``: sources by their pseudonyms, label and mask files by
    their content (never a path), the salt as "another salt" (its check value is not shown; under another
    salt every pseudonym differs, so sources are then not compared)."""
    saved, current = dict(saved or {}), dict(current or {})
    parts = []
    if saved.get("salt_check") != current.get("salt_check"):
        parts.append("salt: another salt")
        saved.pop("sources", None), current.pop("sources", None)
    for key in ("labels", "masks"):      # files by content, not by their paths' pseudonyms
        files_a, files_b = saved.pop(key, None) or [], current.pop(key, None) or []
        a, b = [f.get("sha256") for f in files_a], [f.get("sha256") for f in files_b]
        if a != b:
            parts.append(f"{key}: {len(a)} file(s) -> {len(b)} file(s), other content" if sorted(a) != sorted(b)
                         else f"{key}: the same files in another order")
        elif files_a != files_b and "salt: another salt" not in parts:
            parts.append(f"{key}: the same content from another path")
    a, b = _flatten(saved), _flatten(current)
    parts += [f"{key} {a.get(key)!r} -> {b.get(key)!r}" for key in sorted(set(a) | set(b))
              if key != "salt_check" and a.get(key) != b.get(key)]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def processing_config(settings: dict) -> IngestConfig:
    """The processing settings a task needs, back from ``config_dict``'s record (sources and labels are
    already in the plan's work items)."""
    from omegaconf import OmegaConf

    keep = {k: v for k, v in settings.items() if k not in ("sources", "labels", "masks", "mask_labels", "salt_check")}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(IngestConfig), keep))
