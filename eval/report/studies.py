"""The report's sections for the seed-study recipes (eval/recipes/): each study's results laid out as its
paper's tables and figures. ``study_sections(out, study, records, comparisons, confounders, label)``
returns the study's document blocks (``eval.report.document``); ``eval.report.build.write_report`` places them
after the recipe's citation.

- ``radnet12m``: fine-tuning and linear probe at each label fraction (mean ± SD over seeds, relative Δ of
  the means vs the baseline, Welch p), feature reuse (RBF CKA of pretrained vs fine-tuned conv weights) and
  who knew what (test samples right for both, only one, neither; summed over seeds);
- ``hidden_representations``: fine-tuned test metric per backbone over the folds, mean CCA of pretrained
  vs fine-tuned per layer (table and figure), prediction similarity of each pair against chance;
- ``truncated_transfer``: test metric per cut point and label fraction, parameters kept, one figure per
  fraction;
- ``source_matters``: per confounder, clean and anti-correlated AUROC, the drop and its permutation test,
  per backbone and confounded fraction (mean over seeds), with a figure.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ctssl.eval.protocols.finetune import cut_name
from ctssl.eval.records.comparisons import main_metric
from ctssl.eval.records.plots import confounder_curves, cut_curves, layer_profile
from ctssl.eval.report.document import Block, Figure, Heading, Note, Table, fmt


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f} (n={len([v for v in values if v is not None])})"


def _backbones(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["backbone"] for r in sorted(records, key=lambda r: r["backbone_order"])))


def _section(title: str, note: str, header, rows) -> list[Block]:
    return [Heading(title, 3), Note(note), Table(header, rows)]


def _figure(path: Path, alt: str, out: Path) -> Figure:
    return Figure(path, alt, path.relative_to(out).as_posix())


def radnet12m(out: Path, records, comparisons, confounders, label) -> list[Block]:
    blocks = []
    runs = [r for r in records if (r["task"] == "finetune" and r.get("variant") == "best_val") or r["task"] == "probe"]
    if not runs:
        return blocks
    backbones = _backbones(runs)
    welch = {(c["task"], c["fraction"], c["backbone"]): c for c in comparisons
             if c.get("seed") == "all" and c.get("variant") in ("best_val", "")}
    header = ["task", "label fraction", *[label(b) for b in backbones]]
    rows = []
    for task in ("finetune", "probe"):
        for fraction in sorted({r["fraction"] for r in runs if r["task"] == task}):
            mine = [r for r in runs if r["task"] == task and r["fraction"] == fraction]
            metric = main_metric(mine[0])
            cells = []
            for b in backbones:
                text = _cell([r["test"][metric]["value"] for r in mine if r["backbone"] == b])
                test = welch.get((task, fraction, b))
                if test and b != backbones[0]:
                    text += f"; Δ {fmt(test.get('relative_delta'), '+.1%')} " + (
                        "(too few test patients to compare)" if test.get("insufficient") else
                        f"(p {fmt(test.get('p_value'))})")
                cells.append(text)
            rows.append([f"{'fine-tuning' if task == 'finetune' else 'linear probe'} ({metric})", f"{fraction:g}",
                         *cells])
    blocks += _section("Table 1: fine-tuning and linear evaluation at label fractions",
                       f"Test metric, mean ± SD over seeds (n); Δ: relative difference of the means against the baseline "
                       f"({label(backbones[0])}), p: Welch's t-test over seeds. Fine-tuning: the model of the best "
                       "validation epoch, its lr chosen per backbone on validation.", header, rows)
    reuse = [r for r in runs if r["task"] == "finetune" and r.get("feature_reuse")]
    if reuse:
        layers = list(reuse[0]["feature_reuse"])[:6]
        rows = []
        for b in backbones:
            for fraction in sorted({r["fraction"] for r in reuse}):
                mine = [r for r in reuse if r["backbone"] == b and r["fraction"] == fraction]
                if mine:
                    rows.append([label(b), f"{fraction:g}",
                                 *[_cell([r["feature_reuse"].get(layer) for r in mine]) for layer in layers]])
        blocks += _section("Table 2: feature reuse",
                           "RBF CKA (median-distance bandwidth) between the pretrained and the fine-tuned weights of each "
                           "convolution, each filter one example: 1 = the layer survived fine-tuning unchanged up to "
                           "rotation and scale. Mean ± SD over seeds.", ["backbone", "label fraction", *layers], rows)
    paired = [c for c in comparisons if c.get("seed") != "all" and c.get("agreement") and
              c["task"] in ("finetune", "probe") and c.get("variant") in ("best_val", "")]
    if paired:
        sums = defaultdict(lambda: np.zeros(4, np.int64))
        for c in paired:
            a = c["agreement"]
            sums[(c["task"], c["fraction"], c["backbone"], c["baseline"])] += [a["both_right"], a["only_b_right"],
                                                                              a["only_a_right"], a["both_wrong"]]
        rows = [[task, f"{fraction:g}", label(b), label(base), *[str(int(v)) for v in counts]]
                for (task, fraction, b, base), counts in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1]))]
        blocks += _section("Table 3: who knew what",
                           "Test samples (summed over seeds) that both models classified right, only the backbone, only the "
                           "baseline, or neither: where CT pretraining helps, and where it loses what the baseline knew.",
                           ["task", "label fraction", "backbone", "baseline", "both right", "only backbone", "only baseline",
                            "both wrong"], rows)
    return blocks


def hidden_representations(out: Path, records, comparisons, confounders, label) -> list[Block]:
    blocks = []
    runs = [r for r in records if r["task"] == "hidden"]
    if not runs:
        return blocks
    backbones = _backbones(runs)
    metric = main_metric(runs[0])
    rows = []
    for b in backbones:
        mine = [r for r in runs if r["backbone"] == b]
        chosen = sorted({r["chosen"]["lr"] for r in mine})
        other = "accuracy" if metric == "auroc" else "auroc"
        rows.append([label(b), _cell([r["test"][metric]["value"] for r in mine]),
                     _cell([(r["test"].get(other) or {}).get("value") for r in mine]), str(len(mine)),
                     ", ".join(f"{lr:g}" for lr in chosen)])
    other = "accuracy" if metric == "auroc" else "auroc"
    blocks += _section("Table 1: fine-tuned performance",
                       f"Test {metric} and {other} over patient-grouped folds (mean ± SD, n folds); lr chosen on each fold's "
                       "validation patients.", ["backbone", metric, other, "folds", "chosen lr"], rows)
    layers = list(runs[0]["cca_pretrained_vs_finetuned"])
    series, rows = {}, []
    for b in backbones:
        mine = [r for r in runs if r["backbone"] == b]
        points = []
        for layer in layers:
            values = [r["cca_pretrained_vs_finetuned"][layer].get("mean_cca") for r in mine]
            mean, sd = _mean_sd(values)
            points.append((layer, np.nan if mean is None else mean, 0.0 if sd is None else sd))
        series[label(b)] = points
        rows.append([label(b), *[_cell([r["cca_pretrained_vs_finetuned"][layer].get("mean_cca") for r in mine])
                                 for layer in layers]])
    first = runs[0]["cca_pretrained_vs_finetuned"]
    rows.append(["datapoints / channels per side", *[f"{first[layer].get('positions', 'n/a')} / "
                                                      f"{(first[layer].get('channels') or ['n/a'])[0]}"
                                                      for layer in layers]])
    note = (f"Mean canonical correlation between the pretrained and the fine-tuned network on the fold's test "
            f"images: spatial positions as datapoints, random channels per side (at most one per 10 datapoints), "
            f"{first[layers[0]].get('repeats', '?')} repeats; the plain mean of all coefficients (svcca's 98% "
            "mean is in the records). Mean ± SD over folds; lower = fine-tuning changed the layer more.")
    blocks += _section("Table 2: similarity of pretrained and fine-tuned representations", note, ["backbone", *layers],
                                 rows)
    path = layer_profile(series, out / "figures" / "hidden-cca.png",
                         "Mean CCA, pretrained vs fine-tuned, per layer (mean ± SD over folds)")
    blocks.append(_figure(path, "mean CCA per layer", out))
    pairs = defaultdict(list)
    for c in comparisons:
        if c["task"] == "hidden" and c.get("agreement") and c.get("seed") != "all":
            pairs[(c["baseline"], c["backbone"])].append(c["agreement"])
    if pairs:
        rows = [[label(a), label(b), _cell([x["agreement_on_correctness"] for x in v]),
                 _cell([x["chance_agreement"] for x in v]), _cell([x["error_consistency_kappa"] for x in v])]
                for (a, b), v in pairs.items()]
        blocks += _section("Table 3: prediction similarity of the fine-tuned models",
                           "Fraction of test samples both models got right or both wrong, against its chance level "
                           "acc_a·acc_b + (1 − acc_a)(1 − acc_b), and the error-consistency κ; mean ± SD over folds.",
                           ["model A", "model B", "agreement on correctness", "chance", "κ"], rows)
    return blocks


def truncated_transfer(out: Path, records, comparisons, confounders, label) -> list[Block]:
    blocks = []
    runs = [r for r in records if r["task"] == "truncated" and r.get("variant", "").endswith("best_val")]
    if not runs:
        return blocks
    backbones = _backbones(runs)
    cuts = sorted({r["cut"] for r in runs}, key=lambda c: c or 99)
    metric = main_metric(runs[0])
    rows = []
    for b in backbones:
        for fraction in sorted({r["fraction"] for r in runs}):
            mine = [r for r in runs if r["backbone"] == b and r["fraction"] == fraction]
            rows.append([label(b), f"{fraction:g}",
                         *[_cell([r["test"][metric]["value"] for r in mine if r["cut"] == c]) for c in cuts]])
    params = {c: next((r["parameters"] for r in runs if r["cut"] == c), None) for c in cuts}
    rows.append(["parameters (incl. head)", "", *[f"{params[c] / 1e6:.2f} M" if params[c] else "n/a" for c in cuts]])
    blocks += _section("Table 1: test performance by cut point",
                       f"Test {metric} (mean ± SD over seeds, n) of the network cut after stage k with a linear head on the "
                       "unpooled map, and of the full network; every cut with the same epochs and lr grid, chosen on validation.",
                       ["backbone", "label fraction", *[cut_name(c) for c in cuts]], rows)
    for i, fraction in enumerate(sorted({r["fraction"] for r in runs})):
        series = {}
        for b in backbones:
            points = []
            for c in cuts:
                mean, sd = _mean_sd([r["test"][metric]["value"] for r in runs
                                     if r["backbone"] == b and r["fraction"] == fraction and r["cut"] == c])
                points.append((cut_name(c), np.nan if mean is None else mean, 0.0 if sd is None else sd))
            series[label(b)] = points
        path = cut_curves(series, metric, out / "figures" / f"truncation-{i}.png",
                          f"Test {metric} by cut point, {fraction:g} of the labels")
        blocks.append(_figure(path, f"truncation at fraction {fraction:g}", out))
    return blocks


def source_matters(out: Path, records, comparisons, confounders, label) -> list[Block]:
    blocks = []
    by_kind = defaultdict(list)
    for c in confounders:
        for row in c["rows"]:
            by_kind[c["config"]["confounder"]].append({**row, "mode": c["config"]["mode"]})
    for i, (kind, rows) in enumerate(by_kind.items()):
        backbones = list(dict.fromkeys(r["backbone"] for r in sorted(rows, key=lambda r: r.get("backbone_order", 0))))
        table = []
        for b in backbones:
            for fraction in sorted({r["fraction"] for r in rows}):
                mine = [r for r in rows if r["backbone"] == b and r["fraction"] == fraction]
                if not mine:
                    continue
                tests = [r.get("permutation_test") or {} for r in mine]
                significant = sum(1 for t in tests if t.get("p_value") is not None and t["p_value"] < 0.05)
                table.append([label(b), f"{fraction:g}", _cell([r["clean"]["auroc"]["value"] for r in mine]),
                              _cell([r["confounded"]["auroc"]["value"] for r in mine]),
                              _cell([r["drop"]["auroc"] for r in mine]),
                              f"{significant}/{len(tests)}" if tests and tests[0] else "n/a",
                              fmt(float(np.median([t["p_value"] for t in tests])) if tests and all(
                                  t.get("p_value") is not None for t in tests) else None)])
        blocks += _section(f"Confounder '{kind}'",
                           f"AUROC on the clean and on the anti-correlated test set (the confounder in every negative), and the "
                           f"drop, as the confounded fraction of positive training images grows; mean ± SD over seeds (n). "
                           f"Permutation test of each drop (negatives' clean/confounded scores exchanged): seeds with p < 0.05, "
                           f"median p. Mode: {rows[0]['mode']}.",
                           ["backbone", "confounded fraction", "clean AUROC", "anti-correlated AUROC", "drop",
                            "p < 0.05", "median p"], table)
        path = confounder_curves(rows, "auroc", out / "figures" / f"confounder-{i}.png",
                                 f"Confounder '{kind}': clean vs anti-correlated test AUROC", label)
        blocks.append(_figure(path, f"confounder {kind}", out))
    return blocks


STUDIES = {"radnet12m": radnet12m, "hidden_representations": hidden_representations,
           "truncated_transfer": truncated_transfer, "source_matters": source_matters}
# Tasks whose results only a study section lays out (left out of the report's generic tables), by study.
OWN_TASKS = {"hidden": "hidden_representations", "truncated": "truncated_transfer"}


def studies_to_render(study: str, records: list[dict]) -> list[str]:
    """The recipe's study, then the study of any task whose results only a study section shows."""
    names = [study] if study in STUDIES else []
    for task, name in OWN_TASKS.items():
        if name not in names and any(r["task"] == task for r in records):
            names.append(name)
    return names


def study_sections(out: Path, study: str, records, comparisons, confounders, label) -> list[Block]:
    return STUDIES[study](Path(out), records, comparisons, confounders, label)
