"""Numba kernels of the lattice search (imported lazily by ptolemy_rt.lattice; see that module)."""

from __future__ import annotations

import math

import numpy as np

from ._numba import CACHE, numba

__all__ = ["cost", "halfwidth", "reduce_basis", "scan", "search", "summed_area"]


@numba.njit(cache=CACHE, nogil=True)
def summed_area(mask):
    # int32 halves the memory traffic (this loop is memory-bound); 4096 x 4096 fits easily.
    rows, cols = mask.shape
    sat = np.empty((rows + 1, cols + 1), dtype=np.int32)
    sat[0, :] = 0
    for r in range(rows):
        sat[r + 1, 0] = 0
        acc = 0
        for c in range(cols):
            acc += mask[r, c]
            sat[r + 1, c + 1] = sat[r, c + 1] + acc
    return sat


@numba.njit(cache=CACHE, nogil=True)
def reduce_basis(ux, uy, vx, vy):
    # Lagrange-Gauss reduction: the same lattice with |u| <= |v| and |u.v| <= |u|^2 / 2, so u is a shortest
    # lattice vector. A square basis (v = u turned 90 degrees) has u.v == 0 exactly in floating point
    # and |u| == |v|, so it comes back unchanged (the original's lattices stay bit-identical).
    for _ in range(64):
        nu = ux * ux + uy * uy
        nv = vx * vx + vy * vy
        if nv < nu:
            ux, uy, vx, vy = vx, vy, ux, uy
            nu = nv
        if nu == 0.0:
            break
        m = math.floor((ux * vx + uy * vy) / nu + 0.5)
        if m != 0:
            vx -= m * ux
            vy -= m * uy
        # stop once v is no shorter than u (testing m == 0 instead can cycle on a hexagonal tie)
        if vx * vx + vy * vy >= nu:
            break
    return ux, uy, vx, vy


@numba.njit(cache=CACHE, nogil=True)
def halfwidth(dmin, max_hw):
    # Footprint half-width: squares of side 2h + 1 round each centre by <= 0.5 px, and the Chebyshev
    # length of any lattice vector is >= dmin / sqrt(2), so footprints never share a pixel while
    # 2h + 1 <= dmin / sqrt(2) - 1. From 9.66 px up dmin / 4 is the tighter bound (the original's).
    return min(max_hw, dmin / 4.0, dmin / (2.0 * math.sqrt(2.0)) - 1.0)


@numba.njit(cache=CACHE, nogil=True)
def scan(sat, ox, oy, ux, uy, vx, vy, max_hw, fp_bound):
    # Visit every point of the lattice origin + a u + b v whose footprint touches the image. Returns
    # (covered area, covered positives, points centred inside, of those with a positive pixel), stopping
    # early (area = -1) once covered non-positives exceed fp_bound. (-2, 0, 0, 0): degenerate basis.
    rows = sat.shape[0] - 1
    cols = sat.shape[1] - 1
    ux, uy, vx, vy = reduce_basis(ux, uy, vx, vy)
    cross = ux * vy - uy * vx
    if not (abs(cross) > 1e-9 * (ux * ux + uy * uy)) or not math.isfinite(cross):
        return -2, 0, 0, 0
    hw = halfwidth(math.sqrt(ux * ux + uy * uy), max_hw)
    if hw < 0.0:
        return -2, 0, 0, 0
    h = math.floor(hw)
    # Points whose (rounded) footprint can touch the image lie in this rectangle.
    x_lo = -h - 1.0
    x_hi = cols + h + 0.0
    y_lo = -h - 1.0
    y_hi = rows + h + 0.0
    bmin = 1e300
    bmax = -1e300
    for cx, cy in ((x_lo, y_lo), (x_hi, y_lo), (x_hi, y_hi), (x_lo, y_hi)):
        # lattice coordinate b of the corner: cross(u, p - o) / cross(u, v)
        b = (ux * (cy - oy) - uy * (cx - ox)) / cross
        bmin = min(bmin, b)
        bmax = max(bmax, b)
    pos = 0
    area = 0
    inside = 0
    occupied = 0
    for b in range(math.floor(bmin), math.ceil(bmax) + 1):
        px0 = ox + b * vx
        py0 = oy + b * vy
        # a-interval where x and y of px0 + a*u stay in the rectangle
        a_lo = -1e300
        a_hi = 1e300
        if ux > 0:
            a_lo = max(a_lo, (x_lo - px0) / ux)
            a_hi = min(a_hi, (x_hi - px0) / ux)
        elif ux < 0:
            a_lo = max(a_lo, (x_hi - px0) / ux)
            a_hi = min(a_hi, (x_lo - px0) / ux)
        elif not (x_lo <= px0 <= x_hi):
            continue
        if uy > 0:
            a_lo = max(a_lo, (y_lo - py0) / uy)
            a_hi = min(a_hi, (y_hi - py0) / uy)
        elif uy < 0:
            a_lo = max(a_lo, (y_hi - py0) / uy)
            a_hi = min(a_hi, (y_lo - py0) / uy)
        elif not (y_lo <= py0 <= y_hi):
            continue
        if a_lo > a_hi:
            continue
        for a in range(math.ceil(a_lo), math.floor(a_hi) + 1):
            rx = math.floor(px0 + a * ux + 0.5)
            ry = math.floor(py0 + a * uy + 0.5)
            c0 = max(rx - h, 0)
            c1 = min(rx + h, cols - 1)
            r0 = max(ry - h, 0)
            r1 = min(ry + h, rows - 1)
            if c0 > c1 or r0 > r1:
                continue
            here = sat[r1 + 1, c1 + 1] - sat[r0, c1 + 1] - sat[r1 + 1, c0] + sat[r0, c0]
            area += (c1 - c0 + 1) * (r1 - r0 + 1)
            pos += here
            if 0 <= rx < cols and 0 <= ry < rows:
                inside += 1
                if here > 0:
                    occupied += 1
        if area - pos > fp_bound:
            return -1, pos, inside, occupied
    return area, pos, inside, occupied


@numba.njit(cache=CACHE, nogil=True)
def cost(sat, ox, oy, ux, uy, vx, vy, total, lambda_fn, lambda_fp, max_hw, bound):
    # Returns (cost, covered positives); cost is inf once lambda_fp * fp exceeds `bound` (fp only grows)
    # and for a degenerate basis.
    fp_bound = bound / lambda_fp if lambda_fp > 0 else math.inf
    area, pos, _, _ = scan(sat, ox, oy, ux, uy, vx, vy, max_hw, fp_bound)
    if area < 0:
        return math.inf, pos
    return lambda_fn * (total - pos) + lambda_fp * (area - pos), pos


@numba.njit(cache=CACHE, nogil=True)
def search(sat, ox, oy, ux, uy, vx, vy, order, total, lambda_fn, lambda_fp, max_hw, min_spacing):
    # Evaluate candidate lattices in `order` (likely winners first, so pruning bites) but resolve ties by
    # candidate index, so the winner is the cheapest candidate, first in list order: independent of the
    # evaluation order. Candidates whose shortest lattice vector is below min_spacing are skipped.
    rows = sat.shape[0] - 1
    cols = sat.shape[1] - 1
    best = math.inf
    best_idx = -1
    for t in range(order.shape[0]):
        p = order[t]
        rux, ruy, rvx, rvy = reduce_basis(ux[p], uy[p], vx[p], vy[p])
        d = math.sqrt(rux * rux + ruy * ruy)
        if not (d >= min_spacing):
            continue
        if lambda_fp > 0 and best < math.inf:
            # Lower bound without scanning: the lattice cells (centred on their points) meeting the image
            # shrunk by the footprint and then by a cell's circumradius lie whole inside it, so at least
            # (that area) / (cell area) points cover full footprints, and at most `total` of it is positive.
            cell = abs(rux * rvy - ruy * rvx)
            if cell > 0:
                h = math.floor(halfwidth(d, max_hw))
                radius = 0.5 * max(math.hypot(rux + rvx, ruy + rvy), math.hypot(rux - rvx, ruy - rvy))
                shrink = 2.0 * (h + 1.0) + 2.0 * radius
                w_in = cols - shrink
                h_in = rows - shrink
                if w_in > 0 and h_in > 0:
                    n_full = math.floor(w_in * h_in / cell)
                    if lambda_fp * (n_full * (2 * h + 1) ** 2 - total) > best:
                        continue
        c, _ = cost(sat, ox[p], oy[p], ux[p], uy[p], vx[p], vy[p], total, lambda_fn, lambda_fp, max_hw, best)
        if c < best or (c == best and best_idx >= 0 and p < best_idx):
            best = c
            best_idx = p
    return best_idx, best
