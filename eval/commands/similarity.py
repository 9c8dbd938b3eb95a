"""Layer-wise representation similarity of two backbones on the same images: linear, RBF and
unbiased CKA, mean CCA, SVCCA and PWCCA between every layer of A (stem, stages) and every layer of
B, on --samples images of one split; heat maps and JSON.

Each backbone sees the images prepared its own way (its card's windows and normalisation), as it
would in use. Comparing one backbone before and after fine-tuning: pass the pretrained source as
--a and the fine-tuned export (ctssl finetune --save-model) as --b.

Example:
  ctssl similarity --data runs/demo/shards-ct --a runs/demo/simclr-ct/backbone.safetensors \\
      --b runs/demo/simclr-natural/backbone.safetensors --out runs/demo/analysis
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset spec (as ctssl probe); images only are used")
    parser.add_argument("--a", required=True, help="backbone source A")
    parser.add_argument("--b", required=True, help="backbone source B")
    parser.add_argument("--split", default="test", help="split whose images are used (default test)")
    parser.add_argument("--samples", type=int, default=500, help="images (default 500; evenly spaced)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="backbone input size (default 0: each backbone at the size it was pretrained at, 224 without one)")
    parser.add_argument("--spatial", type=int, default=2, help="conv maps pooled to S x S positions (default 2)")
    parser.add_argument("--max-features", type=int, default=4096, help="features kept per layer (default 4096)")
    parser.add_argument("--measure", action="append", default=None,
                        help="measures (repeatable; default all: linear_cka rbf_cka unbiased_cka mean_cca svcca pwcca)")
    parser.add_argument("--name", default=None, help="name of this comparison (default A_vs_B)")
    parser.add_argument("--out", required=True, help="folder for similarity/<name>.json and heat maps")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.eval.protocols.similarity import SimilaritySettings, run_similarity

    setup_logging(args.log_level)
    settings = SimilaritySettings(split=args.split, samples=args.samples, image_size=args.image_size,
                                  spatial=args.spatial, max_features=args.max_features)
    if args.measure:
        settings.measures = args.measure
    result = run_similarity(args.data, args.a, args.b, settings, args.out, name=args.name)
    for measure, matrix in result["matrices"].items():
        print(f"{measure} (rows: A layers, columns: B layers)")
        print("          " + " ".join(f"{c:>8}" for c in result["layers_b"]))
        for name, row in zip(result["layers_a"], matrix):
            print(f"{name:>9} " + " ".join("     n/a" if v is None else f"{v:8.3f}" for v in row))
    print(f"written: {result['json']}")
    return 0
