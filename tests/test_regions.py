"""Regions: grouping within a window, convex hulls of pixel squares, area filter, centroids, means."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.signal import convolve2d
from scipy.spatial import ConvexHull

from ptolemy_rt import regions

from .conftest import examples


def slow_regions(mask: np.ndarray, window: int = 6, min_area: float = 100.0) -> list[tuple[frozenset, float, int]]:
    """The method as the paper's code describes it: convolve with a window, label 8-connected, keep the mask
    pixels, hull of every pixel's four corners; in our coordinates (pixel centres at integers)."""
    grown = convolve2d(mask.astype(float), np.ones((window, window)), mode="same") > 0
    labels, n = ndimage.label(grown, structure=np.ones((3, 3)))
    segments = labels * mask.astype(bool)
    out = []
    for i in range(1, n + 1):
        rows, cols = np.nonzero(segments == i)
        if rows.size == 0:
            continue
        corners = np.concatenate(
            [np.stack([cols + dx, rows + dy], axis=1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
        )
        hull = corners[ConvexHull(corners).vertices]
        area = regions.polygon_area(hull)
        if area > min_area:
            out.append((frozenset(map(tuple, hull)), area, rows.size))
    return out


def test_known_blocks():
    mask = np.zeros((60, 80), np.uint8)
    mask[10:20, 10:30] = 1  # 20 x 10 block
    mask[10:20, 34:40] = 1  # 4 px gap: joins the first
    mask[40:55, 60:75] = 1  # far away: its own region
    mask[45, 5] = 1  # lone pixel: below the area filter
    r = regions.find_regions(mask, min_area=100)
    assert len(r) == 2
    assert r.areas[0] == pytest.approx(30 * 10)  # hull spans x 9.5..39.5, y 9.5..19.5
    assert r.areas[1] == pytest.approx(15 * 15)
    assert np.allclose(r.centroids[1], [67.0, 47.0])
    # First vertex is the top-left corner of the top-left pixel; counter-clockwise on screen (next goes down).
    assert tuple(r.hulls[0][0]) == (9.5, 9.5)
    assert r.hulls[0][1][1] > r.hulls[0][0][1]


def test_window_and_gap():
    # Gaps of up to window - 1 px join (the original's 6x6 'same' convolution), wider ones do not.
    for gap, joined in ((4, True), (5, True), (6, False)):
        mask = np.zeros((40, 60), np.uint8)
        mask[10:30, 5:20] = 1
        mask[10:30, 20 + gap : 40 + gap] = 1
        r = regions.find_regions(mask, window=6, min_area=10)
        assert (len(r) == 1) == joined, gap


def test_area_filter_is_strict_and_a_parameter():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 1  # hull area exactly 100
    assert len(regions.find_regions(mask, min_area=100)) == 0
    assert len(regions.find_regions(mask, min_area=99.5)) == 1


def test_empty_mask():
    r = regions.find_regions(np.zeros((50, 50), np.uint8))
    assert len(r) == 0 and r.areas.shape == (0,) and r.centroids.shape == (0, 2)
    means, counts = regions.region_means(r, np.zeros((50, 50), np.uint8), np.zeros((50, 50), np.float32))
    assert means.shape == (0,)


def test_blob_inside_a_ring_is_its_own_region():
    mask = np.zeros((100, 100), np.uint8)
    mask[5:95, 5:95] = 1
    mask[15:85, 15:85] = 0  # a ring, 10 px wide
    mask[40:60, 40:60] = 1  # far from the ring: another region
    r = regions.find_regions(mask, min_area=50)
    assert len(r) == 2
    assert sorted(r.areas) == pytest.approx([20 * 20, 90 * 90])


@examples(10, settings(max_examples=30, deadline=None),
          given(seed=st.integers(0, 100_000), density=st.floats(0.002, 0.08), window=st.sampled_from([1, 3, 6, 7])))
def test_matches_the_slow_method(seed, density, window):
    rng = np.random.default_rng(seed)
    mask = (rng.random((48, 64)) < density).astype(np.uint8)
    # Add a few blocks so there are hulls above the filter.
    for _ in range(3):
        r, c = rng.integers(0, 40), rng.integers(0, 56)
        mask[r : r + rng.integers(2, 9), c : c + rng.integers(2, 9)] = 1
    min_area = 12.0
    got = regions.find_regions(mask, window=window, min_area=min_area)
    want = slow_regions(mask, window=window, min_area=min_area)
    got_sets = sorted((sorted(map(tuple, h)), a) for h, a in zip(got.hulls, got.areas))
    want_sets = sorted((sorted(h), a) for h, a, _ in want)
    assert [a for _, a in got_sets] == pytest.approx([a for _, a in want_sets])
    # Qhull drops collinear points as we do: the vertex sets agree exactly.
    assert [h for h, _ in got_sets] == [h for h, _ in want_sets]
    means, counts = regions.region_means(got, mask, np.ones(mask.shape, np.float32))
    assert sorted(counts.tolist()) == sorted(n for _, _, n in want)
    assert np.all(means == 1.0)


def test_region_means_and_raster_order():
    mask = np.zeros((50, 50), np.uint8)
    mask[30:45, 5:20] = 1
    mask[5:20, 30:45] = 1
    image = np.zeros((50, 50), np.float32)
    image[30:45, 5:20] = 3.0
    image[5:20, 30:45] = np.arange(15 * 15, dtype=np.float32).reshape(15, 15)
    r = regions.find_regions(mask, min_area=10)
    means, counts = regions.region_means(r, mask, image)
    # Raster order of the top-left pixel: the upper block first.
    assert r.centroids[0][1] < r.centroids[1][1]
    assert means == pytest.approx([np.arange(225).mean(), 3.0])
    assert counts.tolist() == [225, 225]


def test_polygon_helpers():
    square = np.array([[0.0, 0.0], [0.0, 2.0], [2.0, 2.0], [2.0, 0.0]])
    assert regions.polygon_area(square) == 4.0
    assert np.allclose(regions.polygon_centroid(square + 1000.0), [1001.0, 1001.0])


@examples(15, settings(max_examples=40, deadline=None),
          given(seed=st.integers(0, 100_000), window=st.sampled_from([1, 2, 3, 6]),
                min_area=st.sampled_from([0.0, 4.0, 30.0])))
def test_outer_boundaries_give_the_hulls_of_all_boundaries(seed, window, min_area):
    """Hulls from the blobs' outermost boundaries (with every boundary traced when a region lies wholly in
    another blob's hole) equal those from all boundaries, to the bit: rings with islands near and far from
    the ring, noise with holes."""
    import types

    import cv2

    rng = np.random.default_rng(seed)
    mask = (rng.random((90, 110)) < rng.uniform(0.05, 0.6)).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        r, c = int(rng.integers(0, 60)), int(rng.integers(0, 80))
        side, wall = int(rng.integers(12, 30)), int(rng.integers(1, 5))
        mask[r : r + side, c : c + side] = 1
        mask[r + wall : r + side - wall, c + wall : c + side - wall] = 0  # a ring
        gap = int(rng.integers(0, max(1, side // 2 - wall)))
        mask[r + wall + gap : r + side - wall - gap, c + wall + gap : c + side - wall - gap] = 1  # an island
        mask[r + side // 2, c + side // 2] = 0  # with a hole of its own
    got = regions.find_regions(mask, window=window, min_area=min_area)
    # The former tracing of every boundary: RETR_EXTERNAL read as RETR_LIST.
    every = types.SimpleNamespace(**{k: getattr(cv2, k) for k in dir(cv2) if not k.startswith("__")})
    every.findContours = lambda m, mode, method: cv2.findContours(m, cv2.RETR_LIST, method)
    saved = regions.cv2
    regions.cv2 = every
    try:
        want = regions.find_regions(mask, window=window, min_area=min_area)
    finally:
        regions.cv2 = saved
    assert len(got) == len(want)
    assert all(np.array_equal(a, b) for a, b in zip(got.hulls, want.hulls))
    np.testing.assert_array_equal(got.areas, want.areas)
    np.testing.assert_array_equal(got.centroids, want.centroids)
    np.testing.assert_array_equal(got.label_ids, want.label_ids)


@pytest.mark.parametrize("threads", [1, 2])
def test_find_regions_with_its_contours_on_a_thread_is_the_same(monkeypatch, threads):
    """Over two million pixels the outer contours are traced on a worker thread while the regions are labelled:
    the same hulls, areas, ids and labels as one after the other."""
    from ptolemy_rt import _workers

    rng = np.random.default_rng(2)
    mask = (cv2.GaussianBlur(rng.random((1500, 1500), dtype=np.float32), (0, 0), 4) > 0.52).astype(np.uint8)
    monkeypatch.setattr(_workers, "ENABLED", False)
    want = regions.find_regions(mask, window=6, min_area=50)
    monkeypatch.setattr(_workers, "ENABLED", True)
    monkeypatch.setattr(_workers, "_cpus", lambda: threads)
    monkeypatch.setattr(_workers, "workers", lambda: threads)
    got = regions.find_regions(mask, window=6, min_area=50)
    assert len(got) == len(want) > 20
    assert all(a.tobytes() == b.tobytes() for a, b in zip(got.hulls, want.hulls))
    assert got.areas.tobytes() == want.areas.tobytes() and got.label_ids.tobytes() == want.label_ids.tobytes()
    assert got.labels.tobytes() == want.labels.tobytes()


def _corner_hull(centre_hull: np.ndarray) -> np.ndarray:
    """The grown hull as find_regions took it before: cv2's hull of every corner, from the top-most, left-most."""
    corners = (centre_hull.astype(np.float32)[:, None, :] + regions._CORNERS[None]).reshape(-1, 1, 2)
    hull = cv2.convexHull(corners, clockwise=True).reshape(-1, 2).astype(np.float64)
    start = int(np.argmin(hull[:, 1] * 65536.0 + hull[:, 0]))
    return np.concatenate((hull[start:], hull[:start])) if start else hull


@examples(40, settings(max_examples=150, deadline=None),
          given(sets=st.lists(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=14),
                              min_size=1, max_size=12),
                offset=st.tuples(st.integers(0, 3000), st.integers(0, 3000))))
def test_grown_hulls_are_the_hulls_of_the_corners(sets, offset):
    """_grown_hulls (the unit square's corners that are vertices, from the centre hull's edges) gives, for many
    polygons at once, cv2's hull of all corners vertex for vertex and in its order: lone points, segments,
    axis-parallel edges (corners inside a straight edge left out), duplicates and collinear centres."""
    hulls = [cv2.convexHull((np.array(pts, np.int32) + np.array(offset, np.int32)).reshape(-1, 1, 2)).reshape(-1, 2)
             for pts in sets]
    sizes = np.array([len(h) for h in hulls], dtype=np.int64)
    got = regions._grown_hulls(np.concatenate(hulls).astype(np.int64), sizes)
    assert len(got) == len(hulls)
    for g, h in zip(got, hulls):
        want = _corner_hull(h)
        assert g.dtype == want.dtype and g.shape == want.shape and g.tobytes() == want.tobytes()
