"""Group DICOM frame records into axial CT series, in anatomical order, and load them in HU.

Rules (each skip is counted with its own reason in the ingest report; docs/ingest.md lists them):

- keep CT images (Modality CT) that are monochrome slices in Hounsfield units. Skipped: localizers
  (Image Type LOCALIZER), secondary captures (SOP class), derived secondary images (Image Type
  DERIVED\\SECONDARY: reformats, MIPs, captures; DERIVED\\PRIMARY reconstructions are kept), colour
  images (Samples per Pixel > 1: screenshots and dose reports labelled CT), images whose values are not
  attenuation in HU as the standard marks them (a derived parametric map or pixel arithmetic by its Image Type
  terms, a Rescale Type other than HU, US on a derived image, a Real World Value Mapping to other units, a
  Modality LUT, a supplemental colour palette), service images (Content Qualification SERVICE), invalid
  rescale, missing or invalid geometry or spacing;
- group by SeriesInstanceUID, then by geometry (orientation, matrix, pixel spacing): a folder may hold
  several series and a series may hold a localizer. The largest group is the series; other groups of two
  or more images are sub-series of their own; a single image whose geometry differs from the rest of its
  series is skipped. A series of a single axial image is a series (``min_slices`` raises the bar);
- de-duplicate repeated SOP Instance UIDs (and frames): the largest copy is read, the others kept as
  fallbacks, tried in turn when it does not decode (a truncated duplicate never wins);
- order by position along the slice normal (cross product of the two orientation vectors), never by
  Instance Number; repeated positions with different Acquisition Numbers are separate acquisitions
  (split), with the same Acquisition Number duplicates (first kept), all at one position a time series
  (bolus tracking, dynamic scans: skipped);
- only axial acquisitions (normal closest to the patient z axis); a gantry tilt is kept and reported.

Loading (``FrameLoader``) checks each codestream against its transfer syntax before decoding, the
decoded array against Rows x Columns and Bits Stored, and falls back to a duplicate's other copies.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pydicom

from ctssl.data.dicom_headers import SECONDARY_CAPTURE, FrameRecord
from ctssl.data.guard import DataError, is_data_failure
from ctssl.data.hounsfield import Rescale, ValueStats, padding_mask, rescale_or_fallback, to_hu

POSITION_TOL_MM = 0.01
# "US" (unspecified) is what some toolkits (gdcm) write by default; an ORIGINAL CT image whose Rescale Type
# says nothing else is taken as HU. On a DERIVED image US means what the standard says: the units are not HU
# (the Enhanced CT Pixel Value Transformation requires HU for ORIGINAL frames). Derived maps say what they are
# (e.g. MGML, PCT) and are skipped.
ACCEPTED_RESCALE_TYPES = ("", "HU", "US")
# Rescale Types named in a skip reason as they are; any other value is "another value" (Rescale Type is a Long
# String, which could hold free text).
KNOWN_RESCALE_TYPES = ("US", "OD", "MGML", "PCT", "CPS", "NONE", "CM", "CM2", "MM", "PIXELS", "ZEFF", "ED", "EDW",
                       "HU_MOD", "10^-2HU", "MG/ML", "10^-3CM^-1")
# Image Type (Frame Type) values from the third on that name a map of something other than attenuation
# (PS3.3 C.8.16.1 Enhanced CT Image Type values 3-4, C.8.2.1.1.1 multi-energy CT Image Type value 4): perfusion
# parameters (CBF, CBV, MTT, TTP, Tmax, permeability), multi-energy material and property maps, and pixel
# arithmetic whose values are no absolute attenuation (subtraction, division, multiplication, standard deviation).
# Kept: VMI (virtual monoenergetic, HU), MAT_REMOVED (virtual non-contrast, HU), ADDITION, MEAN, MAXIMUM,
# MINIMUM, FILTERED, RESAMPLED, MASKED: still attenuation.
PARAMETRIC_MAPS = ("RCBF", "RCBV", "CBF", "CBV", "MTT", "TTP", "TMAX", "TTD", "PERMEABILITY", "MAT_SPECIFIC",
                   "MAT_FRACTIONAL", "EFF_ATOMIC_NUM", "ELECTRON_DENSITY", "VALUE_BASED")
ARITHMETIC = ("SUBTRACTION", "DIVISION", "MULTIPLICATION", "STD_DEVIATION")
# Modalities named in a skip reason as they are (PS3.3 C.7.3.1.1.1); any other value is "another modality".
KNOWN_MODALITIES = ("AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DMS", "DOC", "DX",
                    "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS",
                    "KER", "KO", "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV",
                    "OPTENF", "OPV", "OSS", "OT", "PLAN", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE",
                    "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM",
                    "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC")
STRAY = "geometry differs from the rest of its series (a localizer or a stray reformat?)"
DUPLICATE = "duplicate SOP Instance UID (another copy is read; this one is its fallback)"


@dataclass
class DicomSeries:
    """An axial CT series ready to load: frames in inferior-to-superior order."""

    series_uid: str                  # keyed pseudonym
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


# Skips that are the rules working (the image is not an axial CT slice, or is one twice); every other skip
# reason means a damaged or absurd input, which --strict stops at.
BY_DESIGN = ("not CT", "not a CT volume", "secondary capture", "colour image", "localizer", "derived secondary", "not Hounsfield",
             "not attenuation", "service image",
             "geometry differs", "duplicate", "non-axial", "repeated acquisitions", "series of fewer",
             "thinned", "mostly air", "link to a folder", "rescale tags missing")


def is_problem(reason: str) -> bool:
    """True when a skip reason says the input is damaged or absurd (not merely filtered out)."""
    return not reason.startswith(BY_DESIGN)


def frame_skip_reason(rec: FrameRecord) -> str | None:
    """Why an image is not an axial CT slice in HU, or None. A reason names coded values only where they come from a
    fixed list (a modality, an Image Type term, a Rescale Type): no header text reaches it."""
    if rec.modality != "CT":
        shown = rec.modality if rec.modality in KNOWN_MODALITIES else ("another modality" if rec.modality else "missing")
        return f"not CT (modality {shown})"
    if rec.sop_class in SECONDARY_CAPTURE:
        return "secondary capture (a picture, not a CT slice)"
    if rec.samples_per_pixel != 1 or rec.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return "colour image (a screenshot or dose report, not a CT slice)"
    if "LOCALIZER" in rec.image_type:
        return "localizer"
    if rec.image_type[:2] == ("DERIVED", "SECONDARY"):
        return "derived secondary image (a reformat, MIP or capture)"
    return _value_skip_reason(rec) or _header_skip_reason(rec)


def _value_skip_reason(rec: FrameRecord) -> str | None:
    """Why a CT image's pixel values are not attenuation in HU (the standard's marks, docs/ingest.md), or None."""
    derived = rec.image_type[:1] == ("DERIVED",)
    terms = rec.image_type[2:]
    maps = [t for t in terms if t in PARAMETRIC_MAPS]
    if maps or (derived and "PERFUSION" in terms):
        return f"not attenuation: a derived parametric map (Image Type {' '.join(maps) or 'PERFUSION'})"
    arithmetic = [t for t in terms if t in ARITHMETIC] if derived else []
    if arithmetic:
        return f"not attenuation: pixel arithmetic, no absolute HU (Image Type {arithmetic[0]})"
    if rec.rescale_type not in ACCEPTED_RESCALE_TYPES:
        shown = rec.rescale_type if rec.rescale_type in KNOWN_RESCALE_TYPES else "another value"
        return f"not Hounsfield units (Rescale Type {shown})"
    if rec.rescale_type == "US" and derived:
        return "not Hounsfield units (Rescale Type US, unspecified units, on a derived image)"
    if rec.real_world_units == "other":
        return "not Hounsfield units (its Real World Value Mapping gives units other than HU: a parametric map)"
    if rec.modality_lut:
        return "not Hounsfield units (a Modality LUT Sequence instead of Rescale Slope and Intercept)"
    if rec.pixel_presentation in ("COLOR", "MIXED"):
        return (f"not Hounsfield units (Pixel Presentation {rec.pixel_presentation}: a supplemental palette makes "
                "part of the values colour codes)")
    if rec.content_qualification == "SERVICE":
        return "service image (Content Qualification SERVICE: calibration or quality control, not a patient scan)"
    return None


def _header_skip_reason(rec: FrameRecord) -> str | None:
    """Why a CT image's rescale or geometry cannot be used, or None."""
    if rec.rescale_invalid:
        return "invalid Rescale Slope or Intercept (not a number, not finite, or a zero slope)"
    if rec.iop is None or rec.ipp is None:
        return "missing or invalid geometry (orientation or position absent, not finite or degenerate)"
    if rec.pixel_spacing is None:
        return "missing or invalid Pixel Spacing (absent, zero or not finite)"
    if rec.rows < 2 or rec.cols < 2:
        return "not an image (fewer than 2 rows or columns)"
    return None


def group_series(records: list[FrameRecord], min_slices: int = 1
                 ) -> tuple[list[DicomSeries], dict[tuple[str, str], int]]:
    """Axial CT series from header records, plus skipped frames counted by (path, reason)."""
    skipped: dict[tuple[str, str], int] = defaultdict(int)
    by_uid: dict[str, list[FrameRecord]] = defaultdict(list)
    kept: dict[tuple[str, int | None], FrameRecord] = {}
    # Largest copy of a repeated SOP instance first: a truncated duplicate is smaller.
    for rec in sorted(records, key=lambda r: (r.sop_uid, r.frame or 0, -r.file_size, r.path)):
        reason = frame_skip_reason(rec)
        if reason is not None:
            skipped[(rec.path, reason)] += 1
            continue
        primary = kept.get((rec.sop_uid, rec.frame))
        if primary is not None:
            primary.alternates.append((rec.path, rec.frame))
            skipped[(rec.path, DUPLICATE)] += 1
            continue
        kept[(rec.sop_uid, rec.frame)] = rec
        by_uid[rec.series_uid].append(rec)

    series: list[DicomSeries] = []
    for uid in sorted(by_uid):
        groups: dict[tuple, list[FrameRecord]] = defaultdict(list)
        for rec in sorted(by_uid[uid], key=lambda r: (r.path, r.frame or 0)):
            groups[_geometry_key(rec)].append(rec)
        ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1][0].path))
        for g_idx, (_key, frames) in enumerate(ordered):
            if g_idx and len(frames) < 2:
                for rec in frames:
                    skipped[(rec.path, STRAY)] += 1
                continue
            series.extend(_order_and_split(uid, f"g{g_idx}" if g_idx else "", frames, skipped, min_slices))
    return series, dict(skipped)


def _axes(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_dir = np.asarray(iop[:3], dtype=np.float64)   # direction of increasing column index
    col_dir = np.asarray(iop[3:], dtype=np.float64)   # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal


def _order_and_split(uid: str, group: str, frames: list[FrameRecord], skipped, min_slices: int) -> list[DicomSeries]:
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

    # Repeated positions: other acquisitions (split), duplicates (first kept), or a time series at one
    # position (bolus tracking, dynamic scans), which is not a volume.
    acquisitions = {f.acquisition for f in frames}
    distinct = len(np.unique(np.round(positions / POSITION_TOL_MM)))
    if len(frames) > 1 and distinct == 1 and len(acquisitions) > 1:
        for rec in frames:
            skipped[(rec.path, "repeated acquisitions at one position (bolus tracking or a dynamic scan)")] += 1
        return []
    parts: list[tuple[str, list[int]]] = []
    if len(acquisitions) > 1 and distinct < len(positions):
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
        if len(keep) < min_slices:
            for i in keep:
                skipped[(frames[i].path, f"series of fewer than min_slices ({min_slices}) slices")] += 1
            continue
        out.append(DicomSeries(uid, name, [frames[i] for i in keep], positions[keep],
                               flip_rows, flip_cols, transpose, tilt))
    return out


# Transfer syntax -> what its first fragment must start with (DICOM PS3.5 annex A.4).
_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_RLE = ("1.2.840.10008.1.2.5",)


def codestream_kind(data: bytes) -> str:
    """What a compressed frame's first bytes say it is: jpeg, jpeg-ls, jpeg2000, rle or unknown."""
    if data[:4] == b"\xff\x4f\xff\x51" or data[4:8] == b"jP  ":
        return "jpeg2000"
    if data[:2] == b"\xff\xd8":
        # JPEG-LS frames carry SOF55 (FFF7) where JPEG has SOF0-SOF15 (FFC0-FFCF).
        head = data[:4096]
        return "jpeg-ls" if b"\xff\xf7" in head and not any(bytes([0xFF, m]) in head for m in range(0xC0, 0xC4)) \
            else "jpeg"
    if len(data) >= 64:
        segments = int.from_bytes(data[:4], "little")
        offsets = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "little") for i in range(15)]
        if 1 <= segments <= 15 and offsets[0] == 64 and offsets[:segments] == sorted(offsets[:segments]):
            return "rle"
    return "unknown"


def check_codestream(transfer_syntax: str, first_fragment: bytes) -> None:
    expected = ("jpeg" if transfer_syntax in _JPEG else "jpeg-ls" if transfer_syntax in _JPEG_LS else
                "jpeg2000" if transfer_syntax in _J2K else "rle" if transfer_syntax in _RLE else None)
    if expected is None:
        return
    found = codestream_kind(first_fragment)
    if found != expected:
        raise DataError(f"codestream does not match its transfer syntax ({found} data labelled {expected})")


class FrameLoader:
    """Loads frames as HU images in canonical orientation; caches one multi-frame file."""

    def __init__(self, hu_min: float, hu_max: float):
        self.hu_min, self.hu_max = hu_min, hu_max
        self._cache_key: tuple | None = None
        self._cache: np.ndarray | None = None
        self.fallback_used = 0
        self.duplicates_used = 0
        self.stats = ValueStats()   # HU before clipping, padding aside, of the loaded frames (data.hounsfield)

    def _decode(self, path: str, frame: int | None, rec: FrameRecord) -> np.ndarray:
        if frame is not None and self._cache_key == (path,):
            return self._cache[frame]
        ds = pydicom.dcmread(path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = rec.transfer_syntax
        if "PixelData" not in ds:
            raise DataError("no Pixel Data")
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if pydicom.uid.UID(syntax).is_compressed:
            from pydicom.encaps import generate_fragmented_frames

            frames = int(ds.get("NumberOfFrames", 1) or 1)
            first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=frames), (b"",))
            check_codestream(syntax, bytes(first[0][:4096]) if first else b"")
        arr = ds.pixel_array
        if frame is None:
            return arr
        if arr.ndim == 2:
            arr = arr[None]
        self._cache_key, self._cache = (path,), arr
        return arr[frame]

    def _stored(self, rec: FrameRecord) -> np.ndarray:
        """The frame's stored values, from the first copy that decodes and passes the checks."""
        errors = []
        for i, (path, frame) in enumerate([(rec.path, rec.frame), *rec.alternates]):
            try:
                stored = self._decode(path, frame, rec)
                _check_stored(stored, rec)
            except BaseException as err:  # noqa: BLE001 - untrusted file: any failure means "try the next copy"
                if not is_data_failure(err):
                    raise
                errors.append(err)
                continue
            self.duplicates_used += bool(i)
            return stored
        raise errors[0]

    def rescale(self, rec: FrameRecord) -> Rescale:
        return rescale_or_fallback(rec.slope, rec.intercept, rec.pixel_representation)

    def load(self, series: DicomSeries, rec: FrameRecord) -> np.ndarray:
        """float32 HU (H, W) in canonical orientation (rows posterior, columns patient-left)."""
        stored = self._stored(rec)
        rescale = self.rescale(rec)
        self.fallback_used += rescale.fallback
        pad = padding_mask(stored, rec.padding_value, rec.padding_limit)
        hu = to_hu(stored, rescale, pad, self.hu_min, self.hu_max, self.stats)
        if series.transpose:
            hu = hu.T
        if series.flip_rows:
            hu = hu[::-1]
        if series.flip_cols:
            hu = hu[:, ::-1]
        return np.ascontiguousarray(hu)


def _check_stored(stored: np.ndarray, rec: FrameRecord) -> None:
    """The decoded frame has the header's shape and, padding aside, values within Bits Stored (0.1% of
    outliers tolerated)."""
    if stored.shape != (rec.rows, rec.cols):
        raise DataError(f"decoded pixel data of shape {tuple(stored.shape)[:3]} where Rows x Columns say "
                        f"{rec.rows} x {rec.cols}")
    if not np.issubdtype(stored.dtype, np.integer):
        raise DataError(f"decoded pixel data is {stored.dtype}, not integers")
    bits = max(1, min(rec.bits_stored, 32))
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if rec.pixel_representation else (0, (1 << bits) - 1)
    outside = (stored < low) | (stored > high)
    pad = padding_mask(stored, rec.padding_value, rec.padding_limit)
    if pad is not None:
        outside &= ~pad                          # padding may be coded outside the range
    if np.count_nonzero(outside) > max(1, stored.size // 1000):
        raise DataError(f"decoded values outside the {bits}-bit range Bits Stored allows (a wrong codestream?)")
