"""np.percentile, np.median and np.unique's values, to the bit, from one sort and without numpy.ma.

numpy 2's percentile, median and plain unique ask `np.ma` whether their input is masked, and the first such
question imports numpy.ma: ~8 ms of a ~0.3 s `ptolemy-rt holes` process, for arrays that are never masked.
On a sorted copy the same values are a few index operations, and numpy's vectorised sort is also faster than
the introselect partition those functions run (0.44 vs 2.0 ms on 160k float32 values).

The arithmetic is numpy's own (numpy 2.4: linear interpolation `a + (b - a) * g` below g = 0.5 and
`b - (b - a) * (1 - g)` from it, the same operand types; a median is the mean of the middle one or two);
anything else (other dtypes, NaN in unique, empty input, an older numpy) goes to numpy itself.
tests/test_orderstats.py holds each function to numpy's on random, tied and NaN input.
"""

from __future__ import annotations

import numpy as np

__all__ = ["percentile", "median", "unique"]

# The interpolation and result types above are numpy 2.4's (earlier releases differ for float16 and in how a
# Python-number q promotes); with an older numpy every call goes to numpy itself.
_SAME_AS_NUMPY = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def percentile(x: np.ndarray, q):
    """np.percentile(x, q) over all of x (linear method): the same value and type, from a sorted copy."""
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
    """np.median(x) over all of x: the same value and type (the mean of the middle one or two of a sorted copy)."""
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
