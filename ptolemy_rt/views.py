"""What kind of view an image is, before lattice targeting: one hole filling it, or a low-mag atlas.

Both are cheap shape tests on a bright/dark split (Otsu) of a shrunk, smoothed copy:

- a hole that fills the view (an EPU FoilHole image, or a med-mag image taken at too high a magnification)
  is a bright, round region whose diameter is a large part of the image: fewer than two lattice periods
  fit, so no lattice can be measured and any lattice fitted would invent holes;
- an atlas shows many bright grid squares (square, not round) behind dark bars.

Pure functions over arrays; nothing here knows about models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._orderstats import median, percentile

__all__ = ["LargeHole", "large_holes", "atlas_reason", "finite_float32", "percentile", "median", "SINGLE_HOLE_REASON"]

SINGLE_HOLE_REASON = "one hole fills the view: image magnification too high for lattice targeting"
# A bright round region this wide (share of the image's shorter side) is a hole too large for a lattice:
# holes span <= 0.7 periods, so with a diameter of 0.35 sides the period is at least half the side and
# fewer than two periods fit. (A quarter side flagged real lattice views with 2.5 periods across.)
_LARGE_HOLE_SIDE = 0.35
# Round: area over that of its enclosing circle (a disc ~0.9 after pixelation and smoothing, a square 0.64).
_ROUND_FILL = 0.8
# The work copy's longer side (px): a hole filling the view is then >= 50 px across.
_WORK_SIDE = 256
# Atlas: at least this many bright square-shaped regions, wider than this many work px (at 512 px), that
# are most of the bright regions that wide.
_ATLAS_MIN_SQUARES = 6
_ATLAS_WORK_SIDE = 512
_ATLAS_MIN_DIAMETER = 6.0
# A square fills >= 0.9 of its minimal rectangle and <= 0.64 (sharp corners) to ~0.78 (rounded) of its
# enclosing circle; a disc 0.785 and ~0.9+.
_SQUARE_RECT_FILL = 0.85
_SQUARE_ROUND_FILL = 0.82
# Shape tests on at most this many of the largest bright regions.
_MAX_SHAPES = 40


@dataclass(frozen=True)
class LargeHole:
    """A bright round region, wholly inside the image, too large for lattice targeting: centre (x, y) and
    diameter in input px."""

    x: float
    y: float
    diameter_px: float


def finite_float32(image: np.ndarray) -> np.ndarray:
    """`image` as float32 with NaN and infinities set to 0; the array itself (no copy) when float32 and finite.

    The finiteness test is one sum (an inf or NaN anywhere makes it non-finite; so may a huge finite image,
    which then takes the slow path and comes out unchanged): np.nan_to_num's four passes cost ~5 ms on a
    1024x1440 image, and the med-mag pipeline called it three times on an image already known finite."""
    data = np.asarray(image, dtype=np.float32)
    if np.isfinite(data.sum()):
        return data
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


def _split(image: np.ndarray, work_side: int, finite: bool = False) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(bright mask at work scale, the smoothed work copy, the work-to-input factor); None without contrast.
    finite: the image is known to be finite as float32 (finite_float32 would return it as it is)."""
    import cv2

    data = np.asarray(image, dtype=np.float32) if finite else finite_float32(image)
    rows, cols = data.shape
    f = max(1.0, max(rows, cols) / float(work_side))
    small = cv2.resize(data, (max(1, round(cols / f)), max(1, round(rows / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    lo, hi = (float(v) for v in percentile(small, (0.5, 99.5)))
    if not hi > lo:
        return None
    u8 = np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    _, bright = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return bright, small, f


def _regions(bright: np.ndarray, min_area: float, largest: int = _MAX_SHAPES):
    """The bright regions the shape tests look at: the `largest` of them by area, down to min_area px, less those
    touching the image's border (no test counts them). (labels, stats, centroids, their labels largest first)."""
    import cv2

    # Grana's block-based labelling (BBDT) gives the default's (Spaghetti's) labels, stats and centroids to the
    # bit: both scan 2x2 blocks in raster order and number the regions by their first block (integer stats,
    # centroids from integer sums). On one thread (a batch worker) it takes half the time (0.36-0.64 vs
    # 0.76-1.14 ms at 512x364); with more both run OpenCV's parallel versions at the same cost.
    # tests/test_refst_fastpath.py holds it to the default.
    n, labels, stats, cents = cv2.connectedComponentsWithStatsWithAlgorithm(bright, 8, cv2.CV_32S, cv2.CCL_GRANA)
    rows, cols = bright.shape
    areas = stats[1:, cv2.CC_STAT_AREA]
    # the shape tests cost a contour each: a med-mag view has hundreds of holes, and the largest regions
    # decide both tests
    order = 1 + np.argsort(-areas, kind="stable")[:largest]
    inside = []
    for i in order:
        if float(stats[i, cv2.CC_STAT_AREA]) < min_area:
            break
        x0, y0, w, h = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                    cv2.CC_STAT_HEIGHT))
        if not (x0 == 0 or y0 == 0 or x0 + w == cols or y0 + h == rows):
            inside.append(int(i))
    return labels, stats, cents, inside


def _shape(labels: np.ndarray, stats: np.ndarray, cents: np.ndarray, i: int):
    """Region i's (area, centroid xy, enclosing radius, min-rect area)."""
    import cv2

    area = float(stats[i, cv2.CC_STAT_AREA])
    x0, y0, w, h = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                cv2.CC_STAT_HEIGHT))
    sub = (labels[y0:y0 + h, x0:x0 + w] == i).astype(np.uint8)
    contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float32)
    _, radius = cv2.minEnclosingCircle(pts)
    (_, _), (rw, rh), _ = cv2.minAreaRect(pts)
    # pixel areas vs. contours through pixel centres: add half a pixel around
    return area, (float(cents[i, 0]), float(cents[i, 1])), float(radius) + 0.5, (rw + 1.0) * (rh + 1.0)


def large_holes(image: np.ndarray, *, finite: bool = False) -> list[LargeHole]:
    """Bright round regions wholly inside the image and at least 0.35 of its shorter side across (see
    the module docstring), largest first; [] for an ordinary view.

    finite: the caller knows the image is finite as float32 (a pass over it saved; the same result)."""
    split = _split(image, _WORK_SIDE, finite)
    if split is None:
        return []
    bright, _, f = split
    if bright.mean() > 0.85:  # nearly all bright: no region stands out
        return []
    side = min(bright.shape)
    min_d = _LARGE_HOLE_SIDE * side
    found = []
    # A region cut by the edge is left out: its roundness cannot be judged (ice gradients and grid-square
    # views give such regions too), so it is no evidence either way.
    labels, stats, cents, inside = _regions(bright, math.pi / 4 * min_d**2 * 0.5)
    for i in inside:
        diameter = 2.0 * math.sqrt(float(stats[i, 4]) / math.pi)  # CC_STAT_AREA
        if diameter < min_d:
            continue
        area, (cx, cy), radius, _ = _shape(labels, stats, cents, i)
        if area / (math.pi * radius**2) >= _ROUND_FILL:
            found.append(LargeHole(*_refine_centre(image, cx * f, cy * f, diameter * f)))
    return sorted(found, key=lambda h: (-h.diameter_px, h.y, h.x))


def _refine_centre(image: np.ndarray, x: float, y: float, diameter: float) -> tuple[float, float, float]:
    """Centre and diameter at full resolution: the centroid of the pixels above the midpoint of hole and
    surround, in a window of 1.5 diameters around the work-scale estimate."""
    data = np.asarray(image, dtype=np.float32)
    rows, cols = data.shape
    r = 0.75 * diameter
    r0, r1 = max(0, int(y - r)), min(rows, int(y + r) + 1)
    c0, c1 = max(0, int(x - r)), min(cols, int(x + r) + 1)
    win = data[r0:r1, c0:c1]
    yy, xx = np.mgrid[r0:r1, c0:c1]
    inner = (xx - x) ** 2 + (yy - y) ** 2 <= (0.35 * diameter) ** 2
    outer = (xx - x) ** 2 + (yy - y) ** 2 >= (0.6 * diameter) ** 2
    if not inner.any() or not outer.any():
        return x, y, diameter
    level = 0.5 * (float(median(win[inner])) + float(median(win[outer])))
    near = (xx - x) ** 2 + (yy - y) ** 2 <= (0.7 * diameter) ** 2
    sel = (win > level) & near
    if sel.sum() < 0.25 * math.pi * (0.25 * diameter) ** 2:
        return x, y, diameter
    return float(xx[sel].mean()), float(yy[sel].mean()), 2.0 * math.sqrt(float(sel.sum()) / math.pi)


def atlas_reason(image: np.ndarray, *, finite: bool = False) -> str | None:
    """A reason when the image looks like a low-mag atlas (many bright square regions behind dark bars), else
    None. finite: as large_holes'."""
    split = _split(image, _ATLAS_WORK_SIDE, finite)
    if split is None:
        return None
    bright, _, f = split
    labels, stats, cents, inside = _regions(bright, math.pi / 4 * _ATLAS_MIN_DIAMETER**2)
    if len(inside) < _ATLAS_MIN_SQUARES:
        return None
    square = []
    for k, i in enumerate(inside):
        # no atlas once the regions left cannot make up the squares it needs (a hole view's are round)
        left = len(inside) - k
        if len(square) + left < _ATLAS_MIN_SQUARES or len(square) + left < 0.5 * len(inside):
            return None
        s = _shape(labels, stats, cents, i)
        if s[0] / s[3] >= _SQUARE_RECT_FILL and s[0] / (math.pi * s[2] ** 2) < _SQUARE_ROUND_FILL:
            square.append(s)
    if len(square) < _ATLAS_MIN_SQUARES or len(square) < 0.5 * len(inside):
        return None
    side = float(median([math.sqrt(s[0]) for s in square])) * f
    return (f"looks like a low-mag atlas ({len(square)} bright squares ~{side:.0f} px wide behind dark grid bars), "
            "not a med-mag hole view: use `squares`")
