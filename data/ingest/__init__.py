"""``ctssl ingest``: DICOM / NIfTI CT volumes -> verified WebDataset shards of HU slices.

The modules read one way, each using only those before it:

- ``config``: the settings, and what an output records of them (no path as typed);
- ``discover``: find DICOM (by content) and NIfTI (by name) files; read one header in isolation;
- ``pairs``: which NIfTI files are segmentation masks (nnU-Net/MSD, LiTS, ``--masks`` CSV) and whose; one
  class table; byte-identical NIfTI copies read once;
- ``plan``: scan headers (identifiers keyed as read), group into axial CT series, match DICOM SEG to their
  series, pseudonyms, splits, balance over tasks (``OUT/plan/``);
- ``task``: load, check, slice, place masks, resize and encode the series of one task into shards,
  resumably;
- ``merge``: one manifest and one report over all tasks;
- ``run``: all three on one node (``run_ingest``).

``command`` and ``array_command`` are the command lines; the benchmarks live in ``ctssl.bench``.
docs/ingest.md states the rules and the guarantees; docs/segmentation.md the masks.
"""

from ctssl.data.ingest.config import IngestConfig, SplitFractions
from ctssl.data.ingest.run import run_ingest

__all__ = ["IngestConfig", "SplitFractions", "run_ingest"]
