"""ctssl installs as one namespace: the stage folders import as ctssl.data, ctssl.shards, ... (that imports
point one way is tests/test_imports.py). The wheel is built and installed into a fresh virtual environment
outside the checkout, where only ``ctssl`` may be importable."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("data", "shards", "pretrain", "finetune", "eval")
SOURCE_DIRS = ("ctssl", *STAGES, "tests")


def _python_files():
    for folder in SOURCE_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _module_of(path: Path) -> str:
    """The installed module name of a source file (``data/ingest.py`` -> ``ctssl.data.ingest``)."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] in ("ctssl", "tests") else ["ctssl", *parts])


def test_no_code_imports_a_stage_as_a_top_level_package():
    offenders = [f"{path.relative_to(REPO)}: import {name}" for path in _python_files()
                 for name in _imports(path) if name.split(".")[0] in STAGES]
    assert not offenders, "stages import as ctssl.<stage>:\n" + "\n".join(offenders)


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {_module_of(init) for folder in ("ctssl", *STAGES) for init in (REPO / folder).rglob("__init__.py")}
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
    assert config["package-dir"] == {"ctssl": "ctssl", **{f"ctssl.{s}": s for s in STAGES}}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the sources: a build in the checkout leaves build/lib behind, whose stale
    # files a later build would package.
    import shutil

    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("ctssl", *STAGES):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (path,) = out.glob("ctssl-*.whl")
    return path


def test_wheel_top_level_is_ctssl_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {n.split("/")[0] for n in names}
        top_level = next((archive.read(n).decode().split() for n in names if n.endswith("top_level.txt")), None)
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"ctssl"}, sorted(tops)
    assert top_level in (None, ["ctssl"])
    # The stage folders are inside the namespace, with their data files.
    for module in ("ctssl/data/ingest/run.py", "ctssl/shards/reader.py", "ctssl/pretrain/main.py",
                   "ctssl/finetune/finetune.py", "ctssl/eval/report/build.py", "ctssl/__main__.py",
                   "ctssl/pretrain/recipes/simclr_rn50_ct.yaml", "ctssl/eval/recipes/hidden_representations.yaml",
                   "ctssl/data/synth/phantom.py"):
        assert module in names, module


def test_wheel_in_a_fresh_venv_outside_the_checkout(wheel, tmp_path):
    """The wheel installed into a new virtual environment in a folder that holds no checkout: the
    ``ctssl`` command works, every ctssl module imports, and ``data`` / ``eval`` do not exist. The
    third-party dependencies are taken from the test environment (a ``.pth`` line naming its
    site-packages; ``.pth`` files found there are not processed, so ctssl's own editable install
    stays invisible) instead of being installed a second time."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "ctssl-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*cmd):
        return subprocess.run([str(c) for c in cmd], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = run(python, "-c", "import ctssl; print(ctssl.__file__)")
    assert where.returncode == 0 and str(site) in where.stdout, where.stdout + where.stderr
    stages = run(python, "-c", "import ctssl.data, ctssl.shards, ctssl.pretrain, ctssl.finetune, ctssl.eval")
    assert stages.returncode == 0, stages.stderr[-2000:]
    for top in ("data", "eval", "shards", "pretrain", "finetune"):
        gone = run(python, "-c", f"import {top}")
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, (top, gone.stderr)
    every = run(python, "-c", "import importlib, pkgutil, ctssl\n"
                "names = [m.name for m in pkgutil.walk_packages(ctssl.__path__, 'ctssl.') if m.name != 'ctssl.__main__']\n"
                "[importlib.import_module(n) for n in names]\nprint(len(names))")
    assert every.returncode == 0, every.stderr[-3000:]
    assert int(every.stdout) > 60
    for cmd in ((bin_dir / "ctssl", "--help"), (python, "-m", "ctssl", "--help"),
                (python, "-m", "ctssl.pretrain.main", "--help")):
        result = run(*cmd)
        assert result.returncode == 0 and "usage:" in result.stdout, (cmd, result.stderr[-2000:])
