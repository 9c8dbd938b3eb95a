"""Ingest at cluster scale, in three phases (each a SLURM job; see slurm/README.md):

  ctssl ingest-array plan SRC... --out DIR --num-tasks N [ingest options] [--workers W]
      scan headers once (W processes), group into series, balance series over N tasks by slice
      count, write DIR/plan/
  ctssl ingest-array task --out DIR [--task-index I] [--workers W]
      run task I (default $SLURM_ARRAY_TASK_ID) of the plan: writes only its own shards; a
      finished task is a no-op; a failed or preempted task resumes without duplicates
  ctssl ingest-array merge --out DIR
      one manifest and one report over all tasks; names missing or incomplete tasks

The result has the same samples (keys and HU) as `ctssl ingest` on one node.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from ctssl.data.ingest.command import add_ingest_options

    sub = parser.add_subparsers(dest="phase", metavar="PHASE", required=True)
    plan = sub.add_parser("plan", help="scan headers and assign series to N tasks")
    add_ingest_options(plan)
    plan.add_argument("--num-tasks", type=int, default=None,
                      help="number of tasks (default $SLURM_ARRAY_TASK_COUNT, else 1)")
    task = sub.add_parser("task", help="run one task of the plan")
    task.add_argument("--out", required=True, help="the folder holding the plan")
    task.add_argument("--task-index", type=int, default=None,
                      help="task to run (default $SLURM_ARRAY_TASK_ID)")
    task.add_argument("--num-tasks", type=int, default=None,
                      help="if given, checked against the plan's task count")
    task.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    task.add_argument("--strict", action="store_true", help="stop at the first damaged or unreadable input")
    merge = sub.add_parser("merge", help="write the manifest and report over all tasks")
    merge.add_argument("--out", required=True, help="the folder holding the plan and task outputs")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def run(args: argparse.Namespace) -> int:
    from ctssl.core.config import ConfigError
    from ctssl.core.logs import setup_logging

    log = logging.getLogger("ctssl.data.ingest")
    if args.phase == "plan":
        from ctssl.core.lock import OutputLock
        from ctssl.data.ingest.command import check_out, resolve_ingest_config
        from ctssl.data.ingest.plan import build_plan

        cfg = resolve_ingest_config(args)
        check_out(cfg.out)
        setup_logging(args.log_level, Path(cfg.out) / "logs" / "plan.log")
        num_tasks = args.num_tasks or _env_int("SLURM_ARRAY_TASK_COUNT") or 1
        with OutputLock(cfg.out, "an ingest plan"):
            plan = build_plan(cfg, num_tasks)
        print(f"plan: {plan['series']} series, {plan['frames']} images over {num_tasks} task(s) "
              f"in {cfg.out}/plan/")
        return 0
    if args.phase == "task":
        from ctssl.data.ingest.task import run_task

        task = args.task_index if args.task_index is not None else _env_int("SLURM_ARRAY_TASK_ID")
        if task is None:
            raise ConfigError("No task index: pass --task-index or run inside a SLURM array job.")
        setup_logging(args.log_level, Path(args.out) / "logs" / f"task-{task:05d}.log")
        from ctssl.data.ingest.plan import load_plan

        # Only an explicit --num-tasks is checked: resubmitting a few failed indices
        # (--array=3,17) gives a smaller SLURM_ARRAY_TASK_COUNT on purpose.
        planned = load_plan(args.out)["num_tasks"]
        if args.num_tasks is not None and args.num_tasks != planned:
            raise ConfigError(f"The plan has {planned} tasks, not {args.num_tasks}; "
                              f"submit the array as --array=0-{planned - 1}.")
        record = run_task(args.out, task, args.workers, args.strict)
        info = record.get("this_run", {})
        log.info("task %d done: %d shard(s) in total; this run wrote %s slices", task,
                 len(record["shards"]), info.get("slices_written", 0))
        return 0
    from ctssl.data.ingest.command import log_report
    from ctssl.data.ingest.merge import IncompleteIngest, merge

    setup_logging(args.log_level, Path(args.out) / "logs" / "merge.log")
    try:
        report = merge(args.out)
    except IncompleteIngest as err:
        print(f"ctssl ingest-array merge: {err}", file=sys.stderr)
        return 1
    log_report(report, args.out)
    return 0
