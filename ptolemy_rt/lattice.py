"""Square-lattice fit to hole centroids: summed-area-table search over anchor pairs, then least squares.

The search follows the Ptolemy method: every centroid i with each of its k nearest other centroids j
spans a candidate square lattice (origin c_i, u = c_j - c_i, v = u turned 90 degrees); its cost is
lambda_fn * (positive mask pixels not covered) + lambda_fp * (covered pixels that are not positive),
where each lattice point covers a square of half-width min(max_halfwidth, spacing/4) pixels. Only pixels
inside the image are counted ("covered" means footprint intersected with the image), so points off the
image cost nothing and points on the border are charged only for their visible part; uncovered positives
are total positives minus covered ones. A summed-area table makes each lattice point O(1).

Numba is imported lazily (first call), so importing this module stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Lattice", "fit_lattice", "lattice_points", "lattice_cost", "candidate_pairs", "refine_lattice"]

Point = tuple[float, float]

# Footprints of neighbouring lattice points never share a pixel from this spacing up (side <= d/2 + 1 and
# pixel rounding moves each centre by <= 0.5 px), so summing per-point counts is exact.
MIN_SPACING_PX = 10.0


@dataclass(frozen=True)
class Lattice:
    """A square lattice in input pixel coordinates (x = col, y = row): points origin + a*u + b*v.

    cost: the search cost of this lattice; anchors: the centroid pair (i, j) it grew from; n_inliers:
    centroids within a quarter spacing of a lattice point (one per point); occupancy: share of the lattice
    points inside the image whose footprint holds a positive pixel; refined: least squares was applied.
    """

    origin: Point
    u: Point
    v: Point
    spacing_px: float
    angle_deg: float
    cost: float
    anchors: tuple[int, int]
    n_inliers: int = 0
    occupancy: float = 0.0
    refined: bool = False

    @property
    def basis(self) -> tuple[Point, Point]:
        """((ux, uy), (vx, vy))."""
        return (self.u, self.v)

    def points(self, shape: tuple[int, int], edge_tolerance: float = -10.0) -> np.ndarray:
        """Lattice points (n, 2) xy within `edge_tolerance` px of the image (negative: inside it)."""
        return lattice_points(self.origin, self.u, self.v, shape, edge_tolerance)


def _canonical_basis(ux: float, uy: float) -> tuple[Point, Point, float]:
    """Turn u by a multiple of 90 degrees so its screen angle (CCW, y down) lies in [0, 90); v = u turned +90."""
    for _ in range(4):
        angle = math.degrees(math.atan2(-uy, ux))
        if 0.0 <= angle < 90.0:
            break
        ux, uy = -uy, ux  # rotate by +90 degrees on screen (counter-clockwise with y down)
    angle = math.degrees(math.atan2(-uy, ux))
    # v = u rotated by -90 on screen: for u pointing right, v points down (the image row direction).
    return (ux, uy), (-uy, ux), angle % 90.0


def lattice_points(
    origin: Point, u: Point, v: Point, shape: tuple[int, int], edge_tolerance: float = -10.0
) -> np.ndarray:
    """All lattice points with -0.5 - tol < x < cols - 0.5 + tol (and likewise y), as (n, 2) xy, row-major order.

    The image covers [-0.5, cols - 0.5] in pixel-centre coordinates, so `edge_tolerance` is the distance a
    point may lie outside the image's edge (the original's meaning: -10 keeps points >= 10 px inside).
    """
    rows, cols = int(shape[0]), int(shape[1])
    o = np.asarray(origin, dtype=np.float64)
    basis = np.array([u, v], dtype=np.float64).T  # columns u, v
    tol = float(edge_tolerance)
    lo = np.array([-0.5 - tol, -0.5 - tol])
    hi = np.array([cols - 0.5 + tol, rows - 0.5 + tol])
    if np.any(hi <= lo):
        return np.zeros((0, 2))
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    ab = np.linalg.solve(basis, (corners - o).T)
    a_rng = np.arange(math.floor(ab[0].min()) - 1, math.ceil(ab[0].max()) + 2)
    b_rng = np.arange(math.floor(ab[1].min()) - 1, math.ceil(ab[1].max()) + 2)
    aa, bb = np.meshgrid(a_rng, b_rng)
    pts = o + aa.reshape(-1, 1) * basis[:, 0] + bb.reshape(-1, 1) * basis[:, 1]
    keep = (pts[:, 0] > lo[0]) & (pts[:, 0] < hi[0]) & (pts[:, 1] > lo[1]) & (pts[:, 1] < hi[1])
    pts = pts[keep]
    order = np.lexsort((pts[:, 0], np.round(pts[:, 1], 6)))
    return pts[order]


def candidate_pairs(centroids: np.ndarray, k: int = 6, min_spacing_px: float = MIN_SPACING_PX) -> np.ndarray:
    """Anchor pairs (i, j): each centroid with its k nearest others (ties by index), each unordered pair once.

    Pairs are listed in the order (i ascending, neighbour rank ascending) and keep the orientation of their
    first appearance; pairs closer than `min_spacing_px` are dropped.
    """
    c = np.asarray(centroids, dtype=np.float64)
    n = len(c)
    if n < 2 or k < 1:
        return np.zeros((0, 2), dtype=np.int64)
    kk = min(k, n - 1)
    if n <= 2048:
        d = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        nbr = np.argsort(d, axis=1, kind="stable")[:, :kk]
    else:
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(c).query(c, k=min(n, kk + 8))
        nbr = np.empty((n, kk), dtype=np.int64)
        for i in range(n):
            sel = idx[i] != i
            di, ii = dist[i][sel], idx[i][sel]
            nbr[i] = ii[np.lexsort((ii, di))][:kk]
    ii = np.repeat(np.arange(n, dtype=np.int64), kk)
    jj = nbr.reshape(-1).astype(np.int64)
    # each unordered pair once, where it first appears in (i, rank) order, with that orientation
    key = np.minimum(ii, jj) * n + np.maximum(ii, jj)
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    ii, jj = ii[first], jj[first]
    keep = np.hypot(*(c[jj] - c[ii]).T) >= min_spacing_px
    return np.stack([ii[keep], jj[keep]], axis=1)


def _kernels():
    """The Numba kernels (summed_area, cost, search), compiled or loaded from the cache on first use."""
    # A module of its own: kernels defined inside a function would capture each other as closure cells,
    # which Numba's cache cannot key, so `search` would recompile in every process.
    from . import _lattice_kernels as k

    return k.summed_area, k.cost, k.search, k.scan


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Integral image (rows + 1, cols + 1) int32 of a boolean mask: sat[r, c] = mask[:r, :c].sum()."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.bool_)
    # cv2.integral has exactly this layout (a zero first row and column) and is ~2x our Numba loop.
    return cv2.integral(m.view(np.uint8), sdepth=cv2.CV_32S)


def lattice_cost(
    sat: np.ndarray,
    origin: Point,
    u: Point,
    *,
    lambda_fn: float = 10.0,
    lambda_fp: float = 1.0,
    max_halfwidth: float = 15.0,
) -> float:
    """Cost of the square lattice (origin, u, u turned 90 degrees) against the mask behind `sat`."""
    cost = _kernels()[1]
    total = int(sat[-1, -1])
    c, _ = cost(sat, float(origin[0]), float(origin[1]), float(u[0]), float(u[1]), total,
                float(lambda_fn), float(lambda_fp), float(max_halfwidth), math.inf)
    return float(c)


def refine_lattice(
    centroids: np.ndarray, origin: Point, u: Point, *, tolerance: float = 0.25, iterations: int = 10
) -> tuple[Point, Point, int] | None:
    """Least-squares square lattice (origin, u) through the centroids within tolerance * spacing of a point.

    Each centroid is assigned to its nearest lattice point (one centroid per point: the closest) and the
    lattice refitted until the assignment settles. The fit grows outwards from the anchor (3 spacings, then
    doubling): an anchor pair's small error in u turns into a drift of whole spacings far away, where
    centroids would otherwise be matched to the wrong lattice point. Last, trimmed refits drop residual
    outliers (beyond 2.5x the median residual) until the kept set settles, so partial holes at the edge
    and stray blobs near lattice points do not pull the lattice.
    Returns (origin, u, n_inliers), or None with fewer than two lattice points matched.
    """
    c = np.asarray(centroids, dtype=np.float64)
    o = np.array(origin, dtype=np.float64)
    uu = np.array(u, dtype=np.float64)
    reach = np.hypot(*(c - o).T)
    radius = 3.0 * float(np.hypot(*uu))
    while True:
        near = c[reach <= radius]
        last = len(near) == len(c)
        prev_sel = prev_idx = None
        # Inner rings need only a better basis for the next ring; the last one iterates to a fixed point.
        for _ in range(iterations if last else 1):
            sel, idx, _ = _assign(near, o, uu, tolerance)
            if sel.sum() < 2:
                break
            if prev_sel is not None and np.array_equal(sel, prev_sel) and np.array_equal(idx[sel], prev_idx[sel]):
                break
            prev_sel, prev_idx = sel, idx
            o2, u2 = _solve(near[sel], idx[sel])
            if not (np.all(np.isfinite(o2)) and np.all(np.isfinite(u2)) and np.hypot(*u2) > 1e-6):
                return None
            o, uu = o2, u2
        if last:
            break
        radius *= 2.0
    sel, idx, resid = _assign(c, o, uu, tolerance)
    if sel.sum() < 2:
        return None
    n_inliers = int(sel.sum())
    # Trimmed refits until the kept set settles: partial holes at the image edge and stray blobs pull
    # the least squares by pixels, and each refit shows them more clearly.
    kept = None
    for _ in range(iterations):
        limit = max(2.5 * float(np.median(resid[sel])), 1e-3 * float(np.hypot(*uu)))
        keep = sel & (resid <= limit)
        if keep.sum() < 2 or (kept is not None and np.array_equal(keep, kept)):
            break
        kept = keep
        o2, u2 = _solve(c[keep], idx[keep])
        if not (np.all(np.isfinite(o2)) and np.all(np.isfinite(u2)) and np.hypot(*u2) > 1e-6):
            break
        o, uu = o2, u2
        sel, idx, resid = _assign(c, o, uu, tolerance)
        if sel.sum() < 2:
            return None
    return (float(o[0]), float(o[1])), (float(uu[0]), float(uu[1])), n_inliers


def _assign(c: np.ndarray, o: np.ndarray, u: np.ndarray, tolerance: float):
    """Nearest lattice index per centroid, whether it is within tolerance*spacing (closest one per point)."""
    ux, uy = float(u[0]), float(u[1])
    d2 = ux * ux + uy * uy
    dx, dy = c[:, 0] - o[0], c[:, 1] - o[1]
    # lattice coordinates: the basis (u, u turned 90 degrees) is a scaled rotation, inverted by hand
    a = np.rint((dx * ux + dy * uy) / d2)
    b = np.rint((dy * ux - dx * uy) / d2)
    resid = np.hypot(dx - (a * ux - b * uy), dy - (a * uy + b * ux))
    idx = np.stack([a, b], axis=1).astype(np.int64)
    sel = resid < tolerance * math.sqrt(d2)
    # one centroid per lattice point: keep the closest (ties: lower index)
    cand = np.flatnonzero(sel)
    if len(cand):
        cand = cand[np.lexsort((cand, resid[cand]))]
        a, b = idx[cand, 0], idx[cand, 1]
        keys = (a - a.min()) * (int(b.max() - b.min()) + 1) + (b - b.min())
        _, first = np.unique(keys, return_index=True)
        sel = np.zeros(len(c), dtype=bool)
        sel[cand[first]] = True
    return sel, idx, resid


def _solve(c: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares for (ox, oy, ux, uy) with x = ox + a ux - b uy, y = oy + a uy + b ux.

    A similarity fit has a closed form: centre both sides, then u is the projection of the centred points
    onto the centred lattice indices (the normal equations decouple); ~10x cheaper than a general lstsq.
    """
    a = idx[:, 0].astype(np.float64)
    b = idx[:, 1].astype(np.float64)
    am, bm = a.mean(), b.mean()
    xm, ym = c[:, 0].mean(), c[:, 1].mean()
    a0, b0, x0, y0 = a - am, b - bm, c[:, 0] - xm, c[:, 1] - ym
    norm = float(a0 @ a0 + b0 @ b0)
    if norm == 0.0:  # all on one lattice point: the basis is undetermined
        return np.array([np.nan, np.nan]), np.array([np.nan, np.nan])
    ux = float(a0 @ x0 + b0 @ y0) / norm
    uy = float(a0 @ y0 - b0 @ x0) / norm
    origin = np.array([xm - (am * ux - bm * uy), ym - (am * uy + bm * ux)])
    return origin, np.array([ux, uy])


def fit_lattice(
    centroids: np.ndarray,
    mask: np.ndarray,
    *,
    k: int = 6,
    lambda_fn: float = 10.0,
    lambda_fp: float = 1.0,
    max_halfwidth: float = 15.0,
    refine: bool = True,
    min_spacing_px: float = MIN_SPACING_PX,
    min_inliers: float = 0.3,
    min_occupancy: float = 0.3,
    blob_halfwidth: float | None = 2.0,
    hidden_fallback: bool = True,
) -> Lattice | None:
    """Fit a square lattice to centroids (n, 2) xy and a boolean mask; None without a lattice worth having.

    None with fewer than two centroids, no anchor pair at least `min_spacing_px` apart, nothing positive
    in the mask, or when the best lattice is no lattice: fewer than `min_inliers` of the centroids (and
    fewer than 3) near its points, or fewer than `min_occupancy` of its points inside the image on a
    positive pixel (noise blobs: any two span a lattice, most of whose points then land on nothing).

    The footprint half-width is min(max_halfwidth, spacing / 4, blob_halfwidth * r) with r the radius of
    the mean blob (positives per centroid): a point on a blob must gain more (lambda_fn x blob) than its
    empty footprint costs, or sparse wrong lattices win on small blobs. On the reference image r ~ 19 px,
    so the cap leaves the original's 15 px; None turns it off.

    hidden_fallback: when a grid bar hides most of the lattice, the empty footprints under it make a sparse
    wrong lattice cheaper than the true one, which then fails the tests above. The search is then repeated
    with lambda_fp / 10, and its lattice kept if it holds at least _HIDDEN_INLIERS of the centroids (and
    _HIDDEN_MIN_CENTROIDS of them): so many on one lattice by chance is out of reach, whatever the occupancy.
    """
    c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if len(c) < 2 or not np.all(np.isfinite(c)):
        return None
    pairs = candidate_pairs(c, k=k, min_spacing_px=min_spacing_px)
    if len(pairs) == 0:
        return None
    sat = summed_area_table(m)
    total = int(sat[-1, -1])
    if total == 0:
        return None
    halfwidth = float(max_halfwidth)
    if blob_halfwidth is not None:
        blob_radius = math.sqrt(total / len(c) / math.pi)
        halfwidth = min(halfwidth, max(1.0, blob_halfwidth * blob_radius))
    best = _search_lattice(c, sat, total, pairs, lambda_fn, lambda_fp, halfwidth, refine, min_spacing_px)
    if best is None:
        return None
    if best.n_inliers >= min(3, len(c)) and best.n_inliers >= min_inliers * len(c) and (
            best.occupancy >= min_occupancy):
        return best
    if hidden_fallback and lambda_fp > 0 and len(c) >= _HIDDEN_MIN_CENTROIDS:
        hidden = _search_lattice(c, sat, total, pairs, lambda_fn, lambda_fp / 10.0, halfwidth, refine,
                                 min_spacing_px)
        if hidden is not None and hidden.n_inliers >= _HIDDEN_INLIERS * len(c):
            return hidden
    return None


# A lattice most of whose points are hidden is accepted when this share of at least this many centroids
# lies on it (by chance a centroid lands within a quarter period of a point 25 % of the time).
_HIDDEN_INLIERS = 0.8
_HIDDEN_MIN_CENTROIDS = 12


def _search_lattice(c: np.ndarray, sat: np.ndarray, total: int, pairs: np.ndarray, lambda_fn: float,
                    lambda_fp: float, halfwidth: float, refine: bool, min_spacing_px: float) -> Lattice | None:
    """The cheapest anchor-pair lattice, refined, with its inlier count and occupancy (not yet judged)."""
    search, scan = _kernels()[2:]
    # Evaluate first the pairs whose length is typical of nearest neighbours: usually the true lattice,
    # whose low cost then prunes the rest early.
    lengths = np.hypot(*(c[pairs[:, 1]] - c[pairs[:, 0]]).T)
    typical = float(np.median(lengths))
    order = np.argsort(np.abs(np.log(lengths / typical)), kind="stable").astype(np.int64)
    cx = np.ascontiguousarray(c[:, 0])
    cy = np.ascontiguousarray(c[:, 1])
    best_idx, best = search(sat, cx, cy, pairs[:, 0].copy(), pairs[:, 1].copy(), order, total,
                            float(lambda_fn), float(lambda_fp), halfwidth)
    if best_idx < 0 or not math.isfinite(best):
        return None
    i, j = (int(t) for t in pairs[best_idx])
    origin = (float(c[i, 0]), float(c[i, 1]))
    u = (float(c[j, 0] - c[i, 0]), float(c[j, 1] - c[i, 1]))
    final_cost = float(best)
    refined = False
    if refine:
        fit = refine_lattice(c, origin, u)
        if fit is not None and math.hypot(*fit[1]) >= min_spacing_px:
            origin, u = fit[0], fit[1]
            final_cost = lattice_cost(sat, origin, u, lambda_fn=lambda_fn, lambda_fp=lambda_fp,
                                      max_halfwidth=halfwidth)
            refined = True
    # Is it a lattice at all? Any two blobs span one, so the caller asks that it explains most of the
    # others too: by chance a stray centroid lies within a quarter spacing of a lattice point 25 % of the time.
    sel, _, _ = _assign(c, np.array(origin), np.array(u), 0.25)
    _, _, inside, occupied = scan(sat, origin[0], origin[1], u[0], u[1], halfwidth, math.inf)
    (ux, uy), v, angle = _canonical_basis(*u)
    return Lattice(
        origin=origin,
        u=(ux, uy),
        v=v,
        spacing_px=math.hypot(ux, uy),
        angle_deg=angle,
        cost=final_cost,
        anchors=(i, j),
        n_inliers=int(sel.sum()),
        occupancy=float(occupied / inside if inside else 0.0),
        refined=refined,
    )
