"""Film mask: where the holey film is, as opposed to grid bars, the square's dark edge and outside the square.

Grid bars and the areas outside a grid square pass (nearly) no electrons: they are dark and wide, many hole
periods across. Holes are bright and small, and the film between them is grey (carbon) or dark (gold foil,
nearly as opaque as a bar). So a grey-level closing (dilate, then erode) with a disc a little wider than
the gaps between holes spreads every hole's brightness over the film around it, while a bar, wider than the
disc, stays dark; a threshold at a fraction of the bright level then splits film from bar. The closing runs
on a copy shrunk so that a period is ~8 px (INTER_AREA keeps each hole's mean brightness), which makes it
cheap at any magnification.

Pure functions over arrays; nothing here knows about lattices or models.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FILM_LEVEL", "film_mask", "on_film"]

# Film is where the closed image exceeds this fraction of its bright level (99th percentile) above the dark
# level (0 for count data). Bars and outside areas are near zero dose; vignetting leaves film corners at
# >= ~0.5 of the centre's level, so 0.35 splits them with margin on both sides.
FILM_LEVEL = 0.35
# The closing's disc spans this many periods: the widest gap between holes (a square cell's centre, 0.71
# periods from its holes' centres, ~0.4 from their edges) closes, bars (many periods wide) stay.
_CLOSING_PERIODS = 1.2
# Working scale: a period of about this many pixels.
_WORK_PERIOD_PX = 8.0


def film_mask(image: np.ndarray, spacing_px: float | None = None) -> np.ndarray:
    """Boolean mask (image shape), True on holey film, False on grid bars, dark edges and outside the square.

    spacing_px: the hole period in pixels; None estimates it from the bright blobs (falls back to 1/16 of
    the shorter side). A blank or constant image is all film.
    """
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"film_mask needs a non-empty 2-D image, got shape {img.shape}")
    import cv2

    rows, cols = img.shape
    data = np.nan_to_num(img.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if spacing_px is None or not (math.isfinite(spacing_px) and spacing_px > 0):
        spacing_px = _estimate_period(data)
    factor = max(1.0, float(spacing_px) / _WORK_PERIOD_PX)
    if factor > 1.0:
        small = cv2.resize(data, (max(1, round(cols / factor)), max(1, round(rows / factor))),
                           interpolation=cv2.INTER_AREA)
    else:
        small = data
    period = float(spacing_px) / factor
    # Shot noise would survive the dilation as its maxima: smooth below the hole size first.
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(0.5, 0.12 * period))
    k = 2 * math.ceil(0.5 * _CLOSING_PERIODS * period) + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    # Pad with the border's own values (reflect): a constant pad would make the image edge look like film
    # or like a bar.
    closed = cv2.morphologyEx(small, cv2.MORPH_CLOSE, disc, borderType=cv2.BORDER_REFLECT)
    lo = min(0.0, float(np.percentile(closed, 0.5)))
    hi = float(np.percentile(closed, 99.0))
    if not hi > lo:
        return np.ones((rows, cols), dtype=bool)
    level = lo + FILM_LEVEL * (hi - lo)
    if closed.shape != (rows, cols):
        closed = cv2.resize(closed, (cols, rows), interpolation=cv2.INTER_LINEAR)
    return closed > level


def _estimate_period(data: np.ndarray) -> float:
    """Median nearest-neighbour distance of the bright blobs (holes) of an image; a fallback without them."""
    import cv2

    rows, cols = data.shape
    fallback = min(rows, cols) / 16.0
    # Work at <= 512 px: blobs stay resolvable for periods of a few pixels at that size and up.
    f = max(1.0, max(rows, cols) / 512.0)
    small = cv2.resize(data, (max(1, round(cols / f)), max(1, round(rows / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    lo, hi = float(small.min()), float(small.max())
    if not hi > lo:
        return fallback
    u8 = np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    _, bright = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, _, stats, centroids = cv2.connectedComponentsWithStats(bright, connectivity=8)
    keep = stats[1:, cv2.CC_STAT_AREA] >= 3
    pts = centroids[1:][keep]
    if len(pts) < 4:
        return fallback
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(pts, k=2)
    period = float(np.median(d[:, 1])) * f
    return period if period >= 2.0 else fallback


def on_film(points_xy: np.ndarray, mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Per point (n, 2) xy: whether its footprint (a disc of radius_px) lies on film (mask True).

    Off film if any pixel of the disc inside the image is off film; the image's own edge does not count
    (only film and off-film pixels do). Points farther outside the image than radius_px have no footprint
    inside and are off film.
    """
    import cv2

    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if len(pts) == 0 or m.size == 0:
        return np.zeros(len(pts), dtype=bool)
    rows, cols = m.shape
    r = max(0.0, float(radius_px))
    # Exact Euclidean distance from each film pixel to the nearest off-film pixel (0 on off-film pixels).
    dist = cv2.distanceTransform(np.ascontiguousarray(m).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    finite = np.all(np.isfinite(pts), axis=1)
    x = np.where(finite, pts[:, 0], 0.0)
    y = np.where(finite, pts[:, 1], 0.0)
    cx = np.clip(np.rint(x), 0, cols - 1).astype(np.int64)
    cy = np.clip(np.rint(y), 0, rows - 1).astype(np.int64)
    # how far the point lies outside the image (0 inside): beyond radius_px no pixel of its disc is left
    outside = np.hypot(np.maximum(np.maximum(-0.5 - x, x - (cols - 0.5)), 0.0),
                       np.maximum(np.maximum(-0.5 - y, y - (rows - 0.5)), 0.0))
    # Every pixel within r of the point lies within r + offset of its nearest pixel (cx, cy), so the disc
    # is on film when that pixel's distance to off film exceeds r + offset (exact to < 1 px inside the
    # image; beyond its edge conservative by the point's distance from it).
    offset = np.hypot(x - cx, y - cy)
    return finite & (outside <= r) & (dist[cy, cx] > r + offset)
