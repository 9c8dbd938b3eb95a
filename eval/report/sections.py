"""The report's sections, each built once as document blocks (``eval.report.document``) from the results of an
output folder. Sections appear when their results exist:

1. headline table: backbones x tasks at the largest label fraction; one seed: value and 95%
   patient-bootstrap CI; several seeds: mean and standard deviation over seeds (per-seed CIs stay
   in the JSON);
2. paired comparisons against the baseline backbone (difference, CI, p, error consistency);
3. each backbone's chosen fine-tuning learning rate and the grid behind it;
4. data-efficiency curves (metric vs label fraction, mean over seeds, band: CI or seed range);
5. representation similarity heat maps; 6. domain gap; 7. confounders;
8. provenance: every backbone's source, method, training data, weights hash and evaluation input (how its
   images were prepared, ``eval.inputs.spec``); every dataset's fingerprint.

``label(source, width)`` names a backbone readably in every section (``OUT/names.json``, else its shortened
source).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ctssl.eval.records.comparisons import main_metric
from ctssl.eval.records.plots import confounder_curves, efficiency_curves, heatmaps
from ctssl.eval.report.document import Block, Figure, Heading, Note, Table, fmt

TASK_NAMES = {"knn": "kNN", "probe": "linear probe", "finetune": "fine-tuning", "truncated": "truncated fine-tuning",
              "hidden": "fine-tuning (cross-validated)", "segment": "segmentation"}


def readable_task(name: str) -> str:
    """'finetune best_val' -> 'fine-tuning (best_val)'; 'knn k=20' -> 'kNN (k=20)'."""
    task, _, variant = name.partition(" ")
    return TASK_NAMES.get(task, task) + (f" ({variant})" if variant else "")


def _task_name(record: dict) -> str:
    variant = record.get("variant") or ""
    return f"{record['task']} {variant}".strip()


def short(source: str, width: int = 42) -> str:
    """A source shortened to ``width`` characters (its end kept)."""
    return source if len(source) <= width else "…" + source[-(width - 1):]


def _cell(records: list[dict], metric: str) -> tuple[str, float | None]:
    values = [r["test"][metric]["value"] for r in records if r["test"][metric]["value"] is not None]
    if not values:
        return "n/a", None
    if len(records) == 1:
        m = records[0]["test"][metric]
        return f"{fmt(m['value'])} [{fmt(m['lower'])}, {fmt(m['upper'])}]", m["value"]
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
        metric = main_metric(rs[0])
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


def efficiency_series(records: list[dict], label=short) -> dict:
    """{(dataset, label, task): {backbone: [(fraction, mean, low, high)]}} where there are 2+ fractions."""
    out = {}
    groups = defaultdict(list)
    for r in records:
        groups[(r["dataset"]["spec"], r["dataset"]["label"], _task_name(r))].append(r)
    for key, rs in groups.items():
        if len({r["fraction"] for r in rs}) < 2:
            continue
        metric = main_metric(rs[0])
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


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def downstream(records: list[dict], label) -> list[Block]:
    """1. The headline tables, one per dataset and label."""
    if not records:
        return []
    blocks = [Heading("Downstream results")]
    for t in headline(records):
        caption = (f"{t['dataset']} — label '{t['label']}', {t['metric']} on the test split (one seed: "
                   "95% patient-bootstrap CI; several: mean ± SD over seeds); ★ best per column")
        blocks += [Note(caption, emphasis=True),
                   Table(["backbone", *t["columns"]], [[label(b), *cells] for b, cells in t["rows"]])]
    return blocks


def paired(comparisons: list[dict], label) -> list[Block]:
    """2. Paired comparisons against the baseline, per seed and over seeds."""
    if not comparisons:
        return []
    header = ["label", "task", "fraction", "seed", "backbone", "vs baseline", "test", "metric", "Δ [95% CI]",
              "relative Δ", "p", "error consistency κ"]
    tests = {"welch_t": "Welch t over seeds"}
    rows = [[c.get("label", ""), readable_task(f"{c['task']} {c.get('variant') or ''}".strip()), f"{c['fraction']:g}",
             c["seed"], label(c["backbone"], 32), label(c["baseline"], 24), tests.get(c.get("test"), "paired bootstrap"),
             c["metric"], f"{fmt(c['delta'], '+.3f')} [{fmt(c['lower'], '+.3f')}, {fmt(c['upper'], '+.3f')}]",
             fmt(c.get("relative_delta"), "+.1%"), fmt(c["p_value"]),
             fmt((c.get("agreement") or {}).get("error_consistency_kappa"))]
            for c in sorted(comparisons, key=lambda c: (c.get("label", ""), c["task"], c.get("variant") or "",
                                                        c["fraction"], str(c["seed"])))]
    note = ("Per seed: paired patient-bootstrap on the same test samples (difference = backbone − baseline); "
            "over seeds (seed 'all'): Welch's t-test of the per-seed metrics. Error consistency κ: 0 = "
            "independent errors, 1 = the same samples right and wrong.")
    return [Heading("Paired comparisons"), Note(note), Table(header, rows)]


def finetune_choices(records: list[dict], label) -> list[Block]:
    """3. Each backbone's chosen fine-tuning learning rate and the grid behind it."""
    tuned = [r for r in records if r["task"] == "finetune" and r.get("variant") == "best_val" and r.get("chosen")]
    if not tuned:
        return []
    header = ["backbone", "fraction", "seed", "chosen lr", "weight decay", "best epoch", "grid (val metric)"]
    rows = [[label(r["backbone"], 32), f"{r['fraction']:g}", str(r["seed"]), f"{r['chosen']['lr']:g}",
             f"{r['chosen']['weight_decay']:g}", str(r.get("best_epoch", "")),
             ", ".join(f"{g['lr']:g}: {fmt(next((v for k, v in g.items() if k.startswith('val_')), None))}"
                       for g in r.get("grid", []))]
            for r in sorted(tuned, key=lambda r: (r["backbone_order"], r["fraction"], r["seed"]))]
    note = ("Each backbone's fine-tuning learning rate, chosen on validation from the same grid with the same "
            "epoch budget for every backbone.")
    return [Heading("Fine-tuning choices"), Note(note), Table(header, rows)]


def efficiency(records: list[dict], label, out: Path) -> list[Block]:
    """4. Test metric by label fraction, one figure per dataset, label and task with two or more fractions."""
    series = efficiency_series(records, label)
    if not series:
        return []
    blocks = [Heading("Data efficiency")]
    for i, ((spec, target, task, metric), data) in enumerate(series.items()):
        path = efficiency_curves(data, metric, out / "figures" / f"efficiency-{i}.png",
                                 f"{readable_task(task)}: {target}, test {metric} by label fraction")
        blocks.append(Figure(path, f"{task} data efficiency", f"figures/{path.name}"))
    return blocks


def similarity(items: list[dict], label, out: Path) -> list[Block]:
    """5. Linear CKA of the same layers and the heat maps of every measure, per comparison."""
    if not items:
        return []
    blocks = [Heading("Representation similarity")]
    for s in items:
        layers = s["layers_a"]
        diag = [s["matrices"]["linear_cka"][i][i] for i in range(min(len(layers), len(s["layers_b"])))] \
            if "linear_cka" in s["matrices"] else []
        blocks.append(Note(f"A = {label(s['a'])} · B = {label(s['b'])} · {s['n_images']} images of "
                           f"{s['dataset']['spec']} ({s['split']})"))
        if diag:
            blocks.append(Table(["layer", *layers[:len(diag)]], [["linear CKA (same layer)", *[fmt(v) for v in diag]]]))
        path = heatmaps(s, out / "figures" / f"similarity-{s['name']}.png", label)
        blocks.append(Figure(path, "CKA heat maps", f"figures/{path.name}"))
    return blocks


def gap(items: list[dict], label) -> list[Block]:
    """6. The domain-gap measures per backbone, and the t-SNE figures written beside each record."""
    if not items:
        return []
    blocks = [Heading("Domain gap")]
    header = ["backbone", "domain clf. acc.", "proxy A-dist.", "MMD² (σ)", "Fréchet", "kNN purity (chance)",
              "probe A→B gap"]
    for g in items:
        rows = []
        for r in g["rows"]:
            t = r["probe_transfer"]["a_to_b"]
            rows.append([label(r["backbone"]), fmt(r["domain_classifier"]["accuracy"]),
                         fmt(r["domain_classifier"]["proxy_a_distance"]),
                         f"{r['mmd2']['value']:.4f} ({r['mmd2']['sigma']:.2f})", f"{r['frechet_distance']:.3f}",
                         f"{r['knn_purity']['purity']:.3f} ({r['knn_purity']['chance']:.3f})",
                         "n/a (no shared classes)" if t is None else
                         f"{t['gap']:+.3f} ({t['in_domain_accuracy']:.3f} → {t['cross_domain_accuracy']:.3f})"])
        blocks += [Note(f"A = {g['a']['spec']} · B = {g['b']['spec']}"), Table(header, rows)]
        blocks += [Figure(Path(r["figure"]), "t-SNE", "gap/" + Path(r["figure"]).name)
                   for r in g["rows"] if r.get("figure") and Path(r["figure"]).exists()]
    return blocks


def confounders(items: list[dict], label, out: Path) -> list[Block]:
    """7. Clean and anti-correlated AUROC per backbone and confounded fraction, per experiment."""
    if not items:
        return []
    blocks = [Heading("Shortcut robustness (confounders)")]
    header = ["backbone", "fraction", "clean AUROC", "anti-correlated AUROC", "drop", "permutation p"]
    for c in items:
        kind, mode = c["config"]["confounder"], c["config"]["mode"]
        rows = [[label(r["backbone"]), f"{r['fraction']:g}", fmt(r["clean"]["auroc"]["value"]),
                 fmt(r["confounded"]["auroc"]["value"]), fmt(r["drop"]["auroc"], "+.3f"),
                 fmt((r.get("permutation_test") or {}).get("p_value"))] for r in c["rows"]]
        blocks += [Note(f"confounder '{kind}' in a fraction of the positive ({c['label']} = {c['positive']}) training "
                        f"images and in every negative test image; {mode}"), Table(header, rows)]
        path = confounder_curves(c["rows"], "auroc", out / "figures" / f"confounders-{c['name']}.png",
                                 f"Confounder '{kind}' on {c['label']} = {c['positive']}", label)
        blocks.append(Figure(path, "confounders", f"figures/{path.name}"))
    return blocks


def provenance(records: list[dict], gaps: list[dict], names: dict) -> list[Block]:
    """8. Every backbone's card and evaluation input; every dataset's fingerprint."""
    cards = {}
    for r in records:
        cards.setdefault(r["backbone"], r["backbone_card"])
    for g in gaps:
        for r in g["rows"]:
            cards.setdefault(r["backbone"], {})
    if not (cards or records):
        return []
    inputs = {}
    for r in records:
        inputs.setdefault(r["backbone"], (r.get("input") or {}).get("rule", ""))
    header = ["backbone", "source", "method", "architecture", "pretraining data", "steps", "weights SHA-256",
              "evaluation input"]
    rows = [[names.get(b, ""), b, c.get("method", ""), f"{c.get('backbone', '')} ({c.get('in_chans', '')} ch)",
             (c.get("data") or {}).get("shards") or "", c.get("steps", ""), (c.get("weights_sha256") or "")[:16],
             inputs.get(b, "")]
            for b, c in cards.items()]
    datasets = {r["dataset"]["fingerprint"]: r["dataset"] for r in records}
    drows = [[d["spec"], d["label"], d["kind"], d["fingerprint"][:16], json.dumps(d["counts"])]
             for d in datasets.values()]
    return [Heading("Provenance"), Table(header, rows),
            Table(["dataset", "label", "kind", "fingerprint", "samples per split"], drows)]
