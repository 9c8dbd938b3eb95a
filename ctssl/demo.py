"""`ctssl demo`: the study in miniature, on the embedded synthetic data.

Runs the pipeline's stages as a user would run them one by one (the same sequence is in the
README): synthetic CT corpus and natural-image stand-in -> CT shards (ingest) and natural-image
shards -> SimCLR pretraining on each -> weighted kNN of body region on held-out patients for
random init, CT-pretrained and natural-pretrained backbones -> a Markdown summary. Each stage
writes into ``OUT/`` and is skipped when its output is complete, so a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ctssl.atomic import atomic_write_text

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DemoSize:
    patients: int
    matrix: int
    image_size: int        # ingest output
    view_size: int         # pretraining views
    ct_epochs: int
    natural_epochs: int
    batch_size: int


FULL = DemoSize(patients=24, matrix=128, image_size=128, view_size=64, ct_epochs=3, natural_epochs=12, batch_size=32)
QUICK = DemoSize(patients=8, matrix=64, image_size=48, view_size=32, ct_epochs=1, natural_epochs=2, batch_size=16)


def _stage(name: str, done: bool, fn) -> None:
    if done:
        logger.info("[%s] already complete, skipped", name)
        return
    start = time.perf_counter()
    logger.info("[%s] ...", name)
    fn()
    logger.info("[%s] done in %.1f s", name, time.perf_counter() - start)


def _pretrain(shards: Path, out: Path, size: DemoSize, epochs: int, label: str) -> None:
    cmd = [sys.executable, str(REPO / "pretrain" / "main.py"), "--shards", str(shards), "--out", str(out),
           "--method", "simclr", "--backbone", "resnet18", "--epochs", str(epochs),
           "--batch-size", str(size.batch_size), "--set", f"data.image_size={size.view_size}",
           "--set", "data.num_workers=1", "--set", f"monitor.knn_label={label}",
           "--set", "monitor.log_every=10", "--set", "method.simclr.hidden_dim=512"]
    subprocess.run(cmd, check=True)


def run_demo(out: str | Path, quick: bool = False) -> dict:
    from data.ingest import IngestConfig, SplitFractions, run_ingest
    from data.synth import NaturalConfig, SynthConfig, run_synth
    from shards.from_images import images_to_shards

    size = QUICK if quick else FULL
    out = Path(out)
    corpus, ct, natural = out / "synth", out / "shards-ct", out / "shards-natural"
    os.environ.setdefault("CTSSL_SALT", "ctssl-demo-salt-not-secret-0001")  # demo data only
    start = time.perf_counter()
    _stage("1/6 synthetic CT corpus and natural-image stand-in", (corpus / "synth-summary.json").exists(),
           lambda: run_synth(SynthConfig(out=str(corpus), patients=size.patients, matrix=size.matrix,
                                         workers=2, natural=NaturalConfig(
                                             train_per_class=48 if not quick else 8,
                                             val_per_class=16 if not quick else 4,
                                             size=96 if not quick else 32))))
    _stage("2/6 ingest CT to shards", (ct / "manifest.json").exists(),
           lambda: run_ingest(IngestConfig(sources=[str(corpus)], out=str(ct), image_size=size.image_size,
                                           labels=[str(corpus / "labels" / "slices.csv")],
                                           splits=SplitFractions(0.6, 0.2, 0.2), workers=2)))
    _stage("3/6 natural images to shards", (natural / "manifest.json").exists(),
           lambda: images_to_shards(corpus / "natural-standin", natural))
    _stage("4/6 SimCLR pretraining on CT", (out / "simclr-ct" / "backbone.safetensors").exists(),
           lambda: _pretrain(ct, out / "simclr-ct", size, size.ct_epochs, "region"))
    _stage("5/6 SimCLR pretraining on natural images", (out / "simclr-natural" / "backbone.safetensors").exists(),
           lambda: _pretrain(natural, out / "simclr-natural", size, size.natural_epochs, "class"))
    results = _knn_table(out, ct, size)
    summary = _write_summary(out, results, time.perf_counter() - start, quick)
    return {"out": str(out), "summary": str(summary), "knn": results}


def _knn_table(out: Path, ct: Path, size: DemoSize) -> list[dict]:
    """6/6: kNN of body region (bank: train patients; queries: val and test patients)."""
    from eval.knn_eval import evaluate_knn

    logger.info("[6/6 kNN evaluation of body region on held-out patients] ...")
    backbones = [("random init", "random:resnet18:3"),
                 ("SimCLR on natural images", str(out / "simclr-natural" / "backbone.safetensors")),
                 ("SimCLR on CT", str(out / "simclr-ct" / "backbone.safetensors"))]
    rows = []
    for name, source in backbones:
        (record,) = evaluate_knn(source, str(ct), "region", ks=(20,), image_size=size.view_size)
        rows.append({**record, "backbone": name, "source": source})
    atomic_write_text(out / "knn.json", json.dumps(rows, indent=1) + "\n")
    return rows


def _write_summary(out: Path, rows: list[dict], seconds: float, quick: bool) -> Path:
    lines = ["# ctssl demo" + (" (--quick)" if quick else ""), "",
             "Body-region kNN (k = 20, T = 0.07) on frozen ResNet-18 features; bank: training "
             "patients, queries: validation and test patients of the synthetic CT corpus.", "",
             "| backbone | accuracy | balanced accuracy | bank | queries |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | "
                     f"{r['n_bank']} | {r['n_query']} |")
    lines += ["", f"Total time: {seconds:.0f} s. Outputs: `synth/`, `shards-ct/`, `shards-natural/`, "
              "`simclr-ct/`, `simclr-natural/` (checkpoints, metrics.jsonl, backbone.safetensors), "
              "`knn.json`.", "",
              "Not yet part of the demo: linear probe, fine-tuning, representation similarity, domain "
              "gap and the HTML report (later stages)."]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
