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

Matching is exact: a row's key value must equal the source's identifier character for character
(``hosp0039`` does not match ``HOSP0039``; DICOM identifiers are compared as keyed pseudonyms, NIfTI
paths as written). Every row is accounted for (``LabelTable.join_report``): rows whose keys matched no
series are counted and listed by label file (its pseudonym), key column and line number, never by
value, with the number of them that would match if case were ignored (a hint to fix the file; the
join itself never guesses).
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

    def for_slice(self, index: int, z: float, tolerance: float, used: set | None = None) -> dict:
        """The labels of the slice at ``index`` / ``z``; ``used`` collects which per-slice rows were taken
        (``("i", index)``, ``("z", position in by_z)``), so that rows matching no slice can be counted."""
        labels = dict(self.common)
        if self.by_index and index in self.by_index:
            labels.update(self.by_index[index])
            if used is not None:
                used.add(("i", index))
        if self.by_z:
            zs = np.array([row[0] for row in self.by_z])
            j = int(np.argmin(np.abs(zs - z)))
            if abs(zs[j] - z) <= tolerance:
                labels.update(self.by_z[j][1])
                if used is not None:
                    used.add(("z", j))
        return labels

    def slice_rows(self) -> int:
        """How many per-slice rows (z_mm or slice_index) the series was given."""
        return len(self.by_z) + len(self.by_index)

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
        # Join accounting: every data row as (file index, line); the rows each (key, value) holds; which
        # (key, value) a lookup matched; the case-folded form of each (key, value) and of every source identifier.
        self.files: list[str] = []
        self._lines: list[tuple[int, int]] = []
        self._entry_rows: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._matched: set[tuple[str, str]] = set()
        self._folded: dict[tuple[str, str], str] = {}
        self._seen_folded: dict[str, set[str]] = defaultdict(set)
        self.rows_without_key = 0
        for path in paths:
            self._load(Path(path), set(label_columns or []))

    def _file_name(self, path: Path) -> str:
        """How reports name a label file: its keyed pseudonym, as the recorded settings do (data.ingest.config)."""
        import os

        from ctssl.data.pseudonym import pseudonym

        salt = getattr(self.keyer, "salt", None)
        return "labels-" + pseudonym(salt, "labels-file", os.path.abspath(path)) if salt else \
            f"labels-{len(self.files) + 1}"

    def fold(self, key: str, value: str) -> str:
        """``value`` case-folded, keyed as the source identifiers' folded forms are (data.dicom_headers)."""
        if self.keyer is not None and key in KEY_KINDS:
            return self.keyer(KEY_KINDS[key] + "-folded", value.casefold())
        return value.casefold()

    def _load(self, path: Path, wanted: set[str]) -> None:
        if not path.exists():
            raise FileNotFoundError(f"Label file '{path}' does not exist.")
        file_index = len(self.files)
        self.files.append(self._file_name(path))
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
                row_id = len(self._lines)
                self._lines.append((file_index, reader.line_num))
                if not any((row.get(key) or "").strip() for key in keys):
                    self.rows_without_key += 1
                for key in keys:
                    if not (row.get(key) or "").strip():
                        continue
                    raw = row[key].strip()
                    value = self.keyer(KEY_KINDS[key], raw) if self.keyer is not None and key in KEY_KINDS else raw
                    self._entry_rows[(key, value)].append(row_id)
                    self._folded.setdefault((key, value), self.fold(key, raw))
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
        """Labels of a series given its identifiers (series_uid=..., patient_id=..., ...); exact matches only."""
        out = SeriesLabels()
        for key in ("patient_id", "study_uid", "series_uid", "nifti_path"):  # general -> specific
            value = identifiers.get(key)
            if value and (key, value) in self._rows:
                self._matched.add((key, value))
                found = self._rows[(key, value)]
                out.common.update(found.common)
                out.by_z.extend(found.by_z)
                out.by_index.update(found.by_index)
        out.by_z.sort(key=lambda r: r[0])
        return out

    def see_folded(self, key: str, folded: str) -> None:
        """Record a source identifier's case-folded form (``fold``), for the report's case hint only."""
        if folded:
            self._seen_folded[key].add(folded)

    def join_report(self, max_lines: int = 20) -> dict:
        """How the join went, without any identifier: rows, rows matched, and the rows that matched no series by
        label file (pseudonym), key column and line number (the first ``max_lines``), with how many of them
        differ from a source's identifier in case alone."""
        matched: set[int] = set()
        for entry in self._matched:
            matched.update(self._entry_rows[entry])
        unmatched: dict[tuple[int, str], list[int]] = defaultdict(list)
        case_only: dict[tuple[int, str], int] = defaultdict(int)
        for (key, value), rows in self._entry_rows.items():
            for row in rows:
                if row in matched:
                    continue
                file_index, line = self._lines[row]
                unmatched[(file_index, key)].append(line)
                case_only[(file_index, key)] += self._folded[(key, value)] in self._seen_folded.get(key, ())
        rows_unmatched = len(self._lines) - len(matched)
        listing = []
        for (file_index, key), lines in sorted(unmatched.items()):
            lines = sorted(set(lines))
            listing.append({"file": self.files[file_index], "key": key, "rows": len(lines),
                            "lines": lines[:max_lines], "match_if_case_ignored": case_only[(file_index, key)]})
        return {"matching": "exact (identifiers compared character for character; case matters)",
                "rows": len(self._lines), "rows_matched": len(matched), "rows_unmatched": rows_unmatched,
                "rows_without_key": self.rows_without_key, "unmatched": listing}
