"""Layer-wise representation similarity of two backbones on the same images: linear, RBF and
unbiased CKA, mean CCA, SVCCA and PWCCA between every layer of A (stem, stages) and every layer of
B, on --samples images of one split; heat maps and JSON (OUT/similarity/<name>.json), the resolved settings
beside them (<name>-config.yaml).

Each backbone sees the images prepared its own way (its card's windows and normalisation), as it
would in use. Comparing one backbone before and after fine-tuning: pass the pretrained source as
--a and the fine-tuned export (ctssl finetune --save-model) as --b.

Example:
  ctssl similarity --data runs/demo/shards-ct --a runs/demo/simclr-ct/backbone.safetensors \\
      --b runs/demo/simclr-natural/backbone.safetensors --out runs/demo/analysis --set samples=200
"""

from __future__ import annotations

import argparse

from ctssl.core.options import Settings
from ctssl.eval.commands.options import add_image_size, add_record_options

SETTINGS = "ctssl.eval.commands.settings:SimilarityCommand"


def configure(parser: argparse.ArgumentParser) -> None:
    settings = Settings(parser, SETTINGS, example="samples=200")
    settings.option("--data", key="data", help="dataset spec (as ctssl probe); images only are used")
    settings.option("--a", key="a", help="backbone source A")
    settings.option("--b", key="b", help="backbone source B")
    settings.option("--split", key="split", help="split whose images are used")
    settings.option("--samples", key="samples", type=int, help="images, evenly spaced")
    add_image_size(settings)
    settings.option("--spatial", key="spatial", type=int, help="conv maps pooled to S x S positions")
    settings.option("--max-features", key="max_features", type=int, help="features kept per layer")
    settings.option("--measure", key="measures", action="append", help="measures (repeatable)")
    add_record_options(settings, "similarity", "A_vs_B")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.core.options import resolve
    from ctssl.eval.commands.options import prepare_record
    from ctssl.eval.protocols.similarity import run_similarity
    from ctssl.eval.records.store import pair_name

    cfg = resolve(args)
    name = prepare_record("similarity", cfg, "similarity", pair_name(cfg.a, cfg.b), "data", "a", "b")
    setup_logging(args.log_level)
    result = run_similarity(cfg.data, cfg.a, cfg.b, cfg, cfg.out, name=name)
    for measure, matrix in result["matrices"].items():
        if measure in result["too_few_images"]:
            print(f"{measure}: {result['too_few_images'][measure]}")
            continue
        print(f"{measure} (rows: A layers, columns: B layers)")
        print("          " + " ".join(f"{c:>8}" for c in result["layers_b"]))
        for layer, row in zip(result["layers_a"], matrix):
            print(f"{layer:>9} " + " ".join("     n/a" if v is None else f"{v:8.3f}" for v in row))
    print(f"written: {result['json']}")
    return 0
