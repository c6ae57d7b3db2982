"""This session's fast paths on dense med-mag images (footprint tables from a box filter, separate blobs found
without the dilated mask, ...) against the former formulas, which are kept here verbatim: the same bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptolemy_rt import _lattice_kernels as k
from ptolemy_rt.lattice import summed_area_table

from .conftest import examples

# ---------------------------------------------------------------------------------------------------
# The former formulas (ptolemy_rt._lattice_kernels as of main 9f55dc0)


def _former_box_tables(sat, h):
    rows, cols = sat.shape[0] - 1, sat.shape[1] - 1
    pad = int(h) + 3
    r = np.arange(-pad, rows + pad)
    c = np.arange(-pad, cols + pad)
    rlo = np.clip(r - h, 0, rows)
    rhi = np.maximum(np.clip(r + h + 1, 0, rows), rlo)
    clo = np.clip(c - h, 0, cols)
    chi = np.maximum(np.clip(c + h + 1, 0, cols), clo)
    top, bottom = sat[rlo], sat[rhi]
    sums = (bottom[:, chi] - top[:, chi] - bottom[:, clo] + top[:, clo]).reshape(-1)
    return pad, len(c), sums, (chi - clo).astype(np.int64), (rhi - rlo).astype(np.int64)


def _former_scan_prepared(sat, ox, oy, ux, uy, vx, vy, cross, h, row_step=1, counts=True, tables=None):
    rows = sat.shape[0] - 1
    cols = sat.shape[1] - 1
    n = len(ox)
    # Points whose (rounded) footprint can touch the image lie in this rectangle.
    x_lo = -h - 1.0
    x_hi = cols + h + 0.0
    y_lo = -h - 1.0
    y_hi = rows + h + 0.0
    # lattice coordinate b of each corner: cross(u, p - o) / cross(u, v)
    corners = [(ux * (cy - oy) - uy * (cx - ox)) / cross
               for cx, cy in ((x_lo, y_lo), (x_hi, y_lo), (x_hi, y_hi), (x_lo, y_hi))]
    b0 = np.floor(np.minimum.reduce(corners)).astype(np.int64)
    b1 = np.ceil(np.maximum.reduce(corners)).astype(np.int64)
    nb = np.maximum(b1 - b0 + 1, 0)
    cand = np.repeat(np.arange(n), nb)
    starts = np.cumsum(nb) - nb
    b = (b0[cand] + (np.arange(cand.size) - starts[cand])).astype(np.float64)
    cux, cuy, cvx, cvy = ux[cand], uy[cand], vx[cand], vy[cand]
    cxl, cxh, cyl, cyh = x_lo[cand], x_hi[cand], y_lo[cand], y_hi[cand]
    px0 = ox[cand] + b * cvx
    py0 = oy[cand] + b * cvy
    # a-interval where x and y of px0 + a*u stay in the rectangle
    with np.errstate(divide="ignore", invalid="ignore"):
        a_lo = np.full(cand.size, -1e300)
        a_hi = np.full(cand.size, 1e300)
        keep = np.ones(cand.size, dtype=bool)
        for p0, cu, lo, hi in ((px0, cux, cxl, cxh), (py0, cuy, cyl, cyh)):
            pos_u, neg_u = cu > 0, cu < 0
            a_lo = np.where(pos_u, np.maximum(a_lo, (lo - p0) / cu), a_lo)
            a_hi = np.where(pos_u, np.minimum(a_hi, (hi - p0) / cu), a_hi)
            a_lo = np.where(neg_u, np.maximum(a_lo, (hi - p0) / cu), a_lo)
            a_hi = np.where(neg_u, np.minimum(a_hi, (lo - p0) / cu), a_hi)
            keep &= pos_u | neg_u | ((lo <= p0) & (p0 <= hi))
        keep &= a_lo <= a_hi
        a0 = np.where(keep, np.ceil(a_lo), 0.0).astype(np.int64)
        na = np.where(keep, np.floor(a_hi) - np.ceil(a_lo) + 1.0, 0.0).astype(np.int64)
    na = np.maximum(na, 0)
    if row_step > 1:
        na[(np.arange(cand.size) - starts[cand]) % row_step != 0] = 0
    # np.repeat per row of points (a contiguous copy) instead of gathers through a row index.
    rstart = np.cumsum(na) - na
    a = (np.arange(int(na.sum()), dtype=np.int64) - np.repeat(rstart - a0, na)).astype(np.float64)
    rx = np.floor(np.repeat(px0, na) + a * np.repeat(cux, na) + 0.5).astype(np.int64)
    ry = np.floor(np.repeat(py0, na) + a * np.repeat(cuy, na) + 0.5).astype(np.int64)
    # Points are grouped by candidate in ascending order: per-candidate sums are sums over each group's run
    # (exact integers; a weighted bincount went through float64 four times). reduceat over the non-empty
    # groups' starts: consecutive starts bound a group (the empty ones between hold no points) and the last
    # runs to the end (a running sum's differences at the group ends gave the same integers, in two passes).
    run_rows = np.concatenate(([0], np.cumsum(na)))
    ends, starts_pts = run_rows[np.cumsum(nb)], run_rows[starts]
    filled = np.flatnonzero(ends > starts_pts)
    first_pts = starts_pts[filled]

    def total(w):
        out = np.zeros(n, dtype=np.int64)
        if filled.size:
            out[filled] = np.add.reduceat(w, first_pts, dtype=np.int64)
        return out

    if tables is not None:
        # Search, one half-width: one gather per point from _box_tables instead of the summed-area table's
        # four corners (the same integers).
        pad, width, sums, xext, yext = tables
        here = sums.take((ry + pad) * width + (rx + pad))
        return total(xext.take(rx + pad) * yext.take(ry + pad)), total(here), None, None
    hp = np.repeat(h[cand], na)
    c0 = np.maximum(rx - hp, 0)
    c1 = np.minimum(rx + hp, cols - 1)
    r0 = np.maximum(ry - hp, 0)
    r1 = np.minimum(ry + hp, rows - 1)
    # Within the rectangle a footprint outside the image is empty with c0 == c1 + 1 (or r0 == r1 + 1) at valid
    # table indices, so it adds 0 to every sum, as the former filter did. Float rounding at the rectangle's
    # edge could in principle put one further out: it is made an empty one at a valid corner.
    out = np.flatnonzero((c0 > c1 + 1) | (r0 > r1 + 1))
    if out.size:
        c0[out] = np.minimum(c0[out], cols)
        r0[out] = np.minimum(r0[out], rows)
        c1[out] = c0[out] - 1
        r1[out] = r0[out] - 1
    # The table flattened: one gather per corner instead of 2-D fancy indexing (the same sums).
    flat = sat.reshape(-1)
    width = cols + 1
    top, bottom, right = r0 * width, (r1 + 1) * width, c1 + 1
    # in the table's int32: a footprint's count is at most the image's pixels, so no corner sum overflows
    here = flat.take(bottom + right) - flat.take(top + right) - flat.take(bottom + c0) + flat.take(top + c0)
    area = (c1 - c0 + 1) * (r1 - r0 + 1)
    if not counts:
        return total(area), total(here), None, None
    inside = (rx >= 0) & (rx < cols) & (ry >= 0) & (ry < rows)
    return total(area), total(here), total(inside), total(inside & (here > 0))



# ---------------------------------------------------------------------------------------------------
# Lattice search: footprint tables


def _mask(rng, shape, density):
    return rng.random(shape) < density


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 70), cols=st.integers(1, 90), h=st.integers(0, 15),
       density=st.sampled_from([0.0, 0.05, 0.5, 1.0]), with_mask=st.booleans())
def test_box_tables_hold_the_former_tables_figures(seed, rows, cols, h, density, with_mask):
    """Every centre's clipped area and positives (packed in one int64) are the former summed-area tables'."""
    mask = _mask(np.random.default_rng(seed), (rows, cols), density)
    sat = summed_area_table(mask)
    pad, width, sums, xext, yext = _former_box_tables(sat, h)
    got_pad, got_width, packed = k._box_tables(sat, h, mask if with_mask else None)
    assert (got_pad, got_width) == (pad, width)
    np.testing.assert_array_equal(packed & 0xFFFFFFFF, sums)
    np.testing.assert_array_equal(packed >> 32, (yext[:, None] * xext[None, :]).reshape(-1))


def _candidates(rng, n, spacing, max_hw=15.0):
    spacing = spacing * rng.choice([1.0, 1.0, 0.7, 1.5], n)  # mostly one half-width, some others
    theta = np.radians(rng.uniform(0, 180, n))
    ratio = rng.choice([1.0, 1.15], n)
    gamma = np.radians(rng.choice([60.0, 90.0, 105.0], n))
    ux, uy = spacing * np.cos(theta), spacing * np.sin(theta)
    vx, vy = spacing * ratio * np.cos(theta + gamma), spacing * ratio * np.sin(theta + gamma)
    return k._prepared(ux, uy, vx, vy, max_hw)


@examples(40, settings(max_examples=150, deadline=None, derandomize=True),
          given(seed=st.integers(0, 10_000), n=st.integers(1, 12), spacing=st.floats(8.0, 70.0),
                row_step=st.sampled_from([1, 4]), counts=st.booleans()))
def test_scan_prepared_is_the_former_scan(seed, n, spacing, row_step, counts):
    """The scan (summed-area corners, and through a footprint table for one half-width) gives the former
    scan's integers on every lattice, footprints beyond the edges and subsampled rows included."""
    rng = np.random.default_rng(seed)
    mask = _mask(rng, (53, 71), 0.3)
    sat = summed_area_table(mask)
    ux, uy, vx, vy, cross, h, bad = _candidates(rng, n, spacing)
    good = ~bad
    ux, uy, vx, vy, cross, h = (t[good] for t in (ux, uy, vx, vy, cross, h))
    if not len(h):
        return
    ox, oy = rng.uniform(-80, 150, len(h)), rng.uniform(-80, 130, len(h))
    args = (sat, ox, oy, ux, uy, vx, vy, cross, h)
    want = _former_scan_prepared(*args, row_step=row_step, counts=counts)
    got = k._scan_prepared(*args, row_step=row_step, counts=counts)
    for w, g in zip(want, got):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, w)
    one = h == h[0]
    sub = [t[one] for t in (ox, oy, ux, uy, vx, vy, cross, h)]
    want = _former_scan_prepared(sat, *sub, row_step=row_step, counts=False)
    tabled = k._scan_prepared(sat, *sub, row_step=row_step, counts=False, tables=k._box_tables(sat, int(h[0]), mask))
    np.testing.assert_array_equal(tabled[0], want[0])
    np.testing.assert_array_equal(tabled[1], want[1])


@pytest.mark.parametrize("share", [0.0, 1e12])  # every half-width tabled, none
def test_search_finds_the_same_whatever_is_tabled(share, monkeypatch):
    """search's winner and cost are the same with footprint tables for every half-width and for none."""
    from ptolemy_rt.lattice import candidate_lattices, lattice_points

    rng = np.random.default_rng(5)
    pts = lattice_points((40.0, 33.0), (23.0, 4.0), (-9.0, 21.5), (150, 210), -4.0)
    pts = pts + rng.normal(0, 0.8, pts.shape)
    yy, xx = np.mgrid[:150, :210]
    mask = np.zeros((150, 210), dtype=bool)
    for x, y in pts:
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= 30
    sat = summed_area_table(mask)
    cands = candidate_lattices(pts, model="general")
    args = (sat, np.ascontiguousarray(pts[cands.origin, 0]), np.ascontiguousarray(pts[cands.origin, 1]),
            np.ascontiguousarray(cands.u[:, 0]), np.ascontiguousarray(cands.u[:, 1]),
            np.ascontiguousarray(cands.v[:, 0]), np.ascontiguousarray(cands.v[:, 1]),
            np.arange(len(cands.origin)), int(sat[-1, -1]), 10.0, 1.0, 6.0, 8.0)
    monkeypatch.setattr(k, "_TABLE_SHARE", 1e12)
    want = k.search(*args)
    monkeypatch.setattr(k, "_TABLE_SHARE", share)
    assert k.search(*args, mask=mask) == want
    assert k.search(*args) == want  # the mask recovered from the table
    monkeypatch.setattr(k, "_MAX_TABLE_BYTES", 8 * k._table_size((150, 210), 3))  # tables up to h = 3 only
    assert k.search(*args, mask=mask) == want


def test_footprint_tables_refuse_half_widths_their_int16_sums_cannot_hold():
    """Review: above h = 90 a footprint's (2h + 1)^2 pixels saturate the box filter's int16 (32767)."""
    mask = np.ones((400, 400), dtype=bool)
    sat = summed_area_table(mask)
    pad, width, packed = k._box_tables(sat, 90, mask)
    assert packed[(200 + pad) * width + 200 + pad] & 0xFFFFFFFF == 181 * 181
    with pytest.raises(ValueError, match="half-widths 0..90"):
        k._box_tables(sat, 91, mask)


# ---------------------------------------------------------------------------------------------------
# Centroids: separate blobs without the dilated mask


def _blobs(rng, shape, n, radius):
    mask = np.zeros(shape, dtype=np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cx, cy = rng.uniform(-3, shape[1] + 3), rng.uniform(-3, shape[0] + 3)
        r = rng.uniform(0.5, radius)
        mask[(xx - cx) ** 2 + ((yy - cy) * rng.uniform(0.6, 1.6)) ** 2 <= r * r] = 1
    return mask


_INT32_MAX = 2**31 - 1
_coordinate = st.integers(0, _INT32_MAX)
_box = st.tuples(_coordinate, _coordinate, _coordinate, _coordinate).map(
    lambda b: (min(b[0], b[1]), max(b[0], b[1]), min(b[2], b[3]), max(b[2], b[3])))


@examples(100, settings(max_examples=300, deadline=None, derandomize=True),
          given(boxes=st.lists(_box, min_size=1, max_size=12), window=st.integers(2, 2**40)))
@example(boxes=[(_INT32_MAX - 20, _INT32_MAX, 0, 5), (0, 1, 0, 5)], window=6)
def test_boxes_apart_is_the_plain_pairwise_test(boxes, window):
    """_boxes_apart against the pairwise formula in Python integers, for any int32 coordinates (cv2's contour
    points) and any window: its sums (x1 + window + 1) do not wrap around (int32 did: a box at the right end of
    a 2^31 px row met no partner)."""
    from ptolemy_rt.holes import _boxes_apart

    reach = window + 1
    near = any(max(a[0], b[0]) - min(a[1], b[1]) <= reach and max(a[2], b[2]) - min(a[3], b[3]) <= reach
               for k_, a in enumerate(boxes) for b in boxes[k_ + 1:])
    # each blob's outline: its two corners and a point between them, as cv2.findContours gives int32 points
    points = np.array([p for x0, x1, y0, y1 in boxes for p in ((x0, y1), ((x0 + x1) // 2, y0), (x1, y1))],
                      dtype=np.int32)
    bounds = np.arange(0, 3 * len(boxes) + 1, 3)
    assert _boxes_apart(points, bounds, window) is (not near)


@examples(40, settings(max_examples=150, deadline=None, derandomize=True),
          given(seed=st.integers(0, 10_000), n=st.integers(1, 40), radius=st.floats(1.0, 9.0),
                window=st.integers(2, 8)))
def test_boxes_apart_means_a_region_per_blob(seed, n, radius, window):
    """Where _boxes_apart says so, the mask dilated as find_regions dilates it has one outer contour per blob."""
    import cv2

    from ptolemy_rt.holes import _boxes_apart

    mask = _blobs(np.random.default_rng(seed), (90, 120), n, radius)
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return
    lengths = [len(c) for c in contours]
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    if _boxes_apart(np.concatenate(contours).reshape(-1, 2), bounds, window):
        dilated = cv2.dilate(mask, np.ones((window, window), np.uint8))
        _, outer = cv2.findContours(dilated, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        assert int((outer[0, :, 3] < 0).sum()) == len(contours)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 60), radius=st.floats(1.0, 7.0), window=st.integers(1, 6))
def test_hole_centroids_are_the_same_without_the_box_test(seed, n, radius, window):
    """hole_centroids gives the same bits with the box test and with the dilated mask counted every time."""
    import ptolemy_rt.holes as holes

    mask = _blobs(np.random.default_rng(seed), (80, 110), n, radius).astype(bool)
    got = holes.hole_centroids(mask, window)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(holes, "_boxes_apart", lambda *a: False)
        want = holes.hole_centroids(mask, window)
    assert got.tobytes() == want.tobytes() and got.shape == want.shape


# ---------------------------------------------------------------------------------------------------
# Lattice points: index ranges without LAPACK


@examples(50, settings(max_examples=200, deadline=None, derandomize=True),
          given(ox=st.floats(-300, 300), oy=st.floats(-300, 300), length=st.floats(2.0, 400.0),
                ratio=st.floats(0.5, 3.0),
                theta=st.floats(0, 360), gamma=st.floats(20, 160), rows=st.integers(1, 400), cols=st.integers(1, 400),
                tol=st.sampled_from([-10.0, -0.5, 0.0, 3.0, 100.0, -300.0])))
def test_lattice_points_are_the_solved_ones(ox, oy, length, ratio, theta, gamma, rows, cols, tol):
    """lattice_points gives _lattice_points_solved's points (np.linalg.solve's index ranges), order and bits."""
    from ptolemy_rt.lattice import _lattice_points_solved, lattice_points

    t, g = np.radians(theta), np.radians(theta + gamma)
    u = (length * np.cos(t), length * np.sin(t))
    v = (length * ratio * np.cos(g), length * ratio * np.sin(g))
    want = _lattice_points_solved((ox, oy), u, v, (rows, cols), tol)
    got = lattice_points((ox, oy), u, v, (rows, cols), tol)
    assert got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_lattice_points_of_a_degenerate_basis_fail_as_before():
    from ptolemy_rt.lattice import lattice_points

    with pytest.raises(np.linalg.LinAlgError):
        lattice_points((0.0, 0.0), (10.0, 0.0), (20.0, 0.0), (50, 50))


# ---------------------------------------------------------------------------------------------------
# Coset statistics: the same figures without np.clip's and np.mean's wrappers


def _former_coset_stats(c, sat, origin, a, b, radius, halfwidth):
    import math

    from ptolemy_rt._orderstats import median
    from ptolemy_rt.lattice import _lattice_points_solved, _near_distance

    shape = (sat.shape[0] - 1, sat.shape[1] - 1)
    pts = _lattice_points_solved(origin, tuple(a), tuple(b), shape, 0.0)
    if len(pts) == 0:
        return 0.0, math.nan, math.nan, 0
    dist = _near_distance(pts, c, origin, a, b, radius)
    near = dist < radius
    h = max(1, int(halfwidth))
    x = np.rint(pts[:, 0]).astype(np.int64)
    y = np.rint(pts[:, 1]).astype(np.int64)
    x0, x1 = np.clip(x - h, 0, shape[1]), np.clip(x + h + 1, 0, shape[1])
    y0, y1 = np.clip(y - h, 0, shape[0]), np.clip(y + h + 1, 0, shape[0])
    mass = (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]).astype(np.float64)
    size = float(mass[mass > 0].mean()) if (mass > 0).any() else math.nan
    resid = float(median(dist[near])) if near.any() else math.nan
    return float(near.mean()), size, resid, int(near.sum())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), spacing=st.floats(9.0, 40.0), n=st.integers(0, 80),
       density=st.sampled_from([0.0, 0.02, 0.3]), hw=st.floats(0.5, 14.0))
def test_coset_stats_are_the_former_figures(seed, spacing, n, density, hw):
    import math

    from ptolemy_rt.lattice import _coset_stats

    rng = np.random.default_rng(seed)
    mask = _mask(rng, (70, 95), density)
    sat = summed_area_table(mask)
    t = rng.uniform(0, np.pi)
    a = np.array([spacing * np.cos(t), spacing * np.sin(t)])
    b = np.array([-a[1], a[0]]) * rng.choice([1.0, 1.3])
    c = rng.uniform(-5, 100, (n, 2))
    origin = (float(rng.uniform(-20, 90)), float(rng.uniform(-20, 70)))
    want = _former_coset_stats(c, sat, origin, a, b, 0.25 * spacing, hw)
    got = _coset_stats(c, sat, origin, a, b, 0.25 * spacing, hw)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is type(w) and (g == w or (math.isnan(g) and math.isnan(w)))


# ---------------------------------------------------------------------------------------------------
# Autocorrelation peaks: the 8-neighbour test by one dilation


def _former_peaks(rho: np.ndarray, max_lag: tuple[int, int]) -> np.ndarray:
    from ptolemy_rt.spacing import _MIN_PEAK, _MIN_PERIOD

    rows, cols = (rho.shape[0] + 1) // 2, (rho.shape[1] + 1) // 2
    lr, lc = max_lag
    sub = rho[rows - 1 - lr : rows + lr, cols - 1 - lc : cols + lc]
    # only the rows of lags dy >= 0 (core row i is dy = i + 1 - lr): the other half plane is never kept
    i0 = max(lr - 1, 0)
    core = sub[1 + i0 : -1, 1:-1]
    is_max = core >= _MIN_PEAK
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                is_max &= core > sub[1 + i0 + dr : sub.shape[0] - 1 + dr, 1 + dc : sub.shape[1] - 1 + dc]
    i, j = np.nonzero(is_max)
    i = i + i0
    dy, dx = i + 1 - lr, j + 1 - lc
    # one of each +-t pair: the half plane dy > 0, or dy == 0 and dx > 0
    # (and no shorter than _MIN_PERIOD: integer lags, so their squared length decides exactly as the length)
    keep = ~((dy < 0) | ((dy == 0) & (dx <= 0))) & (dx * dx + dy * dy >= _MIN_PERIOD**2)
    i, j, dy, dx = i[keep], j[keep], dy[keep], dx[keep]
    # Parabolic sub-pixel offsets, all maxima at once: the same float32 arithmetic per maximum as one by one
    # (up - 2 ctr + dn, then 0.5 (up - dn) / that), then int64 + float32 lags in float64.
    ctr = sub[i + 1, j + 1]
    up, dn, lf, rt = sub[i, j + 1], sub[i + 2, j + 1], sub[i + 1, j], sub[i + 1, j + 2]
    den_y, den_x = up - np.float32(2) * ctr + dn, lf - np.float32(2) * ctr + rt
    with np.errstate(divide="ignore", invalid="ignore"):
        oy = np.where(den_y < 0, np.float32(0.5) * (up - dn) / den_y, np.float32(0.0))
        ox = np.where(den_x < 0, np.float32(0.5) * (lf - rt) / den_x, np.float32(0.0))
    return np.stack([dx + ox, dy + oy, ctr.astype(np.float64)], axis=1).astype(np.float64).reshape(-1, 3)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 40), cols=st.integers(1, 40),
       decimals=st.sampled_from([0, 1, 3]), special=st.sampled_from([None, np.nan, np.inf, -np.inf, -0.0]))
def test_peaks_are_the_former_peaks(seed, rows, cols, decimals, special):
    """_peaks gives the former 8-comparison loop's maxima to the bit (ties, NaN and infinities included)."""
    from ptolemy_rt.spacing import _peaks

    rng = np.random.default_rng(seed)
    rho = np.round(rng.uniform(-0.3, 1.0, (2 * rows + 1, 2 * cols + 1)), decimals).astype(np.float32)
    if special is not None:
        rho[rng.integers(0, rho.shape[0], 3), rng.integers(0, rho.shape[1], 3)] = special
    max_lag = (int(rng.integers(0, rows + 1)), int(rng.integers(0, cols + 1)))
    with np.errstate(invalid="ignore"):
        want = _former_peaks(rho, max_lag)
        got = _peaks(rho, max_lag)
    assert got.shape == want.shape and got.tobytes() == want.tobytes()


# ---------------------------------------------------------------------------------------------------
# Hull areas and centroids from the concatenated hulls


def _former_packed_area_centroid(hulls):
    lengths = np.fromiter((len(h) for h in hulls), dtype=np.int64, count=len(hulls))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    origin = np.repeat(np.array([h[0] for h in hulls]), lengths, axis=0)
    pts = np.concatenate(hulls) - origin
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
    return np.abs(a2) / 2.0, cent + np.array([h[0] for h in hulls])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), spread=st.floats(0.5, 1e4))
def test_flat_area_centroid_is_the_former_packed_one(seed, n, spread):
    from ptolemy_rt.regions import _flat_area_centroid, _grown_hulls_packed

    rng = np.random.default_rng(seed)
    hulls = [rng.uniform(-spread, spread, (int(rng.integers(1, 9)), 2)) + rng.uniform(0, 1e6, 2) for _ in range(n)]
    lengths = np.array([len(h) for h in hulls])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    want = _former_packed_area_centroid(hulls)
    got = _flat_area_centroid(np.concatenate(hulls), starts, lengths)
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()
    # the grown hulls, concatenated, are the list's arrays end to end
    centres = np.concatenate([np.array([[0, 0]]), np.array([[5, 1], [9, 7], [2, 6]])]).astype(np.int64)
    out, s, k = _grown_hulls_packed(centres, np.array([1, 3]))
    assert s.tolist() == [0, int(k[0])] and len(out) == int(k.sum())


@pytest.mark.parametrize("window", [2, 3, 5, 6])
def test_boxes_apart_at_every_gap(window):
    """Two blobs at every gap along x, y and the diagonal: where _boxes_apart says apart, the dilated mask has two
    outer contours (the off-by-one cases at the window's reach included)."""
    import cv2

    from ptolemy_rt.holes import _boxes_apart

    for gap in range(0, 2 * window + 4):
        for dx, dy in ((1, 0), (0, 1), (1, 1)):
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[10:13, 10:13] = 1
            x, y = 12 + dx * (gap + 1), 12 + dy * (gap + 1)
            mask[y : y + 2, x : x + 2] = 1
            contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            bounds = np.concatenate(([0], np.cumsum([len(c) for c in contours])))
            apart = _boxes_apart(np.concatenate(contours).reshape(-1, 2), bounds, window)
            dilated = cv2.dilate(mask, np.ones((window, window), np.uint8))
            _, outer = cv2.findContours(dilated, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            regions = int((outer[0, :, 3] < 0).sum())
            if apart:
                assert regions == len(contours), (gap, dx, dy)
            if gap > window + 1 and len(contours) == 2:
                assert apart, (gap, dx, dy)  # far enough apart is recognised (the fast path is taken)
