"""The report's sections, each built once as document blocks (``eval.report.document``) from the results of an
output folder. Sections appear when their results exist:

0. the answer, per dataset and label: each CT-pretrained backbone against the baseline (the natural-image-
   pretrained backbone unless the user named another; ``eval.records.comparisons.choose_baseline``), the
   difference with its interval and a p-value adjusted over the table's family (Holm, or Benjamini-Hochberg),
   in words ("no detectable difference" where the data say so), a forest plot, and caveats: few test patients,
   input sizes that differ between the backbones;
1. headline table: backbones x tasks at the largest label fraction; one seed: value and 95%
   patient-bootstrap CI; several seeds: mean and standard deviation over seeds (per-seed CIs stay
   in the JSON);
2. paired comparisons against the baseline backbone (difference, CI, p and adjusted p, error consistency), one
   table (one family) per dataset and label;
3. each backbone's chosen fine-tuning learning rate and the grid behind it;
4. data-efficiency curves (metric vs label fraction, mean over seeds, band: CI or seed range);
5. representation similarity heat maps; 6. domain gap; 7. confounders;
8. provenance: every backbone's source, method, training data and weights hash; the evaluation input of every
   run (how its images were prepared, ``eval.inputs.spec``: a backbone may be seen at different sizes by
   different commands); every dataset's fingerprint.

p-values from B resamples print as ``< 1/B`` where none of the resamples crossed zero; adjusted p-values
derived from them as bounds (``eval.measures.multiplicity``).

``label(source, width)`` names a backbone readably in every section (``OUT/names.json``, else its shortened
source).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.sources import ARMS, pretraining_arm
from ctssl.eval.measures.multiplicity import METHODS, adjust, format_p
from ctssl.eval.records.comparisons import main_metric
from ctssl.eval.records.plots import confounder_curves, efficiency_curves, forest, heatmaps
from ctssl.eval.report.document import Block, Figure, Heading, Note, Paragraph, Table, fmt

ALPHA = 0.05            # the level at which an adjusted p-value counts as a detectable difference
SMALL_TEST = 10         # test patients under which a comparison gets a small-sample caveat

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
        sizes = {size for v in _sizes(records, t["dataset"], t["label"]).values() for size in v}
        inputs = (f"every backbone at {sizes.pop()} px" if len(sizes) == 1 else
                  "input sizes differ between the backbones (Provenance)")
        caption = (f"{t['dataset']} — label '{t['label']}', {t['metric']} on the test split (one seed: "
                   f"95% patient-bootstrap CI; several: mean ± SD over seeds); {inputs}; ★ best per column")
        blocks += [Note(caption, emphasis=True),
                   Table(["backbone", *t["columns"]], [[label(b), *cells] for b, cells in t["rows"]])]
    return blocks


def _task_of(c: dict) -> str:
    return readable_task(f"{c['task']} {c.get('variant') or ''}".strip())


def families(comparisons: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Comparisons by (dataset, label): one table, one family of tests, each."""
    out = defaultdict(list)
    for c in sorted(comparisons, key=lambda c: (c["task"], c.get("variant") or "", c["fraction"], str(c["seed"]),
                                                c["backbone"])):
        out[(c.get("dataset", ""), c.get("label", ""))].append(c)
    return dict(out)


def _adjusted(rows: list[dict], method: str) -> list[tuple[float | None, bool]]:
    return adjust([c["p_value"] for c in rows], method, [c.get("resamples") for c in rows])


def _p(c: dict) -> str:
    return format_p(c["p_value"], c.get("resamples"))


def _test_name(c: dict) -> str:
    return "Welch t over seeds" if c.get("test") == "welch_t" else "paired bootstrap"


def paired(comparisons: list[dict], label, method: str = "holm") -> list[Block]:
    """2. Paired comparisons against the baseline, per seed and over seeds; one table (one family) per dataset and
    label, its p-values adjusted over the table."""
    if not comparisons:
        return []
    blocks = [Heading("Paired comparisons"),
              Note("Per seed: paired patient-bootstrap on the same test samples (difference = backbone − baseline); "
                   "over seeds (seed 'all'): Welch's t-test of the per-seed metrics. p: the test's own; adjusted p: "
                   f"{METHODS[method]} over every test of the table (one family); a bootstrap p of 0 from B resamples "
                   "is shown as < 1/B. Error consistency κ: 0 = independent errors, 1 = the same samples right and "
                   "wrong.")]
    header = ["task", "fraction", "seed", "backbone", "vs baseline", "test", "metric", "Δ [95% CI]", "relative Δ",
              "p", f"p ({METHODS[method]})", "test patients", "error consistency κ"]
    for (spec, target), rows in families(comparisons).items():
        adjusted = _adjusted(rows, method)
        table = [[_task_of(c), f"{c['fraction']:g}", c["seed"], label(c["backbone"], 32), label(c["baseline"], 24),
                  _test_name(c), c["metric"],
                  f"{fmt(c['delta'], '+.3f')} [{fmt(c['lower'], '+.3f')}, {fmt(c['upper'], '+.3f')}]",
                  fmt(c.get("relative_delta"), "+.1%") + (" †" if (c.get("n_patients") or SMALL_TEST) < SMALL_TEST
                                                         else ""),
                  _p(c), format_p(a, None, bound), str(c.get("n_patients") or "n/a"),
                  fmt((c.get("agreement") or {}).get("error_consistency_kappa"))]
                 for c, (a, bound) in zip(rows, adjusted)]
        blocks += [Note(f"{spec} — label '{target}': {len(rows)} tests in this family", emphasis=True),
                   Table(header, table)]
        if any((c.get("n_patients") or SMALL_TEST) < SMALL_TEST for c in rows):
            blocks.append(Note(f"† fewer than {SMALL_TEST} test patients: a relative change of a few percent points "
                               "on so few patients is noise-sized; read it with its interval."))
    return blocks


def _question(rows: list[dict]) -> tuple[list[dict], bool]:
    """The comparisons that answer the question, and whether they are CT-pretrained against the baseline: every
    CT-arm backbone (else every backbone) against the baseline; over seeds where there are several, per seed
    otherwise; fine-tuning's best-validation model only."""
    rows = [c for c in rows if not (c.get("variant") or "").endswith("final")]
    ct = [c for c in rows if (c.get("arms") or ["", ""])[1] == "ct"]
    rows = ct or rows
    pooled = {(c["task"], c.get("variant") or "", c["fraction"], c["backbone"]) for c in rows if c["seed"] == "all"}
    return [c for c in rows if c["seed"] == "all" or
            (c["task"], c.get("variant") or "", c["fraction"], c["backbone"]) not in pooled], bool(ct)


def verdict(c: dict, p_adj: float | None, subject: str, baseline: str) -> str:
    """The comparison in words, at ``ALPHA`` after adjustment."""
    if c["delta"] is None or p_adj is None:
        return "undefined (the metric is undefined on these test samples)"
    if p_adj >= ALPHA or c["delta"] == 0:
        return "no detectable difference"
    return f"{subject} better than {baseline}" if c["delta"] > 0 else f"{subject} worse than {baseline}"


def _sizes(records: list[dict], spec: str, target: str) -> dict[str, set[int]]:
    sizes = defaultdict(set)
    for r in records:
        if r["dataset"]["spec"] == spec and r["dataset"]["label"] == target:
            sizes[r["backbone"]].add((r.get("input") or {}).get("size"))
    return sizes


def answer(records: list[dict], comparisons: list[dict], label, out: Path, method: str = "holm") -> list[Block]:
    """0. The report's opening: per dataset and label, CT-pretrained against the baseline (module docstring)."""
    if not comparisons:
        return []
    first = comparisons[0]
    base = label(first["baseline"])
    base_arm = (first.get("arms") or ["", ""])[0]
    why = ("the natural-image-pretrained arm" if base_arm == "natural" else
           f"{ARMS.get(base_arm, base_arm)}; no natural-image-pretrained backbone was the baseline, so this is not "
           "yet the CT-versus-natural question")
    blocks = [Heading("The answer: CT-pretrained against the baseline"),
              Paragraph(f"Baseline: {base} ({why}; set another with --baseline). Each row: backbone − baseline on the "
                        f"same test samples, with its 95% interval; p adjusted with {METHODS[method]}'s method over "
                        f"every row of its table; a difference counts as detectable at adjusted p < {ALPHA:g}.")]
    for i, ((spec, target), rows) in enumerate(families(comparisons).items()):
        rows, ct = _question(rows)
        if not rows:
            continue
        adjusted = _adjusted(rows, method)
        metric = rows[0]["metric"]
        table, points, words = [], [], defaultdict(int)
        for c, (p_adj, bound) in zip(rows, adjusted):
            subject = "CT-pretrained" if ct else label(c["backbone"], 32)
            said = verdict(c, p_adj, subject, "the baseline")
            words[said.replace(subject, "X")] += 1
            scope = "over seeds" if c["seed"] == "all" else f"seed {c['seed']}"
            table.append([_task_of(c), f"{c['fraction']:g}", scope, label(c["backbone"], 32),
                          f"{fmt(c['delta'], '+.3f')} [{fmt(c['lower'], '+.3f')}, {fmt(c['upper'], '+.3f')}]",
                          _p(c), format_p(p_adj, None, bound), said])
            points.append((f"{_task_of(c)}, {c['fraction']:g}, {label(c['backbone'], 24)}"
                           + ("" if c["seed"] == "all" else f", seed {c['seed']}"), c["delta"], c["lower"], c["upper"],
                           p_adj is not None and p_adj < ALPHA))
        detectable = len(rows) - words["no detectable difference"] - words["undefined (the metric is undefined on "
                                                                             "these test samples)"]
        subject = "CT-pretrained backbones" if ct else "the backbones"
        summary = (f"No detectable difference between {subject} and {base} in any of the {len(rows)} comparisons."
                   if detectable == 0 else
                   f"{detectable} of {len(rows)} comparisons show a detectable difference "
                   f"({words['X better than the baseline']} better, {words['X worse than the baseline']} worse); "
                   f"the other {len(rows) - detectable} show none.")
        blocks += [Heading(f"{target} ({metric}) — {spec}", 3), Paragraph(summary),
                   Table(["task", "fraction", "seeds", "backbone", f"Δ {metric} [95% CI]", "p",
                          f"p ({METHODS[method]}, {len(rows)} tests)", "in words"], table)]
        path = forest(points, out / "figures" / f"answer-{i}.png",
                      f"{target}: backbone − {base}", f"difference in test {metric} (95% interval)")
        blocks.append(Figure(path, "forest plot of the differences", f"figures/{path.name}"))
        blocks += caveats(rows, _sizes(records, spec, target), label)
    return blocks


def caveats(rows: list[dict], sizes: dict[str, set[int]], label) -> list[Block]:
    """Notes a reader needs beside an answer table: few test patients; input sizes that differ between the
    backbones of the comparison."""
    notes = []
    few = min((c.get("n_patients") or 10 ** 9 for c in rows), default=10 ** 9)
    resamples = max((c.get("resamples") or 0 for c in rows), default=0)
    if few < SMALL_TEST:
        notes.append(Note(f"Caveat: {few} test patients. A patient bootstrap over so few patients has few distinct "
                          "resamples, so intervals are coarse and can miss the truth; p-values cannot go below 1/B "
                          f"(B = {resamples} resamples here); relative changes on so few patients swing widely. Treat "
                          "these numbers as a check that the pipeline runs, not as evidence."))
    every = {size for v in sizes.values() for size in v}
    if len(every) > 1:
        listed = "; ".join(f"{label(b, 32)} {', '.join(f'{x} px' for x in sorted(v, key=str))}"
                           for b, v in sizes.items())
        notes.append(Note(f"Input sizes differ between the backbones of this comparison ({listed}): a difference "
                          "may come from the size, not the pretraining. ctssl evaluates every backbone at one size "
                          "unless --own-size or different --image-size runs are mixed in one folder."))
    elif every:
        notes.append(Note(f"Every backbone evaluated at {every.pop()} px."))
    return notes


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


def provenance(records: list[dict], gaps: list[dict], names: dict, similarity: list[dict] | None = None
               ) -> list[Block]:
    """8. Every backbone's card; the evaluation input of every run (per run, not per backbone: commands and
    settings may see one backbone at different sizes); every dataset's fingerprint."""
    cards = {}
    for r in records:
        cards.setdefault(r["backbone"], r["backbone_card"])
    for g in gaps:
        for r in g["rows"]:
            cards.setdefault(r["backbone"], {})
    if not (cards or records):
        return []
    header = ["backbone", "source", "arm", "method", "architecture", "pretraining data", "steps", "weights SHA-256"]
    rows = [[names.get(b, ""), b, ARMS.get(pretraining_arm(c), "") if c else "", c.get("method", ""),
             f"{c.get('backbone', '')} ({c.get('in_chans', '')} ch)", (c.get("data") or {}).get("shards") or "",
             c.get("steps", ""), (c.get("weights_sha256") or "")[:16]]
            for b, c in cards.items()]
    uses = defaultdict(list)        # (backbone, size, rule) -> the runs that saw that input
    for r in records:
        i = r.get("input") or {}
        uses[(r["backbone"], i.get("size"), i.get("rule", ""))].append(
            f"{readable_task(_task_name(r))} {r['dataset']['label']} {r['fraction']:g}")
    for g in gaps:
        for r in g["rows"]:
            i = (r.get("input") or {}).get("a") or {}
            uses[(r["backbone"], i.get("size"), i.get("rule", ""))].append(f"domain gap {g['name']}")
    for item in similarity or []:
        for side in ("a", "b"):
            i = (item.get("inputs") or {}).get(side) or {}
            uses[(item[side], i.get("size"), i.get("rule", ""))].append(f"similarity {item['name']} ({side.upper()})")
    inputs = [[names.get(b) or short(b, 32), f"{size} px" if size else "n/a", rule,
               ", ".join(sorted(set(runs))) if len(set(runs)) <= 6 else f"{len(runs)} runs: "
               + ", ".join(sorted(set(runs))[:6]) + ", ..."]
              for (b, size, rule), runs in uses.items()]
    datasets = {r["dataset"]["fingerprint"]: r["dataset"] for r in records}
    drows = [[d["spec"], d["label"], d["kind"], d["fingerprint"][:16], json.dumps(d["counts"])]
             for d in datasets.values()]
    return [Heading("Provenance"), Table(header, rows),
            Note("Evaluation input of every run, as its record holds it (size, windows, normalisation, and why):"),
            Table(["backbone", "input size", "input (rule)", "runs"], inputs),
            Table(["dataset", "label", "kind", "fingerprint", "samples per split"], drows)]
