"""Figures for the analyses and the report (matplotlib, Agg backend, PNG written atomically)."""

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


def heatmaps(record: dict, path: str | Path) -> Path:
    """One heat map per similarity measure: layers of A (rows) x layers of B (columns)."""
    plt = _pyplot()
    measures = list(record["matrices"])
    cols = min(3, len(measures))
    rows = int(np.ceil(len(measures) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, measure in zip(axes.flat, measures):
        m = np.array([[np.nan if v is None else v for v in row] for row in record["matrices"][measure]], float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_title(measure, fontsize=9)
        ax.set_xticks(range(len(record["layers_b"])), record["layers_b"], rotation=45, fontsize=7)
        ax.set_yticks(range(len(record["layers_a"])), record["layers_a"], fontsize=7)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    fig.suptitle(f"A = {record['a']}\nB = {record['b']}", fontsize=7)
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


def confounder_curves(rows: list[dict], metric: str, path: str | Path, title: str) -> Path:
    """Clean vs confounded test metric as the confounded fraction of positives grows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        mine = sorted((r for r in rows if r["backbone"] == backbone), key=lambda r: r["fraction"])
        f = [r["fraction"] for r in mine]
        line, = ax.plot(f, [r["clean"][metric]["value"] for r in mine], marker="o", label=f"{backbone} clean")
        ax.plot(f, [r["confounded"][metric]["value"] for r in mine], marker="x", linestyle="--",
                color=line.get_color(), label=f"{backbone} anti-correlated")
    return _finish_lines(fig, ax, "fraction of positive training images carrying the confounder", metric, title, path)
