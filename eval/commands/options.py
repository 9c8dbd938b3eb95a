"""Options shared by the evaluation commands (probe, knn, finetune): what is evaluated, on what,
with how many labels and seeds, and where results go."""

from __future__ import annotations

import argparse


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", "--shards", dest="data", required=True,
                        help="dataset: a shard folder, imagefolder:ROOT, a .csv (path,label[,split,patient]) "
                             "or a MedMNIST .npz")
    parser.add_argument("--backbone", action="append", required=True,
                        help="random:NAME:IN_CHANS, imagenet:NAME:FILE, radimagenet:FILE, a backbone.safetensors "
                             "or a checkpoint .pt (repeatable; the first is the baseline of paired comparisons)")
    parser.add_argument("--name", action="append", default=None,
                        help="readable name of each --backbone, in the same order (repeatable; for the report)")
    parser.add_argument("--label", default="region",
                        help="label key in the shards (default region); a+b+c for multi-label")
    parser.add_argument("--fraction", type=float, action="append", default=None,
                        help="fraction of training patients with labels (repeatable; default 1)")
    parser.add_argument("--seed", type=int, action="append", default=None, help="seed (repeatable; default 0)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="backbone input size (default 0: each backbone at the size it was pretrained at, 224 without one)")
    parser.add_argument("--grey-window", default="wide",
                        help="HU window of CT inputs for backbones of grey or natural pictures (ImageNet, "
                             "RadImageNet, natural-image pretraining), replicated to their channels (default wide)")
    parser.add_argument("--cache", default="", help="feature cache folder (default OUT/features)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)")
    parser.add_argument("--out", required=True,
                        help="results folder: runs/ (one record per run), results.jsonl, comparisons.jsonl")


def eval_spec(args: argparse.Namespace):
    from ctssl.eval.protocols.spec import EvalSpec
    from ctssl.eval.records.store import save_names

    save_names(args.out, args.backbone, args.name)
    return EvalSpec(data=args.data, backbones=args.backbone, label=args.label, fractions=args.fraction or [1.0],
                    seeds=args.seed or [0], image_size=args.image_size, n_boot=args.n_boot,
                    grey_window=args.grey_window)


def finish(args: argparse.Namespace, records: list[dict]) -> int:
    """Collate OUT/results.jsonl and comparisons, print the table and the paired comparisons."""
    import json

    from ctssl.eval.records.comparisons import collate

    results, comparisons = collate(args.out, args.n_boot)
    print(table(records))
    tasks = {r["task"] for r in records}
    for line in comparisons.read_text().splitlines():
        c = json.loads(line)
        if c["task"] not in tasks:
            continue
        f = {k: ("n/a" if c[k] is None else f"{c[k]:+.3f}") for k in ("delta", "lower", "upper", "p_value")}
        print(f"paired {c['task']} {c.get('variant') or ''} fraction {c['fraction']:g} seed {c['seed']}: "
              f"{c['backbone']} - {c['baseline']} {c['metric']} {f['delta']} [{f['lower']}, {f['upper']}] "
              f"p={f['p_value'].lstrip('+')}")
    print(f"results: {results}\ncomparisons: {comparisons}")
    return 0


def table(records: list[dict]) -> str:
    from ctssl.eval.records.comparisons import headline

    """A console table: one row per run, mean and spread over seeds left to the report."""
    rows = [("task", "backbone", "variant", "fraction", "seed", "n_train", "result")]
    for r in records:
        rows.append((r["task"], _short(r["backbone"]), r.get("variant", ""), f"{r['fraction']:g}", str(r["seed"]),
                     str(r["n_train"]), headline(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _short(source: str) -> str:
    return source if len(source) <= 48 else "..." + source[-45:]
