"""Poisson mixture on the histogram: exactly the per-pixel EM, deterministic, safe on blank images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt import mixture

per_pixel_em = mixture.per_pixel_em


def two_class(seed: int, shape=(128, 160), lo=15.0, hi=120.0, frac=0.3) -> np.ndarray:
    """Poisson counts: bright blocks on a dark background."""
    rng = np.random.default_rng(seed)
    lam = np.full(shape, lo)
    rows, cols = shape
    for _ in range(8):
        r, c = rng.integers(0, rows - 20), rng.integers(0, cols - 20)
        lam[r : r + int(rng.integers(8, 30)), c : c + int(rng.integers(8, 30))] = hi
    return rng.poisson(lam).astype(np.int16)


def test_histogram_em_is_the_per_pixel_em():
    img = two_class(0)
    seg = mixture.segment(img.astype(np.float32), "int16")
    mu1, mu2, pi, iters, ll, mask = per_pixel_em(img)
    fit = seg.fit
    assert fit is not None and seg.reason is None
    assert fit.iterations == iters
    assert fit.mu_bright == pytest.approx(mu1, rel=1e-10)
    assert fit.mu_dark == pytest.approx(mu2, rel=1e-10)
    assert fit.pi_bright == pytest.approx(pi, rel=1e-10)
    assert fit.log_likelihood == pytest.approx(ll, rel=1e-10)
    assert np.array_equal(seg.mask.astype(bool), mask.reshape(img.shape))
    assert fit.converged and fit.iterations < 100


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lo=st.floats(0.5, 40.0),
    ratio=st.floats(1.5, 12.0),
    rows=st.integers(8, 40),
    cols=st.integers(8, 40),
)
def test_histogram_em_matches_per_pixel_em_property(seed, lo, ratio, rows, cols):
    rng = np.random.default_rng(seed)
    lam = np.where(rng.random((rows, cols)) < 0.4, lo * ratio, lo)
    img = rng.poisson(lam).astype(np.float32)
    scale = mixture.count_scale(img, "int32")
    fit = mixture.fit_poisson_mixture(mixture.histogram(img, scale))
    if fit is None:  # a single value: nothing to split
        assert np.unique(img).size < 2
        return
    mu1, mu2, pi, iters, ll, mask = per_pixel_em(img)
    assert fit.iterations == iters
    assert fit.mu_bright == pytest.approx(mu1, rel=1e-9, abs=1e-12)
    assert fit.log_likelihood == pytest.approx(ll, rel=1e-9)
    got = fit.bright[img.astype(np.int64)]
    assert np.array_equal(got.ravel(), mask)


def test_real_atlas_mask_is_the_per_pixel_one_from_any_start(lowmag_path):
    from ptolemy_rt.io import read_image

    img = read_image(lowmag_path)
    seg = mixture.segment(img.data, img.dtype)
    *_, mask = per_pixel_em(img.data)
    assert np.array_equal(seg.mask.astype(bool).ravel(), mask)
    # The original started from random labels: the same fixed point.
    rng = np.random.default_rng(1)
    *_, mask_random = per_pixel_em(img.data, init=rng.binomial(1, 0.5, img.data.size))
    assert np.array_equal(mask_random, mask)


def test_deterministic_bit_for_bit():
    img = two_class(3).astype(np.float32)
    a = mixture.segment(img)
    b = mixture.segment(img.copy())
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.fit.log_likelihood == b.fit.log_likelihood


def test_integer_valued_data_used_as_is():
    img = two_class(1)
    for data, dtype in ((img.astype(np.float32), "int16"), (img.astype(np.float32), "float32")):
        scale = mixture.count_scale(data, dtype)
        assert scale.integer and scale.scale == 1.0
        hist = mixture.histogram(data, scale)
        assert np.array_equal(hist, np.bincount(img.ravel().astype(np.int64)))


def test_non_integer_data_scaled_to_p999_4095_and_clipped():
    rng = np.random.default_rng(2)
    data = rng.random((100, 100)).astype(np.float32) - np.float32(0.2)  # negatives too
    scale = mixture.count_scale(data, "float32")
    assert not scale.integer
    p999 = np.percentile(data, 99.9)
    assert p999 * scale.scale == pytest.approx(4095.0, rel=1e-6)
    hist = mixture.histogram(data, scale)
    counts = np.minimum(np.floor(np.maximum(data, 0) * scale.scale + 0.5), mixture.COUNT_CAP).astype(np.int64)
    assert np.array_equal(hist, np.bincount(counts.ravel(), minlength=hist.size))
    assert hist[0] >= np.count_nonzero(data <= 0)  # negatives are clipped to count 0


def test_float_image_segments_like_its_counts():
    img = two_class(4)
    as_float = (img.astype(np.float32) / np.float32(300.0)).astype(np.float32)  # non-integer, [0, 1)
    a = mixture.segment(img.astype(np.float32), "int16")
    b = mixture.segment(as_float, "float32")
    assert b.reason is None and not b.scale.integer
    # Rescaling changes the Poisson model's counts, not the two classes.
    assert np.mean(a.mask != b.mask) < 0.01


@pytest.mark.parametrize(
    "data, words",
    [
        (np.zeros((64, 64), np.float32), "constant"),
        (np.full((64, 64), 7.0, np.float32), "constant"),
        (np.full((64, 64), -3.0, np.float32), "constant"),
        (np.linspace(-5, 0, 4096, dtype=np.float32).reshape(64, 64), "blank"),
        (np.where(np.arange(4096).reshape(64, 64) % 2 == 0, -1.0, 0.0).astype(np.float32), "blank"),
        (np.random.default_rng(0).poisson(100, (128, 128)).astype(np.float32), "one-class"),
        (np.random.default_rng(1).random((128, 128)).astype(np.float32), "one-class"),
        (np.random.default_rng(2).normal(0, 1, (128, 128)).astype(np.float32), "one-class"),
    ],
)
def test_blank_and_one_class_images_give_a_reason(data, words):
    seg = mixture.segment(data)
    assert seg.mask is None
    assert words in seg.reason


def test_two_classes_are_found_where_they_are():
    rng = np.random.default_rng(5)
    lam = np.full((96, 96), 10.0)
    lam[20:60, 30:70] = 80.0
    img = rng.poisson(lam).astype(np.float32)
    seg = mixture.segment(img)
    assert seg.reason is None
    truth = lam > 10
    assert np.mean(seg.mask.astype(bool) == truth) > 0.99
    assert seg.fit.mu_bright == pytest.approx(80, rel=0.05)
    assert seg.fit.mu_dark == pytest.approx(10, rel=0.05)


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_passes_over_blocks_match_a_plain_loop(block, seed, monkeypatch):
    # The image is processed in blocks of pixels (bounded temporaries): the bins, histogram, mask and label
    # changes must not depend on where the blocks end.
    monkeypatch.setattr(mixture, "_BLOCK", block)
    rng = np.random.default_rng(seed)
    data = (rng.gamma(2.0, 300.0, (37, 53)) * rng.choice([1.0, -1.0], (37, 53), p=[0.9, 0.1])).astype(np.float32)
    for scale, top in ((1.0, 2000), (0.731, 1500)):
        counts = mixture._counts(data, scale, top)
        for v, k in zip(data.ravel(), counts.ravel()):
            v = float(v)
            expect = 0 if v <= 0 else min(int(v) if scale == 1.0 else math.floor(v * scale + 0.5), top)
            assert k == expect
        assert np.array_equal(mixture._hist(data, scale, top), np.bincount(counts.ravel(), minlength=top + 1))
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    loop = sum(int(mask[i, j] != mask[i, j - 1]) for i in range(37) for j in range(1, 53))
    loop += sum(int(mask[i, j] != mask[i - 1, j]) for i in range(1, 37) for j in range(53))
    assert mixture._label_changes(mask) == loop


def test_huge_values_are_clipped_before_integer_conversion():
    img = np.full((64, 64), 10.0, np.float32)
    img[10:40, 10:40] = 1e30
    img[0, 0] = 3.0e38
    seg = mixture.segment(img)
    counts = mixture._counts(img, seg.scale.scale, mixture._top(seg.scale))
    assert counts[0, 0] == counts.max() <= mixture.COUNT_CAP  # 3e38 * scale lands in the last bin
    assert counts[20, 20] > counts[50, 50]
    assert seg.mask is None or seg.mask[20, 20] == 1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 400), step=st.booleans())
def test_mask_from_a_step_table_is_the_gathered_one(seed, n, step):
    # A step-shaped posterior table (the usual case) is applied by one comparison: the same mask as the gather.
    rng = np.random.default_rng(seed)
    table = (np.arange(n) >= rng.integers(0, n + 1)) if step else (rng.random(n) < 0.5)
    table = table.astype(np.uint8)
    counts = rng.integers(0, n, (23, 31)).astype(np.uint16)
    mask, changes = mixture._apply(counts.astype(np.float32), 1.0, n - 1, table, counts)
    assert mask.dtype == np.uint8 and np.array_equal(mask, table[counts])
    assert changes == mixture._label_changes(table[counts])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_segment_on_threads_is_the_same(monkeypatch, threads):
    """The block passes (bins, histogram, label changes) spread over threads give the one-thread segmentation:
    the same mask bytes, fit and statistics (small blocks, so there are many)."""
    from ptolemy_rt import _workers, mixture

    rng = np.random.default_rng(5)
    rr, cc = np.mgrid[:300, :310]
    bright = (rr % 40 > 6) & (cc % 40 > 6)  # squares between bars
    img = rng.poisson(np.where(bright, 900.0, 150.0)).astype(np.float32) * np.float32(0.37)
    monkeypatch.setattr(mixture, "_BLOCK", 4096)
    monkeypatch.setattr(_workers, "ENABLED", False)
    want = mixture.segment(img)
    monkeypatch.setattr(_workers, "ENABLED", True)
    monkeypatch.setattr(_workers, "_cpus", lambda: threads)
    monkeypatch.setattr(_workers, "workers", lambda: threads)
    got = mixture.segment(img)
    assert want.mask is not None
    assert got.mask.tobytes() == want.mask.tobytes()
    assert (got.incoherence, got.separation, got.fit.posterior.tobytes()) == \
        (want.incoherence, want.separation, want.fit.posterior.tobytes())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000), top=st.sampled_from([1, 2, 255, 4095, 65535]),
       block=st.sampled_from([5, 64, 1024, 1 << 20]))
def test_bincount_is_numpys(seed, n, top, block):
    """The histogram from cv2.calcHist per block (float32 counts, blocks on threads) is np.bincount's, bin for
    bin: value 0 and `top` included, any block size."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, top + 1, n).astype(np.uint16)
    counts[0] = top
    monkey = pytest.MonkeyPatch()
    monkey.setattr(mixture, "_BLOCK", block)
    try:
        got = mixture._bincount(counts.reshape(1, -1), top)
    finally:
        monkey.undo()
    assert got.dtype == np.int64 and got.tolist() == np.bincount(counts, minlength=top + 1).tolist()


def test_bincount_counts_exactly_up_to_its_block():
    """A block of 2**24 pixels of one value: float32 holds the count exactly (one more would not be)."""
    counts = np.full(1 << 24, 3, dtype=np.uint16)
    counts[:5] = 0
    got = mixture._bincount(counts, 4)
    assert got.tolist() == [5, 0, 0, (1 << 24) - 5, 0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000), top=st.sampled_from([1, 1803, 4095, 65535]),
       scale=st.sampled_from([1.0, 0.37, 2.5]))
def test_counts_are_the_clipped_values_as_assigned(seed, n, top, scale):
    """_counts: unit scale clips in float32 and casts on the way out, the same uint16 as clipping then assigning;
    other scales floor(v * scale + 0.5) clipped, as before (negatives, inf, values past top, fractions)."""
    rng = np.random.default_rng(seed)
    v = (rng.normal(top / 2, top, n)).astype(np.float32)
    v[: min(n, 4)] = np.array([np.inf, -np.inf, top + 0.9, 0.999], np.float32)[: min(n, 4)]
    if scale == 1.0:
        want = np.empty(n, np.uint16)
        want[:] = np.clip(v, 0.0, float(top))
    else:
        want = np.empty(n, np.uint16)
        want[:] = np.clip(np.floor(v * np.float64(scale) + 0.5), 0.0, float(top))
    assert mixture._counts(v.reshape(1, -1), scale, top).reshape(-1).tolist() == want.tolist()
