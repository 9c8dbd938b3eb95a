"""Place a segmentation mask on its image's slices by world coordinates, nearest neighbour, or refuse.

An image is described by its ``SliceGrid``: for each of its n source slices in ingest's canonical order
(inferior first; rows anterior -> posterior, columns patient right -> left, as data.dicom_series and
data.nifti_volume deliver them) the world position (DICOM LPS, mm) of pixel (0, 0), and the world steps of
one row and one column. A mask is a label array with an index -> world affine: a NIfTI label volume
(data.label_volume), or each frame of a DICOM SEG (data.dicom_seg).

Rule: for an image slice, the mask index of canonical pixel (r, c) is the affine function p + r a + c b.
The mask is placed when, over the whole slice (its four corners suffice, the map being affine), p + r a + c b
lies within ``tol`` voxel of the integer lattice point P + r A + c B, where P, A, B are p, a, b rounded and A, B
are unit steps along two different mask axes: then the nearest mask voxel of every pixel is exactly
P + r A + c B, and the mask is read there. So a mask stored in any voxel order or orientation (RAS or LPS,
transposed axes, reversed slice order, another origin corner) gives the same per-slice mask, and anything
else raises ``MaskError`` with its reason: other pixel or slice spacing, an offset of more than ``tol`` voxel,
axes that are not parallel, another extent (a mask must cover exactly the image's voxels; a DICOM SEG may
leave out slices, which are then background). A mask is placed exactly or not at all: never shifted,
never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class MaskError(ValueError):
    """A mask that cannot be placed on (or read for) its image; the message is the report's reason."""


@dataclass
class SliceGrid:
    """World geometry of an image's canonical slices: pixel (r, c) of slice k lies at
    ``origins[k] + r * row_step + c * col_step`` (LPS, mm)."""

    origins: np.ndarray          # (n, 3)
    row_step: np.ndarray         # (3,) world step of one row (towards posterior)
    col_step: np.ndarray         # (3,) world step of one column (towards patient left)
    shape: tuple[int, int]       # (H, W)

    @property
    def n(self) -> int:
        return len(self.origins)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, pointing superior (the direction slices are sorted in)."""
        normal = np.cross(self.col_step, self.row_step)
        return normal / np.linalg.norm(normal)

    def slice_spacing(self) -> float:
        """Median distance between consecutive slices along the normal (1 mm for a single slice)."""
        positions = self.origins @ self.normal
        steps = np.abs(np.diff(positions))
        return float(np.median(steps)) if len(steps) and np.median(steps) > 0 else 1.0


def nifti_grid(affine: np.ndarray, n: int, shape: tuple[int, int]) -> SliceGrid:
    """The grid of a canonical NIfTI volume [k, r, c] = data[c, r, k], ``affine`` its LPS voxel -> world
    affine (data.nifti_volume.CanonicalVolume.affine)."""
    affine = np.asarray(affine, dtype=np.float64)
    k = np.arange(n, dtype=np.float64)
    origins = affine[:3, 3][None, :] + k[:, None] * affine[:3, 2][None, :]
    return SliceGrid(origins, affine[:3, 1].copy(), affine[:3, 0].copy(), tuple(shape))


def dicom_grid(iop, pixel_spacing, positions, stored_shape: tuple[int, int], transpose: bool,
               flip_rows: bool, flip_cols: bool) -> SliceGrid:
    """The grid of a DICOM series' canonical slices (data.dicom_series.FrameLoader.load's orientation).

    ``iop``: Image Orientation (Patient) (row direction, then column direction); ``pixel_spacing``: (between
    rows, between columns) mm; ``positions``: (n, 3) Image Position (Patient) of each slice in canonical
    order; ``stored_shape``: (Rows, Columns). Stored pixel (i, j) lies at ipp + i * drow * col_dir +
    j * dcol * row_dir; canonical pixel (r, c) is stored pixel (c', r') if transposed else (r', c'), where
    r', c' undo the row and column flips.
    """
    row_dir, col_dir = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:], dtype=np.float64)
    d_row, d_col = (float(v) for v in pixel_spacing)
    rows, cols = stored_shape
    h, w = (cols, rows) if transpose else (rows, cols)

    def offset(r: int, c: int) -> np.ndarray:
        r2, c2 = (h - 1 - r if flip_rows else r), (w - 1 - c if flip_cols else c)
        i, j = (c2, r2) if transpose else (r2, c2)
        return i * d_row * col_dir + j * d_col * row_dir

    base = offset(0, 0)
    origins = np.asarray(positions, dtype=np.float64) + base[None, :]
    return SliceGrid(origins, offset(1, 0) - base, offset(0, 1) - base, (h, w))


def _unit_axis(v: np.ndarray) -> int | None:
    """The axis of a signed unit integer vector, or None."""
    nonzero = np.flatnonzero(v)
    return int(nonzero[0]) if len(nonzero) == 1 and abs(v[nonzero[0]]) == 1 else None


def index_map(inverse: np.ndarray, origin: np.ndarray, row_step: np.ndarray, col_step: np.ndarray,
              shape: tuple[int, int], tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, A, B): integer mask index of canonical pixel (r, c) is P + r A + c B (module docstring);
    ``inverse`` is the mask's world -> index affine (4, 4). Raises MaskError."""
    lin = inverse[:3, :3]
    p = lin @ origin + inverse[:3, 3]
    a, b = lin @ row_step, lin @ col_step
    big_a, big_b, big_p = np.rint(a), np.rint(b), np.rint(p)
    axis_a, axis_b = _unit_axis(big_a), _unit_axis(big_b)
    h, w = shape
    drift = max(np.abs(a - big_a).max() * (h - 1), np.abs(b - big_b).max() * (w - 1))
    if axis_a is None or axis_b is None or axis_a == axis_b or drift > tol:
        raise MaskError("mask axes or pixel spacing differ from the image's (an image row and column step are "
                        f"{np.round(a, 3).tolist()} and {np.round(b, 3).tolist()} mask voxels)")
    worst = max(float(np.abs((p - big_p) + r * (a - big_a) + c * (b - big_b)).max())
                for r in (0, h - 1) for c in (0, w - 1))
    if worst > tol:
        raise MaskError(f"mask voxels lie {worst:.2f} voxel off the image pixels (an offset; tolerance {tol:g} voxel)")
    return big_p.astype(np.int64), big_a.astype(np.int64), big_b.astype(np.int64)


def _read(labels: np.ndarray, idx: tuple[np.ndarray, np.ndarray, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """labels at P + r A + c B for every pixel (r, c): (H, W)."""
    big_p, big_a, big_b = idx
    h, w = shape
    r = np.arange(h)[:, None]
    c = np.arange(w)[None, :]
    corners = [big_p + rr * big_a + cc * big_b for rr in (0, h - 1) for cc in (0, w - 1)]
    if any((corner < 0).any() or (corner >= labels.shape).any() for corner in corners):
        raise MaskError(f"the mask (shape {tuple(labels.shape)}) does not cover the image slice ({h} x {w}): "
                        "another extent")
    coords = [big_p[d] + r * big_a[d] + c * big_b[d] for d in range(3)]
    return labels[coords[0], coords[1], coords[2]]


def place_volume(labels: np.ndarray, affine: np.ndarray, grid: SliceGrid, tol: float) -> np.ndarray:
    """uint8 (n, H, W) mask on ``grid`` from a label volume (I, J, K) with its index -> world (LPS) ``affine``.
    The volume must cover exactly the image's voxels (module docstring); raises MaskError."""
    if labels.ndim != 3:
        raise MaskError(f"a {labels.ndim}-D mask; a label volume is 3-D")
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    if grid.n > 1:
        step = inverse[:3, :3] @ (grid.origins[1] - grid.origins[0])
        if _unit_axis(np.rint(step)) is None or np.abs(step - np.rint(step)).max() > tol:
            raise MaskError("mask slice spacing or orientation differs from the image's (one image slice step is "
                            f"{np.round(step, 3).tolist()} mask voxels)")
    out = np.empty((grid.n, *grid.shape), dtype=np.uint8)
    planes = set()
    for k, origin in enumerate(grid.origins):
        idx = index_map(inverse, origin, grid.row_step, grid.col_step, grid.shape, tol)
        through = 3 - _unit_axis(idx[1]) - _unit_axis(idx[2])
        planes.add(int(idx[0][through]))
        out[k] = _read(labels, idx, grid.shape)
    if labels.size != grid.n * grid.shape[0] * grid.shape[1]:
        raise MaskError(f"the mask has {labels.size} voxels (shape {tuple(labels.shape)}), the image "
                        f"{grid.n} x {grid.shape[0]} x {grid.shape[1]}: another extent")
    if len(planes) != grid.n:
        raise MaskError("several image slices fall on one mask slice (other slice spacing or orientation)")
    return out


@dataclass
class MaskFrame:
    """One 2-D frame of a DICOM SEG: class ids and where its pixels lie."""

    labels: np.ndarray           # (rows, cols) uint8 class ids, 0 background
    position: np.ndarray         # (3,) world of pixel (0, 0), Image Position (Patient)
    iop: np.ndarray              # (6,) Image Orientation (Patient): row direction, column direction
    spacing: tuple[float, float]  # (between rows, between columns) mm


def place_frames(frames: list[MaskFrame], grid: SliceGrid, tol: float) -> np.ndarray:
    """uint8 (n, H, W) mask on ``grid`` from SEG frames (later frames win where they overlap; image slices
    without a frame are background). Every frame must lie on an image slice (within ``tol`` of the slice
    spacing) and cover it exactly; raises MaskError."""
    out = np.zeros((grid.n, *grid.shape), dtype=np.uint8)
    normal, thickness = grid.normal, grid.slice_spacing()
    for frame in frames:
        row_dir, col_dir = frame.iop[:3], frame.iop[3:]
        if abs(abs(float(np.dot(np.cross(row_dir, col_dir), normal))) - 1) > 1e-3:
            raise MaskError("a mask frame is not parallel to the image slices")
        affine = np.eye(4)
        affine[:3, 0] = row_dir * frame.spacing[1]           # index 0: column j
        affine[:3, 1] = col_dir * frame.spacing[0]           # index 1: row i
        affine[:3, 2] = normal * thickness                   # index 2: one image slice spacing
        affine[:3, 3] = frame.position
        inverse = np.linalg.inv(affine)
        offsets = grid.origins @ inverse[2, :3] + inverse[2, 3]
        k = int(np.argmin(np.abs(offsets)))
        if abs(offsets[k]) > tol:
            raise MaskError(f"a mask frame lies {abs(offsets[k]):.2f} slice spacings from the nearest image slice "
                            "(other slice positions or extent)")
        labels = frame.labels.T[:, :, None]                  # [j, i, 0]
        if labels.size != grid.shape[0] * grid.shape[1]:
            raise MaskError(f"a mask frame of {frame.labels.shape[0]} x {frame.labels.shape[1]} pixels on an image "
                            f"slice of {grid.shape[0]} x {grid.shape[1]}: another extent")
        idx = index_map(inverse, grid.origins[k], grid.row_step, grid.col_step, grid.shape, tol)
        values = _read(labels, idx, grid.shape)
        np.copyto(out[k], values, where=values > 0)
    return out
