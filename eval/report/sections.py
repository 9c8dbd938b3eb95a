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

Every interval, p-value and verdict follows ``eval.measures.evidence``'s rule: with too few test patients (or too
few per class, where the metric depends on classes) a cell shows the point value and "too few test patients",
never an interval, a p-value or a direction; an interval resting on fewer distinct patient resamples than drawn
is marked ‡; a verdict states a direction only where the adjusted p-value supports it, and says so where the
test could not reach the level over its patients and tests. kNN is named by the k it voted with where that
differs from the k asked.

``label(source, width)`` names a backbone readably in every section (``OUT/names.json``, else its shortened
source).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ctssl.eval.inputs.overlap import describe as describe_overlap
from ctssl.pretrain.sources import ARMS, pretraining_arm
from ctssl.eval.measures.evidence import ALPHA, MIN_PATIENTS, MIN_PATIENTS_PER_CLASS
from ctssl.eval.measures.multiplicity import METHODS, adjust, format_p
from ctssl.eval.records.comparisons import main_metric
from ctssl.eval.records.plots import confounder_curves, efficiency_curves, forest, heatmaps
from ctssl.eval.report.document import Block, Figure, Heading, Note, Paragraph, Table, fmt

SMALL_TEST = 10         # test patients under which a comparison gets a small-sample caveat
COARSE = "‡"            # an interval from fewer distinct patient resamples than drawn

TASK_NAMES = {"knn": "kNN", "probe": "linear probe", "finetune": "fine-tuning", "truncated": "truncated fine-tuning",
              "hidden": "fine-tuning (cross-validated)", "segment": "segmentation"}


def readable_task(name: str) -> str:
    """'finetune best_val' -> 'fine-tuning (best_val)'; 'knn k=20' -> 'kNN (k=20)'."""
    task, _, variant = name.partition(" ")
    return TASK_NAMES.get(task, task) + (f" ({variant})" if variant else "")


def _task_name(record: dict) -> str:
    variant = record.get("variant") or ""
    return f"{record['task']} {variant}".strip()


def effective_k(variant: str, k_effective) -> str:
    """kNN's variant named by the k it voted with: 'k=38 of 200 asked' where the bank held fewer than k."""
    if k_effective is None or not variant.startswith("k=") or variant == f"k={k_effective}":
        return variant
    return f"k={k_effective} of {variant[2:]} asked"


def short(source: str, width: int = 42) -> str:
    """A source shortened to ``width`` characters (its end kept)."""
    return source if len(source) <= width else "…" + source[-(width - 1):]


def interval_text(m: dict) -> str:
    """A metric of a record as the report prints it: value [interval], ‡ for a coarse interval; the value and
    "too few test patients (n = ...)" where the rule admits no interval."""
    evidence = m.get("evidence") or {}
    if evidence.get("reason"):
        return f"{fmt(m['value'])} (too few test patients, n = {evidence['patients']})"
    return f"{fmt(m['value'])} [{fmt(m['lower'])}, {fmt(m['upper'])}]" + (COARSE if evidence.get("coarse_interval")
                                                                         else "")


def _cell(records: list[dict], metric: str) -> tuple[str, float | None]:
    values = [r["test"][metric]["value"] for r in records if r["test"][metric]["value"] is not None]
    if not values:
        return "n/a", None
    if len(records) == 1:
        m = records[0]["test"][metric]
        return interval_text(m), m["value"]
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
        k_used = {_task_name(r): r.get("k_effective") for r in rs}
        columns = [f"{readable_task(effective_k(n, k_used.get(n)) if n.startswith('knn ') else n)}, "
                   f"fraction {top[n]:g}" for n in names]
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
                   f"95% patient-bootstrap CI, {COARSE} where it rests on fewer distinct patient resamples than drawn; "
                   f"several: mean ± SD over seeds); {inputs}; ★ best per column")
        blocks += [Note(caption, emphasis=True),
                   Table(["backbone", *t["columns"]], [[label(b), *cells] for b, cells in t["rows"]])]
    return blocks


def _task_of(c: dict) -> str:
    variant = effective_k(c.get("variant") or "", c.get("k_effective")) if c["task"] == "knn" else \
        c.get("variant") or ""
    return readable_task(f"{c['task']} {variant}".strip())


def difference_text(c: dict) -> str:
    """A comparison's difference as the tables print it: Δ [95% CI] (‡ coarse), or Δ alone where the rule
    admits no interval."""
    if c.get("insufficient"):
        return f"{fmt(c['delta'], '+.3f')} (too few test patients, n = {c.get('n_patients')})"
    text = f"{fmt(c['delta'], '+.3f')} [{fmt(c['lower'], '+.3f')}, {fmt(c['upper'], '+.3f')}]"
    return text + (COARSE if c.get("coarse_interval") else "")


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
    return "Welch t over seeds" if c.get("test") == "welch_t" else c.get("test") or "paired patient swap"


def paired(comparisons: list[dict], label, method: str = "holm") -> list[Block]:
    """2. Paired comparisons against the baseline, per seed and over seeds; one table (one family) per dataset and
    label, its p-values adjusted over the table."""
    if not comparisons:
        return []
    blocks = [Heading("Paired comparisons"),
              Note("Per seed: on the same test samples, difference = backbone − baseline with its 95% paired "
                   "patient-bootstrap interval and the p-value of the paired patient swap test (exact where its "
                   "patterns can be enumerated; never below 2^(1-n) for n patients); over seeds (seed 'all'): Welch's "
                   f"t-test of the per-seed metrics. Adjusted p: {METHODS[method]} over every test of the table (one "
                   f"family). Fewer than {MIN_PATIENTS} test patients ({MIN_PATIENTS_PER_CLASS} per class for AUROC): "
                   "the difference alone, no interval, no p-value. Error consistency κ: 0 = independent errors, "
                   "1 = the same samples right and wrong.")]
    header = ["task", "fraction", "seed", "backbone", "vs baseline", "test", "metric", "Δ [95% CI]", "relative Δ",
              "p", f"p ({METHODS[method]})", "test patients", "error consistency κ"]
    for (spec, target), rows in families(comparisons).items():
        adjusted = _adjusted(rows, method)
        table = [[_task_of(c), f"{c['fraction']:g}", c["seed"], label(c["backbone"], 32), label(c["baseline"], 24),
                  _test_name(c), c["metric"], difference_text(c),
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


UNDEFINED = "undefined (the metric is undefined on these test samples)"
TOO_FEW = "too few test patients to compare"
NO_DIFFERENCE = "no detectable difference"
UNREACHABLE = "no detectable difference (this test cannot reach the level here)"


def verdict(c: dict, p_adj: float | None, subject: str, baseline: str, family: int = 1) -> str:
    """The comparison in words, at ``ALPHA`` after adjustment over a ``family`` of tests: a direction only where
    the adjusted p-value supports it; too few test patients where the rule admits no test; where the test's
    smallest p times the family (Holm's smallest adjusted p) cannot reach ``ALPHA``, that it could not."""
    if c.get("insufficient"):
        return f"{TOO_FEW} (n = {c.get('n_patients')})"
    if c["delta"] is None or p_adj is None:
        return UNDEFINED
    if p_adj >= ALPHA or c["delta"] == 0:
        smallest = c.get("smallest_p")
        return UNREACHABLE if smallest is not None and smallest * family >= ALPHA else NO_DIFFERENCE
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
        # Holm's smallest adjusted p is the family's size times the smallest p; Benjamini-Hochberg's can be the
        # smallest p itself (every test at it).
        floor = sum(1 for r in rows if r.get("p_value") is not None) if method == "holm" else 1
        for c, (p_adj, bound) in zip(rows, adjusted):
            subject = "CT-pretrained" if ct else label(c["backbone"], 32)
            said = verdict(c, p_adj, subject, "the baseline", floor)
            words["too few" if said.startswith(TOO_FEW) else said.replace(subject, "X")] += 1
            scope = "over seeds" if c["seed"] == "all" else f"seed {c['seed']}"
            table.append([_task_of(c), f"{c['fraction']:g}", scope, label(c["backbone"], 32), difference_text(c),
                          _p(c), format_p(p_adj, None, bound), said])
            if not c.get("insufficient"):
                points.append((f"{_task_of(c)}, {c['fraction']:g}, {label(c['backbone'], 24)}"
                               + ("" if c["seed"] == "all" else f", seed {c['seed']}"), c["delta"], c["lower"],
                               c["upper"], p_adj is not None and p_adj < ALPHA))
        better, worse = words["X better than the baseline"], words["X worse than the baseline"]
        subject = "CT-pretrained backbones" if ct else "the backbones"
        testable = len(rows) - words["too few"]
        if testable == 0:
            few = min((c.get("n_patients") or 0) for c in rows)
            summary = (f"Too few test patients to compare {subject} with {base} (n = {few}; at least {MIN_PATIENTS}, "
                       f"and {MIN_PATIENTS_PER_CLASS} per class for AUROC, are needed): no interval, p-value or "
                       "direction is given. Ingest more patients, or give the test split a larger share.")
        elif better + worse == 0:
            summary = (f"No detectable difference between {subject} and {base} in any of the {testable} comparisons "
                       "that the test patients allow"
                       + (f" ({words[UNREACHABLE]} of them could not reach adjusted p < {ALPHA:g} with so few "
                          "patients)" if words[UNREACHABLE] else "")
                       + (f"; {words['too few']} more have too few test patients." if words["too few"] else "."))
        else:
            summary = (f"{better + worse} of {testable} comparisons show a detectable difference ({better} better, "
                       f"{worse} worse); the other {testable - better - worse} show none"
                       + (f"; {words['too few']} more have too few test patients." if words["too few"] else "."))
        blocks += [Heading(f"{target} ({metric}) — {spec}", 3), Paragraph(summary),
                   Table(["task", "fraction", "seeds", "backbone", f"Δ {metric} [95% CI]", "p",
                          f"p ({METHODS[method]}, {len(rows)} tests)", "in words"], table)]
        if points:
            path = forest(points, out / "figures" / f"answer-{i}.png",
                          f"{target}: backbone − {base}", f"difference in test {metric} (95% interval)")
            blocks.append(Figure(path, "forest plot of the differences", f"figures/{path.name}"))
        blocks += caveats(rows, _sizes(records, spec, target), label)
        blocks += overlap_notes([r for r in records if r["dataset"]["spec"] == spec and r["dataset"]["label"] == target],
                                label)
    return blocks


def overlap_status(records: list[dict]) -> dict[str, dict]:
    """Each backbone's pretraining-patient check (``eval.inputs.overlap``) as its records hold it."""
    out = {}
    for r in records:
        if r.get("pretraining_overlap"):
            out.setdefault(r["backbone"], r["pretraining_overlap"])
    return out


def overlap_notes(records: list[dict], label) -> list[Block]:
    """Beside an answer: backbones evaluated on patients they were pretrained on (allowed by the user), and CT
    backbones whose pretraining patients could not be checked."""
    notes = []
    for source, status in overlap_status(records).items():
        if status["status"] == "overlap":
            notes.append(Note(f"Caveat: {label(source, 32)} was {describe_overlap(status)} (evaluated with "
                              "--allow-pretraining-overlap): its numbers are biased in its favour.", emphasis=True))
        elif status["status"] == "unchecked":
            notes.append(Note(f"Not checked whether {label(source, 32)} was pretrained on these test patients: "
                              f"{status['why']}."))
    return notes


def caveats(rows: list[dict], sizes: dict[str, set[int]], label) -> list[Block]:
    """Notes a reader needs beside an answer table: few test patients; input sizes that differ between the
    backbones of the comparison."""
    notes = []
    tested = [c for c in rows if not c.get("insufficient")]
    few = min((c.get("n_patients") or 10 ** 9 for c in tested), default=10 ** 9)
    if few < SMALL_TEST:
        smallest = min((c.get("smallest_p") or 1.0 for c in tested), default=1.0)
        notes.append(Note(f"Caveat: {few} test patients. The paired swap test over so few patients cannot give a "
                          f"p-value below {smallest:.3g}, and a patient bootstrap has few distinct resamples "
                          f"({COARSE}: fewer than drawn), so intervals are coarse; relative changes on so few patients "
                          "swing widely."))
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
        for measure, reason in (s.get("too_few_images") or {}).items():
            blocks.append(Note(f"{measure.replace('_', ' ')}: {reason}.", emphasis=True))
        chance = (s.get("chance_level") or {}).get("linear_cka")
        if diag and any(v is not None for v in diag):
            rows = [["linear CKA (same layer)", *[fmt(v) for v in diag]]]
            if chance:
                rows.append(["chance level (images of B shuffled)",
                             *[fmt(chance[i][i]) for i in range(len(diag))]])
            blocks.append(Table(["layer", *layers[:len(diag)]], rows))
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
            few = "too few images"
            clf, mmd, knn = r["domain_classifier"], r["mmd2"], r["knn_purity"]
            rows.append([label(r["backbone"]), fmt(clf["accuracy"]) if clf else few,
                         fmt(clf["proxy_a_distance"]) if clf else few,
                         f"{mmd['value']:.4f} ({mmd['sigma']:.2f})" if mmd else few,
                         few if r["frechet_distance"] is None else f"{r['frechet_distance']:.3f}",
                         f"{knn['purity']:.3f} ({knn['chance']:.3f})" if knn else few,
                         "n/a (no shared classes)" if t is None else
                         f"{t['gap']:+.3f} ({t['in_domain_accuracy']:.3f} → {t['cross_domain_accuracy']:.3f})"])
        blocks += [Note(f"A = {g['a']['spec']} · B = {g['b']['spec']}"), Table(header, rows)]
        reasons = sorted({reason for r in g["rows"] for reason in (r.get("too_few_images") or {}).values()})
        blocks += [Note(reason) for reason in reasons]
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
        rows = [[label(r["backbone"]), f"{r['fraction']:g}", interval_text(r["clean"]["auroc"]),
                 interval_text(r["confounded"]["auroc"]), fmt(r["drop"]["auroc"], "+.3f"), _confounder_p(r)]
                for r in c["rows"]]
        blocks += [Note(f"confounder '{kind}' in a fraction of the positive ({c['label']} = {c['positive']}) training "
                        f"images and in every negative test image; {mode}"), Table(header, rows)]
        path = confounder_curves(c["rows"], "auroc", out / "figures" / f"confounders-{c['name']}.png",
                                 f"Confounder '{kind}' on {c['label']} = {c['positive']}", label)
        blocks.append(Figure(path, "confounders", f"figures/{path.name}"))
    return blocks


def _confounder_p(row: dict) -> str:
    """The confounder drop's p-value, or why there is none (too few test patients: no test)."""
    reason = ((row["clean"]["auroc"].get("evidence") or {}).get("reason"))
    if reason:
        return "n/a (too few test patients)"
    return fmt((row.get("permutation_test") or {}).get("p_value"))


def method_words(card: dict) -> str:
    """A card's method, with "continued from SOURCE" for continued pretraining and how a library backbone's
    arm was chosen."""
    words = str(card.get("method", ""))
    if card.get("init"):
        words += f", continued from {card['init'].get('source')}"
    if card.get("arm_rule"):
        words += f" (arm {card['arm_rule']})"
    return words


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
    header = ["backbone", "source", "arm", "method", "architecture", "pretraining data", "steps", "weights SHA-256",
              "pretraining patients vs evaluation patients"]
    checked = overlap_status(records)
    rows = [[names.get(b, ""), b, ARMS.get(pretraining_arm(c), "") if c else "", method_words(c),
             f"{c.get('backbone', '')} ({c.get('in_chans', '')} ch)", (c.get("data") or {}).get("shards") or "",
             c.get("steps", ""), (c.get("weights_sha256") or "")[:16],
             describe_overlap(checked[b]) if b in checked else ""]
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
