"""`ctssl demo`: the study in miniature, on the embedded synthetic data.

Runs the pipeline's stages as a user would run them one by one (the same sequence of commands is
in the README): synthetic CT corpus (every study with lesions: nodules, liver lesions, haemorrhages) and
natural-image stand-in -> CT shards (ingest), shuffled training shards and natural-image shards ->
SimCLR on CT, DINO on CT, SimCLR on natural images -> on held-out patients, for random init and the three
pretrained backbones: lesion presence per slice (the headline: kNN, linear probe at two label fractions,
fine-tuning with a learning-rate grid chosen on validation) and body region (kNN, linear probe) ->
layer-wise similarity of CT- vs natural-pretrained features -> domain gap between the CT and natural
corpora -> the confounder (shortcut) experiment -> segmentation transfer (a U-Net on each backbone, encoder
frozen and fine-tuned, at two label fractions, on a second synthetic corpus whose studies all carry masks:
lungs, liver, brain) -> the HTML report. Each stage writes into ``OUT/`` and is
skipped when its output is complete, so a rerun resumes.

Lesion presence is the headline because pretraining can matter there: a lesion is a small, low-contrast
part of the slice, and random features leave room above them (body region, which any feature separates,
is kept as the second task).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ctssl.core.atomic import atomic_write_text

logger = logging.getLogger(__name__)
STAGES = 12
DEMO_SALT = "ctssl-demo-salt-not-secret-0003"   # synthetic patients only (see _with_demo_salt); its splits
# give every split of both demos thorax and other regions, lesions and none, and annotated cases


@dataclass
class DemoSize:
    patients: int          # the CT corpus, split 0.5 / 0.25 / 0.25 (the full demo: at least 6 test patients, 2 per
                           # class, so the report can compare: eval.measures.evidence)
    min_slice_spacing: float   # ingest thins slices closer than this (mm): patients, not near-duplicate slices,
                               # are what the comparisons count
    matrix: int
    image_size: int        # ingest output
    view_size: int         # pretraining views and evaluation inputs
    ct_epochs: int
    dino_epochs: int
    natural_epochs: int
    batch_size: int
    natural_per_class: tuple[int, int]
    natural_size: int
    finetune_epochs: int
    finetune_fraction: float
    samples: int           # similarity / gap images
    seg_patients: int      # the segmentation corpus (studies after the 8 catalogue ones all carry masks)
    seg_spacing: float     # its ingest's min_slice_spacing (its slices are 5 mm)
    seg_size: int          # its slices, and the U-Net's input (a multiple of 32)
    seg_epochs: int
    seg_backbones: tuple[str, ...]   # CT- vs natural-pretrained: the question


FULL = DemoSize(patients=40, min_slice_spacing=5.0, matrix=128, image_size=128, view_size=64, ct_epochs=2,
                dino_epochs=2, natural_epochs=8, batch_size=32, natural_per_class=(48, 16), natural_size=96,
                finetune_epochs=3, finetune_fraction=0.25, samples=400, seg_patients=32, seg_spacing=15.0, seg_size=32,
                seg_epochs=4, seg_backbones=("SimCLR on CT", "SimCLR on natural images"))
QUICK = DemoSize(patients=8, min_slice_spacing=0.0, matrix=64, image_size=48, view_size=32, ct_epochs=1, dino_epochs=1,
                 natural_epochs=2,
                 batch_size=16, natural_per_class=(8, 4), natural_size=32, finetune_epochs=2, finetune_fraction=1.0,
                 samples=80, seg_patients=16, seg_spacing=10.0, seg_size=32, seg_epochs=5,
                 seg_backbones=("SimCLR on CT", "SimCLR on natural images"))
SEG_CLASSES = ["lung", "liver", "brain"]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pretraining runs as a child), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _stage(number: int, name: str, done: bool, fn, times: list[dict]) -> None:
    """Run stage ``number`` unless ``done``; its wall-clock and CPU seconds go to ``times`` (the summary's
    table: CPU seconds tell how much work a stage is on a machine shared with other work, wall seconds how
    long it took here)."""
    label = f"{number}/{STAGES} {name}"
    if done:
        logger.info("[%s] already complete, skipped", label)
        times.append({"stage": number, "name": name, "wall_s": None, "cpu_s": None})
        return
    start, cpu = time.perf_counter(), _cpu_seconds()
    logger.info("[%s] ...", label)
    fn()
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    logger.info("[%s] done in %.1f s (%.0f CPU s)", label, wall, cpu)
    times.append({"stage": number, "name": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})


def _with_demo_salt(fn, *args):
    """``fn(*args)`` under the demo's own salt: synthetic patients need no secret, and the demo's splits (which
    patient is in val and test) must not change with a ``$CTSSL_SALT`` the user set for their own data."""
    from ctssl.data.pseudonym import fixed_salt

    with fixed_salt(DEMO_SALT):
        return fn(*args)


def _pretrain(shards: Path, out: Path, size: DemoSize, method: str, epochs: int, label: str) -> None:
    cmd = [sys.executable, "-m", "ctssl.pretrain.main", "--shards", str(shards), "--out", str(out),
           "--method", method, "--backbone", "resnet18", "--epochs", str(epochs),
           "--batch-size", str(size.batch_size), "--set", f"data.image_size={size.view_size}",
           "--set", "data.num_workers=1", "--set", f"monitor.knn_label={label}", "--set", "monitor.log_every=10",
           # A demo-length schedule: the references warm up for 10 of their 100+ epochs; here 1 of a few.
           "--set", f"optim.warmup_epochs={min(1.0, epochs / 2):g}"]
    if method == "simclr":
        cmd += ["--set", "method.simclr.hidden_dim=512"]
    else:  # a DINO small enough for two CPU cores: two local crops, a 1024-way head
        cmd += ["--set", "method.dino.local_crops=2", "--set", f"method.dino.local_size={size.view_size // 2}",
                "--set", "method.dino.hidden_dim=512", "--set", "method.dino.bottleneck_dim=128",
                "--set", "method.dino.output_dim=1024"]
    subprocess.run(cmd, check=True)


def run_demo(out: str | Path, quick: bool = False) -> dict:
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth
    from ctssl.eval.measures.probe import ProbeConfig
    from ctssl.eval.protocols.confounders import ConfounderSettings, run_confounders
    from ctssl.eval.protocols.finetune import run_finetune
    from ctssl.eval.protocols.gap import GapSettings, run_gap
    from ctssl.eval.protocols.knn import KNNSettings, run_knn
    from ctssl.eval.protocols.probe import run_probe
    from ctssl.eval.protocols.similarity import SimilaritySettings, run_similarity
    from ctssl.eval.protocols.spec import EvalSpec
    from ctssl.eval.records.comparisons import collate
    from ctssl.eval.records.store import save_names
    from ctssl.eval.report.build import write_report
    from ctssl.finetune.finetune import FinetuneConfig
    from ctssl.shards.from_images import images_to_shards
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    size = QUICK if quick else FULL
    out = Path(out)
    corpus, ct, natural, evaluation = out / "synth", out / "shards-ct", out / "shards-natural", out / "eval"
    ct_train = out / "shards-ct-shuffled"   # what pretraining reads: slices mixed across series and patients
    start, times = time.perf_counter(), []

    def stage(number, name, done, fn):
        _stage(number, name, done, fn, times)

    stage(1, "synthetic CT corpus and natural-image stand-in", (corpus / "synth-summary.json").exists(),
           lambda: run_synth(SynthConfig(out=str(corpus), patients=size.patients, matrix=size.matrix, workers=2,
                                         lesion_rate=1.0,
                                         natural=NaturalConfig(train_per_class=size.natural_per_class[0],
                                                               val_per_class=size.natural_per_class[1],
                                                               size=size.natural_size))))
    stage(2, "ingest CT to shards", (ct / "manifest.json").exists(),
           lambda: _with_demo_salt(run_ingest, IngestConfig(
               sources=[str(corpus)], out=str(ct), image_size=size.image_size,
               labels=[str(corpus / "labels" / "slices.csv")],
               min_slice_spacing=size.min_slice_spacing, splits=SplitFractions(0.5, 0.25, 0.25), workers=2)))
    stage(3, "shuffle the CT shards for pretraining (ctssl shards shuffle)", (ct_train / "manifest.json").exists(),
           lambda: run_shuffle(ct, ct_train, ShuffleConfig(shard_size_mb=16), workers=2))
    stage(4, "natural images to shards", (natural / "manifest.json").exists(),
           lambda: images_to_shards(corpus / "natural-standin", natural))
    runs = {"SimCLR on CT": (ct_train, out / "simclr-ct", "simclr", size.ct_epochs, "region"),
            "DINO on CT": (ct_train, out / "dino-ct", "dino", size.dino_epochs, "region"),
            "SimCLR on natural images": (natural, out / "simclr-natural", "simclr", size.natural_epochs, "class")}
    for number, (name, (shards, folder, method, epochs, label)) in zip((5, 6, 7), runs.items()):
        stage(number, f"{name} pretraining", (folder / "backbone.safetensors").exists(),
               lambda shards=shards, folder=folder, method=method, epochs=epochs, label=label:
               _pretrain(shards, folder, size, method, epochs, label))
    backbones = {"random init": "random:resnet18:3",
                 **{name: str(spec[1] / "backbone.safetensors") for name, spec in runs.items()}}
    names = {source: name for name, source in backbones.items()}
    save_names(evaluation, list(names), list(names.values()))
    lesion = EvalSpec(data=str(ct), backbones=list(backbones.values()), label="lesion", fractions=[0.1, 1.0],
                      seeds=[0], image_size=size.view_size, n_boot=500)
    region = replace(lesion, label="region")

    def downstream():
        probe = ProbeConfig(epochs=100 if not quick else 30)
        for spec in (lesion, region):
            run_knn(spec, KNNSettings(k=[20]), evaluation)
            run_probe(spec, probe, evaluation)
        # Every backbone: the same epochs and lr grid, its own lr chosen on validation patients.
        run_finetune(replace(lesion, fractions=[size.finetune_fraction]),
                     FinetuneConfig(epochs=size.finetune_epochs, patience=2, lrs=[3e-4, 1e-3, 3e-3]), evaluation)
        collate(evaluation, 500)

    # Protocol runs skip what is done; the stage is complete when every run record exists.
    stage(8, "lesion presence (kNN, linear probe, fine-tuning) and body region (kNN, linear probe)", False,
           downstream)
    ct_simclr, natural_simclr = backbones["SimCLR on CT"], backbones["SimCLR on natural images"]
    stage(9, "representation similarity: CT- vs natural-pretrained", (evaluation / "similarity" /
           "ct_vs_natural.json").exists(),
           lambda: run_similarity(str(ct), ct_simclr, natural_simclr,
                                  SimilaritySettings(samples=size.samples, image_size=size.view_size), evaluation,
                                  name="ct_vs_natural"))
    stage(10, "domain gap: CT slices vs natural images", (evaluation / "gap" / "ct_vs_natural.json").exists(),
           lambda: run_gap(str(ct), str(natural), list(backbones.values()),
                           GapSettings(label="region", label_b="class", max_samples=size.samples,
                                       image_size=size.view_size), evaluation, name="ct_vs_natural"))
    stage(11, "confounder experiment: an 'R' tag on thorax slices", (evaluation / "confounders" /
           "tag-thorax.json").exists(),
           lambda: run_confounders(replace(region, backbones=[backbones["random init"], natural_simclr, ct_simclr],
                                           n_boot=300),
                                   ConfounderSettings(positive="thorax", fractions=[0.0, 0.5, 1.0]), evaluation,
                                   kind="tag", probe=ProbeConfig(epochs=50 if not quick else 20), name="tag-thorax"))
    stage(12, "segmentation: U-Net on each backbone, encoder frozen and fine-tuned, two label fractions", False,
           lambda: _segmentation(out, size, backbones, evaluation))
    report_start, report_cpu = time.perf_counter(), _cpu_seconds()
    html, _ = write_report(evaluation, "ctssl demo: CT vs natural-image pretraining on the synthetic corpus")
    times.append({"stage": None, "name": "report (report.html, report.md)",
                  "wall_s": round(time.perf_counter() - report_start, 1),
                  "cpu_s": round(_cpu_seconds() - report_cpu, 1)})
    summary = _write_summary(out, evaluation, names, time.perf_counter() - start, quick, html, times)
    return {"out": str(out), "summary": str(summary), "report": str(html)}


def _segmentation(out: Path, size: DemoSize, backbones: dict, evaluation: Path) -> None:
    """Its own synthetic corpus (every non-catalogue study a NIfTI volume with an nnU-Net label volume), its own
    shards, then ``ctssl segment`` on the SimCLR backbones (CT vs natural: the question), encoder frozen and
    fine-tuned; runs already recorded are loaded, not trained again."""
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth
    from ctssl.eval.protocols.segment import SegmentSpec, run_segment
    from ctssl.eval.records.comparisons import collate
    from ctssl.finetune.segment import SegmentConfig

    corpus, shards = out / "synth-seg", out / "shards-seg"
    if not (corpus / "synth-summary.json").exists():
        run_synth(SynthConfig(out=str(corpus), patients=size.seg_patients, seed=11, matrix=2 * size.seg_size,
                              thickness_mm=[5.0], nifti_fraction=1.0, natural=NaturalConfig(enabled=False),
                              contact_sheet=False, case_prefix="seg", workers=2))
    if not (shards / "manifest.json").exists():
        _with_demo_salt(run_ingest, IngestConfig(sources=[str(corpus)], out=str(shards), image_size=size.seg_size,
                                                 min_slice_spacing=size.seg_spacing,
                                                 splits=SplitFractions(0.5, 0.25, 0.25), workers=2))
    chosen = [backbones[name] for name in size.seg_backbones]
    spec = SegmentSpec(data=str(shards), classes=SEG_CLASSES, backbones=chosen, fractions=[0.5, 1.0], seeds=[0],
                       n_boot=500)
    settings = SegmentConfig(epochs=size.seg_epochs, batch_size=8, lrs=[3e-3], patience=size.seg_epochs,
                             noise_sigmas=[0.05])
    orders = [list(backbones.values()).index(b) for b in chosen]
    run_segment(spec, settings, evaluation, orders=orders)
    collate(evaluation, 500)


def _write_summary(out: Path, evaluation: Path, names: dict, seconds: float, quick: bool, html: Path,
                   times: list[dict]) -> Path:
    """OUT/summary.md: the headline tables (lesion presence, then body region) with readable backbone names,
    each backbone's chosen fine-tuning lr, the time of each stage, and where the report is."""
    from ctssl.eval.report.sections import headline, interval_text, load_jsonl

    records = load_jsonl(evaluation / "results.jsonl")
    lines = ["# ctssl demo" + (" (--quick)" if quick else ""), "",
             "Held-out patients of the synthetic CT corpus, from frozen or fine-tuned ResNet-18 features. Lesion "
             "presence per slice (binary): test AUROC; body region (head / thorax / abdomen / pelvis): test "
             "accuracy; each with its 95% patient-bootstrap CI where the test patients allow one (at least 6, and 2 "
             "per class: eval.measures.evidence). Label fractions are of the training patients.", ""]
    intro = {"lesion": "## Lesion presence (headline)", "region": "## Body region"}
    # Lesion presence and body region; segmentation has its own table below.
    for table in sorted((t for t in headline(records) if t["label"] in intro), key=lambda t: list(intro).index(t["label"])):
        metric = {"auroc": "AUROC", "accuracy": "accuracy"}.get(table["metric"], table["metric"])
        lines += [intro.get(table["label"], f"## {table['label']}"), "", f"Test {metric}.", "",
                  "| backbone | " + " | ".join(table["columns"]) + " |", "|" + " --- |" * (len(table["columns"]) + 1)]
        for backbone, cells in table["rows"]:
            lines.append(f"| {names.get(backbone, backbone)} | " + " | ".join(cells) + " |")
        lines.append("")
        probes = sorted({r["fraction"] for r in records if r["task"] == "probe" and r["dataset"]["label"] == table["label"]})
        if len(probes) > 1:
            from ctssl.eval.records.comparisons import main_metric

            rows = []
            for backbone in dict.fromkeys(r["backbone"] for r in sorted(records, key=lambda r: r["backbone_order"])):
                mine = {r["fraction"]: r for r in records if r["task"] == "probe" and r["backbone"] == backbone
                        and r["dataset"]["label"] == table["label"]}
                cells = [f"{mine[f]['test'][main_metric(mine[f])]['value']:.3f}" if f in mine and
                         mine[f]["test"][main_metric(mine[f])]["value"] is not None else "n/a" for f in probes]
                rows.append(f"| {names.get(backbone, backbone)} | " + " | ".join(cells) + " |")
            lines += ["Linear probe by label fraction:", "",
                      "| backbone | " + " | ".join(f"{f:g}" for f in probes) + " |", "|" + " --- |" * (len(probes) + 1),
                      *rows, ""]
    tuned = [r for r in records if r["task"] == "finetune" and r.get("variant") == "best_val"]
    if tuned:
        lines += ["Fine-tuning learning rate chosen on validation (same grid and epochs for every backbone):", "",
                  "| backbone | fraction | chosen lr | grid (validation " + tuned[0]["select"] + ") |",
                  "| --- | --- | --- | --- |"]
        for r in sorted(tuned, key=lambda r: r["backbone_order"]):
            grid = ", ".join(f"{g['lr']:g}: {next(v for k, v in g.items() if k.startswith('val_')):.3f}"
                             for g in r["grid"])
            lines.append(f"| {names.get(r['backbone'], r['backbone'])} | {r['fraction']:g} | {r['chosen']['lr']:g} | "
                         f"{grid} |")
        lines.append("")
    segmented = [r for r in records if r["task"] == "segment" and r["variant"].endswith("final")]
    if segmented:
        fractions = sorted({r["fraction"] for r in segmented})
        lines += ["## Segmentation (lung, liver, brain)", "",
                  "Test mean Dice per case (final model) [95% patient-bootstrap CI], by label fraction:", "",
                  "| backbone | protocol | " + " | ".join(f"{f:g}" for f in fractions) + " |",
                  "| --- | --- |" + " --- |" * len(fractions)]
        for (backbone, variant) in dict.fromkeys((r["backbone"], r["variant"]) for r in
                                                 sorted(segmented, key=lambda r: (r["variant"], r["backbone_order"]))):
            mine = {r["fraction"]: r["test"]["mean_dice"] for r in segmented
                    if r["backbone"] == backbone and r["variant"] == variant}
            cells = [interval_text(mine[f]) if f in mine and mine[f]["value"] is not None else "n/a"
                     for f in fractions]
            lines.append(f"| {names.get(backbone, backbone)} | {variant.split()[0]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _times_table(times, seconds)
    lines += [f"Report (tables, paired tests, data-efficiency curves, CKA heat maps, domain gap, confounders, "
              f"segmentation overlays, provenance): `{html}`", "",
              "Outputs: `synth/`, `shards-ct/`, `shards-ct-shuffled/`, `shards-natural/`, "
              "`simclr-ct/`, `dino-ct/`, `simclr-natural/` (checkpoints, metrics, backbone.safetensors), "
              "`synth-seg/` and "
              "`shards-seg/` (the segmentation corpus), `eval/` (runs, "
              "results.jsonl, comparisons.jsonl, similarity/, gap/, confounders/, report.html, report.md)."]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _times_table(times: list[dict], seconds: float) -> list[str]:
    """The stages' wall-clock and CPU seconds of this run (a stage found complete says so)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"## Time per stage (this run: {seconds:.0f} s on {os.cpu_count()} CPU cores; load average "
             f"{load:.1f} at the end)", "", "| stage | wall s | CPU s |", "| --- | --- | --- |"]
    for t in times:
        label = f"{t['stage']}. {t['name']}" if t["stage"] else t["name"]
        if t["wall_s"] is None:
            lines.append(f"| {label} | already complete | |")
        else:
            lines.append(f"| {label} | {t['wall_s']:.1f} | {t['cpu_s']:.0f} |")
    total_cpu = sum(t["cpu_s"] or 0 for t in times)
    return lines + [f"| total | {seconds:.1f} | {total_cpu:.0f} |", ""]
