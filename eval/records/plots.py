"""Figures of the records, written beside them by the protocols and redrawn with readable names by the report
(matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ctssl.core.atomic import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _short(source: str, width: int = 36) -> str:
    return source if len(source) <= width else "…" + source[-(width - 1):]


def heatmaps(record: dict, path: str | Path, label=_short) -> Path:
    """One heat map per similarity measure: layers of A (rows) x layers of B (columns); ``label`` names a
    backbone source readably."""
    plt = _pyplot()
    measures = list(record["matrices"])
    cols = min(3, len(measures))
    rows = int(np.ceil(len(measures) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, measure in zip(axes.flat, measures):
        m = np.array([[np.nan if v is None else v for v in row] for row in record["matrices"][measure]], float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
        few = (record.get("too_few_images") or {}).get(measure)
        ax.set_title(measure + (" — too few images" if few else ""), fontsize=9)
        ax.set_xticks(range(len(record["layers_b"])), record["layers_b"], rotation=45, fontsize=7)
        ax.set_yticks(range(len(record["layers_a"])), record["layers_a"], fontsize=7)
        ax.set_xlabel("B", fontsize=8)
        ax.set_ylabel("A", fontsize=8)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    fig.suptitle(f"A = {label(record['a'])}, B = {label(record['b'])}", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def _finish_lines(fig, ax, xlabel: str, ylabel: str, title: str, path: str | Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save(fig, path)


def efficiency_curves(series: dict, metric: str, path: str | Path, title: str) -> Path:
    """``series``: {backbone: [(fraction, mean, lower, upper), ...]} -> metric vs label fraction."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, points in series.items():
        points = sorted(points)
        f = [p[0] for p in points]
        ax.plot(f, [p[1] for p in points], marker="o", label=name)
        ax.fill_between(f, [p[2] for p in points], [p[3] for p in points], alpha=0.15)
    ax.set_xscale("log")
    return _finish_lines(fig, ax, "fraction of training patients with labels", metric, title, path)


def embedding(points: np.ndarray, domains: list[str], labels: list[str], path: str | Path, title: str) -> Path:
    """2-D embedding coloured by domain (left) and by label (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, values, name in ((axes[0], domains, "domain"), (axes[1], labels, "label")):
        for value in sorted(set(values)):
            mask = np.array([v == value for v in values])
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, label=str(value))
        ax.set_title(f"by {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def confounder_curves(rows: list[dict], metric: str, path: str | Path, title: str, label=_short) -> Path:
    """Clean vs confounded test metric as the confounded fraction of positives grows (mean over the rows of
    one backbone and fraction, e.g. seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        mine = [r for r in rows if r["backbone"] == backbone]
        f = sorted({r["fraction"] for r in mine})

        def mean(kind, x):
            values = [r[kind][metric]["value"] for r in mine if r["fraction"] == x and r[kind][metric]["value"] is not None]
            return float(np.mean(values)) if values else np.nan

        line, = ax.plot(f, [mean("clean", x) for x in f], marker="o", label=f"{label(backbone)}, clean")
        ax.plot(f, [mean("confounded", x) for x in f], marker="x", linestyle="--", color=line.get_color(),
                label=f"{label(backbone)}, anti-correlated")
    return _finish_lines(fig, ax, "fraction of positive training images carrying the confounder", metric, title, path)


def _categorical_lines(series: dict):
    """``series``: {name: [(x label, mean, sd), ...]} -> a figure with one error-bar line per name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    for name, points in series.items():
        x = np.arange(len(points))
        ax.errorbar(x, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3, label=name)
        ax.set_xticks(x, [p[0] for p in points])
    return fig, ax


def layer_profile(series: dict, path: str | Path, title: str, ylabel: str = "mean CCA, pretrained vs fine-tuned") -> Path:
    """``series``: {name: [(layer, mean, sd), ...]} -> one line per name over the layers, error bars."""
    fig, ax = _categorical_lines(series)
    ax.set_ylim(0, 1.02)
    return _finish_lines(fig, ax, "layer", ylabel, title, path)


def cut_curves(series: dict, metric: str, path: str | Path, title: str) -> Path:
    """``series``: {name: [(cut label, mean, sd), ...]} -> test metric per cut point, one line per name."""
    fig, ax = _categorical_lines(series)
    return _finish_lines(fig, ax, "network kept (cut after)", metric, title, path)


def mask_overlays(images: np.ndarray, reference: np.ndarray, predictions: dict, classes: list[str],
                  path: str | Path, title: str) -> Path:
    """Rows: test slices; columns: the reference, then each backbone's prediction, as translucent class colours
    on the slice (soft-tissue window). ``images``, ``reference``: (N, H, W); ``predictions``: {name: (N, H, W)}."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab10").colors
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*colours[i % 10], 0.55) for i in range(len(classes) - 1)])
    columns = [("reference", reference), *predictions.items()]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.9 * len(columns), 1.9 * len(images) + 0.4),
                             squeeze=False)
    for i, image in enumerate(images):
        for j, (name, masks) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            ax.imshow(masks[i], cmap=cmap, vmin=0, vmax=len(classes) - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_short(name, 24), fontsize=7)
    fig.legend(handles=[Patch(color=colours[(c - 1) % 10], label=classes[c]) for c in range(1, len(classes))],
               loc="lower center", ncol=min(6, len(classes) - 1), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return save(fig, path)


def noise_curves(series: dict, path: str | Path, title: str, ylabel: str = "mean Dice") -> Path:
    """``series``: {backbone: [(sigma, value), ...]} -> value vs test-time noise (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    return _finish_lines(fig, ax, "test-time Gaussian noise σ (normalised input)", ylabel, title, path)


def forest(rows: list[tuple[str, float | None, float | None, float | None, bool]], path: str | Path, title: str,
           xlabel: str) -> Path:
    """A forest plot of differences: ``rows`` (label, difference, lower, upper, significant after adjustment), top
    to bottom; each a point with its interval, the line of no difference at 0; significant rows filled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * max(1, len(rows))))
    y = np.arange(len(rows))[::-1]
    for yi, (_, delta, lower, upper, significant) in zip(y, rows):
        if delta is None:
            continue
        if lower is not None and upper is not None:
            ax.plot([lower, upper], [yi, yi], color="#33415c", linewidth=1.4)
        ax.plot([delta], [yi], marker="o", markersize=5, color="#33415c",
                markerfacecolor="#33415c" if significant else "white")
    ax.axvline(0.0, color="#b23a48", linewidth=1, linestyle="--")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return save(fig, path)
