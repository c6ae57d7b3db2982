"""Numba kernels of the lattice search (imported lazily by ptolemy_rt.lattice; see that module)."""

from __future__ import annotations

import math

import numpy as np

from ._numba import CACHE, numba

__all__ = ["summed_area", "cost", "search"]


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
def scan(sat, ox, oy, ux, uy, max_hw, fp_bound):
    # Visit every point of the lattice (origin, u, v = u turned 90 degrees) whose footprint touches the
    # image. Returns (covered area, covered positives, points centred inside, of those with a positive
    # pixel), stopping early (area = -1) once covered non-positives exceed fp_bound.
    rows = sat.shape[0] - 1
    cols = sat.shape[1] - 1
    vx = -uy
    vy = ux
    d2 = ux * ux + uy * uy
    hw = min(max_hw, math.sqrt(d2) / 4.0)
    h = int(math.floor(hw))
    # Points whose (rounded) footprint can touch the image lie in this rectangle.
    x_lo = -h - 1.0
    x_hi = cols + h + 0.0
    y_lo = -h - 1.0
    y_hi = rows + h + 0.0
    bmin = 1e300
    bmax = -1e300
    for cx, cy in ((x_lo, y_lo), (x_hi, y_lo), (x_hi, y_hi), (x_lo, y_hi)):
        b = ((cx - ox) * vx + (cy - oy) * vy) / d2
        bmin = min(bmin, b)
        bmax = max(bmax, b)
    pos = 0
    area = 0
    inside = 0
    occupied = 0
    for b in range(int(math.floor(bmin)), int(math.ceil(bmax)) + 1):
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
        for a in range(int(math.ceil(a_lo)), int(math.floor(a_hi)) + 1):
            rx = int(math.floor(px0 + a * ux + 0.5))
            ry = int(math.floor(py0 + a * uy + 0.5))
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
def cost(sat, ox, oy, ux, uy, total, lambda_fn, lambda_fp, max_hw, bound):
    # Returns (cost, covered positives); cost is inf once lambda_fp * fp exceeds `bound` (fp only grows).
    fp_bound = bound / lambda_fp if lambda_fp > 0 else math.inf
    area, pos, _, _ = scan(sat, ox, oy, ux, uy, max_hw, fp_bound)
    if area < 0:
        return math.inf, pos
    return lambda_fn * (total - pos) + lambda_fp * (area - pos), pos

@numba.njit(cache=CACHE, nogil=True)
def search(sat, cx, cy, pi, pj, order, total, lambda_fn, lambda_fp, max_hw):
    # Evaluate pairs in `order` (likely winners first, so pruning bites) but resolve ties by pair index,
    # so the winner is the cheapest pair, first in (i, rank) order: independent of the evaluation order.
    rows = sat.shape[0] - 1
    cols = sat.shape[1] - 1
    best = math.inf
    best_idx = -1
    for t in range(order.shape[0]):
        p = order[t]
        i = pi[p]
        j = pj[p]
        ux = cx[j] - cx[i]
        uy = cy[j] - cy[i]
        if lambda_fp > 0 and best < math.inf:
            # Lower bound without scanning: the lattice cells (d x d) meeting the image shrunk by the
            # footprint and then by a cell's circumradius lie whole inside it, so at least
            # (that area) / d^2 points cover full footprints, and at most `total` of it is positive.
            d = math.sqrt(ux * ux + uy * uy)
            h = int(math.floor(min(max_hw, d / 4.0)))
            shrink = 2.0 * (h + 1.0) + math.sqrt(2.0) * d
            w_in = cols - shrink
            h_in = rows - shrink
            if w_in > 0 and h_in > 0:
                n_full = math.floor(w_in * h_in / (d * d))
                if lambda_fp * (n_full * (2 * h + 1) ** 2 - total) > best:
                    continue
        c, _ = cost(sat, cx[i], cy[i], ux, uy, total, lambda_fn, lambda_fp, max_hw, best)
        if c < best or (c == best and best_idx >= 0 and p < best_idx):
            best = c
            best_idx = p
    return best_idx, best
