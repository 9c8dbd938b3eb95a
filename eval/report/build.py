"""``write_report(out)``: every result in an output folder as one document (``eval.report.document``), written
once as OUT/report.html (self-contained, opens offline) and once as OUT/report.md.

Reads ``OUT/results.jsonl`` and ``OUT/comparisons.jsonl`` (probe, kNN, fine-tuning; gathered by
``eval.records.comparisons.collate``), ``OUT/similarity/*.json``, ``OUT/gap/*.json`` and ``OUT/confounders/*.json``.
A recipe's sweep (``OUT/sweep.json`` naming a study) opens with that study's tables and figures
(``eval.report.studies``); the hidden-representation and truncated-transfer results appear only there. Then
the generic sections (``eval.report.sections``). Figures are drawn with the backbones' readable names
(``OUT/names.json``). The header names the ctssl version and git commit that produced the numbers.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text
from ctssl.eval.records.provenance import git_commit
from ctssl.eval.report import sections
from ctssl.eval.report.segmentation import classification_noise, segmentation
from ctssl.eval.report.document import Block, Heading, Note, Paragraph, render_html, render_markdown
from ctssl.eval.report.studies import OWN_TASKS, studies_to_render, study_sections

TITLE = "ctssl evaluation report"


@dataclass
class Results:
    """What an output folder holds, as its records and files say."""
    out: Path
    records: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    similarity: list[dict] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    confounders: list[dict] = field(default_factory=list)
    sweep: dict = field(default_factory=dict)          # the sweep's resolved config, if OUT/sweep.json exists
    names: dict = field(default_factory=dict)          # readable backbone names (--name, the demo)

    def label(self, source: str, width: int = 42) -> str:
        """A backbone's readable name, else its shortened source."""
        return self.names.get(source) or sections.short(source, width)


def load_results(out: str | Path) -> Results:
    out = Path(out)

    def folder(name):
        return [json.loads(p.read_text()) for p in sorted((out / name).glob("*.json"))] if (out / name).exists() else []

    def file(name):
        return json.loads((out / name).read_text()) if (out / name).exists() else {}

    return Results(out, sections.load_jsonl(out / "results.jsonl"), sections.load_jsonl(out / "comparisons.jsonl"),
                   folder("similarity"), folder("gap"), folder("confounders"), file("sweep.json").get("config", {}),
                   file("names.json"))


def build_report(results: Results, adjust: str = "holm") -> list[Block]:
    """The report's blocks: the answer (CT-pretrained against the baseline), the studies' sections, then the
    generic ones; p-values adjusted (``adjust``: holm or bh) over each table."""
    r, label = results, results.label
    study = r.sweep.get("study") or ""
    blocks: list[Block] = []
    if not any((r.records, r.similarity, r.gaps, r.confounders)):
        blocks.append(Paragraph("No results found in this folder yet."))
    for name in studies_to_render(study, r.records):
        cite = r.sweep.get("reference") if name == study else ""
        blocks.append(Heading(f"Study: {name.replace('_', ' ')}"))
        blocks += [Note(f"Recipe `{name}`, after {cite}")] if cite else []
        blocks += study_sections(r.out, name, r.records, r.comparisons, r.confounders, label)
    # Results a study section lays out itself stay out of the generic tables.
    records = [x for x in r.records if x["task"] not in OWN_TASKS]
    comparisons = [c for c in r.comparisons if c["task"] not in OWN_TASKS]
    confounders = [] if study == "source_matters" else r.confounders      # laid out by the study's section
    answer = sections.answer(records, comparisons, label, r.out, adjust)
    return [*answer, *blocks, *sections.downstream(records, label), *sections.paired(comparisons, label, adjust),
            *sections.finetune_choices(records, label), *classification_noise(records, label, r.out),
            *segmentation(records, label, r.out), *sections.efficiency(records, label, r.out),
            *sections.similarity(r.similarity, label, r.out), *sections.gap(r.gaps, label),
            *sections.confounders(confounders, label, r.out),
            *sections.provenance(r.records, r.gaps, r.names, r.similarity)]


def write_report(out: str | Path, title: str = TITLE, adjust: str = "holm") -> tuple[Path, Path]:
    """Write OUT/report.html and OUT/report.md; returns their paths. ``adjust``: holm or bh."""
    from ctssl.eval.measures.multiplicity import METHODS

    if adjust not in METHODS:
        raise ValueError(f"Unknown multiplicity adjustment '{adjust}'. Valid adjustments are {list(METHODS)}.")
    results = load_results(out)
    blocks = build_report(results, adjust)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"generated {now} by ctssl {__version__} (git {git_commit() or 'unknown'})"
    html_path, md_path = results.out / "report.html", results.out / "report.md"
    atomic_write_text(html_path, render_html(title, meta, blocks))
    atomic_write_text(md_path, render_markdown(title, meta, blocks))
    return html_path, md_path
