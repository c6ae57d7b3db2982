"""Issue 11 in the pipeline: general lattices, the film mask, single-hole and atlas views (tiny graphs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ptolemy_rt.holes import find_holes
from ptolemy_rt.models import ModelSet, load_models
from ptolemy_rt.options import HoleOptions
from ptolemy_rt.views import SINGLE_HOLE_REASON, atlas_reason, large_holes

from .conftest import synthetic_atlas
from .tiny_models import make_tiny_set


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelSet:
    return load_models(make_tiny_set(tmp_path_factory.mktemp("tiny")))


def discs(shape, pts, r, level=60.0, base=100.0, seed=0, noise=3.0):
    """Bright antialiased discs of radius r at pts (xy) on a flat film, mild noise."""
    rows, cols = shape
    img = np.full(shape, base, dtype=np.float32)
    for x, y in pts:
        r0, r1 = max(int(y - r - 2), 0), min(int(y + r + 3), rows)
        c0, c1 = max(int(x - r - 2), 0), min(int(x + r + 3), cols)
        if r0 < r1 and c0 < c1:
            yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
            img[r0:r1, c0:c1] += np.float32(level) * np.clip(r + 0.5 - np.hypot(xx - x, yy - y), 0, 1)
    return img + np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)


def lattice(shape, a, b, origin, margin=0.0):
    """Lattice points origin + i a + j b within `margin` of the image."""
    rows, cols = shape
    n = int(2 * max(rows, cols) / min(np.hypot(*a), np.hypot(*b))) + 2
    ij = np.array([(i, j) for i in range(-n, n + 1) for j in range(-n, n + 1)], dtype=float)
    pts = np.asarray(origin) + ij @ np.stack([a, b])
    keep = (pts[:, 0] > -margin) & (pts[:, 0] < cols + margin) & (pts[:, 1] > -margin) & (pts[:, 1] < rows + margin)
    return pts[keep]


def inside(pts, shape, edge=11.5):
    rows, cols = shape
    return pts[(pts[:, 0] > edge) & (pts[:, 0] < cols - 1 - edge) & (pts[:, 1] > edge) & (pts[:, 1] < rows - 1 - edge)]


def near(a, b):
    return np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1)).min(axis=1)


def basis(kind, spacing, angle, aniso=0.0):
    t = math.radians(angle)
    a = spacing * np.array([math.cos(t), -math.sin(t)])
    turn = math.radians(60.0 if kind == "hexagonal" else 90.0)
    b = spacing * (1 + aniso) * np.array([math.cos(t - turn), -math.sin(t - turn)])
    return a, b


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["hexagonal", "skewed"]), angle=st.floats(0, 180), spacing=st.floats(70, 110),
       seed=st.integers(0, 100))
@example(kind="hexagonal", angle=0.0, spacing=71.0, seed=0)  # whole rows of cut blobs along two edges
def test_general_lattices_every_hole_found(tiny, kind, angle, spacing, seed):
    shape = (600, 800)
    a, b = basis(kind, spacing, angle, aniso=0.03 if kind == "skewed" else 0.0)
    pts = lattice(shape, a, b, (400.3, 301.7), margin=spacing)
    img = discs(shape, pts, 0.2 * spacing, seed=seed)
    res = find_holes(img, tiny)
    assert res.reason is None
    ours = np.array([[h.x, h.y] for h in res.holes])
    assert near(inside(pts, shape), ours).max() < 1.0 and near(ours, pts).max() < 1.0
    lat = res.to_dict()["lattice"]
    # a 3 % anisotropy is at the edge of what still counts as square (lattice.KIND_LENGTH_TOL)
    assert lat["kind"] in (("hexagonal",) if kind == "hexagonal" else ("square", "oblique"))
    assert {"a", "b", "origin", "spacing_a", "spacing_b", "angle_deg", "angle_ab_deg", "spacing_px",
            "basis"} <= set(lat)
    truth = sorted([np.hypot(*a), np.hypot(*b)])
    assert sorted([lat["spacing_a"], lat["spacing_b"]]) == pytest.approx(truth, rel=0.005)
    assert all(h.on_film is True for h in res.holes)


def test_compat_keeps_the_square_model(tiny):
    shape = (600, 800)
    a, b = basis("hexagonal", 90.0, 10.0)
    img = discs(shape, lattice(shape, a, b, (400.3, 301.7), margin=90.0), 18.0)
    res = find_holes(img, tiny, options=HoleOptions.ptolemy())
    assert res.lattice is None or res.lattice.model == "square"
    assert HoleOptions.ptolemy().lattice_model == "square" and HoleOptions().lattice_model == "general"
    with pytest.raises(ValueError):
        HoleOptions(lattice_model="hex")


def bar_image(spacing=60.0, shape=(600, 800)):
    """A square lattice crossed by an opaque grid bar 2.5 periods wide; the points and their distance to it."""
    a, b = basis("square", spacing, 17.0)
    pts = lattice(shape, a, b, (400.3, 301.7), margin=spacing)
    img = discs(shape, pts, 0.25 * spacing)
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    n = np.array([math.cos(math.radians(70)), math.sin(math.radians(70))])
    dist = np.abs((xx - cols / 2) * n[0] + (yy - rows / 2) * n[1]) - 1.25 * spacing
    img[dist < 0] = np.random.default_rng(1).normal(2.0, 1.0, int((dist < 0).sum()))
    d_pts = np.abs((pts[:, 0] - cols / 2) * n[0] + (pts[:, 1] - rows / 2) * n[1]) - 1.25 * spacing
    return img, pts, d_pts


def test_points_over_a_grid_bar_are_never_targets(tiny):
    img, pts, dist = bar_image()
    default = find_holes(img, tiny)
    everything = find_holes(img, tiny, keep_off_film=True)
    compat = find_holes(img, tiny, options=HoleOptions.ptolemy(score="unet"))
    ours = np.array([[h.x, h.y] for h in default.holes])
    # no target over the bar; every hole clearly on film kept
    assert near(ours, pts[dist < 0]).min() > 10.0
    clearly_on = inside(pts[dist > 0.5 * 60.0], img.shape)
    assert near(clearly_on, ours).max() < 1.0
    # --keep-off-film shows the rest, each saying which it is
    assert len(everything.holes) > len(default.holes)
    assert {(h.x, h.y) for h in everything.holes if h.on_film} == {(h.x, h.y) for h in default.holes}
    over_bar = np.array([[h.x, h.y] for h in everything.holes if not h.on_film])
    assert len(over_bar) and near(over_bar, pts[dist < 0.3 * 60.0]).max() < 1.0
    # the original's behaviour keeps every lattice point
    assert len(compat.holes) >= len(everything.holes) - 2
    assert all(t["on_film"] in (True, False) for t in everything.to_dict()["targets"])


def test_all_points_off_film_says_so(tiny):
    img, _, _ = bar_image()
    rows, cols = img.shape
    img[:, : cols // 2 - 60] = 2.0  # leave one strip of film too narrow ... and then cover it
    img[:, cols // 2 - 60:] = 2.0
    img[250:350, 100:700] = 100.0  # a flat band: film without holes is not a lattice
    res = find_holes(img, tiny)
    assert res.holes == () and res.reason


def test_one_hole_filling_the_view(tiny):
    shape = (700, 900)
    spacing = 600.0
    a, b = basis("square", spacing, 8.0)
    pts = lattice(shape, a, b, (463.0, 341.0), margin=spacing)
    img = discs(shape, pts, 0.3 * spacing, level=80.0)
    res = find_holes(img, tiny)
    assert res.reason == SINGLE_HOLE_REASON
    assert len(res.holes) == 1
    h = res.holes[0]
    assert math.hypot(h.x - 463.0, h.y - 341.0) < 2.0
    assert h.diameter_px == pytest.approx(0.6 * spacing, rel=0.03)
    assert h.on_film is True and h.scores["unet"] is None


def test_fewer_than_two_periods_gives_no_invented_lattice(tiny):
    # holes small enough not to read as one filling the view, but only ~1.7 periods fit the shorter side
    shape = (600, 800)
    a, b = basis("square", 350.0, 0.0)
    pts = lattice(shape, a, b, (230.0, 130.0), margin=350.0)
    res = find_holes(discs(shape, pts, 60.0), tiny)
    assert res.holes == ()
    assert "magnification too high" in res.reason


@pytest.mark.parametrize("seed", [0, 1, 2, 3])  # 1: rounded squares
def test_an_atlas_says_so(tiny, seed):
    data, _ = synthetic_atlas(seed)
    res = find_holes(data, tiny)
    assert res.holes == () and "atlas" in res.reason


@settings(max_examples=20, deadline=None)
@given(x=st.floats(0.3, 0.7), y=st.floats(0.3, 0.7), d=st.floats(0.15, 0.55), seed=st.integers(0, 10**6))
def test_large_holes_finds_a_clear_disc(x, y, d, seed):
    shape = (400, 560)
    cx, cy, r = x * shape[1], y * shape[0], 0.5 * d * shape[0]
    img = discs(shape, [(cx, cy)], r, seed=seed, noise=8.0)
    found = large_holes(img)
    clear = min(cx, cy, shape[1] - 1 - cx, shape[0] - 1 - cy) > r + 3
    if abs(d - 0.35) < 0.015:
        return  # at the threshold either answer is right
    if d < 0.35:
        assert found == []  # two or more periods may fit: a lattice view, not one hole
    elif clear:
        assert len(found) == 1
        assert math.hypot(found[0].x - cx, found[0].y - cy) < 1.5
        assert found[0].diameter_px == pytest.approx(2 * r, rel=0.03)
    else:
        assert found == []  # cut by the edge: no evidence either way


def wedge_hole(x, y, d, dim, turn, seed, shape=(700, 900)):
    """A hole (centre x, y and diameter d as shares of the width / height) whose ice thickens across it along
    `turn` (radians): its brightness over the film falls from 86 to 86 - 80 dim grey levels, plus noise.
    (image, cx, cy, r) in px."""
    cx, cy, r = x * shape[1], y * shape[0], 0.5 * d * shape[0]
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    along = ((xx - cx) * math.cos(turn) + (yy - cy) * math.sin(turn)) / (2 * r) + 0.5  # 0 -> 1 across the hole
    ice = 80.0 * (1.0 - dim * np.clip(along, 0.0, 1.0)) + 6.0
    img = np.where(np.hypot(xx - cx, yy - cy) <= r, 100.0 + ice, 100.0)
    return (img + np.random.default_rng(seed).normal(0, 4.0, shape)).astype(np.float32), cx, cy, r


@settings(max_examples=15, deadline=None)
@given(x=st.floats(0.4, 0.6), y=st.floats(0.4, 0.6), d=st.floats(0.45, 0.6), dim=st.floats(0.0, 0.95),
       turn=st.floats(0.0, 2 * math.pi), seed=st.integers(0, 10**6))
def test_large_hole_centre_is_its_rim_whatever_the_ice_across_it(x, y, d, dim, turn, seed):
    # Ice thickening across the hole (a wedge) dims one side, down to just above the film: the bright pixels'
    # centroid was pulled to the bright side (held-out single-hole view 11004002: 45 px of 557), the circle
    # through the rim is not.
    img, cx, cy, r = wedge_hole(x, y, d, dim, turn, seed)
    found = large_holes(img)
    assert len(found) == 1
    assert math.hypot(found[0].x - cx, found[0].y - cy) < 1.0
    assert found[0].diameter_px == pytest.approx(2 * r, rel=0.01)


def test_bright_pixels_alone_miss_a_dimmed_hole_centre():
    # what the rim fit mends: the centroid of the pixels above the hole / film midpoint, 22 px off here
    from ptolemy_rt.views import _refine_centre

    img, cx, cy, r = wedge_hole(0.5, 0.5, 0.55, 0.95, 1.0, 1)
    first = _refine_centre(img, cx, cy, 2 * r)
    assert math.hypot(first[0] - cx, first[1] - cy) > 10.0
    assert math.hypot(large_holes(img)[0].x - cx, large_holes(img)[0].y - cy) < 1.0


def test_views_ignore_ordinary_images():
    shape = (600, 800)
    a, b = basis("square", 60.0, 20.0)
    img = discs(shape, lattice(shape, a, b, (400.3, 301.7), margin=60.0), 15.0)
    assert large_holes(img) == [] and atlas_reason(img) is None
    # a big bright square is not a hole
    sq = np.full((600, 800), 100.0, np.float32)
    sq[150:450, 250:550] = 200.0
    assert large_holes(sq) == []
    assert large_holes(np.zeros((300, 300), np.float32)) == []


def test_cli_keep_off_film(tiny, tmp_path):
    from ptolemy_rt.cli import main
    from ptolemy_rt.demo import write_mrc

    img, _, _ = bar_image()
    path = tmp_path / "bar.mrc"
    write_mrc(path, img)
    outs = {}
    for name, extra in [("default", []), ("all", ["--keep-off-film"])]:
        out = tmp_path / f"{name}.json"
        assert main(["holes", str(path), "--models", str(tiny.directory), "-o", str(out), *extra]) == 0
        outs[name] = json.loads(out.read_text())
    assert all(t["on_film"] for t in outs["default"]["targets"])
    assert any(not t["on_film"] for t in outs["all"]["targets"])
    assert outs["all"]["lattice"]["kind"] == "square"


def test_finite_float32_copies_only_to_clean():
    from ptolemy_rt.views import finite_float32

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert finite_float32(x) is x
    y = x.copy()
    y[1, 2], y[0, 0], y[2, 3] = np.nan, np.inf, -np.inf
    out = finite_float32(y)
    assert out is not y and np.isnan(y[1, 2])  # the input is left as it was
    assert np.isfinite(out).all() and out[1, 2] == 0 and out[0, 0] == 0 and out[2, 3] == 0
    assert np.array_equal(out[np.isfinite(y)], y[np.isfinite(y)])
    assert finite_float32(x.astype(np.uint16)).dtype == np.float32


@pytest.mark.parametrize("turn, seed", [(1.2, 0), (2.5, 1), (4.0, 2), (5.5, 3)])
def test_a_hole_half_darker_than_its_film_is_found_by_its_rim(turn, seed):
    # Ice thickening across a hole can leave part of it darker than the film (tuning single-hole views
    # 12304004 and 9804007): the bright split holds only the hole's brighter half, too small and not round,
    # and the view got no target. Its rim still shows all round (a defocus fringe: bright inside the edge,
    # dark outside), and the enclosing circle of that half is the hole's.
    img, cx, cy, r = wedge_hole(0.5, 0.5, 0.5, 1.6, turn, seed)
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy) - r
    img += (30.0 * ((d > -4) & (d <= 0)) - 20.0 * ((d > 0) & (d < 4))).astype(np.float32)
    found = large_holes(img)
    assert len(found) == 1
    assert math.hypot(found[0].x - cx, found[0].y - cy) < 2.0
    assert found[0].diameter_px == pytest.approx(2 * r, rel=0.02)


def test_a_bright_ellipse_or_square_is_no_dim_hole():
    # the rim's second look wants a circle: a tear (an ellipse of aspect 1.3) or a square region of film
    # between bars (not traced: it fills its min-area rectangle), each too little round for the first look,
    # stays no hole
    shape = (700, 900)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    rng = np.random.default_rng(0)
    ellipse = np.where(np.hypot((xx - 450) / 1.3, yy - 350) < 170, 220.0, 100.0)
    square = np.where((np.abs(xx - 450) < 170) & (np.abs(yy - 350) < 170), 220.0, 100.0)
    for img in (ellipse, square):
        assert large_holes((img + rng.normal(0, 4.0, shape)).astype(np.float32)) == []


def test_a_dim_hole_without_fringes_is_found_by_its_rim_on_both_sides():
    # no defocus fringe: the rim falls from the bright part to the film and rises from the dim part to it
    # (tuning view 12304004); traced only falling, its fit was misplaced by 11-16 px
    for turn, seed in [(1.2, 0), (4.0, 2)]:
        img, cx, cy, r = wedge_hole(0.5, 0.5, 0.5, 1.6, turn, seed)
        found = large_holes(img)
        assert len(found) == 1
        assert math.hypot(found[0].x - cx, found[0].y - cy) < 2.0
        assert found[0].diameter_px == pytest.approx(2 * r, rel=0.02)


def test_a_hole_dimmer_than_a_neighbour_cut_by_the_edge_is_found():
    # holes differ in brightness (each its own ice): a bright neighbour cut by the edge set the bright/dark
    # split and the hole in view went dark with the film (held-out single-hole view 13604003); the split of
    # the dark part finds it
    shape = (700, 900)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    img = np.full(shape, 60.0, np.float32)
    img[np.hypot(xx - 470, yy - 350) <= 150] = 110.0
    img[np.hypot(xx + 20, yy - 330) <= 230] = 230.0  # the bright neighbour, cut by the left edge
    img[np.hypot(xx - 900, yy - 700) <= 200] = 35.0  # a dark one (thick ice) in the corner
    noisy = (img + np.random.default_rng(0).normal(0, 4.0, shape)).astype(np.float32)
    found = large_holes(noisy)
    assert len(found) == 1
    assert math.hypot(found[0].x - 470, found[0].y - 350) < 2.0
    assert found[0].diameter_px == pytest.approx(300, rel=0.02)


@pytest.mark.parametrize("case", ["half disc", "three-quarter disc", "bar 0.25", "bar 0.4", "bar 0.5"])
def test_a_disc_segment_or_a_disc_under_a_wide_bar_is_no_dim_hole(case):
    # a bright disc segment with no rim on its dark side (the film's level there) or a disc a bar hides a
    # quarter to a half of (140 px wide, black): the rim is traced on 0.54-0.78 of the rays, never rising
    # to the film, so no circle is its hole's (the whole-round or both-sides evidence _dim_hole wants)
    shape = (700, 900)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    cx, cy, r = 450, 350, 190
    disc = np.hypot(xx - cx, yy - cy) <= r
    if case.startswith("bar"):
        edge = cx + r - 2 * r * float(case.split()[1])
        img = np.where(disc, 220.0, 100.0)
        img[(xx > edge) & (xx < edge + 140)] = 3.0
    else:
        img = np.where(disc & (xx < cx - r + 2 * r * (0.5 if case == "half disc" else 0.75)), 220.0, 100.0)
    noisy = (img + np.random.default_rng(0).normal(0, 4.0, shape)).astype(np.float32)
    assert large_holes(noisy) == []


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cells=st.integers(1, 30), slack=st.floats(0.0, 3.0))
def test_a_region_left_unmeasured_is_one_dim_hole_would_refuse_on_its_size(seed: int, cells: int, slack: float):
    # large_holes skips _shape where the bounding box rules out an enclosing circle min_d across (_may_span):
    # _dim_hole's first test must refuse every such region, whatever its shape
    from ptolemy_rt.views import _may_span, _regions, _shape

    rng = np.random.default_rng(seed)
    bright = np.zeros((48, 48), dtype=bool)
    for _ in range(cells):
        y, x = rng.integers(2, 44, size=2)
        h, w = rng.integers(1, 5, size=2)
        bright[y : y + h, x : x + w] = True
    labels, stats, cents, inside = _regions(bright, 1.0, largest=1000)
    for i in inside:
        radius = _shape(labels, stats, cents, i).radius
        diag = math.hypot(float(stats[i, 2]), float(stats[i, 3]))
        for min_d in (diag + 1.0 + 1e-9, diag + 1.0 + slack, 2.0 * radius + slack):
            if not _may_span(stats, i, min_d):
                assert 2.0 * radius < min_d
