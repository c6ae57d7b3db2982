"""np.percentile, np.median, np.nanmedian and np.unique's values, from one sort and without numpy.ma.

numpy 2's percentile, median and plain unique ask `np.ma` whether their input is masked, and nanmedian along an
axis of fewer than 600 values is np.ma.median itself: the first use imports numpy.ma, ~8 ms of a ~0.3 s
`ptolemy-rt holes` process, for arrays that are never masked.
On a sorted copy the same values are a few index operations, and numpy's vectorised sort is also faster than
the introselect partition percentile and median run (0.44 vs 2.0 ms on 160k float32 values).

The arithmetic is numpy's own (numpy 2.4: linear interpolation `a + (b - a) * g` below g = 0.5 and
`b - (b - a) * (1 - g)` from it, the same operand types; a median is the mean of the middle one or two; a
nanmedian np.ma.median's sum of the middle pair halved), so the results are numpy's to the bit, with two
exceptions. Where zeros of both signs tie at the rank a percentile or median reads, its zero may carry
the other sign than numpy's (which of the tied zeros numpy's partition leaves there depends on their order in
the input, not on values); -0.0 == 0.0, and the pipelines only compare and subtract these levels. A NaN result is NaN
in both, but np.sort may hand back a canonical NaN (AVX-512 sorts do) where numpy's partition returns the
input's own sign and payload; the pipelines only test for NaN. nanmedian and unique sort as numpy does and
match it, NaNs aside, in every bit. Anything else (other dtypes, NaN in
unique, empty input, an older numpy) goes to numpy itself. tests/test_orderstats.py holds each to numpy's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["percentile", "median", "nanmedian", "unique"]

# The interpolation and result types above are numpy 2.4's (earlier releases differ for float16 and in how a
# Python-number q promotes); with an older numpy every call goes to numpy itself.
_SAME_AS_NUMPY = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def percentile(x: np.ndarray, q):
    """np.percentile(x, q) over all of x (linear method): the same value and type (a tied zero's sign aside, see
    above), from a sorted copy."""
    a = np.asarray(x)
    qa = np.asarray(np.true_divide(q, 100))
    if (not _SAME_AS_NUMPY or a.dtype not in _FLOATS or a.size == 0 or qa.ndim > 1 or qa.dtype != np.float64
            or not bool(np.all((qa >= 0.0) & (qa <= 1.0)))):
        return np.percentile(np.sort(a.ravel()), q, overwrite_input=True)  # numpy's value, or its error
    s = np.sort(a.ravel())
    n = s.size
    virtual = ((n - 1) * qa).ravel()
    below = np.floor(virtual)
    above = below + 1
    last = virtual >= n - 1  # the maximum: both neighbours are the last value
    below[last] = -1
    above[last] = -1
    lo_i = below.astype(np.intp)
    hi_i = above.astype(np.intp)
    gamma = virtual - lo_i  # numpy takes the weight against the index after the clamp above
    if type(q) in (int, float):
        # One Python-number q: weak promotion, so float32 data give a float32 result.
        a0, b0, g = s[lo_i[0]], s[hi_i[0]], float(gamma[0])
        d = b0 - a0
        out = b0 - d * (1 - g) if g >= 0.5 else a0 + d * g
    else:
        a0, b0 = s[lo_i], s[hi_i]
        d = b0 - a0
        out = np.where(gamma >= 0.5, b0 - d * (1 - gamma), a0 + d * gamma).reshape(qa.shape)
        if out.ndim == 0:
            out = out[()]
    if np.isnan(s[-1]):  # NaN sorts last; numpy's result is then NaN wherever
        if np.ndim(out) == 0:
            return s[-1]
        np.copyto(out, s[-1])
    return out


def median(x: np.ndarray):
    """np.median(x) over all of x: the same value and type (a tied zero's sign aside, see above): the mean of the
    middle one or two of a sorted copy."""
    a = np.asarray(x)
    if not _SAME_AS_NUMPY or a.size == 0 or a.dtype.kind not in "iuf" or not a.dtype.isnative:
        return np.median(np.sort(a.ravel()), overwrite_input=True)
    s = np.sort(a.ravel())
    n = s.size
    h = n // 2
    value = np.mean(s[h:h + 1] if n % 2 else s[h - 1:h + 1], axis=0)
    if s.dtype.kind == "f" and np.isnan(s[-1]):
        return s[-1]
    return value


def unique(x: np.ndarray) -> np.ndarray:
    """np.unique(x): the sorted distinct values of x, flattened (NaN-free input; otherwise numpy's own)."""
    a = np.asarray(x)
    if not _SAME_AS_NUMPY or a.dtype.kind not in "biuf" or not a.dtype.isnative:
        return np.unique(a)
    s = np.sort(a.ravel())
    if s.dtype.kind == "f" and s.size and np.isnan(s[-1]):
        return np.unique(a)  # numpy folds the NaNs into one
    keep = np.empty(s.shape, dtype=bool)
    keep[:1] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def nanmedian(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """np.nanmedian(a, axis=0) of a 2-D float array: the same values (NaN, with numpy's warning, for a column of
    NaN only), as np.ma.median computes them for numpy (fewer than 600 rows): each column sorted with its NaN
    last, the mean of its middle one or two values taken as their sum halved."""
    a = np.asarray(a)
    if (not _SAME_AS_NUMPY or axis != 0 or a.ndim != 2 or a.dtype not in _FLOATS or not 0 < a.shape[0] < 600
            or a.shape[1] == 0):
        return np.nanmedian(a, axis=axis)
    nan = np.isnan(a)
    if nan.any():
        # np.ma sorts a masked column by argsort of the data with NaN as +inf (so an inf may follow a NaN: a
        # middle NaN is then read as +inf, as np.ma.median does)
        order = np.where(nan, np.inf, a).argsort(axis=0)
        s = np.take_along_axis(a, order, axis=0)
        masked = np.take_along_axis(nan, order, axis=0)
    else:
        s = np.sort(a, axis=0)  # np.ma sorts an unmasked array in place: the same algorithm, the same order
        masked = nan
    n = (~nan).sum(axis=0, keepdims=True)
    h = n // 2
    mid = np.concatenate([np.where(n % 2 == 1, h, h - 1), h], axis=0)
    pair = np.take_along_axis(s, mid, axis=0)
    pair_masked = np.take_along_axis(masked, mid, axis=0)
    empty = n[0] == 0
    pair[pair_masked & ~empty] = np.inf  # np.ma.median reads a masked middle value of a column as +inf ...
    out = np.where(pair_masked & empty, 0, pair).sum(axis=0)  # ... unless all are; np.ma.sum takes those as 0
    np.true_divide(out, 2.0, out=out, casting="unsafe")
    if empty.any():
        import warnings

        for _ in range(int(np.count_nonzero(empty))):
            warnings.warn("All-NaN slice encountered", RuntimeWarning, stacklevel=2)
        out[empty] = np.nan
    return out
