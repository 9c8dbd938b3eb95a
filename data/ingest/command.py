"""Ingest DICOM / NIfTI / NRRD / MetaImage CT volumes into WebDataset shards of lossless int16 HU axial slices.

Walks the sources, recognises DICOM by content and NIfTI, NRRD and MetaImage by name, keeps axial CT series
(ordered by position, localizers and duplicates dropped, rescale and padding applied),
pseudonymises every identifier with a secret salt, assigns patient-level splits, and writes
per-split shards with a manifest (DIR/manifest.json) and a report of every source's outcome
(DIR/ingest-report.json). A rerun with the same arguments resumes an interrupted ingest.
Segmentation masks (nnU-Net/MSD raw datasets, LiTS names, DICOM SEG, or pairs given with --masks) are
placed on their slices and stored beside them; label volumes are never ingested as images.

Examples:
  ctssl ingest runs/synth --out runs/shards --salt-file ~/.ctssl/salt --create-salt \\
      --labels runs/synth/labels/slices.csv
  CTSSL_SALT=... ctssl ingest /archive/ct --out /scratch/shards --workers 16
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_ingest_options(parser: argparse.ArgumentParser) -> None:
    """The options that define an ingest's output (shared with ``ctssl ingest-array plan``)."""
    parser.add_argument("sources", nargs="*", metavar="SRC", help="folders or files to ingest")
    parser.add_argument("--out", default=None, help="output folder for shards, manifest and report")
    parser.add_argument("--image-size", type=int, default=None,
                        help="output slice size in pixels, square, aspect kept by air padding "
                             "(default 256; 0 keeps the native matrix)")
    parser.add_argument("--min-slice-spacing", type=float, default=None,
                        help="keep slices at least this many mm apart (default 0: all)")
    parser.add_argument("--max-air-fraction", type=float, default=None,
                        help="drop slices whose fraction of air pixels (< -900 HU) exceeds this "
                             "(default 1.0: keep all)")
    parser.add_argument("--shard-size-mb", type=float, default=None,
                        help="target shard size in MB; shards close at series boundaries (default 256)")
    parser.add_argument("--labels", action="append", default=None, metavar="CSV",
                        help="label CSV to join (repeatable); see docs/ingest.md for its key columns")
    parser.add_argument("--masks", action="append", default=None, metavar="CSV",
                        help="CSV pairing images with segmentation masks (columns image, mask, optional patient; "
                             "repeatable). nnU-Net/MSD datasets, LiTS names and DICOM SEG are found without it; "
                             "see docs/segmentation.md")
    parser.add_argument("--salt-file", default=None,
                        help="file holding the secret pseudonym salt (else $CTSSL_SALT)")
    parser.add_argument("--create-salt", action="store_true",
                        help="create --salt-file with a new random salt if it does not exist")
    parser.add_argument("--min-slices", type=int, default=None,
                        help="skip series with fewer slices (default 1: single-image CT series are kept)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="refuse DICOM files claiming more frames (default 4096: a corrupt header)")
    parser.add_argument("--file-seconds", type=float, default=None,
                        help="time budget to read one header or one slice before it is skipped (default 120)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first damaged or unreadable input instead of skipping it")
    parser.add_argument("--report-paths", action="store_true",
                        help="write source paths in the report instead of pseudonyms "
                             "(only when paths hold no patient identifiers)")


def resolve_ingest_config(args: argparse.Namespace):
    from ctssl.core.config import resolve_config
    from ctssl.data.ingest import IngestConfig

    options = {"sources": list(args.sources) or None, "out": args.out, "image_size": args.image_size,
               "min_slice_spacing": args.min_slice_spacing, "max_air_fraction": args.max_air_fraction,
               "shard_size_mb": args.shard_size_mb, "labels": args.labels, "masks": args.masks,
               "salt_file": args.salt_file, "create_salt": args.create_salt or None,
               "workers": args.workers, "report_paths": args.report_paths or None,
               "min_slices": args.min_slices, "max_frames": args.max_frames, "file_seconds": args.file_seconds,
               "strict": args.strict or None}
    return resolve_config(IngestConfig, args.config, args.overrides, options)


def log_report(report: dict, out: str) -> None:
    summary = report["summary"]
    log = logging.getLogger("ctssl.data.ingest")
    log.info("series written %d, skipped %d; slices written %d %s", summary["series_written"],
             summary["series_skipped"], summary["slices_written"], summary["slices_per_split"])
    for reason, count in summary["skip_reasons"].items():
        log.info("  skipped: %-60s %d", reason, count)
    if "masks_placed" in summary:
        log.info("masks: %d file(s) found, %d series written with their mask, %d mask(s) skipped",
                 summary["mask_files"], summary["masks_placed"], summary["masks_skipped"])
        for reason, count in summary["mask_skip_reasons"].items():
            log.info("  mask skipped: %-55s %d", reason, count)
    if "labels" in summary:
        log_label_join(summary["labels"], log)
    run_info = report.get("this_run", {})
    if run_info.get("slices_written"):
        log.info("%d slices in %.1f s with %d worker(s): %.1f slices/s", run_info["slices_written"],
                 run_info["seconds"], run_info["workers"], run_info["slices_per_second"])
    log.info("manifest: %s/manifest.json  report: %s/ingest-report.json", out, out)
    print(json.dumps(summary, indent=1))


def log_label_join(join: dict, log: logging.Logger) -> None:
    """The label join on the console: rows matched, and every group of rows that matched nothing (by label
    file pseudonym, key column and line numbers; never a value)."""
    log.info("labels: %d row(s), %d matched a series, %d matched nothing; matching is %s", join["rows"],
             join["rows_matched"], join["rows_unmatched"], join["matching"])
    level = logging.WARNING if join["rows_unmatched"] else logging.INFO
    for group in join["unmatched"]:
        lines = ",".join(map(str, group["lines"])) + ("..." if group["rows"] > len(group["lines"]) else "")
        hint = (f"; {group['match_if_case_ignored']} of them match a source only when case is ignored (fix the "
                "case in the label file)" if group["match_if_case_ignored"] else "")
        log.log(level, "  %s: %d row(s) whose %s matched no series (lines %s)%s", group["file"], group["rows"],
                group["key"], lines, hint)
    if join.get("rows_without_key"):
        log.warning("  %d label row(s) have no value in any key column", join["rows_without_key"])
    if join.get("slice_rows_without_a_written_slice"):
        log.warning("  %d per-slice label row(s) matched a series but no written slice (z_mm or slice_index "
                    "off, or the slice was skipped)", join["slice_rows_without_a_written_slice"])


def configure(parser: argparse.ArgumentParser) -> None:
    add_ingest_options(parser)


def run(args: argparse.Namespace) -> int:
    from ctssl.core.logs import setup_logging
    from ctssl.data.ingest import run_ingest

    cfg = resolve_ingest_config(args)
    check_out(cfg.out)
    setup_logging(args.log_level, Path(cfg.out) / "ingest.log")
    report = run_ingest(cfg)
    log_report(report, cfg.out)
    return 0


def check_out(out: str) -> None:
    """--out must be a folder that can be written (created when missing)."""
    import os

    from ctssl.core.config import ConfigError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder (it is created when missing).")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"--out '{out}' cannot be written (no permission on '{probe}').")
