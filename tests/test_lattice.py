"""Lattice search and refinement (ptolemy_rt.lattice) on synthetic centroid sets and the reference mask."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ptolemy_rt.lattice import (
    Lattice,
    candidate_pairs,
    canonical_basis,
    fit_lattice,
    lattice_cost,
    lattice_kind,
    lattice_points,
    refine_general,
    refine_lattice,
    summed_area_table,
)

from .conftest import examples

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
    strays = rng.uniform([0, 0], [cols - 1, rows - 1], (round(outliers * len(kept)), 2))
    centroids = np.concatenate([kept, strays])
    centroids = centroids[rng.permutation(len(centroids))]
    radius = max(2.0, 0.08 * spacing)
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[-math.ceil(radius) : math.ceil(radius) + 1, -math.ceil(radius) : math.ceil(radius) + 1]
    disc = xx * xx + yy * yy <= radius * radius
    for cx, cy in centroids:
        r0, c0 = round(cy) - disc.shape[0] // 2, round(cx) - disc.shape[1] // 2
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


@examples(8, settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]),
          given(
              seed=st.integers(0, 2**16),
              spacing=st.floats(40.0, 400.0),
              angle=st.floats(0.0, 90.0, exclude_max=True),
          ))
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
    _u, _ = true_basis(60.0, 17.0)
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
        r, c = round(cy), round(cx)
        mask[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = True
    lat = fit_lattice(shown, mask)
    assert lat is not None and abs(lat.spacing_px / spacing - 1) < 0.01
    assert angle_error(lat.angle_deg, angle) < 0.5
    assert lat.n_inliers == len(shown)
    without = fit_lattice(shown, mask, hidden_fallback=False)
    assert without is None or abs(without.spacing_px / spacing - 1) > 0.1


def test_lattice_under_wide_bars_with_strays_keeps_its_holes():
    # A whole-square view: holes (36 px) only in grid squares 340 px wide between 300 px bars, and a third as
    # many stray blobs again (bar edges, film). The bars' empty footprints make a sparse 69 px lattice
    # cheapest, which fails; the hidden fallback's search finds the holes' lattice, 72 % of the blobs on it
    # and a third of its points occupied, which the 80 % asked of a lattice most of whose points are
    # hidden refused (tuning view 11803000 at 2x: 76 %, half occupied; the grid squares' lattice won).
    rng = np.random.default_rng(1)
    spacing, t = 36.0, math.radians(10.0)
    a = spacing * np.array([math.cos(t), math.sin(t)])
    b = np.array([-a[1], a[0]])
    pts = np.array([[5.0, 7.0] + i * a + j * b for i in range(-60, 60) for j in range(-60, 60)])
    pts = pts[(pts[:, 0] > 3) & (pts[:, 0] < SHAPE[1] - 4) & (pts[:, 1] > 3) & (pts[:, 1] < SHAPE[0] - 4)]
    film = ((pts[:, 0] + 100) % 640 < 340) & ((pts[:, 1] + 150) % 640 < 340)
    holes = pts[film] + rng.normal(0, 0.3, (int(film.sum()), 2))
    strays = rng.uniform([0, 0], [1439, 1023], (int(0.45 * len(holes)), 2))
    centroids = np.concatenate([holes, strays])
    mask = np.zeros(SHAPE, dtype=bool)
    for cx, cy in centroids:
        r, c = round(cy), round(cx)
        mask[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = True
    lat = fit_lattice(centroids, mask, model="general")
    assert lat is not None and abs(lat.spacing_px / spacing - 1) < 0.01
    assert lat.n_inliers >= len(holes) and lat.n_inliers < 0.8 * len(centroids)


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


def rasterised_cost(mask, points, h, lambda_fn, lambda_fp, disjoint=False):
    """Cover a (2h+1)² footprint (clipped to the image) at each point and count misses and extras, the slow way;
    disjoint: also assert that no two footprints overlap."""
    rows, cols = mask.shape
    covered = np.zeros_like(mask)
    for x, y in points:
        rx, ry = math.floor(x + 0.5), math.floor(y + 0.5)
        r0, r1 = max(ry - h, 0), min(ry + h, rows - 1)
        c0, c1 = max(rx - h, 0), min(rx + h, cols - 1)
        if r0 <= r1 and c0 <= c1:
            if disjoint:
                assert not covered[r0 : r1 + 1, c0 : c1 + 1].any()  # footprints never overlap
            covered[r0 : r1 + 1, c0 : c1 + 1] = True
    fn = np.count_nonzero(mask & ~covered)
    fp = np.count_nonzero(covered & ~mask)
    return lambda_fn * fn + lambda_fp * fp


def brute_cost(mask, origin, u, lambda_fn=10.0, lambda_fp=1.0, max_hw=15.0):
    """Rasterise every footprint of the square lattice (origin, u, u turned 90 degrees)."""
    v = (-u[1], u[0])
    h = math.floor(min(max_hw, math.sqrt(u[0] * u[0] + u[1] * u[1]) / 4))  # as the kernel (hypot: an ulp off)
    points = [(origin[0] + a * u[0] + b * v[0], origin[1] + a * u[1] + b * v[1])
              for a in range(-60, 61) for b in range(-60, 61)]
    return rasterised_cost(mask, points, h, lambda_fn, lambda_fp)


@examples(8, settings(max_examples=25, deadline=None, derandomize=True),
          given(
              seed=st.integers(0, 1000),
              spacing=st.floats(10.0, 60.0),
              angle=st.floats(0.0, 90.0),
              ox=st.floats(-40.0, 140.0),
              oy=st.floats(-40.0, 110.0),
          ))
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


def _bulk_and_sliver(d: float = 28.0) -> np.ndarray:
    """A 15 x 15 block of holes and, beyond a bar, a sliver of a neighbouring square: two columns of three
    holes whose outer ones the image's edge cuts (centroids pulled 5 px inward)."""
    rng = np.random.default_rng(0)
    bulk = [[100 + d * m, 100 + d * n] for m in range(15) for n in range(15)]
    sliver = [[100 + d * m - (5.0 if m == 21 else 0.0), 100 + d * n] for m in (20, 21) for n in range(3)]
    return np.array(bulk + sliver) + rng.normal(0.0, 0.3, (len(bulk) + len(sliver), 2))


@pytest.mark.parametrize("model", ["square", "general"])
def test_refine_from_an_anchor_on_a_sliver_keeps_the_lattice(model):
    # The growth from an anchor among the sliver's cut holes pinned a short vector that the rings locked in
    # (general: |a| 22.4 px, 111 of 231 on it; square: 26.1 px, 53): the fit grows again from the middle.
    c = _bulk_and_sliver()
    anchor = tuple(c[225 + 3])
    if model == "square":
        _, a, n = refine_lattice(c, anchor, (28.0, 0.0))
        b = (-a[1], a[0])
    else:
        _, a, b, n = refine_general(c, anchor, (28.0, 0.0), (0.0, 28.0))
    assert n >= 225
    assert sorted([math.hypot(*a), math.hypot(*b)]) == pytest.approx([28.0, 28.0], abs=0.05)


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


# ---------------------------------------------------------------------------------------------------
# General lattices: two independent basis vectors (issue 11)


def reduced(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction, written out independently of the module's."""
    a, b = np.array(a, float), np.array(b, float)
    while True:
        if b @ b < a @ a:
            a, b = b, a
        b = b - round(float(a @ b) / float(a @ a)) * a
        if b @ b >= a @ a:
            return a, b


# The range of bases for basis_of: |b| / |a|, the angle between them, a's orientation.
BASIS_SHAPES = {"ratio": st.floats(0.8, 1.25), "gamma": st.floats(50.0, 130.0), "theta": st.floats(0.0, 180.0)}


def basis_of(spacing: float, ratio: float, gamma_deg: float, theta_deg: float) -> np.ndarray:
    """Columns a, b: |b| = ratio |a|, gamma between them, a at theta on screen; scaled so that the lattice's
    shortest vector is `spacing` long."""
    t, g = math.radians(theta_deg), math.radians(theta_deg - gamma_deg)
    a = np.array([math.cos(t), -math.sin(t)])
    b = ratio * np.array([math.cos(g), -math.sin(g)])
    r1, _ = reduced(a, b)
    return np.stack([a, b], axis=1) * (spacing / math.hypot(*r1))


def general_scene(seed: int, basis: np.ndarray, outliers=0.3, missing=0.2, jitter=0.02, cells=(9, 12)):
    """As scene() for any basis, in an image about cells[0] x cells[1] shortest spacings large."""
    rng = np.random.default_rng(seed)
    d = math.hypot(*reduced(basis[:, 0], basis[:, 1])[0])
    shape = (int(cells[0] * d), int(cells[1] * d))
    rows, cols = shape
    origin = np.array([cols / 2, rows / 2]) + basis @ rng.uniform(0, 1, 2)
    truth = lattice_points(tuple(origin), tuple(basis[:, 0]), tuple(basis[:, 1]), shape, edge_tolerance=0.0)
    kept = truth[rng.random(len(truth)) >= missing]
    kept = kept + rng.normal(0.0, jitter * d, kept.shape)
    strays = rng.uniform([0, 0], [cols - 1, rows - 1], (round(outliers * len(kept)), 2))
    centroids = np.concatenate([kept, strays])
    centroids = centroids[rng.permutation(len(centroids))]
    radius = max(2.0, 0.1 * d)
    mask = np.zeros(shape, dtype=bool)
    paint_discs(mask, centroids, radius)
    return centroids, mask, truth, shape


def paint_discs(mask: np.ndarray, points: np.ndarray, radius: float) -> None:
    """Set the pixels within `radius` of each (x, y) point, in place."""
    rows, cols = mask.shape
    r = math.ceil(radius)
    for cx, cy in points:
        r0, c0 = max(round(cy) - r, 0), max(round(cx) - r, 0)
        r1, c1 = min(round(cy) + r + 1, rows), min(round(cx) + r + 1, cols)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius


def check_general(lat: Lattice | None, basis: np.ndarray, truth: np.ndarray, shape) -> None:
    """Both reported vectors within 1 % of true lattice vectors, spanning the true lattice (not a sub- or
    superlattice), and every true point inside the image found by points()."""
    assert lat is not None
    inv = np.linalg.inv(basis)
    q = np.rint(inv @ np.array([lat.a, lat.b]).T)  # integer coordinates of a, b in the true basis
    assert abs(round(np.linalg.det(q))) == 1, q
    for w, qi in zip((lat.a, lat.b), q.T):
        t = basis @ qi
        assert np.hypot(*(np.array(w) - t)) < 0.01 * np.hypot(*t), (w, t)
    d = min(lat.spacing_a, lat.spacing_b)
    pts = lat.points(shape, edge_tolerance=0.25 * d)
    dist = np.hypot(*(truth[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    assert dist.max() < 0.15 * d, dist.max() / d


@examples(10, settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]),
          given(
              seed=st.integers(0, 2**16),
              spacing=st.floats(8.0, 400.0),
              **BASIS_SHAPES,
          ))
def test_recovers_any_general_lattice(seed, spacing, ratio, gamma, theta):
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, truth, shape = general_scene(seed, basis)
    check_general(fit_lattice(centroids, mask, model="general"), basis, truth, shape)


@pytest.mark.parametrize(
    "seed, spacing, ratio, gamma, theta, kind",
    [
        (0, 60.0, 1.0, 90.0, 17.0, "square"),
        (1, 8.0, 1.0, 90.0, 33.0, "square"),
        (2, 150.0, 1.0, 60.0, 8.0, "hexagonal"),
        (3, 11.0, 1.0, 120.0, 41.0, "hexagonal"),
        (4, 90.0, 1.025, 90.0, 23.0, "square"),  # 2.5 % anisotropy (stage tilt): still a square array
        (5, 70.0, 1.0, 92.0, 64.0, "square"),  # 2 degrees of shear
        (6, 45.0, 1.25, 90.0, 5.0, "oblique"),  # rectangular
        (7, 380.0, 1.1, 75.0, 130.0, "oblique"),
    ],
)
def test_recovers_named_lattices(seed, spacing, ratio, gamma, theta, kind):
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, truth, shape = general_scene(seed, basis)
    lat = fit_lattice(centroids, mask, model="general")
    check_general(lat, basis, truth, shape)
    assert lat.kind == kind and lat.model == "general" and lat.refined
    if kind == "square":
        assert 0.0 <= lat.angle_deg < 90.0 and abs(lat.angle_ab_deg - 90.0) < 3.0
    if kind == "hexagonal":
        assert 0.0 <= lat.angle_deg < 60.0 and abs(lat.angle_ab_deg - 120.0) < 3.0
    assert lat.spacing_px == lat.spacing_a <= lat.spacing_b * 1.03


def test_skewed_lattice_keeps_its_edge_holes():
    # A 3 % anisotropic lattice across 20 periods: the square model's compromise spacing drifts off the
    # outer holes, the general one keeps them all.
    basis = basis_of(40.0, 1.03, 90.0, 10.0)
    centroids, mask, truth, shape = general_scene(9, basis, outliers=0.0, missing=0.0, jitter=0.01, cells=(20, 26))
    check_general(fit_lattice(centroids, mask, model="general"), basis, truth, shape)
    square = fit_lattice(centroids, mask, model="square")
    pts = square.points(shape, edge_tolerance=10.0)
    dist = np.hypot(*(truth[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    assert dist.max() > 0.15 * 40.0


def test_hexagonal_lattice_needs_the_general_model():
    basis = basis_of(50.0, 1.0, 60.0, 12.0)
    centroids, mask, truth, shape = general_scene(10, basis, outliers=0.1, missing=0.1)
    check_general(fit_lattice(centroids, mask, model="general"), basis, truth, shape)
    square = fit_lattice(centroids, mask, model="square")
    assert square is None or square.kind == "square"  # whatever it is, it is not this lattice


def test_square_model_is_the_default():
    basis = basis_of(50.0, 1.0, 60.0, 12.0)
    centroids, mask, _, _ = general_scene(10, basis, outliers=0.0, missing=0.0)
    default = fit_lattice(centroids, mask)
    assert default is None or (default.model == "square" and default.kind == "square")
    assert fit_lattice(centroids, mask, model="general").model == "general"
    assert fit_lattice(centroids, mask, refine=False, model="general").model == "general"
    with pytest.raises(ValueError, match="model"):
        fit_lattice(centroids, mask, model="hexagonal")


def test_general_fit_is_deterministic():
    basis = basis_of(33.0, 1.1, 70.0, 100.0)
    centroids, mask, _, _ = general_scene(12, basis)
    assert fit_lattice(centroids, mask, model="general") == fit_lattice(centroids.copy(), mask.copy(), model="general")


@pytest.mark.parametrize("seed", range(3))
def test_random_blobs_give_no_general_lattice(seed):
    rng = np.random.default_rng([seed, 77])
    for n in (6, 12, 40):
        centroids = rng.uniform([0, 0], [1439, 1023], (n, 2))
        mask = np.zeros(SHAPE, dtype=bool)
        for cx, cy in centroids:
            r, c = int(cy), int(cx)
            mask[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5] = True
        assert fit_lattice(centroids, mask, model="general") is None


@settings(max_examples=30, deadline=None)
@given(pts=st.lists(st.tuples(st.floats(40, 1400), st.floats(40, 984)), min_size=2, max_size=3),
       radius=st.floats(4.0, 20.0))
def test_three_blobs_or_fewer_give_no_general_lattice(pts, radius):
    # any three points lie on a general lattice (a bar across continuous film: 3 blobs at its edge gave an
    # oblique 320 x 694 px lattice, occupancy 0.375, and 8 false holes); a fourth on it is the evidence
    centroids = np.array(pts, dtype=np.float64)
    assume(min(np.hypot(*(a - b)) for i, a in enumerate(centroids) for b in centroids[i + 1:]) > 60.0)
    mask = np.zeros(SHAPE, dtype=bool)
    paint_discs(mask, centroids, radius)
    assert fit_lattice(centroids, mask, model="general") is None


def test_four_blobs_of_a_lattice_give_a_general_lattice():
    basis = np.array([[310.0, 40.0], [-120.0, 380.0]])
    centroids = np.array([[400.0, 300.0]]) + np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) @ basis
    mask = np.zeros(SHAPE, dtype=bool)
    paint_discs(mask, centroids, 20.0)
    lat = fit_lattice(centroids, mask, model="general")
    assert lat is not None and lat.n_inliers == 4


def test_to_dict():
    basis = basis_of(50.0, 1.0, 60.0, 12.0)
    centroids, mask, _, _ = general_scene(10, basis)
    d = fit_lattice(centroids, mask, model="general").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["kind"] == "hexagonal" and len(d["a"]) == 2 and len(d["b"]) == 2 and len(d["origin"]) == 2
    assert d["spacing_a"] == pytest.approx(math.hypot(*d["a"])) and d["spacing_px"] == d["spacing_a"]
    assert d["angle_ab_deg"] == pytest.approx(120.0, abs=3.0)


# ---------------------------------------------------------------------------------------------------
# Canonical basis and kind

unimodular_steps = st.lists(st.sampled_from(["swap", "neg_a", "add", "sub"]), min_size=0, max_size=12)


def apply_steps(a: np.ndarray, b: np.ndarray, steps) -> tuple[np.ndarray, np.ndarray]:
    for s in steps:
        if s == "swap":
            a, b = b, a
        elif s == "neg_a":
            a = -a
        elif s == "add":
            b = b + a
        else:
            a = a - b
    return a, b


@examples(50, settings(max_examples=200, deadline=None, derandomize=True),
          given(
              spacing=st.floats(8.0, 400.0),
              ratio=st.floats(0.5, 2.0),
              gamma=st.floats(40.0, 140.0),
              theta=st.floats(0.0, 360.0),
              steps=unimodular_steps,
          ))
def test_canonical_basis_is_the_same_for_any_basis_of_the_lattice(spacing, ratio, gamma, theta, steps):
    basis = basis_of(spacing, ratio, gamma, theta)
    a0, b0 = basis[:, 0], basis[:, 1]
    ref_a, ref_b = (np.array(v) for v in canonical_basis(tuple(a0), tuple(b0)))
    # near a tie (a short vector on the angle's wrap at 0 / 180 degrees) rounding may pick another
    r1, r2 = reduced(a0, b0)
    short = [m * r1 + n * r2 for m in range(-4, 5) for n in range(-3, 4) if (m, n) != (0, 0)]
    shortest = min(np.hypot(*w) for w in short)
    lines = [math.degrees(math.atan2(-w[1], w[0])) % 180.0 for w in short if np.hypot(*w) <= 1.031 * shortest]
    hypothesis_assume(all(min(t, 180.0 - t) > 1e-6 for t in lines))
    ang = math.degrees(math.atan2(-ref_a[1], ref_a[0])) % 360.0
    a1, b1 = apply_steps(a0.copy(), b0.copy(), steps)
    ca, cb = (np.array(v) for v in canonical_basis(tuple(a1), tuple(b1)))
    assert np.allclose(ca, ref_a, atol=1e-7 * spacing) and np.allclose(cb, ref_b, atol=1e-7 * spacing)
    # the same lattice: integer coordinates, unimodular; a is a shortest vector; b turned clockwise
    q = np.rint(np.linalg.solve(basis, np.stack([ca, cb], axis=1)))
    assert abs(round(np.linalg.det(q))) == 1
    r1, _ = reduced(a0, b0)
    assert np.hypot(*ca) <= np.hypot(*r1) * 1.03 + 1e-9
    assert ca[0] * cb[1] - ca[1] * cb[0] > 0
    assert 0.0 <= ang < 180.0


def hypothesis_assume(cond: bool) -> None:
    from hypothesis import assume

    assume(cond)


def test_canonical_basis_conventions():
    # square: a at [0, 90) on screen, b = a turned 90 degrees so it points down for a pointing right
    a, b = canonical_basis((0.0, -10.0), (10.0, 0.0))
    assert a == (10.0, 0.0) and b == (0.0, 10.0)
    u, _ = true_basis(30.0, 123.0)
    a, b = canonical_basis(tuple(u), (-u[1], u[0]))
    assert math.degrees(math.atan2(-a[1], a[0])) == pytest.approx(33.0)
    assert b == pytest.approx((-a[1], a[0]))
    # hexagonal: a at [0, 60), b at 120 degrees
    basis = basis_of(20.0, 1.0, 60.0, 100.0)
    a, b = canonical_basis(tuple(basis[:, 0]), tuple(basis[:, 1]))
    assert math.degrees(math.atan2(-a[1], a[0])) == pytest.approx(40.0)
    assert Lattice((0, 0), a, b, 40.0, 0.0, (0, 1)).angle_ab_deg == pytest.approx(120.0)
    with pytest.raises(ValueError, match="degenerate"):
        canonical_basis((1.0, 2.0), (2.0, 4.0))


@pytest.mark.parametrize(
    "ratio, gamma, kind",
    [(1.0, 90.0, "square"), (1.029, 92.9, "square"), (1.0, 60.0, "hexagonal"), (1.02, 121.0, "hexagonal"),
     (1.04, 90.0, "oblique"), (1.0, 94.0, "oblique"), (1.0, 75.0, "oblique"), (1.3, 120.0, "oblique")],
)
def test_lattice_kind(ratio, gamma, kind):
    basis = basis_of(100.0, ratio, gamma, 20.0)
    assert lattice_kind(tuple(basis[:, 0]), tuple(basis[:, 1])) == kind


# ---------------------------------------------------------------------------------------------------
# The general cost: exact (non-overlapping footprints) for any basis down to 8 px


def brute_cost_general(mask, origin, u, v, lambda_fn=10.0, lambda_fp=1.0, max_hw=15.0):
    """Rasterise every footprint of the lattice (origin, u, v) near the image; footprints must not overlap."""
    rows, cols = mask.shape
    r1, r2 = reduced(np.array(u), np.array(v))
    d = math.sqrt(r1[0] * r1[0] + r1[1] * r1[1])  # as the kernel computes it (hypot may differ by an ulp)
    h = math.floor(min(max_hw, d / 4, d / (2 * math.sqrt(2)) - 1))
    n = int(2 * max(rows, cols) / (d * 0.5)) + 4
    points = [(origin[0] + a * r1[0] + b * r2[0], origin[1] + a * r1[1] + b * r2[1])
              for a in range(-n, n + 1) for b in range(-n, n + 1)]
    near = [(x, y) for x, y in points if -40 <= x <= cols + 40 and -40 <= y <= rows + 40]
    return rasterised_cost(mask, near, h, lambda_fn, lambda_fp, disjoint=True)


@examples(10, settings(max_examples=25, deadline=None, derandomize=True),
          given(
              seed=st.integers(0, 1000),
              spacing=st.floats(8.0, 40.0),
              **BASIS_SHAPES,
              ox=st.floats(-20.0, 80.0),
              oy=st.floats(-20.0, 60.0),
          ))
def test_general_cost_matches_rasterised_cost(seed, spacing, ratio, gamma, theta, ox, oy):
    rng = np.random.default_rng(seed)
    mask = rng.random((50, 70)) < 0.3
    basis = basis_of(spacing, ratio, gamma, theta)
    u, v = tuple(basis[:, 0]), tuple(basis[:, 1])
    sat = summed_area_table(mask)
    assert lattice_cost(sat, (ox, oy), u, v) == brute_cost_general(mask, (ox, oy), u, v)


def test_half_empty_rows_give_the_full_lattice_not_a_sublattice(monkeypatch):
    # Every other row of holes mostly missing (ice, a weak map): the lattice skipping those rows costs
    # less than the true one; the holes left on the skipped rows bring the search back to the full lattice.
    spacing, rng = 50.0, np.random.default_rng(3)
    basis = basis_of(spacing, 1.0, 90.0, 14.0)
    shape = (700, 900)
    origin = (450.0, 350.0)
    truth = lattice_points(origin, tuple(basis[:, 0]), tuple(basis[:, 1]), shape, 0.0)
    row = np.rint(np.linalg.solve(basis, (truth - origin).T)[1]).astype(int)
    kept = truth[rng.random(len(truth)) < np.where(row % 2 == 0, 0.95, 0.35)]
    centroids = kept + rng.normal(0, 0.01 * spacing, kept.shape)
    mask = np.zeros(shape, dtype=bool)
    for cx, cy in centroids:
        r, c = round(cy), round(cx)
        mask[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5] = True
    check_general(fit_lattice(centroids, mask, model="general"), basis, truth, shape)
    import ptolemy_rt.lattice as lattice_module

    monkeypatch.setattr(lattice_module, "_densify", lambda c, sat, o, a, b, *rest: (o, a, b, 0))
    sparse = fit_lattice(centroids, mask, model="general", min_inliers=0.0, min_occupancy=0.0)
    assert sparse is not None and sparse.spacing_b > 1.5 * spacing  # the sublattice, without the step


@pytest.mark.parametrize("seed", [0, 1])
def test_hexagonal_array_half_under_bars_gives_the_full_lattice_not_its_sqrt3_superlattice(seed, monkeypatch):
    # A hexagonal array of small blobs (the U-Net's at a 29 px period) on a band of film with bars over more
    # than half the view (a whole-square view, holes_sets 13603002 at 2x): the sqrt(3) x sqrt(3) superlattice
    # (a third of the holes, 50 px) costs less than the true one, whose empty footprints on the bars cost
    # more. Its two skipped cosets hold holes like its own: the index-3 step brings the full lattice back.
    spacing, rng = 29.0, np.random.default_rng(seed)
    basis = basis_of(spacing, 1.0, 60.0, 6.0)
    shape = (800, 1100)
    truth = lattice_points((550.0, 400.0), tuple(basis[:, 0]), tuple(basis[:, 1]), shape, 0.0)
    on_film = np.abs(truth[:, 0] - 550.0) < 0.45 * 1100 / 2
    kept = truth[on_film & (rng.random(len(truth)) >= 0.1)]
    centroids = kept + rng.normal(0, 0.01 * spacing, kept.shape)
    mask = np.zeros(shape, dtype=bool)
    paint_discs(mask, centroids, 3.8)
    check_general(fit_lattice(centroids, mask, model="general"), basis, truth[on_film], shape)
    import ptolemy_rt.lattice as lattice_module

    halves = lattice_module._superlattices
    monkeypatch.setattr(lattice_module, "_superlattices", lambda ra, rb: halves(ra, rb)[:3])  # index 2 only
    sparse = fit_lattice(centroids, mask, model="general")
    assert sparse is not None and sparse.spacing_px == pytest.approx(math.sqrt(3.0) * spacing, rel=0.01)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), angle=st.floats(0.0, 90.0), spacing=st.floats(8.0, 200.0),
       hexagonal=st.booleans())
def test_regularity_tells_lattices_from_random_points(seed, angle, spacing, hexagonal):
    """A lattice with 20 % of its points missing and 10 % strays stays above 0.5; as many uniform random
    points stay below it (the hole finder skips the lattice search on maps below 0.5)."""
    from ptolemy_rt.lattice import regularity

    rng = np.random.default_rng(seed)
    a = spacing * np.array([math.cos(math.radians(angle)), -math.sin(math.radians(angle))])
    turn = math.radians(60.0 if hexagonal else 90.0)
    b = np.array([[math.cos(turn), math.sin(turn)], [-math.sin(turn), math.cos(turn)]]) @ a
    ij = np.array([(i, j) for i in range(-12, 13) for j in range(-12, 13)], dtype=np.float64)
    pts = ij @ np.stack([a, b]) + rng.normal(0.0, 0.02 * spacing, (len(ij), 2))
    side = 8.0 * spacing
    pts = pts[(np.abs(pts) < side).all(axis=1)]
    pts = pts[rng.random(len(pts)) >= 0.2]
    strays = rng.uniform(-side, side, (len(pts) // 10, 2))
    assert regularity(np.concatenate([pts, strays])) >= 0.5
    assert regularity(rng.uniform(-side, side, (len(pts), 2))) < 0.5


def test_nearest_neighbour_distances_brute_force_and_tree_agree(monkeypatch):
    from ptolemy_rt import lattice

    c = np.random.default_rng(3).uniform(0, 500, (300, 2))
    direct = lattice.nearest_neighbour_distances(c)
    monkeypatch.setattr(lattice, "_BRUTE_PAIRS", 0)
    assert np.allclose(direct, lattice.nearest_neighbour_distances(c), rtol=0, atol=1e-9)
    assert np.isinf(lattice.nearest_neighbour_distances(c[:1])).all()


def brute_scan(mask, origin, u, v, max_hw=15.0):
    """(area, positives, inside, occupied) of one lattice's footprints, pixel by pixel (reduced basis)."""
    from ptolemy_rt import _lattice_kernels as k

    rows, cols = mask.shape
    ux, uy, vx, vy = (float(t[0]) for t in k.reduce_basis(u[0], u[1], v[0], v[1]))
    h = int(math.floor(float(k.halfwidth(math.hypot(ux, uy), max_hw))))
    area = pos = inside = occupied = 0
    n = int(4 * max(rows, cols) / math.hypot(ux, uy)) + 8
    for a in range(-n, n + 1):
        for b in range(-n, n + 1):
            rx = math.floor(origin[0] + a * ux + b * vx + 0.5)
            ry = math.floor(origin[1] + a * uy + b * vy + 0.5)
            r0, r1, c0, c1 = max(ry - h, 0), min(ry + h, rows - 1), max(rx - h, 0), min(rx + h, cols - 1)
            if r0 > r1 or c0 > c1:
                continue
            here = int(mask[r0 : r1 + 1, c0 : c1 + 1].sum())
            area += (r1 - r0 + 1) * (c1 - c0 + 1)
            pos += here
            if 0 <= rx < cols and 0 <= ry < rows:
                inside += 1
                occupied += here > 0
    return area, pos, inside, occupied


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), n=st.integers(1, 6))
def test_batched_scan_matches_pixel_sums(seed, n):
    """Several lattices in one vectorised scan (some with footprints only beyond the image, whose sums must
    be 0) give each lattice's own pixel sums."""
    from ptolemy_rt import _lattice_kernels as k

    rng = np.random.default_rng(seed)
    mask = rng.random((45, 61)) < 0.3
    sat = summed_area_table(mask)
    ox, oy = rng.uniform(-90, 150, n), rng.uniform(-90, 130, n)
    bases = [basis_of(rng.uniform(8, 70), rng.uniform(0.8, 1.25), rng.uniform(50, 130), rng.uniform(0, 180))
             for _ in range(n)]
    ux, uy = np.array([b[0, 0] for b in bases]), np.array([b[1, 0] for b in bases])
    vx, vy = np.array([b[0, 1] for b in bases]), np.array([b[1, 1] for b in bases])
    got = np.stack(k.scan_many(sat, ox, oy, ux, uy, vx, vy, 15.0), axis=1)
    for i in range(n):
        assert tuple(int(t) for t in got[i]) == brute_scan(mask, (ox[i], oy[i]), (ux[i], uy[i]), (vx[i], vy[i]))


def test_scan_of_footprints_just_beyond_the_edge():
    """A point whose rounded footprint ends one pixel before the image (x = -h - 0.8) adds nothing."""
    from ptolemy_rt import _lattice_kernels as k

    mask = np.random.default_rng(3).random((45, 61)) < 0.3
    sat = summed_area_table(mask)
    for origin in ((-15.8, 20.0), (20.0, -15.8), (-15.8, -15.6), (61 + 15.2, 10.0)):
        got = k.scan_many(sat, [origin[0]], [origin[1]], [70.0], [0.0], [0.0], [70.0], 15.0)
        assert tuple(int(t[0]) for t in got) == brute_scan(mask, origin, (70.0, 0.0), (0.0, 70.0))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), n=st.integers(1, 8), spacing=st.floats(8.0, 60.0))
def test_footprint_tables_give_the_summed_area_sums(seed, n, spacing):
    """The search's per-pixel footprint tables (one half-width) and the summed-area corners agree on every
    lattice, footprints beyond the edges included."""
    from ptolemy_rt import _lattice_kernels as k

    rng = np.random.default_rng(seed)
    mask = rng.random((47, 66)) < 0.3
    sat = summed_area_table(mask)
    theta = rng.uniform(0, 180)
    bases = [basis_of(spacing, rng.choice([1.0, 1.2]), rng.choice([60.0, 90.0, 110.0]), theta) for _ in range(n)]
    ux, uy, vx, vy, cross, h, bad = k._prepared(np.array([b[0, 0] for b in bases]), np.array([b[1, 0] for b in bases]),
                                                np.array([b[0, 1] for b in bases]), np.array([b[1, 1] for b in bases]),
                                                15.0)
    assert not bad.any()
    one = h == h[0]  # one half-width per table (at d = 4h a rotated vector's rounding can give h - 1)
    ux, uy, vx, vy, cross, h = (t[one] for t in (ux, uy, vx, vy, cross, h))
    ox, oy = rng.uniform(-60, 120, len(h)), rng.uniform(-60, 110, len(h))
    plain = k._scan_prepared(sat, ox, oy, ux, uy, vx, vy, cross, h, counts=False)
    tabled = k._scan_prepared(sat, ox, oy, ux, uy, vx, vy, cross, h, counts=False,
                              tables=k._box_tables(sat, int(h[0])))
    np.testing.assert_array_equal(plain[0], tabled[0])
    np.testing.assert_array_equal(plain[1], tabled[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_is_the_same_with_and_without_footprint_tables(seed, monkeypatch):
    from ptolemy_rt import _lattice_kernels as k

    rng = np.random.default_rng(seed)
    basis = basis_of(21.0, 1.1, 75.0, rng.uniform(0, 180))
    pts = lattice_points((100.0, 90.0), tuple(basis[:, 0]), tuple(basis[:, 1]), (180, 240), -5.0)
    pts = pts + rng.normal(0, 0.7, pts.shape)
    mask = np.zeros((180, 240), dtype=bool)
    yy, xx = np.mgrid[:180, :240]
    for x, y in pts:
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= 36
    results = []
    for size in (lambda shape, h: 0, lambda shape, h: 10**12):  # every half-width tabled / none
        monkeypatch.setattr(k, "_table_size", size)
        results.append(fit_lattice(pts, mask, model="general"))
    assert results[0] is not None and results[0] == results[1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_search_reusing_an_earlier_searchs_scans_finds_the_same(seed):
    """The hidden fallback's search (lambda_fp / 10) reuses the first search's footprint sums: same winner."""
    from ptolemy_rt import _lattice_kernels as k
    from ptolemy_rt.lattice import candidate_lattices

    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 200, (60, 2))
    mask = np.zeros((200, 200), dtype=bool)
    for x, y in c.astype(int):
        mask[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4] = True
    sat = summed_area_table(mask)
    cands = candidate_lattices(c, model="general")
    args = (sat, np.ascontiguousarray(c[cands.origin, 0]), np.ascontiguousarray(c[cands.origin, 1]),
            np.ascontiguousarray(cands.u[:, 0]), np.ascontiguousarray(cands.u[:, 1]),
            np.ascontiguousarray(cands.v[:, 0]), np.ascontiguousarray(cands.v[:, 1]),
            np.arange(len(cands.origin)), int(sat[-1, -1]), 10.0)
    memo: dict = {}
    first = k.search(*args, 1.0, 6.0, 8.0, memo)
    assert memo and first == k.search(*args, 1.0, 6.0, 8.0)
    assert k.search(*args, 0.1, 6.0, 8.0, memo) == k.search(*args, 0.1, 6.0, 8.0)


def coset_scene(seed: int, basis: np.ndarray, coset: int, cells=(9, 12)):
    """(rng, shortest spacing d, shape, true points, holes: 80 % of them, every point of one coset of an index-2
    superlattice: coset 0 the points halfway along a, 1 along b, 2 the cells' centres), in an image about
    cells[0] x cells[1] d large; positions exact (the callers jitter them)."""
    rng = np.random.default_rng(seed)
    a, b = basis[:, 0], basis[:, 1]
    d = math.hypot(*reduced(a, b)[0])
    shape = (int(cells[0] * d), int(cells[1] * d))
    rows, cols = shape
    origin = np.array([cols / 2, rows / 2]) + basis @ rng.uniform(0, 1, 2)
    truth = lattice_points(tuple(origin), tuple(a), tuple(b), shape, edge_tolerance=0.0)
    holes = truth[rng.random(len(truth)) >= 0.2]
    shift = (0.5 * a, 0.5 * b, 0.5 * (a + b))[coset]
    between = lattice_points(tuple(origin + shift), tuple(a), tuple(b), shape, edge_tolerance=0.0)
    return rng, d, shape, truth, holes, between


def artefact_scene(seed: int, basis: np.ndarray, coset: int, present: float, cells=(9, 12)):
    """Holes on the lattice `basis` (20 % missing) and, on one coset of an index-2 superlattice of it
    (coset_scene), the U-Net's blobs between holes: `present` of them, smaller (a quarter of a hole's area)
    and placed 1.5x as loosely."""
    rng, d, shape, truth, holes, between = coset_scene(seed, basis, coset, cells)
    holes = holes + rng.normal(0.0, 0.02 * d, holes.shape)
    between = between[rng.random(len(between)) < present]
    between = between + rng.normal(0.0, 0.03 * d, between.shape)
    mask = np.zeros(shape, dtype=bool)
    paint_discs(mask, holes, max(2.0, 0.2 * d))
    paint_discs(mask, between, max(1.0, 0.1 * d))
    centroids = np.concatenate([holes, between])
    return centroids[rng.permutation(len(centroids))], mask, truth, shape


@examples(10, settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]),
          given(
              seed=st.integers(0, 2**16),
              spacing=st.floats(20.0, 160.0),
              **BASIS_SHAPES,
              coset=st.integers(0, 2),
              present=st.floats(0.5, 1.0),
          ))
def test_blobs_between_the_holes_do_not_make_a_denser_lattice(seed, spacing, ratio, gamma, theta, coset, present):
    """The U-Net's smaller, looser blobs on a coset between the holes (half or more of its points): the
    lattice through both is 1/sqrt(2) or 1/2 of the true one and explains every blob, but the index-2
    check (_sparsify, and _densify's likeness test) returns the holes' lattice and sets those blobs aside."""
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, truth, shape = artefact_scene(seed, basis, coset, present)
    lat = fit_lattice(centroids, mask, model="general")
    check_general(lat, basis, truth, shape)
    assert lat.n_set_aside > 0.5 * present * 0.5 * len(truth)


@examples(8, settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]),
          given(
              seed=st.integers(0, 2**16),
              spacing=st.floats(16.0, 160.0),
              **BASIS_SHAPES,
          ))
def test_a_lattice_of_like_holes_is_never_split(seed, spacing, ratio, gamma, theta):
    """Holes alike on every coset (20 % missing, 30 % strays): the index-2 check keeps the whole lattice and
    sets nothing aside (the converse of the test above)."""
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, truth, shape = general_scene(seed, basis)
    lat = fit_lattice(centroids, mask, model="general")
    check_general(lat, basis, truth, shape)
    assert lat.n_set_aside == 0


def nearest_distance(points: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance from each of `points` (m, 2) to the nearest of `c` (n, 2), by brute force (the reference
    for lattice._near_distance; the difference point minus centroid, as it takes it)."""
    out = np.empty(len(points), dtype=np.float64)
    step = max(1, 262_144 // max(len(c), 1))
    for s in range(0, len(points), step):
        p = points[s : s + step]
        d2 = (p[:, None, 0] - c[None, :, 0]) ** 2 + (p[:, None, 1] - c[None, :, 1]) ** 2
        out[s : s + step] = np.sqrt(d2.min(axis=1))
    return out


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), spacing=st.floats(8.0, 100.0), index=st.integers(1, 2), **BASIS_SHAPES)
def test_near_distances_by_rounding_are_the_brute_force_ones(seed, spacing, ratio, gamma, theta, index):
    """_near_distance (each centroid rounded to its lattice point, for the index-2 checks) gives the brute
    force nearest distance, bit for bit, wherever it is within the radius (a quarter spacing), inf elsewhere,
    for any basis of the lattice (index 2: a doubled vector, not reduced)."""
    from ptolemy_rt.lattice import _near_distance

    rng = np.random.default_rng(seed)
    basis = basis_of(spacing, ratio, gamma, theta)
    a, b = index * basis[:, 0], basis[:, 1]
    shape = (int(rng.uniform(100, 600)), int(rng.uniform(100, 600)))
    origin = (float(rng.uniform(0, shape[1])), float(rng.uniform(0, shape[0])))
    pts = lattice_points(origin, tuple(a), tuple(b), shape, 0.0)
    c = rng.uniform([-20, -20], [shape[1] + 20, shape[0] + 20], (int(rng.integers(2, 400)), 2))
    radius = 0.25 * spacing
    brute = nearest_distance(pts, c) if len(pts) else np.zeros(0)
    assert np.array_equal(_near_distance(pts, c, origin, a, b, radius), np.where(brute < radius, brute, np.inf))


def _brute_lattice_points(origin, u, v, shape, tol):
    """Every (i, j) of an index box around the exact (rational) lattice coordinates of the image's corners, kept
    by lattice_points' own rule and arithmetic ((ox + i ux) + j vx, strict edges), in its order; and the box's
    size (candidates).

    The box is four indices wider, plus what rounding can add: a position (ox + i ux) + j vx is computed within
    3 units of roundoff (2^-53) of |ox| + |i ux| + |j vx| (to first order; 4 taken here), which moves a point's
    coordinate along u by at most that error times (|vx| + |vy|) / |det|."""
    from fractions import Fraction as F

    rows, cols = shape
    ox, oy = origin
    (ux, uy), (vx, vy) = u, v
    lo_x = lo_y = -0.5 - tol
    hi_x, hi_y = cols - 0.5 + tol, rows - 0.5 + tol
    det = F(ux) * F(vy) - F(vx) * F(uy)
    coords = [((F(vy) * (F(cx) - F(ox)) - F(vx) * (F(cy) - F(oy))) / det,
               (F(ux) * (F(cy) - F(oy)) - F(uy) * (F(cx) - F(ox))) / det)
              for cx, cy in ((lo_x, lo_y), (hi_x, lo_y), (hi_x, hi_y), (lo_x, hi_y))]
    a_lo, a_hi = min(a for a, _ in coords), max(a for a, _ in coords)
    b_lo, b_hi = min(b for _, b in coords), max(b for _, b in coords)
    pad_a = pad_b = 4
    for _ in range(3):  # the error grows with the indices: to a fixed point (the pads stop growing)
        err = 2.0 ** -51 * (max(abs(ox), abs(oy)) + float(max(abs(a_lo), abs(a_hi)) + pad_a) * max(abs(ux), abs(uy))
                            + float(max(abs(b_lo), abs(b_hi)) + pad_b) * max(abs(vx), abs(vy)))
        pad_a = 4 + math.ceil(err * (abs(vx) + abs(vy)) / abs(float(det)))
        pad_b = 4 + math.ceil(err * (abs(ux) + abs(uy)) / abs(float(det)))
    i_lo, i_hi = math.floor(a_lo) - pad_a, math.ceil(a_hi) + pad_a
    j_lo, j_hi = math.floor(b_lo) - pad_b, math.ceil(b_hi) + pad_b
    if (i_hi - i_lo + 1) * (j_hi - j_lo + 1) > 2_000_000 or max(-i_lo, i_hi, -j_lo, j_hi) >= 2**53:
        return None, None  # too many to enumerate, or indices that float64 no longer holds
    i = np.arange(i_lo, i_hi + 1, dtype=np.float64)[None, :]
    j = np.arange(j_lo, j_hi + 1, dtype=np.float64)[:, None]
    x = np.broadcast_to(ox + i * ux + j * vx, (j.shape[0], i.shape[1]))
    y = np.broadcast_to(oy + i * uy + j * vy, x.shape)
    keep = (x > lo_x) & (x < hi_x) & (y > lo_y) & (y < hi_y)
    assert not (keep[0].any() or keep[-1].any() or keep[:, 0].any() or keep[:, -1].any())
    x, y = x[keep], y[keep]
    return np.stack([x, y], axis=1)[np.lexsort((x, np.round(y, 6)))], keep.size


_coord = st.one_of(st.floats(-400.0, 400.0), st.integers(-400, 400).map(lambda k: k / 2),
                   st.floats(-1e9, 1e9), st.floats(-1e15, 1e15))


@examples(100, settings(max_examples=400, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.filter_too_much]),
          given(origin=st.tuples(_coord, _coord),
                spacing=st.one_of(st.floats(2.0, 200.0), st.integers(2, 100).map(float)),
                ratio=st.floats(0.5, 3.0), angle=st.floats(-180.0, 180.0),
                between=st.one_of(st.floats(1.0, 179.0), st.floats(1e-4, 0.5), st.sampled_from([60.0, 90.0, 120.0])),
                shape=st.tuples(st.integers(1, 300), st.integers(1, 300)),
                tol=st.one_of(st.floats(-60.0, 60.0), st.integers(-60, 60).map(float),
                              st.integers(-120, 120).map(lambda k: k / 2))))
@example(origin=(999999999999999.0, 960121910059537.0), spacing=2.0, ratio=1.0, angle=-69.98611834689903,
         between=5.0, shape=(2, 1), tol=0.0)  # one point missed with one index of margin
def test_lattice_points_match_brute_force_enumeration(origin, spacing, ratio, angle, between, shape, tol):
    """lattice_points' closed-form index ranges (corners' coordinates and a margin) miss no point: the same
    points, bit for bit and in the same order, as an enumeration of every index in a box around the exact
    corners' coordinates as wide as rounding can reach, over square, skewed and nearly parallel bases (down to
    1e-4 degrees apart), far origins (up to 1e15 px: positions rounded by a tenth of a pixel, which one index
    of margin did not cover), tiny and large images, points exactly on the edges."""
    a = math.radians(angle)
    b = a + math.radians(between)
    u = (spacing * math.cos(a), spacing * math.sin(a))
    v = (spacing * ratio * math.cos(b), spacing * ratio * math.sin(b))
    det = u[0] * v[1] - v[0] * u[1]
    assume(det != 0.0)
    want, _ = _brute_lattice_points(origin, u, v, shape, tol)
    assume(want is not None)
    got = lattice_points(origin, u, v, shape, edge_tolerance=tol)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_lattice_points_of_nearly_parallel_vectors_stay_bounded():
    """A basis of nearly parallel vectors made lattice_points enumerate an index rectangle of billions (24 GB
    for a 1x1 image, MemoryError under a 2 GB cap): it is reduced first, and the points are the lattice's (integer
    coordinates in the given basis, inside the box, as many as it holds); a box of more points than
    any image holds is a ValueError naming the count."""
    script = """
import math, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import numpy as np
from ptolemy_rt.lattice import lattice_points
a = math.radians(1e-4)
u, v = (10.0, 0.0), (10 * math.cos(a), 10 * math.sin(a))
p = lattice_points((0.0, 1e9), u, v, (1, 1), 5.0)
det = u[0] * v[1] - v[0] * u[1]
dx, dy = p[:, 0] - 0.0, p[:, 1] - 1e9
i = (v[1] * dx - v[0] * dy) / det
j = (u[0] * dy - u[1] * dx) / det
print(len(p), abs(det), float(np.abs(i - np.round(i)).max()), float(np.abs(j - np.round(j)).max()),
      bool(((p > -5.5) & (p < 5.5)).all()))
try:
    lattice_points((0.0, 0.0), u, v, (100, 100), 0.0)
except ValueError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-800:]
    first, second = done.stdout.strip().splitlines()
    n, det, off_i, off_j, inside = first.split()
    # the reduced basis is (0, 10 sin a) and (10, 0): one column of points (x = 0) crosses the 11 px box
    assert inside == "True" and abs(int(n) - 11 / (10 * math.sin(math.radians(1e-4)))) <= 2, first
    assert float(off_i) < 0.05 and float(off_j) < 0.05, first  # lattice points of the given basis (to rounding at 1e9)
    assert "lattice points in the 100x100 image, more than" in second, second


@pytest.mark.parametrize("centroids,kwargs,error,named", [
    (np.full((4, 2), np.nan), {}, ValueError, "NaN"),
    (np.ones((4, 3)), {}, ValueError, "(n, 2)"),
    (np.arange(8.0), {}, ValueError, "(n, 2)"),
    (np.ones((4, 2), complex), {}, TypeError, "real numbers"),
    (None, {"k": 0}, ValueError, "k"),
    (None, {"k": 1.5}, ValueError, "k"),
    (None, {"lambda_fn": float("nan")}, ValueError, "lambda_fn"),
    (None, {"max_halfwidth": -1}, ValueError, "max_halfwidth"),
    (None, {"min_spacing_px": float("nan")}, ValueError, "min_spacing_px"),
    (None, {"blob_halfwidth": 0}, ValueError, "blob_halfwidth"),
    (None, {"min_inliers": 2}, ValueError, "min_inliers"),
    (None, {"refine": "no"}, TypeError, "refine"),
])
def test_fit_lattice_names_a_bad_argument(centroids, kwargs, error, named):
    """Fuzz (api_options): NaN centroids, k=0, NaN or negative sizes gave None (no lattice) as if the data had
    none; a (4, 3) array was read as six points, a flat one as pairs, complex numbers lost their imaginary
    part. Now a ValueError / TypeError naming the argument (OptionError through the package's fit_lattice)."""
    import ptolemy_rt

    mask = np.zeros((64, 64), bool)
    mask[5:15, 5:15] = mask[45:55, 5:15] = mask[5:15, 45:55] = mask[45:55, 45:55] = True
    good = np.array([[10.0, 10.0], [50.0, 10.0], [10.0, 50.0], [50.0, 50.0]])
    with pytest.raises(error) as info:
        fit_lattice(good if centroids is None else centroids, mask, **kwargs)
    assert named in str(info.value)
    with pytest.raises(error):
        ptolemy_rt.fit_lattice(good if centroids is None else centroids, mask, **kwargs)
    assert fit_lattice(good.tolist(), mask.astype(np.uint8)) == fit_lattice(good, mask)


def film_scene(seed: int, basis: np.ndarray, coset: int, cells=(9, 12), holes_light=(180.0, 30.0),
               film_light=(100.0, 8.0)):
    """Holes on the lattice `basis` (20 % missing) and blobs just like them on every point of one coset of an
    index-2 superlattice (the U-Net firing on the film between holes), with each centroid's brightness (mean,
    sd): by default the holes' scattered by their ice (180 +- 30), the film's darker and even (100 +- 8)."""
    rng, d, shape, truth, holes, film = coset_scene(seed, basis, coset, cells)
    holes = holes + rng.normal(0.0, 0.02 * d, holes.shape)
    film = film + rng.normal(0.0, 0.02 * d, film.shape)
    mask = np.zeros(shape, dtype=bool)
    paint_discs(mask, holes, max(2.0, 0.2 * d))
    paint_discs(mask, film, max(2.0, 0.2 * d))
    centroids = np.concatenate([holes, film])
    light = np.concatenate([rng.normal(*holes_light, len(holes)), rng.normal(*film_light, len(film))])
    order = rng.permutation(len(centroids))
    return centroids[order], mask, light[order], truth, shape, len(film)


# The superlattice's shortest vector stays above 20 px (30 / sqrt 2 or 40 / 2): near the search's 8 px floor it
# finds a lattice a little off the superlattice, whose cosets then mix holes and film.
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), spacing=st.floats(40.0, 120.0), **BASIS_SHAPES, coset=st.integers(0, 2))
def test_film_between_the_holes_is_told_by_its_brightness(seed, spacing, ratio, gamma, theta, coset):
    """Blobs on the film between the holes as large and as well placed as the holes' (a grid-square view's
    U-Net map at a 30-45 px period): the mask cannot tell the lattice through both from the holes' own, the
    image's brightness at the centroids can; the film's centroids are set aside."""
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, light, truth, shape, n_film = film_scene(seed, basis, coset)
    lat = fit_lattice(centroids, mask, model="general", brightness=light)
    check_general(lat, basis, truth, shape)
    assert lat.n_set_aside >= 0.9 * n_film


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), spacing=st.floats(40.0, 120.0), **BASIS_SHAPES, coset=st.integers(0, 2))
def test_film_is_told_from_holes_some_of_which_are_as_dark(seed, spacing, ratio, gamma, theta, coset):
    """As above, with 4 % of the holes (thick ice) as dark as the film: the cosets' brightness ranges overlap at
    their 5th / 95th percentiles, but over 0.95 of the (hole, film) pairs are in order; the film's centroids are
    still set aside (holes_sets seed 10403002 at 2x: 314 film targets beside 313 holes)."""
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, light, truth, shape, n_film = film_scene(seed, basis, coset)
    holes = np.flatnonzero(light > 140.0)
    dark = np.random.default_rng(seed + 7).choice(holes, size=max(1, round(0.04 * len(holes))), replace=False)
    light[dark] = np.random.default_rng(seed + 8).normal(100.0, 8.0, len(dark))
    lat = fit_lattice(centroids, mask, model="general", brightness=light)
    check_general(lat, basis, truth, shape)
    assert lat.n_set_aside >= 0.9 * n_film


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), spacing=st.floats(16.0, 160.0), **BASIS_SHAPES,
       spread=st.floats(0.0, 100.0))
def test_brightness_alike_on_every_coset_changes_nothing(seed, spacing, ratio, gamma, theta, spread):
    """Holes alike on every coset (20 % missing, 30 % strays) with any brightness that owes nothing to the
    coset: the same lattice, to the bit, as without brightness."""
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, truth, shape = general_scene(seed, basis)
    light = np.random.default_rng(seed + 1).normal(150.0, spread, len(centroids))
    assert fit_lattice(centroids, mask, model="general", brightness=light) == fit_lattice(centroids, mask,
                                                                                         model="general")


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), spacing=st.floats(40.0, 120.0), **BASIS_SHAPES, coset=st.integers(0, 2))
def test_holes_darker_than_their_film_are_left_to_the_blobs(seed, spacing, ratio, gamma, theta, coset):
    """Holes darker than the film (thick ice, gold foil) scatter more than it: the brightness test abstains,
    and the lattice is the one the blobs alone give, not the film's coset."""
    basis = basis_of(spacing, ratio, gamma, theta)
    centroids, mask, light, *_ = film_scene(seed, basis, coset, holes_light=(100.0, 30.0), film_light=(180.0, 8.0))
    assert fit_lattice(centroids, mask, model="general", brightness=light) == fit_lattice(centroids, mask,
                                                                                         model="general")


def test_brightness_arguments_are_checked():
    centroids, mask, _ = scene(0, 60.0, 10.0)
    with pytest.raises(ValueError, match="one value per centroid"):
        fit_lattice(centroids, mask, model="general", brightness=np.ones(len(centroids) - 1))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_lattice(centroids, mask, model="general", brightness=np.full(len(centroids), np.nan))
    with pytest.raises(TypeError, match="brightness must be real numbers"):
        fit_lattice(centroids, mask, model="general", brightness=np.array(["x"] * len(centroids)))


def test_a_summed_area_table_given_is_the_one_made_here():
    # find_holes makes the mask's table on a second core while it finds the centroids
    centroids, mask, _ = scene(3, 40.0, 17.0)
    given = fit_lattice(centroids, mask, model="general", sat=summed_area_table(mask))
    assert given is not None and given == fit_lattice(centroids, mask, model="general")
    with pytest.raises(ValueError, match="summed_area_table"):
        fit_lattice(centroids, mask, sat=summed_area_table(mask[1:]))
