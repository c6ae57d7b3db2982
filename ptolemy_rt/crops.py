"""All crop geometry: the rotated squares and lattice cells the CNNs see, sampled straight from the input image.

Square crops (boxes in the original's rotated frame, centred in a fixed canvas) and hole crops (lattice-frame
squares, centred or in the original's windows) are both built here, on one description of the original's
whole-image rotation (RotatedFrame), without ever rotating the image.

Coordinates are input pixels, x = column, y = row, origin at the centre of the top-left pixel. An angle
is counter-clockwise as seen on screen (y down): a crop at angle a has its columns running along
(cos a, -sin a) and its rows along (sin a, cos a) in the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from . import _workers
from ._orderstats import median

__all__ = [
    "crop_matrix",
    "sample_affine",
    "sample_rotated_crop",
    "fit_to_canvas",
    "canvas_placement",
    "normalise",
    "RotatedFrame",
    "rotated_frame",
    "frame_coords",
    "frame_matrix",
    "square_crops",
    "reduce_image",
    "square_crop_scale",
    "ReducedFrame",
    "reduced_frame",
    "reduced_square_crops",
    "crop_half_side",
    "HoleCrops",
    "hole_crops",
    "hole_crop_input",
    "hole_crop_inputs",
    "CROP_SIZE",
]

CROP_SIZE = 240  # side of the square CNN's input when its manifest does not say
# The original trims this many pixels from each side of a lattice cell to make a hole crop ...
CROP_MARGIN_PX = 10
# ... but a crop is never narrower than this fraction of the period: holes reach 70 % of it, and a crop
# that shows no film around the hole leaves the CNN nothing to tell a good hole from an empty one by
# (at a 40 px period the original's rule gives 20 px crops inside a 28 px hole).
CROP_MIN_FRACTION = 0.9


def crop_matrix(center_xy: tuple[float, float], angle_deg: float, width: int, height: int) -> np.ndarray:
    """2x3 matrix taking crop pixel (col j, row i, 1) to the input point (x, y) it samples."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    w0 = (width - 1) / 2.0
    h0 = (height - 1) / 2.0
    cx, cy = float(center_xy[0]), float(center_xy[1])
    return np.array(
        [
            [c, s, cx - w0 * c - h0 * s],
            [-s, c, cy + w0 * s - h0 * c],
        ],
        dtype=np.float64,
    )


def sample_affine(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int],
                  out: np.ndarray | None = None) -> np.ndarray:
    """Sample `image` bicubically at matrix @ (col, row, 1) for every pixel of a (rows, cols) crop.

    Points outside the image (beyond the outer pixel centres) are 0; points inside are interpolated with
    the image mirrored at its edges, so the zeros outside do not bleed into the edge pixels. This is
    scipy.ndimage's mode="constant" for splines, which the original's rotation used. `out`: a float32 buffer
    of that shape to sample into (crop after crop of one shape, without a fresh allocation each)."""
    rows, cols = int(shape[0]), int(shape[1])
    if rows <= 0 or cols <= 0:
        return np.zeros((max(rows, 0), max(cols, 0)), dtype=np.float32)
    src = np.ascontiguousarray(image, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float64)
    if out is not None and (out.shape != (rows, cols) or out.dtype != np.float32 or not out.flags.c_contiguous):
        out = None
    out = cv2.warpAffine(
        src,
        m,
        (cols, rows),
        dst=out,
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    # Zero what lies outside [0, cols - 1] x [0, rows - 1] of the input. The corners decide whether any does.
    h, w = src.shape
    x0, y0 = m[0, 2], m[1, 2]
    xs = (x0, x0 + m[0, 0] * (cols - 1), x0 + m[0, 1] * (rows - 1), x0 + m[0, 0] * (cols - 1) + m[0, 1] * (rows - 1))
    ys = (y0, y0 + m[1, 0] * (cols - 1), y0 + m[1, 1] * (rows - 1), y0 + m[1, 0] * (cols - 1) + m[1, 1] * (rows - 1))
    if min(xs) < 0 or max(xs) > w - 1 or min(ys) < 0 or max(ys) > h - 1:
        _zero_outside(out, m, float(w - 1), float(h - 1))
    return out


def _zero_outside(out: np.ndarray, m: np.ndarray, xmax: float, ymax: float) -> None:
    """Set to 0 the crop pixels whose source point m @ (col, row, 1) lies outside [0, xmax] x [0, ymax]."""
    rows, cols = out.shape
    if rows == 0 or cols == 0:
        return
    j = np.arange(cols, dtype=np.float64)
    i = np.arange(rows, dtype=np.float64)
    for k, top in ((0, xmax), (1, ymax)):
        # Each of the four limits is tested only where the crop's corners come within _EDGE_MARGIN of it: the
        # coordinate is affine over the crop, so its extremes are at the corners, and the rounding of either
        # evaluation (~1e-12 px) is far below the margin. A crop past one edge tests that edge alone.
        along, across = m[k, 0] * (cols - 1), m[k, 1] * (rows - 1)
        ends = (m[k, 2], m[k, 2] + along, m[k, 2] + across, m[k, 2] + along + across)
        low, high = min(ends) < _EDGE_MARGIN, max(ends) > top - _EDGE_MARGIN
        if not (low or high):
            continue
        # The coordinate (m_k1 i + m_k0 j) + m_k2, evaluated in that order, is monotone along each row and each
        # column (every rounding is), so a row holds an outside pixel only if one of its two end pixels is
        # outside, and likewise a column: the outside pixels lie in the box of the rows and columns whose
        # ends are, and only that box is evaluated (elementwise the same sums as over the whole crop; a crop
        # across an edge mostly has a corner beyond it, ~0.2 ms a 268 px crop in full).
        a, b, c = m[k, 1] * i, m[k, 0] * j, m[k, 2]
        row_ends = ((a + b[0]) + c, (a + b[-1]) + c)
        col_ends = ((a[0] + b) + c, (a[-1] + b) + c)
        for test, limit in ((np.less, 0.0), (np.greater, top)) if low and high else (
                ((np.less, 0.0),) if low else ((np.greater, top),)):
            hit_rows = np.flatnonzero(test(row_ends[0], limit) | test(row_ends[1], limit))
            hit_cols = np.flatnonzero(test(col_ends[0], limit) | test(col_ends[1], limit))
            if len(hit_rows) == 0 or len(hit_cols) == 0:
                continue
            r0, r1 = int(hit_rows[0]), int(hit_rows[-1]) + 1
            c0, c1 = int(hit_cols[0]), int(hit_cols[-1]) + 1
            v = np.add.outer(a[r0:r1], b[c0:c1])
            v += c
            out[r0:r1, c0:c1][test(v, limit)] = 0.0


# _zero_outside: source points this far (px) inside every edge at the crop's corners are inside at every pixel.
_EDGE_MARGIN = 1e-6


def sample_rotated_crop(
    image: np.ndarray, center_xy: tuple[float, float], angle_deg: float, width: int, height: int
) -> np.ndarray:
    """Upright (height, width) float32 crop of the rectangle centred at center_xy, rotated by angle_deg."""
    return sample_affine(image, crop_matrix(center_xy, angle_deg, width, height), (height, width))


def fit_to_canvas(crop: np.ndarray, size: int) -> np.ndarray:
    """Centre `crop` in a size x size zero canvas, cutting it centrally where it is larger.

    As the original: a side longer than `size` keeps [n//2 - size//2, n//2 + size//2); a shorter one is
    padded equally on both sides, the odd pixel going before (top or left)."""
    out = np.zeros((size, size), dtype=np.float32)
    rows, cols = crop.shape
    r0, r_src, r_n = canvas_placement(rows, size)
    c0, c_src, c_n = canvas_placement(cols, size)
    out[r0 : r0 + r_n, c0 : c0 + c_n] = crop[r_src : r_src + r_n, c_src : c_src + c_n]
    return out


def canvas_placement(n: int, size: int) -> tuple[int, int, int]:
    """Where fit_to_canvas puts one axis of length n: (offset in the canvas, offset in the crop, length)."""
    if n > size:
        return 0, n // 2 - size // 2, size
    return (size - n + 1) // 2, 0, n


def normalise(crops: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(crops - mean) / std in float32 (std 0 treated as 1)."""
    scale = 1.0 / std if std > 0 else 1.0
    return ((crops - np.float32(mean)) * np.float32(scale)).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------
# The original's rotated frame, without rotating the image


@dataclass(frozen=True)
class RotatedFrame:
    """The pixel lattice of scipy.ndimage.rotate(image, angle_deg, reshape=True), which the original cut its
    crops from, described rather than built: rotated pixel (r', c') shows input (row, col) =
    (cos r' + sin c' + off_row, -sin r' + cos c' + off_col). Sampling a crop on this lattice puts the network's
    input at the same sub-pixel position as the original's (half a pixel off moves square scores by ~0.02)."""

    angle_deg: float
    shape_in: tuple[int, int]
    shape_out: tuple[int, int]
    cos: float
    sin: float
    off_row: float
    off_col: float


def rotated_frame(shape: tuple[int, int], angle_deg: float) -> RotatedFrame:
    """The frame of an image of `shape` (rows, cols) rotated by angle_deg, laid out as scipy.ndimage.rotate does."""
    rad = math.radians(angle_deg)
    c, s = math.cos(rad), math.sin(rad)
    rows, cols = int(shape[0]), int(shape[1])
    rot = np.array([[c, s], [-s, c]])
    bounds = rot @ np.array([[0, 0, rows, rows], [0, cols, 0, cols]], dtype=np.float64)
    out = (np.ptp(bounds, axis=1) + 0.5).astype(int)
    off = (np.array([rows, cols], dtype=np.float64) - 1) / 2 - rot @ ((out - 1) / 2)
    return RotatedFrame(float(angle_deg), (rows, cols), (int(out[0]), int(out[1])), c, s, float(off[0]), float(off[1]))


def frame_coords(frame: RotatedFrame, points_xy: np.ndarray, shift: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(rows', cols') of input points in the rotated frame as the original computed them: the points moved by
    `shift` (its hulls had the origin at the top-left pixel's corner, ours at its centre), turned about
    (rows // 2, cols // 2) of the input and moved to (rows' // 2, cols' // 2) of the rotated image.

    The original used the shorter side's centre for both axes, which misplaces crops on non-square images;
    we use each axis's own (the same on square images)."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    rows, cols = frame.shape_in
    rows_out, cols_out = frame.shape_out
    dx = pts[:, 0] + shift - cols // 2
    dy = pts[:, 1] + shift - rows // 2
    return rows_out // 2 - frame.sin * dx + frame.cos * dy, cols_out // 2 + frame.cos * dx + frame.sin * dy


def frame_matrix(frame: RotatedFrame, row0: int, col0: int) -> np.ndarray:
    """2x3 matrix for sample_affine: crop pixel (col j, row i) is rotated pixel (row0 + i, col0 + j)."""
    c, s = frame.cos, frame.sin
    return np.array(
        [
            [c, -s, -s * row0 + c * col0 + frame.off_col],
            [s, c, c * row0 + s * col0 + frame.off_row],
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Square crops: the square CNN's inputs


def _hull_points(hulls: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All hulls' (x, y) vertices in one array and each hull's first index in it (for ufunc.reduceat)."""
    lengths = np.fromiter((len(h) for h in hulls), dtype=np.int64, count=len(hulls))
    return np.concatenate(hulls).reshape(-1, 2), np.concatenate(([0], np.cumsum(lengths)[:-1]))


def _box_windows(frame: RotatedFrame, points_xy: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """int64 (n, 6) per hull: (row, rows, top, col, cols, left): its box in the rotated frame with the
    original's int() bounds clipped to the rotated image, the part of it that fits the canvas, and where that
    goes in the canvas (canvas_placement, for all hulls at once)."""
    out = np.empty((len(starts), 6), dtype=np.int64)
    for axis, coord in enumerate(frame_coords(frame, points_xy)):
        lo, hi = np.minimum.reduceat(coord, starts), np.maximum.reduceat(coord, starts)
        # int() truncates towards zero, on lo >= 0 and on hi, which may be negative.
        a = np.trunc(np.maximum(lo, 0.0)).astype(np.int64)
        b = np.trunc(np.minimum(hi, float(frame.shape_out[axis]))).astype(np.int64)
        n = np.maximum(b - a, 0)
        cut = n > size  # canvas_placement
        out[:, 3 * axis] = a + np.where(cut, n // 2 - size // 2, 0)
        out[:, 3 * axis + 1] = np.where(cut, size, n)
        out[:, 3 * axis + 2] = np.where(cut, 0, (size - n + 1) // 2)
    return out


def square_crops(
    image: np.ndarray,
    hulls: Sequence[np.ndarray],
    theta_deg: float,
    mean: float,
    std: float,
    *,
    size: int = CROP_SIZE,
    scale: int = 1,
    min_side: int | None = None,
    frame: RotatedFrame | None = None,
    out: np.ndarray | None = None,
    written: list[tuple[int, int, int, int] | None] | None = None,
) -> np.ndarray:
    """(n, 1, size, size) float32 network inputs: each box sampled upright, centred, normalised by (mean, std).

    scale > 1 or min_side (a model's crop_scale, crop_min_side): the boxes at 1/f of the input's pixels, f =
    square_crop_scale(hulls, theta, scale, min_side), cut from the image averaged over f x f blocks and rotated
    once (reduced_frame, reduced_square_crops); frame and written are then not used.

    Each box is sampled on the lattice of the image rotated by theta (RotatedFrame) with the original's
    int() bounds, so the network sees what the original's whole-image rotation showed it, but only the
    box's pixels are interpolated.

    out, written: a buffer of at least n such inputs to fill instead of a new array (its first n are
    returned), and a list the caller keeps with it, empty at first: the buffer is then filled with the
    padding value (-mean / std), and the list records per slot the (top, rows, left, cols) its last crop
    wrote, so that the next call (same mean and std) resets only those pixels, not the whole canvas (a
    small square's crop is a few % of it).

    (The original's rotation rounded integer images to integers; doing so here changes scores by < 1e-3
    and brings them no closer, so we do not.)"""
    reduced = square_crop_source(image, hulls, theta_deg, mean, std, size=size, scale=scale, min_side=min_side)
    if reduced is not None:
        return reduced_square_crops(reduced, hulls, size=size, out=out)
    frame = frame or rotated_frame(image.shape, theta_deg)
    n = len(hulls)
    # Normalising after padding, as the original: the padding becomes (0 - mean) / std.
    inv = np.float32(1.0 / std if std > 0 else 1.0)
    shift = np.float32(mean)
    pad = _pad_value(mean, std)
    if out is None or out.shape[0] < n or out.shape[1:] != (1, size, size) or out.dtype != np.float32 \
            or not out.flags.c_contiguous:
        out, written = np.empty((n, 1, size, size), dtype=np.float32), None
    if written is None or len(written) != out.shape[0]:
        out.fill(pad)
        if written is None:
            written = []
        written[:] = [None] * out.shape[0]
    if n == 0:
        return out[:0]
    for k, (r0, nr, top, c0, nc, left) in enumerate(_box_windows(frame, *_hull_points(hulls), size).tolist()):
        stale = written[k]
        if stale is not None:
            out[k, 0, stale[0] : stale[0] + stale[1], stale[2] : stale[2] + stale[3]] = pad
        patch = sample_affine(image, frame_matrix(frame, r0, c0), (nr, nc))
        patch -= shift
        patch *= inv
        out[k, 0, top : top + nr, left : left + nc] = patch
        written[k] = (top, nr, left, nc)
    return out[:n]


def square_crop_source(image: np.ndarray, hulls: Sequence[np.ndarray], theta_deg: float, mean: float, std: float,
                       *, size: int, scale: int, min_side: int | None) -> ReducedFrame | None:
    """What a model's square crops are cut from: None for full-resolution crops (scale 1 and no min_side:
    square_crops samples each box from the image), else the ReducedFrame (at square_crop_scale's factor) that
    reduced_square_crops cuts them from. The one decision shared by training (square_crops) and the runtime
    (ptolemy_rt.squares), so both crop alike."""
    if scale <= 1 and min_side is None:
        return None
    f = square_crop_scale(hulls, theta_deg, scale, min_side)
    return reduced_frame(image, hulls, theta_deg, mean, std, f, size)


def reduce_image(image: np.ndarray, factor: int) -> np.ndarray:
    """float32 means of factor x factor pixel blocks (cv2 INTER_AREA, float32 sums: the mean to float32
    rounding, not always its correctly rounded value); a last partial row or column of blocks is dropped, so
    reduced pixel (i, j) is the mean of input rows f i .. f i + f - 1, columns likewise, and its centre is the
    input point f j + (f - 1) / 2, f i + (f - 1) / 2. ValueError when an axis is shorter than factor."""
    f = int(factor)
    src = np.asarray(image, dtype=np.float32)
    if f <= 1:
        return np.ascontiguousarray(src)
    h, w = src.shape[0] // f, src.shape[1] // f
    if h == 0 or w == 0:
        raise ValueError(f"reduce_image: a {src.shape[0]}x{src.shape[1]} image has no whole {f}x{f} block")
    # cv2 takes the strided view as it is (no copy of the image).
    return cv2.resize(src[: h * f, : w * f], (w, h), interpolation=cv2.INTER_AREA)


def square_crop_scale(hulls: Sequence[np.ndarray], theta_deg: float, max_scale: int, min_side: int | None) -> int:
    """Input pixels per crop pixel for one image's square crops: max_scale, or, with min_side, the largest
    whole factor up to max_scale that keeps the median square at least min_side crop pixels across (its side
    the square root of its theta-aligned box's area), so that fine meshes are not shrunk to a few pixels.
    Hulls without points are left out of the median; with none left, or a non-finite angle or side, max_scale."""
    top = max(1, int(max_scale))
    hulls = [h for h in hulls if len(h)]
    if min_side is None or len(hulls) == 0 or not math.isfinite(theta_deg):
        return top
    rad = math.radians(theta_deg)
    c, s = math.cos(rad), math.sin(rad)
    p, starts = _hull_points(hulls)
    p = p.astype(np.float64, copy=False)
    u = p[:, 0] * c + p[:, 1] * s
    v = p[:, 1] * c - p[:, 0] * s
    du = np.maximum.reduceat(u, starts) - np.minimum.reduceat(u, starts)
    dv = np.maximum.reduceat(v, starts) - np.minimum.reduceat(v, starts)
    side = float(median(np.sqrt(du * dv)))
    if not math.isfinite(side):
        return top
    return int(min(top, max(1, math.floor(side / int(min_side)))))


@dataclass(frozen=True)
class ReducedFrame:
    """What reduced square crops are cut from: the image averaged over factor x factor blocks (reduce_image),
    rotated on the original's lattice (RotatedFrame of the reduced image) and normalised; `image` holds frame
    rows row0.. and columns col0.. only (the span of the squares' boxes); `pad` is (0 - mean) / std; `windows`:
    the boxes (_reduced_windows) of the hulls it was made for, in their order (a batch's are rows of it)."""

    image: np.ndarray
    frame: RotatedFrame
    row0: int
    col0: int
    factor: int
    pad: float
    windows: np.ndarray | None = None


def _reduced_windows(frame: RotatedFrame, hulls: Sequence[np.ndarray], factor: int, size: int) -> np.ndarray:
    """_box_windows of the hulls in the frame of the image reduced by `factor` (reduce_image)."""
    if len(hulls) == 0:
        return np.zeros((0, 6), dtype=np.int64)
    points, starts = _hull_points(hulls)
    # Input point x is reduced point (x + 0.5) / f - 0.5 (reduce_image's pixel centres).
    return _box_windows(frame, (points.astype(np.float64, copy=False) + 0.5) / float(factor) - 0.5, starts, size)


def reduced_frame(image: np.ndarray, hulls: Sequence[np.ndarray], theta_deg: float, mean: float, std: float,
                  factor: int, size: int) -> ReducedFrame:
    """The reduced, rotated, normalised image the squares' crops (of side `size`) are cut from.

    One warp of the reduced image costs less than per-square warps once there are more than a few squares (a
    4096² atlas reduced by 4 is 1024²); only the span of the squares' boxes is warped. Bicubic, 0 outside the
    image, as sample_affine; normalised after, so the outside is the padding value as in square_crops.

    Memory: the span is at most the reduced image's rotated frame, (h cos + w sin) x (h sin + w cos) / f²
    float32, twice the image's pixels at 45°: at f = 1 (fine meshes) 511 MiB for an 8192² atlas, which stays
    under the pipeline's earlier geometry peak (a 30 px mesh at 45°: peak RSS 1.20 GiB geometry only, the same
    after this warp, 1.23 GiB with the CNN; issue 12's budget is 2 GB at 8192²). A 16k² fine-mesh atlas would
    need 2 GiB here: warp per batch of squares (full-width row bands, for the same bits) if such atlases come."""
    small = reduce_image(image, factor)
    frame = rotated_frame(small.shape, theta_deg)
    pad = _pad_value(mean, std)
    every = _reduced_windows(frame, hulls, factor, size)
    wins = every[(every[:, 1] > 0) & (every[:, 4] > 0)]
    if len(wins) == 0:
        return ReducedFrame(np.zeros((0, 0), np.float32), frame, 0, 0, int(factor), pad, every)
    r0, r1 = int(wins[:, 0].min()), int((wins[:, 0] + wins[:, 1]).max())
    c0, c1 = int(wins[:, 3].min()), int((wins[:, 3] + wins[:, 4]).max())
    rotated = np.empty((r1 - r0, c1 - c0), dtype=np.float32)
    # In blocks of rows: sample_affine's outside test holds float64 work arrays of its output's size.
    step = max(1, (1 << 20) // max(1, c1 - c0))
    for a in range(0, r1 - r0, step):
        n = min(step, r1 - r0 - a)
        block = sample_affine(small, frame_matrix(frame, r0 + a, c0), (n, c1 - c0), out=rotated[a : a + n])
        if not np.shares_memory(block, rotated):  # cv2 wrote elsewhere (it should not)
            rotated[a : a + n] = block
    inv = np.float32(1.0 / std if std > 0 else 1.0)
    rotated -= np.float32(mean)
    rotated *= inv
    return ReducedFrame(rotated, frame, r0, c0, int(factor), pad, every)


def reduced_square_crops(reduced: ReducedFrame, hulls: Sequence[np.ndarray], *, size: int,
                         out: np.ndarray | None = None, first: int | None = None) -> np.ndarray:
    """(n, 1, size, size) float32 network inputs cut from a ReducedFrame made for these hulls (or more): each
    hull's box on the reduced rotated lattice, centred in the canvas, the padding value elsewhere. out: a
    buffer of at least n such inputs to fill instead of a new array. first: these hulls are the frame's own from
    index `first` on (a batch of them): their boxes are read from reduced.windows, not computed again (each
    hull's box is its own: the same rows)."""
    n = len(hulls)
    if out is None or out.shape[0] < n or out.shape[1:] != (1, size, size) or out.dtype != np.float32 \
            or not out.flags.c_contiguous:
        out = np.empty((n, 1, size, size), dtype=np.float32)
    out = out[:n]
    out.fill(np.float32(reduced.pad))
    src = reduced.image
    if first is not None and reduced.windows is not None and first + n <= len(reduced.windows):
        wins = reduced.windows[first : first + n]
    else:
        wins = _reduced_windows(reduced.frame, hulls, reduced.factor, size)
    for k, (r0, nr, top, c0, nc, left) in enumerate(wins.tolist()):
        if nr > 0 and nc > 0:
            r, c = r0 - reduced.row0, c0 - reduced.col0
            out[k, 0, top : top + nr, left : left + nc] = src[r : r + nr, c : c + nc]
    return out


def _pad_value(mean: float, std: float) -> float:
    """The canvas padding after normalisation: (0 - mean) / std, in float32 as square_crops computes it."""
    inv = np.float32(1.0 / std if std > 0 else 1.0)
    return float(-np.float32(mean) * inv)


# ---------------------------------------------------------------------------------------------------
# Hole crops: one lattice cell per point


def crop_half_side(spacing_px: float) -> int:
    """Half the side of a hole crop: floor(spacing / 2) - 10 as the original, but at least floor(0.45 spacing).

    The two agree from a 200 px period up (the real example's 290 px gives the original's 270 px crops)."""
    return int(max(math.floor(spacing_px / 2.0) - CROP_MARGIN_PX,
                   max(1.0, math.floor(CROP_MIN_FRACTION * spacing_px / 2.0))))


@dataclass(frozen=True)
class HoleCrops:
    """Per hole: the 2x3 matrix from crop pixel (col, row, 1) to input (x, y), and the crop's (rows, cols)."""

    matrices: tuple[np.ndarray, ...]
    shapes: tuple[tuple[int, int], ...]
    vertices: tuple[tuple[tuple[float, float], ...], ...]
    area: float


def _ptolemy_window(frame: RotatedFrame, point: np.ndarray, half: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The original's crop window: an int()-bounded slice of the image rotated by -angle (scipy, enlarged).

    The original placed points with centres n // 2 in corner coordinates (frame_coords), so its crops sit
    up to a pixel off the lattice point and are clipped where they leave the enlarged rotated image.
    """
    rows_out, cols_out = frame.shape_out
    row_a, col_a = frame_coords(frame, point)
    row, col = float(row_a[0]), float(col_a[0])
    r0, r1 = int(max(row - half, 0)), int(min(row + half, rows_out))
    c0, c1 = int(max(col - half, 0)), int(min(col + half, cols_out))
    return frame_matrix(frame, r0, c0), (max(0, r1 - r0), max(0, c1 - c0))


def hole_crops(
    points: np.ndarray, angle_deg: float, spacing_px: float, shape: tuple[int, int], mode: str = "centred"
) -> HoleCrops:
    """Crop geometry per lattice point: a square of side 2 * crop_half_side in the lattice frame.

    "centred": centred on the point; "ptolemy": the original's window (see _ptolemy_window). The
    vertices are the ideal square in both, in the original's corner order.
    """
    from .options import CROP_MODES

    if mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {mode!r}")
    half = crop_half_side(spacing_px)
    side = 2 * half
    a = math.radians(angle_deg)
    ec = np.array([math.cos(a), -math.sin(a)])  # crop columns run along ec, rows along er
    er = np.array([math.sin(a), math.cos(a)])
    corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    if mode == "centred":
        return _centred_hole_crops(np.asarray(points, dtype=np.float64).reshape(-1, 2), angle_deg, half, ec, er,
                                   corners)
    # The original cut its windows from the image rotated by -angle.
    frame = rotated_frame(shape, -angle_deg) if mode == "ptolemy" else None
    matrices, shapes, vertices = [], [], []
    for p in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        if frame is None:
            matrices.append(crop_matrix((p[0], p[1]), angle_deg, side, side))
            shapes.append((side, side))
        else:
            m, sh = _ptolemy_window(frame, p, float(half))
            matrices.append(m)
            shapes.append(sh)
        vertices.append(tuple((float(p[0] + dc * ec[0] + dr * er[0]), float(p[1] + dc * ec[1] + dr * er[1]))
                              for dc, dr in corners))
    return HoleCrops(tuple(matrices), tuple(shapes), tuple(vertices), float(side * side))


def _centred_hole_crops(points: np.ndarray, angle_deg: float, half: int, ec: np.ndarray, er: np.ndarray,
                        corners: list[tuple[int, int]]) -> HoleCrops:
    """hole_crops in "centred" mode for all points at once: crop_matrix's and the vertices' arithmetic, in the
    same order on the same values (the same bits), without a Python loop over hundreds of points."""
    side = 2 * half
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    w0 = h0 = (side - 1) / 2.0
    n = len(points)
    m = np.empty((n, 2, 3), dtype=np.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, s, -s, c
    m[:, 0, 2] = points[:, 0] - w0 * c - h0 * s
    m[:, 1, 2] = points[:, 1] + w0 * s - h0 * c
    dc = np.array([k[0] for k in corners], dtype=np.float64)
    dr = np.array([k[1] for k in corners], dtype=np.float64)
    vx = points[:, :1] + dc * ec[0] + dr * er[0]
    vy = points[:, 1:] + dc * ec[1] + dr * er[1]
    vertices = tuple(tuple(zip(xs, ys)) for xs, ys in zip(vx.tolist(), vy.tolist()))
    return HoleCrops(tuple(m), ((side, side),) * n, vertices, float(side * side))


def hole_crop_input(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], min_size: int) -> np.ndarray:
    """One hole CNN input (float32): the crop, enlarged (bicubic) to min_size where smaller, normalised to zero
    mean and unit variance by its own statistics (computed in float64)."""
    return hole_crop_inputs(image, (matrix,), (shape,), min_size)[0, 0]


def hole_crop_inputs(image: np.ndarray, matrices: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]],
                     min_size: int, work: dict | None = None) -> np.ndarray:
    """(n, 1, rows, cols) float32 hole CNN inputs (hole_crop_input each) of crops of one shape.

    The crops are sampled and normalised in buffers shared by all of them (and by every call given the same
    `work` dict): fresh half-megabyte arrays per crop cost more in page faults than the arithmetic (the same
    values to the bit)."""
    if len(set(map(tuple, shapes))) > 1:
        raise ValueError(f"hole_crop_inputs needs crops of one shape, got {sorted(set(map(tuple, shapes)))}")
    n = len(matrices)
    rows, cols = (int(v) for v in shapes[0]) if n else (0, 0)
    size = (max(rows, min_size), max(cols, min_size))
    out = np.empty((n, 1) + size, dtype=np.float32)
    if n == 0:
        return out
    src = np.ascontiguousarray(image, dtype=np.float32)
    work = {} if work is None else work
    # The crops in runs that worker threads take in turn, each thread with its own buffers: every crop is
    # sampled and standardised with the same operations whichever thread does it (the same bits).
    per = max(1, _PART_PIXELS // (size[0] * size[1]))
    bounds = list(range(0, n, per)) + [n]
    threads = _workers.workers()
    key = (rows, cols) + size
    buffers = work.setdefault(key, [])
    while len(buffers) < threads:
        buffers.append((np.empty((rows, cols), dtype=np.float32), np.empty(size, dtype=np.float64),
                        np.empty(size, dtype=np.float64)))
    if rows >= min_size and cols >= min_size and rows * cols <= _BATCH_STANDARDISE_PIXELS:
        # Small crops (hundreds of them in a fine lattice): sampled straight into the batch and standardised
        # a run at a time, row by row of one (n, rows * cols) array (the same reductions per crop: the same
        # bits). sample_affine inlined: its corner test made for all crops at once (the same arithmetic), one
        # cv2 call per crop (its per-call Python was a third of the sampling on 40-60 px crops).
        m = np.asarray(matrices, dtype=np.float64).reshape(n, 2, 3)
        h, w = src.shape
        off = np.zeros(n, dtype=bool)
        for k, top in ((0, w - 1), (1, h - 1)):
            c0 = m[:, k, 2]
            ends = np.stack([c0, c0 + m[:, k, 0] * (cols - 1), c0 + m[:, k, 1] * (rows - 1),
                             c0 + m[:, k, 0] * (cols - 1) + m[:, k, 1] * (rows - 1)])
            off |= (ends.min(axis=0) < 0) | (ends.max(axis=0) > top)
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        off_list = off.tolist()

        def small(part: int, slot: int) -> None:
            a, b = bounds[part], bounds[part + 1]
            for k in range(a, b):
                dst = out[k, 0]
                crop = cv2.warpAffine(src, m[k], (cols, rows), dst=dst, flags=flags,
                                      borderMode=cv2.BORDER_REFLECT_101)
                if crop is not dst:  # cv2 wrote elsewhere (it should not)
                    dst[...] = crop
                if off_list[k]:
                    _zero_outside(dst, m[k], float(w - 1), float(h - 1))
            _standardise_rows(out[a:b].reshape(b - a, rows * cols))

        _workers.run_all(small, len(bounds) - 1, threads)
        return out

    def large(part: int, slot: int) -> None:
        sampled, x, sq = buffers[slot]
        for k in range(bounds[part], bounds[part + 1]):
            crop = sample_affine(src, matrices[k], (rows, cols), out=sampled)
            if rows < min_size or cols < min_size:
                crop = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
            _standardise(crop, out[k, 0], x, sq)

    _workers.run_all(large, len(bounds) - 1, threads)
    return out


# hole_crop_inputs hands its crops to the threads in runs of about this many pixels (or one crop): ~0.3 ms of
# work, where taking a run costs ~0.01 ms.
_PART_PIXELS = 1 << 15


# Crops of at most this many pixels are standardised as one batch (hole_crop_inputs): per-crop calls cost
# ~30 us each in numpy overheads, which is most of a 48x48 crop's time; a larger batch would only add a
# float64 copy of megabytes (at 268x268 the per-crop buffers are faster).
_BATCH_STANDARDISE_PIXELS = 128 * 128


def _standardise_rows(batch: np.ndarray) -> None:
    """_standardise of every row of an (n, m) float32 array, in place: the same operations per row (numpy
    reduces each row of a C-contiguous array along it as it reduces one crop's array), so the same bits.
    Done in groups of rows whose float64 copies stay in the cache (~half a megabyte each)."""
    n, m = batch.shape
    step = max(1, _STANDARDISE_GROUP // max(m, 1))
    x_buf = np.empty((min(step, n), m), dtype=np.float64)
    sq_buf = np.empty_like(x_buf)
    for a in range(0, n, step):
        rows = batch[a : a + step]
        x = x_buf[: len(rows)]
        np.copyto(x, rows)
        mean = x.mean(axis=1)
        np.subtract(x, mean[:, None], out=x)
        std = np.sqrt(np.multiply(x, x, out=sq_buf[: len(rows)]).sum(axis=1) / m)
        flat = ~(std > 0)
        np.divide(x, np.where(flat, 1.0, std)[:, None], out=rows, casting="same_kind")
        rows[flat] = 0.0


# _standardise_rows works through float64 groups of at most this many elements.
_STANDARDISE_GROUP = 1 << 16


def _standardise(crop: np.ndarray, out: np.ndarray, x: np.ndarray, sq: np.ndarray) -> None:
    """out = (crop - mean) / std in float64, rounded to float32 (0 where the crop has no contrast); x, sq: work
    buffers of crop's shape. numpy's mean and std, unrolled so that the mean and the deviations are computed
    once (same operations, same bits)."""
    np.copyto(x, crop)
    mean = x.mean()
    np.subtract(x, mean, out=x)
    std = float(np.sqrt(np.multiply(x, x, out=sq).sum() / x.size))
    # A crop with no contrast (wholly off the image) has nothing to normalise: zeros, not NaN.
    if not std > 0:
        out.fill(0.0)
        return
    np.divide(x, std, out=out)
