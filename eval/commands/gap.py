"""Domain gap between two datasets in a backbone's feature space (e.g. CT shards vs natural
images, or one scanner vs another with FOLDER@manufacturer=X): linear domain classifier accuracy
and proxy A-distance, MMD^2 (Gaussian kernel, median-heuristic bandwidth), Frechet distance, kNN
domain purity, the cross-domain probe gap when both carry common labels, and a t-SNE plot
coloured by domain and label. Results in OUT/gap/<name>.json with the figures and the resolved settings
(<name>-config.yaml) beside it.

Example:
  ctssl gap --a runs/demo/shards-ct --b runs/demo/shards-natural --label-b class \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors --out runs/demo/analysis \\
      --set max_samples=400
"""

from __future__ import annotations

import argparse

from ctssl.core.options import Settings
from ctssl.eval.commands.options import add_cache, add_image_size, add_record_options

SETTINGS = "ctssl.eval.commands.settings:GapCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, SETTINGS, example="max_samples=400")
    settings.option("--a", key="a", help="dataset A (spec as ctssl probe; FOLDER@key=value filters)")
    settings.option("--b", key="b", help="dataset B")
    settings.option("--backbone", key="backbones", action="append", help="backbone source (repeatable)")
    settings.option("--label", key="label",
                    help="label of A, for the cross-domain probe and the t-SNE's colours; none: images only")
    settings.option("--label-b", key="label_b", help="label of B; none: as A (natural shards: class)")
    settings.option("--split", key="split", help="split compared")
    settings.option("--max-samples", key="max_samples", type=int, help="samples per domain")
    add_image_size(settings)
    settings.option("--k", key="k", type=int, help="neighbours for kNN purity")
    settings.switch("--no-plot", key="embed", value=False, help="skip the t-SNE figure")
    add_cache(settings)
    add_record_options(settings, "gap", "A_vs_B")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import prepare_record
    from ctssl.eval.protocols.gap import headline_values, run_gap
    from ctssl.eval.records.store import pair_name

    cfg = resolve(args)
    name = prepare_record("gap", cfg, "gap", pair_name(cfg.a, cfg.b), "a", "b", "backbones")
    setup_logging(args.log_level)
    record = run_gap(cfg.a, cfg.b, cfg.backbones, cfg, cfg.out, cfg.cache, name)
    print(f"{'backbone':<48} {'A-dist':>7} {'MMD2':>8} {'Frechet':>9} {'purity':>7} {'probe gap A->B':>15}")
    for r in record["rows"]:
        transfer = r["probe_transfer"]["a_to_b"]
        gap = "n/a" if transfer is None else f"{transfer['gap']:+.3f}"
        v = headline_values(r)
        print(f"{r['backbone'][-48:]:<48} {v['A-dist']:>7} {v['MMD2']:>8} {v['Frechet']:>9} {v['purity']:>7} {gap:>15}")
        for measure, reason in r["too_few_images"].items():
            print(f"  {measure}: {reason}")
    print(f"written: {record['json']}")
    return 0
