"""The low-mag pipeline: geometry helpers, crops, parity with the original, metamorphic and robustness checks."""

from __future__ import annotations

import json
import math

import cv2
import hypothesis
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt import crops, squares
from ptolemy_rt.crops import fit_to_canvas, sample_rotated_crop
from ptolemy_rt.errors import TooSmallError
from ptolemy_rt.io import read_image

from .conftest import examples

# The parity tests run the original's pipeline (the default adds mesh, disc and lattice: test_squares_mesh.py).
COMPAT = squares.SquareOptions.ptolemy()

# ------------------------------------------------------------------------------------------------ helpers


def rectangle(cx: float, cy: float, w: float, h: float, theta_deg: float) -> np.ndarray:
    """Corners (4, 2) of a w x h rectangle whose w-side runs along (cos theta, sin theta) in (x, y)."""
    t = math.radians(theta_deg)
    u = np.array([math.cos(t), math.sin(t)]) * w / 2
    v = np.array([-math.sin(t), math.cos(t)]) * h / 2
    c = np.array([cx, cy])
    return np.array([c - u - v, c - u + v, c + u + v, c + u - v])


def lattice_image(shape, angle_ccw_deg: float, pitch: float = 150.0, side: float = 95.0, seed: int = 0):
    """A synthetic atlas: squares on a lattice at `angle_ccw_deg` (counter-clockwise on screen), Poisson counts.
    Returns the int16 image and the corners of the squares wholly inside it."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    a = math.radians(angle_ccw_deg)
    u = np.array([math.cos(a), -math.sin(a)])
    v = np.array([math.sin(a), math.cos(a)])
    lam = np.full(shape, 8.0, np.float32)
    canvas = np.zeros(shape, np.uint8)
    inside = []
    n = int(max(rows, cols) / pitch) + 3
    origin = np.array([cols / 2 + 17.3, rows / 2 - 9.1])
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            c = origin + pitch * (i * u + j * v)
            corners = np.array([c + side / 2 * (s1 * u + s2 * v) for s1, s2 in ((-1, -1), (-1, 1), (1, 1), (1, -1))])
            x, y = corners[:, 0], corners[:, 1]
            if np.all((x > 2) & (x < cols - 3) & (y > 2) & (y < rows - 3)):
                inside.append(corners)
            cv2.fillPoly(canvas, [np.round(corners * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    lam[canvas > 0] = 140.0
    return rng.poisson(lam).astype(np.int16), np.array(inside)


def match(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest b for every a, and the distances."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    j = d.argmin(axis=1)
    return j, d[np.arange(len(a)), j]


def set_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Largest distance from a point of one set to the nearest of the other (Hausdorff)."""
    d = np.linalg.norm(p[:, None, :] - q[None, :, :], axis=2)
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def centres(result) -> np.ndarray:
    return np.array([[s.x, s.y] for s in result.squares])


def verts(result) -> np.ndarray:
    return np.array([s.vertices for s in result.squares])


def angle_diff(a: float, b: float) -> float:
    d = (a - b) % 90.0
    return min(d, 90.0 - d)


# ------------------------------------------------------------------------------------------------ geometry


@settings(max_examples=60, deadline=None)
@given(
    cx=st.floats(-50, 3000),
    cy=st.floats(-50, 3000),
    w=st.floats(5, 400),
    h=st.floats(5, 400),
    theta=st.floats(0, 89.999),
    extra=st.integers(0, 6),
    seed=st.integers(0, 1000),
)
def test_rectangle_vertices_property(cx, cy, w, h, theta, extra, seed):
    rect = rectangle(cx, cy, w, h, theta)
    # Points inside the rectangle do not change its theta-aligned bounding box.
    rng = np.random.default_rng(seed)
    t = rng.random((extra, 2))
    inner = rect[0] + t[:, :1] * (rect[3] - rect[0]) + t[:, 1:] * (rect[1] - rect[0])
    hull = np.concatenate([rect, inner])
    boxes = squares.boxes_at_angle([hull], theta)
    assert boxes.areas[0] == pytest.approx(w * h, rel=1e-9)
    assert np.allclose(boxes.vertices[0], rect, atol=1e-6)  # same corners, in the original's order
    assert np.allclose(boxes.centers[0], [cx, cy], atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(theta=st.floats(0, 89.99), seed=st.integers(0, 10_000), n=st.integers(1, 12))
def test_grid_angle_finds_the_rotation_of_rectangles(theta, seed, n):
    rng = np.random.default_rng(seed)
    hulls = []
    for _ in range(n):
        side = rng.uniform(30, 120)
        hulls.append(rectangle(*rng.uniform(0, 2000, 2), side, side * rng.uniform(0.8, 1.25), theta))
    found = squares.grid_angle(hulls)
    assert 0.0 <= found < 90.0
    assert angle_diff(found, theta) < 1e-3
    assert 0.0 <= squares.angle_ccw(found) < 90.0 and angle_diff(squares.angle_ccw(found), -found) < 1e-9


def test_summed_box_area_has_period_90():
    rng = np.random.default_rng(0)
    hulls = [rng.uniform(0, 100, (7, 2)) for _ in range(5)]
    pts, starts = squares._pack(hulls)
    a = rng.uniform(0, 90, 20)
    assert np.allclose(squares.summed_box_area(pts, starts, a), squares.summed_box_area(pts, starts, a + 90))
    assert np.allclose(squares.summed_box_area(pts, starts, a), squares.summed_box_area(pts, starts, a - 90))


# ------------------------------------------------------------------------------------------------ crops


def test_crop_at_angle_zero_and_ninety_is_a_slice():
    rng = np.random.default_rng(1)
    img = rng.random((60, 80)).astype(np.float32)
    crop = sample_rotated_crop(img, (40.0, 25.0), 0.0, 11, 7)  # x 35..45, y 22..28
    assert np.allclose(crop, img[22:29, 35:46], atol=1e-5)
    # A rectangle turned 90 deg counter-clockwise on screen: its width side runs up the image, so the
    # upright crop is the slice turned clockwise.
    crop90 = sample_rotated_crop(img, (40.0, 25.0), 90.0, 7, 11)
    assert np.allclose(crop90, np.rot90(img[22:29, 35:46], -1), atol=1e-5)


def test_crop_outside_is_zero_and_edges_are_not_darkened():
    img = np.full((40, 40), 100.0, np.float32)
    crop = sample_rotated_crop(img, (0.0, 20.0), 0.0, 9, 5)  # x -4..4
    assert np.all(crop[:, :4] == 0)
    assert np.allclose(crop[:, 4:], 100.0, atol=1e-3)  # the original's spline kept edge pixels intact


def test_fit_to_canvas_rules():
    small = np.ones((5, 6), np.float32)
    out = fit_to_canvas(small, 10)
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    assert (rows[0], rows[-1]) == (3, 7)  # 5 odd padding rows: 3 before, 2 after
    assert (cols[0], cols[-1]) == (2, 7)
    big = np.arange(14 * 3, dtype=np.float32).reshape(14, 3)
    out = fit_to_canvas(big, 10)
    assert np.array_equal(out[:, 4:7], big[2:12])  # rows 7 - 5 .. 7 + 5


# ------------------------------------------------------------------------------------------------ the example


@pytest.fixture(scope="module")
def example(lowmag_path):
    return read_image(lowmag_path)


@pytest.fixture(scope="module")
def reference(reference_dir):
    return json.loads((reference_dir / "reference-outputs" / "lowmag_20may08a_16760340.json").read_text())


@pytest.fixture(scope="module")
def geometry(example):
    return squares.find_squares(example, models=False, options=COMPAT)


def test_geometry_parity(geometry, reference):
    """Our coordinates have the origin at the centre of the top-left pixel; the original's at its corner."""
    assert geometry.reason is None and len(geometry.squares) == len(reference) == 48
    ref_vertices = np.array([r["vertices"] for r in reference])
    ref_centres = np.array([r["center"] for r in reference], dtype=float)
    ours = verts(geometry) + 0.5
    j, d = match(ref_centres, ours.mean(axis=1))
    assert len(set(j.tolist())) == 48 and d.max() <= 2.0  # reference centres are int()-truncated
    assert np.abs(ours[j] - ref_vertices).max() < 1e-3  # same corners in the same order
    for r, k in zip(reference, j):
        s = geometry.squares[k]
        assert s.area == pytest.approx(r["area"], rel=1e-6)
        assert s.brightness == pytest.approx(r["brightness"], rel=1e-9)
        assert s.score is None and s.scores == {}
    assert geometry.angle_deg == pytest.approx(45.0, abs=1e-3)
    assert set(geometry.timings) >= {"read", "mixture", "regions", "angle", "total"}


def test_default_pipeline_finds_every_square_the_original_finds(example, reference):
    """The mesh-driven default with the shipped models: the original's 48 squares (edge squares included)."""
    result = squares.find_squares(example)
    assert result.reason is None and result.mesh is not None
    ref_c = np.array([r["center"] for r in reference], dtype=float)
    j, d = match(ref_c, centres(result) + 0.5)
    assert len(set(j.tolist())) == 48 and d.max() <= 2.0
    assert all(result.squares[k].found_by == "mixture" and result.squares[k].row is not None for k in j)
    assert all(s.score is not None for s in result.squares)


def test_compat_output_within_tolerance(geometry, reference):
    from ptolemy_rt.results import format_result

    compat = json.loads(format_result(geometry, "json", compat=True))
    got_c = np.array([r["center"] for r in compat], dtype=float)
    ref_c = np.array([r["center"] for r in reference], dtype=float)
    j, d = match(ref_c, got_c)
    assert len(set(j.tolist())) == 48 and d.max() <= 2.0
    for r, k in zip(reference, j):
        assert list(compat[k]) == ["vertices", "center", "area", "brightness", "score"]
        assert np.abs(np.array(compat[k]["vertices"]) - np.array(r["vertices"])).max() <= 2.0


def test_score_parity(example, reference, converted_models):
    from scipy.stats import spearmanr

    from ptolemy_rt.models import load_models

    result = squares.find_squares(example, models=load_models(converted_models, provider="cpu"), options=COMPAT)
    assert len(result.squares) == 48 and result.reason is None
    j, d = match(np.array([r["center"] for r in reference], float), verts(result).mean(axis=1) + 0.5)
    assert len(set(j.tolist())) == 48 and d.max() <= 2.0
    ref_scores = np.array([r["score"] for r in reference])
    ours = np.array([result.squares[k].score for k in j])
    assert np.abs(ours - ref_scores).max() < 0.01
    assert spearmanr(ours, ref_scores).statistic >= 0.99
    assert all(s.scores == {"cnn": s.score} for s in result.squares)
    assert list(result.squares) == sorted(result.squares, key=lambda s: -s.score)
    assert {"crops", "cnn"} <= set(result.timings)
    assert result.models["square_cnn"]["sha256"]


# ------------------------------------------------------------------------------------------------ metamorphic

W = H = 1024
TRANSFORMS = {
    # name: (array op, point map (x, y) -> (x', y'), angle map)
    "rot90": (lambda a: np.rot90(a, 1), lambda x, y: (y, W - 1 - x), lambda t: t),
    "rot180": (lambda a: np.rot90(a, 2), lambda x, y: (W - 1 - x, H - 1 - y), lambda t: t),
    "rot270": (lambda a: np.rot90(a, 3), lambda x, y: (H - 1 - y, x), lambda t: t),
    "fliplr": (np.fliplr, lambda x, y: (W - 1 - x, y), lambda t: -t),
    "flipud": (np.flipud, lambda x, y: (x, H - 1 - y), lambda t: -t),
    "transpose": (np.transpose, lambda x, y: (y, x), lambda t: -t),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_metamorphic_rotations_and_flips(example, geometry, name):
    op, pmap, amap = TRANSFORMS[name]
    result = squares.find_squares(np.ascontiguousarray(op(example.data)), models=False, options=COMPAT)
    assert len(result.squares) == len(geometry.squares)
    v = verts(geometry)
    expected_v = np.stack(pmap(v[..., 0], v[..., 1]), axis=-1)
    expected_c = expected_v.mean(axis=1)
    j, d = match(expected_c, centres(result))
    assert len(set(j.tolist())) == len(j) and d.max() <= 2.0
    got_v = verts(result)
    assert max(set_distance(expected_v[i], got_v[k]) for i, k in enumerate(j)) <= 3.0
    assert angle_diff(result.angle_deg, amap(geometry.angle_deg)) <= 0.5


@pytest.mark.parametrize("shape", [(1024, 700), (700, 1024)])
def test_metamorphic_crops(example, geometry, shape):
    rows, cols = shape
    result = squares.find_squares(example.data[:rows, :cols], models=False, options=COMPAT)
    v = verts(geometry)
    margin = 2.0
    x, y = v[..., 0], v[..., 1]
    inside = np.all((x > margin) & (x < cols - 1 - margin) & (y > margin) & (y < rows - 1 - margin), axis=1)
    assert inside.sum() >= 20
    j, d = match(v[inside].mean(axis=1), centres(result))
    assert len(set(j.tolist())) == len(j) and d.max() <= 2.0
    got_v = verts(result)
    assert max(set_distance(v[inside][i], got_v[k]) for i, k in enumerate(j)) <= 3.0
    assert angle_diff(result.angle_deg, geometry.angle_deg) <= 0.5


def test_crops_are_centred_on_non_square_images(example):
    """The original rotated about the shorter side's centre and misplaced crops on non-square images."""
    from ptolemy_rt import mixture, regions

    for data in (example.data[:, :600], example.data[:700, :]):
        seg = mixture.segment(data, "int16")
        reg = regions.find_regions(seg.mask)
        theta = squares.grid_angle(reg.hulls)
        crops = squares.square_crops(data, reg.hulls, theta, 0.0, 1.0)
        boxes = squares.boxes_at_angle(reg.hulls, theta)
        rows, cols = data.shape
        v = boxes.vertices
        inside = (v.min(axis=(1, 2)) > 0) & (v[..., 0].max(axis=1) < cols - 1) & (v[..., 1].max(axis=1) < rows - 1)
        whole = np.flatnonzero(inside)
        assert len(whole) >= 10
        for i in whole:
            bright = crops[i, 0] > 60  # square pixels (bars and padding are far darker)
            rr, cc = np.nonzero(bright)
            assert abs(rr.mean() - 119.5) < 4 and abs(cc.mean() - 119.5) < 4


@examples(8, settings(max_examples=25, deadline=None),
          given(seed=st.integers(0, 10_000), theta=st.floats(0, 89.9), batch=st.integers(1, 5)))
def test_square_crops_into_a_reused_buffer_equal_fresh_ones(seed, theta, batch):
    """Batches cropped into one buffer, each resetting only what the last crop in its slot wrote, equal fresh
    arrays to the bit (large and small squares, squares cut by the image edge)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 20.0, (300, 340)).astype(np.float32)
    hulls = [rectangle(float(rng.uniform(-20, 360)), float(rng.uniform(-20, 320)), float(rng.uniform(3, 260)),
                       float(rng.uniform(3, 260)), theta) for _ in range(11)]
    buffer = np.full((batch, 1, 240, 240), np.nan, dtype=np.float32)
    written: list = []
    for a in range(0, len(hulls), batch):
        part = hulls[a : a + batch]
        want = squares.square_crops(img, part, theta, 90.0, 15.0)
        got = squares.square_crops(img, part, theta, 90.0, 15.0, out=buffer, written=written)
        np.testing.assert_array_equal(got, want)
        assert got.base is buffer or got is buffer


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(5, 70), cols=st.integers(5, 70), factor=st.integers(1, 5), seed=st.integers(0, 1000))
def test_reduce_image_is_the_block_mean(rows, cols, factor, seed):
    """Reduced pixel (i, j) is the mean of input block (f i.., f j..); a last partial block is dropped."""
    from ptolemy_rt.crops import reduce_image

    img = np.random.default_rng(seed).normal(100.0, 30.0, (rows, cols)).astype(np.float32)
    got = reduce_image(img, factor)
    h, w = rows // factor, cols // factor
    assert got.shape == (h, w) and got.dtype == np.float32
    want = img[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3), dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("shape", [(3, 1000), (1000, 3), (1, 1)])
def test_reduce_image_refuses_an_axis_shorter_than_the_factor(shape):
    """No whole block on an axis: an error naming the shape, not a silent array of zeros."""
    from ptolemy_rt.crops import reduce_image

    with pytest.raises(ValueError, match=f"{shape[0]}x{shape[1]}"):
        reduce_image(np.ones(shape, np.float32), 4)
    assert reduce_image(np.ones(shape, np.float32), 1).shape == shape


def test_square_crop_scale_falls_back_to_the_model_factor_on_a_bad_angle_or_empty_hulls():
    """A non-finite angle gives the model's factor (no ValueError from floor); hulls without points are left
    out of the median (no IndexError), and only empty ones give the model's factor."""
    from ptolemy_rt.crops import square_crop_scale

    hulls = [rectangle(100.0 * k, 50.0, 40.0, 40.0, 10.0) for k in range(3)]
    want = square_crop_scale(hulls, 10.0, 4, 16)
    assert want == 2
    empty = np.zeros((0, 2), np.float64)
    for theta in (math.nan, math.inf, -math.inf):
        assert square_crop_scale(hulls, theta, 4, 16) == 4
    assert square_crop_scale([empty, *hulls, empty], 10.0, 4, 16) == want
    assert square_crop_scale([empty, empty], 10.0, 4, 16) == 4
    nan_hull = np.full((4, 2), np.nan)
    assert square_crop_scale([nan_hull], 10.0, 4, 16) == 4


@given(side=st.floats(4.0, 400.0), theta=st.floats(0, 89.9), min_side=st.integers(4, 30))
def test_square_crop_scale_keeps_the_median_square_at_least_min_side_across(side, theta, min_side):
    """The factor is the largest whole one up to the model's that leaves the median square >= min_side crop px
    (1 when even the full resolution cannot); without min_side it is the model's."""
    from ptolemy_rt.crops import square_crop_scale

    hulls = [rectangle(100.0 * k, 50.0, side * f, side / f, theta) for k, f in enumerate((0.9, 1.0, 1.1))]
    assert square_crop_scale(hulls, theta, 4, None) == 4
    f = square_crop_scale(hulls, theta, 4, min_side)
    assert 1 <= f <= 4
    median = side  # the boxes' sqrt(area)
    assert f == 1 or median / f >= min_side - 1e-6
    assert f == 4 or median / (f + 1) < min_side + 1e-6


@pytest.mark.parametrize("factor", [2, 4])
def test_reduced_square_crops_at_zero_angle_are_slices_of_the_reduced_image(factor):
    """At theta 0 the rotated frame is the reduced image itself: a box's crop is its reduced pixels, normalised,
    centred in the canvas, padding (0 - mean) / std around it."""
    from ptolemy_rt.crops import reduce_image

    rng = np.random.default_rng(factor)
    img = rng.normal(100.0, 20.0, (400, 480)).astype(np.float32)
    # A box over input columns 80..199, rows 40..119: reduced columns 80/f .. 200/f - 1.
    hull = np.array([[80.0, 40.0], [199.0, 40.0], [199.0, 119.0], [80.0, 119.0]])
    size = 240 // factor
    crop = squares.square_crops(img, [hull], 0.0, 90.0, 15.0, size=size, scale=factor)[0, 0]
    small = (reduce_image(img, factor) - np.float32(90.0)) * np.float32(1 / 15.0)
    rows, cols = np.nonzero(crop != crop[0, 0])
    patch = crop[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # Find the patch in the reduced image: it must be one contiguous slice of it.
    r0, c0 = 40 // factor, 80 // factor
    window = small[r0 - 1 : r0 + patch.shape[0] + 1, c0 - 1 : c0 + patch.shape[1] + 1]
    hits = [(dr, dc) for dr in range(3) for dc in range(3)
            if window[dr : dr + patch.shape[0], dc : dc + patch.shape[1]].shape == patch.shape
            and np.allclose(window[dr : dr + patch.shape[0], dc : dc + patch.shape[1]], patch, atol=1e-4)]
    assert hits, "the crop is not a slice of the reduced image"
    assert abs(patch.shape[0] - 80 / factor) <= 1 and abs(patch.shape[1] - 120 / factor) <= 1
    assert crop[0, 0] == np.float32(-np.float32(90.0) * np.float32(1 / 15.0))
    # Centred: the patch's centre is the canvas's within a pixel.
    assert abs((rows.min() + rows.max()) / 2 - (size - 1) / 2) <= 1
    assert abs((cols.min() + cols.max()) / 2 - (size - 1) / 2) <= 1


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), theta=st.floats(0, 89.9))
def test_reduced_square_crops_are_the_full_crops_averaged(seed, theta):
    """square_crops at scale 4 shows what the 240x240 crop shows, averaged over 4x4 blocks: the same boxes at the
    same places (within the sub-pixel shifts of the reduced lattice), at any angle."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(100.0, 40.0, (420, 460)).astype(np.float32), (0, 0), 6.0)
    # Boxes of 60 px and more: a box's int() bounds at either scale may differ by a reduced pixel at each edge,
    # which in a 5 px wide crop is most of it.
    hulls = [rectangle(float(rng.uniform(60, 400)), float(rng.uniform(60, 360)), float(rng.uniform(60, 200)),
                       float(rng.uniform(60, 200)), theta) for _ in range(6)]
    full = squares.square_crops(img, hulls, theta, 100.0, 10.0)
    pooled = full.reshape(-1, 1, 60, 4, 60, 4).mean(axis=(3, 5))
    small = squares.square_crops(img, hulls, theta, 100.0, 10.0, size=60, scale=4)
    assert small.shape == (6, 1, 60, 60)
    for a, b in zip(pooled[:, 0], small[:, 0]):
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert corr > 0.9, corr


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), theta=st.floats(0, 89.9), batch=st.integers(1, 5))
def test_reduced_square_crops_into_a_reused_buffer_equal_fresh_ones(seed, theta, batch):
    """The runtime's batches (one rotated reduced image, crops cut into one buffer) equal square_crops'."""
    from ptolemy_rt.crops import reduced_frame, reduced_square_crops, square_crop_scale, square_crop_source

    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 20.0, (300, 340)).astype(np.float32)
    hulls = [rectangle(float(rng.uniform(-20, 360)), float(rng.uniform(-20, 320)), float(rng.uniform(3, 260)),
                       float(rng.uniform(3, 260)), theta) for _ in range(11)]
    want = squares.square_crops(img, hulls, theta, 90.0, 15.0, size=60, scale=4, min_side=16)
    reduced = square_crop_source(img, hulls, theta, 90.0, 15.0, size=60, scale=4, min_side=16)
    assert reduced is not None
    by_hand = reduced_frame(img, hulls, theta, 90.0, 15.0, square_crop_scale(hulls, theta, 4, 16), 60)
    np.testing.assert_array_equal(reduced.image, by_hand.image)
    assert square_crop_source(img, hulls, theta, 90.0, 15.0, size=60, scale=1, min_side=None) is None
    buffer = np.full((batch, 1, 60, 60), np.nan, dtype=np.float32)
    for a in range(0, len(hulls), batch):
        got = reduced_square_crops(reduced, hulls[a : a + batch], size=60, out=buffer)
        np.testing.assert_array_equal(got, want[a : a + batch])
        assert got.base is buffer or got is buffer
        # The batch's boxes read from the frame's (as the pipeline does) instead of computed: the same crops.
        kept = reduced_square_crops(reduced, hulls[a : a + batch], size=60, out=buffer.copy(), first=a)
        assert kept.tobytes() == got.tobytes()
    assert reduced.windows is not None and len(reduced.windows) == len(hulls)
    np.testing.assert_array_equal(reduced.windows[3:7], crops._reduced_windows(reduced.frame, hulls[3:7],
                                                                                 reduced.factor, 60))


# ------------------------------------------------------------------------------------------------ robustness


@pytest.mark.parametrize("angle", [0.0, 17.0, 62.5])
def test_synthetic_lattice_non_square(angle):
    img, truth = lattice_image((600, 900), angle, seed=int(angle))
    result = squares.find_squares(img, models=False)
    assert result.reason is None
    assert angle_diff(result.angle_deg, angle) < 0.5
    j, d = match(truth.mean(axis=1), centres(result))
    assert len(truth) >= 8 and d.max() <= 1.5
    got_v = verts(result)
    assert max(set_distance(truth[i], got_v[k]) for i, k in enumerate(j)) <= 2.5


def test_dtypes_and_stacks(example, geometry):
    data = example.data
    ref_c = centres(geometry)
    cases = {
        "uint16": data.astype(np.uint16),
        "int16": data.astype(np.int16),
        "float32 [0, 1]": (data / np.float32(243.0)).astype(np.float32),
        "stack section 1": np.stack([np.zeros_like(data), data]).astype(np.int16),
        "negative offset": (data - np.float32(20.5)).astype(np.float32),  # bars go below 0 and are clipped
    }
    for name, arr in cases.items():
        result = squares.find_squares(arr, models=False, section=1 if arr.ndim == 3 else None, options=COMPAT)
        assert result.reason is None, name
        j, d = match(ref_c, centres(result))
        assert len(result.squares) == 48 and d.max() <= 2.0, name


def test_large_non_square_image():
    """Over 2048 px per side (the original failed there), non-square."""
    img, truth = lattice_image((2100, 3000), 33.0, pitch=180, side=120, seed=5)
    result = squares.find_squares(img, models=False)
    j, d = match(truth.mean(axis=1), centres(result))
    assert len(truth) > 100 and d.max() <= 1.5
    assert angle_diff(result.angle_deg, 33.0) < 0.5


def test_too_small_raises():
    with pytest.raises(TooSmallError):
        squares.find_squares(np.zeros((255, 400), np.float32), models=False)
    result = squares.find_squares(np.zeros((256, 256), np.float32), models=False)
    assert result.squares == () and result.reason


@pytest.mark.parametrize(
    "data, words",
    [
        (np.zeros((300, 300), np.float32), "constant"),
        (np.full((300, 300), 1234.5, np.float32), "constant"),
        (np.random.default_rng(0).poisson(80, (300, 300)).astype(np.uint16), "one-class"),
        (np.random.default_rng(1).random((300, 300)).astype(np.float32), "one-class"),
    ],
)
def test_blank_images_give_an_empty_result_with_a_reason(data, words):
    result = squares.find_squares(data, models=False, options=COMPAT)
    assert result.squares == () and result.angle_deg is None
    assert words in result.reason
    json.dumps(result.to_dict(), allow_nan=False)
    # The default pipeline stops earlier: no grid mesh.
    result = squares.find_squares(data, models=False)
    assert result.squares == () and result.angle_deg is None and result.mesh is None
    assert "no grid mesh" in result.reason
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["mesh"] is None


def test_no_region_above_min_area():
    img = np.full((300, 300), 5, np.int16)
    img[100:105, 100:105] = 200  # a 25 px² square
    result = squares.find_squares(img, models=False, options=COMPAT)
    assert result.squares == () and "100" in result.reason


def test_deterministic(example):
    a = squares.find_squares(example, models=False)
    b = squares.find_squares(example.data.copy(), models=False)
    assert json.dumps(a.to_dict()["targets"]) == json.dumps(b.to_dict()["targets"])
    assert a.angle_deg == b.angle_deg


@settings(max_examples=30, deadline=None)
@given(theta=st.floats(0, 89.99), seed=st.integers(0, 10_000), n=st.integers(1, 30), around=st.booleans())
@hypothesis.example(theta=26.3125, seed=707, n=1, around=False)
def test_grid_angle_scan_is_as_good_as_brent(theta, seed, n, around):
    # The default refinement (a scan and a golden-section search, no scipy) is as good as bounded Brent (the
    # compat path's): the same summed box area or less, to 1e-8, on irregular hulls.
    rng = np.random.default_rng(seed)
    hulls = []
    for _ in range(n):
        side = rng.uniform(30, 120)
        rect = rectangle(*rng.uniform(0, 2000, 2), side, side * rng.uniform(0.8, 1.25), theta)
        hulls.append(rect + rng.normal(0, 2.0, rect.shape))  # ragged, as mixture hulls are
    # up to 3.5 degrees off: then the minimum can lie outside the searched span, and both stop at its bound
    kw = {"around": (theta + rng.uniform(-3.5, 3.5)) % 90.0} if around else {}
    scan = squares.grid_angle(hulls, **kw)
    brent = squares.grid_angle(hulls, method="brent", **kw)
    pts, starts = squares._pack(hulls)
    a_scan, a_brent = squares.summed_box_area(pts, starts, [scan, brent])
    # Both stop within xatol (1e-5 degrees) of a minimum, where the area is flat to about 1e-7 relative (found
    # by hypothesis: theta 12, seed 5394, one hull, 1.8e-8 apart). A ragged hull's area also has local minima a
    # fraction of the fine scan's step apart whose values differ by ~1e-5 relative (theta 26.3125, seed 707, one
    # hull: 1.2e-5), and either search may settle in either; the wrong one-degree basin, what this test guards
    # against, costs 1e-3 or more.
    assert a_scan <= a_brent * (1 + 1e-4)


def test_grid_angle_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method"):
        squares.grid_angle([np.zeros((3, 2))], method="golden")


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 60), cols=st.integers(1, 60), block=st.integers(1, 400), seed=st.integers(0, 10_000))
def test_class_stats_in_blocks_are_the_whole_image_sums(rows, cols, block, seed):
    # Blocks of rows with the running sum carried over add the same numbers in the same order: the same bits as
    # one float64 cumsum over every selected pixel (what recorded --compat ptolemy crops were normalised with).
    rng = np.random.default_rng(seed)
    x = (rng.random((rows, cols), dtype=np.float32) * 3000).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    mask = (rng.random(x.shape) < 0.6).astype(np.uint8)
    sel = x[(mask != 0) & (x != 0.0)].astype(np.float64)
    if sel.size:
        mean = float(np.cumsum(sel)[-1]) / sel.size
        want = (mean, math.sqrt(float(np.cumsum((sel - mean) ** 2)[-1]) / sel.size))
    else:
        want = (0.0, 0.0)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(squares, "_STATS_BLOCK", block)
    try:
        assert squares.class_stats(x, mask) == want
    finally:
        monkey.undo()


@examples(12, settings(max_examples=40, deadline=None),
          given(seed=st.integers(0, 10_000), top=st.sampled_from([3, 255, 4095, 65535]), zeros=st.floats(0.0, 0.5),
                rows=st.integers(1, 700)))
def test_class_stats_of_whole_numbers_sum_to_the_same_bits(seed, top, zeros, rows):
    """The first pass over whole-number pixels sums in any order: the same mean and std to the bit as the
    pixel-order sums (several blocks of rows, zeros left out)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, top + 1, (rows, 3000)).astype(np.float32)
    img[rng.random(img.shape) < zeros] = 0.0
    mask = (rng.random(img.shape) < 0.6).astype(np.uint8)
    assert squares.class_stats(img, mask, integral=True) == squares.class_stats(img, mask)


def _plain_class_stats(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """class_stats as defined: both passes one float64 cumsum over the selected pixels in pixel order."""
    sel = x[(mask != 0) & (x != 0.0)].astype(np.float64)
    if not sel.size:
        return 0.0, 0.0
    mean = float(np.cumsum(sel)[-1]) / sel.size
    return mean, math.sqrt(float(np.cumsum((sel - mean) ** 2)[-1]) / sel.size)


@examples(30, settings(max_examples=120, deadline=None),
          given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 90), cols=st.integers(1, 90),
                block=st.integers(1, 3000),
                kind=st.sampled_from(["counts", "flattened", "wide", "tiny", "negative", "nan", "inf", "subnormal",
                                      "huge"]),
                threads=st.sampled_from([1, 2, 3]), keep=st.sampled_from([0, 4 << 20])))
def test_class_stats_is_the_pixel_order_sums_to_the_bit(seed, rows, cols, block, kind, threads, keep):
    """class_stats (first pass summed in any order where that is exact, else in order; blocks made on other
    threads) gives the plain pixel-order cumsum's mean and std to the bit, for pixels where the any-order sum is
    exact and where it is not, with any block size and thread count."""
    rng = np.random.default_rng(seed)
    x = {"counts": lambda: rng.integers(0, 65536, (rows, cols)),
         "flattened": lambda: rng.integers(50, 3000, (rows, cols)) / rng.uniform(0.7, 1.4),
         "wide": lambda: rng.uniform(1e-3, 1.0, (rows, cols)) * 10.0 ** rng.integers(-3, 9, (rows, cols)),
         "tiny": lambda: rng.uniform(1e-30, 1e-20, (rows, cols)),
         "negative": lambda: rng.normal(0, 500, (rows, cols)),
         "nan": lambda: np.where(rng.random((rows, cols)) < 0.05, np.nan, rng.uniform(1, 9, (rows, cols))),
         "inf": lambda: np.where(rng.random((rows, cols)) < 0.05, np.inf, rng.uniform(1, 9, (rows, cols))),
         "subnormal": lambda: rng.integers(1, 1000, (rows, cols)) * 1e-45,
         "huge": lambda: rng.uniform(1e30, 3e38, (rows, cols))}[kind]().astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    mask = (rng.random(x.shape) < 0.6).astype(np.uint8)
    want = _plain_class_stats(x, mask)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(squares, "_STATS_BLOCK", block)
    monkey.setattr(squares, "_KEEP_SELECTED", keep)  # selected once for both passes, or again in each
    monkey.setattr("ptolemy_rt._workers._cpus", lambda: threads)
    monkey.setattr("ptolemy_rt._workers.workers", lambda: threads)
    try:
        got = squares.class_stats(x, mask)
    finally:
        monkey.undo()
    assert np.array(got).tobytes() == np.array(want).tobytes()


def test_exact_sum_only_where_every_partial_sum_is_exact():
    """The any-order first pass is taken for flattened counts (multiples of 2**-17 summing to far less than
    2**36) and refused where a partial sum could round: a sum past 2**(52 + q), a negative, NaN or inf pixel."""
    rng = np.random.default_rng(3)
    x = (rng.integers(95, 1800, (300, 300)) / np.float32(1.37)).astype(np.float32)
    m = np.ones(x.shape, np.uint8)
    blocks = [(0, 100), (100, 300)]
    got = squares._exact_sum(x, m, blocks)
    assert got is not None and got == (float(np.cumsum(x.ravel().astype(np.float64))[-1]), x.size)
    small = x.copy()
    small[0, 0] = np.float32(2.0**-40)  # q = -63: the sum (~7e7) is far over 2**-11
    assert squares._exact_sum(small, m, blocks) is None
    for bad in (-1.0, np.nan, np.inf):
        y = x.copy()
        y[5, 5] = bad
        assert squares._exact_sum(y, m, blocks) is None
    # All zero or unselected: an empty sum.
    assert squares._exact_sum(np.zeros((4, 4), np.float32), m[:4, :4], [(0, 4)]) == (0.0, 0)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 40), cols=st.integers(1, 40), block=st.integers(1, 40),
       kind=st.sampled_from(["counts", "flattened", "tiny", "negative", "nan", "inf", "huge", "zeros"]),
       integral=st.booleans())
def test_exact_sum_of_selected_pixels_is_exact_sum(seed, rows, cols, block, kind, integral):
    """The first pass from pixels selected once gives _exact_sum's answer: the same sum and count, or None."""
    rng = np.random.default_rng(seed)
    x = {"counts": lambda: rng.integers(0, 65536, (rows, cols)),
         "flattened": lambda: rng.integers(50, 3000, (rows, cols)) / rng.uniform(0.7, 1.4),
         "tiny": lambda: rng.uniform(1e-30, 1e-20, (rows, cols)) * np.where(rng.random((rows, cols)) < 0.5, 1, 1e25),
         "negative": lambda: rng.normal(0, 500, (rows, cols)),
         "nan": lambda: np.where(rng.random((rows, cols)) < 0.1, np.nan, rng.uniform(1, 9, (rows, cols))),
         "inf": lambda: np.where(rng.random((rows, cols)) < 0.1, np.inf, rng.uniform(1, 9, (rows, cols))),
         "huge": lambda: rng.uniform(1e30, 3e38, (rows, cols)),
         "zeros": lambda: np.zeros((rows, cols))}[kind]().astype(np.float32)
    if integral and kind != "counts":
        return  # the caller vouches for whole numbers only where they are
    x[rng.random(x.shape) < 0.1] = 0.0
    m = (rng.random(x.shape) < 0.6).astype(np.uint8)
    blocks = [(r, min(r + block, rows)) for r in range(0, rows, block)]
    parts = [x[a:b][(m[a:b] != 0) & (x[a:b] != 0.0)] for a, b in blocks]
    want = squares._exact_sum(x, m, blocks, integral=integral)
    got = squares._exact_sum_of(parts, integral=integral)
    assert (got is None) == (want is None)
    if want is not None:
        assert np.float64(got[0]).tobytes() == np.float64(want[0]).tobytes() and got[1] == want[1]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 10_000), scored=st.booleans(),
       bdtype=st.sampled_from([np.float32, np.float64]))
def test_square_results_hold_each_arrays_values(n, seed, scored, bdtype):
    """_squares' bulk conversion (tolist) gives every field as float() of its array element did."""
    from ptolemy_rt.results import Square, sort_targets

    rng = np.random.default_rng(seed)
    vertices = rng.normal(500, 300, (n, 4, 2))
    boxes = squares.Boxes(12.5, vertices, vertices.mean(axis=1), rng.uniform(10, 1e4, n))
    brightness = rng.uniform(0, 3000, n).astype(bdtype)
    scores = rng.random(n).astype(np.float32) if scored else None
    if scored and n:
        scores[0] = np.nan
    rows = list(range(n))
    got = squares._squares(boxes, brightness, scores, row=rows)
    want = sort_targets(Square(x=float(boxes.centers[i, 0]), y=float(boxes.centers[i, 1]),
                               vertices=tuple((float(px), float(py)) for px, py in boxes.vertices[i]),
                               area=float(boxes.areas[i]), brightness=float(brightness[i]),
                               score=None if scores is None else float(scores[i]),
                               scores={} if scores is None else {"cnn": float(scores[i])}, row=rows[i])
                        for i in range(n))
    assert json.dumps([s.to_dict() for s in got]) == json.dumps([s.to_dict() for s in want])
    assert all(type(s.x) is float and type(s.vertices[0][0]) is float for s in got)


@examples(30, settings(max_examples=120, deadline=None),
          given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 90), cols=st.integers(1, 90),
                block=st.integers(1, 3000),
                kind=st.sampled_from(["counts", "flattened", "wide", "negative", "nan", "constant"]),
                threads=st.sampled_from([1, 2, 3]), bound=st.sampled_from([4.0, 1e12]),
                keep=st.sampled_from([0, 4 << 20])))
def test_crop_normalisation_is_class_stats_as_the_crops_take_it(seed, rows, cols, block, kind, threads, bound, keep):
    """crop_normalisation (second pass summed in any order where that cannot change float32(1 / std)) gives the
    crops what class_stats gives them: the same mean to the bit, the same float32 reciprocal of the std and its
    sign, the same padding value; with the bound made huge it takes the pixel-order sum: class_stats' std."""
    from ptolemy_rt.crops import _pad_value

    rng = np.random.default_rng(seed)
    x = {"counts": lambda: rng.integers(0, 65536, (rows, cols)),
         "flattened": lambda: rng.integers(50, 3000, (rows, cols)) / rng.uniform(0.7, 1.4),
         "wide": lambda: rng.uniform(1e-3, 1.0, (rows, cols)) * 10.0 ** rng.integers(-3, 9, (rows, cols)),
         "negative": lambda: rng.normal(0, 500, (rows, cols)),
         "nan": lambda: np.where(rng.random((rows, cols)) < 0.05, np.nan, rng.uniform(1, 9, (rows, cols))),
         "constant": lambda: np.full((rows, cols), 7.25)}[kind]().astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    mask = (rng.random(x.shape) < 0.6).astype(np.uint8)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(squares, "_STATS_BLOCK", block)
    monkey.setattr(squares, "_ORDER_BOUND", bound)
    monkey.setattr("ptolemy_rt._workers._cpus", lambda: threads)
    monkey.setattr("ptolemy_rt._workers.workers", lambda: threads)
    try:
        monkey.setattr(squares, "_KEEP_SELECTED", 0)
        mean, std = squares.class_stats(x, mask)
        monkey.setattr(squares, "_KEEP_SELECTED", keep)
        got_mean, got_std = squares.crop_normalisation(x, mask)
    finally:
        monkey.undo()
    assert np.float64(got_mean).tobytes() == np.float64(mean).tobytes()
    assert (got_std > 0) == (std > 0)
    inv = [np.float32(1.0 / s if s > 0 else 1.0) for s in (got_std, std)]
    assert inv[0].tobytes() == inv[1].tobytes()
    assert np.float64(_pad_value(got_mean, got_std)).tobytes() == np.float64(_pad_value(mean, std)).tobytes()
    if bound > 1e6:
        assert np.float64(got_std).tobytes() == np.float64(std).tobytes()


def test_crop_normalisation_on_the_montage_scale():
    """A large flattened montage's class (2048², 2.5 M pixels): the any-order second pass is taken (no pixel-order sum)
    and the crops' float32 values match class_stats'."""
    rng = np.random.default_rng(8)
    x = (rng.integers(95, 1800, (2048, 2048)) / np.float32(1.37)).astype(np.float32)
    mask = (rng.random(x.shape) < 0.6).astype(np.uint8)
    calls = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(squares, "_running_sum", lambda *a: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    try:
        got_mean, got_std = squares.crop_normalisation(x, mask)
    finally:
        monkey.undo()
    mean, std = squares.class_stats(x, mask)
    assert not calls and got_mean == mean
    assert np.float32(1.0 / got_std) == np.float32(1.0 / std) and abs(got_std / std - 1) < 1e-12


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 40), h=st.integers(20, 300), w=st.integers(20, 300))
def test_touches_edge_is_the_per_hull_test(seed, n, h, w):
    """_touches_edge over all hulls at once (reduceat) is the per-hull min/max test the lattice stage made."""
    rng = np.random.default_rng(seed)
    hulls = [rng.uniform(-2, max(h, w) + 2, (int(rng.integers(1, 9)), 2)) for _ in range(n)]
    want = np.array([bool(hl[:, 0].min() < 1 or hl[:, 1].min() < 1 or hl[:, 0].max() > w - 2
                          or hl[:, 1].max() > h - 2) for hl in hulls], dtype=bool)
    got = squares._touches_edge(hulls, h, w)
    assert got.dtype == bool and got.tolist() == want.tolist()
