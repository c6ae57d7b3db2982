"""Two-component Poisson mixture segmentation, fitted by EM on the intensity histogram.

The likelihood of a pixel depends on its value only, so every sum over pixels in EM is a sum over
histogram bins weighted by the bin counts: one pass over the image builds the histogram, then each
EM iteration costs O(bins) and gives exactly the per-pixel result. The posterior of each bin becomes
a look-up table that a second pass turns into the mask.

Everything is numpy: the passes over the image are a few vectorised operations on blocks of pixels, and EM
is O(bins) per iteration, so compiled kernels would save little and cost a JIT compile or a cache load (with
numba's import, ~0.4 s) in every process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from . import _workers

__all__ = [
    "per_pixel_em",
    "CountScale",
    "MixtureFit",
    "Segmentation",
    "count_scale",
    "histogram",
    "fit_poisson_mixture",
    "apply_posterior",
    "class_separation",
    "segment",
    "COUNT_CAP",
    "TARGET_P999",
]

log = logging.getLogger(__name__)

# Largest integer value used as a count as it is (the uint16 range: detector counts). Larger integer data are
# rescaled like non-integer data: one histogram bin per count would cost GBs at 2**24.
COUNT_CAP = (1 << 16) - 1
# Non-integer data are scaled so that this is their 99.9th percentile (DESIGN.md, Inputs).
TARGET_P999 = 4095.0
# Below this separation (Ashman's D of the hard split) the two classes are one. A unimodal histogram cut
# in two gives about 2.4-3.4, real atlases 3.4-8, so this only catches flat-out overlap; the spatial test
# below catches the rest.
MIN_SEPARATION = 1.5
# Above this ratio of observed to chance-expected label changes between neighbouring pixels the mask has
# no spatial structure (a noise image split in two gives 1.0; real atlases 0.02-0.25).
MAX_INCOHERENCE = 0.5


@dataclass(frozen=True)
class CountScale:
    """How pixel values become counts: count = min(floor(max(v, 0) * scale + 0.5), cap)."""

    scale: float
    integer: bool  # True when the data were used as they are (integer-valued, scale 1)
    min_value: float
    max_value: float


@dataclass(frozen=True)
class MixtureFit:
    """A fitted two-component Poisson mixture (component 1 = bright)."""

    mu_bright: float
    mu_dark: float
    pi_bright: float
    iterations: int
    log_likelihood: float
    converged: bool
    posterior: np.ndarray  # P(bright | count) per histogram bin, float64
    bright: np.ndarray  # posterior > 0.5 per bin, bool (the look-up table of the mask)


@dataclass(frozen=True)
class Segmentation:
    """The square-class mask of an image and how it was obtained; `reason` says why it is unusable."""

    mask: np.ndarray | None  # uint8 (H, W), 1 = bright class; None when there is no usable split
    scale: CountScale
    fit: MixtureFit | None
    separation: float | None  # Ashman's D between the two classes of the hard split
    incoherence: float | None  # neighbour label changes / those expected for a random mask of this density
    reason: str | None


# Pixels per block in the passes over the image: bounds the float64 temporaries (8 MB) whatever the image size.
_BLOCK = 1 << 20


def _integral(data: np.ndarray) -> bool:
    """Whether every value is a whole number (real-valued data usually fail within the first block)."""
    flat = data.ravel()
    for a in range(0, flat.shape[0], _BLOCK):
        part = flat[a : a + _BLOCK]
        if not np.array_equal(part, np.floor(part)):
            return False
    return True


def _counts(data: np.ndarray, scale: float, top: int) -> np.ndarray:
    """Histogram bin of every pixel (uint16, the image's shape): the value itself for integer data (scale 1,
    truncated), else floor(value * scale + 0.5); negatives in bin 0, everything from `top` up in bin `top`."""
    flat = data.ravel()
    out = np.empty(flat.shape[0], dtype=np.uint16)  # top <= COUNT_CAP
    unit = scale == 1.0

    def block(a: int) -> None:
        v = flat[a : a + _BLOCK]
        if unit:
            # float32 compares exactly with top (< 2**24); truncation of a positive value is its floor. Clipped
            # in float32 and cast on the way out (the same values as clipping, then assigning).
            np.clip(v, 0.0, float(top), out=out[a : a + _BLOCK], casting="unsafe")
        else:
            # float64 as the count definition; clipped before the integer conversion, so huge values are safe.
            x = np.floor(v * np.float64(scale) + 0.5)
            np.clip(x, 0.0, float(top), out=x)
            out[a : a + _BLOCK] = x

    # Each block writes its own pixels: on worker threads (_workers), the same counts.
    _workers.run_all(lambda i, _: block(i * _BLOCK), -(-flat.shape[0] // _BLOCK))
    return out.reshape(data.shape)


def _bincount(counts: np.ndarray, top: int) -> np.ndarray:
    """Histogram (int64, top + 1 bins) of uint16 counts, a block at a time (blocks on threads: integer sums, the
    same histogram in any order). Per block cv2.calcHist: bin k holds the pixels of value k (uniform bins of width
    1 from 0: floor(v * 1 + 0) = v), counted in float32, exact while a block holds at most 2**24 pixels; ~3x
    np.bincount, which also casts its input to intp (at 8192² a 512 MB temporary if done whole)."""
    import cv2

    flat = counts.ravel()
    block = min(_BLOCK, 1 << 24)
    out = np.zeros(top + 1, dtype=np.int64)

    def part(i: int, _: int) -> np.ndarray:
        b = flat[i * block : (i + 1) * block]
        return cv2.calcHist([b.reshape(1, -1)], [0], None, [top + 1], [0, top + 1]).reshape(-1).astype(np.int64)

    for h in _workers.run_all(part, -(-flat.shape[0] // block)):
        out += h
    return out


def _hist(data: np.ndarray, scale: float, top: int) -> np.ndarray:
    return _bincount(_counts(data, scale, top), top)


def _label_changes(mask: np.ndarray) -> int:
    """Label changes between 4-neighbours of a 2-D mask (a measure of its spatial coherence)."""
    rows, cols = mask.shape
    step = max(1, _BLOCK // max(1, cols))

    def block(i: int, _: int) -> int:
        a = i * step
        b = min(rows, a + step)
        part = mask[a:b]
        changes = int(np.count_nonzero(part[:, 1:] != part[:, :-1]))
        part = mask[a : min(rows, b + 1)]  # the vertical pairs reach one row into the next block
        return changes + int(np.count_nonzero(part[1:] != part[:-1]))

    return sum(_workers.run_all(block, -(-rows // step)))


def _step(table: np.ndarray) -> int | None:
    """k0 when table[k] == (k >= k0) for every bin (a two-Poisson posterior is monotone in k), else None."""
    on = np.flatnonzero(table)
    if on.size == 0:
        return table.shape[0]
    k0 = int(on[0])
    return k0 if on.size == table.shape[0] - k0 else None


def _apply(data: np.ndarray, scale: float, top: int, table: np.ndarray,
           counts: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    idx = _counts(data, scale, top) if counts is None else counts
    k0 = _step(table)
    if k0 is not None and table.dtype == np.uint8 and k0 <= COUNT_CAP:
        # One comparison instead of a gather over every pixel (the same mask).
        mask = np.greater_equal(idx, np.uint16(k0)).view(np.uint8)
    else:
        mask = table[idx]
    return mask, _label_changes(mask)


def _seq_sum(x: np.ndarray) -> float:
    """Sum in index order (np.sum is pairwise): the EM's sums as a plain loop would add them."""
    return float(np.cumsum(x)[-1]) if x.shape[0] else 0.0


def _e_step(k, n, lgam, mu1, mu2, pi, p):
    # Posterior of the bright component per bin (written into p) and the total log-likelihood.
    # log Poisson(k | mu) = k log(mu) - mu - log(k!)
    lmu1 = math.log(mu1) if mu1 > 0.0 else -np.inf
    lmu2 = math.log(mu2) if mu2 > 0.0 else -np.inf
    lpi = math.log(pi) if pi > 0.0 else -np.inf
    lpi2 = math.log1p(-pi) if pi < 1.0 else -np.inf
    pos = k > 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        a1 = np.where(pos, k * lmu1, 0.0) - mu1 - lgam + lpi
        a2 = np.where(pos, k * lmu2, 0.0) - mu2 - lgam + lpi2
        m = np.maximum(a1, a2)
        e1 = np.exp(a1 - m)
        e2 = np.exp(a2 - m)
        s = e1 + e2
        total = _seq_sum(n * (np.log(s) + m))
        np.divide(e1, s, out=p)
    return total


def _m_step(k, n, p):
    # Class means from the posteriors; (0, 0, False) when a class is empty.
    kn = k * n
    q = 1.0 - p
    w1 = _seq_sum(n * p)
    w2 = _seq_sum(n * q)
    if w1 <= 0.0 or w2 <= 0.0:
        return 0.0, 0.0, False
    return _seq_sum(kn * p) / w1, _seq_sum(kn * q) / w2, True


def _mixing_weight(n, p, total_n):
    return _seq_sum(n * p) / total_n


def _em(k, n, p, max_iter, tol):
    # The original's update order: M-step (means) from the posteriors, E-step with the mixing weight
    # of the previous E-step, mixing weight <- mean posterior; stop when the gain drops below tol.
    # O(bins) numpy per iteration: a compiled loop would cost a JIT compile (or a cache load) per process.
    lgam = np.array([math.lgamma(float(v) + 1.0) for v in k], dtype=np.float64)
    total_n = _seq_sum(n)
    mu1, mu2, ok = _m_step(k, n, p)
    if not ok:
        return 0.0, 0.0, 0.0, 0, -np.inf, False
    ll_next = _e_step(k, n, lgam, mu1, mu2, 0.5, p)
    pi = _mixing_weight(n, p, total_n)
    ll_cur = -np.inf
    iters = 0
    converged = False
    for _ in range(max_iter):
        if ll_next - ll_cur < tol:
            converged = True
            break
        ll_cur = ll_next
        m1, m2, ok = _m_step(k, n, p)
        if not ok:
            break
        mu1, mu2 = m1, m2
        ll_next = _e_step(k, n, lgam, mu1, mu2, pi, p)
        pi = _mixing_weight(n, p, total_n)
        iters += 1
    else:
        converged = ll_next - ll_cur < tol
    return mu1, mu2, pi, iters, ll_next, converged


def _as_f32(data: np.ndarray) -> np.ndarray:
    """C-contiguous float32 (no copy when it already is)."""
    return np.ascontiguousarray(data, dtype=np.float32)


def count_scale(data: np.ndarray, dtype: str | None = None) -> CountScale:
    """Decide how `data` becomes Poisson counts: integer-valued data as they are, others scaled to P99.9 = 4095."""
    data = _as_f32(data)
    lo, hi = float(data.min()), float(data.max())
    if dtype is not None and np.dtype(dtype).kind in "biu":
        integral = True
    else:
        integral = bool(_integral(data))
    if integral and hi <= COUNT_CAP:
        return CountScale(scale=1.0, integer=True, min_value=lo, max_value=hi)
    # Clipping is monotone, so the percentile of the clipped data is the clipped percentile.
    p999 = max(float(np.percentile(data, 99.9)), 0.0)
    ref = p999 if p999 > 0.0 else max(hi, 0.0)
    scale = TARGET_P999 / ref if ref > 0.0 else 1.0
    log.debug(
        "non-count data (range %.6g..%.6g, P99.9 %.6g): scaled by %.6g so P99.9 = %g, then rounded",
        lo, hi, p999, scale, TARGET_P999,
    )
    return CountScale(scale=scale, integer=False, min_value=lo, max_value=hi)


def _top(scale: CountScale) -> int:
    """Index of the last histogram bin (the largest count, capped)."""
    x = math.floor(max(scale.max_value, 0.0) * scale.scale + 0.5)
    return int(min(x, COUNT_CAP))


def histogram(data: np.ndarray, scale: CountScale) -> np.ndarray:
    """Histogram of the counts of `data` (int64, one bin per count 0..max)."""
    return _hist(_as_f32(data), float(scale.scale), _top(scale))


def fit_poisson_mixture(hist: np.ndarray, *, max_iter: int = 100, tol: float = 1e-3) -> MixtureFit | None:
    """Fit a two-component Poisson mixture to a count histogram by EM; None when fewer than two values occur."""
    hist = np.asarray(hist, dtype=np.int64)
    bins = np.flatnonzero(hist)
    if bins.size < 2:
        return None
    k = bins.astype(np.float64)
    n = hist[bins].astype(np.float64)
    # Deterministic start: hard split at the mean count (the original drew random labels; any split
    # that puts the bright tail in one class converges to the same fixed point on real atlases).
    mean = float(np.dot(k, n) / n.sum())
    p = (k > mean).astype(np.float64)
    if not p.any() or p.all():
        return None
    mu1, mu2, pi, iters, ll, converged = _em(k, n, p, int(max_iter), float(tol))
    if not math.isfinite(ll):
        return None
    if mu2 > mu1:
        # Keep component 1 the bright one.
        mu1, mu2, pi, p = mu2, mu1, 1.0 - pi, 1.0 - p
    posterior = np.zeros(hist.shape[0], dtype=np.float64)
    posterior[bins] = p
    # Empty bins never occur in the image; give them the label of the nearer mean for completeness.
    empty = np.ones(hist.shape[0], dtype=bool)
    empty[bins] = False
    idx = np.flatnonzero(empty)
    posterior[idx] = (np.abs(idx - mu1) < np.abs(idx - mu2)).astype(np.float64)
    return MixtureFit(
        mu_bright=float(mu1),
        mu_dark=float(mu2),
        pi_bright=float(pi),
        iterations=int(iters),
        log_likelihood=float(ll),
        converged=bool(converged),
        posterior=posterior,
        bright=posterior > 0.5,
    )


def apply_posterior(data: np.ndarray, scale: CountScale, table: np.ndarray,
                    counts: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Map every pixel to its bin's class in one pass: (uint8 mask, 1 = bright; incoherence ratio).

    counts: the pixels' bins when already known (segment computes them once for the histogram and the mask)."""
    table = np.ascontiguousarray(table, dtype=np.uint8)
    data = _as_f32(data)
    mask, changes = _apply(data, float(scale.scale), table.shape[0] - 1, table, counts)
    rows, cols = data.shape
    q = float(np.count_nonzero(mask)) / mask.size
    pairs = rows * (cols - 1) + (rows - 1) * cols
    expected = 2.0 * q * (1.0 - q) * pairs
    return mask, (float(changes) / expected if expected > 0 else 0.0)


def class_separation(hist: np.ndarray, bright: np.ndarray) -> float:
    """Ashman's D between the pixels labelled bright and dark: |m1 - m0| / sqrt((s1² + s0²) / 2)."""
    k = np.arange(hist.shape[0], dtype=np.float64)
    n = hist.astype(np.float64)
    out = []
    for sel in (bright, ~bright):
        w = n[sel]
        tot = w.sum()
        if tot <= 0:
            return 0.0
        m = float(np.dot(k[sel], w) / tot)
        v = float(np.dot((k[sel] - m) ** 2, w) / tot)
        out.append((m, v))
    (m1, v1), (m0, v0) = out
    spread = math.sqrt((v1 + v0) / 2.0)
    if spread == 0.0:
        return math.inf if m1 != m0 else 0.0
    return abs(m1 - m0) / spread


def segment(
    data: np.ndarray,
    dtype: str | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    min_separation: float = MIN_SEPARATION,
    max_incoherence: float = MAX_INCOHERENCE,
) -> Segmentation:
    """Segment an image into the bright (square) class and the rest; never raises on blank or one-class data."""
    data = _as_f32(data)
    scale = count_scale(data, dtype)
    if scale.max_value == scale.min_value:
        return Segmentation(None, scale, None, None, None, "constant image: no intensity variation to segment")
    if scale.max_value <= 0.0:
        return Segmentation(None, scale, None, None, None, "blank image: no positive values (counts clip at 0)")
    counts = _counts(data, float(scale.scale), _top(scale))
    hist = _bincount(counts, _top(scale))
    fit = fit_poisson_mixture(hist, max_iter=max_iter, tol=tol)
    if fit is None:
        return Segmentation(
            None, scale, None, None, None, "blank image: a single intensity after clipping to counts"
        )
    n_bright = int(hist[fit.bright].sum())
    if n_bright == 0 or n_bright == int(hist.sum()):
        return Segmentation(
            None, scale, fit, None, None, "one-class image: the Poisson mixture puts every pixel in one class"
        )
    sep = class_separation(hist, fit.bright)
    if sep < min_separation:
        return Segmentation(
            None, scale, fit, sep, None,
            f"one-class image: bright and dark classes overlap (separation {sep:.2f} < {min_separation:g})",
        )
    mask, incoherence = apply_posterior(data, scale, fit.bright, counts)
    if incoherence > max_incoherence:
        return Segmentation(
            None, scale, fit, sep, incoherence,
            f"one-class image: the bright class has no spatial structure (neighbour changes {incoherence:.2f} "
            f"of chance > {max_incoherence:g})",
        )
    return Segmentation(mask, scale, fit, sep, incoherence, None)


def per_pixel_em(x: np.ndarray, max_iter: int = 100, tol: float = 1e-3, init: np.ndarray | None = None):
    """Reference EM over every pixel (the original's update order, our deterministic start): slow, plain NumPy.

    Not used by the pipeline: it is what the histogram EM is verified against (tests) and timed against
    (benchmarks). Returns (mu_bright, mu_dark, pi_bright, iterations, log-likelihood, bright mask).
    """
    from scipy.special import gammaln

    x = np.maximum(x, 0).astype(np.float64).ravel()
    p = (x > x.mean()).astype(np.float64) if init is None else init.astype(np.float64).ravel()
    lg = gammaln(x + 1)

    def e_step(mu1, mu2, pi):
        with np.errstate(divide="ignore", invalid="ignore"):
            a1 = np.where(x > 0, x * np.log(mu1), 0.0) - mu1 - lg + np.log(pi)
            a2 = np.where(x > 0, x * np.log(mu2), 0.0) - mu2 - lg + np.log1p(-pi)
        m = np.maximum(a1, a2)
        e1, e2 = np.exp(a1 - m), np.exp(a2 - m)
        return np.sum(np.log(e1 + e2) + m), e1 / (e1 + e2)

    mu1, mu2 = np.sum(x * p) / np.sum(p), np.sum(x * (1 - p)) / np.sum(1 - p)
    ll_next, p = e_step(mu1, mu2, 0.5)
    pi = p.mean()
    ll_cur = -np.inf
    iters = 0
    for _ in range(max_iter):
        if ll_next - ll_cur < tol:
            break
        ll_cur = ll_next
        mu1, mu2 = np.sum(x * p) / np.sum(p), np.sum(x * (1 - p)) / np.sum(1 - p)
        ll_next, p = e_step(mu1, mu2, pi)
        pi = p.mean()
        iters += 1
    if mu2 > mu1:
        mu1, mu2, pi, p = mu2, mu1, 1 - pi, 1 - p
    return mu1, mu2, pi, iters, ll_next, p > 0.5
