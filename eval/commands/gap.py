"""Domain gap between two datasets in a backbone's feature space (e.g. CT shards vs natural
images, or one scanner vs another with FOLDER@manufacturer=X): linear domain classifier accuracy
and proxy A-distance, MMD^2 (Gaussian kernel, median-heuristic bandwidth), Frechet distance, kNN
domain purity, the cross-domain probe gap when both carry common labels, and a t-SNE plot
coloured by domain and label. Results in OUT/gap/<name>.json with the figures beside it.

Example:
  ctssl gap --a runs/demo/shards-ct --b runs/demo/shards-natural --label-b class \\
      --backbone random:resnet18:3 --backbone runs/demo/simclr-ct/backbone.safetensors --out runs/demo/analysis
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--a", required=True, help="dataset A (spec as ctssl probe; FOLDER@key=value filters)")
    parser.add_argument("--b", required=True, help="dataset B")
    parser.add_argument("--backbone", action="append", required=True, help="backbone source (repeatable)")
    parser.add_argument("--label", default="region", help="label of A (default region)")
    parser.add_argument("--label-b", default=None, help="label of B (default: as A; natural shards: class)")
    parser.add_argument("--split", default="test", help="split compared (default test)")
    parser.add_argument("--max-samples", type=int, default=1000, help="samples per domain (default 1000)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="backbone input size (default 0: each backbone at the size it was pretrained at, 224 without one)")
    parser.add_argument("--k", type=int, default=10, help="neighbours for kNN purity (default 10)")
    parser.add_argument("--no-plot", dest="embed", action="store_false", help="skip the t-SNE figure")
    parser.add_argument("--cache", default="", help="feature cache (default OUT/features)")
    parser.add_argument("--name", default=None, help="name of this comparison (default A_vs_B)")
    parser.add_argument("--out", required=True, help="output folder (gap/<name>.json)")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.eval.protocols.gap import GapSettings, run_gap

    setup_logging(args.log_level)
    settings = GapSettings(label=args.label, label_b=args.label_b or "", split=args.split, max_samples=args.max_samples,
                           image_size=args.image_size, k=args.k, embed=args.embed)
    record = run_gap(args.a, args.b, args.backbone, settings, args.out, args.cache, args.name)
    print(f"{'backbone':<48} {'A-dist':>7} {'MMD2':>8} {'Frechet':>9} {'purity':>7} {'probe gap A->B':>15}")
    for r in record["rows"]:
        transfer = r["probe_transfer"]["a_to_b"]
        gap = "n/a" if transfer is None else f"{transfer['gap']:+.3f}"
        print(f"{r['backbone'][-48:]:<48} {r['domain_classifier']['proxy_a_distance']:7.3f} {r['mmd2']['value']:8.4f} "
              f"{r['frechet_distance']:9.3f} {r['knn_purity']['purity']:7.3f} {gap:>15}")
    print(f"written: {record['json']}")
    return 0
