"""From a binary mask to regions: group nearby pixels, take convex hulls, drop small ones.

Pixels of the mask within a `window` x `window` neighbourhood of each other join one region (dilate,
label 8-connected components, keep only the original mask pixels). Each region's outline is the convex
hull of its pixels taken as unit squares, in input pixel coordinates with the origin at the centre of the
top-left pixel (pixel (row r, col c) covers x in [c - 0.5, c + 0.5], y in [r - 0.5, r + 0.5]).
Used by both pipelines: squares (with an area filter) and holes (centroids, no filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import _workers
from ._orderstats import unique

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


def _packed_area_centroid(hulls: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Areas (n,) and area centroids (n, 2) of many polygons at once (shoelace per polygon)."""
    lengths = np.fromiter((len(h) for h in hulls), dtype=np.int64, count=len(hulls))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return _flat_area_centroid(np.concatenate(hulls), starts, lengths)


def _flat_area_centroid(vertices: np.ndarray, starts: np.ndarray,
                        lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_packed_area_centroid of the polygons vertices[starts[i] : starts[i] + lengths[i]] (concatenated, none
    empty): the same arithmetic without a list of arrays."""
    firsts = vertices[starts]
    # Relative to each polygon's first vertex, so large coordinates lose no precision.
    origin = np.repeat(firsts, lengths, axis=0)
    pts = vertices - origin
    nxt = np.arange(1, len(pts) + 1)
    nxt[starts + lengths - 1] = starts
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = x[nxt], y[nxt]
    cross = x * yn - xn * y
    a2 = np.add.reduceat(cross, starts)
    cx = np.add.reduceat((x + xn) * cross, starts)
    cy = np.add.reduceat((y + yn) * cross, starts)
    safe = np.where(a2 == 0.0, 1.0, a2)
    mean = np.add.reduceat(pts, starts, axis=0) / lengths[:, None]
    cent = np.where((a2 == 0.0)[:, None], mean, np.stack([cx, cy], axis=1) / (3.0 * safe[:, None]))
    return np.abs(a2) / 2.0, cent + firsts


def _square_hulls(points: np.ndarray, bounds: np.ndarray, which: np.ndarray) -> list[np.ndarray]:
    """Convex hulls of the unit pixel squares centred on the integer points[bounds[i]:bounds[i + 1]] for each i
    in `which`: float64 (k, 2), counter-clockwise on screen, starting at the top-most, then left-most vertex."""
    # The hull of the squares is the hull of the centres grown by the unit square (a Minkowski sum), so only the
    # centre hulls' few vertices need their corners, and which corners are vertices follows from the centre
    # hull's edges (_grown_hulls), without a second hull per region.
    packed = _square_hulls_packed(points, bounds, which)
    if packed is None:
        return []
    out, starts, counts = packed
    return [out[a : a + k] for a, k in zip(starts.tolist(), counts.tolist())]


def _square_hulls_packed(points: np.ndarray, bounds: np.ndarray,
                         which: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """_square_hulls concatenated: (vertices, each hull's start, its vertex count); None for no hulls."""
    centre_hulls = [cv2.convexHull(points[bounds[i] : bounds[i + 1]].reshape(-1, 1, 2)).reshape(-1, 2) for i in which]
    if not centre_hulls:
        return None
    sizes = np.fromiter((len(h) for h in centre_hulls), dtype=np.int64, count=len(centre_hulls))
    return _grown_hulls_packed(np.concatenate(centre_hulls).astype(np.int64), sizes)


# The unit square's corners, one per quadrant of directions in turn (x right, y down: the quadrants of +x..+y,
# +y..-x, -x..-y, -y..+x), and the first direction of each quadrant (its last is the next one's first).
_QUADRANT_CORNERS = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
_QUADRANT_START = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]


def _in_arc(w: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether direction w lies in the arc [u, v) turning from u towards v (positive cross product), the arc
    at most a half turn (v = -u: the half plane left of u). Integer vectors: exact."""
    cu = _cross(u, w)
    return ((cu == 0) & (_dot(u, w) > 0)) | ((cu > 0) & (_cross(w, v) > 0))


def _grown_hulls(centres: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """_grown_hulls_packed's hulls as a list of arrays (see there)."""
    out, starts, counts = _grown_hulls_packed(centres, sizes)
    return [out[a : a + k] for a, k in zip(starts.tolist(), counts.tolist())]


def _grown_hulls_packed(centres: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each convex polygon (integer vertices, concatenated, `sizes` each, no three in a line: cv2.convexHull's
    output) grown by the unit square: float64 (k, 2) vertices as cv2.convexHull(corners, clockwise=True) orders
    them (counter-clockwise on screen), from the top-most, then left-most vertex; concatenated, with each grown
    polygon's start and vertex count.

    Vertex p + s (s a corner of the square) is a vertex of the sum exactly when some direction d is maximised
    by p alone over the polygon and by s alone over the square: the open arc of p's outward normals (between
    those of its two edges) meets the open quadrant of s. Walking the polygon with its normals turning the
    positive way, each vertex gives its corners in quadrant order from the one holding its first normal; corners
    that only touch an arc's end lie inside a straight edge and are not vertices, as cv2 leaves them out. A lone
    point gives all four corners; a segment's two ends each have a half turn of normals."""
    v = len(centres)
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    idx = np.arange(v)
    local = idx - first[owner]
    nxt = np.where(local + 1 < sizes[owner], idx + 1, first[owner])
    prv = np.where(local > 0, idx - 1, first[owner] + sizes[owner] - 1)
    p = centres
    # Walk each polygon with positive signed area (x right, y down: counter-clockwise on screen is negative).
    backwards = (np.add.reduceat(_cross(p, p[nxt]), first) < 0)[owner]
    nxt, prv = np.where(backwards, prv, nxt), np.where(backwards, nxt, prv)
    e_in, e_out = p - p[prv], p[nxt] - p
    n_in = np.stack([e_in[:, 1], -e_in[:, 0]], axis=1)
    n_out = np.stack([e_out[:, 1], -e_out[:, 0]], axis=1)
    lone = sizes[owner] == 1
    j0 = np.zeros(v, dtype=np.int64)
    for j in range(4):
        j0[_in_arc(n_in, _QUADRANT_START[j], _QUADRANT_START[(j + 1) % 4])] = j
    emit = np.zeros((v, 4), dtype=bool)
    corner = np.zeros((v, 4), dtype=np.int64)
    for t in range(4):
        q = (j0 + t) % 4
        u, w = _QUADRANT_START[q], _QUADRANT_START[(q + 1) % 4]
        # The quadrant holding the first normal always meets the arc; the next ones while the arc reaches them.
        meets = np.ones(v, dtype=bool) if t == 0 else emit[:, t - 1] & (_in_arc(n_in, u, w) | _in_arc(u, n_in, n_out))
        emit[:, t] = meets | lone
        corner[:, t] = np.where(lone, t, q)
    flat = emit.reshape(-1)
    pts = (p[:, None, :] + _QUADRANT_CORNERS[corner]).reshape(-1, 2)[flat]
    counts = np.bincount(np.repeat(owner, emit.sum(axis=1)), minlength=len(sizes))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # cv2's order is the walk reversed, from the smallest y * 65536 + x (one vertex: the corners are distinct).
    key = pts[:, 1] * 65536.0 + pts[:, 0]
    hull_of = np.repeat(np.arange(len(sizes)), counts)
    at_min = np.flatnonzero(key == np.minimum.reduceat(key, starts)[hull_of])
    w_min = at_min[np.unique(hull_of[at_min], return_index=True)[1]] - starts  # walk position of each minimum
    pos = np.arange(len(pts)) - starts[hull_of]
    c = counts[hull_of]
    take = starts[hull_of] + c - 1 - ((c - 1 - w_min[hull_of] + pos) % c)
    return pts[take], starts, counts


def find_regions(
    mask: np.ndarray, *, window: int = 6, min_area: float = 100.0, keep_labels: bool = True
) -> Regions:
    """Group mask pixels within `window` px of each other into regions; keep those with hull area > min_area.

    window=1 groups 8-connected pixels only; min_area=0 keeps every region (a lone pixel's hull is 1 px²)."""
    mask = np.ascontiguousarray(mask)
    if mask.dtype == np.bool_:
        # its bytes as they are (0 and 1 for any comparison's result; cv2 takes every non-zero byte as set)
        mask = mask.view(np.uint8)
    elif mask.dtype != np.uint8:
        mask = (mask != 0).astype(np.uint8)

    def label() -> tuple[int, np.ndarray]:
        if window > 1:
            # cv2's anchor for an even kernel is window // 2: the same neighbourhood as the original's
            # convolve2d(mode="same") (a pixel reaches window // 2 up/left and window // 2 - 1 down/right).
            dilated = cv2.dilate(mask, np.ones((window, window), np.uint8))
        else:
            dilated = mask
        return cv2.connectedComponents(dilated, connectivity=8, ltype=cv2.CV_32S)

    def outer() -> Any:
        return cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]

    # The outer boundaries are traced from the mask alone: on a worker thread while the regions are labelled
    # (both cv2 calls, which run without the GIL; the labels and contours do not depend on OpenCV's thread count:
    # the same results as one after the other). Small masks: in turn (a hand-off costs more than it saves).
    done: list[Any] = _workers.run_all(lambda i, _: (label, outer)[i](), 2, None if mask.size > 1 << 21 else 1)
    (n_labels, labels), contours = done[0], done[1]
    hulls: list[np.ndarray] = []
    ids: list[int] = []
    # A region's hull is the hull of its blobs' (8-connected components') outer boundaries. The outermost
    # boundaries (RETR_EXTERNAL) are traced in half the time of all of them (holes of a noisy mask are most
    # contours); they miss only blobs inside another blob's hole. Such a blob either shares its region
    # with one that has an outer boundary (then it lies inside that blob's hull: nothing is lost), or all of
    # its region lies in the hole, and then that region has no outer boundary here: only then are all
    # boundaries traced.
    if contours:
        first_points = np.array([c[0, 0] for c in contours])
        if unique(labels[first_points[:, 1], first_points[:, 0]]).size < n_labels - 1:
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
        which = np.flatnonzero(box_area > min_area)
        if which.size:
            hulls = _square_hulls(points, bounds, which)
            ids = uniq[which].tolist()
    if not hulls:
        return Regions((), np.zeros(0), np.zeros((0, 2)), np.zeros(0, np.int32), labels if keep_labels else None)
    areas, centroids = _packed_area_centroid(hulls)
    # Raster order of each region's top-left pixel (independent of cv2's numbering): the first hull
    # vertex is that pixel's top-left corner.
    tops = np.array([h[0] for h in hulls])
    order_idx = np.lexsort((tops[:, 0], tops[:, 1]))
    order_idx = order_idx[areas[order_idx] > min_area]
    return Regions(
        hulls=tuple(hulls[i] for i in order_idx),
        areas=areas[order_idx],
        centroids=centroids[order_idx].reshape(-1, 2),
        label_ids=np.array(ids, dtype=np.int32)[order_idx],
        labels=labels if keep_labels else None,
    )


def region_means(regions: Regions, mask: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `image` over each region's mask pixels, and their count (float64 (n,), int64 (n,))."""
    if regions.labels is None:
        raise ValueError("region_means needs regions found with keep_labels=True")
    if len(regions) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    labels = regions.labels
    n = int(labels.max()) + 1
    sel = np.asarray(mask) != 0
    lab = labels[sel]
    # bincount adds the weights in pixel order, as a plain loop over the image would.
    total = np.bincount(lab, weights=np.asarray(image, dtype=np.float32)[sel].astype(np.float64), minlength=n)
    count = np.bincount(lab, minlength=n).astype(np.int64, copy=False)
    ids = regions.label_ids
    c = count[ids]
    return total[ids] / np.maximum(c, 1), c
