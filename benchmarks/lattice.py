"""Lattice fit (ptolemy_rt.lattice): time per fit against the original's square search, and a sweep of
recall and basis-vector error over lattice kinds and spacings (8-400 px), with outliers and missing holes.

    python -m benchmarks.lattice [--seeds N] [--repeat N]

Prints Markdown tables; asserts nothing. Timings are ratios against the original's candidate set
(model="square", refine=False: the anchor-pair search the original ran) timed in the same run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import machine_line, print_markdown, print_table, time_it  # noqa: E402
from ptolemy_rt.lattice import _reduce, fit_lattice, lattice_points  # noqa: E402

SHAPE = (1024, 1440)


def basis_of(spacing: float, ratio: float, gamma_deg: float, theta_deg: float) -> np.ndarray:
    """Columns a, b (|b| = ratio |a|, gamma between them, a at theta on screen), scaled so that the lattice's
    shortest vector is `spacing` px."""
    t, g = math.radians(theta_deg), math.radians(theta_deg - gamma_deg)
    a = np.array([math.cos(t), -math.sin(t)])
    b = ratio * np.array([math.cos(g), -math.sin(g)])
    r1, _ = _reduce(a, b)
    return np.stack([a, b], axis=1) * (spacing / math.hypot(*r1))


def scene(rng: np.random.Generator, basis: np.ndarray, shape, outliers=0.3, missing=0.2, jitter=0.02):
    """Centroids (true points, `missing` dropped, Gaussian jitter in units of the shortest spacing, plus
    `outliers` as many uniform strays), a mask of discs at them, and the true in-image points."""
    rows, cols = shape
    d = math.hypot(*_reduce(basis[:, 0], basis[:, 1])[0])
    origin = np.array([cols / 2, rows / 2]) + basis @ rng.uniform(0, 1, 2)
    truth = lattice_points(tuple(origin), tuple(basis[:, 0]), tuple(basis[:, 1]), shape, edge_tolerance=0.0)
    kept = truth[rng.random(len(truth)) >= missing]
    kept = kept + rng.normal(0.0, jitter * d, kept.shape)
    strays = rng.uniform([0, 0], [cols - 1, rows - 1], (round(outliers * len(kept)), 2))
    centroids = np.concatenate([kept, strays])[rng.permutation(len(kept) + len(strays))]
    radius = max(2.0, 0.1 * d)
    r = math.ceil(radius)
    mask = np.zeros(shape, dtype=bool)
    for cx, cy in centroids:
        r0, c0 = max(round(cy) - r, 0), max(round(cx) - r, 0)
        r1, c1 = min(round(cy) + r + 1, rows), min(round(cx) + r + 1, cols)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius
    return centroids, mask, truth


def score(lat, basis: np.ndarray, truth: np.ndarray, shape) -> tuple[float, float, bool]:
    """(recall of true in-image points via points(), worst relative vector error, same lattice)."""
    if lat is None:
        return 0.0, math.inf, False
    q = np.rint(np.linalg.inv(basis) @ np.array([lat.a, lat.b]).T)
    same = abs(round(float(np.linalg.det(q)))) == 1
    err = max(float(np.hypot(*(np.array(w) - basis @ qi)) / max(np.hypot(*(basis @ qi)), 1e-9))
              for w, qi in zip((lat.a, lat.b), q.T))
    d = min(lat.spacing_a, lat.spacing_b)
    pts = lat.points(shape, edge_tolerance=0.25 * d)
    if len(truth) == 0:
        return 1.0, err, same
    if len(pts) == 0:
        return 0.0, err, same
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(pts).query(truth)
    return float(np.mean(dist < 0.15 * d)), err, same


KINDS = {
    # name: (ratio, gamma) drawn per seed
    "square": lambda rng: (1.0, 90.0),
    "skewed 2-3 %": lambda rng: (rng.uniform(1.02, 1.03), 90.0 + rng.uniform(-1.0, 1.0)),
    "hexagonal": lambda rng: (1.0, 60.0),
    "oblique (random)": lambda rng: (rng.uniform(0.8, 1.25), rng.uniform(50.0, 130.0)),
}


def sweep(seeds: int) -> list[list[str]]:
    """Per kind and spacing: success (both vectors within 1 %, same lattice), recall, vector error, time."""
    table = [["kind", "spacing px", "image", "fits", "vectors < 1 %", "recall min", "recall mean",
              "vector err max %", "ms / fit (median)"]]
    for name, draw in KINDS.items():
        for spacing in (8.0, 12.0, 20.0, 40.0, 100.0, 200.0, 400.0):
            # ~10 x 13 periods (at least 1024 x 1440): few holes cannot pin a vector to 1 %
            shape = (max(SHAPE[0], int(10 * spacing)), max(SHAPE[1], int(13 * spacing))) if spacing >= 40 else (
                int(16 * spacing), int(20 * spacing))
            ok, recalls, errs, times = 0, [], [], []
            for seed in range(seeds):
                rng = np.random.default_rng([seed, int(spacing), len(name)])
                ratio, gamma = draw(rng)
                basis = basis_of(spacing, ratio, gamma, rng.uniform(0.0, 180.0))
                centroids, mask, truth = scene(rng, basis, shape)
                t = time.perf_counter()
                lat = fit_lattice(centroids, mask, model="general")
                times.append((time.perf_counter() - t) * 1000)
                recall, err, same = score(lat, basis, truth, shape)
                ok += same and err < 0.01
                recalls.append(recall)
                errs.append(err)
            table.append([name, f"{spacing:g}", f"{shape[0]}x{shape[1]}", str(seeds), f"{ok}/{seeds}",
                          f"{min(recalls):.3f}", f"{np.mean(recalls):.3f}", f"{100 * max(errs):.3f}",
                          f"{np.median(times):.1f}"])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="scenes per kind and spacing")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    print(machine_line())

    rng = np.random.default_rng(0)
    rows = []
    for name, ratio, gamma in (("square", 1.0, 90.0), ("hexagonal", 1.0, 60.0)):
        # ~100 centroids on 1024 x 1440: 77 holes (20 % missing) + 23 strays
        basis = basis_of(130.0 if name == "square" else 140.0, ratio, gamma, 21.0)
        centroids, mask, _ = scene(rng, basis, SHAPE)
        label = f"{name}, {len(centroids)} centroids"
        rows.append(time_it(f"{label}: original search (square, unrefined)",
                            lambda c=centroids, m=mask: fit_lattice(c, m, model="square", refine=False),
                            repeat=args.repeat))
        rows.append(time_it(f"{label}: square + least squares",
                            lambda c=centroids, m=mask: fit_lattice(c, m, model="square"), repeat=args.repeat))
        rows.append(time_it(f"{label}: general + least squares",
                            lambda c=centroids, m=mask: fit_lattice(c, m, model="general"), repeat=args.repeat))
    print_table(rows, title="Lattice fit, 1024 x 1440 mask (warm)",
                baseline=rows[0].name)
    print("\n## Recovery sweep (30 % outliers, 20 % missing, jitter 2 % of the spacing)\n")
    print_markdown(sweep(args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
