"""Group DICOM frame records into axial CT series, in anatomical order, and load them in HU.

Rules (each skip is counted with its reason in the ingest report):

- group by SeriesInstanceUID, then by geometry (orientation, matrix, pixel spacing): a folder may
  hold several series and a series may hold a localizer;
- keep CT only (Modality CT); drop LOCALIZER images and derived images whose Rescale Type is not
  HU (an unspecified "US" is accepted); drop geometry groups of fewer than ``MIN_GROUP`` images (a stray image whose orientation
  differs from its series is a localizer in all but name);
- de-duplicate repeated SOP Instance UIDs (and frames);
- order by position along the slice normal (cross product of the two orientation vectors), never
  by Instance Number; repeated positions with different Acquisition Numbers are separate
  acquisitions (split), with the same Acquisition Number they are duplicates (first kept);
- only axial acquisitions (normal closest to the patient z axis); a gantry tilt is kept and
  reported in degrees.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pydicom

from ctssl.data.dicom_headers import FrameRecord
from ctssl.data.hounsfield import Rescale, padding_mask, rescale_or_fallback, to_hu

MIN_GROUP = 2
POSITION_TOL_MM = 0.01
# "US" (unspecified) is what some toolkits (gdcm) write by default; a CT image whose Rescale Type
# says nothing else is taken as HU. Derived maps say what they are (e.g. MGML, PCT) and are skipped.
ACCEPTED_RESCALE_TYPES = ("", "HU", "US")
INCONSISTENT = "orientation or geometry inconsistent with its series (localizer?)"


@dataclass
class DicomSeries:
    """An axial CT series ready to load: frames in inferior-to-superior order."""

    series_uid: str
    group: str                       # "" or a suffix distinguishing sub-series of one UID
    frames: list[FrameRecord]
    positions: np.ndarray            # (n,) mm along the (superior-pointing) slice normal
    flip_rows: bool
    flip_cols: bool
    transpose: bool
    tilt_deg: float
    @property
    def first(self) -> FrameRecord:
        return self.frames[0]


def _geometry_key(rec: FrameRecord):
    return _rounded_geometry(rec.iop, rec.rows, rec.cols, rec.pixel_spacing)


@functools.lru_cache(maxsize=4096)
def _rounded_geometry(iop, rows, cols, spacing):
    """Geometry group key; cached, since the frames of a series repeat the same values."""
    iop = tuple(round(v, 3) for v in iop) if iop else None
    spacing = tuple(round(v, 4) for v in spacing) if spacing else None
    return iop, rows, cols, spacing


def _frame_skip_reason(rec: FrameRecord) -> str | None:
    if rec.modality != "CT":
        return f"not CT (modality {rec.modality or 'missing'})"
    if "LOCALIZER" in rec.image_type:
        return "localizer"
    if rec.rescale_type not in ACCEPTED_RESCALE_TYPES:
        return f"not Hounsfield units (Rescale Type {rec.rescale_type})"
    if rec.iop is None or rec.ipp is None or rec.pixel_spacing is None:
        return "missing geometry (orientation, position or pixel spacing)"
    if rec.rows < 2 or rec.cols < 2:
        return "not an image (fewer than 2 rows or columns)"
    return None


def group_series(records: list[FrameRecord]) -> tuple[list[DicomSeries], dict[tuple[str, str], int]]:
    """Axial CT series from header records, plus skipped frames counted by (path, reason)."""
    skipped: dict[tuple[str, str], int] = defaultdict(int)
    by_uid: dict[str, list[FrameRecord]] = defaultdict(list)
    seen: set[tuple[str, int | None]] = set()
    for rec in sorted(records, key=lambda r: (r.path, r.frame or 0)):
        reason = _frame_skip_reason(rec)
        if reason is None and (rec.sop_uid, rec.frame) in seen:
            reason = "duplicate SOP Instance UID"
        if reason is not None:
            skipped[(rec.path, reason)] += 1
            continue
        seen.add((rec.sop_uid, rec.frame))
        by_uid[rec.series_uid].append(rec)

    series: list[DicomSeries] = []
    for uid in sorted(by_uid):
        groups: dict[tuple, list[FrameRecord]] = defaultdict(list)
        for rec in by_uid[uid]:
            groups[_geometry_key(rec)].append(rec)
        ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        for g_idx, (_key, frames) in enumerate(ordered):
            if len(frames) < MIN_GROUP:
                for rec in frames:
                    skipped[(rec.path, INCONSISTENT)] += 1
                continue
            for item in _order_and_split(uid, f"g{g_idx}" if g_idx else "", frames, skipped):
                series.append(item)
    return series, dict(skipped)


def _axes(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_dir = np.asarray(iop[:3], dtype=np.float64)   # direction of increasing column index
    col_dir = np.asarray(iop[3:], dtype=np.float64)   # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal


def _order_and_split(uid: str, group: str, frames: list[FrameRecord], skipped) -> list[DicomSeries]:
    row_dir, col_dir, normal = _axes(frames[0].iop)
    if np.argmax(np.abs(normal)) != 2:
        for rec in frames:
            skipped[(rec.path, "non-axial acquisition (reformatting to axial is not supported)")] += 1
        return []
    if normal[2] < 0:
        normal = -normal                                # point superior: sort inferior first
    positions = np.array([np.dot(normal, f.ipp) for f in frames])
    order = np.argsort(positions, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]

    # Gantry tilt: angle between the normal and the direction slices are stacked along.
    tilt = 0.0
    if len(frames) > 1:
        step = np.asarray(frames[-1].ipp) - np.asarray(frames[0].ipp)
        if np.linalg.norm(step) > 0:
            cos = abs(np.dot(step, normal)) / np.linalg.norm(step)
            tilt = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))

    # Repeated positions: other acquisitions (split) or duplicates (first kept).
    acquisitions = {f.acquisition for f in frames}
    parts: list[tuple[str, list[int]]] = []
    if len(acquisitions) > 1 and len(np.unique(np.round(positions / POSITION_TOL_MM))) < len(positions):
        for acq in sorted(acquisitions, key=lambda a: (a is None, a)):
            idx = [i for i, f in enumerate(frames) if f.acquisition == acq]
            parts.append((f"{group}a{acq}", idx))
    else:
        parts.append((group, list(range(len(frames)))))

    # Canonical display: columns along +x (patient left), rows along +y (posterior).
    transpose = int(np.argmax(np.abs(row_dir))) == 1
    if transpose:
        row_dir, col_dir = col_dir, row_dir
    flip_cols, flip_rows = bool(row_dir[0] < 0), bool(col_dir[1] < 0)

    out = []
    for name, idx in parts:
        keep, last = [], None
        for i in idx:
            if last is not None and abs(positions[i] - positions[last]) < POSITION_TOL_MM:
                skipped[(frames[i].path, "duplicate slice position")] += 1
                continue
            keep.append(i)
            last = i
        if len(keep) < MIN_GROUP:
            for i in keep:
                skipped[(frames[i].path, INCONSISTENT)] += 1
            continue
        out.append(DicomSeries(uid, name, [frames[i] for i in keep], positions[keep],
                               flip_rows, flip_cols, transpose, tilt))
    return out


class FrameLoader:
    """Loads frames as HU images in canonical orientation; caches one multi-frame file."""

    def __init__(self, hu_min: float, hu_max: float):
        self.hu_min, self.hu_max = hu_min, hu_max
        self._cache_path: str | None = None
        self._cache: np.ndarray | None = None
        self.fallback_used = 0

    def _stored(self, rec: FrameRecord) -> np.ndarray:
        if rec.frame is not None and self._cache_path == rec.path:
            return self._cache[rec.frame]
        ds = pydicom.dcmread(rec.path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = rec.transfer_syntax
        arr = ds.pixel_array
        if rec.frame is None:
            return arr
        if arr.ndim == 2:
            arr = arr[None]
        self._cache_path, self._cache = rec.path, arr
        return arr[rec.frame]

    def rescale(self, rec: FrameRecord) -> Rescale:
        return rescale_or_fallback(rec.slope, rec.intercept, rec.pixel_representation)

    def load(self, series: DicomSeries, rec: FrameRecord) -> np.ndarray:
        """float32 HU (H, W) in canonical orientation (rows posterior, columns patient-left)."""
        stored = self._stored(rec)
        if stored.shape != (rec.rows, rec.cols):
            raise ValueError(f"pixel data shape {stored.shape} differs from Rows x Columns")
        rescale = self.rescale(rec)
        self.fallback_used += rescale.fallback
        pad = padding_mask(stored, rec.padding_value, rec.padding_limit)
        hu = to_hu(stored, rescale, pad, self.hu_min, self.hu_max)
        if series.transpose:
            hu = hu.T
        if series.flip_rows:
            hu = hu[::-1]
        if series.flip_cols:
            hu = hu[:, ::-1]
        return np.ascontiguousarray(hu)
