"""Generate the embedded synthetic CT corpus: DICOM and NIfTI studies in Hounsfield units with
body-region and lesion labels, a natural-image stand-in, and a contact sheet.

Segmentation masks of lungs, liver, brain and lesions come as an nnU-Net raw dataset of the NIfTI studies
and as DICOM SEG of some DICOM studies, some stored in another voxel order or orientation than their image.
The corpus exercises what real archives do: compressed transfer syntaxes (JPEG 2000 lossless,
RLE, deflate), shuffled Instance Numbers, a localizer inside a series folder, two series in one
folder, a file without preamble, a duplicated instance, a stray non-DICOM file, differing
scanners, slice thicknesses, pixel spacings and padding conventions, and NIfTI volumes with
non-canonical affines and scl_slope/scl_inter. Identifying header fields are fake but realistic.

Example:
  ctssl synth --out runs/synth --patients 12 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output folder (default: runs/synth)")
    parser.add_argument("--patients", type=int, default=None,
                        help="number of studies, one patient each (default: 12)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    parser.add_argument("--matrix", type=int, default=None,
                        help="in-plane matrix size in pixels (default: 256; real scanners: 512)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes; the output does not depend on it (default: 1)")
    parser.add_argument("--no-natural", action="store_true",
                        help="skip the natural-image stand-in corpus")


def run(args: argparse.Namespace) -> int:
    from ctssl.core.config import resolve_config
    from ctssl.core.logs import setup_logging
    from ctssl.data.synth import SynthConfig, run_synth

    options = {"out": args.out, "patients": args.patients, "seed": args.seed,
               "matrix": args.matrix, "workers": args.workers,
               "natural.enabled": False if args.no_natural else None}
    cfg = resolve_config(SynthConfig, args.config, args.overrides, options)
    setup_logging(args.log_level, Path(cfg.out) / "synth.log")
    summary = run_synth(cfg)
    log = logging.getLogger("ctssl.data.synth")
    run_info = summary["this_run"]
    log.info("wrote %d studies (%d DICOM, %d NIfTI), %d series, %d axial slices (%d with lesions), "
             "%d natural stand-in images", summary["studies"], summary["dicom_studies"],
             summary["nifti_studies"], summary["series"], summary["axial_slices"],
             summary["lesion_slices"], summary["natural_standin_images"])
    log.info("segmentation masks: %d nnU-Net label volume(s) (%s/nnunet/), %d DICOM SEG object(s)",
             summary["masks"]["nnunet_cases"], cfg.out, summary["masks"]["dicom_seg"])
    if run_info["slices_generated"]:
        log.info("generated %d slices in %.1f s with %d worker(s): %.1f slices/s",
                 run_info["slices_generated"], run_info["seconds"], run_info["workers"],
                 run_info["slices_per_second"])
    log.info("labels: %s/labels/  contact sheet: %s/contact_sheet.png", cfg.out, cfg.out)
    print(json.dumps(summary, indent=2))
    return 0
