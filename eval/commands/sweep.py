"""Evaluation sweeps and the seed studies as recipes (eval/recipes/), as independent jobs for one machine
or a SLURM array (slurm/eval-sweep.sh):

  ctssl sweep [run] --recipe NAME --data D --backbone A --backbone B [--name a --name b] --out OUT
      a seed study's protocol on your backbones and dataset, every job here, then the report
  ctssl sweep plan (--config sweep.yaml | --recipe NAME ...) [--count]
      write OUT/sweep.json (resolved config and the job list); --count prints only the number
      of jobs (the array size)
  ctssl sweep task ... [--index I]
      run job I (default $SLURM_ARRAY_TASK_ID); finished work is skipped
  ctssl sweep report ...
      gather the finished runs into OUT/results.jsonl and OUT/comparisons.jsonl, write the
      report (OUT/report.html, OUT/report.md; a recipe's results as its paper's tables and
      figures), name the jobs not finished

Recipes (each file cites its paper; --set changes any setting, e.g. --set seeds=[0,1]):
  radnet12m               fine-tuning and linear probing at label fractions, 4 seeds, Welch t-tests,
                          relative deltas, feature reuse (RBF CKA of conv weights), who knew what
  hidden_representations  5 patient-grouped folds, mean CCA at conv1 and each stage before/after
                          fine-tuning, prediction similarity vs chance
  source_matters          confounders (tag, low-pass, Poisson noise) in 0-100% of the positives,
                          clean vs anti-correlated test, permutation tests
  truncated_transfer      fine-tuning cut after every ResNet stage, head on the unpooled map, at
                          data-poor label fractions

A config file holds what differs from eval.sweep.config.SweepConfig, e.g.:

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

from ctssl.core.options import Settings
from ctssl.eval.commands.options import add_overlap

PHASES = ("plan", "task", "run", "report")
SETTINGS = "ctssl.eval.sweep.config:SweepConfig"


def _study_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    settings = Settings(parser, SETTINGS, example="seeds=[0,1]", suppress=suppress)
    parser.add_argument("--recipe", default=argparse.SUPPRESS if suppress else None,
                        help="a seed study's recipe (eval/recipes/NAME.yaml), the layer under --config")
    settings.option("--data", key="data", help="dataset spec")
    settings.option("--label", key="label", help="label to predict")
    settings.option("--backbone", key="backbones", action="append",
                    help="backbone source (repeatable; the first is the baseline)")
    settings.option("--name", key="names", action="append", help="readable backbone name (repeatable)")
    settings.option("--out", key="out", help="output folder")
    add_overlap(settings)


def configure(parser: argparse.ArgumentParser) -> None:
    _study_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="phase", metavar="PHASE")
    for phase, text in (("plan", "resolve the config and write the job list"), ("task", "run one job"),
                        ("run", "run every job here, in turn, then the report (the default)"),
                        ("report", "gather finished runs and write the report")):
        p = sub.add_parser(phase, help=text)
        _study_options(p, suppress=True)
        if phase == "plan":
            p.add_argument("--count", action="store_true", help="print only the number of jobs")
        if phase == "task":
            p.add_argument("--index", type=int, default=None, help="job index (default $SLURM_ARRAY_TASK_ID)")


def resolve(args: argparse.Namespace):
    """The sweep's config: defaults, the recipe, --config, --set and the named options."""
    from ctssl.core.config import ConfigError, recipe_names
    from ctssl.core.options import named_options
    from ctssl.eval.sweep.config import RECIPES, resolve_sweep_config
    from ctssl.eval.sweep.jobs import validate

    recipe = getattr(args, "recipe", None)
    cfg = resolve_sweep_config(recipe, args.config, args.overrides, named_options(args))
    if not args.config and not recipe:
        raise ConfigError("ctssl sweep needs --recipe NAME or --config sweep.yaml (see ctssl sweep --help); "
                          f"recipes: {recipe_names(RECIPES)}.")
    validate(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    from ctssl.core.config import ConfigError
    from ctssl.core.logs import setup_logging
    from ctssl.eval.sweep import jobs as sweep

    setup_logging(args.log_level)
    phase = args.phase or "run"
    cfg = resolve(args)
    if phase == "plan":
        path = sweep.write_plan(cfg)
        count = len(sweep.jobs(cfg))
        print(count if args.count else f"{count} jobs; plan written to {path}")
        return 0
    if phase == "task":
        index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
        if index in (None, ""):
            raise ConfigError("ctssl sweep task needs --index or $SLURM_ARRAY_TASK_ID.")
        sweep.run_job(cfg, int(index))
        return 0
    if phase == "run":
        sweep.write_plan(cfg)
        for job in sweep.jobs(cfg):
            sweep.run_job(cfg, job["index"])
    return _report(cfg)


def _report(cfg) -> int:
    from ctssl.eval.report.build import TITLE, write_report
    from ctssl.eval.records.comparisons import collate
    from ctssl.eval.records.store import save_names
    from ctssl.eval.sweep.jobs import missing_jobs

    save_names(cfg.out, cfg.backbones, cfg.names)
    results, comparisons = collate(cfg.out, cfg.n_boot, cfg.baseline)
    missing = missing_jobs(cfg)
    print(f"results: {results}\ncomparisons: {comparisons}")
    html, markdown = write_report(cfg.out, cfg.title or TITLE, cfg.adjust)
    print(f"report: {html}\nsummary: {markdown}")
    if missing:
        print(f"{len(missing)} job(s) not finished: indexes {[j['index'] for j in missing]}; rerun them with "
              "ctssl sweep task --index I (or resubmit those array indexes)")
        return 1
    return 0
