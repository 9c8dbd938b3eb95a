"""Join per-study / per-series / per-slice labels from CSV files into ingested samples.

A label CSV names its key in one or more of these columns (the identifiers the source data
carries; they are used for the join only and never written to a shard):

- ``series_uid`` (DICOM SeriesInstanceUID), ``study_uid``, ``patient_id`` (DICOM PatientID),
  ``nifti_path`` (NIfTI file path relative to the SRC folder it was found under);
- optionally ``z_mm`` (slice position along the superior axis; matched to the nearest slice
  within a quarter of the slice spacing) or ``slice_index`` (0 = most inferior slice of the
  series) to make the row a per-slice label.

All other columns are labels, except identifier-like columns that are dropped unless named in
``label_columns`` (``case_id``, ``series_number``, ``path``, ``accession``...). Values that parse
as integers or floats are stored as numbers.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SERIES_KEYS = ("series_uid", "nifti_path", "study_uid", "patient_id")
SLICE_KEYS = ("z_mm", "slice_index")
DROPPED_BY_DEFAULT = {"case_id", "series_number", "path", "accession", "accession_number",
                      "patient_name", "study_date"}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


@dataclass
class SeriesLabels:
    common: dict = field(default_factory=dict)
    by_z: list[tuple[float, dict]] = field(default_factory=list)
    by_index: dict[int, dict] = field(default_factory=dict)

    def for_slice(self, index: int, z: float, tolerance: float) -> dict:
        labels = dict(self.common)
        if self.by_index and index in self.by_index:
            labels.update(self.by_index[index])
        if self.by_z:
            zs = np.array([row[0] for row in self.by_z])
            j = int(np.argmin(np.abs(zs - z)))
            if abs(zs[j] - z) <= tolerance:
                labels.update(self.by_z[j][1])
        return labels

    def __bool__(self) -> bool:
        return bool(self.common or self.by_z or self.by_index)


# The keyed-pseudonym namespace of each DICOM key column (data.dicom_headers keys identifiers as read).
KEY_KINDS = {"series_uid": "series-uid", "study_uid": "study-uid", "patient_id": "patient-id"}


class LabelTable:
    """Labels by identifier. With ``keyer`` (data.pseudonym.Keyer) the DICOM identifiers of the files are
    keyed as they are loaded, exactly as headers are keyed when read, so the join never holds raw UIDs."""

    def __init__(self, paths: list[str], label_columns: list[str] | None = None, keyer=None):
        self._rows: dict[tuple[str, str], SeriesLabels] = defaultdict(SeriesLabels)
        self.columns: set[str] = set()
        self.keyer = keyer
        for path in paths:
            self._load(Path(path), set(label_columns or []))

    def _load(self, path: Path, wanted: set[str]) -> None:
        if not path.exists():
            raise FileNotFoundError(f"Label file '{path}' does not exist.")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            keys = [k for k in SERIES_KEYS if k in header]
            if not keys:
                raise ValueError(f"Label file '{path}' has none of the key columns {list(SERIES_KEYS)} "
                                 f"(it has {len(header)} other column(s)); see docs/ingest.md, Labels.")
            excluded = set(SERIES_KEYS) | set(SLICE_KEYS)
            columns = [c for c in header if c not in excluded
                       and (c in wanted if wanted else c not in DROPPED_BY_DEFAULT)]
            self.columns.update(columns)
            for row in reader:
                labels = {c: _value(row[c]) for c in columns if row.get(c, "") != ""}
                for key in keys:
                    if not row.get(key):
                        continue
                    value = row[key].strip()
                    if self.keyer is not None and key in KEY_KINDS:
                        value = self.keyer(KEY_KINDS[key], value)
                    entry = self._rows[(key, value)]
                    try:
                        if row.get("z_mm"):
                            entry.by_z.append((float(row["z_mm"]), labels))
                        elif row.get("slice_index"):
                            entry.by_index[int(row["slice_index"])] = labels
                        else:
                            entry.common.update(labels)
                    except ValueError:
                        raise ValueError(f"Label file '{path}', line {reader.line_num}: z_mm or slice_index "
                                         "is not a number.") from None

    def lookup(self, **identifiers: str) -> SeriesLabels:
        """Labels of a series given its identifiers (series_uid=..., patient_id=..., ...)."""
        out = SeriesLabels()
        for key in ("patient_id", "study_uid", "series_uid", "nifti_path"):  # general -> specific
            value = identifiers.get(key)
            if value and (key, value) in self._rows:
                found = self._rows[(key, value)]
                out.common.update(found.common)
                out.by_z.extend(found.by_z)
                out.by_index.update(found.by_index)
        out.by_z.sort(key=lambda r: r[0])
        return out
