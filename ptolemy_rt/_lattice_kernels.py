"""Lattice search kernels in numpy (used by ptolemy_rt.lattice): basis reduction, footprint scan, cost, search.

Vectorised over lattice points and over candidates, so the holes pipeline needs no compiled code (no Numba
import, no JIT on a first run). The arithmetic follows the former Numba loops operation for operation (same
float64 expressions in the same order), so costs, ties and the chosen lattice are bit-identical.
"""

from __future__ import annotations

import math

import numpy as np

from ._orderstats import unique

__all__ = ["cost", "halfwidth", "reduce_basis", "scan", "scan_many", "search"]

# Candidates scanned together are bounded by their estimated lattice points (memory ~ 100 bytes a point).
_CHUNK_POINTS = 50_000
# Row subsamplings tried before a full scan, coarsest first.
_STEPS = (4,)
# A half-width's candidates are scanned through a table of footprint sums (_box_tables) when their points number
# at least this share of the table's entries.
_TABLE_SHARE = 0.5
# Footprint tables are boxFilter sums in int16: (2h + 1)^2 <= 32767 pixels, h <= 90.
_MAX_TABLE_HALFWIDTH = 90
# ... and at most this many bytes each (int64 entries; ~3 more bytes an entry while one is built): a 16k^2 image
# would otherwise keep 2.2 GB per half-width. Beyond it the summed-area corners give the same integers.
_MAX_TABLE_BYTES = 256 << 20


def reduce_basis(ux, uy, vx, vy):
    """Lagrange-Gauss reduction of bases (arrays or scalars): the same lattices with |u| <= |v|, u shortest."""
    # A square basis (v = u turned 90 degrees) has u.v == 0 exactly in floating point and |u| == |v|, so it
    # comes back unchanged (the original's lattices stay bit-identical).
    ux, uy, vx, vy = (np.array(t, dtype=np.float64, copy=True, ndmin=1) for t in (ux, uy, vx, vy))
    active = np.ones(ux.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(64):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            a, b, c, d = ux[idx], uy[idx], vx[idx], vy[idx]
            nu = a * a + b * b
            nv = c * c + d * d
            swap = nv < nu
            a, c = np.where(swap, c, a), np.where(swap, a, c)
            b, d = np.where(swap, d, b), np.where(swap, b, d)
            nu = np.where(swap, nv, nu)
            zero = nu == 0.0
            m = np.floor((a * c + b * d) / nu + 0.5)
            move = (m != 0) & ~zero
            c = np.where(move, c - m * a, c)
            d = np.where(move, d - m * b, d)
            ux[idx], uy[idx], vx[idx], vy[idx] = a, b, c, d
            # stop once v is no shorter than u (testing m == 0 instead can cycle on a hexagonal tie)
            done = zero | (c * c + d * d >= nu)
            active[idx[done]] = False
    return ux, uy, vx, vy


def halfwidth(dmin, max_hw):
    """Footprint half-width for shortest lattice vector(s) `dmin`."""
    # Squares of side 2h + 1 round each centre by <= 0.5 px, and the Chebyshev length of any lattice vector
    # is >= dmin / sqrt(2), so footprints never share a pixel while 2h + 1 <= dmin / sqrt(2) - 1. From
    # 9.66 px up dmin / 4 is the tighter bound (the original's).
    return np.minimum(np.minimum(max_hw, dmin / 4.0), dmin / (2.0 * math.sqrt(2.0)) - 1.0)


def _prepared(ux, uy, vx, vy, max_hw):
    """Reduced bases, their half-widths h (int64) and which are degenerate (cost inf)."""
    ux, uy, vx, vy = reduce_basis(ux, uy, vx, vy)
    with np.errstate(invalid="ignore", over="ignore"):
        cross = ux * vy - uy * vx
        bad = ~(np.abs(cross) > 1e-9 * (ux * ux + uy * uy)) | ~np.isfinite(cross)
        hw = halfwidth(np.sqrt(ux * ux + uy * uy), max_hw)
        bad |= ~(hw >= 0.0)
    h = np.where(bad, 0.0, np.floor(np.where(bad, 0.0, hw))).astype(np.int64)
    return ux, uy, vx, vy, cross, h, bad


def _box_tables(sat, h, mask=None):
    """Clipped footprint areas and sums of every centre in the image padded by h + 3 px, half-width h.

    (pad, width, packed flat (height * width) int64): a footprint centred at (x, y) covers
    packed[(y + pad) * width + x + pad] & 0xFFFFFFFF positives on packed[...] >> 32 pixels (the clipped
    rectangle; 0 when it misses the image), as the summed-area table's four corners give them. mask: the
    boolean image behind `sat` (recovered from it when absent); half-widths up to _MAX_TABLE_HALFWIDTH px (int16
    sums: a larger one would saturate)."""
    import cv2

    rows, cols = sat.shape[0] - 1, sat.shape[1] - 1
    h = int(h)
    if not 0 <= h <= _MAX_TABLE_HALFWIDTH:
        raise ValueError(f"footprint tables take half-widths 0..{_MAX_TABLE_HALFWIDTH} (int16 sums), got {h}")
    pad = h + 3
    r = np.arange(-pad, rows + pad)
    c = np.arange(-pad, cols + pad)
    rlo = np.clip(r - h, 0, rows)
    rhi = np.maximum(np.clip(r + h + 1, 0, rows), rlo)
    clo = np.clip(c - h, 0, cols)
    chi = np.maximum(np.clip(c + h + 1, 0, cols), clo)
    if mask is None:
        mask = np.diff(np.diff(sat, axis=0), axis=1)
    # The clipped sums are a box filter's over the mask in a frame of zeros wide enough that no window reaches
    # past it: exact integers, as the summed-area table's corners give them (the table's four gathers per
    # centre cost ~10x as much). A footprint holds at most 181 x 181 pixels (int16).
    edge = pad + h
    framed = np.zeros((rows + 2 * edge, cols + 2 * edge), dtype=np.uint8)
    framed[edge : edge + rows, edge : edge + cols] = mask
    box = cv2.boxFilter(framed, cv2.CV_16S, (2 * h + 1, 2 * h + 1), normalize=False,
                        borderType=cv2.BORDER_CONSTANT)
    # Both figures in one int64, the area from bit 32: a candidate's footprints are disjoint pixels of the image,
    # so neither of its totals reaches 2**31 (search tables images under 2**31 pixels only).
    packed = np.empty((len(r), len(c)), dtype=np.int64)
    np.multiply((rhi - rlo).astype(np.int64)[:, None], (chi - clo).astype(np.int64)[None, :], out=packed)
    packed <<= 32
    packed |= box[h : h + rows + 2 * pad, h : h + cols + 2 * pad]
    return pad, len(c), packed.reshape(-1)


def _table_size(shape, h):
    return (shape[0] + 2 * h + 5) * (shape[1] + 2 * h + 5)


def _rounded(p0, cu, a, na):
    """floor(np.repeat(p0, na) + a * np.repeat(cu, na) + 0.5) (float64): each point's pixel along one axis."""
    t = np.repeat(cu, na)
    t *= a  # a * u and u * a, p0 + that and that + p0: the same products and sums
    t += np.repeat(p0, na)
    t += 0.5
    return np.floor(t, out=t)


def _scan_prepared(sat, ox, oy, ux, uy, vx, vy, cross, h, row_step=1, counts=True, tables=None):
    """(area, positives, inside, occupied) int64 arrays for non-degenerate reduced bases, without pruning.

    row_step > 1 visits every row_step-th row of points only: a lower bound on each sum. counts False: inside
    and occupied are None (the search needs only area and positives)."""
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
    # np.repeat per row of points (a contiguous copy) instead of gathers through a row index. The lattice
    # coordinate a of each point is an integer, exact in float64 (made so in float64 directly, as the int64
    # difference converted), and each coordinate rounds as px0 + a * u + 0.5 (in place, the same operations).
    rstart = np.cumsum(na) - na
    a = np.arange(int(na.sum()), dtype=np.float64)
    a -= np.repeat((rstart - a0).astype(np.float64), na)
    fx = _rounded(px0, cux, a, na)
    fy = _rounded(py0, cuy, a, na)
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
        # Search, one half-width: one gather per point from _box_tables (its area and positives packed in one
        # int64) instead of the summed-area table's four corners and the area's arithmetic (the same integers).
        # The table index is made in float64 from the rounded coordinates: integers, exact.
        pad, width, packed = tables
        fy *= float(width)
        fy += fx
        fy += float(pad * width + pad)
        both = total(packed.take(fy.astype(np.int64)))
        return both >> 32, both & 0xFFFFFFFF, None, None
    rx = fx.astype(np.int64)
    ry = fy.astype(np.int64)
    hp = int(h[0]) if n and (h == h[0]).all() else np.repeat(h[cand], na)  # one half-width: no per-point copy
    # The footprint's clipped edges as the summed-area table's corner indices: x0 = clip(rx - h, 0, cols) and
    # x1 = clip(rx + h + 1, 0, cols) (likewise y). Inside the image these are the former corners (max(rx - h, 0),
    # min(rx + h, cols - 1) + 1); a footprint beyond an edge gets x0 == x1 (or y0 == y1) at a valid index, an
    # empty rectangle that adds 0 to every sum, as the former filter made it (the same integers in ~half the
    # passes over the points).
    x0 = rx - hp
    np.clip(x0, 0, cols, out=x0)
    x1 = rx + (hp + 1)
    np.clip(x1, 0, cols, out=x1)
    y0 = ry - hp
    np.clip(y0, 0, rows, out=y0)
    y1 = ry + (hp + 1)
    np.clip(y1, 0, rows, out=y1)
    # The table flattened: one gather per corner instead of 2-D fancy indexing (the same sums).
    flat = sat.reshape(-1)
    width = cols + 1
    area = y1 - y0
    y0 *= width
    y1 *= width
    # in the table's int32: a footprint's count is at most the image's pixels, so no corner sum overflows
    here = flat.take(y1 + x1) - flat.take(y0 + x1) - flat.take(y1 + x0) + flat.take(y0 + x0)
    x1 -= x0
    area *= x1
    if not counts:
        return total(area), total(here), None, None
    inside = (rx >= 0) & (rx < cols) & (ry >= 0) & (ry < rows)
    return total(area), total(here), total(inside), total(inside & (here > 0))


def scan_many(sat, ox, oy, ux, uy, vx, vy, max_hw):
    """Per lattice (arrays): (covered area, covered positives, points centred inside, of those occupied).

    Area -2 (and zeros) for a degenerate basis."""
    ox, oy = (np.array(t, dtype=np.float64, ndmin=1) for t in (ox, oy))
    rux, ruy, rvx, rvy, cross, h, bad = _prepared(ux, uy, vx, vy, max_hw)
    n = len(ox)
    out = [np.zeros(n, dtype=np.int64) for _ in range(4)]
    good = np.flatnonzero(~bad)
    if good.size:
        res = _scan_prepared(sat, ox[good], oy[good], rux[good], ruy[good], rvx[good], rvy[good],
                             cross[good], h[good])
        for o, r in zip(out, res):
            o[good] = r
    out[0][bad] = -2
    return tuple(out)


def scan(sat, ox, oy, ux, uy, vx, vy, max_hw, fp_bound=math.inf):
    """(covered area, covered positives, points centred inside, of those with a positive pixel) of one lattice.

    Area -1 once covered non-positives exceed fp_bound (they only grow, so this is the Numba loop's early
    stop, decided on the totals); (-2, 0, 0, 0) for a degenerate basis."""
    area, pos, inside, occupied = (int(t[0]) for t in scan_many(sat, ox, oy, ux, uy, vx, vy, max_hw))
    if area >= 0 and area - pos > fp_bound:
        return -1, pos, inside, occupied
    return area, pos, inside, occupied


def cost(sat, ox, oy, ux, uy, vx, vy, total, lambda_fn, lambda_fp, max_hw, bound):
    """(cost, covered positives); cost is inf once lambda_fp * fp exceeds `bound` and for a degenerate basis."""
    fp_bound = bound / lambda_fp if lambda_fp > 0 else math.inf
    area, pos, _, _ = scan(sat, ox, oy, ux, uy, vx, vy, max_hw, fp_bound)
    if area < 0:
        return math.inf, pos
    return lambda_fn * (total - pos) + lambda_fp * (area - pos), pos


def search(sat, ox, oy, ux, uy, vx, vy, order, total, lambda_fn, lambda_fp, max_hw, min_spacing, memo=None,
           mask=None):
    """(index, cost) of the cheapest candidate lattice, ties to the first in list order; (-1, inf) for none.

    Candidates are visited in `order` (likely winners first) with the Numba loop's pruning decisions (a
    lower bound against the best so far, and the false-positive bound), replayed exactly, so the winner
    is the same; the scans themselves run in batches of candidates that the pruning cannot skip.

    memo: a dict shared by searches over the same table, candidates and max_hw (a candidate's footprint sums
    do not depend on the lambdas): the full scans of earlier searches are reused, this one's added.
    mask: the boolean image behind `sat`, for the footprint tables (recovered from `sat` when absent)."""
    rows = sat.shape[0] - 1
    cols = sat.shape[1] - 1
    ox, oy = np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)
    rux, ruy, rvx, rvy, cross, h, bad = _prepared(ux, uy, vx, vy, max_hw)
    n = len(ox)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        d = np.sqrt(rux * rux + ruy * ruy)
        eligible = d >= min_spacing
        # Lower bound without scanning: the lattice cells (centred on their points) meeting the image shrunk
        # by the footprint and then by a cell's circumradius lie whole inside it, so at least (that area) /
        # (cell area) points cover full footprints, and at most `total` of it is positive.
        cell = np.abs(rux * rvy - ruy * rvx)
        hb = np.floor(np.where(eligible, halfwidth(d, max_hw), 0.0)).astype(np.int64)
        radius = 0.5 * np.maximum(np.hypot(rux + rvx, ruy + rvy), np.hypot(rux - rvx, ruy - rvy))
        shrink = 2.0 * (hb + 1.0) + 2.0 * radius
        w_in = cols - shrink
        h_in = rows - shrink
        has_lb = eligible & (cell > 0) & (w_in > 0) & (h_in > 0)
        n_full = np.floor(np.where(has_lb, w_in * h_in / np.where(has_lb, cell, 1.0), 0.0)).astype(np.int64)
        lb = lambda_fp * (n_full * (2 * hb + 1) ** 2 - total)
        # estimated points per scan, to size the batches
        est = np.where(bad | ~eligible, 0.0, (cols + 2.0 * h + 2.0) * (rows + 2.0 * h + 2.0)
                       / np.where(cross != 0, np.abs(cross), 1.0) + 4.0 * (cols + rows) / np.maximum(d, 1.0))
    use_lb = lambda_fp > 0
    order = [int(p) for p in np.asarray(order)]
    eligible_l, bad_l, has_lb_l, lb_l = eligible.tolist(), bad.tolist(), has_lb.tolist(), lb.tolist()
    # -3: not scanned yet; -4: pruned by the false-positive bound (cost inf whatever comes later)
    area = [-3] * n
    pos = [0] * n
    for q, (x, y) in (memo or {}).items():
        area[q], pos[q] = x, y
    best = math.inf
    best_idx = -1
    # Half-widths whose candidates cover, all scanned, at least _TABLE_SHARE of the points of a per-pixel table of
    # their footprint sums: their batches gather from one (_box_tables, a box filter: ~1.5 ns a table entry, and
    # a point then costs half the summed-area table's four corners), the rest use the corners.
    tabled = set()
    for hv in unique(h[eligible & ~bad]).tolist() if rows * cols < 2**31 else ():
        size = _table_size((rows, cols), hv)
        if hv <= _MAX_TABLE_HALFWIDTH and 8 * size <= _MAX_TABLE_BYTES and (
                est[(h == hv) & eligible & ~bad].sum() >= _TABLE_SHARE * size):
            tabled.add(int(hv))
    state = {"subsample": True, "tabled": tabled, "tables": {}, "mask": mask}
    for t, p in enumerate(order):
        if not eligible_l[p]:
            continue
        if use_lb and best < math.inf and has_lb_l[p] and lb_l[p] > best:
            continue
        if bad_l[p]:
            c = math.inf
        else:
            if area[p] == -3:
                _scan_batch(sat, p, order[t + 1:], best, use_lb, lambda_fp, eligible_l, bad_l, has_lb_l, lb_l,
                            est, area, pos, (ox, oy, rux, ruy, rvx, rvy, cross, h), state)
            fp_bound = best / lambda_fp if lambda_fp > 0 else math.inf
            if area[p] == -4:
                c = math.inf
            else:
                fp = area[p] - pos[p]
                c = math.inf if fp > fp_bound else lambda_fn * (total - pos[p]) + lambda_fp * fp
        if c < best or (c == best and best_idx >= 0 and p < best_idx):
            best = c
            best_idx = p
    if memo is not None:
        memo.update((q, (area[q], pos[q])) for q in range(n) if area[q] >= 0)
    return best_idx, best


def _scan_batch(sat, p, rest, best, use_lb, lambda_fp, eligible, bad, has_lb, lb, est, area, pos, lattices, state):
    """Scan candidate p with the next ones the pruning cannot skip, filling area/pos (or -4: pruned)."""
    # Best only falls, so whatever the bounds exclude now they exclude at the candidate's turn too.
    batch, points = [p], est[p]
    if best < math.inf:
        for q in rest:
            if points >= _CHUNK_POINTS:
                break
            if (not eligible[q] or bad[q] or area[q] != -3
                    or (use_lb and has_lb[q] and lb[q] > best)):
                continue
            batch.append(q)
            points += est[q]
    sel = np.array(batch, dtype=np.int64)
    for step in _STEPS if lambda_fp > 0 and best < math.inf and state["subsample"] else ():
        # Every step-th row of points first: their false positives bound the whole's from below, so a
        # candidate over the bound on them is pruned (the Numba loop stopped early on it) without a full scan.
        if sel.size == 0:
            break
        a4, p4 = _scan_grouped(sat, sel, lattices, state, step)
        over = (a4 - p4) > best / lambda_fp
        # Where candidates are mostly the same lattice from different anchors, few are pruned: then the
        # subsampled scan costs more than it saves, so the rest of this search scans in full at once.
        if over.sum() < 0.25 * sel.size:
            state["subsample"] = False
        for q in sel[over].tolist():
            area[q] = -4
        sel = sel[~over]
    if sel.size:
        a, ps = _scan_grouped(sat, sel, lattices, state, 1)
        for q, x, y in zip(sel.tolist(), a.tolist(), ps.tolist()):
            area[q], pos[q] = x, y


def _scan_grouped(sat, sel, lattices, state, row_step):
    """(area, positives) of the candidates `sel` (rows of every row_step-th row of points), each half-width's
    candidates through its footprint table where search chose one (the same integers either way)."""
    h = lattices[-1][sel]
    hs = unique(h)
    groups = [(int(hs[0]), None)] if len(hs) == 1 else [(int(hv), np.flatnonzero(h == hv)) for hv in hs.tolist()]
    area = np.empty(sel.size, dtype=np.int64)
    pos = np.empty(sel.size, dtype=np.int64)
    for hv, idx in groups:
        part = sel if idx is None else sel[idx]
        tables = None
        if hv in state["tabled"]:
            tables = state["tables"].get(hv)
            if tables is None:
                tables = state["tables"][hv] = _box_tables(sat, hv, state["mask"])
        a, ps, _, _ = _scan_prepared(sat, *[t[part] for t in lattices], row_step=row_step, counts=False,
                                     tables=tables)
        if idx is None:
            area, pos = a, ps
        else:
            area[idx], pos[idx] = a, ps
    return area, pos
