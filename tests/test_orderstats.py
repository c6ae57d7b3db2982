"""_orderstats against numpy, to the bit: percentile, median and unique on random, tied, infinite and NaN input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptolemy_rt import _orderstats
from ptolemy_rt._orderstats import median, nanmedian, percentile, unique

from .conftest import examples

pytestmark = pytest.mark.skipif(not _orderstats._SAME_AS_NUMPY, reason="numpy < 2.4: every call is numpy's own")


def same(ours, theirs, *, zero_sign: bool = True) -> None:
    """The same type, shape and bytes; NaN where numpy has NaN (which of several NaN payloads in the input comes
    out depends on where numpy's partition leaves them, not on their values); without `zero_sign`, -0.0 and 0.0
    count as one (the same holds for tied zeros of both signs: see _orderstats)."""
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    a, b = np.asarray(ours), np.asarray(theirs)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype.kind == "f":
        nan = np.isnan(b)
        assert np.array_equal(np.isnan(a), nan), (ours, theirs)
        a, b = a[~nan], b[~nan]
        if not zero_sign:
            a, b = a + a.dtype.type(0), b + b.dtype.type(0)  # -0.0 + 0.0 is 0.0; every other value unchanged
    assert a.tobytes() == b.tobytes(), (ours, theirs)


def arrays(dtype, *, nan: bool, ties: bool, max_side: int = 40):
    """1-D or 2-D arrays of `dtype`; with `ties`, values from a few distinct ones (many equal neighbours)."""
    if ties:
        elements = st.sampled_from([-2.0, -0.0, 0.0, 0.5, 1.0, 3.0, 1e30] + ([np.nan] if nan else []))
    else:
        elements = st.floats(allow_nan=nan, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    shapes = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=max_side)
    return hnp.arrays(dtype, shapes, elements=elements)


QS = st.one_of(
    st.floats(0.0, 100.0),
    st.integers(0, 100),
    st.sampled_from([0.0, 0.5, 1.0, 50.0, 95, 99.0, 99.5, 99.9, 100.0, 100]),
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4).map(tuple),
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
    st.floats(0.0, 100.0).map(np.float64),
)


@examples(50, settings(max_examples=400, deadline=None),
          given(dtype=st.sampled_from([np.float32, np.float64]), nan=st.booleans(), ties=st.booleans(), data=st.data()))
def test_percentile_is_numpys(dtype, nan, ties, data):
    x = data.draw(arrays(dtype, nan=nan, ties=ties))
    q = data.draw(QS)
    same(percentile(x, q), np.percentile(x, q), zero_sign=False)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), q=QS, dtype=st.sampled_from([np.float32, np.float64]))
def test_percentile_of_larger_arrays_is_numpys(n, seed, q, dtype):
    x = np.random.default_rng(seed).normal(size=n).astype(dtype)
    same(percentile(x, q), np.percentile(x, q))


@pytest.mark.parametrize("x", [np.arange(10, dtype=np.int64), np.array([True, False]), np.zeros(0, np.float32),
                               np.arange(5, dtype=">f4")])
def test_percentile_falls_back_to_numpy(x):
    if x.size == 0:
        with pytest.raises(IndexError):
            np.percentile(x, 50)
        with pytest.raises(IndexError):
            percentile(x, 50)
        return
    if x.dtype == bool:
        with pytest.raises(TypeError):
            percentile(x, 50)
        return
    same(percentile(x, [5, 50]), np.percentile(x, [5, 50]))


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan"), [10.0, 101.0]])
def test_percentile_refuses_what_numpy_refuses(q):
    with pytest.raises(ValueError, match="Percentiles must be in the range"):
        percentile(np.arange(4, dtype=np.float32), q)


@examples(40, settings(max_examples=300, deadline=None),
          given(dtype=st.sampled_from([np.float32, np.float64]), nan=st.booleans(), ties=st.booleans(), data=st.data()))
def test_median_is_numpys(dtype, nan, ties, data):
    x = data.draw(arrays(dtype, nan=nan, ties=ties))
    same(median(x), np.median(x), zero_sign=False)


@examples(30, settings(max_examples=100, deadline=None),
          given(x=hnp.arrays(st.sampled_from([np.int32, np.int64, np.uint8, np.int16]),
                             hnp.array_shapes(min_dims=1, max_dims=2, max_side=30))))
def test_median_of_integers_is_numpys(x):
    same(median(x), np.median(x))


def test_median_of_a_list_and_of_nothing():
    same(median([3.0, 1.0, 2.0, 10.0]), np.median([3.0, 1.0, 2.0, 10.0]))
    with pytest.warns(RuntimeWarning):
        assert np.isnan(median(np.zeros(0)))


@examples(40, settings(max_examples=300, deadline=None),
          given(x=st.one_of(
             hnp.arrays(st.sampled_from([np.int8, np.int32, np.int64, np.uint16, np.bool_]),
                        hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=40)),
             arrays(np.float32, nan=True, ties=True),
             arrays(np.float64, nan=True, ties=False),
         )))
def test_unique_is_numpys(x):
    same(unique(x), np.unique(x))


def test_none_imports_numpy_ma():
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from ptolemy_rt._orderstats import median, percentile, unique\n"
            "x = np.random.default_rng(0).random(1000, dtype=np.float32)\n"
            "percentile(x, 95); percentile(x, (0.5, 99.5)); median(x); median(x[:-1]); unique((x * 10).astype(int))\n"
            "print('numpy.ma' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@examples(50, settings(max_examples=400, deadline=None),
          given(dtype=st.sampled_from([np.float32, np.float64]), ties=st.booleans(), data=st.data()))
def test_nanmedian_of_columns_is_numpys(dtype, ties, data):
    if ties:
        elements = st.sampled_from([-2.0, -0.0, 0.0, 0.5, 1.0, np.inf, -np.inf, np.nan, np.nan])
    else:
        elements = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    shape = data.draw(st.tuples(st.integers(1, 9), st.integers(1, 30)))
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = nanmedian(x, axis=0)
    with warnings.catch_warnings(record=True) as numpy_warned:
        warnings.simplefilter("always")
        theirs = np.nanmedian(x, axis=0)
    same(ours, theirs)
    assert ([str(w.message) for w in ours_warned if "All-NaN" in str(w.message)]
            == [str(w.message) for w in numpy_warned if "All-NaN" in str(w.message)])


def test_nanmedian_of_shifted_profiles_is_numpys():
    # squares._profile_outliers' and montage's use: shifted copies of a profile, NaN beyond the ends
    rng = np.random.default_rng(5)
    for n in (40, 333, 1024):
        profile = rng.normal(size=n)
        x = np.arange(n, dtype=np.float64)
        rows = []
        for k in (1, -1, 2, -2, 3, -3):
            pos = x + k * 7.5
            out = np.interp(pos, x, profile)
            out[(pos < 0) | (pos > n - 1)] = np.nan
            rows.append(out)
        same(nanmedian(np.array(rows), axis=0), np.nanmedian(np.array(rows), axis=0))
