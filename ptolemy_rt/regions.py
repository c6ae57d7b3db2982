"""From a binary mask to regions: group nearby pixels, take convex hulls, drop small ones.

Pixels of the mask within a `window` x `window` neighbourhood of each other join one region (dilate,
label 8-connected components, keep only the original mask pixels). Each region's outline is the convex
hull of its pixels taken as unit squares, in input pixel coordinates with the origin at the centre of the
top-left pixel (pixel (row r, col c) covers x in [c - 0.5, c + 0.5], y in [r - 0.5, r + 0.5]).
Used by both pipelines: squares (with an area filter) and holes (centroids, no filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Regions", "find_regions", "region_means", "polygon_area", "polygon_centroid"]

# The four corners of a pixel around its centre: the hull of pixel squares is the hull of pixel
# centres grown by these (a Minkowski sum with the unit square).
_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]], dtype=np.float32)


@dataclass(frozen=True)
class Regions:
    """Regions of a mask, in raster order of their top-left pixel; arrays indexed by region."""

    hulls: tuple[np.ndarray, ...]  # float64 (k, 2) x, y vertices of each convex hull, counter-clockwise on screen
    areas: np.ndarray  # float64 (n,) hull areas in px²
    centroids: np.ndarray  # float64 (n, 2) x, y area centroid of each hull
    label_ids: np.ndarray  # int32 (n,) value of each region in `labels`
    labels: np.ndarray | None  # int32 (H, W) labels of the dilated mask (0 = background), when kept

    def __len__(self) -> int:
        return len(self.hulls)


def polygon_area(poly: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula), vertices (k, 2) in order."""
    x, y = poly[:, 0], poly[:, 1]
    xn = np.concatenate((x[1:], x[:1]))
    yn = np.concatenate((y[1:], y[:1]))
    return 0.5 * abs(float(np.dot(x, yn) - np.dot(xn, y)))


def polygon_centroid(poly: np.ndarray) -> np.ndarray:
    """Area centroid (x, y) of a simple polygon; the vertex mean for degenerate ones."""
    # Relative to the first vertex, so large coordinates lose no precision.
    xs = poly[:, 0] - poly[0, 0]
    ys = poly[:, 1] - poly[0, 1]
    xn = np.concatenate((xs[1:], xs[:1]))
    yn = np.concatenate((ys[1:], ys[:1]))
    cross = xs * yn - xn * ys
    a = float(cross.sum())
    if a == 0.0:
        return poly.mean(axis=0)
    cx = float(((xs + xn) * cross).sum() / (3.0 * a))
    cy = float(((ys + yn) * cross).sum() / (3.0 * a))
    return np.array([cx + poly[0, 0], cy + poly[0, 1]])


def _square_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of the unit pixel squares centred on integer `points` (m, 2), as float64 (k, 2)
    counter-clockwise on screen, starting at the top-most, then left-most vertex."""
    centres = cv2.convexHull(points.reshape(-1, 1, 2)).reshape(-1, 2).astype(np.float32)
    grown = (centres[:, None, :] + _CORNERS[None, :, :]).reshape(-1, 1, 2)
    # Half-integers below 2**23 are exact in float32, so the hull is exact. With y pointing down,
    # cv2's clockwise=True ("clockwise with y up") is counter-clockwise on screen.
    hull = cv2.convexHull(grown, clockwise=True).reshape(-1, 2).astype(np.float64)
    top = hull[:, 1].min()
    at_top = np.flatnonzero(hull[:, 1] == top)
    start = int(at_top[np.argmin(hull[at_top, 0])])
    return np.ascontiguousarray(np.concatenate((hull[start:], hull[:start])))


def find_regions(
    mask: np.ndarray, *, window: int = 6, min_area: float = 100.0, keep_labels: bool = True
) -> Regions:
    """Group mask pixels within `window` px of each other into regions; keep those with hull area > min_area."""
    mask = np.ascontiguousarray(mask)
    if mask.dtype != np.uint8:
        mask = (mask != 0).astype(np.uint8)
    if window > 1:
        # cv2's anchor for an even kernel is window // 2: the same neighbourhood as the original's
        # convolve2d(mode="same") (a pixel reaches window // 2 up/left and window // 2 - 1 down/right).
        dilated = cv2.dilate(mask, np.ones((window, window), np.uint8))
    else:
        dilated = mask
    _, labels = cv2.connectedComponents(dilated, connectivity=8, ltype=cv2.CV_32S)
    hulls: list[np.ndarray] = []
    ids: list[int] = []
    # Outer and inner boundaries of every 8-connected blob: a region's hull is the hull of its blobs' boundaries.
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if contours:
        lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
        points = np.concatenate(contours).reshape(-1, 2)
        first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        # Every contour point is a mask pixel, so the label at a contour's first point is its region's.
        point_label = np.repeat(labels[points[first, 1], points[first, 0]], lengths)
        order = np.argsort(point_label, kind="stable")
        point_label = point_label[order]
        points = points[order]
        uniq, starts = np.unique(point_label, return_index=True)
        # The hull lies within the region's bounding box of pixel squares: skip regions whose box
        # cannot exceed min_area (most regions of a noisy mask) without computing their hull.
        span = np.maximum.reduceat(points, starts) - np.minimum.reduceat(points, starts) + 1
        box_area = span[:, 0].astype(np.float64) * span[:, 1]
        bounds = np.append(starts, len(point_label))
        for i in np.flatnonzero(box_area > min_area):
            hull = _square_hull(points[bounds[i] : bounds[i + 1]])
            if polygon_area(hull) > min_area:
                hulls.append(hull)
                ids.append(int(uniq[i]))
    # Raster order of each region's top-left pixel (independent of cv2's numbering): the first hull
    # vertex is that pixel's top-left corner.
    order_idx = sorted(range(len(hulls)), key=lambda i: (hulls[i][0, 1], hulls[i][0, 0]))
    hulls = [hulls[i] for i in order_idx]
    return Regions(
        hulls=tuple(hulls),
        areas=np.array([polygon_area(h) for h in hulls], dtype=np.float64),
        centroids=np.array([polygon_centroid(h) for h in hulls], dtype=np.float64).reshape(-1, 2),
        label_ids=np.array([ids[i] for i in order_idx], dtype=np.int32),
        labels=labels if keep_labels else None,
    )


_MEANS = None


def _means_kernel():
    global _MEANS
    if _MEANS is None:
        from ._numba import numba

        @numba.njit(cache=True, nogil=True)
        def sums(labels, mask, image, n):
            total = np.zeros(n, dtype=np.float64)
            count = np.zeros(n, dtype=np.int64)
            rows, cols = labels.shape
            for i in range(rows):
                for j in range(cols):
                    if mask[i, j]:
                        lab = labels[i, j]
                        total[lab] += image[i, j]
                        count[lab] += 1
            return total, count

        _MEANS = sums
    return _MEANS


def region_means(regions: Regions, mask: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `image` over each region's mask pixels, and their count (float64 (n,), int64 (n,))."""
    if regions.labels is None:
        raise ValueError("region_means needs regions found with keep_labels=True")
    if len(regions) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    labels = regions.labels
    n = int(labels.max()) + 1
    total, count = _means_kernel()(
        labels, np.ascontiguousarray(mask, dtype=np.uint8), np.ascontiguousarray(image, dtype=np.float32), n
    )
    ids = regions.label_ids
    c = count[ids]
    return total[ids] / np.maximum(c, 1), c
