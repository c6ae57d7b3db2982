"""Lattice search and refinement (ptolemy_rt.lattice) on synthetic centroid sets and the reference mask."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptolemy_rt.lattice import (
    Lattice,
    candidate_pairs,
    fit_lattice,
    lattice_cost,
    lattice_points,
    refine_lattice,
    summed_area_table,
)

SHAPE = (1024, 1440)


def true_basis(spacing: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Our convention: u at angle_deg counter-clockwise on screen (y down), v = u turned so it points down."""
    a = math.radians(angle_deg)
    u = spacing * np.array([math.cos(a), -math.sin(a)])
    return u, np.array([-u[1], u[0]])


def scene_shape(spacing: float) -> tuple[int, int]:
    """1024 x 1440, or larger so that ~10 x 12 lattice cells fit: with only a handful of holes, 3 % jitter
    per hole cannot pin the spacing to 1 % (400 px on 1024 x 1440 leaves ~7 holes)."""
    return max(SHAPE[0], int(10 * spacing)), max(SHAPE[1], int(12 * spacing))


def scene(seed: int, spacing: float, angle_deg: float, shape=None, outliers=0.3, missing=0.2, jitter=0.03):
    """Centroids (true lattice points with `missing` dropped and `jitter`*spacing Gaussian noise per axis,
    plus `outliers` as many uniform strays), a mask of discs at them, and the true in-image points."""
    rng = np.random.default_rng(seed)
    shape = scene_shape(spacing) if shape is None else shape
    rows, cols = shape
    u, v = true_basis(spacing, angle_deg)
    origin = np.array([cols / 2, rows / 2]) + rng.uniform(0, 1) * u + rng.uniform(0, 1) * v
    truth = lattice_points(tuple(origin), tuple(u), tuple(v), shape, edge_tolerance=0.0)
    kept = truth[rng.random(len(truth)) >= missing]
    kept = kept + rng.normal(0.0, jitter * spacing, kept.shape)
    strays = rng.uniform([0, 0], [cols - 1, rows - 1], (int(round(outliers * len(kept))), 2))
    centroids = np.concatenate([kept, strays])
    centroids = centroids[rng.permutation(len(centroids))]
    radius = max(2.0, 0.08 * spacing)
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[-math.ceil(radius) : math.ceil(radius) + 1, -math.ceil(radius) : math.ceil(radius) + 1]
    disc = xx * xx + yy * yy <= radius * radius
    for cx, cy in centroids:
        r0, c0 = int(round(cy)) - disc.shape[0] // 2, int(round(cx)) - disc.shape[1] // 2
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + disc.shape[0], rows), min(c0 + disc.shape[1], cols)
        if rs < re and cs < ce:
            mask[rs:re, cs:ce] |= disc[rs - r0 : re - r0, cs - c0 : ce - c0]
    return centroids, mask, truth


def angle_error(a: float, b: float) -> float:
    """Difference of two lattice angles modulo 90 degrees."""
    d = (a - b) % 90.0
    return min(d, 90.0 - d)


def check_recovered(lat: Lattice | None, spacing: float, angle: float, truth: np.ndarray) -> None:
    shape = scene_shape(spacing)
    assert lat is not None
    assert abs(lat.spacing_px / spacing - 1) < 0.01, (lat.spacing_px, spacing)
    assert angle_error(lat.angle_deg, angle) < 0.5, (lat.angle_deg, angle)
    # every true point inside the image has a fitted point (allowed slightly outside the edge) nearby
    pts = lat.points(shape, edge_tolerance=0.25 * spacing)
    d = np.hypot(*(truth[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    assert d.max() < 0.1 * spacing, d.max() / spacing


# ---------------------------------------------------------------------------------------------------
# Synthetic lattices


@pytest.mark.parametrize(
    "seed, spacing, angle",
    [(0, 40.0, 12.0), (1, 73.0, 45.0), (2, 130.0, 0.0), (3, 200.0, 89.5), (4, 290.0, 56.8), (5, 400.0, 33.0)],
)
def test_recovers_lattice(seed, spacing, angle):
    centroids, mask, truth = scene(seed, spacing, angle)
    check_recovered(fit_lattice(centroids, mask), spacing, angle, truth)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    spacing=st.floats(40.0, 400.0),
    angle=st.floats(0.0, 90.0, exclude_max=True),
)
def test_recovers_any_lattice(seed, spacing, angle):
    centroids, mask, truth = scene(seed, spacing, angle)
    check_recovered(fit_lattice(centroids, mask), spacing, angle, truth)


def test_refinement_off_returns_the_anchor_lattice():
    centroids, mask, _ = scene(7, 120.0, 20.0, outliers=0.0, missing=0.0, jitter=0.01)
    lat = fit_lattice(centroids, mask, refine=False)
    assert lat is not None and not lat.refined and lat.n_inliers == len(centroids)
    i, j = lat.anchors
    assert lat.origin == (centroids[i, 0], centroids[i, 1])
    # u is c_j - c_i turned by a multiple of 90 degrees (canonical angle in [0, 90))
    d = centroids[j] - centroids[i]
    turns = [d, np.array([-d[1], d[0]]), -d, np.array([d[1], -d[0]])]
    assert min(np.hypot(*(np.array(lat.u) - t)) for t in turns) < 1e-9
    assert 0.0 <= lat.angle_deg < 90.0
    assert lat.v == (-lat.u[1], lat.u[0])


def test_refinement_beats_the_anchor_pair():
    centroids, mask, truth = scene(11, 60.0, 17.0)
    u, _ = true_basis(60.0, 17.0)
    off = fit_lattice(centroids, mask, refine=False)
    on = fit_lattice(centroids, mask, refine=True)
    assert on.refined and on.n_inliers > 0.5 * len(truth)
    assert abs(on.spacing_px - 60.0) <= abs(off.spacing_px - 60.0) + 1e-9
    assert abs(on.spacing_px / 60.0 - 1) < 0.002


def test_deterministic():
    centroids, mask, _ = scene(3, 97.0, 71.0)
    assert fit_lattice(centroids, mask) == fit_lattice(centroids.copy(), mask.copy())


def test_no_lattice_cases():
    mask = np.zeros((200, 300), dtype=bool)
    assert fit_lattice(np.zeros((0, 2)), mask) is None
    assert fit_lattice(np.array([[10.0, 10.0]]), mask) is None
    # two centroids but nothing positive in the mask
    assert fit_lattice(np.array([[10.0, 10.0], [60.0, 10.0]]), mask) is None
    # centroids closer than the minimum spacing
    mask[10, 10] = mask[10, 13] = True
    assert fit_lattice(np.array([[10.0, 10.0], [13.0, 10.0]]), mask) is None


def test_random_blobs_give_no_lattice():
    rng = np.random.default_rng(5)
    centroids = rng.uniform([0, 0], [1439, 1023], (12, 2))
    mask = np.zeros(SHAPE, dtype=bool)
    for cx, cy in centroids:
        r, c = int(cy), int(cx)
        mask[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5] = True
    assert fit_lattice(centroids, mask) is None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [12, 40, 150])
def test_random_blobs_give_no_lattice_with_the_hidden_fallback(seed, n):
    rng = np.random.default_rng([seed, n])
    centroids = rng.uniform([0, 0], [1439, 1023], (n, 2))
    mask = np.zeros(SHAPE, dtype=bool)
    for cx, cy in centroids:
        r, c = int(cy), int(cx)
        mask[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = True
    assert fit_lattice(centroids, mask) is None


def test_lattice_mostly_hidden_by_a_bar():
    # A grid bar across two thirds of the image: only the holes in the corners show. Their empty
    # footprints under the bar make a sparse wrong lattice cheapest; the fallback finds the true one.
    spacing, angle = 87.0, 23.8
    centroids, _, truth = scene(3, spacing, angle, shape=SHAPE, outliers=0.0, missing=0.0, jitter=0.01)
    normal = np.array([0.45, 1.0]) / math.hypot(0.45, 1.0)
    offset = centroids @ normal - float(np.array([720.0, 512.0]) @ normal)
    shown = centroids[np.abs(offset) > 360.0]
    assert 12 <= len(shown) <= 0.35 * len(truth)
    mask = np.zeros(SHAPE, dtype=bool)
    for cx, cy in shown:
        r, c = int(round(cy)), int(round(cx))
        mask[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = True
    lat = fit_lattice(shown, mask)
    assert lat is not None and abs(lat.spacing_px / spacing - 1) < 0.01
    assert angle_error(lat.angle_deg, angle) < 0.5
    assert lat.n_inliers == len(shown)
    without = fit_lattice(shown, mask, hidden_fallback=False)
    assert without is None or abs(without.spacing_px / spacing - 1) > 0.1


def test_two_centroids_make_a_lattice():
    # two holes filling a 100 x 200 image make a lattice ...
    mask = np.zeros((100, 200), dtype=bool)
    mask[45:56, 45:56] = True
    mask[45:56, 145:156] = True
    lat = fit_lattice(np.array([[50.0, 50.0], [150.0, 50.0]]), mask)
    assert lat is not None and abs(lat.spacing_px - 100) < 1e-9 and angle_error(lat.angle_deg, 0.0) < 1e-9
    assert lat.occupancy == 1.0 and lat.n_inliers == 2
    # ... but not in an image with room for 12 lattice points: most would land on nothing
    big = np.zeros((300, 400), dtype=bool)
    big[:100, :200] = mask
    assert fit_lattice(np.array([[50.0, 50.0], [150.0, 50.0]]), big) is None


# ---------------------------------------------------------------------------------------------------
# Cost and geometry


def brute_cost(mask, origin, u, lambda_fn=10.0, lambda_fp=1.0, max_hw=15.0):
    """Rasterise every footprint (clipped to the image) and count, the slow way."""
    rows, cols = mask.shape
    v = (-u[1], u[0])
    h = int(math.floor(min(max_hw, math.hypot(*u) / 4)))
    covered = np.zeros_like(mask)
    for a in range(-60, 61):
        for b in range(-60, 61):
            x = origin[0] + a * u[0] + b * v[0]
            y = origin[1] + a * u[1] + b * v[1]
            rx, ry = math.floor(x + 0.5), math.floor(y + 0.5)
            r0, r1 = max(ry - h, 0), min(ry + h, rows - 1)
            c0, c1 = max(rx - h, 0), min(rx + h, cols - 1)
            if r0 <= r1 and c0 <= c1:
                covered[r0 : r1 + 1, c0 : c1 + 1] = True
    fn = np.count_nonzero(mask & ~covered)
    fp = np.count_nonzero(covered & ~mask)
    return lambda_fn * fn + lambda_fp * fp


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    spacing=st.floats(10.0, 60.0),
    angle=st.floats(0.0, 90.0),
    ox=st.floats(-40.0, 140.0),
    oy=st.floats(-40.0, 110.0),
)
def test_summed_area_cost_matches_rasterised_cost(seed, spacing, angle, ox, oy):
    rng = np.random.default_rng(seed)
    mask = rng.random((70, 100)) < 0.3
    u, _ = true_basis(spacing, angle)
    sat = summed_area_table(mask)
    assert lattice_cost(sat, (ox, oy), tuple(u)) == brute_cost(mask, (ox, oy), tuple(u))


def test_summed_area_table():
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) < 0.4
    sat = summed_area_table(mask)
    assert sat.shape == (38, 54) and sat[0].sum() == 0 and sat[:, 0].sum() == 0
    assert np.array_equal(sat[1:, 1:], np.cumsum(np.cumsum(mask, 0), 1))


def test_points_outside_the_image_cost_nothing():
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:61, 40:61] = True
    sat = summed_area_table(mask)
    # a lattice whose only visible point covers the blob: cost = covered non-positives only
    inside = lattice_cost(sat, (50.0, 50.0), (500.0, 0.0))
    assert inside == 31 * 31 - 21 * 21
    # shifted entirely off the image: every positive is missed, nothing is covered
    assert lattice_cost(sat, (-300.0, 50.0), (500.0, 0.0)) == 10 * 21 * 21
    # a point on the border is charged only for its visible part
    assert lattice_cost(sat, (0.0, 0.0), (500.0, 0.0)) == 10 * 21 * 21 + 16 * 16


def test_lattice_points_edge_tolerance():
    u, v = (100.0, 0.0), (0.0, 100.0)
    inside = lattice_points((5.0, 5.0), u, v, (300, 400), edge_tolerance=-10.0)
    assert {tuple(p) for p in inside} == {(x, y) for x in (105.0, 205.0, 305.0) for y in (105.0, 205.0)}
    loose = lattice_points((5.0, 5.0), u, v, (300, 400), edge_tolerance=100.0)
    assert len(loose) == 6 * 5  # x in -95..405, y in -95..305
    # strict, measured from the image edge at -0.5
    far = (1000.0, 0.0), (0.0, 1000.0)
    assert len(lattice_points((-4.5, 50.0), *far, (100, 100), edge_tolerance=4.0)) == 0
    assert len(lattice_points((-4.5, 50.0), *far, (100, 100), edge_tolerance=4.01)) == 1


def test_candidate_pairs():
    c = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [300.0, 300.0]])
    pairs = candidate_pairs(c, k=1)
    assert [tuple(p) for p in pairs] == [(0, 1), (2, 0), (3, 1), (4, 3)]
    assert len(candidate_pairs(c, k=6)) == 10  # every unordered pair once
    assert len(candidate_pairs(np.array([[0.0, 0.0], [5.0, 0.0]]), k=6)) == 0  # below the minimum spacing


def test_refine_lattice_ignores_strays():
    u, v = true_basis(100.0, 30.0)
    pts = np.array([[200.0, 200.0] + a * u + b * v for a in range(-3, 4) for b in range(-3, 4)])
    strays = np.array([[210.0, 215.0], [500.0, 500.0]])
    o, uu, n = refine_lattice(np.concatenate([pts, strays]), (201.0, 199.0), tuple(u * 1.01))
    assert n >= len(pts)
    assert np.hypot(*(np.array(uu) - u)) < 0.05 and np.hypot(*(np.array(o) - [200.0, 200.0])) < 0.5


# ---------------------------------------------------------------------------------------------------
# The reference lattice (no network needed: the reference U-Net mask is stored)


@pytest.fixture(scope="module")
def reference_mask(reference_dir):
    return np.load(reference_dir / "reference-outputs" / "medmag_readme_unet.npz")["mask"]


@pytest.mark.parametrize("k", [5, 6])
def test_reference_lattice_without_refinement(reference_dir, reference_mask, k):
    from ptolemy_rt.holes import hole_centroids

    centroids = hole_centroids(reference_mask)
    assert len(centroids) == 17
    lat = fit_lattice(centroids, reference_mask, k=k, refine=False)
    assert lat is not None and abs(lat.angle_deg - 56.84) < 0.01
    for name, tol, n in (("medmag_readme.json", -10.0, 17), ("medmag_readme_edgetol100.json", 100.0, 24)):
        ref = json.loads((reference_dir / "reference-outputs" / name).read_text())
        # the original's coordinates are ours + 0.5 (it measured from the top-left pixel's corner)
        centres = np.array([np.mean(h["vertices"], axis=0) for h in ref]) - 0.5
        pts = lat.points(reference_mask.shape, tol)
        assert len(pts) == n
        d = np.hypot(*(centres[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)).min(axis=1)
        assert d.max() < 1e-6


def test_original_candidate_set_size(reference_mask):
    from ptolemy_rt.holes import hole_centroids

    centroids = hole_centroids(reference_mask)
    # the original evaluates 85 ordered pairs (17 x 5 neighbours); unordered, each pair once
    ordered = {(i, j) for i in range(17) for j in np.argsort(np.hypot(*(centroids - centroids[i]).T))[1:6]}
    unordered = {tuple(sorted(p)) for p in ordered}
    assert len(ordered) == 85
    assert {tuple(sorted(p)) for p in candidate_pairs(centroids, k=5)} == unordered
