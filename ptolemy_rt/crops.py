"""Crops of rotated rectangles, sampled straight from the input image (no whole-image rotation).

Coordinates are input pixels, x = column, y = row, origin at the centre of the top-left pixel. An angle
is counter-clockwise as seen on screen (y down): a crop at angle a has its columns running along
(cos a, -sin a) and its rows along (sin a, cos a) in the input.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["crop_matrix", "sample_affine", "sample_rotated_crop", "fit_to_canvas", "normalise"]


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
    corners = m @ np.array([[0, cols - 1, 0, cols - 1], [0, 0, rows - 1, rows - 1], [1, 1, 1, 1]], dtype=np.float64)
    if corners[0].min() < 0 or corners[0].max() > w - 1 or corners[1].min() < 0 or corners[1].max() > h - 1:
        j = np.arange(cols, dtype=np.float64)[None, :]
        i = np.arange(rows, dtype=np.float64)[:, None]
        x = m[0, 0] * j + m[0, 1] * i + m[0, 2]
        y = m[1, 0] * j + m[1, 1] * i + m[1, 2]
        out[(x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)] = 0.0
    return out


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
    r0, r_src, r_n = _placement(rows, size)
    c0, c_src, c_n = _placement(cols, size)
    out[r0 : r0 + r_n, c0 : c0 + c_n] = crop[r_src : r_src + r_n, c_src : c_src + c_n]
    return out


def _placement(n: int, size: int) -> tuple[int, int, int]:
    """(offset in canvas, offset in crop, length) of one axis."""
    if n > size:
        return 0, n // 2 - size // 2, size
    return (size - n + 1) // 2, 0, n


def normalise(crops: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(crops - mean) / std in float32 (std 0 treated as 1)."""
    scale = 1.0 / std if std > 0 else 1.0
    return ((crops - np.float32(mean)) * np.float32(scale)).astype(np.float32, copy=False)
