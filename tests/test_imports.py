"""Imports point one way, module by module, over every module of the package: the graph of ctssl's imports
(those inside functions counted, relative ones resolved) has no cycle, and each module sits in a layer that
imports only from its own layer and the layers below it.

Imports by name at run time are routing, not dependencies, and all point down from where they are named: the
command line's registry (ctssl.cli.main.COMMANDS), the benchmark registry (ctssl.bench.suite.SUITES) and the
settings dataclass a command names for ``ctssl.core.options`` (``"module:Class"``, imported when the command runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject's package-dir).
FOLDERS = {"ctssl": "ctssl", "data": "ctssl.data", "shards": "ctssl.shards", "pretrain": "ctssl.pretrain",
           "finetune": "ctssl.finetune", "eval": "ctssl.eval"}

# Lowest first. "pkg.*" is a package and everything below it, a bare name that module alone; a module belongs to
# the layer of its longest matching pattern.
LAYERS = [
    ("foundation: version, configuration, logging, atomic writes", ["ctssl", "ctssl.core.*"]),
    ("measures: arrays in, numbers out", ["ctssl.eval", "ctssl.eval.measures.*"]),
    ("data: reading CT in HU, pseudonyms, the synthetic corpus", ["ctssl.data.*"]),
    ("shards: writing, reading, verifying, shuffling", ["ctssl.shards.*"]),
    ("ingest: CT archives to shards", ["ctssl.data.ingest.*"]),
    ("pretraining", ["ctssl.pretrain.*"]),
    ("fine-tuning", ["ctssl.finetune.*"]),
    ("evaluation inputs: datasets, sources, input specs, folds", ["ctssl.eval.inputs.*"]),
    ("evaluation features: extraction, cache, layers", ["ctssl.eval.features.*"]),
    ("evaluation records: store, provenance, comparisons, figures", ["ctssl.eval.records.*"]),
    ("evaluation protocols", ["ctssl.eval.protocols.*"]),
    ("evaluation sweeps", ["ctssl.eval.sweep.*"]),
    ("the report", ["ctssl.eval.report.*"]),
    ("evaluation commands", ["ctssl.eval.commands.*"]),
    ("benchmarks", ["ctssl.bench.*"]),
    ("the command line and the demo", ["ctssl.cli.*", "ctssl.__main__"]),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The ctssl modules ``name`` imports anywhere in its file: ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ctssl"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.split(".")[0] == "ctssl":
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return out - {name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    best, layer = -1, None
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            prefix = pattern.removesuffix(".*")
            if module == prefix or (pattern.endswith(".*") and module.startswith(prefix + ".")):
                if len(prefix) > best:
                    best, layer = len(prefix), index
    assert layer is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return layer


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_import_is_of_a_ctssl_module():
    unknown = {f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets if t not in MODULES}
    assert not unknown, sorted(unknown)


def test_the_module_import_graph_has_no_cycle():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
              for m, targets in GRAPH.items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_the_checks_can_fail():
    """The cycle search and the layer order on small graphs whose answer is known."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) in (["a", "b", "c", "a"], ["b", "c", "a", "b"])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _layer("ctssl.core.config") < _layer("ctssl.data.ingest.run") < _layer("ctssl.eval.protocols.knn")
    assert _layer("ctssl.eval.measures.knn") < _layer("ctssl.pretrain.train") < _layer("ctssl.eval.inputs.spec")
    assert _layer("ctssl.cli.main") == len(LAYERS) - 1
