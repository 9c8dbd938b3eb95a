"""The embedded synthetic CT corpus: configuration, generation, labels, contact sheet.

``run_synth(cfg)`` writes, under ``cfg.out``::

    synth-config.yaml           resolved configuration (the contract for reruns)
    dicom/case-NNNN/...         DICOM studies (one folder per study, series folders inside)
    nifti/case-NNNN.nii.gz      NIfTI studies
    labels/studies.csv          one row per study: protocol, regions, lesion flags, scanner
    labels/series.csv           one row per series: geometry, kernel, transfer syntax
    labels/slices.csv           one row per axial slice: region and lesion labels
    labels/lesions.csv          lesion geometry (centre in mm, radius, HU)
    labels/masks.csv            one row per segmentation mask: study, kind, how it is stored, mask and image paths
    nnunet/Dataset500_CTSSLSynth/  the NIfTI studies as an nnU-Net raw dataset with label volumes (data.synth.masks)
    dicom/case-NNNN/series-100/ a DICOM SEG of the study's first series, for some DICOM studies (data.synth.masks)
    natural-standin/{train,val}/CLASS/*.jpg   the natural-image stand-in (see data.dead_leaves)
    contact_sheet.png           windowed sample slices for a person to look at
    synth-summary.json          counts and generation speed

Labels are keyed by identifiers the corpus itself carries (not pseudonyms, which only ingest
creates): ``series_uid`` (DICOM SeriesInstanceUID) or ``nifti_path`` (path below the corpus
root), plus ``slice_index`` (0 = most inferior) and ``z_mm`` (slice position along the
superior axis, equal to Image Position Patient z in DICOM and world z in NIfTI).

Generation is deterministic: the same seed and settings give byte-identical files whatever the
number of workers. Each study is written under a temporary name and renamed when complete;
a rerun skips complete studies (resume) and refuses an output folder made with other settings.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ctssl import __version__
from ctssl.core.atomic import atomic_dir, atomic_write_text, remove_stale_temporaries, TMP_MARK
from ctssl.core.config import ConfigError, load_config, save_config, to_dict
from ctssl.data.synth import phantom
from ctssl.data.contact_sheet import Tile, save_contact_sheet
from ctssl.data.synth.dead_leaves import write_dead_leaves
from ctssl.data.synth.masks import mask_plan, write_dataset_json, write_nnunet_case, write_seg
from ctssl.data.synth.study import StudyPlan, plan_study, render_labels, render_series, slice_labels
from ctssl.data.windowing import get_window

logger = logging.getLogger(__name__)

CONFIG_NAME = "synth-config.yaml"


@dataclass
class NaturalConfig:
    """The natural-image stand-in corpus (dead leaves; see data.dead_leaves)."""

    enabled: bool = True
    classes: int = 4
    train_per_class: int = 48
    val_per_class: int = 16
    size: int = 96


@dataclass
class SynthConfig:
    out: str = "runs/synth"
    patients: int = 12              # studies, one patient each
    seed: int = 0
    matrix: int = 256               # in-plane pixels (real scanners: 512)
    thickness_mm: list[float] = field(default_factory=lambda: [2.5, 3.0, 5.0])
    nifti_fraction: float = 0.25    # share of studies (after the catalogue) written as NIfTI
    lesion_rate: float = 0.5        # chance that a study has lesions of each applicable kind
    noise_scale: float = 1.0        # multiplies every scanner's noise level
    case_prefix: str = "case"       # study names PREFIX-NNNN; NIfTI file names are patient keys at ingest, so a
                                    # second corpus of other patients needs another prefix
    workers: int = 1                # processes; output does not depend on it
    contact_sheet: bool = True
    natural: NaturalConfig = field(default_factory=NaturalConfig)


# Settings that do not change a single output byte; a rerun may change them freely.
RUN_ONLY_KEYS = ("out", "workers")


def validate(cfg: SynthConfig) -> None:
    problems = []
    if cfg.patients < 1:
        problems.append(f"patients must be >= 1, got {cfg.patients}")
    if not 32 <= cfg.matrix <= 1024:
        problems.append(f"matrix must be in 32..1024, got {cfg.matrix}")
    if not cfg.thickness_mm or min(cfg.thickness_mm) <= 0:
        problems.append(f"thickness_mm must be positive values, got {cfg.thickness_mm}")
    for name in ("nifti_fraction", "lesion_rate"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.noise_scale < 0:
        problems.append(f"noise_scale must be >= 0, got {cfg.noise_scale}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", cfg.case_prefix):
        problems.append(f"case_prefix must be a letter then letters, digits or _, got {cfg.case_prefix!r}")
    if cfg.workers < 1:
        problems.append(f"workers must be >= 1, got {cfg.workers}")
    if problems:
        raise ConfigError("; ".join(problems))


def make_plan(cfg: SynthConfig, index: int) -> StudyPlan:
    return plan_study(cfg.seed, index, matrix=cfg.matrix, thickness_choices=tuple(cfg.thickness_mm),
                      nifti_fraction=cfg.nifti_fraction, lesion_rate=cfg.lesion_rate,
                      noise_scale=cfg.noise_scale, case_prefix=cfg.case_prefix)


def generate_study(cfg: SynthConfig, index: int) -> int:
    """Render and write study ``index`` atomically; returns the number of axial slices."""
    from ctssl.data.synth.dicom import add_archive_mess, write_localizer, write_series
    from ctssl.data.synth.nifti import write_nifti

    plan = make_plan(cfg, index)
    mask = mask_plan(plan)
    out = Path(cfg.out)
    final = out / plan.relpath
    n = 0
    if plan.format == "nifti":
        series = plan.series[0]
        hu = render_series(plan, series)
        tmp = final.parent / f"{plan.case_id}{TMP_MARK}partial.nii.gz"
        write_nifti(plan, series, hu, tmp)
        if mask is not None:        # written before the image is renamed: a complete image has its mask
            write_nnunet_case(plan, series, render_labels(plan, series), tmp, out, mask)
        os.replace(tmp, final)
        return series.n_slices
    with atomic_dir(final) as tmp_root:
        for s_idx, series in enumerate(plan.series):
            hu = render_series(plan, series)
            folder = tmp_root / Path(series.folder).relative_to(plan.relpath)
            no_preamble = "no_preamble" in plan.quirks and s_idx == 1
            datasets: list = []
            paths = write_series(plan, series, hu, folder, no_preamble=no_preamble, datasets=datasets)
            if s_idx == 0 and mask is not None:
                write_seg(plan, series, render_labels(plan, series), datasets,
                          tmp_root / Path(mask.path).parent.relative_to(plan.relpath), mask.stored)
            if s_idx == 0 and "localizer" in plan.quirks:
                write_localizer(plan, series, hu, folder)
            if s_idx == 0:
                add_archive_mess(plan, series, paths)
            n += series.n_slices
    return n


def study_files(plan: StudyPlan) -> list[str]:
    """The files (or folder) a complete study has, relative to the corpus root."""
    mask = mask_plan(plan)
    return [plan.relpath] + ([mask.path, mask.image] if mask is not None and mask.kind == "nifti" else [])


def _check_existing(cfg: SynthConfig, out: Path) -> None:
    path = out / CONFIG_NAME
    if not path.exists():
        return
    old = to_dict(load_config(SynthConfig, path))
    new = to_dict(cfg)
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new
             if k not in RUN_ONLY_KEYS and old.get(k) != new.get(k)]
    if diffs:
        raise ConfigError(
            f"{out} holds a corpus made with other settings ({'; '.join(diffs)}). "
            "Use a new --out folder, or delete this one to regenerate it.")


def run_synth(cfg: SynthConfig) -> dict:
    """Generate (or complete) the corpus described by ``cfg``; returns the summary dict."""
    validate(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_existing(cfg, out)
    stale = remove_stale_temporaries(out)
    if stale:
        logger.info("removed %d incomplete file(s) left by an interrupted run", stale)
    save_config(cfg, out / CONFIG_NAME)
    (out / "dicom").mkdir(exist_ok=True)
    (out / "nifti").mkdir(exist_ok=True)

    plans = [make_plan(cfg, i) for i in range(cfg.patients)]
    todo = [p.index for p in plans if not all((out / f).exists() for f in study_files(p))]
    logger.info("synthetic corpus: %d studies (%d to generate, %d already complete) -> %s",
                len(plans), len(todo), len(plans) - len(todo), out)
    start = time.perf_counter()
    slices = _generate(cfg, todo)
    elapsed = time.perf_counter() - start

    write_labels(plans, out / "labels")
    nnunet_cases = write_dataset_json(out, plans)
    natural = {}
    if cfg.natural.enabled:
        n = cfg.natural
        natural = write_dead_leaves(out / "natural-standin", cfg.seed, n.classes, n.train_per_class,
                                    n.val_per_class, n.size)
    if cfg.contact_sheet:
        save_contact_sheet(contact_tiles(plans), out / "contact_sheet.png", columns=4)

    summary = {
        "ctssl_version": __version__,
        "studies": len(plans),
        "dicom_studies": sum(p.format == "dicom" for p in plans),
        "nifti_studies": sum(p.format == "nifti" for p in plans),
        "series": sum(len(p.series) for p in plans),
        "axial_slices": sum(s.n_slices for p in plans for s in p.series),
        "lesion_slices": sum(r["lesion"] for p in plans for s in p.series for r in slice_labels(p, s)),
        "masks": {"nnunet_cases": nnunet_cases,
                  "dicom_seg": sum(1 for p in plans if (m := mask_plan(p)) is not None and m.kind == "seg")},
        "natural_standin_images": sum(natural.values()),
        "this_run": {"studies_generated": len(todo), "slices_generated": slices,
                     "seconds": round(elapsed, 3), "workers": cfg.workers,
                     "slices_per_second": round(slices / elapsed, 1) if slices else None},
    }
    atomic_write_text(out / "synth-summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _generate(cfg: SynthConfig, todo: list[int]) -> int:
    if not todo:
        return 0
    total = 0
    bar = tqdm(total=len(todo), unit="study", desc="synth", disable=None)
    if cfg.workers == 1:
        for index in todo:
            total += generate_study(cfg, index)
            bar.update(1)
            bar.set_postfix(slices=total)
    else:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            futures = [pool.submit(generate_study, cfg, i) for i in todo]
            for future in as_completed(futures):
                total += future.result()
                bar.update(1)
                bar.set_postfix(slices=total)
    bar.close()
    return total


# --------------------------------------------------------------------------- labels

STUDY_COLUMNS = ("case_id", "path", "format", "protocol", "regions", "lesion",
                 *phantom.LESION_TYPES, "contrast", "manufacturer", "model", "kvp", "quirks")
SERIES_COLUMNS = ("case_id", "path", "series_uid", "nifti_path", "series_number", "n_slices",
                  "slice_thickness", "slice_spacing", "pixel_spacing", "matrix", "kernel",
                  "transfer_syntax", "instance_order")
SLICE_COLUMNS = ("case_id", "series_uid", "nifti_path", "series_number", "slice_index", "z_mm",
                 "region", "lesion", *phantom.LESION_TYPES)
LESION_COLUMNS = ("case_id", "kind", "x_mm", "y_mm", "z_mm", "radius_mm", "hu")
MASK_COLUMNS = ("case_id", "kind", "stored", "mask_path", "image_path")


def _csv_text(columns, rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_labels(plans: list[StudyPlan], folder: Path) -> None:
    """The five label CSVs (see module docstring), each written atomically."""
    studies, series_rows, slices, lesions, masks = [], [], [], [], []
    for plan in plans:
        mask = mask_plan(plan)
        if mask is not None:
            masks.append({"case_id": plan.case_id, "kind": mask.kind, "stored": mask.stored,
                          "mask_path": mask.path, "image_path": mask.image})
        keys = {"case_id": plan.case_id}
        flags = {kind: 0 for kind in phantom.LESION_TYPES}
        regions = set()
        for s in plan.series:
            uid = s.uid if plan.format == "dicom" else ""
            nifti_path = plan.relpath if plan.format == "nifti" else ""
            series_rows.append({**keys, "path": s.folder or plan.relpath, "series_uid": uid,
                                "nifti_path": nifti_path, "series_number": s.series_number,
                                "n_slices": s.n_slices, "slice_thickness": s.thickness,
                                "slice_spacing": s.spacing, "pixel_spacing": s.pixel_spacing,
                                "matrix": s.matrix, "kernel": s.kernel,
                                "transfer_syntax": s.transfer_syntax or "nifti",
                                "instance_order": s.instance_order})
            for row in slice_labels(plan, s):
                slices.append({**keys, "series_uid": uid, "nifti_path": nifti_path,
                               "series_number": s.series_number, **row})
                regions.add(row["region"])
                for kind in phantom.LESION_TYPES:
                    flags[kind] |= row[kind]
        order = [r for r in phantom.REGIONS if r in regions]
        studies.append({**keys, "path": plan.relpath, "format": plan.format,
                        "protocol": plan.protocol, "regions": ";".join(order),
                        "lesion": int(any(flags.values())), **flags,
                        "contrast": int(plan.anatomy.contrast),
                        "manufacturer": plan.scanner.manufacturer if plan.format == "dicom" else "",
                        "model": plan.model if plan.format == "dicom" else "",
                        "kvp": plan.kvp, "quirks": ";".join(plan.quirks)})
        z_offset = float(plan.series[0].z[0]) - float(plan.series[0].u[0]) * plan.anatomy.z_scale
        for les in plan.anatomy.lesions:
            lesions.append({**keys, "kind": les.kind, "x_mm": f"{les.x:.3f}", "y_mm": f"{les.y:.3f}",
                            "z_mm": f"{les.u * plan.anatomy.z_scale + z_offset:.3f}",
                            "radius_mm": f"{les.radius:.3f}", "hu": f"{les.hu:.1f}"})
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "studies.csv", _csv_text(STUDY_COLUMNS, studies))
    atomic_write_text(folder / "series.csv", _csv_text(SERIES_COLUMNS, series_rows))
    atomic_write_text(folder / "slices.csv", _csv_text(SLICE_COLUMNS, slices))
    atomic_write_text(folder / "lesions.csv", _csv_text(LESION_COLUMNS, lesions))
    atomic_write_text(folder / "masks.csv", _csv_text(MASK_COLUMNS, masks))


# --------------------------------------------------------------------------- contact sheet


def contact_tiles(plans: list[StudyPlan], max_studies: int = 12) -> list[Tile]:
    """Four slices per study (a lesion slice where there is one), re-rendered from the plan."""
    tiles = []
    for plan in plans[:max_studies]:
        series = plan.series[0]
        n = series.n_slices
        picks = [int(q * (n - 1)) for q in (0.15, 0.4, 0.65, 0.9)]
        labels = slice_labels(plan, series)
        lesion_slices = [r["slice_index"] for r in labels if r["lesion"]]
        if lesion_slices:
            picks[1] = lesion_slices[len(lesion_slices) // 2]
        hu = render_series(plan, series, picks)
        for j, k in enumerate(picks):
            head = plan.protocol == "head"
            window = get_window("brain" if head else ("lung" if j == 3 else "soft_tissue"))
            mark = " LESION" if labels[k]["lesion"] else ""
            tiles.append(Tile(hu[j], window, f"{plan.case_id} {labels[k]['region']}{mark}"))
    return tiles
