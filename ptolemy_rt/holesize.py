"""The hole diameter of a holey film, measured on the image around the hole centres the pipeline found.

Neither network reports a hole's size (the U-Net marks hole centres; the crop is the lattice cell less a
margin), so the diameter is measured where it is visible: the mean radial intensity profile around the
best holes, out to half the lattice period, has its steepest step at the hole's edge (film and ice differ
in brightness). The films are made with one hole size, so one diameter per image is reported for every
hole; it is None when the edge is not clearly above the hole-to-hole scatter, or too soft to have one
radius (its width at half height over 45 % of the radius).

Measured with the true hole centres of synthetic images (make_medmag seeds 8-39): gold films within 1 %,
carbon films up to 17 % small (their edges are soft); 9 of 32 images give None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_EDGE_WIDTH", "MAX_HOLES", "N_ANGLES", "hole_diameter_px", "with_hole_diameter"]

MAX_HOLES = 64  # the best-scoring holes are enough for a mean profile; more only costs time
N_ANGLES = 72
STEP_PX = 0.5
# The edge step must stand this many standard errors above the hole-to-hole scatter of the contrast.
MIN_T = 5.0
# The edge (its width at half height) may be at most this fraction of the radius.
MAX_EDGE_WIDTH = 0.45


# cv2.remap's output is at most SHRT_MAX - 1 rows: the holes' sample rows go in chunks below that.
_REMAP_ROWS = 32766
# Rows of samples per remap call otherwise (16384 x N_ANGLES float32: ~14 MB with its maps), so that memory stays
# flat at any spacing (all holes at once took ~0.1 MB per pixel of spacing).
_CHUNK_ROWS = 16384


def _profiles(data: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Per-hole radial profiles (n_holes, n_radii), angles averaged; NaN where every sample is outside.

    All holes' samples go through one cv2.remap (a row of N_ANGLES samples per hole and radius), and the
    inside-the-image mask is made only for holes whose circle reaches within a pixel of the border (elsewhere
    every sample is inside): each sample and each row's sum is what it was hole by hole
    (tests/test_holesize.py keeps that loop as the reference).
    """
    import cv2

    angles = np.linspace(0.0, 2.0 * math.pi, N_ANGLES, endpoint=False)
    dx = np.outer(radii, np.cos(angles)).astype(np.float32)  # (n_radii, n_angles)
    dy = np.outer(radii, np.sin(angles)).astype(np.float32)
    rows, cols = data.shape
    n, n_radii = len(centres), len(radii)
    xy = np.asarray(centres, np.float64).reshape(n, 2).astype(np.float32)
    src = np.ascontiguousarray(data, dtype=np.float32)
    # |dx|, |dy| <= the largest radius (to float32 rounding): a margin of one pixel keeps every sample inside.
    reach = float(radii.max(initial=0.0)) + 1.0
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    near_edge = (x - reach < 0) | (x + reach > cols - 1) | (y - reach < 0) | (y + reach > rows - 1)
    out = np.empty(n * n_radii, dtype=np.float64)
    # Whole holes per call, under remap's row limit and a few megabytes of samples whatever the spacing.
    per = max(1, min(_REMAP_ROWS, _CHUNK_ROWS) // max(n_radii, 1))
    for h0 in range(0, n, per):
        h1 = min(n, h0 + per)
        mx = (dx + xy[h0:h1, 0, None, None]).reshape(-1, N_ANGLES)
        my = (dy + xy[h0:h1, 1, None, None]).reshape(-1, N_ANGLES)
        sampled = cv2.remap(src, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        count = np.full(len(mx), N_ANGLES, np.intp)
        near = near_edge[h0:h1]
        if near.any():
            at = np.repeat(near, n_radii)
            ex, ey = mx[at], my[at]
            inside = (ex >= 0) & (ex <= cols - 1) & (ey >= 0) & (ey <= rows - 1)
            sampled[at] = sampled[at] * inside
            count[at] = inside.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[h0 * n_radii : h1 * n_radii] = np.where(count > 0, sampled.sum(axis=1) / count, np.nan)
    return out.reshape(n, n_radii)


def hole_diameter_px(
    data: np.ndarray, centres: Sequence[tuple[float, float]], spacing_px: float | None
) -> float | None:
    """The holes' diameter in pixels from the mean radial profile around `centres` (x, y), or None."""
    if spacing_px is None or not math.isfinite(spacing_px) or spacing_px < 8 or len(centres) < 3:
        return None
    pts = np.asarray(centres, np.float64)[:MAX_HOLES]
    half = 0.5 * float(spacing_px)
    radii = np.arange(0.0, half + STEP_PX, STEP_PX)
    prof = _profiles(np.asarray(data), pts, radii)
    prof = prof[np.isfinite(prof).all(axis=1)]
    if len(prof) < 3:
        return None
    # Inside (centre fifth of the radius) and the ring just inside the cell's edge (film), hole by hole.
    inner = prof[:, radii <= 0.2 * half].mean(axis=1)
    outer = prof[:, radii >= 0.85 * half].mean(axis=1)
    mean = prof.mean(axis=0)
    # Light smoothing (about one pixel) so that pixel noise does not pick the edge.
    kernel = np.exp(-0.5 * (np.arange(-4, 5) * STEP_PX) ** 2)
    kernel /= kernel.sum()
    smooth = np.convolve(np.pad(mean, 4, mode="edge"), kernel, mode="valid")
    lo, hi = int(np.searchsorted(radii, 0.1 * half)), int(np.searchsorted(radii, 0.95 * half))
    if hi - lo < 3:
        return None
    step = float(inner.mean() - outer.mean())
    # An edge shows either as a step (hole brighter or darker than the film) or, on a film of the ice's
    # brightness, as a dark or bright rim; whichever is the stronger feature marks the edge.
    window = smooth[lo:hi]
    dip = min(inner.mean(), outer.mean()) - window.min()
    bump = window.max() - max(inner.mean(), outer.mean())
    if max(dip, bump) > abs(step):
        k = lo + int(np.argmin(window) if dip >= bump else np.argmax(window))
        per_hole = prof[:, k] - outer
        sign = -1.0 if dip >= bump else 1.0
        peak = sign * (smooth - (min if dip >= bump else max)(inner.mean(), outer.mean()))  # the rim, above 0
    else:
        per_hole = inner - outer
        peak = -np.gradient(smooth, STEP_PX) * np.sign(step)  # maximal where it steps from inside to outside
        k = lo + int(np.argmax(peak[lo:hi]))
    # A soft edge (defocus, a sloping film) has no one radius: its width at half height must stay small
    # against the radius, or the steepest point can sit well inside the hole.
    above = peak >= 0.5 * peak[k]
    left, right = k, k
    while left > 0 and above[left - 1]:
        left -= 1
    while right < len(peak) - 1 and above[right + 1]:
        right += 1
    if (right - left) * STEP_PX > MAX_EDGE_WIDTH * max(radii[k], STEP_PX):
        return None
    spread = per_hole.std(ddof=1)
    t = abs(per_hole.mean()) / (spread / math.sqrt(len(per_hole))) if spread > 0 else math.inf
    if not t >= MIN_T:
        return None
    # Parabolic refinement of the peak between samples.
    offset = 0.0
    if lo < k < hi - 1:
        a, b, c = peak[k - 1], peak[k], peak[k + 1]
        denom = a - 2 * b + c
        if denom < 0:
            offset = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return float(2.0 * (radii[k] + offset * STEP_PX))


def with_hole_diameter(result, data: np.ndarray):
    """A HoleResult with every hole's `diameter_px` measured on `data` (the image it was found in); others as given."""
    from dataclasses import replace

    if getattr(result, "kind", None) != "holes" or not result.holes:
        return result
    diameter = hole_diameter_px(data, [(h.x, h.y) for h in result.holes], result.spacing_px)
    if diameter is None:
        return result
    return replace(result, holes=tuple(replace(h, diameter_px=diameter) for h in result.holes))
