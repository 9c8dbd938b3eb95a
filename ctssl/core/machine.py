"""What a benchmark ran on, written beside its figures."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine_info() -> dict:
    import pydicom
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "pydicom": pydicom.__version__, "date": time.strftime("%Y-%m-%d")}
