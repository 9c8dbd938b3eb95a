"""A parametric anatomical phantom in Hounsfield units, evaluated one axial plane at a time.

Coordinates follow the DICOM patient frame (LPS): ``x`` grows to the patient's left, ``y`` to the
posterior, ``z`` to the superior. In-plane coordinates here are millimetres from the body axis.
Along the body the phantom uses an anatomical height ``u`` (mm of a reference adult, 0 at the
pubic symphysis, about 960 at the vertex); a patient's ``z_scale`` maps ``u`` to millimetres.

Every structure is a smooth function of ``u``, so consecutive slices are continuous. The tissue
values follow the usual CT ranges (see FIELD-NOTES): air -1000, lung about -850, fat -100..-80,
water/fluid 0..15, soft tissue 30..60, enhanced blood 150..280, cancellous bone about 300,
cortical bone 900..1500.

The phantom is noise-free and unblurred; ``data.synth_study`` adds the scanner (blur, noise,
partial volume, field of view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Region boundaries in anatomical height u (mm). Region labels of a slice come from these.
REGION_BOUNDS = (("pelvis", 0.0, 180.0), ("abdomen", 180.0, 380.0), ("thorax", 380.0, 660.0),
                 ("neck", 660.0, 760.0), ("head", 760.0, 980.0))
REGIONS = ("head", "thorax", "abdomen", "pelvis")

# Study coverages in u (inclusive start, exclusive end). The neck is never covered, so every
# slice has one of the four labelled regions.
COVERAGE = {
    "chest": (385.0, 655.0),
    "abdomen_pelvis": (5.0, 375.0),
    "chest_abdomen_pelvis": (5.0, 655.0),
    "head": (765.0, 950.0),
}

LESION_TYPES = ("lung_nodule", "liver_lesion", "brain_hemorrhage")
# A slice is labelled as containing a lesion when the lesion's cross-section at the slice's
# central plane has at least this radius, in pixels and in millimetres.
LESION_MIN_RADIUS_PX = 2.0
LESION_MIN_RADIUS_MM = 2.0

AIR = -1000.0


def region_of(u: float) -> str:
    """Body region label of anatomical height ``u``."""
    for name, lo, hi in REGION_BOUNDS:
        if lo <= u < hi:
            return name
    return "head" if u >= 760 else "pelvis"


@dataclass
class Lesion:
    kind: str          # one of LESION_TYPES
    x: float           # mm, patient left +
    y: float           # mm, posterior +
    u: float           # anatomical height of the centre
    radius: float      # mm
    hu: float

    def cross_section_radius(self, u: float, z_scale: float) -> float:
        dz = (u - self.u) * z_scale
        return math.sqrt(self.radius**2 - dz**2) if abs(dz) < self.radius else 0.0


@dataclass
class Anatomy:
    """One patient's random anatomical parameters (all sampled by ``sample_anatomy``)."""

    kind: str                  # "torso" or "head"
    scale_x: float
    scale_y: float
    z_scale: float
    fat: float                 # subcutaneous fat thickness, mm
    muscle: float              # body-wall muscle thickness, mm
    contrast: bool             # portal-venous contrast enhancement
    rib_phase: float
    rib_spacing: float
    vessels: np.ndarray        # (n, 7): side, x0, y0, amp, freq, phase, radius (lung-relative)
    bowel: np.ndarray          # (n, 8): x0, y0, radius, u0, u1, content_hu, phase, freq
    lesions: list[Lesion] = field(default_factory=list)

    def to_u(self, z_anat_mm: float) -> float:
        return z_anat_mm / self.z_scale


# ----------------------------------------------------------------------------- drawing


class Canvas:
    """An HU image on a regular grid with painters that touch only a bounding box."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, fill: float = AIR):
        self.xs = xs.astype(np.float32)  # (W,) mm of column centres
        self.ys = ys.astype(np.float32)  # (H,) mm of row centres
        self.img = np.full((len(ys), len(xs)), fill, dtype=np.float32)
        self._dx = float(xs[1] - xs[0])
        self._dy = float(ys[1] - ys[0])

    def _box(self, cx: float, cy: float, r: float):
        c0 = max(0, int(math.floor((cx - r - self.xs[0]) / self._dx)))
        c1 = min(len(self.xs), int(math.ceil((cx + r - self.xs[0]) / self._dx)) + 1)
        r0 = max(0, int(math.floor((cy - r - self.ys[0]) / self._dy)))
        r1 = min(len(self.ys), int(math.ceil((cy + r - self.ys[0]) / self._dy)) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse_mask(self, cx, cy, a, b, angle=0.0):
        """(box, mask) of the ellipse with semi-axes a, b (mm) rotated by ``angle`` radians."""
        if a <= 0 or b <= 0:
            return None, None
        box = self._box(cx, cy, max(a, b))
        if box is None:
            return None, None
        X = self.xs[box[1]][None, :] - cx
        Y = self.ys[box[0]][:, None] - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            X, Y = c * X + s * Y, -s * X + c * Y
        return box, (X / a) ** 2 + (Y / b) ** 2 <= 1.0

    def ellipse(self, cx, cy, a, b, value, angle=0.0, where=None):
        """Paint ``value`` inside the ellipse; ``where(current)`` restricts to matching pixels."""
        box, mask = self.ellipse_mask(cx, cy, a, b, angle)
        if box is None:
            return
        region = self.img[box]
        if where is not None:
            mask = mask & where(region)
        region[mask] = value

    def rect(self, x0, y0, x1, y1, value):
        """Paint ``value`` on the axis-aligned rectangle [x0, x1] x [y0, y1] (mm)."""
        cols = (self.xs >= x0) & (self.xs <= x1)
        rows = (self.ys >= y0) & (self.ys <= y1)
        self.img[np.ix_(rows, cols)] = value

    def shell(self, cx, cy, a, b, thickness, outer, inner, angle=0.0):
        """An ellipse of ``outer`` HU with an ``inner`` HU core: cortical bone around marrow."""
        self.ellipse(cx, cy, a, b, outer, angle)
        self.ellipse(cx, cy, a - thickness, b - thickness, inner, angle)


def _interp(u: float, knots: tuple[float, ...], values: tuple[float, ...]) -> float:
    return float(np.interp(u, knots, values))


def _bump(u: float, lo: float, hi: float) -> float:
    """Smooth 0 -> 1 -> 0 profile over [lo, hi] (an organ's extent along the body)."""
    if u <= lo or u >= hi:
        return 0.0
    return math.sin(math.pi * (u - lo) / (hi - lo)) ** 0.6


# ----------------------------------------------------------------------------- geometry

_BODY_U = (0, 60, 150, 200, 300, 380, 450, 560, 640, 660, 760)
_BODY_A = (165, 172, 170, 158, 155, 160, 165, 160, 140, 70, 60)
_BODY_B = (110, 115, 112, 115, 118, 118, 112, 105, 90, 60, 55)


def body_axes(anat: Anatomy, u: float) -> tuple[float, float]:
    """Semi-axes (mm) of the body outline at height ``u``."""
    if anat.kind == "head":
        if u < 850:
            p = 0.85 + 0.15 * (u - 760) / 90
        else:
            p = math.sqrt(max(0.0, 1 - ((u - 850) / 112) ** 2))
        return 74 * anat.scale_x * p, 94 * anat.scale_y * p
    return (_interp(u, _BODY_U, _BODY_A) * anat.scale_x, _interp(u, _BODY_U, _BODY_B) * anat.scale_y)


def inner_axes(anat: Anatomy, u: float) -> tuple[float, float]:
    """Semi-axes of the body cavity (inside fat and muscle)."""
    a, b = body_axes(anat, u)
    wall = anat.fat + anat.muscle
    return max(a - wall, 10.0), max(b - wall, 10.0)


def lung_geometry(anat: Anatomy, u: float, side: int):
    """(cx, cy, a, b) of the lung on ``side`` (-1 right, +1 left) or None outside the lungs."""
    p = _interp(u, (385, 470, 590, 655), (0.0, 1.0, 1.0, 0.35))
    if p <= 0.05:
        return None
    ai, bi = inner_axes(anat, u)
    width = 0.40 if side > 0 else 0.43  # the heart takes room on the left
    return (side * 0.48 * ai, (0.05 + 0.35 * (1 - p)) * bi, width * ai * p ** 0.5, 0.80 * bi * p ** 0.7)


def liver_geometry(anat: Anatomy, u: float):
    p = _bump(u, 250, 430)
    if p <= 0.05:
        return None
    ai, bi = inner_axes(anat, u)
    return (-0.33 * ai, 0.0, 0.55 * ai * p, 0.70 * bi * p)


def brain_geometry(anat: Anatomy, u: float):
    a, b = body_axes(anat, u)
    if a < 25:
        return None
    return (0.0, 0.0, a - 11, b - 11)


# ----------------------------------------------------------------------------- sampling


def sample_anatomy(rng: np.random.Generator, kind: str, coverage: tuple[float, float],
                   lesion_rate: float = 0.5) -> Anatomy:
    """Random anatomy for a study of ``kind`` ("torso"/"head") covering ``coverage`` in u."""
    n_vessels = 28
    vessels = np.column_stack([
        rng.choice([-1.0, 1.0], n_vessels),         # side
        rng.uniform(-0.8, 0.8, n_vessels),         # x0, relative to the lung
        rng.uniform(-0.8, 0.8, n_vessels),         # y0
        rng.uniform(0.05, 0.25, n_vessels),        # wobble amplitude (relative)
        rng.uniform(1 / 60, 1 / 25, n_vessels),    # wobble frequency (1/mm)
        rng.uniform(0, 2 * math.pi, n_vessels),    # phase
        rng.uniform(1.2, 4.0, n_vessels),          # radius, mm
    ])
    n_bowel = 14
    u0 = rng.uniform(40, 250, n_bowel)
    bowel = np.column_stack([
        rng.uniform(-0.6, 0.6, n_bowel),            # x0 relative to the cavity
        rng.uniform(-0.55, 0.25, n_bowel),          # y0 (anterior half mostly)
        rng.uniform(9, 17, n_bowel),                # radius mm
        u0, u0 + rng.uniform(40, 120, n_bowel),     # extent along the body
        rng.choice([AIR, 15.0, -150.0], n_bowel, p=[0.4, 0.4, 0.2]),  # gas, fluid, stool
        rng.uniform(0, 2 * math.pi, n_bowel),
        rng.uniform(1 / 40, 1 / 20, n_bowel),
    ])
    anat = Anatomy(
        kind=kind,
        scale_x=float(rng.uniform(0.88, 1.12)),
        scale_y=float(rng.uniform(0.88, 1.12)),
        z_scale=float(rng.uniform(0.93, 1.07)),
        fat=float(rng.uniform(6, 28)),
        muscle=float(rng.uniform(8, 14)),
        contrast=bool(rng.random() < 0.5),
        rib_phase=float(rng.uniform(0, 28)),
        rib_spacing=float(rng.uniform(25, 30)),
        vessels=vessels,
        bowel=bowel,
    )
    anat.lesions = _sample_lesions(rng, anat, coverage, lesion_rate)
    return anat


def _point_in(rng, geom, frac):
    """A random point within ``frac`` of an organ ellipse (cx, cy, a, b)."""
    cx, cy, a, b = geom
    r, t = frac * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    return cx + r * a * math.cos(t), cy + r * b * math.sin(t)


def _sample_lesions(rng, anat: Anatomy, coverage, rate) -> list[Lesion]:
    lo, hi = coverage
    lesions: list[Lesion] = []
    if anat.kind == "head":
        if rng.random() < rate:
            u = rng.uniform(max(lo, 820), min(hi, 920))
            geom = brain_geometry(anat, u)
            x, y = _point_in(rng, geom, 0.5)
            lesions.append(Lesion("brain_hemorrhage", x, y, u, float(rng.uniform(6, 15)),
                                  float(rng.uniform(65, 85))))
        return lesions
    if hi > 470 and rng.random() < rate:
        for _ in range(int(rng.integers(1, 4))):
            u = rng.uniform(max(lo, 470), min(hi, 600))
            side = int(rng.choice([-1, 1]))
            x, y = _point_in(rng, lung_geometry(anat, u, side), 0.55)
            lesions.append(Lesion("lung_nodule", x, y, u, float(rng.uniform(3, 11)),
                                  float(rng.uniform(20, 50))))
    if lo < 330 and hi > 300 and rng.random() < rate:
        for _ in range(int(rng.integers(1, 3))):
            u = rng.uniform(max(lo, 300), min(hi, 360))
            geom = liver_geometry(anat, u)
            radius = float(min(rng.uniform(6, 18), 0.3 * min(geom[2], geom[3])))
            x, y = _point_in(rng, geom, 0.45)
            liver = 110.0 if anat.contrast else 60.0
            # Hypodense (cyst / metastasis) or hyperdense (enhancing) by at least 40 HU.
            delta = float(rng.choice([-1, 1]) * rng.uniform(40, 60))
            lesions.append(Lesion("liver_lesion", x, y, u, radius, liver + delta))
    return lesions


# ----------------------------------------------------------------------------- rendering


def render_plane(anat: Anatomy, u: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Noise-free HU image (H, W) of the plane at height ``u`` on grid ``xs`` x ``ys`` (mm)."""
    canvas = Canvas(xs, ys)
    if anat.kind == "head":
        _draw_head(canvas, anat, u)
    else:
        _draw_torso(canvas, anat, u)
    for lesion in anat.lesions:
        r = lesion.cross_section_radius(u, anat.z_scale)
        if r > 0:
            canvas.ellipse(lesion.x, lesion.y, r, r, lesion.hu)
    return canvas.img


def _draw_torso(c: Canvas, anat: Anatomy, u: float) -> None:
    blood = 180.0 if anat.contrast else 40.0
    a, b = body_axes(anat, u)
    # Patient table: carbon-fibre shell over foam, flat, under the back at a fixed height.
    y_table = 118 * anat.scale_y + anat.fat * 0.2 + 4
    c.rect(-230, y_table, 230, y_table + 3, 250.0)                  # top shell
    c.rect(-230, y_table + 3, 230, y_table + 38, -900.0)            # foam core
    c.rect(-230, y_table + 38, 230, y_table + 41, 250.0)            # bottom shell
    c.ellipse(0, 0, a, b, -100.0)                                   # subcutaneous fat
    c.ellipse(0, 0, a - anat.fat, b - anat.fat, 50.0)               # body-wall muscle
    ai, bi = inner_axes(anat, u)
    c.ellipse(0, 0, ai, bi, -85.0)                                  # visceral / mediastinal fat

    spine_y = (0.58 if u > 380 else 0.62) * bi
    spine_r = (17 if u > 380 else 20) * anat.scale_x
    if 100 <= u < 380:                                               # psoas
        pr = _interp(u, (100, 200, 300), (26, 18, 10))
        for side in (-1, 1):
            c.ellipse(side * (spine_r + pr * 0.8), spine_y - 4, pr, pr * 1.1, 50.0)
    for side in (-1, 1):                                             # paraspinal muscles
        c.ellipse(side * 30, spine_y + spine_r + 14, 24, 20, 50.0)

    if u < 200:
        _draw_pelvis(c, anat, u, ai, bi)
    if 150 <= u < 430:
        _draw_abdomen(c, anat, u, ai, bi, blood)
    if u >= 380:
        _draw_thorax(c, anat, u, ai, bi, blood)

    # Aorta and IVC run from the pelvis to the chest.
    if 190 <= u < 570:
        ax = _interp(u, (190, 380, 570), (0.04, 0.10, 0.14)) * ai
        c.ellipse(ax, spine_y - spine_r - 8, 12, 12, blood)
    if 190 <= u < 420:
        c.ellipse(-0.14 * ai, spine_y - spine_r - 6, 11, 9, blood - 10)

    if 100 <= u < 740:
        _draw_vertebra(c, u, spine_y, spine_r)


def _draw_vertebra(c: Canvas, u: float, y: float, r: float) -> None:
    period = 30.0 if u < 380 else 24.0
    c.ellipse(0, y + r + 10, 13, 12, 700.0)                          # neural arch
    c.ellipse(0, y + r + 26, 4, 10, 700.0)                           # spinous process
    c.ellipse(0, y + r + 9, 8, 8, 15.0)                              # canal (CSF)
    if (u % period) < 5.5:
        c.ellipse(0, y, r, r * 0.85, 90.0)                           # intervertebral disc
    else:
        c.shell(0, y, r, r * 0.85, 2.0, 1100.0, 280.0)               # body: cortex + marrow


def _draw_pelvis(c: Canvas, anat: Anatomy, u: float, ai: float, bi: float) -> None:
    if 95 <= u < 200:                                                # iliac wings, sacrum
        p = _bump(u, 90, 200)
        for side in (-1, 1):
            c.shell(side * 0.52 * ai, 0.22 * bi, 0.34 * ai * p + 4, 0.08 * bi + 3, 2.5,
                    900.0, 320.0, angle=side * 0.6)
        c.shell(0, 0.66 * bi, 0.26 * ai * p + 5, 0.11 * bi, 2.5, 900.0, 320.0)
    if 10 <= u < 75:                                                 # femoral heads
        for side in (-1, 1):
            c.shell(side * 0.62 * ai, 0.05 * bi, 24, 24, 3.0, 950.0, 300.0)
    if u < 30:                                                       # pubic symphysis
        for side in (-1, 1):
            c.shell(side * 16, -0.78 * bi, 18, 9, 2.0, 850.0, 300.0)
    p = _bump(u, 5, 100)
    if p > 0:                                                        # bladder
        c.ellipse(0, -0.35 * bi, 0.28 * ai * p, 0.30 * bi * p, 8.0)
    if u < 130:                                                      # rectum
        c.ellipse(0, 0.50 * bi, 15, 13, 40.0)
        c.ellipse(0, 0.50 * bi, 10, 8, AIR if (u // 23) % 2 == 0 else -150.0)


def _draw_abdomen(c: Canvas, anat: Anatomy, u: float, ai: float, bi: float, blood: float) -> None:
    for x0, y0, radius, u0, u1, content, phase, freq in anat.bowel:
        if u0 <= u < u1:
            x = x0 * ai + 14 * math.sin(u * freq + phase)
            y = y0 * bi + 14 * math.cos(u * freq * 1.3 + phase)
            c.ellipse(x, y, radius, radius, 40.0)
            c.ellipse(x, y, radius - 2.5, radius - 2.5, content)
    p = _bump(u, 205, 320)
    if p > 0:                                                        # kidneys (left higher)
        for side, shift in ((-1, 0.0), (1, 12.0)):
            q = _bump(u - shift, 205, 320)
            if q > 0:
                kx, ky = side * 0.42 * ai, 0.50 * bi
                c.ellipse(kx, ky, 0.17 * ai * q, 0.20 * bi * q, 180.0 if anat.contrast else 32.0)
                c.ellipse(kx - side * 0.06 * ai, ky, 0.06 * ai * q, 0.08 * bi * q, -60.0)
    p = _bump(u, 290, 380)
    if p > 0:                                                        # spleen
        c.ellipse(0.55 * ai, 0.30 * bi, 0.20 * ai * p, 0.30 * bi * p, 120.0 if anat.contrast else 50.0)
    p = _bump(u, 300, 390)
    if p > 0:                                                        # stomach with air-fluid level
        sx, sy, sa, sb = 0.30 * ai, -0.25 * bi, 0.25 * ai * p, 0.30 * bi * p
        c.ellipse(sx, sy, sa, sb, 40.0)
        c.ellipse(sx, sy, sa - 3, sb - 3, 10.0)
        # Supine patient: gas rises anteriorly (towards negative y), above a flat fluid level.
        box, mask = c.ellipse_mask(sx, sy, sa - 3, sb - 3)
        if box is not None:
            gas = mask & (c.ys[box[0]][:, None] < sy - 0.4 * (sb - 3))
            c.img[box][gas] = AIR
    geom = liver_geometry(anat, u)
    if geom is not None:
        liver = 110.0 if anat.contrast else 60.0
        c.ellipse(*geom, liver)
        cx, cy, la, lb = geom
        for k in range(3):                                            # hepatic veins
            c.ellipse(cx + (k - 1) * 0.35 * la, cy - 0.2 * lb, 4, 4, blood - 20)
        if 265 <= u < 305:                                           # gallbladder
            c.ellipse(-0.22 * ai, -0.35 * bi, 14, 18, 5.0)


def _draw_thorax(c: Canvas, anat: Anatomy, u: float, ai: float, bi: float, blood: float) -> None:
    if 390 <= u < 650:                                              # ribs and costal cartilage
        _draw_ribs(c, anat, u, ai, bi)
    if 430 <= u < 620:                                              # sternum
        c.shell(0, -bi - anat.muscle * 0.3, 15, 7, 2.0, 700.0, 260.0)
    for side in (-1, 1):
        geom = lung_geometry(anat, u, side)
        if geom is None:
            continue
        c.ellipse(*geom, -850.0)
        cx, cy, la, lb = geom
        is_lung = lambda region: region < -700  # noqa: E731  vessels only inside lung
        for v_side, x0, y0, amp, freq, phase, radius in anat.vessels:
            if v_side != side:
                continue
            x = cx + la * (x0 + amp * math.sin(u * freq + phase))
            y = cy + lb * (y0 + amp * math.cos(u * freq + phase))
            # Vessels taper towards the periphery.
            rr = radius * (1.2 - 0.7 * min(1.0, math.hypot(x0, y0)))
            c.ellipse(x, y, rr, rr, blood - 10 if anat.contrast else 35.0, where=is_lung)
    p = _bump(u, 395, 510)
    if p > 0:                                                        # heart
        hx, hy, ha, hb = 0.18 * ai, -0.22 * bi, 0.36 * ai * p + 8, 0.42 * bi * p + 8
        c.ellipse(hx, hy, ha + 4, hb + 4, -90.0)                    # pericardial fat
        c.ellipse(hx, hy, ha, hb, 45.0)                             # myocardium
        c.ellipse(hx - 4, hy, ha * 0.65, hb * 0.6, blood)           # chambers
    if 500 <= u < 570:                                              # ascending aorta, pulmonary trunk
        c.ellipse(-0.05 * ai, -0.30 * bi, 15, 15, blood)
        c.ellipse(0.12 * ai, -0.28 * bi, 13, 13, blood - 20)
    if 505 <= u < 610:                                              # superior vena cava
        c.ellipse(-0.16 * ai, -0.28 * bi, 10, 10, blood - 30)
    if 500 <= u < 655:                                              # trachea and bronchi
        if u >= 560:
            c.ellipse(0, -0.05 * bi, 9, 8, AIR)
        else:
            for side in (-1, 1):
                c.ellipse(side * 0.12 * ai, -0.02 * bi, 6, 6, AIR)


def _draw_ribs(c: Canvas, anat: Anatomy, u: float, ai: float, bi: float) -> None:
    """Ribs descend from the spine towards the front: bands in (angle, height)."""
    ra, rb = ai + anat.muscle * 0.35, bi + anat.muscle * 0.35
    box, outer = c.ellipse_mask(0, 0, ra, rb)
    if box is None:
        return
    X = c.xs[box[1]][None, :]
    Y = c.ys[box[0]][:, None]
    rho = np.sqrt((X / ra) ** 2 + (Y / rb) ** 2)
    # Angular distance from the posterior midline (posterior = +y).
    phi = np.abs(np.arctan2(X, Y))
    band = ((u + anat.rib_phase + 26.0 * phi) % anat.rib_spacing) < 10.0
    ring = (rho > 0.93) & (rho <= 1.0) & (phi > 0.3) & band
    marrow = (rho > 0.945) & (rho <= 0.985) & band
    region = c.img[box]
    cartilage = phi > 2.35
    region[ring & ~cartilage] = 1000.0
    region[marrow & ~cartilage & (phi > 0.3)] = 330.0
    region[ring & cartilage & (phi < 2.9)] = 120.0


def _draw_head(c: Canvas, anat: Anatomy, u: float) -> None:
    a, b = body_axes(anat, u)
    if a < 5:
        return
    c.ellipse(0, 0, a, b, 40.0)                                      # scalp
    c.ellipse(0, 0, a - 3, b - 3, 1500.0)                            # outer table
    c.ellipse(0, 0, a - 5.5, b - 5.5, 650.0)                         # diploe
    c.ellipse(0, 0, a - 8, b - 8, 1450.0)                            # inner table
    bx, by, ba, bb = brain_geometry(anat, u)
    c.ellipse(bx, by, ba, bb, 38.0)                                  # grey matter
    c.ellipse(bx, by, ba - 5, bb - 5, 28.0)                          # white matter
    c.ellipse(0, 0, 1.2, bb - 3, 60.0)                               # falx
    if u < 815:                                                      # skull base
        for side in (-1, 1):
            c.ellipse(side * 32, 12, 28, 7, 1600.0, angle=side * 0.7)   # petrous ridges
            c.ellipse(side * 30, -0.72 * b, 12, 12, 15.0)              # eye globes
            c.ellipse(side * 30, -0.72 * b - 9, 4, 2.5, 120.0)         # lenses
        c.ellipse(0, -0.55 * b, 16, 14, AIR)                          # nasal cavity / sinuses
    p = _bump(u, 830, 885)
    if p > 0:                                                        # lateral ventricles
        for side in (-1, 1):
            c.ellipse(side * 9, -6, 6 * p + 1, 26 * p + 2, 8.0, angle=side * 0.15)


# ----------------------------------------------------------------------------- segmentation labels

# Class ids of the label maps (``ctssl synth`` writes them as nnU-Net label volumes and DICOM SEG).
LABEL_CLASSES = {1: "lung", 2: "liver", 3: "brain", 4: "lung_nodule", 5: "liver_lesion", 6: "brain_hemorrhage"}
LUNG, LIVER, BRAIN = 1, 2, 3
LESION_CLASS = {"lung_nodule": 4, "liver_lesion": 5, "brain_hemorrhage": 6}


def label_plane(anat: Anatomy, u: float, xs: np.ndarray, ys: np.ndarray, lesion_min_radius: float) -> np.ndarray:
    """uint8 class ids (H, W) of the plane at height ``u`` (LABEL_CLASSES; 0 background).

    The organs are the ellipses ``render_plane`` paints them with, in its order, so a structure painted over an
    organ (the heart and great vessels over the lungs, the gallbladder, cava and spine over the liver, the skull
    base over the brain) is background there; vessels inside an organ belong to it. A lesion is labelled where
    its cross-section has at least ``lesion_min_radius`` mm, the threshold of the slice labels, so a slice's
    lesion flag and its mask agree.
    """
    canvas = Canvas(xs, ys, fill=0.0)
    if anat.kind == "head":
        _label_head(canvas, anat, u)
    else:
        _label_torso(canvas, anat, u)
    for lesion in anat.lesions:
        r = lesion.cross_section_radius(u, anat.z_scale)
        if r >= lesion_min_radius:
            canvas.ellipse(lesion.x, lesion.y, r, r, LESION_CLASS[lesion.kind])
    return canvas.img.astype(np.uint8)


def _label_torso(c: Canvas, anat: Anatomy, u: float) -> None:
    ai, bi = inner_axes(anat, u)
    if 150 <= u < 430:
        geom = liver_geometry(anat, u)
        if geom is not None:
            c.ellipse(*geom, LIVER)
            if 265 <= u < 305:
                c.ellipse(-0.22 * ai, -0.35 * bi, 14, 18, 0)                  # gallbladder
    if u >= 380:
        for side in (-1, 1):
            geom = lung_geometry(anat, u, side)
            if geom is not None:
                c.ellipse(*geom, LUNG)
        p = _bump(u, 395, 510)
        if p > 0:                                                             # heart with pericardial fat
            c.ellipse(0.18 * ai, -0.22 * bi, 0.36 * ai * p + 12, 0.42 * bi * p + 12, 0)
        if 500 <= u < 570:
            c.ellipse(-0.05 * ai, -0.30 * bi, 15, 15, 0)
            c.ellipse(0.12 * ai, -0.28 * bi, 13, 13, 0)
        if 505 <= u < 610:
            c.ellipse(-0.16 * ai, -0.28 * bi, 10, 10, 0)
        if 500 <= u < 655:
            if u >= 560:
                c.ellipse(0, -0.05 * bi, 9, 8, 0)
            else:
                for side in (-1, 1):
                    c.ellipse(side * 0.12 * ai, -0.02 * bi, 6, 6, 0)
    spine_y = (0.58 if u > 380 else 0.62) * bi
    spine_r = (17 if u > 380 else 20) * anat.scale_x
    if 190 <= u < 570:
        c.ellipse(_interp(u, (190, 380, 570), (0.04, 0.10, 0.14)) * ai, spine_y - spine_r - 8, 12, 12, 0)
    if 190 <= u < 420:
        c.ellipse(-0.14 * ai, spine_y - spine_r - 6, 11, 9, 0)
    if 100 <= u < 740:
        c.ellipse(0, spine_y + spine_r + 10, 13, 12, 0)
        c.ellipse(0, spine_y + spine_r + 26, 4, 10, 0)
        c.ellipse(0, spine_y, spine_r, spine_r * 0.85, 0)


def _label_head(c: Canvas, anat: Anatomy, u: float) -> None:
    a, b = body_axes(anat, u)
    geom = brain_geometry(anat, u) if a >= 5 else None
    if geom is None:
        return
    c.ellipse(*geom, BRAIN)
    if u < 815:                                                               # skull base
        for side in (-1, 1):
            c.ellipse(side * 32, 12, 28, 7, 0, angle=side * 0.7)
            c.ellipse(side * 30, -0.72 * b, 12, 12, 0)
        c.ellipse(0, -0.55 * b, 16, 14, 0)
