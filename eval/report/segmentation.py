"""The report's segmentation sections (``ctssl segment`` records): per protocol and label fraction, each
backbone's per-case measures with patient-bootstrap CIs, per class, and the RadNet-12M study's slice-pooled Dice
apart; the test-time noise sweep; and overlays of every backbone's predicted masks and the reference on the same
test slices. The test-time noise table and figure serve classification fine-tuning's sweep too
(``classification_noise``). The headline table, data-efficiency curves and paired comparisons of segmentation
come with the other tasks' (eval.report.sections: segmentation is compared by per-case mean Dice)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ctssl.eval.records import plots
from ctssl.eval.report.document import Block, Figure, Heading, Note, Table, fmt
from ctssl.eval.report.sections import interval_text


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    return interval_text({"lower": None, "upper": None, **m})


def _groups(records: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in records:
        groups[(r["dataset"]["spec"], r["variant"], r["fraction"])].append(r)
    return groups


def measures(records: list[dict], label) -> list[Block]:
    """Per dataset, variant and fraction: one row per backbone and seed."""
    blocks = []
    for (spec, variant, fraction), rs in sorted(_groups(records).items()):
        classes = rs[0]["dataset"]["classes"][1:]
        header = ["backbone", "seed", "mean Dice", "HD95 (mm)", "NSD", *[f"Dice {c}" for c in classes],
                  "slice-pooled Dice (RadNet-12M)", "cases"]
        rows = []
        for r in sorted(rs, key=lambda r: (r["backbone_order"], r["seed"])):
            t = r["test"]
            rows.append([label(r["backbone"], 32), str(r["seed"]), _ci(t["mean_dice"]), _ci(t["mean_hd95_mm"]),
                         _ci(t["mean_nsd"]), *[_ci(t["per_class"][c]["dice"]) for c in classes],
                         fmt(t["slice_pooled_dice_radnet12m"].get("value")), str(t["n"])])
        blocks += [Note(f"{spec} — segmentation ({variant}), {fraction:g} of the training patients: per-case "
                        f"measures on the test split, mean over cases [95% patient-bootstrap CI]; NSD at "
                        f"{rs[0]['test']['tolerance_mm']:g} mm", emphasis=True), Table(header, rows)]
    return blocks


def noise(records: list[dict], label, out: Path, task: str = "Segmentation") -> list[Block]:
    """The final models' test metric under test-time noise (segmentation: mean per-case Dice; classification
    fine-tuning: the task's main metric), a table and a figure per dataset, variant and fraction."""
    noisy = [r for r in records if r.get("noise")]
    if not noisy:
        return []
    blocks = [Heading(f"{task}: test-time noise", level=3),
              Note("The final model tested with Gaussian noise of standard deviation σ added to its normalised "
                   "inputs (the RadNet-12M study's robustness sweep), the same noise for every backbone; "
                   "[95% patient-bootstrap CI].")]
    for i, ((spec, variant, fraction), rs) in enumerate(sorted(_groups(noisy).items())):
        metric = rs[0]["noise"][0].get("metric", "mean_dice")
        name = {"mean_dice": "mean Dice", "auroc": "AUROC"}.get(metric, metric.replace("_", " "))
        series = defaultdict(list)
        for r in rs:
            for point in r["noise"]:
                series[label(r["backbone"], 30)].append((point["sigma"], point[metric]["value"] or 0.0))
        sigmas = sorted({p["sigma"] for r in rs for p in r["noise"]})
        rows = [[label(r["backbone"], 32), str(r["seed"]), _ci(r["test"][metric]),
                 *[_ci(next(p[metric] for p in r["noise"] if p["sigma"] == s)) for s in sigmas]]
                for r in sorted(rs, key=lambda r: (r["backbone_order"], r["seed"]))]
        slug = task.lower().replace(" ", "-")
        path = plots.noise_curves({k: sorted(v) for k, v in series.items()}, out / "figures" / f"{slug}-noise-{i}.png",
                                  f"{task.lower()} ({variant}), fraction {fraction:g}: {name} under noise", name)
        blocks += [Note(f"{spec} — {task.lower()} ({variant}), {fraction:g} of the training patients: test {name}",
                        emphasis=True),
                   Table(["backbone", "seed", "clean", *[f"σ={s:g}" for s in sigmas]], rows),
                   Figure(path, f"{name} under test-time noise", f"figures/{path.name}")]
    return blocks


def overlays(records: list[dict], label, out: Path) -> list[Block]:
    """The same test slices for every backbone: per protocol, the largest fraction and first seed."""
    blocks = []
    runs = out / "runs"
    by_variant = defaultdict(list)
    for r in records:
        by_variant[(r["dataset"]["spec"], r["variant"])].append(r)
    for i, ((spec, variant), rs) in enumerate(sorted(by_variant.items())):
        top = max(r["fraction"] for r in rs)
        seed = min(r["seed"] for r in rs)
        chosen = [r for r in sorted(rs, key=lambda r: r["backbone_order"])
                  if r["fraction"] == top and r["seed"] == seed]
        files = [(r, runs / f"{r['run_id']}.overlay.npz") for r in chosen]
        files = [(r, f) for r, f in files if f.exists()]
        if not files:
            continue
        with np.load(files[0][1]) as first:
            images, reference = first["image"], first["reference"]
        if not len(images):
            continue
        predictions = {}
        for r, f in files:
            with np.load(f) as data:
                predictions[label(r["backbone"], 24)] = data["prediction"]
        path = plots.mask_overlays(images, reference, predictions, chosen[0]["dataset"]["classes"],
                                   out / "figures" / f"seg-overlay-{i}.png",
                                   f"segmentation ({variant}), fraction {top:g}, seed {seed}: test slices")
        blocks.append(Figure(path, f"predicted vs reference masks ({variant})", f"figures/{path.name}"))
    return blocks


def classification_noise(records: list[dict], label, out: Path) -> list[Block]:
    """The noise sweep of classification fine-tuning runs (``finetune.noise_sigmas``), or nothing."""
    return noise([r for r in records if r["task"] != "segment"], label, out, "Fine-tuning")


def segmentation(records: list[dict], label, out: Path) -> list[Block]:
    """Every segmentation block of the report, or none."""
    records = [r for r in records if r["task"] == "segment"]
    if not records:
        return []
    return [Heading("Segmentation"),
            Note("Per case: a series' slices stacked in order, measured at the stored slice resolution in mm. Dice "
                 "both-empty = undefined (left out of means, counted); one side empty: Dice 0, HD95 the volume's "
                 "diagonal (docs/segmentation.md). The slice-pooled Dice pools 2-D slices as the RadNet-12M study "
                 "did: not per case, not comparable with 3-D results."),
            *measures(records, label), *overlays(records, label, out), *noise(records, label, out)]
