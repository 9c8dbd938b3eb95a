"""Segmentation transfer (``ctssl segment``): a U-Net (finetune.unet) on every backbone, the encoder frozen
or fine-tuned, swept over backbones x protocols x label fractions (of the training patients) x seeds, with the
run records of ``eval.records.store``.

Per backbone, the slices are prepared once as that backbone sees images (its card: windows, normalisation;
eval.inputs.spec) at a size that is a multiple of 32 (default: the stored slice size rounded up), the masks
resized with them by nearest neighbour. Every backbone gets the same budget and its own learning rate, chosen
on the validation cases' mean Dice (finetune.segment.segment_grid). Each training gives two records, variants
``<protocol> best_val`` and ``<protocol> final`` (the RadNet-12M study used the final-epoch model).

Test measures (eval.measures.segmentation), at the stored slice resolution (predictions resized back by
nearest neighbour), per case (a series' slices stacked in order, spacing from the slices): Dice per class and
their mean over foreground classes, HD95 and NSD in mm; patient-bootstrap CIs of their means over cases; and
the RadNet-12M study's Dice pooled over 2-D slices, labelled as such. With ``noise_sigmas``, the final model is
also tested with Gaussian noise of each standard deviation added to its (normalised) inputs: the study's
test-time robustness sweep. The record's predictions file holds per-case mean Dice (one row per case, its
patient), which ``eval.records.comparisons`` compares between backbones patient by patient.

``save_predictions`` writes each test case's predicted and reference masks as NIfTI in the source series'
geometry (the affine ingest recorded for the stored slices, eval.inputs.segmentation.SegCase.nifti_volume: they
overlay the original CT in 3D Slicer or ITK-SNAP) and a per-case metrics CSV, under ``OUT/predictions/<run_id>/``; every record keeps a few test slices with
reference and prediction for the report's overlays (the same slices for every backbone).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctssl.eval.features.extract import default_device
from ctssl.eval.inputs.requirements import warn_few
from ctssl.eval.inputs.segmentation import SPLITS, SegCase, SegDataset, check_splits, open_segmentation, \
    subsample_cases
from ctssl.pretrain.sources import load_backbone
from ctssl.eval.inputs.spec import GREY_WINDOW, InputSpec, input_spec, prepare_batch
from ctssl.eval.measures.classification import BOOTSTRAP_RESAMPLES, finite
from ctssl.eval.measures.segmentation import case_table, pooled_dice, slice_counts, slice_pooled_dice_ci, \
    summarise_table
from ctssl.eval.records.provenance import provenance
from ctssl.eval.protocols.spec import pretraining_overlap
from ctssl.eval.records.store import RunStore, load_names, run_id
from ctssl.finetune.segment import SegmentConfig, predict_masks, segment_grid, validate_config

logger = logging.getLogger(__name__)
VARIANTS = ("best_val", "final")
OVERLAY_SLICES = 3
MULTIPLE = 32


@dataclass
class SegmentSpec:
    data: str = ""                          # a shard folder with masks
    classes: list[str] = field(default_factory=list)   # foreground classes by name; [] = every class
    backbones: list[str] = field(default_factory=list)  # sources (pretrain.sources); the first is the baseline
    image_size: int = 0                     # 0: the stored slice size rounded up to a multiple of 32
    grey_window: str = GREY_WINDOW
    n_boot: int = BOOTSTRAP_RESAMPLES
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    allow_pretraining_overlap: bool = False   # evaluate on val/test patients a backbone was pretrained on


def model_size(data: SegDataset, size: int) -> int:
    if size:
        if size % MULTIPLE:
            raise ValueError(f"image_size must be a multiple of {MULTIPLE} for the U-Net, got {size}.")
        return size
    stored = max(c.slices.shape[-1] for cases in data.cases.values() for c in cases)
    return int(math.ceil(stored / MULTIPLE) * MULTIPLE)


class _Split:
    """A split's slices as one backbone's inputs (float16, prepared once) and masks at the model's size."""

    def __init__(self, cases: list[SegCase], spec: InputSpec):
        images = [s for c in cases for s in c.slices]
        self.x = torch.cat([prepare_batch(images[i:i + 64], spec).half() for i in range(0, len(images), 64)]) \
            if images else torch.zeros(0, spec.in_chans, spec.size, spec.size, dtype=torch.float16)
        masks = torch.from_numpy(np.concatenate([c.masks for c in cases])) if cases else torch.zeros(0, 1, 1)
        self.y = resize_masks(masks, spec.size)
        self.case_of = np.concatenate([[c.key] * len(c.slices) for c in cases]) if cases else np.zeros(0, str)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) class ids -> (N, size, size), nearest neighbour at pixel centres (the image's geometry)."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks.to(torch.uint8)
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(torch.uint8)


def run_segment(spec: SegmentSpec, settings: SegmentConfig, out: str | Path, orders: list[int] | None = None,
                save_predictions: bool = False) -> list[dict]:
    """Segmentation per backbone x protocol x fraction x seed (module docstring); finished runs are loaded."""
    out, store = Path(out), RunStore(out)
    data = open_segmentation(spec.data, spec.classes)
    check_splits(data)
    warn_few("segment", len({c.patient for c in data.cases["test"]}), f"'{spec.data}'")
    overlap = pretraining_overlap(logger, "segment", spec.backbones, data, spec.allow_pretraining_overlap,
                                  load_names(out))
    validate_config(settings, data.num_classes)
    size = model_size(data, spec.image_size)
    overlay = overlay_slices(data.cases["test"])
    records = []
    for order, source in zip(orders if orders is not None else range(len(spec.backbones)), spec.backbones,
                             strict=True):
        backbone, card = load_backbone(source)
        inputs = input_spec(card, "ct", size, spec.grey_window)
        prepared: dict[str, _Split] = {}
        for protocol in settings.protocols:
            for fraction in spec.fractions:
                for seed in spec.seeds:
                    config = {**asdict(settings), "protocols": [protocol], "seed": seed}
                    ids = {v: run_id(task="segment", variant=f"{protocol} {v}", source=source,
                                     weights=card.get("weights_sha256"), dataset=data.fingerprint, fraction=fraction,
                                     seed=seed, config=config, input=inputs.to_dict()) for v in VARIANTS}
                    if all(store.done(i) for i in ids.values()):
                        records += [store.load(ids[v]) for v in VARIANTS]
                        continue
                    if not prepared:
                        logger.info("segment %s: preparing %d slices at %d px (%s)", source,
                                    sum(len(c.slices) for cs in data.cases.values() for c in cs), size, inputs.rule)
                        prepared.update({s: _Split(data.cases[s], inputs) for s in SPLITS})
                    train_cases = subsample_cases(data.cases["train"], fraction, seed)
                    train = _Split(train_cases, inputs) if fraction < 1 else prepared["train"]
                    logger.info("segment %s %s fraction %g seed %d: %d training cases (%d slices), lr grid %s",
                                source, protocol, fraction, seed, len(train_cases), len(train.x), settings.lrs)
                    result = segment_grid(backbone, card["backbone"], train.x, train.y, prepared["val"].x,
                                          prepared["val"].y.numpy(), prepared["val"].case_of, data.num_classes,
                                          protocol, settings, seed, default_device())
                    base = {"task": "segment", "backbone": source, "backbone_order": order,
                            "backbone_card": {k: v for k, v in card.items() if k != "config"},
                            "dataset": data.describe(), "fraction": fraction, "seed": seed, "config": config,
                            "input": inputs.to_dict(), "protocol": protocol,
                            "n_train": len(train.x), "n_train_cases": len(train_cases),
                            "n_train_patients": len({c.patient for c in train_cases}),
                            "pretraining_overlap": overlap[source]}
                    for variant in VARIANTS:
                        record = _evaluate(result, variant, ids[variant], base, data, prepared["test"], settings,
                                           spec.n_boot, seed, overlay, store, out if save_predictions else None)
                        logger.info("segment %s (%s %s) fraction %g seed %d: test mean Dice %s [%s, %s] over %d cases",
                                    source, protocol, variant, fraction, seed,
                                    *(_fmt(record["test"]["mean_dice"][k]) for k in ("value", "lower", "upper")),
                                    record["test"]["n"])
                        records.append(record)
    return records


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def overlay_slices(cases: list[SegCase], n: int = OVERLAY_SLICES) -> list[tuple[int, int]]:
    """(case index, slice index) of the ``n`` test slices with the most foreground, from different cases where
    possible: the same slices for every backbone."""
    best = []
    for i, case in enumerate(cases):
        counts = (case.masks > 0).reshape(len(case.masks), -1).sum(1)
        j = int(np.argmax(counts))
        best.append((int(counts[j]), i, j))
    best.sort(reverse=True)
    return [(i, j) for count, i, j in best[:n] if count > 0]


def _evaluate(result: dict, variant: str, rid: str, base: dict, data: SegDataset, test: _Split,
              settings: SegmentConfig, n_boot: int, seed: int, overlay, store: RunStore, out: Path | None) -> dict:
    model = result[variant]
    device = default_device()
    predicted = predict_masks(model, test.x, settings.batch_size, device)
    measures, per_case = _measures(predicted, data, settings, n_boot, seed)
    record = {"run_id": rid, "variant": f"{base['protocol']} {variant}", **base,
              "n_test": int(len(test.x)), "test": measures,
              "history": result["history"], "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
              "select": "val_mean_dice", "chosen": {"lr": result["lr"]}, "grid": result["grid"],
              "provenance": provenance()}
    if variant == "final" and settings.noise_sigmas:
        record["noise"] = _noise_sweep(model, test, data, settings, n_boot, seed, device)
    cases = data.cases["test"]
    record["overlay"] = [{"case": cases[i].key, "slice": cases[i].slice_keys[j]} for i, j in overlay]
    _save_overlay(store.folder / f"{rid}.overlay.npz", predicted, cases, overlay)
    store.save(record, [r["case"] for r in per_case], [c.patient for c in cases], np.zeros(len(cases), np.int64),
               np.asarray([[r["mean_dice"]] for r in per_case], np.float32))
    if out is not None:
        _save_predictions(out / "predictions" / rid, predicted, data, per_case)
    return record


def _stored_predictions(predicted: np.ndarray, cases: list[SegCase]) -> list[np.ndarray]:
    """The model-size predictions (N, S, S) cut into cases and resized back to each case's stored slices."""
    out, start = [], 0
    for case in cases:
        n, (h, w) = len(case.slices), case.slices.shape[1:]
        part = torch.from_numpy(predicted[start:start + n])
        if part.shape[-2:] != (h, w):
            part = F.interpolate(part[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].to(torch.uint8)
        out.append(part.numpy())
        start += n
    return out


def _save_overlay(path: Path, predicted: np.ndarray, cases: list[SegCase], overlay) -> None:
    """The report's overlay slices: the stored slice in a soft-tissue window (uint8), reference, prediction."""
    from ctssl.core.atomic import atomic_open
    from ctssl.data.windowing import to_uint8

    images, references, predictions = [], [], []
    for i, j in overlay:
        start = sum(len(c.slices) for c in cases[:i])
        stored = _stored_predictions(predicted[start:start + len(cases[i].slices)], [cases[i]])[0]
        images.append(to_uint8(cases[i].slices[j], 40, 400))
        references.append(cases[i].masks[j])
        predictions.append(stored[j])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        np.savez_compressed(f, image=np.asarray(images), reference=np.asarray(references),
                            prediction=np.asarray(predictions))


def _measures(predicted: np.ndarray, data: SegDataset, settings: SegmentConfig, n_boot: int,
              seed: int) -> tuple[dict, list[dict]]:
    cases = data.cases["test"]
    stored = _stored_predictions(predicted, cases)
    names = data.labels[1:]
    rows = case_table([(c.key, c.masks, p, c.spacing) for c, p in zip(cases, stored)], data.num_classes,
                      settings.tolerance_mm, names)
    patients = [c.patient for c in cases]
    summary = summarise_table(rows, patients, n=n_boot, seed=seed)
    reference = np.concatenate([c.masks for c in cases])
    inter, sizes = slice_counts(reference, np.concatenate(stored), data.num_classes)
    slice_patients = np.concatenate([[c.patient] * len(c.slices) for c in cases])
    pooled = slice_pooled_dice_ci(inter, sizes, slice_patients, n=n_boot, seed=seed)
    per_class_pooled = pooled_dice(inter, sizes)
    clean = lambda d: {k: finite(v) if isinstance(v, float) else v for k, v in d.items()}   # noqa: E731
    measures = {"mean_dice": clean(summary["mean_dice"]), "mean_hd95_mm": clean(summary["mean_hd95_mm"]),
                "mean_nsd": clean(summary["mean_nsd"]),
                "per_class": {n: {"dice": clean(summary[f"dice_{n}"]), "hd95_mm": clean(summary[f"hd95_mm_{n}"]),
                                  "nsd": clean(summary[f"nsd_{n}"])} for n in names},
                "slice_pooled_dice_radnet12m": {**clean(pooled),
                                                "per_class": {n: finite(float(v))
                                                              for n, v in zip(names, per_class_pooled)},
                                                "note": "pooled over 2-D slices (the RadNet-12M study's Dice): not "
                                                        "per case, not comparable with 3-D results"},
                "n": len(cases), "n_patients": len(set(patients)), "tolerance_mm": settings.tolerance_mm}
    return measures, rows


def _noise_sweep(model, test: _Split, data: SegDataset, settings: SegmentConfig, n_boot: int, seed: int,
                 device: str) -> list[dict]:
    out = []
    for sigma in settings.noise_sigmas:
        generator = torch.Generator().manual_seed(seed)
        noisy = predict_masks(model, test.x, settings.batch_size, device, noise=sigma, generator=generator)
        measures, _ = _measures(noisy, data, settings, n_boot, seed)
        out.append({"sigma": sigma, "mean_dice": measures["mean_dice"],
                    "slice_pooled_dice_radnet12m": measures["slice_pooled_dice_radnet12m"]["value"]})
    return out


def _save_predictions(folder: Path, predicted: np.ndarray, data: SegDataset, rows: list[dict]) -> None:
    """Each test case's predicted and reference masks as NIfTI, and the per-case metrics as CSV."""
    import gzip

    import nibabel as nib

    from ctssl.core.atomic import atomic_open

    folder.mkdir(parents=True, exist_ok=True)
    cases = data.cases["test"]
    for case, stored in zip(cases, _stored_predictions(predicted, cases)):
        for name, volume in (("prediction", stored), ("reference", case.masks)):
            image = nib.Nifti1Image(*case.nifti_volume(volume))      # the source series' geometry (module docstring)
            image.header.set_xyzt_units("mm")
            with atomic_open(folder / f"{case.key}_{name}.nii.gz") as f:
                f.write(gzip.compress(image.to_bytes(), mtime=0))
    with atomic_open(folder / "cases.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
