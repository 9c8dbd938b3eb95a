"""The evaluation report: every result in an output folder, in one self-contained HTML page
(figures embedded as data URIs, no scripts, no network: it opens offline) and a Markdown summary.

Reads ``OUT/results.jsonl`` and ``OUT/comparisons.jsonl`` (probe, kNN, fine-tuning; gathered by
``eval.runs.collate``), ``OUT/similarity/*.json``, ``OUT/gap/*.json`` and
``OUT/confounders/*.json``. Sections appear when their results exist:

1. headline table: backbones x tasks at the largest label fraction; one seed: value and 95%
   patient-bootstrap CI; several seeds: mean and standard deviation over seeds (per-seed CIs stay
   in the JSON);
2. paired comparisons against the baseline backbone (difference, CI, p, error consistency);
3. data-efficiency curves (metric vs label fraction, mean over seeds, band: CI or seed range);
4. representation similarity heat maps; 5. domain gap; 6. confounders;
7. provenance: every backbone's source, method, training data, weights hash and evaluation input (how its
   images were prepared, ``eval.inputs``); every dataset's fingerprint; the ctssl version and git commit
   that produced the numbers.

Fine-tuning runs add a table of each backbone's chosen learning rate and the grid behind it. A recipe's
sweep (``OUT/sweep.json`` naming a study) opens with that study's tables and figures
(``eval.study_report``); the hidden-representation and truncated-transfer results appear only there.
Figures are drawn with the backbones' readable names (``OUT/names.json``).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ctssl import __version__
from ctssl.core.atomic import atomic_write_text


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _load_folder(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def _main_metric(record: dict) -> str:
    from ctssl.eval.records.comparisons import main_metric

    return main_metric(record)


TASK_NAMES = {"knn": "kNN", "probe": "linear probe", "finetune": "fine-tuning", "truncated": "truncated fine-tuning",
              "hidden": "fine-tuning (cross-validated)"}


def readable_task(name: str) -> str:
    """'finetune best_val' -> 'fine-tuning (best_val)'; 'knn k=20' -> 'kNN (k=20)'."""
    task, _, variant = name.partition(" ")
    return TASK_NAMES.get(task, task) + (f" ({variant})" if variant else "")


def _task_name(record: dict) -> str:
    variant = record.get("variant") or ""
    return f"{record['task']} {variant}".strip()


def _fmt(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _short(source: str, width: int = 42) -> str:
    return source if len(source) <= width else "…" + source[-(width - 1):]



def _cell(records: list[dict], metric: str) -> tuple[str, float | None]:
    values = [r["test"][metric]["value"] for r in records if r["test"][metric]["value"] is not None]
    if not values:
        return "n/a", None
    if len(records) == 1:
        m = records[0]["test"][metric]
        return f"{_fmt(m['value'])} [{_fmt(m['lower'])}, {_fmt(m['upper'])}]", m["value"]
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f} ({len(values)} seeds)", mean


def headline(records: list[dict]) -> dict:
    """{"columns": [task...], "rows": [(backbone, [cell...])], "metric": ..., "fraction": ...} per dataset/label."""
    tables = []
    by_data = defaultdict(list)
    for r in records:
        by_data[(r["dataset"]["spec"], r["dataset"]["label"])].append(r)
    for (spec, label), rs in by_data.items():
        # Each task at its largest label fraction.
        top = {}
        for r in rs:
            top[_task_name(r)] = max(top.get(_task_name(r), 0.0), r["fraction"])
        rs = [r for r in rs if r["fraction"] == top[_task_name(r)]]
        names = list(dict.fromkeys(_task_name(r) for r in sorted(rs, key=lambda r: (r["task"], r.get("variant", "")))))
        columns = [f"{readable_task(n)}, fraction {top[n]:g}" for n in names]
        backbones = list(dict.fromkeys(r["backbone"] for r in sorted(rs, key=lambda r: r["backbone_order"])))
        metric = _main_metric(rs[0])
        rows = []
        for b in backbones:
            cells = []
            for n in names:
                text, value = _cell([r for r in rs if r["backbone"] == b and _task_name(r) == n], metric)
                cells.append((text, value))
            rows.append((b, cells))
        # Mark the best value per column.
        for j in range(len(columns)):
            values = [row[1][j][1] for row in rows]
            if any(v is not None for v in values):
                best = max(v for v in values if v is not None)
                for row in rows:
                    if row[1][j][1] == best:
                        row[1][j] = (row[1][j][0] + " ★", best)
        tables.append({"dataset": spec, "label": label, "metric": metric, "columns": columns,
                       "rows": [(b, [c[0] for c in cells]) for b, cells in rows]})
    return tables


def efficiency_series(records: list[dict], label=_short) -> dict:
    """{(dataset, label, task): {backbone: [(fraction, mean, low, high)]}} where there are 2+ fractions."""
    out = {}
    groups = defaultdict(list)
    for r in records:
        groups[(r["dataset"]["spec"], r["dataset"]["label"], _task_name(r))].append(r)
    for key, rs in groups.items():
        if len({r["fraction"] for r in rs}) < 2:
            continue
        metric = _main_metric(rs[0])
        series = defaultdict(list)
        for b in dict.fromkeys(r["backbone"] for r in sorted(rs, key=lambda r: r["backbone_order"])):
            for f in sorted({r["fraction"] for r in rs}):
                mine = [r for r in rs if r["backbone"] == b and r["fraction"] == f and r["test"][metric]["value"] is not None]
                if not mine:
                    continue
                values = [r["test"][metric]["value"] for r in mine]
                if len(mine) == 1:
                    low, high = mine[0]["test"][metric]["lower"], mine[0]["test"][metric]["upper"]
                else:
                    low, high = min(values), max(values)
                series[label(b, 36)].append((f, float(np.mean(values)), low if low is not None else values[0],
                                              high if high is not None else values[0]))
        out[key + (metric,)] = dict(series)
    return out


def _img(path: str | Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(esc(c) for c in row) + " |" for row in rows), ""]


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;line-height:1.45;padding:0 1rem}h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #e3e7ef;
padding-bottom:.2rem;margin-top:2.2rem}table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.86rem}
th,td{border:1px solid #d5dbe6;padding:.3rem .55rem;text-align:left;vertical-align:top}th{background:#f1f4f9}
tr:nth-child(even) td{background:#fafbfd}.meta{color:#5b6578;font-size:.85rem}img{max-width:100%;margin:.4rem 0;
border:1px solid #e3e7ef}code{background:#f1f4f9;padding:0 .25rem;border-radius:3px}.note{color:#5b6578;font-size:.85rem}"""


def write_report(out: str | Path, title: str = "ctssl evaluation report") -> tuple[Path, Path]:
    """Write OUT/report.html and OUT/report.md; returns their paths."""
    from ctssl.eval.report.plots import confounder_curves, efficiency_curves, heatmaps
    from ctssl.eval.records.provenance import git_commit

    out = Path(out)
    # Readable backbone names (OUT/names.json, from --name or the demo); otherwise shortened sources.
    names = json.loads((out / "names.json").read_text()) if (out / "names.json").exists() else {}

    def label(source: str, width: int = 42) -> str:
        return names.get(source) or _short(source, width)

    from ctssl.eval.report.studies import OWN_TASKS, studies_to_render, study_sections

    all_records = load_jsonl(out / "results.jsonl")
    all_comparisons = load_jsonl(out / "comparisons.jsonl")
    similarity = _load_folder(out / "similarity")
    gaps = _load_folder(out / "gap")
    confounders = _load_folder(out / "confounders")
    sweep = json.loads((out / "sweep.json").read_text())["config"] if (out / "sweep.json").exists() else {}
    study = sweep.get("study") or ""
    # Results a study section lays out itself stay out of the generic tables below.
    records = [r for r in all_records if r["task"] not in OWN_TASKS]
    comparisons = [c for c in all_comparisons if c["task"] not in OWN_TASKS]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"generated {now} by ctssl {__version__} (git {git_commit() or 'unknown'})"
    h = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>"]
    md = [f"# {title}", "", f"_{meta}_", ""]
    if not any((all_records, similarity, gaps, confounders)):
        h.append("<p>No results found in this folder yet.</p>")
        md.append("No results found in this folder yet.")
    for name in studies_to_render(study, all_records):
        heading = f"Study: {name.replace('_', ' ')}"
        cite = sweep.get("reference") if name == study else ""
        h.append(f"<h2>{html.escape(heading)}</h2>" + (f"<p class='note'>Recipe <code>{html.escape(name)}</code>, "
                                                        f"after {html.escape(cite)}</p>" if cite else ""))
        md += [f"## {heading}", "", *([f"Recipe `{name}`, after {cite}", ""] if cite else [])]
        parts, lines = study_sections(out, name, all_records, all_comparisons, confounders, label)
        h += parts
        md += lines

    if records:
        h.append("<h2>Downstream results</h2>")
        md += ["## Downstream results", ""]
        for t in headline(records):
            caption = (f"{t['dataset']} — label '{t['label']}', {t['metric']} on the test split (one seed: "
                       "95% patient-bootstrap CI; several: mean ± SD over seeds); ★ best per column")
            header = ["backbone", *t["columns"]]
            rows = [[label(b), *cells] for b, cells in t["rows"]]
            h.append(f"<p class='note'>{html.escape(caption)}</p>" + _table(header, rows))
            md += [f"_{caption}_", "", *_md_table(header, rows)]
    if comparisons:
        header = ["label", "task", "fraction", "seed", "backbone", "vs baseline", "test", "metric", "Δ [95% CI]",
                  "relative Δ", "p", "error consistency κ"]
        tests = {"welch_t": "Welch t over seeds"}
        rows = [[c.get("label", ""), readable_task(f"{c['task']} {c.get('variant') or ''}".strip()), f"{c['fraction']:g}",
                 c["seed"], label(c["backbone"], 32), label(c["baseline"], 24), tests.get(c.get("test"), "paired bootstrap"),
                 c["metric"], f"{_fmt(c['delta'], '+.3f')} [{_fmt(c['lower'], '+.3f')}, {_fmt(c['upper'], '+.3f')}]",
                 _fmt(c.get("relative_delta"), "+.1%"), _fmt(c["p_value"]),
                 _fmt((c.get("agreement") or {}).get("error_consistency_kappa"))]
                for c in sorted(comparisons, key=lambda c: (c.get("label", ""), c["task"], c.get("variant") or "",
                                                            c["fraction"], str(c["seed"])))]
        note = ("Per seed: paired patient-bootstrap on the same test samples (difference = backbone − baseline); "
                "over seeds (seed 'all'): Welch's t-test of the per-seed metrics. Error consistency κ: 0 = "
                "independent errors, 1 = the same samples right and wrong.")
        h.append(f"<h2>Paired comparisons</h2><p class='note'>{html.escape(note)}</p>" + _table(header, rows))
        md += ["## Paired comparisons", "", note, "", *_md_table(header, rows)]
    tuned = [r for r in records if r["task"] == "finetune" and r.get("variant") == "best_val" and r.get("chosen")]
    if tuned:
        header = ["backbone", "fraction", "seed", "chosen lr", "weight decay", "best epoch", "grid (val metric)"]
        rows = [[label(r["backbone"], 32), f"{r['fraction']:g}", str(r["seed"]), f"{r['chosen']['lr']:g}",
                 f"{r['chosen']['weight_decay']:g}", str(r.get("best_epoch", "")),
                 ", ".join(f"{g['lr']:g}: {_fmt(next((v for k, v in g.items() if k.startswith('val_')), None))}"
                           for g in r.get("grid", []))]
                for r in sorted(tuned, key=lambda r: (r["backbone_order"], r["fraction"], r["seed"]))]
        note = ("Each backbone's fine-tuning learning rate, chosen on validation from the same grid with the same "
                "epoch budget for every backbone.")
        h.append(f"<h2>Fine-tuning choices</h2><p class='note'>{html.escape(note)}</p>" + _table(header, rows))
        md += ["## Fine-tuning choices", "", note, "", *_md_table(header, rows)]
    series = efficiency_series(records, label)
    if series:
        h.append("<h2>Data efficiency</h2>")
        md += ["## Data efficiency", ""]
        for i, ((spec, target, task, metric), data) in enumerate(series.items()):
            path = efficiency_curves(data, metric, out / "figures" / f"efficiency-{i}.png",
                                     f"{readable_task(task)}: {target}, test {metric} by label fraction")
            h.append(_img(path))
            md += [f"![{task} data efficiency](figures/{path.name})", ""]
    if similarity:
        h.append("<h2>Representation similarity</h2>")
        md += ["## Representation similarity", ""]
        for s in similarity:
            layers = s["layers_a"]
            diag = [s["matrices"]["linear_cka"][i][i] for i in range(min(len(layers), len(s["layers_b"])))] \
                if "linear_cka" in s["matrices"] else []
            text = (f"A = {label(s['a'])} · B = {label(s['b'])} · {s['n_images']} images of {s['dataset']['spec']} "
                    f"({s['split']})")
            h.append(f"<p class='note'>{html.escape(text)}</p>")
            md += [text, ""]
            if diag:
                header = ["layer", *layers[:len(diag)]]
                row = [["linear CKA (same layer)", *[_fmt(v) for v in diag]]]
                h.append(_table(header, row))
                md += _md_table(header, row)
            path = heatmaps(s, out / "figures" / f"similarity-{s['name']}.png", label)
            h.append(_img(path))
            md += [f"![CKA heat maps](figures/{path.name})", ""]
    if confounders and study == "source_matters":
        confounders = []          # laid out by the study's section above
    if gaps:
        h.append("<h2>Domain gap</h2>")
        md += ["## Domain gap", ""]
        for g in gaps:
            text = f"A = {g['a']['spec']} · B = {g['b']['spec']}"
            header = ["backbone", "domain clf. acc.", "proxy A-dist.", "MMD² (σ)", "Fréchet", "kNN purity (chance)",
                      "probe A→B gap"]
            rows = []
            for r in g["rows"]:
                t = r["probe_transfer"]["a_to_b"]
                rows.append([label(r["backbone"]), _fmt(r["domain_classifier"]["accuracy"]),
                             _fmt(r["domain_classifier"]["proxy_a_distance"]),
                             f"{r['mmd2']['value']:.4f} ({r['mmd2']['sigma']:.2f})", f"{r['frechet_distance']:.3f}",
                             f"{r['knn_purity']['purity']:.3f} ({r['knn_purity']['chance']:.3f})",
                             "n/a (no shared classes)" if t is None else
                             f"{t['gap']:+.3f} ({t['in_domain_accuracy']:.3f} → {t['cross_domain_accuracy']:.3f})"])
            h.append(f"<p class='note'>{html.escape(text)}</p>" + _table(header, rows))
            md += [text, "", *_md_table(header, rows)]
            for r in g["rows"]:
                if r.get("figure") and Path(r["figure"]).exists():
                    h.append(_img(r["figure"]))
                    md += [f"![t-SNE]({'gap/' + Path(r['figure']).name})", ""]
    if confounders:
        h.append("<h2>Shortcut robustness (confounders)</h2>")
        md += ["## Shortcut robustness (confounders)", ""]
        for c in confounders:
            text = (f"confounder '{c['config']['confounder']}' in a fraction of the positive ({c['label']} = "
                    f"{c['positive']}) training images and in every negative test image; {c['config']['mode']}")
            header = ["backbone", "fraction", "clean AUROC", "anti-correlated AUROC", "drop", "permutation p"]
            rows = [[label(r["backbone"]), f"{r['fraction']:g}", _fmt(r["clean"]["auroc"]["value"]),
                     _fmt(r["confounded"]["auroc"]["value"]), _fmt(r["drop"]["auroc"], "+.3f"),
                     _fmt((r.get("permutation_test") or {}).get("p_value"))] for r in c["rows"]]
            h.append(f"<p class='note'>{html.escape(text)}</p>" + _table(header, rows))
            md += [text, "", *_md_table(header, rows)]
            path = confounder_curves(c["rows"], "auroc", out / "figures" / f"confounders-{c['name']}.png",
                                     f"Confounder '{c['config']['confounder']}' on {c['label']} = {c['positive']}",
                                     label)
            h.append(_img(path))
            md += [f"![confounders](figures/{path.name})", ""]
    cards = {}
    for r in all_records:
        cards.setdefault(r["backbone"], r["backbone_card"])
    for g in gaps:
        for r in g["rows"]:
            cards.setdefault(r["backbone"], {})
    if cards or all_records:
        inputs = {}
        for r in all_records:
            inputs.setdefault(r["backbone"], (r.get("input") or {}).get("rule", ""))
        header = ["backbone", "source", "method", "architecture", "pretraining data", "steps", "weights SHA-256",
                  "evaluation input"]
        rows = [[names.get(b, ""), b, c.get("method", ""), f"{c.get('backbone', '')} ({c.get('in_chans', '')} ch)",
                 (c.get("data") or {}).get("shards") or "", c.get("steps", ""), (c.get("weights_sha256") or "")[:16],
                 inputs.get(b, "")]
                for b, c in cards.items()]
        datasets = {r["dataset"]["fingerprint"]: r["dataset"] for r in all_records}
        drows = [[d["spec"], d["label"], d["kind"], d["fingerprint"][:16], json.dumps(d["counts"])]
                 for d in datasets.values()]
        h.append("<h2>Provenance</h2>" + _table(header, rows) + _table(["dataset", "label", "kind", "fingerprint",
                                                                         "samples per split"], drows))
        md += ["## Provenance", "", *_md_table(header, rows),
               *_md_table(["dataset", "label", "kind", "fingerprint", "samples per split"], drows)]
    h.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write_text(html_path, "\n".join(h) + "\n")
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return html_path, md_path
