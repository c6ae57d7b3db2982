"""Fast paths of session 9's single-core work on find_holes (issue 17), each held to the formula it replaced:
the crops' outside test evaluated only in the box of rows and columns that can be outside (crops._zero_outside),
the film mask of a margin map of one sign, which is not scaled up (film._uniform_sign), and the view tests'
region labelling by Grana's algorithm instead of cv2's default (views._regions, film._estimate_period)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt import film
from ptolemy_rt.crops import _zero_outside, crop_matrix

from .conftest import examples, synthetic_atlas, synthetic_medmag


def _former_zero_outside(out, m, xmax, ymax):
    """crops._zero_outside as it was: every limit the corners come near tested over the whole crop."""
    rows, cols = out.shape
    j = np.arange(cols, dtype=np.float64)
    i = np.arange(rows, dtype=np.float64)
    bad = None
    for k, top in ((0, xmax), (1, ymax)):
        along, across = m[k, 0] * (cols - 1), m[k, 1] * (rows - 1)
        ends = (m[k, 2], m[k, 2] + along, m[k, 2] + across, m[k, 2] + along + across)
        low, high = min(ends) < 1e-6, max(ends) > top - 1e-6
        if not (low or high):
            continue
        v = np.add.outer(m[k, 1] * i, m[k, 0] * j)
        v += m[k, 2]
        for test, limit in ((np.less, 0.0), (np.greater, top)) if low and high else (
                ((np.less, 0.0),) if low else ((np.greater, top),)):
            bad = test(v, limit) if bad is None else bad | test(v, limit)
    if bad is not None:
        out[bad] = 0.0


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@examples(75, settings(max_examples=300, deadline=None),
          given(rows=st.integers(1, 300), cols=st.integers(1, 300), angle=st.one_of(
             st.sampled_from([0.0, 90.0, 180.0, 270.0, 45.0, -45.0]), st.floats(-360.0, 360.0)),
             cx=st.floats(-150.0, 350.0), cy=st.floats(-150.0, 250.0), snap=st.booleans()))
def test_zero_outside_in_its_box_is_the_former_test(rows, cols, angle, cx, cy, snap):
    if snap:  # the first pixel's source exactly on the left and top edges (ties at the limit)
        cx, cy = (cols - 1) / 2.0, (rows - 1) / 2.0
    m = crop_matrix((cx, cy), angle, cols, rows)
    fast = np.ones((rows, cols), dtype=np.float32)
    former = fast.copy()
    _zero_outside(fast, m, 199.0, 139.0)
    _former_zero_outside(former, m, 199.0, 139.0)
    assert _same_bits(fast, former)


@examples(50, settings(max_examples=200, deadline=None),
          given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 60), cols=st.integers(1, 60),
                scale=st.floats(1.0, 40.0), sign=st.sampled_from([1.0, -1.0]),
                spread=st.sampled_from([0.0, 1e-6, 0.5, 1.0 - 2.0**-20, 1.0 - 2.0**-19]),
                magnitude=st.sampled_from([1e-30, 1e-20, 1.0, 1e3, 1e30])))
def test_a_map_of_one_sign_scales_up_to_that_sign(seed, rows, cols, scale, sign, spread, magnitude):
    # Whatever _uniform_sign calls one-signed keeps that sign at every pixel of cv2's bilinear enlargement,
    # down to the smallest values it accepts (2^-20 of the largest; 1e-30).
    rng = np.random.default_rng(seed)
    edge = (magnitude * (1.0 - spread * rng.random((rows, cols)))).astype(np.float32) * np.float32(sign)
    edge.flat[int(rng.integers(edge.size))] = np.float32(sign * magnitude)
    if rng.random() < 0.5:  # the smallest value in a corner and beside the largest
        edge[0, 0] = np.float32(sign * magnitude * (1.0 - spread))
    uniform = film._uniform_sign(edge)
    big = cv2.resize(edge, (max(1, round(cols * scale)), max(1, round(rows * scale))), interpolation=cv2.INTER_LINEAR)
    if uniform is True:
        assert (big > 0).all()
    elif uniform is False:
        assert (big < 0).all()
    else:  # only beyond the documented ratio or below the absolute floor
        assert spread > 1.0 - 2.0**-20 or magnitude * (1.0 - spread) < 1e-30


def test_uniform_sign_declines_mixed_zero_and_nan_maps():
    assert film._uniform_sign(np.array([[0.5, -0.1]], dtype=np.float32)) is None
    assert film._uniform_sign(np.zeros((3, 3), dtype=np.float32)) is None
    assert film._uniform_sign(np.array([[0.5, np.nan]], dtype=np.float32)) is None
    assert film._uniform_sign(np.array([[0.5, 1e-31]], dtype=np.float32)) is None
    assert film._uniform_sign(np.array([[0.5, 0.25]], dtype=np.float32)) is True
    assert film._uniform_sign(np.array([[-0.5, -0.25]], dtype=np.float32)) is False


def _former_film_mask(monkeypatch, image, spacing):
    with monkeypatch.context() as m:
        m.setattr(film, "_uniform_sign", lambda edge: None)  # always scale up, as before
        return film.film_mask(image, spacing)


# three seeds (with and without a bar) in the default run, all eight in the slow run (CI)
@pytest.mark.parametrize("seed", [*range(3), *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(3, 8))])
def test_film_mask_is_the_scaled_up_mask(monkeypatch, seed):
    # Views of film throughout (the fast path) and with bars, dark edges and torn film (scaled up as before):
    # the same mask either way.
    from ptolemy_rt.synthetic import make_medmag

    rng = np.random.default_rng(seed)
    sample = make_medmag(seed=seed)
    image = np.asarray(sample.image if hasattr(sample, "image") else sample[0], dtype=np.float32)
    if seed % 2:  # a grid bar across a third of the view
        image = image.copy()
        image[:, : image.shape[1] // 3] *= np.float32(0.02)
    spacing = float(rng.uniform(30.0, 120.0))
    assert np.array_equal(film.film_mask(image, spacing), _former_film_mask(monkeypatch, image, spacing))
    flat = np.full((300, 420), 50.0, dtype=np.float32)
    flat[::40, ::40] = 200.0
    assert np.array_equal(film.film_mask(flat, 40.0), _former_film_mask(monkeypatch, flat, 40.0))


@pytest.mark.parametrize("threads", [1, 2])
def test_grana_labelling_is_the_default_labelling(threads):
    # views._regions labels with CCL_GRANA: the same labels, stats and centroids (to the bit) as
    # cv2.connectedComponentsWithStats's default, on noise of every density, blobs, stripes and odd sizes.
    rng = np.random.default_rng(threads)
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        for trial in range(150):
            rows, cols = int(rng.integers(1, 300)), int(rng.integers(1, 400))
            image = (rng.random((rows, cols)) < rng.choice([0.02, 0.3, 0.5, 0.7, 0.98])).astype(np.uint8)
            if trial % 3 == 0:
                smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), float(rng.uniform(0.5, 4.0)))
                image = (smooth > 0.5).astype(np.uint8)
            elif trial % 3 == 1:
                image[:, :: int(rng.integers(2, 9))] = 1
            default = cv2.connectedComponentsWithStats(image, connectivity=8)
            grana = cv2.connectedComponentsWithStatsWithAlgorithm(image, 8, cv2.CV_32S, cv2.CCL_GRANA)
            assert default[0] == grana[0]
            for a, b in zip(default[1:], grana[1:]):
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))
    finally:
        cv2.setNumThreads(before)


def test_view_tests_label_as_before(monkeypatch):
    # The view tests and the film mask's own period estimate (film._estimate_period) give the same answers
    # with the default labelling (the former call) on hole views, an atlas and a view one hole fills.
    from ptolemy_rt import views

    images = [synthetic_medmag(seed, (512, 720))[0] for seed in range(3)]
    images.append(np.asarray(synthetic_atlas(0, (768, 768))[0], dtype=np.float32))
    disc = np.full((400, 500), 20.0, dtype=np.float32)
    yy, xx = np.mgrid[:400, :500]
    disc[(yy - 190) ** 2 + (xx - 260) ** 2 < 120**2] = 200.0
    images.append(disc)
    def answers(im):
        return views.large_holes(im), views.atlas_reason(im), film._estimate_period(im), film.film_mask(im).tobytes()

    fast = [answers(im) for im in images]
    with monkeypatch.context() as m:
        m.setattr(cv2, "connectedComponentsWithStatsWithAlgorithm",
                  lambda image, connectivity, ltype, ccltype: cv2.connectedComponentsWithStats(
                      image, connectivity=connectivity, ltype=ltype))
        former = [answers(im) for im in images]
    assert fast == former
    assert any(f[0] for f in fast) and any(f[1] for f in fast)  # both tests fire somewhere


@pytest.mark.parametrize("threads", [1, 2])
def test_regions_give_the_default_labellings_arrays(threads, monkeypatch):
    # views._regions' own arrays (labels, stats, centroids, the order it picks), not only the view tests'
    # answers: a labelling that numbers regions otherwise (SAUF numbers them by pixel, not by 2x2 block)
    # fails here.
    from ptolemy_rt import views

    default = cv2.connectedComponentsWithStats
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        for seed in range(4):
            bright = views._split(synthetic_medmag(seed, (512, 720))[0], 512)[0]
            fast = views._regions(bright, 4.0)
            with monkeypatch.context() as m:
                m.setattr(cv2, "connectedComponentsWithStatsWithAlgorithm",
                          lambda image, connectivity, ltype, ccltype: default(image, connectivity=connectivity,
                                                                              ltype=ltype))
                former = views._regions(bright, 4.0)
            assert len(fast) == len(former)
            for a, b in zip(fast, former):
                a, b = np.asarray(a), np.asarray(b)
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    finally:
        cv2.setNumThreads(before)
