"""Evaluation sweeps (tasks x backbones x label fractions x seeds) as independent jobs, for one
machine or a SLURM array (slurm/eval-sweep.sh):

  ctssl sweep plan --config sweep.yaml [--set key=value] [--count]
      write OUT/sweep.json (resolved config and the job list); --count prints only the number
      of jobs (the array size)
  ctssl sweep task --config sweep.yaml [--index I]
      run job I (default $SLURM_ARRAY_TASK_ID); finished runs are skipped
  ctssl sweep run --config sweep.yaml
      every job in turn, on this machine
  ctssl sweep report --config sweep.yaml
      gather the finished runs into OUT/results.jsonl and OUT/comparisons.jsonl, write the
      report (OUT/report.html, OUT/report.md), name the jobs not finished

sweep.yaml holds what differs from eval.sweep.SweepConfig, e.g.:

  out: runs/eval
  data: runs/demo/shards-ct
  label: region
  backbones: [random:resnet18:3, runs/demo/simclr-ct/backbone.safetensors]
  tasks: [knn, probe, finetune]
  fractions: [0.1, 1.0]
  seeds: [0, 1, 2]
"""

from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="phase", metavar="PHASE", required=True)
    plan = sub.add_parser("plan", help="resolve the config and write the job list")
    plan.add_argument("--count", action="store_true", help="print only the number of jobs")
    task = sub.add_parser("task", help="run one job")
    task.add_argument("--index", type=int, default=None, help="job index (default $SLURM_ARRAY_TASK_ID)")
    sub.add_parser("run", help="run every job here, in turn")
    sub.add_parser("report", help="gather finished runs and write the report")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.config import ConfigError, resolve_config
    from ctssl.core.logs import setup_logging
    from ctssl.eval import sweep

    setup_logging(args.log_level)
    if not args.config:
        raise ConfigError("ctssl sweep needs --config sweep.yaml (see ctssl sweep --help).")
    cfg = resolve_config(sweep.SweepConfig, args.config, args.overrides)
    sweep.validate(cfg)
    if args.phase == "plan":
        path = sweep.write_plan(cfg)
        count = len(sweep.jobs(cfg))
        print(count if args.count else f"{count} jobs; plan written to {path}")
        return 0
    if args.phase == "task":
        index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
        if index in (None, ""):
            raise ConfigError("ctssl sweep task needs --index or $SLURM_ARRAY_TASK_ID.")
        sweep.run_job(cfg, int(index))
        return 0
    if args.phase == "run":
        for job in sweep.jobs(cfg):
            sweep.run_job(cfg, job["index"])
    return _report(cfg)


def _report(cfg) -> int:
    from ctssl.eval.runs import collate
    from ctssl.eval.sweep import missing_jobs

    results, comparisons = collate(cfg.out, cfg.n_boot)
    missing = missing_jobs(cfg)
    print(f"results: {results}\ncomparisons: {comparisons}")
    from ctssl.eval.report import write_report

    html, markdown = write_report(cfg.out)
    print(f"report: {html}\nsummary: {markdown}")
    if missing:
        print(f"{len(missing)} job(s) not finished: indexes {[j['index'] for j in missing]}; rerun them with "
              "ctssl sweep task --index I (or resubmit those array indexes)")
        return 1
    return 0
