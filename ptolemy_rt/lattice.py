"""Lattice fit to hole centroids: summed-area-table search over anchor candidates, then least squares.

A lattice is origin + m a + n b for integers m, n, with two independent basis vectors a, b of any lengths
and any angle between them, so square, rectangular, skewed and hexagonal hole arrays are one model.

The search follows the Ptolemy method: every centroid i with each of its k nearest other centroids j
proposes u = c_j - c_i through c_i. The original (model="square") completes it to a square lattice with
v = u turned 90 degrees; the general model (model="general") also proposes v = u turned 60 degrees (the
hexagonal lattice; 120 degrees spans the same one) and, for every two non-collinear neighbours j, j' of
i, the pair's own lattice (c_j - c_i, c_j' - c_i). Each candidate's cost is lambda_fn * (positive mask
pixels not covered) + lambda_fp * (covered pixels that are not positive), where each lattice point covers
a square of half-width min(max_halfwidth, d/4, d/(2 sqrt 2) - 1) pixels, d the lattice's shortest vector
(so footprints never overlap, whatever the basis). Only pixels inside the image are counted ("covered"
means footprint intersected with the image), so points off the image cost nothing and points on the
border are charged only for their visible part; uncovered positives are total positives minus covered
ones. A summed-area table makes each lattice point O(1). The cheapest candidate wins; least squares then
fits the origin and both vectors (the square model: one vector, v stays u turned 90 degrees).

The general model then checks the lattice's index-2 relatives: a superlattice whose new points hold holes
like the others (_densify: rows of holes a weak map mostly missed), and a sublattice whose other coset
holds only blobs unlike the holes, smaller or looser (_sparsify: the U-Net, below its own scale or on a
blurred view, fires between the holes). Those blobs (or, where _sparsify sets none aside, those on the
superlattice points _densify left out as unlike the holes) are counted in Lattice.n_set_aside, not against it.

Reported bases are canonical (canonical_basis): the same lattice gives the same a, b whatever basis it
was found in.

The search kernels are numpy (ptolemy_rt._lattice_kernels): nothing is compiled, on a first run or after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._orderstats import median, percentile

__all__ = [
    "MAX_ANCHORS",
    "MIN_SPACING_PX",
    "Lattice",
    "candidate_lattices",
    "candidate_pairs",
    "canonical_basis",
    "fit_lattice",
    "lattice_cost",
    "lattice_kind",
    "lattice_points",
    "refine_general",
    "refine_lattice",
    "regularity",
    "nearest_neighbour_distances",
]

Point = tuple[float, float]
Model = Literal["general", "square"]

# Shortest lattice vector (px) the search considers. Footprints of neighbouring points never share a
# pixel at any spacing (the half-width shrinks below 9.66 px, see _lattice_kernels.halfwidth), so summing
# per-point counts stays exact; at 8 px a footprint is 3 x 3 px.
MIN_SPACING_PX = 8.0

# kind: lengths within this relative tolerance and angles within this many degrees of the ideal count as
# that ideal (a 2-3 % anisotropy from stage tilt or pixel aspect is still a square array). Rectangular
# lattices report "oblique": nothing downstream treats them differently, and a, b say the rest.
KIND_LENGTH_TOL = 0.03
KIND_ANGLE_TOL_DEG = 3.0


def _screen_angle(x: float, y: float) -> float:
    """Angle of (x, y) counter-clockwise on screen (y down), in [0, 360)."""
    return math.degrees(math.atan2(-y, x)) % 360.0


def lattice_kind(a: Point, b: Point, length_tol: float = KIND_LENGTH_TOL,
                 angle_tol_deg: float = KIND_ANGLE_TOL_DEG) -> str:
    """"square", "hexagonal" or "oblique": the ideal lattice the basis (a, b) is within tolerance of."""
    la, lb = math.hypot(*a), math.hypot(*b)
    if la == 0.0 or lb == 0.0:
        return "oblique"
    gamma = math.degrees(math.acos(max(-1.0, min(1.0, (a[0] * b[0] + a[1] * b[1]) / (la * lb)))))
    if abs(lb / la - 1.0) <= length_tol:
        if abs(gamma - 90.0) <= angle_tol_deg:
            return "square"
        if min(abs(gamma - 60.0), abs(gamma - 120.0)) <= angle_tol_deg:
            return "hexagonal"
    return "oblique"


@dataclass(frozen=True)
class Lattice:
    """A lattice in input pixel coordinates (x = col, y = row): points origin + m*a + n*b.

    a, b: the canonical basis (canonical_basis): a is a shortest lattice vector, angle_deg its angle
    counter-clockwise on screen, in [0, 90) for a square lattice, [0, 60) for a hexagonal one and [0, 180)
    otherwise; b is the shortest vector completing the basis, turned clockwise on screen from a (for a
    square lattice b is a turned 90 degrees, pointing down for a pointing right), at 120 degrees from a
    for a hexagonal one. cost: the search cost of this lattice; anchors: the centroids it grew from
    ((i, j): c_j - c_i and its square or hexagonal completion; (i, j, j'): c_j - c_i and c_j' - c_i);
    n_inliers: centroids within a quarter of the shortest spacing of a lattice point (one per point);
    occupancy: share of the lattice points inside the image whose footprint holds a positive pixel;
    refined: least squares was applied; model: "square" (the original's) or "general"; n_set_aside:
    centroids the index-2 checks found unlike the holes (the U-Net's blobs between holes), which the lattice
    need not explain: those on the cosets _sparsify split off or, where it split none, those on the new
    points of the superlattice _densify's last round left out (not both: after a split, _densify's cosets
    were those of the lattice before it, and the same blobs would count twice).
    """

    origin: Point
    a: Point
    b: Point
    angle_deg: float
    cost: float
    anchors: tuple[int, ...]
    n_inliers: int = 0
    occupancy: float = 0.0
    refined: bool = False
    model: str = "square"
    n_set_aside: int = 0

    @property
    def u(self) -> Point:
        """a (the name the square-lattice code used)."""
        return self.a

    @property
    def v(self) -> Point:
        """b (the name the square-lattice code used)."""
        return self.b

    @property
    def spacing_a(self) -> float:
        """|a| in px: the shortest spacing."""
        return math.hypot(*self.a)

    @property
    def spacing_b(self) -> float:
        """|b| in px."""
        return math.hypot(*self.b)

    @property
    def spacing_px(self) -> float:
        """|a|, the nearest-neighbour distance (the period of a square lattice; what hole crops fit in)."""
        return math.hypot(*self.a)

    @property
    def angle_ab_deg(self) -> float:
        """Angle between a and b in degrees (90 square, 120 hexagonal)."""
        (ax, ay), (bx, by) = self.a, self.b
        return math.degrees(math.atan2(abs(ax * by - ay * bx), ax * bx + ay * by))

    @property
    def kind(self) -> str:
        """"square", "hexagonal" or "oblique" (lattice_kind, within KIND_LENGTH_TOL / KIND_ANGLE_TOL_DEG)."""
        return lattice_kind(self.a, self.b)

    @property
    def basis(self) -> tuple[Point, Point]:
        """((ax, ay), (bx, by))."""
        return (self.a, self.b)

    def points(self, shape: tuple[int, int], edge_tolerance: float = -10.0) -> np.ndarray:
        """Lattice points (n, 2) xy within `edge_tolerance` px of the image (negative: inside it)."""
        return lattice_points(self.origin, self.a, self.b, shape, edge_tolerance)

    def to_dict(self) -> dict:
        """Plain-JSON view: basis, origin, spacings and angles (px, degrees), kind and fit statistics."""
        return {
            "a": [float(self.a[0]), float(self.a[1])],
            "b": [float(self.b[0]), float(self.b[1])],
            "origin": [float(self.origin[0]), float(self.origin[1])],
            "spacing_a": self.spacing_a,
            "spacing_b": self.spacing_b,
            "angle_deg": float(self.angle_deg),
            "angle_ab_deg": self.angle_ab_deg,
            "kind": self.kind,
            "spacing_px": self.spacing_px,
            "n_inliers": int(self.n_inliers),
            "occupancy": float(self.occupancy),
            "cost": float(self.cost) if math.isfinite(self.cost) else None,
            "refined": bool(self.refined),
            "model": self.model,
        }


def _canonical_square(ux: float, uy: float) -> tuple[Point, Point, float]:
    """Turn u by a multiple of 90 degrees so its screen angle (CCW, y down) lies in [0, 90); v = u turned +90."""
    for _ in range(4):
        angle = math.degrees(math.atan2(-uy, ux))
        if 0.0 <= angle < 90.0:
            break
        ux, uy = -uy, ux  # rotate by +90 degrees on screen (counter-clockwise with y down)
    angle = math.degrees(math.atan2(-uy, ux))
    # v = u rotated by -90 on screen: for u pointing right, v points down (the image row direction).
    return (ux, uy), (-uy, ux), angle % 90.0


def _reduce(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of (a, b): the same lattice, |a| <= |b|, |a.b| <= |a|^2 / 2."""
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    for _ in range(64):
        if b @ b < a @ a:
            a, b = b, a
        if a @ a == 0.0:
            break
        m = math.floor(float(a @ b) / float(a @ a) + 0.5)
        if m != 0:
            b = b - m * a
        # stop once b is no shorter than a (testing m == 0 instead can cycle on a hexagonal tie)
        if b @ b >= a @ a:
            break
    return a, b


def canonical_basis(a: Point, b: Point, tolerance: float = KIND_LENGTH_TOL) -> tuple[Point, Point]:
    """The canonical basis of the lattice spanned by (a, b): the same lattice gives the same pair.

    After Lagrange-Gauss reduction, a is the lattice vector within `tolerance` of the shortest length
    whose screen angle (counter-clockwise, y down) in [0, 180) is smallest: [0, 90) for a square lattice,
    [0, 60) for a hexagonal one. b completes a to a basis of the same lattice, turned clockwise on screen
    from a (cross(a, b) > 0 in x, y with y down), the shortest such within tolerance * |a|; of several,
    the one at the widest angle from a (120 degrees in a hexagonal lattice, 90 in a square one).
    """
    r1, r2 = _reduce(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    if abs(r1[0] * r2[1] - r1[1] * r2[0]) <= 1e-12 * float(r2 @ r2):
        raise ValueError(f"degenerate lattice basis {a}, {b}")
    # Short vectors of a reduced basis: small integer combinations are enough.
    mm, nn = np.meshgrid(np.arange(-4, 5), np.arange(-3, 4), indexing="ij")
    mm, nn = mm.ravel(), nn.ravel()
    nonzero = (mm != 0) | (nn != 0)
    mm, nn = mm[nonzero], nn[nonzero]
    vecs = mm[:, None] * r1[None, :] + nn[:, None] * r2[None, :]
    lengths = np.hypot(vecs[:, 0], vecs[:, 1])
    shortest = float(lengths.min())
    angles = np.degrees(np.arctan2(-vecs[:, 1], vecs[:, 0])) % 360.0
    # w and -w share a line angle in [0, 180); taking the minimum over both signs never leaves the set
    # empty (a vector at exactly 180 degrees can round to either side of the half-plane).
    line = angles % 180.0
    cand = np.flatnonzero(lengths <= shortest * (1.0 + tolerance))
    ia = int(cand[np.lexsort((angles[cand], lengths[cand], line[cand]))[0]])
    sign = 1 if angles[ia] < 180.0 else -1
    pa, qa = sign * int(mm[ia]), sign * int(nn[ia])
    va = sign * vecs[ia]
    cross = va[0] * vecs[:, 1] - va[1] * vecs[:, 0]
    unimodular = np.abs(pa * nn - qa * mm) == 1
    ok = np.flatnonzero(unimodular & (cross > 0))
    lb = float(lengths[ok].min())
    tie = ok[lengths[ok] <= lb + tolerance * float(lengths[ia])]
    dots = vecs[tie] @ va
    ib = int(tie[np.lexsort((lengths[tie], dots))[0]])
    return (float(va[0]), float(va[1])), (float(vecs[ib, 0]), float(vecs[ib, 1]))


def lattice_points(
    origin: Point, u: Point, v: Point, shape: tuple[int, int], edge_tolerance: float = -10.0
) -> np.ndarray:
    """All lattice points with -0.5 - tol < x < cols - 0.5 + tol (and likewise y), as (n, 2) xy, row-major order.

    The image covers [-0.5, cols - 0.5] in pixel-centre coordinates, so `edge_tolerance` is the distance a
    point may lie outside the image's edge (the original's meaning: -10 keeps points >= 10 px inside).
    Any basis (u, v) of the lattice gives the same points.
    """
    rows, cols = int(shape[0]), int(shape[1])
    ox, oy = float(origin[0]), float(origin[1])
    ux, uy, vx, vy = float(u[0]), float(u[1]), float(v[0]), float(v[1])
    tol = float(edge_tolerance)
    lo_x = lo_y = -0.5 - tol
    hi_x, hi_y = cols - 0.5 + tol, rows - 0.5 + tol
    det = ux * vy - vx * uy
    if not (hi_x > lo_x and hi_y > lo_y and det != 0.0 and all(map(math.isfinite, (ox, oy, ux, uy, vx, vy, det)))):
        return _lattice_points_solved(origin, u, v, shape, edge_tolerance)  # empty, or its errors
    # The corners' lattice coordinates bound the index ranges. A point inside the box has coordinates between
    # theirs, and the ranges reach one beyond them (and as far again as rounding can move a corner or a point,
    # _rounding_slack): any solve within a fraction of an index gives ranges that hold every point, each point
    # is computed as o + a u + b v alone and the box filter and the sort decide the rest, so the points are
    # _lattice_points_solved's (LAPACK's solve, ~3x the cost on ~100 points), to the bit.
    a_lo = b_lo = math.inf
    a_hi = b_hi = -math.inf
    mag_a = mag_b = 0.0
    for cx, cy in ((lo_x, lo_y), (hi_x, lo_y), (hi_x, hi_y), (lo_x, hi_y)):
        dx, dy = cx - ox, cy - oy
        a, b = (vy * dx - vx * dy) / det, (ux * dy - uy * dx) / det
        a_lo, a_hi, b_lo, b_hi = min(a_lo, a), max(a_hi, a), min(b_lo, b), max(b_hi, b)
        mag_a = max(mag_a, (abs(vy * dx) + abs(vx * dy)) / abs(det))
        mag_b = max(mag_b, (abs(ux * dy) + abs(uy * dx)) / abs(det))
    slack_a, slack_b = _rounding_slack(ox, oy, ux, uy, vx, vy, det, a_lo, a_hi, b_lo, b_hi, mag_a, mag_b)
    if not all(map(math.isfinite, (a_lo, a_hi, b_lo, b_hi, slack_a, slack_b))):
        return _lattice_points_solved(origin, u, v, shape, edge_tolerance)
    # The box holds about `expected` points; the index rectangle is a few times that for a reduced basis (the
    # pipelines' lattices), but unbounded for a basis of nearly parallel vectors (an API caller's: 24 GB for
    # a 1x1 image). Beyond 8 M candidates (~0.2 GB of work arrays) more than 16 times the points, the basis is
    # reduced first (the same points, rounded by the other basis); a box of more points than any image holds
    # is refused.
    expected = (hi_x - lo_x) * (hi_y - lo_y) / abs(det)
    if expected > MAX_LATTICE_POINTS:
        raise ValueError(f"lattice_points: about {expected:.3g} lattice points in the {cols}x{rows} image, more "
                         f"than {MAX_LATTICE_POINTS} (a basis of nearly parallel vectors?)")
    a0, a1 = math.floor(a_lo - slack_a) - 1, math.ceil(a_hi + slack_a) + 2
    b0, b1 = math.floor(b_lo - slack_b) - 1, math.ceil(b_hi + slack_b) + 2
    if (a1 - a0) * (b1 - b0) > 16 * expected + (1 << 23):
        reduced = _reduced_basis((ux, uy), (vx, vy))
        if reduced is not None:
            return lattice_points(origin, reduced[0], reduced[1], shape, edge_tolerance)
    a_rng = np.arange(a0, a1)[None, :]
    b_rng = np.arange(b0, b1)[:, None]
    # the meshgrid's order (b outer, a inner) and its arithmetic, (o + a u) + b v, per coordinate
    x = (ox + a_rng * ux + b_rng * vx).reshape(-1)
    y = (oy + a_rng * uy + b_rng * vy).reshape(-1)
    keep = (x > lo_x) & (x < hi_x) & (y > lo_y) & (y < hi_y)
    x, y = x[keep], y[keep]
    order = np.lexsort((x, np.round(y, 6)))
    return np.stack([x[order], y[order]], axis=1)


# lattice_points refuses a box holding more points than this: 8 times what the largest image
# (io.DEFAULT_MAX_PIXELS) holds at the shortest period the hole finder takes (unet.MIN_PERIOD_PX); 0.5 GB of points.
MAX_LATTICE_POINTS = 1 << 25


def _reduced_basis(u: tuple[float, float], v: tuple[float, float]) -> tuple[tuple[float, float],
                                                                             tuple[float, float]] | None:
    """A Lagrange-Gauss reduced basis of the lattice spanned by u and v (the shortest vector and one at most
    60 degrees off perpendicular to it), or None when (u, v) is already one."""
    (ux, uy), (vx, vy) = u, v
    changed = False
    for _ in range(200):  # each pass shortens a vector by at least half of it; 200 covers any float basis
        if ux * ux + uy * uy > vx * vx + vy * vy:
            ux, uy, vx, vy = vx, vy, ux, uy
            changed = True
        m = round((ux * vx + uy * vy) / (ux * ux + uy * uy))
        if m == 0:
            break
        vx, vy = vx - m * ux, vy - m * uy
        changed = True
    return ((ux, uy), (vx, vy)) if changed else None


def _rounding_slack(ox: float, oy: float, ux: float, uy: float, vx: float, vy: float, det: float,
                    a_lo: float, a_hi: float, b_lo: float, b_hi: float, mag_a: float,
                    mag_b: float) -> tuple[float, float]:
    """How far (in indices along u, along v) rounding can move lattice_points' corner coordinates and the
    points it keeps: a bound, 8 times the unit roundoff's first-order error, where the one index of margin is
    not enough (an origin 1e14 px away or a nearly flat basis: a point computed inside the box may lie indices
    outside the corners' range). Of the order of 1e-12 for a lattice over its image.

    The corners' coordinates are n / det with det's relative error up to 2u * cond (cond = (|ux vy| + |vx uy|)
    / |det|) and n's up to 3u of its terms' magnitude (mag); a point (ox + a ux) + b vx is within 3u of the
    magnitudes summed, a position error e that moves its coordinates by e (|vx| + |vy|) / |det| along u."""
    u_r = 2.0 ** -53
    cond = (abs(ux * vy) + abs(vx * uy)) / abs(det)
    reach_a, reach_b = max(abs(a_lo), abs(a_hi)) + 2.0, max(abs(b_lo), abs(b_hi)) + 2.0
    slack_a = slack_b = 0.0
    for _ in range(2):  # the candidates' reach grows with the slack: once more with the wider ranges
        e = 8.0 * u_r * (max(abs(ox), abs(oy)) + (reach_a + slack_a) * max(abs(ux), abs(uy))
                         + (reach_b + slack_b) * max(abs(vx), abs(vy)))
        slack_a = 8.0 * u_r * cond * mag_a + e * (abs(vx) + abs(vy)) / abs(det)
        slack_b = 8.0 * u_r * cond * mag_b + e * (abs(ux) + abs(uy)) / abs(det)
    return slack_a, slack_b


def _lattice_points_solved(
    origin: Point, u: Point, v: Point, shape: tuple[int, int], edge_tolerance: float = -10.0
) -> np.ndarray:
    """lattice_points with the index ranges from np.linalg.solve (the former formula; its errors on a
    degenerate or non-finite lattice)."""
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


def _neighbours(c: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Indices (len(rows), min(k, n-1)) of the nearest other centroids of c[rows] (default all), ties by index."""
    n = len(c)
    kk = min(k, n - 1)
    rows = np.arange(n) if rows is None else rows
    # Directly up to 1M pairs (the general model's <= MAX_ANCHORS anchors against thousands of centroids):
    # the same neighbours as the tree, ties included, without scipy.spatial's ~0.14 s import per process.
    if n <= 256 or len(rows) * n <= 1_000_000:
        d = np.sqrt(((c[rows, None, :] - c[None, :, :]) ** 2).sum(-1))
        d[np.arange(len(rows)), rows] = np.inf
        return np.argsort(d, axis=1, kind="stable")[:, :kk]
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(c).query(c[rows], k=min(n, kk + 8))
    nbr = np.empty((len(rows), kk), dtype=np.int64)
    for t, i in enumerate(rows):
        sel = idx[t] != i
        di, ii = dist[t][sel], idx[t][sel]
        nbr[t] = ii[np.lexsort((ii, di))][:kk]
    return nbr


def candidate_pairs(centroids: np.ndarray, k: int = 6, min_spacing_px: float = MIN_SPACING_PX) -> np.ndarray:
    """Anchor pairs (i, j): each centroid with its k nearest others (ties by index), each unordered pair once.

    Pairs are listed in the order (i ascending, neighbour rank ascending) and keep the orientation of their
    first appearance; pairs closer than `min_spacing_px` are dropped.
    """
    c = np.asarray(centroids, dtype=np.float64)
    if len(c) < 2 or k < 1:
        return np.zeros((0, 2), dtype=np.int64)
    rows = np.arange(len(c))
    return _pairs(c, rows, _neighbours(c, k), min_spacing_px)


def _pairs(c: np.ndarray, rows: np.ndarray, nbr: np.ndarray, min_spacing_px: float) -> np.ndarray:
    n = len(c)
    kk = nbr.shape[1]
    ii = np.repeat(rows.astype(np.int64), kk)
    jj = nbr.reshape(-1).astype(np.int64)
    # each unordered pair once, where it first appears in (i, rank) order, with that orientation
    key = np.minimum(ii, jj) * n + np.maximum(ii, jj)
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    ii, jj = ii[first], jj[first]
    keep = np.hypot(*(c[jj] - c[ii]).T) >= min_spacing_px
    return np.stack([ii[keep], jj[keep]], axis=1)


# The general model anchors its candidates on at most this many centroids, spread over the image (every
# true hole proposes the true lattice, so a few dozen anchors suffice; a whole grid square holds
# thousands of holes, and the search grows with anchors x lattice points). Least squares over all
# centroids then fits the same lattice whichever anchor won: with 160 anchors instead of 48 the held-out
# and real EPU views gave the same holes to 5e-13 px, at 2-4x the search time (issue 11: a 512x364
# whole-square view at 1x spent ~0.9 s of its 1.5 s in the search).
MAX_ANCHORS = 48


def _anchor_rows(c: np.ndarray, model: str) -> np.ndarray:
    """The centroids that anchor candidates: all, or for the general model at most MAX_ANCHORS of them,
    evenly through the row-major order (so spread over the image, and deterministic)."""
    n = len(c)
    if model != "general" or n <= MAX_ANCHORS:
        return np.arange(n)
    order = np.lexsort((c[:, 0], c[:, 1]))
    return np.sort(order[np.linspace(0, n - 1, MAX_ANCHORS).round().astype(np.int64)])


# Two neighbour directions span a candidate lattice only when they are this far from collinear (|sin|):
# between 30 and 150 degrees apart. A reduced basis has 60-120 degrees between its vectors.
_MIN_SIN = 0.5
_SIN60 = math.sqrt(3.0) / 2.0


@dataclass(frozen=True)
class Candidates:
    """Candidate lattices for the search: origin index, basis (u, v) per candidate, and its anchors."""

    origin: np.ndarray  # (n,) centroid index of the origin
    u: np.ndarray  # (n, 2)
    v: np.ndarray  # (n, 2)
    anchors: np.ndarray  # (n, 3) centroid indices (i, j, j'), j' = -1 for a square / hexagonal completion


def candidate_lattices(centroids: np.ndarray, k: int = 6, min_spacing_px: float = MIN_SPACING_PX,
                       model: str = "general") -> Candidates:
    """Candidate lattices in list order (ties go to the first): per anchor pair (candidate_pairs order; the
    general model anchors on at most MAX_ANCHORS centroids)
    the square completion; then, for model "general", per pair the hexagonal completion, and per pair
    (i, j) the pair's own lattice (c_j - c_i, c_j' - c_i) with j' the nearest neighbour of i (of its k)
    at least 30 degrees off the line through c_i and c_j."""
    c = np.asarray(centroids, dtype=np.float64)
    if len(c) < 2 or k < 1:
        z = np.zeros((0, 2))
        return Candidates(np.zeros(0, dtype=np.int64), z, z, np.zeros((0, 3), dtype=np.int64))
    rows = _anchor_rows(c, model)
    nbr_rows = _neighbours(c, k, rows)
    pairs = _pairs(c, rows, nbr_rows, min_spacing_px)
    nbr = np.zeros((len(c), nbr_rows.shape[1]), dtype=np.int64)
    nbr[rows] = nbr_rows
    i, j = pairs[:, 0], pairs[:, 1]
    u = c[j] - c[i]
    sq = np.stack([-u[:, 1], u[:, 0]], axis=1)
    none = np.full(len(pairs), -1, dtype=np.int64)
    origins, us, vs, anchors = [i], [u], [sq], [np.stack([i, j, none], axis=1)]
    if model == "general" and len(pairs):
        hexa = np.stack([0.5 * u[:, 0] - _SIN60 * u[:, 1], _SIN60 * u[:, 0] + 0.5 * u[:, 1]], axis=1)
        origins.append(i)
        us.append(u)
        vs.append(hexa)
        anchors.append(np.stack([i, j, none], axis=1))
        # the pair's own second direction: i's nearest neighbour off the line i-j
        w = c[nbr[i]] - c[i][:, None, :]  # (pairs, kk, 2), nearest first
        lu = np.hypot(u[:, 0], u[:, 1])[:, None]
        lw = np.hypot(w[..., 0], w[..., 1])
        sin = np.abs(u[:, None, 0] * w[..., 1] - u[:, None, 1] * w[..., 0]) / np.maximum(lu * lw, 1e-300)
        ok = (sin >= _MIN_SIN) & (lw >= min_spacing_px)
        has = ok.any(axis=1)
        first = np.argmax(ok, axis=1)
        sel = np.flatnonzero(has)
        jj = nbr[i[sel], first[sel]].astype(np.int64)
        origins.append(i[sel])
        us.append(u[sel])
        vs.append(c[jj] - c[i[sel]])
        anchors.append(np.stack([i[sel], j[sel], jj], axis=1))
    return Candidates(
        origin=np.concatenate(origins).astype(np.int64),
        u=np.concatenate(us).reshape(-1, 2),
        v=np.concatenate(vs).reshape(-1, 2),
        anchors=np.concatenate(anchors).reshape(-1, 3).astype(np.int64),
    )


def _kernels():
    """The lattice search kernels (numpy, vectorised over points and candidates)."""
    from . import _lattice_kernels as k

    return k


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Integral image (rows + 1, cols + 1) int32 of a boolean mask: sat[r, c] = mask[:r, :c].sum()."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.bool_)
    # cv2.integral has exactly this layout (a zero first row and column) and was ~2x the former Numba loop.
    return cv2.integral(m.view(np.uint8), sdepth=cv2.CV_32S)


def lattice_cost(
    sat: np.ndarray,
    origin: Point,
    u: Point,
    v: Point | None = None,
    *,
    lambda_fn: float = 10.0,
    lambda_fp: float = 1.0,
    max_halfwidth: float = 15.0,
) -> float:
    """Cost of the lattice (origin, u, v) against the mask behind `sat`; v None: u turned 90 degrees.

    inf for a degenerate basis (collinear vectors, or a shortest vector under 2 sqrt 2 px)."""
    vv = (-float(u[1]), float(u[0])) if v is None else (float(v[0]), float(v[1]))
    total = int(sat[-1, -1])
    c, _ = _kernels().cost(sat, float(origin[0]), float(origin[1]), float(u[0]), float(u[1]), vv[0], vv[1],
                           total, float(lambda_fn), float(lambda_fp), float(max_halfwidth), math.inf)
    return float(c)


# ---------------------------------------------------------------------------------------------------
# Least squares


def row_spacings(a: Point, b: Point, max_index: int = 2) -> list[float]:
    """Spacings (px) of the lattice's families of rows (h, k), |h|, |k| <= max_index, not both 0; widest first.

    A period estimator (autocorrelation, spectrum) reads a lattice of nearest-neighbour distance s at any of
    these: s itself (square, (1, 0)), s / sqrt 2 ((1, 1)), s / 2 ((2, 0)), s sqrt 3 / 2 (hexagonal rows)."""
    inv = np.linalg.inv(_matrix(a, b))  # rows: the reciprocal basis
    out = set()
    for h in range(-max_index, max_index + 1):
        for k in range(0, max_index + 1):
            if k == 0 and h <= 0:
                continue  # (h, k) and (-h, -k) are one family
            g = h * inv[0] + k * inv[1]
            out.add(float(1.0 / math.hypot(*g)))
    return sorted(out, reverse=True)


def _matrix(u: Point, v: Point) -> np.ndarray:
    return np.array([[u[0], v[0]], [u[1], v[1]]], dtype=np.float64)


def _assign(c: np.ndarray, o: np.ndarray, basis: np.ndarray, tolerance: float):
    """Nearest lattice index per centroid, whether it is within tolerance * shortest spacing (one per point).

    basis: 2x2, columns the (reduced) lattice vectors; rounding the lattice coordinates of a reduced basis
    finds the nearest point for every centroid within a quarter spacing of one.
    """
    inv = np.linalg.inv(basis)
    d = c - o
    idx_f = np.rint(d @ inv.T)
    resid = np.hypot(*(d - idx_f @ basis.T).T)
    idx = idx_f.astype(np.int64)
    dmin = float(min(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1])))
    sel = resid < tolerance * dmin
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


def _solve_square(c: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Least squares for (ox, oy, ux, uy) with x = ox + a ux - b uy, y = oy + a uy + b ux; (origin, basis).

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
        return None
    ux = float(a0 @ x0 + b0 @ y0) / norm
    uy = float(a0 @ y0 - b0 @ x0) / norm
    origin = np.array([xm - (am * ux - bm * uy), ym - (am * uy + bm * ux)])
    return origin, _matrix((ux, uy), (-uy, ux))


def _solve_general(c: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Least squares for origin and both vectors, x = o + m a + n b: centred, the 2x2 normal equations."""
    mn = idx.astype(np.float64)
    mean_mn = mn.mean(axis=0)
    mean_c = c.mean(axis=0)
    m0, c0 = mn - mean_mn, c - mean_c
    gram = m0.T @ m0
    # all matched points on one line of the lattice: the second vector is undetermined
    if np.linalg.det(gram) <= 1e-9 * max(float(np.trace(gram)), 1.0) ** 2:
        return None
    coef = np.linalg.solve(gram, m0.T @ c0)  # rows: a, b
    basis = coef.T
    return mean_c - basis @ mean_mn, basis


def _usable(o: np.ndarray, basis: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(o)) and np.all(np.isfinite(basis))
                and abs(np.linalg.det(basis)) > 1e-9 * float((basis ** 2).sum()))


def _refine(c: np.ndarray, o: np.ndarray, basis: np.ndarray, solve, tolerance: float, iterations: int):
    """Shared growth-and-trim loop of refine_lattice / refine_general: (origin, basis, n_inliers) or None.

    The growth starts at the anchor. Where the grown lattice holds fewer centroids than the start did (an
    anchor on a sliver of film at the image's edge, whose few cut holes pin a wrong vector that the rings
    then lock in: tuning view 12903005 at 2x, 505 inliers before, 348 after, 166 false holes), it grows once
    more from the start's inlier nearest the middle of its inliers, and the fit holding more centroids wins
    (the anchor's on a tie). Where the anchor's growth fails (None) and the start holds two centroids or
    more, the growth from the middle is tried as well, and may return a lattice where the anchor's alone gave
    none; elsewhere the result is the anchor's, to the bit.

    The fits are compared by the centroids on their final (trimmed) lattices; the count returned is the
    winner's before the trim, as the anchor's growth alone always returned it (n_inliers feeds the
    quality and acceptance tests, whose outputs must stay the same where the anchor's fit wins)."""
    out = _grow_and_trim(c, o, basis, solve, tolerance, iterations)
    start, _, _ = _assign(c, o, basis, tolerance)
    held = 0 if out is None else out[3]
    # (one start inlier is the anchor itself: its middle is the anchor, and the same growth would run again)
    if held >= int(start.sum()) or int(start.sum()) < 2:
        return None if out is None else out[:3]
    inliers = c[start]
    middle = inliers[int(np.argmin(np.hypot(*(inliers - np.median(inliers, axis=0)).T)))]
    again = _grow_and_trim(c, middle, basis, solve, tolerance, iterations)
    if again is not None and again[3] > held:
        out = again
    return None if out is None else out[:3]


def _grow_and_trim(c: np.ndarray, o: np.ndarray, basis: np.ndarray, solve, tolerance: float,
                   iterations: int) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """_refine's loop from one start: (origin, basis, n_inliers, centroids on the final lattice) or None."""
    reach = np.hypot(*(c - o).T)
    radius = 3.0 * float(max(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1])))
    while True:
        near = c[reach <= radius]
        last = len(near) == len(c)
        prev_sel = prev_idx = None
        # Inner rings need only a better basis for the next ring; the last one iterates to a fixed point.
        for _ in range(iterations if last else 1):
            sel, idx, _ = _assign(near, o, basis, tolerance)
            if sel.sum() < 2:
                break
            if prev_sel is not None and np.array_equal(sel, prev_sel) and np.array_equal(idx[sel], prev_idx[sel]):
                break
            prev_sel, prev_idx = sel, idx
            fit = solve(near[sel], idx[sel])
            if fit is None:
                break  # too few points to pin both vectors yet: grow first
            if not _usable(*fit):
                return None
            o, basis = fit
        if last:
            break
        radius *= 2.0
    sel, idx, resid = _assign(c, o, basis, tolerance)
    if sel.sum() < 2:
        return None
    n_inliers = int(sel.sum())
    # Trimmed refits until the kept set settles: partial holes at the image edge and stray blobs pull
    # the least squares by pixels, and each refit shows them more clearly.
    kept = None
    for _ in range(iterations):
        dmin = float(min(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1])))
        limit = max(2.5 * float(median(resid[sel])), 1e-3 * dmin)
        keep = sel & (resid <= limit)
        if keep.sum() < 2 or (kept is not None and np.array_equal(keep, kept)):
            break
        kept = keep
        fit = solve(c[keep], idx[keep])
        if fit is None or not _usable(*fit):
            break
        o, basis = fit
        sel, idx, resid = _assign(c, o, basis, tolerance)
        if sel.sum() < 2:
            return None
    return o, basis, n_inliers, int(sel.sum())


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
    ux, uy = float(u[0]), float(u[1])
    out = _refine(c, np.array(origin, dtype=np.float64), _matrix((ux, uy), (-uy, ux)), _solve_square,
                  tolerance, iterations)
    if out is None:
        return None
    o, basis, n = out
    return (float(o[0]), float(o[1])), (float(basis[0, 0]), float(basis[1, 0])), n


def refine_general(
    centroids: np.ndarray, origin: Point, a: Point, b: Point, *, tolerance: float = 0.25, iterations: int = 10
) -> tuple[Point, Point, Point, int] | None:
    """Least-squares lattice (origin, a, b), both vectors free, through the centroids near its points.

    As refine_lattice (grow from the anchor, then trimmed refits), with tolerance relative to the shortest
    lattice vector. Returns (origin, a, b, n_inliers) with (a, b) Gauss-reduced, or None with fewer than
    two lattice points matched or all matched points on one lattice line.
    """
    c = np.asarray(centroids, dtype=np.float64)
    r1, r2 = _reduce(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

    def solve(pts, idx):
        fit = _solve_general(pts, idx)
        if fit is None:
            return None
        o, basis = fit
        # keep the basis reduced, so rounding lattice coordinates finds the nearest point
        s1, s2 = _reduce(basis[:, 0], basis[:, 1])
        return o, np.stack([s1, s2], axis=1)

    out = _refine(c, np.array(origin, dtype=np.float64), np.stack([r1, r2], axis=1), solve, tolerance,
                  iterations)
    if out is None:
        return None
    o, basis, n = out
    return ((float(o[0]), float(o[1])), (float(basis[0, 0]), float(basis[1, 0])),
            (float(basis[0, 1]), float(basis[1, 1])), n)


# ---------------------------------------------------------------------------------------------------
# The fit


# A coset of an index-2 superlattice counts as holes when this share of its points inside the image have a
# centroid within a quarter of the new shortest spacing, and at least this share relative to the old
# points (random strays: a few %, even as many strays as holes; a row of holes with most missing: ~0.3).
_COSET_MIN = 0.2
_COSET_SHARE = 0.3
# A coset is holes like the others when _likeness says at least this (alike ~1; the U-Net's blobs between
# holes ~0.2 held out); residuals count from a floor (this many px, or this share of the spacing), below
# which a centroid's position is noise (the map's pixels, the blob's shape).
_COSET_LIKENESS = 0.5
_RESIDUAL_FLOOR_PX = 0.25
_RESIDUAL_FLOOR = 0.02
# ... and _sparsify judges a split only where each coset has at least this many centroids on its points.
_COSET_MIN_CENTROIDS = 6
# A blob's size is the mask pixels in a square of half-width this share of the (denser) lattice's shortest
# vector around its point: wide enough to hold a whole hole (not the search's footprint, capped at 15 px,
# which a large hole and a small blob both fill), narrow enough to leave out most of the neighbours'.
_SIZE_WINDOW = 0.35


# Point pairs up to this many are compared directly (a few ms); beyond, a k-d tree (scipy.spatial's import
# alone costs ~0.14 s, more than a typical image's whole search).
_BRUTE_PAIRS = 4_000_000


def nearest_neighbour_distances(c: np.ndarray) -> np.ndarray:
    """Distance from each centroid (n, 2) to its nearest other one (inf for a lone centroid), exact."""
    c = np.asarray(c, dtype=np.float64).reshape(-1, 2)
    n = len(c)
    if n * n > _BRUTE_PAIRS:
        from scipy.spatial import cKDTree

        return cKDTree(c).query(c, k=2)[0][:, 1]
    out = np.full(n, np.inf)
    step = max(1, 262_144 // max(n, 1))
    for s in range(0, n, step):
        d2 = (c[s : s + step, None, 0] - c[None, :, 0]) ** 2 + (c[s : s + step, None, 1] - c[None, :, 1]) ** 2
        d2[np.arange(len(d2)), np.arange(s, s + len(d2))] = np.inf
        out[s : s + len(d2)] = np.sqrt(d2.min(axis=1))
    return out


def regularity(c: np.ndarray, tolerance: float = 0.15) -> float:
    """Share of centroids whose nearest-neighbour distance is within `tolerance` of the median one.

    A lattice's centroids score ~0.85-1 (strays and missing holes lower it a little); blobs the U-Net fires
    on in noise, lacey or continuous film, whose distances spread like a random pattern's, 0.15-0.45
    (a Poisson pattern ~0.25). NaN below 4 centroids."""
    if len(c) < 4:
        return math.nan
    d = nearest_neighbour_distances(c)
    med = float(median(d))
    if not med > 0.0:
        return 0.0
    return float(np.mean(np.abs(d / med - 1.0) < tolerance))


def _coset_stats(c: np.ndarray, sat: np.ndarray, origin: Point, a: np.ndarray, b: np.ndarray,
                 radius: float, halfwidth: float) -> tuple[float, float, float, int]:
    """(share, size, residual, count) of the lattice (origin, a, b)'s points inside the image: the share
    with a centroid within `radius`, the mean mask pixels in the footprints (half-width `halfwidth`) of
    those with any, the median distance of those centroids to their points (nan where none), and how
    many points have one."""
    shape = (sat.shape[0] - 1, sat.shape[1] - 1)
    pts = lattice_points(origin, tuple(a), tuple(b), shape, 0.0)
    if len(pts) == 0:
        return 0.0, math.nan, math.nan, 0
    dist = _near_distance(pts, c, origin, a, b, radius)
    near = dist < radius
    h = max(1, int(halfwidth))
    x = np.rint(pts[:, 0]).astype(np.int64)
    y = np.rint(pts[:, 1]).astype(np.int64)
    # (np.clip's and np.mean's wrappers cost more than their work on ~100 points: the same integers by
    # np.minimum / np.maximum, and the means of integers are their exact sums over their counts, as np.mean's)
    x0, x1 = np.minimum(np.maximum(x - h, 0), shape[1]), np.minimum(np.maximum(x + h + 1, 0), shape[1])
    y0, y1 = np.minimum(np.maximum(y - h, 0), shape[0]), np.minimum(np.maximum(y + h + 1, 0), shape[0])
    mass = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    held = mass > 0
    n_held = int(np.count_nonzero(held))
    size = float(mass[held].sum(dtype=np.float64)) / n_held if n_held else math.nan
    n_near = int(np.count_nonzero(near))
    resid = float(median(dist[near])) if n_near else math.nan
    return n_near / len(pts), size, resid, n_near


def _near_distance(pts: np.ndarray, c: np.ndarray, origin: Point, a: np.ndarray, b: np.ndarray,
                   radius: float) -> np.ndarray:
    """For each lattice point (pts, of the lattice origin + m a + n b), the distance to the nearest centroid
    where one lies within `radius` (at most a quarter of the lattice's shortest vector), else inf.

    Each centroid is rounded to its lattice point in a reduced basis (exact within a quarter spacing), so
    this costs O(points + centroids), not the O(points x centroids) of a brute-force search."""
    ra, rb = _reduce(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    o = np.asarray(origin, dtype=np.float64)
    cell = _nearest_cells(c, o, ra, rb)
    keep = _cell_distances(c, o, ra, rb, cell) < radius
    out = np.full(len(pts), np.inf)
    if not keep.any():
        return out
    pcell = _nearest_cells(pts, o, ra, rb).astype(np.int64)
    ccell = cell[keep].astype(np.int64)
    lo = np.minimum(pcell.min(axis=0), ccell.min(axis=0))
    width = int(max(pcell[:, 1].max(), ccell[:, 1].max()) - lo[1] + 1)
    pkey = (pcell[:, 0] - lo[0]) * width + (pcell[:, 1] - lo[1])
    ckey = (ccell[:, 0] - lo[0]) * width + (ccell[:, 1] - lo[1])
    order = np.argsort(pkey, kind="stable")
    pos = np.searchsorted(pkey[order], ckey)
    pos = np.minimum(pos, len(order) - 1)
    hit = pkey[order][pos] == ckey  # centroids on a point inside the image
    idx, cc = order[pos[hit]], c[keep][hit]
    # the distance as a brute-force search measures it (point minus centroid), to the same bits
    d = np.sqrt((pts[idx, 0] - cc[:, 0]) ** 2 + (pts[idx, 1] - cc[:, 1]) ** 2)
    np.minimum.at(out, idx, np.where(d < radius, d, np.inf))
    return out


def _nearest_cells(c: np.ndarray, o: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Each point's lattice coordinates (m, n), rounded, in the reduced basis (ra, rb) about origin o: its nearest
    lattice point's, where it lies within a quarter spacing of one."""
    return np.rint((c - o) @ np.linalg.inv(np.stack([ra, rb], axis=1)).T)


def _cell_distances(c: np.ndarray, o: np.ndarray, ra: np.ndarray, rb: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The distance of each point to the lattice point `cell` of it (_nearest_cells)."""
    return np.hypot(*(c - o - cell @ np.stack([ra, rb])).T)


def _likeness(weak: tuple, strong: tuple, spacing: float) -> float:
    """How much the weak coset's blobs look like the strong one's holes: the ratio of their sizes times
    the ratio of their residuals (capped at 1 each; 1 alike, ~0.2 for blobs the U-Net fires between holes).

    Not the share of points with a blob: a weak map misses whole rows of real holes (the share drops,
    the holes it keeps are as large and as well placed), while the U-Net, run at a period well below its
    own, fires smaller blobs between holes, and on blurred film noise blobs scattered around the film's
    lattice points (residuals 3-4x the holes')."""
    size_w, res_w = weak[1], weak[2]
    size_s, res_s = strong[1], strong[2]
    if not (size_w > 0 and size_s > 0) or math.isnan(res_w) or math.isnan(res_s):
        return 0.0
    floor = max(_RESIDUAL_FLOOR_PX, _RESIDUAL_FLOOR * spacing)
    return min(1.0, size_w / size_s) * min(1.0, (res_s + floor) / (res_w + floor))


def _strength(stats: tuple) -> float:
    """Mean mask pixels per point of a coset (_coset_stats): share of points with a blob times its size."""
    return stats[0] * stats[1] if stats[1] > 0 else 0.0


def _coset_parities(c: np.ndarray, origin: Point, ra: np.ndarray, rb: np.ndarray,
                    radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For _sparsify's three index-2 sublattices of the reduced basis (ra, rb) in its order: (the centroids
    within `radius` of a lattice point, their coset there: 0 the origin's, 1 the other), as index arrays."""
    o = np.asarray(origin, dtype=np.float64)
    cell = _nearest_cells(c, o, ra, rb)
    on = np.flatnonzero(_cell_distances(c, o, ra, rb, cell) < radius)
    m, n = cell[on, 0].astype(np.int64), cell[on, 1].astype(np.int64)
    return [(on, m % 2), (on, n % 2), (on, (m + n) % 2)]


def _brighter_coset(brightness: np.ndarray, on: np.ndarray, coset: np.ndarray) -> int | None:
    """0 or 1 where the centroids on one coset are nearly all brighter in the image than nearly all of those
    on the other, and the darker ones are the more even (the holes and the film between them), else None.

    Nearly all: the brighter coset's _BRIGHT_PERCENTILE above the darker one's 100 - _BRIGHT_PERCENTILE, or at
    least _BRIGHT_SHARE of the pairs in order (_brighter_share), with at least _BRIGHT_MIN_CENTROIDS on each. A
    lattice's own cosets look alike (interleaved, they share the image's gradients and the holes' scatter in
    ice): for two samples of one distribution so clean a split is a chance of about 1 in 10^4 at n = 10, far
    less with the hundreds a grid-square view holds. Even: the
    darker coset's median absolute deviation is the smaller, as film's is beside the holes' ice; holes darker
    than their film (thick ice, gold foil) scatter more than it, and are left to the blobs' tests."""
    values = [brightness[on[coset == k]] for k in (0, 1)]
    if min(len(v) for v in values) < _BRIGHT_MIN_CENTROIDS:
        return None
    ranges = [percentile(v, [_BRIGHT_PERCENTILE, 50.0, 100.0 - _BRIGHT_PERCENTILE]) for v in values]
    hi = int(ranges[1][1] > ranges[0][1])
    if not ranges[hi][0] > ranges[1 - hi][2] and _brighter_share(values[hi], values[1 - hi]) < _BRIGHT_SHARE:
        return None
    spread = [float(median(np.abs(v - r[1]))) for v, r in zip(values, ranges)]
    return hi if spread[1 - hi] < spread[hi] else None


# _brighter_coset: the percentiles of each coset's brightness that must not overlap, and how many centroids each
# coset needs.
_BRIGHT_PERCENTILE = 5.0
_BRIGHT_MIN_CENTROIDS = 10
# ... or the share of (brighter, darker) pairs in that order that suffices when they overlap: holes of thick ice
# can be as dark as the film (with a tenth of the holes among the film's values, 0.95 of the pairs are in order;
# holes_sets seed 10403002 at 2x: the 5th percentile of 348 holes 1 grey level under the 95th of 270 film blobs,
# 0.979 in order). Two samples of one distribution reach 0.95 by chance about 7 times in 10^5 at 10 centroids
# each, never in 2 x 10^5 draws at 20.
_BRIGHT_SHARE = 0.95


def _brighter_share(bright: np.ndarray, dark: np.ndarray) -> float:
    """The share of pairs (one of `bright`, one of `dark`) in which the first is the brighter (ties: half)."""
    ordered = np.sort(dark)
    below = np.searchsorted(ordered, bright, side="left")
    at_or_below = np.searchsorted(ordered, bright, side="right")
    return float((below.sum() + 0.5 * (at_or_below - below).sum()) / (len(bright) * len(dark)))


def _any_near(c: np.ndarray, origin: Point, h: np.ndarray, ra: np.ndarray, rb: np.ndarray, radius: float) -> bool:
    """Whether any centroid lies within `radius` (at most a quarter of |ra|, |rb|) of the coset origin + h of the
    lattice (ra, rb), reduced: O(centroids), without the coset's points (_coset_stats' share is 0 where none)."""
    o = np.asarray(origin, dtype=np.float64) + h
    return bool((_cell_distances(c, o, ra, rb, _nearest_cells(c, o, ra, rb)) < radius).any())


def _superlattices(ra: np.ndarray, rb: np.ndarray) -> list[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]]:
    """_densify's superlattices of the reduced basis (ra, rb): (the shifts of their new cosets, a basis), the
    three of index 2 (one coset, h = a/2, b/2, (a+b)/2) and the four of index 3 (two, h and 2h)."""
    halves = [((0.5 * ra,), (0.5 * ra, rb)), ((0.5 * rb,), (ra, 0.5 * rb)), ((0.5 * (ra + rb),), (0.5 * (ra + rb), rb))]
    thirds = [(h, (h, rb)) for h in (ra / 3.0, (ra + rb) / 3.0, (ra - rb) / 3.0)] + [(rb / 3.0, (ra, rb / 3.0))]
    return halves + [((h, 2.0 * h), basis) for h, basis in thirds]


def _densify(c: np.ndarray, sat: np.ndarray, origin: Point, a: Point, b: Point,
             min_spacing_px: float) -> tuple[Point, Point, Point, int]:
    """The densest lattice the holes fill: while one of the three index-2 superlattices (adding a/2, b/2 or
    (a+b)/2) or the four index-3 ones (adding h and 2h, h one of a/3, b/3, (a+b)/3, (a-b)/3) has centroids on
    each of its new cosets about as often as on its old points, and alike (_likeness), take it and refit.

    With many holes missing (broken film, ice, a weak map), a sublattice that skips the emptiest rows costs
    less than the true lattice (its empty footprints cost more than the holes it misses); the cost cannot
    tell the two apart, but the centroids on the skipped coset can. Index 3: a hexagonal array whose points
    grid bars hide by more than half (a whole-square view) costs less as its sqrt(3) x sqrt(3) superlattice,
    a third of the holes (tuning view 13603002 at 2x: 1,222 of 3,679 blobs, the 11 grid squares returned).
    Returns the lattice and how many centroids lie on the new cosets of the last round that were left out
    as unlike the holes.
    """
    for _ in range(3):  # up to index 27
        ra, rb = _reduce(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        best = None
        unlike = 0
        for shifts, basis in _superlattices(ra, rb):
            dmin = math.hypot(*_reduce(*basis)[0])
            if dmin < min_spacing_px:
                continue
            radius, hw = 0.25 * dmin, _SIZE_WINDOW * dmin
            if len(shifts) > 1 and not all(_any_near(c, origin, h, ra, rb, radius) for h in shifts):
                continue  # a coset with no centroid on it has share 0 (a true lattice's thirds: the usual case)
            old = _coset_stats(c, sat, origin, ra, rb, radius, hw)
            news = [_coset_stats(c, sat, (origin[0] + h[0], origin[1] + h[1]), ra, rb, radius, hw) for h in shifts]
            # the weakest new coset decides: each must hold holes (index 3: one coset of three is no lattice)
            new = min(news, key=lambda n: n[0])
            if new[0] < max(_COSET_MIN, _COSET_SHARE * old[0]):
                continue
            if min(_likeness(n, old, dmin) for n in news) < _COSET_LIKENESS:
                unlike += sum(n[3] for n in news)
            elif best is None or new[0] > best[0]:
                best = (new[0], basis)
        if best is None:
            return origin, a, b, unlike
        fit = refine_general(c, origin, tuple(best[1][0]), tuple(best[1][1]))
        if fit is None or min(math.hypot(*fit[1]), math.hypot(*fit[2])) < _REFINED_SLACK * min_spacing_px:
            break
        origin, a, b = fit[0], fit[1], fit[2]
    return origin, a, b, 0


def _sparsify(c: np.ndarray, sat: np.ndarray, origin: Point, a: Point, b: Point,
              brightness: np.ndarray | None = None) -> tuple[Point, Point, Point, int]:
    """The converse of _densify: while one of the three index-2 sublattices ((2a, b), (a, 2b), (a+b, a-b))
    splits the lattice into a coset of holes and one of blobs unlike them (_likeness below _COSET_LIKENESS,
    or, given each centroid's `brightness` in the image, a coset far darker than the other: _brighter_coset),
    take the holes' coset and refit.

    The U-Net, run at a period well below its own (a capped upscale) or on a blurred view, fires weaker
    blobs between the holes, often enough that the lattice through both (1/sqrt 2 or 1/2 of the period)
    costs less than the true one; every such lattice is the union of the true one and a coset of it. On a
    grid-square view at 30-45 px periods its blobs on the film between the holes can be as large and as well
    placed as the holes' (and the hole CNN then prefers the film's crops): only the image tells them apart.
    Returns the lattice and how many centroids lay on the cosets set aside.
    """
    set_aside = 0
    for _ in range(2):  # down to index 4
        ra, rb = _reduce(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        radius, hw = 0.25 * math.hypot(*ra), _SIZE_WINDOW * math.hypot(*ra)
        parities = _coset_parities(c, origin, ra, rb, radius) if brightness is not None else None
        worst = None
        for k, (h, basis) in enumerate(((ra, (2.0 * ra, rb)), (rb, (ra, 2.0 * rb)), (ra, (ra + rb, ra - rb)))):
            one = _coset_stats(c, sat, origin, *basis, radius, hw)
            other_origin = (origin[0] + h[0], origin[1] + h[1])
            two = _coset_stats(c, sat, other_origin, *basis, radius, hw)
            holes = 1 if _strength(one) < _strength(two) else 0  # the holes' coset: more blobs, or larger ones
            like = _likeness(*((two, one) if holes == 0 else (one, two)), radius * 4.0)
            # Where the blobs cannot tell the cosets apart, the image may: a coset of the film between holes is
            # darker than the holes (which transmit more) and even (the holes' ice scatters).
            if like >= _COSET_LIKENESS and brightness is not None and parities is not None:
                bright = _brighter_coset(brightness, *parities[k])
                if bright is not None:
                    holes, like = bright, 0.0
            if holes == 1:
                one, two = two, one
            keep = origin if holes == 0 else other_origin
            if one[0] >= _COSET_MIN and min(one[3], two[3]) >= _COSET_MIN_CENTROIDS and (
                    worst is None or like < worst[0]):
                worst = (like, keep, basis, two[3])
        if worst is None or worst[0] >= _COSET_LIKENESS:
            break
        fit = refine_general(c, worst[1], tuple(worst[2][0]), tuple(worst[2][1]))
        if fit is None:
            break
        origin, a, b = fit[0], fit[1], fit[2]
        set_aside += worst[3]
    return origin, a, b, set_aside


def fit_lattice(
    centroids: np.ndarray,
    mask: np.ndarray,
    *,
    k: int = 6,
    lambda_fn: float = 10.0,
    lambda_fp: float = 1.0,
    max_halfwidth: float = 15.0,
    refine: bool = True,
    model: Model = "square",
    min_spacing_px: float = MIN_SPACING_PX,
    min_inliers: float = 0.3,
    min_occupancy: float = 0.3,
    blob_halfwidth: float | None = 2.0,
    hidden_fallback: bool = True,
    brightness: np.ndarray | None = None,
    sat: np.ndarray | None = None,
) -> Lattice | None:
    """Fit a lattice to centroids (n, 2) xy and a boolean mask; None without a lattice worth having.

    model: "square" (the original's, and the default until the pipeline opts in: v is u turned 90 degrees,
    least squares fits origin and u only; `k=5, refine=False` reproduces the original bit for bit) or
    "general" (any two basis vectors, see the module docstring; index-2 checks then recover the full
    lattice where so many holes are missing that a sublattice costs less, see _densify, and the holes'
    lattice where the map's blobs between the holes made a denser one cheaper, see _sparsify).

    None with fewer than two centroids, no anchor pair at least `min_spacing_px` apart, nothing positive
    in the mask, or when the best lattice is no lattice: fewer than `min_inliers` of the centroids (and
    fewer than 3, or all of them where there are fewer; the general model, which fits any three centroids,
    needs 4 whatever their number) near its points, or
    fewer than `min_occupancy` of its points inside the image on a positive pixel (noise blobs: any two
    span a lattice, most of whose points then land on nothing).

    The footprint half-width is min(max_halfwidth, d / 4, blob_halfwidth * r) (d the shortest lattice
    vector; below 9.66 px d / (2 sqrt 2) - 1) with r the radius of the mean blob (positives per centroid):
    a point on a blob must gain more (lambda_fn x blob) than its empty footprint costs, or sparse wrong
    lattices win on small blobs. On the reference image r ~ 19 px, so the cap leaves the original's 15 px;
    None turns it off.

    hidden_fallback: when a grid bar hides most of the lattice, the empty footprints under it make a sparse
    wrong lattice cheaper than the true one, which then fails the tests above. The search is then repeated
    with lambda_fp / 10, and its lattice kept if it holds at least _HIDDEN_INLIERS of the centroids (and
    _HIDDEN_MIN_CENTROIDS of them): so many on one lattice by chance is out of reach, whatever the occupancy;
    or _HIDDEN_OCCUPIED_INLIERS of them where at least min_occupancy of its points are occupied.

    Both tests count only the centroids the lattice must explain: those the index-2 checks set aside as
    unlike the holes (Lattice.n_set_aside: _sparsify's, else _densify's) are left out.

    brightness: optional (n,) image brightness at each centroid (the general model's index-2 check then also
    sets aside a coset of centroids far darker than the other: film between holes, see _sparsify).

    sat: summed_area_table(mask), where the caller has it (find_holes makes it on a second core while it
    finds the centroids); it must be that table.
    """
    if model not in ("general", "square"):
        raise ValueError(f"model must be 'general' or 'square', got {model!r}")
    kind = model
    c, m = _checked_arguments(centroids, mask, k, lambda_fn, lambda_fp, max_halfwidth, refine, min_spacing_px,
                              min_inliers, min_occupancy, blob_halfwidth, hidden_fallback)
    light = _checked_brightness(brightness, len(c))
    k = int(k)  # a whole float (6.0) or a numpy integer: slices take an int
    if len(c) < 2:
        return None
    cands = candidate_lattices(c, k=k, min_spacing_px=min_spacing_px, model=kind)
    if len(cands.origin) == 0:
        return None
    if sat is None:
        sat = summed_area_table(m)
    elif sat.shape != (m.shape[0] + 1, m.shape[1] + 1):
        raise ValueError(f"fit_lattice: sat must be the mask's summed_area_table {(m.shape[0] + 1, m.shape[1] + 1)}, "
                         f"got shape {sat.shape}")
    total = int(sat[-1, -1])
    if total == 0:
        return None
    halfwidth = float(max_halfwidth)
    if blob_halfwidth is not None:
        blob_radius = math.sqrt(total / len(c) / math.pi)
        halfwidth = min(halfwidth, max(1.0, blob_halfwidth * blob_radius))
    memo: dict = {}  # the footprint sums of the candidates scanned, for the hidden fallback's search
    args = (c, sat, total, cands, lambda_fn, lambda_fp, halfwidth, refine, min_spacing_px, kind)
    best = _search_lattice(*args, memo=memo, mask=m, brightness=light)
    if best is None:
        return None
    # A general lattice passes through any three centroids (a square one through any two), so one
    # inlier more is its price of admission. It is paid even where there are only three: a general lattice
    # through three blobs is no evidence of one (a bar across continuous film, 3 blobs at its edge: an
    # oblique 320 x 694 px lattice and 8 false holes). The square model keeps the original's min(3, n).
    free = 1 if kind == "general" else 0
    need = 3 + free if kind == "general" else min(3, len(c))
    # blobs between the holes (Lattice.n_set_aside) need no lattice point; at least one centroid is explained
    explained = max(len(c) - best.n_set_aside, 1)
    if best.n_inliers >= need and best.n_inliers - free >= min_inliers * explained and (
            best.occupancy >= min_occupancy):
        return best
    if hidden_fallback and lambda_fp > 0 and len(c) >= _HIDDEN_MIN_CENTROIDS:
        hidden = _search_lattice(c, sat, total, cands, lambda_fn, lambda_fp / 10.0, halfwidth, refine,
                                 min_spacing_px, kind, memo=memo, mask=m, brightness=light)
        if hidden is not None:
            # one whose points are as occupied as the first test asks needs fewer of the centroids
            share = _HIDDEN_OCCUPIED_INLIERS if hidden.occupancy >= min_occupancy else _HIDDEN_INLIERS
            if hidden.n_inliers >= share * max(len(c) - hidden.n_set_aside, 1):
                return hidden
    return None


def _checked_arguments(centroids: Any, mask: Any, k: Any, lambda_fn: Any, lambda_fp: Any, max_halfwidth: Any,
                       refine: Any, min_spacing_px: Any, min_inliers: Any, min_occupancy: Any, blob_halfwidth: Any,
                       hidden_fallback: Any) -> tuple[np.ndarray, np.ndarray]:
    """fit_lattice's arguments checked (TypeError / ValueError naming the argument): centroids as (n, 2) float64,
    the mask as a 2-D bool array."""
    from .options import check_flag, check_range, check_real

    c = np.asarray(centroids)
    if c.size and c.dtype.kind not in "iuf":
        raise TypeError(f"fit_lattice: centroids must be real numbers, got {c.dtype}")
    if c.size and (c.ndim != 2 or c.shape[1] != 2):
        raise ValueError(f"fit_lattice: centroids must be an (n, 2) array of x, y, got shape {c.shape}")
    c = c.astype(np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(c)):
        raise ValueError("fit_lattice: centroids hold NaN or infinite values")
    raw = np.asarray(mask)
    if raw.dtype.kind not in "biuf":
        raise TypeError(f"fit_lattice: mask must be a boolean image, got {raw.dtype}")
    if raw.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {raw.shape}")
    if check_real("fit_lattice", "k", k, integer=True) < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    for name, value in (("lambda_fn", lambda_fn), ("lambda_fp", lambda_fp), ("min_spacing_px", min_spacing_px)):
        if check_real("fit_lattice", name, value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    for name, value in (("max_halfwidth", max_halfwidth), ("blob_halfwidth", blob_halfwidth)):
        if value is not None and check_real("fit_lattice", name, value) <= 0:
            raise ValueError(f"{name} must be > 0 px, got {value!r}")
    if max_halfwidth is None:
        raise TypeError("fit_lattice.max_halfwidth must be a number, got None")
    check_range("fit_lattice", "min_inliers", min_inliers, 0.0, 1.0)
    check_range("fit_lattice", "min_occupancy", min_occupancy, 0.0, 1.0)
    check_flag("fit_lattice", "refine", refine)
    check_flag("fit_lattice", "hidden_fallback", hidden_fallback)
    return c, raw.astype(bool, copy=False)


def _checked_brightness(brightness: Any, n: int) -> np.ndarray | None:
    """fit_lattice's brightness as (n,) float64 (None stays None); ValueError / TypeError naming it."""
    if brightness is None:
        return None
    values = np.asarray(brightness)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"fit_lattice: brightness must be real numbers, got {values.dtype}")
    if values.shape != (n,):
        raise ValueError(f"fit_lattice: brightness must hold one value per centroid ({n}), got shape {values.shape}")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("fit_lattice: brightness holds NaN or infinite values")
    return values


# A lattice most of whose points are hidden is accepted when this share of at least this many centroids
# lies on it (by chance a centroid lands within a quarter period of a point 25 % of the time).
_HIDDEN_INLIERS = 0.8
_HIDDEN_MIN_CENTROIDS = 12
# ... or this share where at least min_occupancy of its points hold a blob: the bars hid the first search's
# lattice only by their empty footprints at lambda_fp (tuning view 11803000 at 2x: 2,196 of 2,885 blobs, 0.76,
# on the holes' 36.7 px lattice, half its points occupied; the grid squares' lattice won instead).
_HIDDEN_OCCUPIED_INLIERS = 0.6
# Least squares moves the anchors' vectors by their noise: a lattice found at the minimum spacing may
# refine to slightly less.
_REFINED_SLACK = 0.9


def _search_lattice(c: np.ndarray, sat: np.ndarray, total: int, cands: Candidates, lambda_fn: float,
                    lambda_fp: float, halfwidth: float, refine: bool, min_spacing_px: float,
                    model: str, memo: dict | None = None, mask: np.ndarray | None = None,
                    brightness: np.ndarray | None = None) -> Lattice | None:
    """The cheapest candidate lattice, refined, with its inlier count and occupancy (not yet judged).

    memo: footprint sums shared with an earlier search of the same candidates (_lattice_kernels.search);
    mask: the boolean image behind `sat` (for the search's footprint tables); brightness: fit_lattice's."""
    k = _kernels()
    # Evaluate first the candidates whose vectors are typical of nearest neighbours: usually the true
    # lattice, whose low cost then prunes the rest early.
    lu = np.hypot(cands.u[:, 0], cands.u[:, 1])
    lv = np.hypot(cands.v[:, 0], cands.v[:, 1])
    typical = float(median(lu))
    dev = np.maximum(np.abs(np.log(lu / typical)), np.abs(np.log(lv / typical)))
    order = np.argsort(dev, kind="stable").astype(np.int64)
    ox = np.ascontiguousarray(c[cands.origin, 0])
    oy = np.ascontiguousarray(c[cands.origin, 1])
    best_idx, best = k.search(sat, ox, oy, np.ascontiguousarray(cands.u[:, 0]), np.ascontiguousarray(cands.u[:, 1]),
                              np.ascontiguousarray(cands.v[:, 0]), np.ascontiguousarray(cands.v[:, 1]), order,
                              total, float(lambda_fn), float(lambda_fp), halfwidth, float(min_spacing_px), memo,
                              mask)
    if best_idx < 0 or not math.isfinite(best):
        return None
    anchors = tuple(int(t) for t in cands.anchors[best_idx] if t >= 0)
    origin = (float(ox[best_idx]), float(oy[best_idx]))
    u = (float(cands.u[best_idx, 0]), float(cands.u[best_idx, 1]))
    v = (float(cands.v[best_idx, 0]), float(cands.v[best_idx, 1]))
    final_cost = float(best)
    refined = False
    set_aside = 0
    if refine and model == "square":
        fit = refine_lattice(c, origin, u)
        if fit is not None and math.hypot(*fit[1]) >= _REFINED_SLACK * min_spacing_px:
            origin, u = fit[0], fit[1]
            v = (-u[1], u[0])
            refined = True
    elif refine:
        fit = refine_general(c, origin, u, v)
        if fit is not None and min(math.hypot(*fit[1]), math.hypot(*fit[2])) >= _REFINED_SLACK * min_spacing_px:
            origin, u, v = fit[0], fit[1], fit[2]
            refined = True
        if refined:
            origin, u, v, unlike = _densify(c, sat, origin, u, v, min_spacing_px)
            origin, u, v, set_aside = _sparsify(c, sat, origin, u, v, brightness)
            set_aside = set_aside or unlike
    if refined:
        final_cost = lattice_cost(sat, origin, u, v, lambda_fn=lambda_fn, lambda_fp=lambda_fp,
                                  max_halfwidth=halfwidth)
    if model == "square":
        a, b, angle = _canonical_square(*u)
    else:
        a, b = canonical_basis(u, v)
        angle = _screen_angle(*a) % 180.0  # [0, 180) even where a rounds to just below the x axis
    basis = _matrix(*_reduce(np.array(a), np.array(b)))
    # Is it a lattice at all? Any two blobs span one, so the caller asks that it explains most of the
    # others too: by chance a stray centroid lies within a quarter spacing of a lattice point 25 % of the time.
    sel, _, _ = _assign(c, np.array(origin), basis, 0.25)
    _, _, inside, occupied = k.scan(sat, origin[0], origin[1], a[0], a[1], b[0], b[1], halfwidth, math.inf)
    return Lattice(
        origin=origin,
        a=a,
        b=b,
        angle_deg=angle,
        cost=final_cost,
        anchors=anchors,
        n_inliers=int(sel.sum()),
        occupancy=float(occupied / inside if inside else 0.0),
        refined=refined,
        model=model,
        n_set_aside=set_aside,
    )
