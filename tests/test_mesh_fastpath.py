"""mesh's fast paths give the bits of the plain code they replace (issue 17): the mask's autocorrelation on a
worker thread, the fold's blocks (intp bins, all-valid blocks not masked), the lattice shells'
predictions and peaks at once, the cell's diagonal at once."""

from __future__ import annotations

import contextlib
import math

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptolemy_rt import _workers
from ptolemy_rt import mesh as m
from tests.conftest import examples
from tests.test_mesh import render_mesh


@contextlib.contextmanager
def serial():
    """Every piece of work in the calling thread, OpenCV at one thread."""
    before, threads = _workers.ENABLED, cv2.getNumThreads()
    _workers.ENABLED = False
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        _workers.ENABLED = before
        cv2.setNumThreads(threads)


def _plain_shell(a, b, k, reach):
    """The loop _shell replaced."""
    out = []
    for n in range(-k, k + 1):
        for mm in range(-k, k + 1):
            if (n == 0 and mm == 0) or min(abs(n), abs(mm)) > 1:
                continue
            pred = n * a + mm * b
            if np.hypot(*pred) > reach:
                continue
            out.append(((n, mm), pred))
    return out


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(ax=finite, ay=finite, bx=finite, by=finite, k=st.integers(1, 40), reach=st.floats(0.0, 1e5))
def test_shell_is_the_plain_loop_to_the_bit(ax, ay, bx, by, k, reach):
    a, b = np.array([ax, ay]), np.array([bx, by])
    fast, plain = m._shell(a, b, k, reach), _plain_shell(a, b, k, reach)
    assert [q for q, _ in fast] == [q for q, _ in plain]
    assert np.array_equal(np.array([p for _, p in fast], dtype=np.float64).reshape(-1, 2).view(np.uint64),
                          np.array([p for _, p in plain], dtype=np.float64).reshape(-1, 2).view(np.uint64))


def _plain_cell_bins(cx, cy, c0, xs, ys, nb):
    """The bins as _cell_bins computed them before its clip was taken only where a bin reaches nb."""
    u = (cy * ys + c0).astype(np.float32)[:, None] + (cx * xs).astype(np.float32)[None, :]
    u -= np.floor(u)
    u *= np.float32(nb)
    out = u.astype(np.int32)
    np.minimum(out, nb - 1, out=out)
    return out


small = st.one_of(st.floats(-0.2, 0.2, allow_nan=False), st.sampled_from([0.0, -0.0, 2.0**-30, -(2.0**-30),
                                                                          -(2.0**-40), 1.0 / 153, -1.0 / 97]))


@settings(max_examples=200, deadline=None)
@given(cx=small, cy=small, c0=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([0.0, 2.0**-30])),
       x0=st.integers(-5000, 5000), y0=st.integers(-5000, 5000), w=st.integers(1, 70), h=st.integers(1, 9),
       nb=st.integers(16, 256))
@example(cx=0.0, cy=-(2.0**-30), c0=0.0, x0=0, y0=1, w=3, h=1, nb=153)  # a fraction rounded to 1: bin nb - 1
def test_cell_bins_are_the_plain_formula_to_the_bit(cx, cy, c0, x0, y0, w, h, nb):
    xs = np.arange(x0, x0 + w, dtype=np.float64)
    ys = np.arange(y0, y0 + h, dtype=np.float64)
    fast, plain = m._cell_bins(cx, cy, c0, xs, ys, nb), _plain_cell_bins(cx, cy, c0, xs, ys, nb)
    assert fast.dtype == plain.dtype and np.array_equal(fast, plain)
    assert fast.min() >= 0 and fast.max() <= nb - 1


def test_a_fraction_rounded_to_one_takes_the_last_bin():
    # u = -2**-30: u - floor(u) = 1 - 2**-30 rounds to 1.0 in float32, so u * nb is nb: clipped to nb - 1.
    bins = m._cell_bins(0.0, -(2.0**-30), 0.0, np.arange(3.0), np.array([1.0]), 153)
    assert bins.tolist() == [[152, 152, 152]]


@pytest.mark.parametrize("xs, ys", [(np.empty(0), np.arange(3.0)), (np.arange(3.0), np.empty(0))])
def test_cell_bins_of_no_pixels_are_empty(xs, ys):
    bins = m._cell_bins(0.3, 0.2, 0.1, xs, ys, 8)
    assert bins.dtype == np.int32 and bins.shape == (len(ys), len(xs))


def test_cell_bins_with_a_nan_still_clip_the_rest():
    # A non-finite lattice inverse makes NaN fractions: the bins that rounded up to nb are clipped as before.
    with np.errstate(invalid="ignore"):
        fast = m._cell_bins(np.nan, -(2.0**-30), 0.0, np.arange(3.0), np.array([1.0]), 153)
        plain = _plain_cell_bins(np.nan, -(2.0**-30), 0.0, np.arange(3.0), np.array([1.0]), 153)
    assert fast.tobytes() == plain.tobytes()


def _plain_fold(img, valid, a, b, x0, y0, nb, rows):
    """The fold as it was: int32 bins, every block masked with np.where."""
    h, w = img.shape
    inv = np.linalg.inv(np.column_stack([a, b]))
    s0, t0 = inv @ np.array([x0, y0], dtype=np.float64)
    s0, t0 = s0 % 1.0, t0 % 1.0
    xs = np.arange(w, dtype=np.float64)
    tot = np.zeros(nb * nb + 1)
    cnt = np.zeros(nb * nb + 1, dtype=np.int64)
    for r0 in range(0, h, rows):
        ys = np.arange(r0, min(h, r0 + rows), dtype=np.float64)
        idx = _plain_cell_bins(inv[1, 0], inv[1, 1], t0, xs, ys, nb)
        idx *= nb
        idx += _plain_cell_bins(inv[0, 0], inv[0, 1], s0, xs, ys, nb)
        idx = np.where(valid[r0 : r0 + rows], idx, nb * nb).ravel()
        tot += np.bincount(idx, weights=img[r0 : r0 + rows].astype(np.float64).ravel(), minlength=nb * nb + 1)
        cnt += np.bincount(idx, minlength=nb * nb + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tot[: nb * nb] / cnt[: nb * nb]).reshape(nb, nb)


def _same(x, y):
    return x.shape == y.shape and np.array_equal(x.view(np.uint64), y.view(np.uint64))


@examples(10, settings(max_examples=25, deadline=None),
          given(pitch=st.floats(8.0, 120.0), angle=st.floats(0.0, 89.9), x0=st.integers(0, 6000),
                y0=st.integers(0, 6000),
                rows=st.integers(1, 40), seed=st.integers(0, 2**16), mask=st.sampled_from(["all", "disc", "random"])))
def test_fold_is_the_plain_loop_to_the_bit(pitch, angle, x0, y0, rows, seed, mask):
    # Values of many magnitudes (float64 sums that round), so adding the blocks out of order would show; with
    # two threads too (the fold runs in the calling thread: the same bits either way).
    rng = np.random.default_rng(seed)
    h, w = 150, 173
    img = (rng.standard_normal((h, w)) * 10.0 ** rng.uniform(-3, 6, (h, w))).astype(np.float32)
    if mask == "all":
        valid = np.ones((h, w), bool)
    elif mask == "disc":
        yy, xx = np.mgrid[0:h, 0:w]
        valid = np.hypot(yy - h / 2, xx - w / 2) < 0.45 * w
    else:
        valid = rng.random((h, w)) < 0.8
    t = math.radians(angle)
    a = pitch * np.array([math.cos(t), -math.sin(t)])
    b = np.array([-a[1], a[0]])
    nb = int(min(math.ceil(pitch), 40))
    plain = _plain_fold(img, valid, a, b, x0, y0, nb, rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "_FOLD_ROWS", rows)
        with serial():
            one = m._fold(img, valid, a, b, x0, y0, nb)
        mp.setattr(_workers, "_cpus", lambda: 2)
        before = cv2.getNumThreads()
        cv2.setNumThreads(2)
        try:
            two = m._fold(img, valid, a, b, x0, y0, nb)
        finally:
            cv2.setNumThreads(before)
    assert _same(one, plain) and _same(two, plain)


def _scenes():
    yield render_mesh(1024, 70.0, 12.0, 0.4, seed=3)  # coarse: the 256 px first look
    yield render_mesh(1024, 160.0, 60.0, 44.0, seed=4, disc=430.0)
    yield render_mesh(600, 9.0, 3.0, 20.0, seed=5)  # fine: the full-resolution window
    yield render_mesh(1100, 40.0, 8.0, 12.0, seed=6, disc=500.0)  # binned 3x


def test_detect_mesh_on_worker_threads_is_the_serial_result_to_the_bit(two_threads):
    for img in _scenes():
        threaded = m.detect_mesh(img)
        with serial():
            alone = m.detect_mesh(img)
        assert threaded.mesh is not None and repr(threaded) == repr(alone)


def test_normalised_acf_on_worker_threads_is_the_serial_one_to_the_bit(two_threads):
    img = render_mesh(512, 37.0, 9.0, 17.0, seed=8, disc=230.0)
    valid = m.disc_mask(img)
    acf, good = m._normalised_acf(img, valid)
    with serial():
        acf1, good1 = m._normalised_acf(img, valid)
    assert np.array_equal(good, good1) and np.array_equal(acf.view(np.uint32), acf1.view(np.uint32))


@settings(max_examples=30, deadline=None)
@given(nb=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_diagonal_is_the_row_by_row_sums_to_the_bit(nb, seed):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((nb, nb)) * 10.0 ** rng.uniform(-5, 5, (nb, nb))
    plain = np.array([c[i, (i - 1) % nb] + c[i, i] + c[i, (i + 1) % nb] for i in range(nb)]) / 3.0
    assert _same(m._diagonal(c), plain)


def _plain_subpixel(a, r, c):
    """The peak's sub-pixel position and value as mesh computed it one peak at a time."""
    h, w = a.shape
    if r <= 0 or c <= 0 or r >= h - 1 or c >= w - 1:
        return float(r), float(c), float(a[r, c])

    def vertex(m1, z, p1):
        d = m1 - 2 * z + p1
        return 0.0 if d >= 0 else min(0.5, max(-0.5, 0.5 * (m1 - p1) / d))

    z = float(a[r, c])
    dr = vertex(float(a[r - 1, c]), z, float(a[r + 1, c]))
    dc = vertex(float(a[r, c - 1]), z, float(a[r, c + 1]))
    return r + dr, c + dc, z


def _plain_peak_near(a, centre, lag, radius):
    """mesh's former one-lag peak search (a Python call per lag)."""
    cy, cx = centre
    px, py = cx + float(lag[0]), cy + float(lag[1])
    r0, r1 = math.floor(py - radius), math.ceil(py + radius) + 1
    c0, c1 = math.floor(px - radius), math.ceil(px + radius) + 1
    h, w = a.shape
    if r0 < 1 or c0 < 1 or r1 > h - 1 or c1 > w - 1:
        return None
    win = a[r0:r1, c0:c1]
    k = int(win.argmax())
    r, c = r0 + k // win.shape[1], c0 + k % win.shape[1]
    if r in (r0, r1 - 1) or c in (c0, c1 - 1):
        return None
    rr, cc, v = _plain_subpixel(a, r, c)
    return cc - cx, rr - cy, v


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), radius=st.floats(0.5, 9.0), plateaus=st.booleans(), n=st.integers(0, 60))
def test_peaks_near_is_the_former_peak_search_lag_by_lag_to_the_bit(seed, radius, plateaus, n):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(8, 90)), int(rng.integers(8, 90))
    a = rng.standard_normal((h, w)).astype(np.float32)
    if plateaus:
        a = (np.round(a * 2) / 2).astype(np.float32)  # ties: the first maximum in row-major order wins
    centre = (h // 2, w // 2)
    # lags inside, across and beyond the border, some exactly on half pixels
    lags = (rng.uniform(-0.7, 0.7, (n, 2)) * [w, h]).tolist() + [[0.5, -1.5], [float(w), 0.0], [0.0, 0.0]]
    fast = m._peaks_near(a, centre, lags, radius)
    plain = [_plain_peak_near(a, centre, np.array(lag), radius) for lag in lags]
    assert [f is None for f in fast] == [p is None for p in plain]
    got = np.array([f for f in fast if f is not None], dtype=np.float64).reshape(-1, 3)
    want = np.array([p for p in plain if p is not None], dtype=np.float64).reshape(-1, 3)
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))



def test_normalised_acf_computes_the_masks_part_itself_when_no_worker_started_it(monkeypatch):
    from concurrent.futures import Future

    img = render_mesh(300, 23.0, 5.0, 8.0, seed=9)
    valid = np.ones(img.shape, bool)
    want = m._normalised_acf(img, valid)[0]
    monkeypatch.setattr(m._workers, "submit", lambda fn, *args: Future())  # queued, never started
    got = m._normalised_acf(img, valid)[0]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
