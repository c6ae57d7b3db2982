"""Crops of rotated rectangles, sampled straight from the input image (no whole-image rotation).

Coordinates are input pixels, x = column, y = row, origin at the centre of the top-left pixel. An angle
is counter-clockwise as seen on screen (y down): a crop at angle a has its columns running along
(cos a, -sin a) and its rows along (sin a, cos a) in the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

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
]


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


def sample_affine(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sample `image` bicubically at matrix @ (col, row, 1) for every pixel of a (rows, cols) crop.

    Points outside the image (beyond the outer pixel centres) are 0; points inside are interpolated with
    the image mirrored at its edges, so the zeros outside do not bleed into the edge pixels. This is
    scipy.ndimage's mode="constant" for splines, which the original's rotation used."""
    rows, cols = int(shape[0]), int(shape[1])
    if rows <= 0 or cols <= 0:
        return np.zeros((max(rows, 0), max(cols, 0)), dtype=np.float32)
    src = np.ascontiguousarray(image, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float64)
    out = cv2.warpAffine(
        src,
        m,
        (cols, rows),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    # Zero what lies outside [0, cols - 1] x [0, rows - 1] of the input. The corners decide whether any does.
    h, w = src.shape
    x0, y0 = m[0, 2], m[1, 2]
    xs = (x0, x0 + m[0, 0] * (cols - 1), x0 + m[0, 1] * (rows - 1), x0 + m[0, 0] * (cols - 1) + m[0, 1] * (rows - 1))
    ys = (y0, y0 + m[1, 0] * (cols - 1), y0 + m[1, 1] * (rows - 1), y0 + m[1, 0] * (cols - 1) + m[1, 1] * (rows - 1))
    if min(xs) < 0 or max(xs) > w - 1 or min(ys) < 0 or max(ys) > h - 1:
        _zero_outside_kernel()(out, m, float(w - 1), float(h - 1))
    return out


_ZERO = None


def _zero_outside_kernel():
    """Numba kernel (compiled on first use) setting to 0 the crop pixels whose source lies outside the image."""
    global _ZERO
    if _ZERO is None:
        from ._numba import CACHE, numba

        @numba.njit(cache=CACHE, nogil=True)
        def zero_outside(out, m, xmax, ymax):
            rows, cols = out.shape
            for i in range(rows):
                for j in range(cols):
                    x = m[0, 0] * j + m[0, 1] * i + m[0, 2]
                    y = m[1, 0] * j + m[1, 1] * i + m[1, 2]
                    if x < 0.0 or x > xmax or y < 0.0 or y > ymax:
                        out[i, j] = 0.0

        _ZERO = zero_outside
    return _ZERO


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
