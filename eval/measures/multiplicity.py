"""p-values adjusted for multiplicity over a family of tests (one report table): pure functions on arrays.

- ``holm``: Holm's step-down adjustment (Holm 1979, "A simple sequentially rejective multiple test procedure");
  controls the family-wise error rate under any dependence between the tests. Sorted ascending,
  ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``.
- ``benjamini_hochberg``: the Benjamini-Hochberg step-up adjustment (1995, "Controlling the false discovery
  rate"); controls the false discovery rate for independent or positively dependent tests.
  ``p_adj(i) = min_{j >= i} min(1, m / j * p(j))``.
- ``adjust``: either, over the defined p-values of a family (None or NaN: undefined, left out of the family
  and returned as None), with resampling p-values of 0 handled honestly: a bootstrap or permutation p of 0
  from B resamples only says p < 1/B, so the adjusted value is computed with 0 and with 1/B and, where they
  differ, reported as the bound ``< value``.

Both are the adjustments of statsmodels' ``multipletests(p, method="holm" | "fdr_bh")``; the tests check them
against values computed by hand (statsmodels is not a dependency).
"""

from __future__ import annotations

import numpy as np

METHODS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values, in the input order. ``p``: (m,) in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg-adjusted p-values (q-values), in the input order. ``p``: (m,) in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = m / np.arange(1, m + 1) * p[order]
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def _method(name: str):
    functions = {"holm": holm, "bh": benjamini_hochberg}
    if name not in functions:
        raise ValueError(f"Unknown multiplicity adjustment '{name}'. Valid adjustments are {list(functions)}.")
    return functions[name]


def adjust(p_values: list, method: str = "holm", resamples: list | None = None) -> list[tuple[float | None, bool]]:
    """(adjusted p, is an upper bound) per test of one family, in order (module docstring). ``resamples``: each
    test's B (None: an exact p, e.g. Welch's t-test); a p of 0 from B resamples is only known to be < 1/B."""
    fn = _method(method)
    p = np.array([np.nan if v is None else float(v) for v in p_values], dtype=np.float64)
    b = [None] * len(p) if resamples is None else list(resamples)
    defined = np.flatnonzero(np.isfinite(p))
    out: list[tuple[float | None, bool]] = [(None, False)] * len(p)
    if len(defined) == 0:
        return out
    low = fn(p[defined])
    floors = np.array([1.0 / b[i] if b[i] and p[i] == 0 else p[i] for i in defined])
    high = fn(floors)
    for j, i in enumerate(defined):
        bounded = bool(high[j] > low[j] + 1e-15)
        out[i] = (float(high[j] if bounded else low[j]), bounded)
    return out


def format_p(p: float | None, resamples: int | None = None, bounded: bool = False) -> str:
    """A p-value for a table: ``< 1/B`` for a resampling p of 0 (``< 1/500``), ``< v`` for a bound, 3
    significant digits otherwise; ``n/a`` where undefined."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p == 0 and resamples:
        return f"< 1/{resamples}"
    text = f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
    return f"< {text}" if bounded else text
