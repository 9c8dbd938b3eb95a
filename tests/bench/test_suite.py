"""The benchmark registry (ctssl.bench.suite): every suite is a module that measures (or runs itself), formats
its table and its rows of the suite table, with settings whose result file the command names; the suite table
is Markdown."""

from __future__ import annotations

import inspect

from ctssl.bench.settings import Bench
from ctssl.bench.suite import SUITES, markdown, result_path, settings_of, suite


def test_every_suite_has_its_functions_and_settings():
    for name in SUITES:
        module = suite(name)
        own = ("run", "result_path") if hasattr(module, "run") else ("measure",)
        for function in (*own, "format_table", "summary_rows"):
            assert inspect.isfunction(getattr(module, function)), (name, function)
        settings = settings_of(name)(out="/x")
        assert isinstance(settings, Bench) and str(result_path(name, settings)).startswith("/x/")
    assert str(result_path("knn", settings_of("knn")(out="/x"))) == "/x/eval-knn-bench.json"


def test_the_suite_table():
    result = {"machine": {"cpu": "c", "cores": 2, "gpu": None, "python": "3", "torch": "2", "date": "d"},
              "rows": [["`ctssl bench knn`", "what", "1 q/s", "base", "2x"]]}
    assert markdown(result).splitlines() == ["Machine: c, 2 cores, GPU: none; Python 3, torch 2; d.", "",
                                             "| suite | what | figure | baseline (same run) | ratio |",
                                             "| --- | --- | --- | --- | --- |",
                                             "| `ctssl bench knn` | what | 1 q/s | base | 2x |"]
