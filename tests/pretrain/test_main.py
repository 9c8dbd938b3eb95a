"""``pretrain/main.py`` run as a file from any folder: it imports the ctssl of its own checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "pretrain" / "main.py"


def test_help_from_another_folder(tmp_path):
    run = subprocess.run([sys.executable, str(MAIN), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--recipe" in run.stdout and "simclr_rn50_ct" in run.stdout


def test_run_as_a_file_it_imports_its_own_checkout(tmp_path):
    """Whichever ctssl the Python has installed (an editable install of another checkout, or none), the
    script's stages come from the folder the script is in."""
    probe = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
             "import ctssl, ctssl.pretrain.config, ctssl.shards.reader, ctssl.core.config; "
             "print(ctssl.__file__); print(ctssl.pretrain.config.__file__); print(ctssl.shards.reader.__file__); "
             "print(ctssl.core.config.__file__)")
    run = subprocess.run([sys.executable, "-c", probe, str(MAIN)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    files = [Path(line) for line in run.stdout.split()]
    assert files == [REPO / "ctssl" / "__init__.py", REPO / "pretrain" / "config.py", REPO / "shards" / "reader.py",
                     REPO / "ctssl" / "core" / "config.py"]
