"""spacing's shape-only tables (computed once per image shape, on a process's first image) against their plain
formulas, to the bit: the autocorrelation's band-pass, the lag radii and the rings' members."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt import spacing

from .conftest import examples


def plain_filter(shape: tuple[int, int], max_period: float) -> np.ndarray:
    """The band-pass as first written: both exponentials over every element."""
    f0 = 1.0 / (1.5 * max_period)
    f2 = spacing._ccs_f2(shape)
    keep = 1.0 - np.exp(-f2 / (f0 * f0))
    keep = keep * np.exp(-2.0 * (math.pi * spacing._NOISE_SIGMA) ** 2 * f2)
    return (keep * keep).astype(np.float32)


def plain_radii(max_lag: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    lr, lc = max_lag
    yy, xx = np.mgrid[-lr : lr + 1, -lc : lc + 1]
    radius = np.rint(np.hypot(xx, yy)).astype(np.int64).ravel()
    return radius, np.maximum(np.bincount(radius), 1)


def plain_ring_members(max_lag: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    radius, counts = plain_radii(max_lag)
    order = np.argsort(radius, kind="stable")
    return order, np.searchsorted(radius[order], np.arange(len(counts) + 1))


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape", [(720, 960), (364, 512), (512, 512), (333, 777), (1024, 1024), (9, 14)])
@pytest.mark.parametrize("max_period", [5.0, 30.0, 136.4, 300.7, 2000.0])
def test_filter_is_the_plain_formula(shape, max_period):
    same(spacing._filter.__wrapped__(shape, max_period), plain_filter(shape, max_period))


@examples(20, settings(max_examples=60, deadline=None),
          given(rows=st.integers(8, 800), cols=st.integers(8, 800), max_period=st.floats(2.0, 400.0)))
def test_filter_is_the_plain_formula_for_any_shape(rows, cols, max_period):
    same(spacing._filter.__wrapped__((rows, cols), max_period), plain_filter((rows, cols), max_period))


@examples(15, settings(max_examples=60, deadline=None),
          given(lr=st.integers(0, 320), lc=st.integers(0, 320)))
def test_radii_and_rings_are_the_plain_formula(lr, lc):
    for ours, plain in zip(spacing._radii.__wrapped__((lr, lc)), plain_radii((lr, lc))):
        same(ours, plain)
    for ours, plain in zip(spacing._ring_members.__wrapped__((lr, lc)), plain_ring_members((lr, lc))):
        same(ours, plain)


def test_rings_of_the_reference_window():
    # the 1024x1440 reference image's lag window
    for ours, plain in zip(spacing._ring_members.__wrapped__((204, 288)), plain_ring_members((204, 288))):
        same(ours, plain)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5000))
def test_fftfreq_is_numpys(n):
    assert np.array_equal(spacing._fftfreq(n), np.fft.fftfreq(n))
    assert spacing._fftfreq(n).dtype == np.fft.fftfreq(n).dtype


def test_the_period_search_imports_no_numpy_fft():
    # the reference-sized image's period search alone: numpy.fft (~1.3 ms a process) stays unloaded
    import subprocess
    import sys

    code = ("import sys, numpy as np; from ptolemy_rt import spacing; "
            "rng = np.random.default_rng(0); x = rng.random((256, 360), dtype=np.float32); "
            "spacing._search(x, False); print('numpy.fft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
