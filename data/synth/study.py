"""Plan and render synthetic CT studies: scanner, protocol, geometry, noise and quirks.

``plan_study(seed, index, ...)`` is cheap and deterministic: it decides everything about study
``index`` (anatomy, scanner, series geometry, file format, fake identity) without rendering a
pixel. ``render_series`` turns one series of a plan into Hounsfield units, deterministically per
slice, so tests and the contact sheet can re-render any slice and compare it with what was written.

The first eight studies cycle through a fixed catalogue so that even a small corpus holds the
variety real archives have (see ``CATALOGUE``); later studies draw their settings at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ctssl.data.synth import phantom

# --------------------------------------------------------------------------- scanners


@dataclass(frozen=True)
class Scanner:
    manufacturer: str
    models: tuple[str, ...]
    kernels: dict  # role ("soft", "lung", "head") -> kernel name
    pixel_representation: int  # 0 unsigned, 1 signed
    bits_stored: int
    intercept: float
    slope: float
    padding: int | None  # stored Pixel Padding Value outside the field of view, or None
    filename: str  # pattern of instance file names


SCANNERS = {
    "ge": Scanner("GE MEDICAL SYSTEMS", ("LightSpeed VCT", "Revolution CT", "Discovery CT750 HD"),
                  {"soft": "STANDARD", "lung": "LUNG", "head": "SOFT"}, 1, 16, -1024.0, 1.0, -2000,
                  "IMG{n:05d}.dcm"),
    "siemens": Scanner("SIEMENS", ("SOMATOM Definition Edge", "SOMATOM Force", "SOMATOM go.Top"),
                       {"soft": "Br40d", "lung": "Bl64d", "head": "Hr38h"}, 0, 12, -1024.0, 1.0, None,
                       "CT.{sop}.dcm"),
    "philips": Scanner("Philips", ("Brilliance 64", "iCT 256", "IQon - Spectral CT"),
                       {"soft": "B", "lung": "L", "head": "UB"}, 0, 12, -1024.0, 1.0, 0,
                       "I{n10:07d}"),
    "toshiba": Scanner("TOSHIBA", ("Aquilion ONE", "Aquilion PRIME"),
                       {"soft": "FC08", "lung": "FC52", "head": "FC26"}, 1, 16, 0.0, 1.0, -2000,
                       "IM{n:06d}"),
}

SHARP_KERNELS = {"LUNG", "Bl64d", "L", "FC52"}

# Transfer syntax names (resolved to UIDs by the DICOM writer).
TS_EXPLICIT, TS_IMPLICIT, TS_J2K, TS_RLE, TS_DEFLATED = (
    "explicit_le", "implicit_le", "jpeg2000_lossless", "rle_lossless", "deflated_le")

# Fixed catalogue for the first studies: protocol, format, scanner, transfer syntax, quirks.
# Quirks: localizer (a LOCALIZER image with the series' UID inside the series folder),
# shuffled_instances (Instance Numbers unrelated to position), feet_first (instances run
# inferior->superior), two_series (two reconstructions in one folder, one overlapping),
# no_preamble (one series without preamble or file meta, implicit VR), duplicate (one instance
# stored twice under two names), stray_file (a non-DICOM file in the folder), comments (free text
# with the patient's name in Image Comments).
CATALOGUE = (
    ("chest", "dicom", "ge", TS_EXPLICIT, ("localizer", "comments")),
    ("abdomen_pelvis", "dicom", "siemens", TS_J2K, ()),
    ("head", "dicom", "toshiba", TS_RLE, ()),
    ("chest", "nifti", None, None, ("nifti_las_raw",)),
    ("chest_abdomen_pelvis", "dicom", "philips", TS_EXPLICIT, ("shuffled_instances", "feet_first")),
    ("chest", "dicom", "siemens", TS_EXPLICIT, ("two_series", "no_preamble")),
    ("head", "nifti", None, None, ("nifti_pir_auto",)),
    ("abdomen_pelvis", "dicom", "ge", TS_DEFLATED, ("duplicate", "stray_file")),
)

FIRST_NAMES = ("JANE", "JOHN", "MARIA", "WEI", "AHMED", "OLGA", "KWAME", "PRIYA", "LUCAS", "EMMA",
               "HIROSHI", "FATIMA", "NOAH", "INGRID", "CARLOS", "AMARA")
LAST_NAMES = ("DOE", "SMITH", "GARCIA", "CHEN", "HASSAN", "IVANOVA", "MENSAH", "PATEL", "SILVA",
              "MUELLER", "TANAKA", "OKAFOR", "JOHANSSON", "ROSSI", "NOWAK", "KOWALSKI")
INSTITUTIONS = (("Northfield General Hospital", "12 Harbour Road, Northfield"),
                ("St. Aurelia Medical Centre", "400 Aurelia Avenue, Westbrook"),
                ("Lakeside University Clinic", "1 Campus Drive, Lakeside"),
                ("Riverbend Community Hospital", "77 Mill Lane, Riverbend"))

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, as pydicom's generate_uid uses


# --------------------------------------------------------------------------- plans


@dataclass
class Identity:
    """Fake but realistic identifying header fields, for privacy checks downstream."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    accession: str
    study_date: str
    study_time: str
    institution: str
    institution_address: str
    referring_physician: str
    operator: str
    station: str
    device_serial: str


@dataclass
class SeriesPlan:
    series_number: int
    role: str                    # "soft", "lung" or "head" (which kernel)
    description: str
    kernel: str
    thickness: float             # mm
    spacing: float               # mm between slice centres
    z: np.ndarray                # (n,) slice positions along +z (superior), inferior first
    u: np.ndarray                # (n,) anatomical heights of those slices
    matrix: int
    pixel_spacing: float         # mm
    x0: float                    # mm, x of column 0 (Image Position Patient)
    y0: float                    # mm, y of row 0
    noise_sigma: float           # HU
    blur_px: float
    transfer_syntax: str | None  # None for NIfTI
    instance_order: str          # "head_first", "feet_first" or "shuffled"
    uid: str = ""
    folder: str = ""             # relative to the corpus root (DICOM)

    @property
    def n_slices(self) -> int:
        return len(self.z)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Column x and row y positions (mm) of pixel centres."""
        idx = np.arange(self.matrix, dtype=np.float64)
        return self.x0 + idx * self.pixel_spacing, self.y0 + idx * self.pixel_spacing

    def fov_mask(self) -> np.ndarray:
        """True inside the reconstruction circle (H, W)."""
        xs, ys = self.grid()
        cx = self.x0 + (self.matrix - 1) * self.pixel_spacing / 2
        cy = self.y0 + (self.matrix - 1) * self.pixel_spacing / 2
        r = self.matrix * self.pixel_spacing / 2
        return ((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2) <= r * r


@dataclass
class StudyPlan:
    index: int
    seed: int
    case_id: str
    protocol: str                # key of phantom.COVERAGE
    format: str                  # "dicom" or "nifti"
    scanner_key: str
    model: str
    kvp: int
    anatomy: phantom.Anatomy
    identity: Identity
    series: list[SeriesPlan]
    quirks: tuple[str, ...] = ()
    study_uid: str = ""
    frame_uid: str = ""

    @property
    def scanner(self) -> Scanner:
        return SCANNERS[self.scanner_key]

    @property
    def relpath(self) -> str:
        return f"dicom/{self.case_id}" if self.format == "dicom" else f"nifti/{self.case_id}.nii.gz"

    def lesions_on_slice(self, series: SeriesPlan, k: int) -> list[str]:
        """Lesion kinds labelled on slice ``k`` (cross-section >= the minimum radius)."""
        limit = max(phantom.LESION_MIN_RADIUS_PX * series.pixel_spacing, phantom.LESION_MIN_RADIUS_MM)
        return sorted({les.kind for les in self.anatomy.lesions
                       if les.cross_section_radius(series.u[k], self.anatomy.z_scale) >= limit})


def make_uid(*parts) -> str:
    """A deterministic DICOM UID from ``parts`` (pydicom's hashed generate_uid)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts]))


def _identity(rng: np.random.Generator) -> Identity:
    inst, address = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
    birth_year = int(rng.integers(1935, 2004))
    study_year = int(rng.integers(2016, 2025))
    sex = str(rng.choice(["F", "M"]))
    first = str(rng.choice(FIRST_NAMES))
    return Identity(
        patient_name=f"{rng.choice(LAST_NAMES)}^{first}",
        patient_id=f"MRN{int(rng.integers(10**7, 10**8))}",
        birth_date=f"{birth_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex=sex,
        age=f"{study_year - birth_year:03d}Y",
        accession=f"A{int(rng.integers(10**9, 10**10))}",
        study_date=f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        study_time=f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
        institution=inst,
        institution_address=address,
        referring_physician=f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}^^DR",
        operator=f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}",
        station=f"CTAWP{int(rng.integers(10000, 99999))}",
        device_serial=f"{int(rng.integers(10**5, 10**6))}",
    )


def plan_study(seed: int, index: int, matrix: int = 256,
               thickness_choices: tuple[float, ...] = (2.5, 3.0, 5.0),
               nifti_fraction: float = 0.25, lesion_rate: float = 0.5,
               noise_scale: float = 1.0, case_prefix: str = "case") -> StudyPlan:
    """Everything about study ``index`` of the corpus with ``seed``; renders nothing. ``case_prefix`` names
    the study's files (``case-0003``): a second corpus of other patients takes another prefix, since a NIfTI
    file's name is its patient key at ingest (``nifti_patient_pattern``)."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    if index < len(CATALOGUE):
        protocol, fmt, scanner_key, ts, quirks = CATALOGUE[index]
    else:
        protocol = str(rng.choice(list(phantom.COVERAGE), p=[0.35, 0.25, 0.15, 0.25]))
        fmt = "nifti" if rng.random() < nifti_fraction else "dicom"
        scanner_key, ts, quirks = None, None, ()
        if fmt == "dicom":
            ts = str(rng.choice([TS_EXPLICIT, TS_J2K, TS_RLE], p=[0.7, 0.15, 0.15]))
            if rng.random() < 0.3:
                quirks = ("feet_first",)
        else:
            quirks = (str(rng.choice(["nifti_las_raw", "nifti_pir_auto"])),)
    if scanner_key is None:
        scanner_key = str(rng.choice(list(SCANNERS)))
    scanner = SCANNERS[scanner_key]
    kind = "head" if protocol == "head" else "torso"
    coverage = phantom.COVERAGE[protocol]
    anatomy = phantom.sample_anatomy(rng, kind, coverage, lesion_rate)
    kvp = 120 if kind == "head" else int(rng.choice([100, 120, 140]))
    identity = _identity(rng)
    case_id = f"{case_prefix}-{index:04d}"

    # Geometry shared by the study's series: table height (z offset) and field of view.
    z_offset = round(float(rng.uniform(-1300, -300)), 1)
    max_a = max(phantom.body_axes(anatomy, u)[0] for u in np.linspace(*coverage, 20))
    fov = float(np.clip(2 * max_a + rng.uniform(30, 70), 200 if kind == "head" else 320, 500))
    fov = round(fov, 1)
    centre = rng.uniform(-12, 12, 2)
    pixel_spacing = round(fov / matrix, 4)  # exactly representable in a DS header value
    x0 = round(float(centre[0] - fov / 2 + pixel_spacing / 2), 3)
    y0 = round(float(centre[1] - fov / 2 + pixel_spacing / 2), 3)

    roles = ["head"] if kind == "head" else ["soft"]
    if "two_series" in quirks:
        roles = ["soft", "lung"]
    series = []
    head_choices = tuple(t for t in thickness_choices if t >= 2.5) or thickness_choices
    for s_idx, role in enumerate(roles):
        thickness = float(rng.choice(head_choices if kind == "head" else thickness_choices))
        spacing = thickness
        if role == "lung":  # overlapping thin reconstruction
            thickness = min(thickness_choices)
            spacing = round(thickness * 0.8, 3)
        lo, hi = coverage
        start = lo * anatomy.z_scale
        n = int(math.floor((hi - lo) * anatomy.z_scale / spacing))
        az = start + spacing * np.arange(n)
        z = np.round(az + z_offset, 3)
        kernel = scanner.kernels[role]
        sharp = kernel in SHARP_KERNELS
        base_noise = 4.0 if kind == "head" else 9.0
        kv_factor = {100: 1.3, 120: 1.0, 140: 0.85}[kvp]
        order = "head_first"
        if "feet_first" in quirks:
            order = "feet_first"
        if "shuffled_instances" in quirks:
            order = "shuffled"
        desc = {"soft": f"{protocol.replace('_', ' ').title()} {thickness:g}mm",
                "lung": f"Lung {thickness:g}mm", "head": f"Head {thickness:g}mm"}[role]
        series.append(SeriesPlan(
            series_number=2 + s_idx, role=role, description=desc, kernel=kernel,
            thickness=thickness, spacing=spacing, z=z, u=az / anatomy.z_scale, matrix=matrix,
            pixel_spacing=pixel_spacing, x0=x0, y0=y0,
            noise_sigma=noise_scale * base_noise * kv_factor * (2.2 if sharp else 1.0),
            blur_px=0.45 if sharp else 0.8,
            transfer_syntax=ts if fmt == "dicom" else None, instance_order=order,
        ))

    plan = StudyPlan(index=index, seed=seed, case_id=case_id, protocol=protocol, format=fmt,
                     scanner_key=scanner_key, model=str(rng.choice(scanner.models)), kvp=kvp,
                     anatomy=anatomy, identity=identity, series=series, quirks=tuple(quirks))
    plan.study_uid = make_uid(seed, index, "study")
    plan.frame_uid = make_uid(seed, index, "frame")
    for s in series:
        s.uid = make_uid(seed, index, "series", s.series_number)
        s.folder = plan.relpath if fmt == "dicom" else ""
        if fmt == "dicom" and "two_series" not in quirks:
            s.folder = f"{plan.relpath}/series-{s.series_number:02d}"
    return plan


# --------------------------------------------------------------------------- rendering

HU_MIN, HU_MAX = -1024.0, 3071.0
NOISE_CORRELATION_PX = 0.7


def _filtered_noise_std(sigma: float) -> float:
    """Standard deviation left in unit white noise after a Gaussian filter (exact, discrete)."""
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    return float(np.sqrt((gaussian_filter(delta, sigma) ** 2).sum()))


_NOISE_STD = _filtered_noise_std(NOISE_CORRELATION_PX)


def render_slice(plan: StudyPlan, series: SeriesPlan, k: int) -> np.ndarray:
    """HU image (H, W) of slice ``k``: partial volume, scanner blur and correlated noise.

    Pixels outside the reconstruction circle are NaN (the writers map them to padding).
    Deterministic for (seed, study, series, slice).
    """
    xs, ys = series.grid()
    if series.thickness > 1.5:
        offsets = (-series.thickness / 3, 0.0, series.thickness / 3)
    else:
        offsets = (0.0,)
    zs = plan.anatomy.z_scale
    planes = [phantom.render_plane(plan.anatomy, series.u[k] + off / zs, xs, ys) for off in offsets]
    hu = np.mean(planes, axis=0) if len(planes) > 1 else planes[0]
    hu = gaussian_filter(hu, series.blur_px, mode="nearest")
    rng = np.random.default_rng([plan.seed, plan.index, series.series_number, k])
    # CT noise is spatially correlated: filtered white noise, rescaled to the series' sigma.
    noise = gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), NOISE_CORRELATION_PX)
    noise *= series.noise_sigma / _NOISE_STD
    hu = np.clip(hu + noise, HU_MIN, HU_MAX).astype(np.float32)
    hu[~series.fov_mask()] = np.nan
    return hu


def render_series(plan: StudyPlan, series: SeriesPlan, indices=None) -> np.ndarray:
    """HU volume (n, H, W), inferior slice first; ``indices`` selects slices."""
    indices = range(series.n_slices) if indices is None else indices
    return np.stack([render_slice(plan, series, k) for k in indices])


def render_labels(plan: StudyPlan, series: SeriesPlan, indices=None) -> np.ndarray:
    """uint8 class ids (n, H, W) of the series' slices at their central planes (phantom.label_plane), inferior
    first; outside the reconstruction circle background. Lesions at the threshold of ``slice_labels``."""
    indices = range(series.n_slices) if indices is None else indices
    xs, ys = series.grid()
    limit = max(phantom.LESION_MIN_RADIUS_PX * series.pixel_spacing, phantom.LESION_MIN_RADIUS_MM)
    outside = ~series.fov_mask()
    out = np.stack([phantom.label_plane(plan.anatomy, float(series.u[k]), xs, ys, limit) for k in indices])
    out[:, outside] = 0
    return out


def slice_labels(plan: StudyPlan, series: SeriesPlan) -> list[dict]:
    """Per-slice label records (inferior first), the ground truth of the labels CSV."""
    rows = []
    for k in range(series.n_slices):
        lesions = plan.lesions_on_slice(series, k)
        row = {"slice_index": k, "z_mm": f"{series.z[k]:.3f}",
               "region": phantom.region_of(float(series.u[k])), "lesion": int(bool(lesions))}
        for kind in phantom.LESION_TYPES:
            row[kind] = int(kind in lesions)
        rows.append(row)
    return rows
