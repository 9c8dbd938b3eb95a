"""``ctssl ingest`` on one node: plan with one task, run it, merge (the last module of the ingest: it uses
the others). Its result is the same set of shards as the SLURM array's (``ctssl ingest-array``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ctssl.core.atomic import atomic_write_text
from ctssl.core.config import ConfigError
from ctssl.core.lock import OutputLock
from ctssl.data.ingest.config import REPORT_NAME, IngestConfig, config_dict, settings_changes, validate
from ctssl.data.ingest.merge import merge
from ctssl.data.ingest.plan import build_plan
from ctssl.data.ingest.task import run_task
from ctssl.data.pseudonym import load_salt
from ctssl.shards.manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)


def run_ingest(cfg: IngestConfig) -> dict:
    """Single-node ingest; returns the report dict (also written to ``OUT/ingest-report.json``). A second
    ingest into the same folder while this one runs exits at once, naming the folder."""
    validate(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder (it is created if missing).")
    with OutputLock(out, "an ingest"):
        if (out / MANIFEST_NAME).exists():
            manifest = json.loads((out / MANIFEST_NAME).read_text())
            config = config_dict(cfg, load_salt(cfg.salt_file, cfg.create_salt))
            if manifest.get("config") != config:
                raise ConfigError(f"{out} already holds shards made with other settings: "
                                  f"{settings_changes(manifest.get('config'), config)}. Rerun with its settings, "
                                  "or use a new --out folder.")
            logger.info("the output folder is complete (manifest present, same settings): nothing to do")
            return json.loads((out / REPORT_NAME).read_text())
        start = time.perf_counter()
        build_plan(cfg, num_tasks=1)
        record = run_task(out, 0, cfg.workers, cfg.strict, lock=False)
        report = merge(out, lock=False)
        seconds = time.perf_counter() - start
        report["this_run"] = {**record["this_run"], "seconds": round(seconds, 3),
                              "slices_per_second": round(record["this_run"]["slices_written"] / seconds, 1)}
        atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1) + "\n")
        return report
