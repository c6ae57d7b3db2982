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
from typing import NamedTuple

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
    levels = _levels(image, work_side, finite)
    if levels is None:
        return None
    u8, small, f = levels
    _, bright = _otsu(u8)
    return bright, small, f


def _levels(image: np.ndarray, work_side: int, finite: bool = False) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(the smoothed work copy stretched to uint8 between its 0.5th and 99.5th percentiles, the copy itself, the
    work-to-input factor); None without contrast."""
    import cv2

    data = np.asarray(image, dtype=np.float32) if finite else finite_float32(image)
    rows, cols = data.shape
    f = max(1.0, max(rows, cols) / float(work_side))
    small = cv2.resize(data, (max(1, round(cols / f)), max(1, round(rows / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    lo, hi = (float(v) for v in percentile(small, (0.5, 99.5)))
    if not hi > lo:
        return None
    return np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8), small, f


def _otsu(u8: np.ndarray) -> tuple[float, np.ndarray]:
    """(Otsu's threshold of a uint8 array, the mask above it as uint8 0 / 1)."""
    import cv2

    t, above = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t), above


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


class _Shape(NamedTuple):
    """A bright region's measures (_shape), in work px."""

    area: float  # pixels
    centroid: tuple[float, float]  # xy
    radius: float  # of the enclosing circle, + 0.5 (pixel areas vs. contours through pixel centres)
    rect: float  # min-area rectangle's area, + 1 px each way
    centre: tuple[float, float]  # the enclosing circle's, xy


def _shape(labels: np.ndarray, stats: np.ndarray, cents: np.ndarray, i: int) -> _Shape:
    """Region i's (area, centroid xy, enclosing radius, min-rect area, enclosing centre xy), in work px."""
    import cv2

    area = float(stats[i, cv2.CC_STAT_AREA])
    x0, y0, w, h = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                cv2.CC_STAT_HEIGHT))
    sub = (labels[y0:y0 + h, x0:x0 + w] == i).astype(np.uint8)
    contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float32)
    (ex, ey), radius = cv2.minEnclosingCircle(pts)
    (_, _), (rw, rh), _ = cv2.minAreaRect(pts)
    # pixel areas vs. contours through pixel centres: add half a pixel around
    return _Shape(area, (float(cents[i, 0]), float(cents[i, 1])), float(radius) + 0.5, (rw + 1.0) * (rh + 1.0),
                  (float(ex) + x0, float(ey) + y0))


def _may_span(stats: np.ndarray, i: int, min_d: float) -> bool:
    """Whether region i's bounding box leaves room for an enclosing circle (+ 0.5, _shape's) min_d across."""
    import cv2

    return math.hypot(float(stats[i, cv2.CC_STAT_WIDTH]), float(stats[i, cv2.CC_STAT_HEIGHT])) + 1.0 >= min_d


def large_holes(image: np.ndarray, *, finite: bool = False) -> list[LargeHole]:
    """Bright round regions wholly inside the image and at least 0.35 of its shorter side across (see
    the module docstring), largest first; [] for an ordinary view.

    finite: the caller knows the image is finite as float32 (a pass over it saved; the same result)."""
    levels = _levels(image, _WORK_SIDE, finite)
    if levels is None:
        return []
    u8, _, f = levels
    t, bright = _otsu(u8)
    found, cut = _large_in(image, bright, f)
    if found or not cut:
        return found
    # Holes differ in brightness (each its own ice): where a brighter neighbour cut by the edge set the split,
    # the hole in view went dark with the film (held-out single-hole view 13604003: 460 px, between a bright
    # and a dark neighbour). The split of the dark part (a third level) shows it. Only there (`cut`: a bright
    # region the shape tests would look at, were it not cut by the edge): an ordinary lattice view has none,
    # and the second split cost it 1.8x (4096x5760: 0.29 -> 0.52 s CPU).
    darker = u8[u8 <= t]
    if darker.size == 0:
        return []
    low, _ = _otsu(np.ascontiguousarray(darker).reshape(-1, 1))
    if not low < t:
        return []
    # The low split takes in a hole's blurred rim (and, with no third level, splits the film's noise): the
    # hole its rim traces must be min_d across on its own (a clear disc of 0.33 sides grew to 0.35 there).
    min_d = _LARGE_HOLE_SIDE * min(u8.shape) * f
    return [h for h in _large_in(image, (u8 > low).astype(np.uint8), f)[0] if h.diameter_px >= min_d]


def _large_in(image: np.ndarray, bright: np.ndarray, f: float) -> tuple[list[LargeHole], bool]:
    """large_holes on one bright/dark split (bright: uint8 0 / 1 at work scale, f work-to-input), and whether a
    region as large as those the shape tests look at is cut by the image's edge (left out)."""
    if bright.mean() > 0.85:  # nearly all bright: no region stands out
        return [], False
    side = min(bright.shape)
    min_d = _LARGE_HOLE_SIDE * side
    found = []
    # A region cut by the edge is left out: its roundness cannot be judged (ice gradients and grid-square
    # views give such regions too), so it is no evidence either way.
    min_area = math.pi / 4 * min_d**2 * 0.5
    labels, stats, cents, inside = _regions(bright, min_area)
    x0, y0 = stats[1:, 0], stats[1:, 1]  # CC_STAT_LEFT, CC_STAT_TOP
    x1, y1 = x0 + stats[1:, 2], y0 + stats[1:, 3]  # + CC_STAT_WIDTH, CC_STAT_HEIGHT
    rows, cols = bright.shape
    cut = bool(np.any((stats[1:, 4] >= min_area) & ((x0 == 0) | (y0 == 0) | (x1 == cols) | (y1 == rows))))
    partial = []  # (label, its _shape where the first look measured it)
    for i in inside:
        diameter = 2.0 * math.sqrt(float(stats[i, 4]) / math.pi)  # CC_STAT_AREA
        if diameter < min_d:
            partial.append((i, None))
            continue
        shape = _shape(labels, stats, cents, i)
        cx, cy = shape.centroid
        if shape.area / (math.pi * shape.radius**2) >= _ROUND_FILL:
            found.append(LargeHole(*_edge_circle(image, *_refine_centre(image, cx * f, cy * f, diameter * f))))
        else:
            partial.append((i, shape))
    if not found:
        # A region whose bounding box's diagonal + 1 is under min_d has 2 * _shape's radius (its contour's
        # enclosing circle, + 0.5) under min_d too, which _dim_hole refuses first: not measured.
        found = [h for h in (_dim_hole(image, _shape(labels, stats, cents, i) if shape is None else shape, f, min_d)
                             for i, shape in partial if shape is not None or _may_span(stats, i, min_d))
                 if h is not None]
    return sorted(found, key=lambda h: (-h.diameter_px, h.y, h.x)), cut


# _dim_hole: a bright region filling at least this share of its enclosing circle (a half disc: 0.5), and less
# than _SQUARE_RECT_FILL of its min-area rectangle (a half disc: 0.79; a grid square filling the view, ~1, is
# no hole and not worth tracing) ...
_PART_FILL = 0.4
# ... is the bright part of a hole where the rim traced around that circle lies on a circle nearly all round
# (at least this share of the traced rays: the fringed rims of the tests' wedge holes 0.91-0.93, tuning view
# 9804007 1.0; a disc segment of 0.5-0.75 with no rim on its dark side 0.56-0.67, a misplaced fit to an
# unfringed hole 0.73-0.76) ...
_RIM_SHARE = 0.85
# ... or, traced stepping up or down, on both sides: at least _RIM_PART_SHARE of the rays on the circle and at
# least _RIM_RISING of those rising to the film (the hole's part darker than the film: tuning view 12304004,
# 0.69 and 0.21, whose dim side matches the film over a fifth of the rim; a segment with no rim on its dark
# side never rises) ...
_RIM_PART_SHARE = 0.6
_RIM_RISING = 0.1
# ... at a median distance off it of at most this share of its diameter (the real and tuning holes: < 0.005; a
# disc crossed by a bar, the bar's edges traced, 0.013; an ellipse of aspect 1.3, as a tear, ~0.06).
_RIM_OFF = 0.008


def _dim_hole(image: np.ndarray, shape: _Shape, f: float, min_d: float) -> LargeHole | None:
    """The hole a bright region (its _shape) is the brighter part of (the circle through the rim around its
    enclosing circle), wholly inside the image and at least min_d work px across; None where there is none.

    Ice thickening across a hole (and the illumination falling off) can leave part of it darker than the
    film: the bright split then holds a segment of it, too small or not round (tuning single-hole views
    12304004 and 9804007: the upper half of a 477 px hole, no targets), and the enclosing circle of a segment
    at least half the disc is the hole's. Its rim shows all round where defocus fringes it; else it falls
    from the bright part to the film and rises from the dim part to it (traced either way: the steepest
    step, up or down, along each ray; the fringe's own steps would pull a fringed rim off by ~2 px)."""
    area, radius, rect, (ex, ey) = shape.area, shape.radius, shape.rect, shape.centre
    if 2.0 * radius < min_d or area / (math.pi * radius**2) < _PART_FILL or area / rect >= _SQUARE_RECT_FILL:
        return None
    rows, cols = image.shape
    # work px (pixel centres) to input px
    x, y, d = (ex + 0.5) * f - 0.5, (ey + 0.5) * f - 0.5, 2.0 * radius * f
    # both traces read the same smoothed copy: made once (a region as large as the view's: the whole view shrunk)
    window = _rim_window(image, x, y, d)
    for either_way in (False, True):
        rim = _rim_circle(image, x, y, d, either_way, window)
        if rim is None:
            continue
        x, y, d, share, off, rising = rim
        round_all = share >= _RIM_SHARE or (share >= _RIM_PART_SHARE and rising >= _RIM_RISING)
        if round_all and off <= _RIM_OFF * d and d >= min_d * f and (
                d / 2 <= x <= cols - 1 - d / 2 and d / 2 <= y <= rows - 1 - d / 2):
            return LargeHole(x, y, d)
    return None


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


# _edge_circle: rays from the centre, each searched for its steepest bright-to-dark step between these shares of
# the diameter (the hole's rim lies at ~0.5; estimates from the bright pixels are within 0.1 of the truth)...
_EDGE_RAYS = 180
_EDGE_FROM, _EDGE_TO = 0.3, 0.75
# ... on a copy smoothed by this sigma (px) and shrunk so the diameter is at most this many px (a 4096 px view's
# hole costs no more than an 800 px one's).
_EDGE_SIGMA = 2.0
_EDGE_WORK_DIAMETER = 800.0


def _edge_circle(image: np.ndarray, x: float, y: float, diameter: float) -> tuple[float, float, float]:
    """Centre and diameter of the circle through the hole's rim, from an estimate (x, y, diameter); the
    estimate itself where the rim cannot be traced (mostly outside the image, or not a circle): _rim_circle."""
    rim = _rim_circle(image, x, y, diameter)
    return (x, y, diameter) if rim is None else rim[:3]


def _rim_window(image: np.ndarray, x: float, y: float, diameter: float):
    """_rim_circle's smoothed, shrunk copy of the image around an estimate (x, y, diameter), with its place
    (win, r0, r1, c0, c1, f); None where it is too small to trace."""
    import cv2

    rows, cols = image.shape
    f = max(1.0, diameter / _EDGE_WORK_DIAMETER)
    reach = _EDGE_TO * diameter + 4.0 * _EDGE_SIGMA * f + 2.0
    r0, r1 = max(0, int(y - reach)), min(rows, int(y + reach) + 2)
    c0, c1 = max(0, int(x - reach)), min(cols, int(x + reach) + 2)
    if r1 - r0 < 8 or c1 - c0 < 8:
        return None
    win = np.asarray(image[r0:r1, c0:c1], dtype=np.float32)
    if f > 1.0:
        win = cv2.resize(win, (max(1, round((c1 - c0) / f)), max(1, round((r1 - r0) / f))),
                         interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(win, (0, 0), _EDGE_SIGMA), r0, r1, c0, c1, f


def _rim_circle(image: np.ndarray, x: float, y: float, diameter: float, either_way: bool = False,
                window=False) -> tuple[float, float, float, float, float, float] | None:
    """(centre x, y, diameter, share of the traced rays (those inside the image) whose rim lies on the circle,
    their median distance off it in input px, the share of those rising outward) of the circle through the
    hole's rim, from an estimate (x, y, diameter); None where the rim cannot be traced.

    The bright pixels' centroid (_refine_centre) is pulled toward the hole's brighter side where the ice in it
    thickens across the hole (held-out single-hole view 11004002: 45 px off, its dim third cut away). The rim
    is where the image falls steepest from hole to film whatever the ice's brightness: along each of
    _EDGE_RAYS rays the steepest descent (to a fraction of a pixel), then a least-squares circle through them
    with rays off it (a neighbour, contamination) left out. either_way: the steepest step up or down (a hole
    partly darker than its film rises to it there). window: _rim_window's for the same estimate, where the
    caller made it (the default False: make it here)."""
    import cv2

    rows, cols = image.shape
    if window is False:
        window = _rim_window(image, x, y, diameter)
    if window is None:
        return None
    win, r0, r1, c0, c1, f = window
    fy, fx = (r1 - r0) / win.shape[0], (c1 - c0) / win.shape[1]  # work px -> input px, per axis
    xs, ys = (x - c0) / fx - 0.5 + 0.5 / fx, (y - r0) / fy - 0.5 + 0.5 / fy  # pixel centres of the shrunk copy
    radial = np.arange(_EDGE_FROM * diameter / f, _EDGE_TO * diameter / f, 0.5)
    if len(radial) < 5:
        return None
    theta = np.linspace(0.0, 2.0 * math.pi, _EDGE_RAYS, endpoint=False)
    cos, sin = np.cos(theta), np.sin(theta)
    px = xs + radial[None, :] * cos[:, None]
    py = ys + radial[None, :] * sin[:, None]
    h, w = win.shape
    # rays wholly inside the window, away from where the smoothing met the window's cut edge
    margin = 2.0 * _EDGE_SIGMA
    inside = ((px.min(axis=1) >= (margin if c0 > 0 else 0)) & (py.min(axis=1) >= (margin if r0 > 0 else 0))
              & (px.max(axis=1) <= w - 1 - (margin if c1 < cols else 0))
              & (py.max(axis=1) <= h - 1 - (margin if r1 < rows else 0)))
    if inside.sum() < _EDGE_RAYS // 2:
        return None
    profiles = cv2.remap(win, px.astype(np.float32), py.astype(np.float32), cv2.INTER_LINEAR)[inside]
    slope = np.diff(profiles, axis=1)  # slope[k]: between radial[k] and radial[k + 1]
    rising = None
    if either_way:
        rising = slope.argmax(axis=1)
        rising = slope[np.arange(len(rising)), rising] > -slope.min(axis=1)
        slope = -np.abs(slope)
    k = np.clip(slope.argmin(axis=1), 1, slope.shape[1] - 2)
    i = np.arange(len(k))
    before, at, after = slope[i, k - 1], slope[i, k], slope[i, k + 1]
    curve = before - 2.0 * at + after
    offset = np.where(curve > 0, 0.5 * (before - after) / np.where(curve > 0, curve, 1.0), 0.0)
    rim = radial[0] + 0.5 * (k + 0.5 + np.clip(offset, -1.0, 1.0))
    ex, ey = xs + rim * cos[inside], ys + rim * sin[inside]
    keep = np.ones(len(ex), dtype=bool)
    for _ in range(3):
        # the circle x^2 + y^2 = 2 cx x + 2 cy y + (r^2 - cx^2 - cy^2), linear in its three unknowns
        design = np.column_stack((ex[keep], ey[keep], np.ones(int(keep.sum()))))
        sol = np.linalg.lstsq(design, ex[keep] ** 2 + ey[keep] ** 2, rcond=None)[0]
        cx, cy = 0.5 * sol[0], 0.5 * sol[1]
        radius_sq = sol[2] + cx * cx + cy * cy
        if not radius_sq > 0:
            return None
        off = np.abs(np.hypot(ex - cx, ey - cy) - math.sqrt(radius_sq))
        keep = off <= 3.0 * (float(np.median(off[keep])) + 0.5)
    radius = math.sqrt(radius_sq)
    # not a circle: most rays off it, or a rim far from the estimate's
    if keep.sum() < 0.5 * len(ex) or not _EDGE_FROM < 2.0 * radius * f / diameter < 2.0 * _EDGE_TO:
        return None
    nx, ny = c0 + (cx + 0.5 - 0.5 / fx) * fx, r0 + (cy + 0.5 - 0.5 / fy) * fy
    if math.hypot(nx - x, ny - y) > 0.25 * diameter:
        return None
    scale = math.sqrt(fx * fy)
    return (float(nx), float(ny), 2.0 * radius * scale, float(keep.mean()),
            float(np.median(off[keep])) * scale, 0.0 if rising is None else float(rising[keep].mean()))


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
        if s.area / s.rect >= _SQUARE_RECT_FILL and s.area / (math.pi * s.radius**2) < _SQUARE_ROUND_FILL:
            square.append(s)
    if len(square) < _ATLAS_MIN_SQUARES or len(square) < 0.5 * len(inside):
        return None
    side = float(median([math.sqrt(s.area) for s in square])) * f
    return (f"looks like a low-mag atlas ({len(square)} bright squares ~{side:.0f} px wide behind dark grid bars), "
            "not a med-mag hole view: use `squares`")
