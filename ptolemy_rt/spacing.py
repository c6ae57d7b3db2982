"""Lattice period of a med-mag image, for U-Nets trained at one canonical hole spacing.

The strongest peak of the power spectrum is not always the fundamental: on the real example it is the
(1,1) harmonic at sqrt(2)/d, which reads as a period of d/sqrt(2) (202 px for a 290 px lattice). So we
look in real space: the image's autocorrelation has a peak at every lattice vector, nearly as high as the
highest, and the shortest such peak whose square-lattice neighbours (the vector turned by 90 degrees,
their sum and difference, twice each) are peaks too is a basis vector, whichever harmonic dominates the
spectrum. A hexagonal array (gold foil) has no such pair at its period: there the shortest peak whose
neighbours at 60 degrees are peaks is the basis vector (the square test passes only at sqrt(13) periods,
where a vector of the array and its turn by 90 degrees nearly meet lattice vectors again). The neighbour
test also rejects the rings of maxima a hole's edge and Fresnel fringes put around the origin, and the
ridge a grid bar draws. The basis is refined by least squares over all peaks near
lattice vectors, which gives sub-pixel precision.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .views import median, percentile

__all__ = ["estimate_spacing", "estimate_lattice", "period_estimates", "LatticeEstimate"]

# Work on images binned to at most this many pixels a side (speed; holes are large).
_WORK_SIDE = 512
# A lattice peak must reach this correlation coefficient ...
_MIN_PEAK = 0.08
# ... and this fraction of the highest peak's (grid bars draw strong ridges, lattice peaks may be weaker),
_REL_PEAK = 0.3
# ... and exceed the mean correlation over its circle of lags by this fraction of its height;
_RING_CONTRAST = 0.3
# its square or hexagonal lattice's neighbours must reach this fraction of its height.
_PARTNER = 0.4
# Autocorrelation lags are searched up to this fraction of each side (overlap >= 40 %).
_MAX_LAG = 0.6
# Longest period considered, as a fraction of the smaller side (2.5 periods across it).
_MAX_PERIOD = 0.4
# Shortest period considered, in working (binned) pixels.
_MIN_PERIOD = 5.0
# Gaussian low-pass (working pixels) applied in the autocorrelation against shot noise.
_NOISE_SIGMA = 1.5
# Robust (bar-masked) preparation: pixels darker than this fraction of the 90th percentile are grid bar,
# and the normalised contrast is clipped at this many local standard deviations.
_BAR_LEVEL = 0.2
_ROBUST_CLIP = 1.5
# It gives up (gold film, not bars) when less than this fraction of the image is left unmasked.
_MIN_VALID = 0.5


@dataclass(frozen=True)
class LatticeEstimate:
    """Lattice period (px, the nearest-neighbour distance) and angle (degrees, counter-clockwise on screen, in
    [0, 90) for a square lattice, [0, 60) for a hexagonal one)."""

    spacing_px: float
    angle_deg: float
    strength: float  # autocorrelation coefficient at the basis vector, 0..1
    kind: Literal["square", "hexagonal"] = "square"


def _finite(x: np.ndarray) -> bool:
    """np.all(np.isfinite(x)) without a boolean image: a finite sum proves it (an overflowing one is checked
    in full)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(x.sum()):
            return True
    return bool(np.all(np.isfinite(x)))


def _too_thin(x: np.ndarray, side: int = _WORK_SIDE) -> bool:
    """Whether binning the long side to `side` px leaves no row or column (a 256 x 200000 px strip: cv2.resize
    was asked for an empty image, exit 70); such a strip has no period to measure."""
    return math.ceil(max(x.shape) / side) > min(x.shape)


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (the ragged edge dropped), float32."""
    import cv2

    x = np.ascontiguousarray(image, dtype=np.float32)
    if factor <= 1:
        return x
    rows, cols = x.shape[0] // factor, x.shape[1] // factor
    # INTER_AREA with an integer factor is exactly the block mean.
    return cv2.resize(x[: rows * factor, : cols * factor], (cols, rows), interpolation=cv2.INTER_AREA)


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma, done on an 8x smaller copy (the result is smooth anyway)."""
    import cv2

    small = cv2.resize(x, (max(1, x.shape[1] // 8), max(1, x.shape[0] // 8)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / 8.0, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_LINEAR)


_Binned = tuple[np.ndarray, int, dict]


def _binned(image: np.ndarray) -> _Binned:
    """The working copy of an image (_bin to at most _WORK_SIDE a side), its binning factor, and a memo for
    what both preparations compute alike from it (_prepare)."""
    factor = max(1, math.ceil(max(image.shape) / _WORK_SIDE))
    return _bin(image, factor), factor, {}


@functools.lru_cache(maxsize=8)
def _unmasked_weight(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """np.maximum(_smooth(ones, sigma), 1e-3) for a `shape` image: the plain preparation's normalisation weight,
    which depends on the shape alone (cached: the same shapes recur)."""
    ws = np.maximum(_smooth(np.ones(shape, dtype=np.float32), sigma), 1e-3)
    ws.flags.writeable = False
    return ws


def _prepare(image: np.ndarray, robust: bool = False,
             binned: _Binned | None = None) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Binned, locally normalised and clipped working image (float32, zero mean), its mask of valid pixels
    and the binning factor.

    With `robust`, grid bars (near-opaque bands) are masked out of the local statistics and of the result,
    and the contrast is clipped harder: a bar wider than the normalisation window, or bright broken and empty
    holes on dim carbon film, otherwise outweigh the faint lattice. It masks gold film too (nearly as dark
    as a bar): then it gives None and the caller falls back to the plain preparation. binned: _binned(image),
    where the caller has it already (both preparations of one image bin it alike)."""
    import cv2

    x, factor, memo = _binned(image) if binned is None else binned
    # Illumination and ice gradients, grid bars and bright or dark patches would otherwise dominate the
    # correlation; the window (sigma ~ 1/8 of the image) is too wide to follow the lattice itself.
    sigma = max(x.shape) / 8.0
    if robust:
        # Bars pass under 3 % of the film's dose; a small blur keeps shot noise from speckling the mask,
        # and the erosion drops the bars' soft edges.
        blurred = cv2.GaussianBlur(x, (0, 0), 2.0)
        top = float(x.max())
        if float(x.min()) > 0.0 and math.isfinite(top) and float(blurred.min()) >= _BAR_LEVEL * top:
            # The 90th percentile lies in (0, top], so no blurred pixel is below _BAR_LEVEL of it (a view without
            # bars or dark edges, as the reference): the same empty mask without the percentile's sort (~1 ms).
            dark = np.zeros(x.shape, dtype=bool)
        else:
            bright = float(percentile(x, 90))
            if not (bright > 0.0 and math.isfinite(bright)):
                return None
            dark = blurred < _BAR_LEVEL * bright
        w = cv2.erode((~dark).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32)
        # Mostly "bar" is gold film (or a square's edge): left to the plain preparation.
        if w.mean() < _MIN_VALID:
            return None
    else:
        w = np.ones_like(x)
    # Normalised convolution: local mean and variance over unmasked pixels only. With nothing masked (w all 1)
    # the products with w and the masked selections are skipped: multiplying by 1 and selecting every pixel
    # change no bit.
    inside = w > 0
    unmasked = bool(inside.all())
    if unmasked and "unmasked" in memo:
        # the other preparation of this image, with nothing masked either, normalised it alike
        z = memo["unmasked"]
    else:
        ws = _unmasked_weight(x.shape, sigma) if unmasked else np.maximum(_smooth(w, sigma), 1e-3)
        mean = _smooth(x if unmasked else x * w, sigma) / ws
        var = _smooth(x * x if unmasked else x * x * w, sigma) / ws - mean * mean
        low, high = float(var.min()), float(var.max())
        if low > 0.0 and math.isfinite(high) and low >= 1e-4 * high:
            # The median lies in [low, high] (over the valid pixels too), so it is positive and finite and the
            # floor 1e-4 of it is no higher than any variance: z without the median's sort (~0.7 ms), the same.
            z = (x - mean) / np.sqrt(var)
        else:
            level = float(median(var if unmasked else var[inside]))
            z = (x - mean) / np.sqrt(np.maximum(var, 1e-4 * level)) if level > 0.0 and math.isfinite(level) else None
        if unmasked:
            memo["unmasked"] = z  # before clipping: only the clip differs between the two preparations
    if z is None:
        return None
    clip = _ROBUST_CLIP if robust else 3.0
    z = np.clip(z, -clip, clip)
    if unmasked:
        z -= z.mean()
    else:
        z *= w
        z[inside] -= z[inside].mean()
    if not float(np.abs(z).max()) > 0.0:
        return None
    return z, w, factor


def _fftfreq(n: int) -> np.ndarray:
    """np.fft.fftfreq(n) to the bit (its integers times 1 / n), without importing numpy.fft: the holes pipeline
    needs none of it otherwise (spectrum_periods' rfft2 imports it where that estimator runs), ~1.3 ms of CPU
    a process."""
    k = np.arange(n)
    k[(n - 1) // 2 + 1 :] -= n
    return k * (1.0 / n)


def _ccs_f2(shape: tuple[int, int]) -> np.ndarray:
    """Squared frequency (cycles/px)^2 of every element of a real 2-D DFT in OpenCV's packed (CCS) layout.

    Columns 2k-1, 2k hold the real and imaginary parts of kx = k for every row (row r: the r-th FFT frequency);
    column 0 (kx = 0) and, for an even width, the last column (kx = width / 2) are packed down the rows alike
    (rows 2k-1, 2k: ky = k; for an even height the last row is ky = height / 2)."""
    n, m = shape
    fy = _fftfreq(n)
    out = fy[:, None] ** 2 + (((np.arange(m) + 1) // 2) / m)[None, :] ** 2
    ky2 = (((np.arange(n) + 1) // 2) / n) ** 2
    out[:, 0] = ky2
    if m % 2 == 0:
        out[:, m - 1] = ky2 + 0.25
    return out


# Below this exponent the high-pass 1 - exp(e) is 1.0 in float64 (see _filter).
_HIGH_PASS_ONE = -40.0


@functools.lru_cache(maxsize=8)
def _filter(shape: tuple[int, int], max_period: float) -> np.ndarray:
    """The autocorrelation's band-pass, squared (it filters both factors of the power spectrum), float32 in
    the packed layout of cv2.dft for a `shape` image (cached: the same shapes recur)."""
    # Gain and ice gradients vary on scales beyond any lattice period: a Gaussian high-pass (0.89 of the
    # amplitude kept at the longest period) stops them from burying the lattice peaks in a broad slope.
    f0 = 1.0 / (1.5 * max_period)

    def band(f2: np.ndarray) -> np.ndarray:
        e = -f2 / (f0 * f0)
        # 1 - exp(e) is 1.0 to the bit below e = -38 (exp(e) < 2**-54): exp only where it is not. Most of the
        # spectrum lies far below (exp's underflow path took 2.6 of the 7 ms this table costs a first call).
        keep = np.ones_like(e)
        near = e > _HIGH_PASS_ONE
        keep[near] = 1.0 - np.exp(e[near])
        # Shot noise is white: it adds only to the zero lag, and so scales every lattice peak's coefficient
        # down (below _MIN_PEAK on dim carbon film). A Gaussian low-pass of _NOISE_SIGMA working pixels
        # removes most of it and leaves the hole-sized structure.
        keep = keep * np.exp(-2.0 * (math.pi * _NOISE_SIGMA) ** 2 * f2)
        return (keep * keep).astype(np.float32)

    f2 = _ccs_f2(shape)
    n = shape[0]
    half = n // 2 + 1
    # Rows r and n - r hold frequencies +-k (fftfreq negates them exactly), so every column but the packed
    # ones repeats: half the exponentials (this runs once per shape, on the first image of a process).
    keep = np.empty(f2.shape, dtype=np.float32)
    keep[:half] = band(f2[:half])
    keep[half:] = keep[1 : n - half + 1][::-1]
    packed = [0] + ([shape[1] - 1] if shape[1] % 2 == 0 else [])
    keep[:, packed] = band(f2[:, packed])
    keep.flags.writeable = False
    return keep


def _lags(a: np.ndarray, rows: int, cols: int, max_lag: tuple[int, int]) -> np.ndarray:
    """Lags -max_lag..max_lag of a circular correlation of a (rows, cols) image (negative lags wrap to the end)."""
    lr, lc = max_lag
    n0, n1 = a.shape
    out = np.empty((2 * lr + 1, 2 * lc + 1), dtype=a.dtype)
    # Four block copies (a gather with np.ix_ costs 3x as much).
    out[:lr, :lc] = a[n0 - lr :, n1 - lc :]
    out[:lr, lc:] = a[n0 - lr :, : lc + 1]
    out[lr:, :lc] = a[: lr + 1, n1 - lc :]
    out[lr:, lc:] = a[: lr + 1, : lc + 1]
    return out


def _circular_autocorrelation(x: np.ndarray, shape: tuple[int, int], keep: np.ndarray | None = None) -> np.ndarray:
    """Circular autocorrelation (float32) of x zero-padded to `shape`, its power spectrum times `keep` (packed
    layout, see _filter). cv2's real DFT in float32: a third of scipy.fft's float64 time, and cv2 is loaded
    anyway (scipy.fft's import alone costs ~0.13 s per process)."""
    import cv2

    padded = np.zeros(shape, dtype=np.float32)
    padded[: x.shape[0], : x.shape[1]] = x
    f = cv2.dft(padded)
    power = cv2.mulSpectrums(f, f, 0, conjB=True)
    if keep is not None:
        power *= keep
    return cv2.idft(power, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)


def _autocorrelation(x: np.ndarray, max_period: float, valid: np.ndarray,
                     max_lag: tuple[int, int] | None = None) -> np.ndarray:
    """Unbiased linear autocorrelation coefficient of x high-passed above 1/(1.5 max_period) cycles/px, at lags
    up to max_lag (rows, cols; default all), centred: index [lr, lc] is lag 0 (float32)."""
    import cv2

    rows, cols = x.shape
    lr, lc = (rows - 1, cols - 1) if max_lag is None else (min(max_lag[0], rows - 1), min(max_lag[1], cols - 1))
    # the smallest 5-smooth sizes that hold the linear correlation (as scipy.fft.next_fast_len)
    shape = (cv2.getOptimalDFTSize(2 * rows - 1), cv2.getOptimalDFTSize(2 * cols - 1))
    keep = _filter(shape, float(max_period))
    ac = _lags(_circular_autocorrelation(x, shape, keep), rows, cols, (lr, lc))
    # Divide by the number of valid pixel pairs at each lag, the autocorrelation of the mask (with a bar
    # masked out, lags along the bar keep more pairs than lags across it; unmasked, this is
    # (rows - |dy|) (cols - |dx|)). Lags with few pairs are noise: dropped. Only the lags asked for are
    # computed beyond the transforms.
    if valid.all():
        count_r = rows - np.abs(np.arange(-lr, lr + 1, dtype=np.float32))
        count_c = cols - np.abs(np.arange(-lc, lc + 1, dtype=np.float32))
        rho = np.divide(ac, np.outer(count_r, count_c), out=ac)  # in place: ac is _lags's fresh copy
    else:
        count = _lags(_circular_autocorrelation(valid, shape), rows, cols, (lr, lc))
        rho = np.where(count > 0.2 * float(valid.sum()), ac / np.maximum(count, 1.0), 0.0).astype(np.float32)
    rho /= rho[lr, lc]
    return rho


_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.uint8)  # a pixel's 8 neighbours


def _peaks(rho: np.ndarray, max_lag: tuple[int, int]) -> np.ndarray:
    """Local maxima (3x3) of rho in the half plane of lags, as (n, 3) rows of (dx, dy, rho), sub-pixel."""
    rows, cols = (rho.shape[0] + 1) // 2, (rho.shape[1] + 1) // 2
    lr, lc = max_lag
    sub = rho[rows - 1 - lr : rows + lr, cols - 1 - lc : cols + lc]
    # only the rows of lags dy >= 0 (core row i is dy = i + 1 - lr): the other half plane is never kept
    i0 = max(lr - 1, 0)
    core = sub[1 + i0 : -1, 1:-1]
    is_max = core >= _MIN_PEAK
    half = sub[i0:]
    if min(half.shape) >= 3 and np.isfinite(half.sum(dtype=np.float64)):
        import cv2

        # Above all 8 neighbours is above their maximum, which a dilation by the 3x3 ring gives exactly (a
        # maximum rounds nothing): 2 passes instead of 16 (NaN, which no maximum orders, takes the loop).
        ring = cv2.dilate(np.ascontiguousarray(half), _RING)
        is_max &= core > ring[1:-1, 1:-1]
    else:
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    is_max &= core > sub[1 + i0 + dr : sub.shape[0] - 1 + dr, 1 + dc : sub.shape[1] - 1 + dc]
    i, j = np.nonzero(is_max)
    i = i + i0
    dy, dx = i + 1 - lr, j + 1 - lc
    # one of each +-t pair: the half plane dy > 0, or dy == 0 and dx > 0
    # (and no shorter than _MIN_PERIOD: integer lags, so their squared length decides exactly as the length)
    keep = ~((dy < 0) | ((dy == 0) & (dx <= 0))) & (dx * dx + dy * dy >= _MIN_PERIOD**2)
    i, j, dy, dx = i[keep], j[keep], dy[keep], dx[keep]
    # Parabolic sub-pixel offsets, all maxima at once: the same float32 arithmetic per maximum as one by one
    # (up - 2 ctr + dn, then 0.5 (up - dn) / that), then int64 + float32 lags in float64.
    ctr = sub[i + 1, j + 1]
    up, dn, lf, rt = sub[i, j + 1], sub[i + 2, j + 1], sub[i + 1, j], sub[i + 1, j + 2]
    den_y, den_x = up - np.float32(2) * ctr + dn, lf - np.float32(2) * ctr + rt
    with np.errstate(divide="ignore", invalid="ignore"):
        oy = np.where(den_y < 0, np.float32(0.5) * (up - dn) / den_y, np.float32(0.0))
        ox = np.where(den_x < 0, np.float32(0.5) * (lf - rt) / den_x, np.float32(0.0))
    return np.stack([dx + ox, dy + oy, ctr.astype(np.float64)], axis=1).astype(np.float64).reshape(-1, 3)


@functools.lru_cache(maxsize=8)
def _radii(max_lag: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer radius of every lag in the window, and how many lags each radius has (cached per window)."""
    lr, lc = max_lag
    yy = np.arange(-lr, lr + 1, dtype=np.int64)[:, None]
    xx = np.arange(-lc, lc + 1, dtype=np.int64)[None, :]
    # rint(hypot(x, y)) as before: for integer lags sqrt of the exact sum of squares rounds alike (sqrt(n) of an
    # integer n is never within 1e-7 of a half-integer below 10**6, far beyond either's error), at a third of
    # the cost of np.mgrid and hypot.
    radius = np.rint(np.sqrt(xx * xx + yy * yy)).astype(np.int64).ravel()
    return radius, np.maximum(np.bincount(radius), 1)


def _ring_means(rho: np.ndarray, max_lag: tuple[int, int]) -> np.ndarray:
    """Mean of rho over each circle of integer radius (in lags) within the lag window."""
    rows, cols = (rho.shape[0] + 1) // 2, (rho.shape[1] + 1) // 2
    lr, lc = max_lag
    sub = rho[rows - 1 - lr : rows + lr, cols - 1 - lc : cols + lc]
    radius, counts = _radii((int(lr), int(lc)))
    return np.bincount(radius, weights=sub.ravel()) / counts


@functools.lru_cache(maxsize=8)
def _ring_members(max_lag: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The lags of each circle (_radii) in raster order, concatenated, and where each circle's start."""
    radius, counts = _radii(max_lag)
    # A stable order is one permutation whatever sorts it: 16-bit keys take numpy's radix sort (1.5 ms, not 4.5).
    order = np.argsort(radius.astype(np.uint16) if radius.max() < 1 << 16 else radius, kind="stable")
    starts = np.zeros(len(counts) + 1, dtype=np.intp)
    np.cumsum(np.bincount(radius, minlength=len(counts)), out=starts[1:])  # = searchsorted(radius[order], r)
    return order, starts


def _ring_mean(rho: np.ndarray, max_lag: tuple[int, int], r: int) -> float:
    """_ring_means(rho, max_lag)[min(r, last)] to the bit, summing only that circle's lags (a search looks at
    a few circles; all of them cost ~0.5 ms)."""
    rows, cols = (rho.shape[0] + 1) // 2, (rho.shape[1] + 1) // 2
    lr, lc = int(max_lag[0]), int(max_lag[1])
    _, counts = _radii((lr, lc))
    r = min(r, len(counts) - 1)
    order, starts = _ring_members((lr, lc))
    idx = order[starts[r] : starts[r + 1]]
    sub = rho[rows - 1 - lr : rows + lr, cols - 1 - lc : cols + lc]
    # bincount adds a bin's weights one by one in raster order, as _ring_means's bincount does
    total = np.bincount(np.zeros(len(idx), dtype=np.intp), weights=sub.ravel()[idx], minlength=1)[0]
    return float(total / counts[r])


def _near(peaks: np.ndarray, target: np.ndarray, tol: float) -> int:
    """Index of the peak at +-target within tol, else -1."""
    if len(peaks) == 0:
        return -1
    d = np.minimum(np.hypot(*(peaks[:, :2] - target).T), np.hypot(*(peaks[:, :2] + target).T))
    i = int(np.argmin(d))
    return i if d[i] <= tol else -1


def _turned(t: np.ndarray, turn_deg: int) -> np.ndarray:
    """t turned by 90 or 60 degrees (the second basis vector of a square or hexagonal lattice of t)."""
    if turn_deg == 90:
        # exactly, not through cos(90 degrees), which is 6e-17: square lattices read to the bit as before
        return np.array([-t[1], t[0]])
    if turn_deg != 60:
        raise ValueError(f"turn_deg must be 90 or 60, got {turn_deg!r}")
    return np.array([0.5 * t[0] - _SIN60 * t[1], _SIN60 * t[0] + 0.5 * t[1]])


_SIN60 = math.sqrt(3.0) / 2.0


def _supported(peaks: np.ndarray, t: np.ndarray, max_lag: tuple[int, int], floor: float,
               turn_deg: int = 90) -> bool:
    """Whether the lattice of t and v = t turned by turn_deg (90: square, 60: hexagonal) has peaks (>= floor)
    at v and at most of t +- v, 2t, 2v that fit in the lag window. In a hexagonal lattice t - v is a nearest
    neighbour too, and is required: with v alone, one row of peaks would pass."""
    v = _turned(t, turn_deg)
    strong = peaks[peaks[:, 2] >= floor]
    tol = 0.08 * float(np.hypot(*t)) + 1.0
    if _near(strong, v, tol) < 0:
        return False
    found = predicted = 0
    for a, b in ((1, 1), (1, -1), (2, 0), (0, 2)):
        p = a * t + b * v
        if abs(p[0]) > max_lag[1] - 1 or abs(p[1]) > max_lag[0] - 1:
            continue
        near = _near(strong, p, tol * max(abs(a), abs(b))) >= 0
        if turn_deg == 60 and (a, b) == (1, -1) and not near:
            return False
        predicted += 1
        found += near
    return found >= math.ceil(0.5 * predicted) and (predicted == 0 or found >= 1)


def _refine(peaks: np.ndarray, u: np.ndarray, turn_deg: int = 90) -> np.ndarray:
    """Least-squares basis u (v = u turned by turn_deg) over all peaks within |u|/6 of a lattice vector."""
    v = _turned(u, turn_deg)
    basis = np.stack([u, v], axis=1)
    ab = np.rint(np.linalg.solve(basis, peaks[:, :2].T).T)
    resid = np.hypot(*(peaks[:, :2] - ab @ basis.T).T)
    sel = (resid < np.hypot(*u) / 6.0) & np.any(ab != 0, axis=1)
    if sel.sum() < 2:
        return u
    a, b = ab[sel, 0], ab[sel, 1]
    if turn_deg == 60:
        # t = a u + b v with v = (c ux - s uy, s ux + c uy): tx = (a + c b) ux - s b uy, ty = s b ux + (a + c b) uy
        a, b = a + 0.5 * b, _SIN60 * b
    # t = a u + b v with v = (-uy, ux): tx = a ux - b uy, ty = a uy + b ux
    m = np.concatenate([np.stack([a, -b], 1), np.stack([b, a], 1)])
    rhs = np.concatenate([peaks[sel, 0], peaks[sel, 1]])
    sol, *_ = np.linalg.lstsq(m, rhs, rcond=None)
    return sol if np.all(np.isfinite(sol)) and np.hypot(*sol) > 0 else u


def estimate_lattice(image: np.ndarray) -> LatticeEstimate | None:
    """Square or hexagonal lattice period and angle of an image from its autocorrelation; None without one."""
    x = np.asarray(image)
    if x.ndim != 2 or min(x.shape) < 32 or _too_thin(x) or not _finite(x):
        return None
    # The bar-masked, hard-clipped preparation first: on dim carbon film with grid bars, contamination or
    # broken holes it finds the lattice where the plain one finds none or a harmonic. It masks gold film
    # too (as dark as a bar) and then mostly finds nothing, so the plain preparation is the fallback.
    # (make_medmag seeds 2**40 + 0..95 and 0..39: 121 right, 4 wrong, 11 None; plain alone 110 / 3 / 23.)
    binned = _binned(x)
    for robust in (True, False):
        est = _search(x, robust, binned)
        if est is not None:
            return est
    return None


def _search(x: np.ndarray, robust: bool, binned: _Binned | None = None) -> LatticeEstimate | None:
    """The shortest autocorrelation peak that passes the lattice tests, refined; None without one (binned: as
    _prepare's)."""
    prepared = _prepare(x, robust, binned)
    if prepared is None:
        return None
    z, valid, factor = prepared
    max_lag = (int(_MAX_LAG * z.shape[0]), int(_MAX_LAG * z.shape[1]))
    rho = _autocorrelation(z, _MAX_PERIOD * min(z.shape), valid, max_lag)
    peaks = _peaks(rho, max_lag)
    if len(peaks) < 2:
        return None
    strongest = float(peaks[:, 2].max())
    longest = _MAX_PERIOD * min(z.shape)
    first = True
    for i in np.argsort(np.hypot(peaks[:, 0], peaks[:, 1]), kind="stable"):
        t = peaks[i, :2]
        h = float(peaks[i, 2])
        if math.hypot(*t) > longest:
            break
        if h < _REL_PEAK * strongest:
            continue
        # A lattice peak stands out from its circle of lags; a ring of maxima (hole edges, fringes) does not.
        r = int(round(math.hypot(*t)))
        if h - _ring_mean(rho, max_lag, r) < _RING_CONTRAST * h:
            continue
        # The square test first, so that a square lattice reads as before; then the hexagonal one, on the
        # shortest such peak alone: a hexagonal array's period is its shortest vector, while far out any
        # lattice (a rectangular one, 2u +- v) has vectors near 60 degrees apart within the tolerance.
        turns = (90, 60) if first else (90,)
        first = False
        turn = next((k for k in turns if _supported(peaks, t, max_lag, _PARTNER * h, k)), None)
        if turn is None:
            continue
        u = _refine(peaks, t, turn)
        spacing = float(np.hypot(*u)) * factor
        angle = math.degrees(math.atan2(-u[1], u[0])) % float(turn)
        if angle >= turn:  # -tiny % 90.0 (or 60.0) rounds to the modulus
            angle = 0.0
        return LatticeEstimate(spacing_px=spacing, angle_deg=angle, strength=h,
                               kind="square" if turn == 90 else "hexagonal")
    return None


def estimate_spacing(image: np.ndarray) -> float | None:
    """Lattice period in pixels of a square or hexagonal lattice of holes, or None (blank, noise, no lattice)."""
    est = estimate_lattice(image)
    return None if est is None else est.spacing_px


def period_estimates(image: np.ndarray) -> Iterator[tuple[float, str]]:
    """Candidate lattice periods (px) and their source, most trusted first, none within 3 % of another.

    Sources: "image" (the autocorrelation of the whole image), "crop", "spectrum".

    estimate_spacing's period first (bar-masked, else plain), then the other preparation's, then both on a
    full-resolution central crop of _WORK_SIDE px (binning a large whole-grid-square view puts its 10-20 px
    period at the working floor, where the grid bars' pitch wins), then the strongest peaks of the radial
    power spectrum (a hexagonal array too fine or faint for the tests above shows its first ring of spectral
    peaks at sqrt(3)/2 of its period, within the U-Net's range). The caller runs the U-Net at each and keeps
    the lattice that explains its map best. Lazy: a caller that is convinced early pays for no more.
    """
    x = np.asarray(image)
    if x.ndim != 2 or min(x.shape) < 32 or _too_thin(x) or not _finite(x):
        return
    seen: list[float] = []

    def new(p: float | None) -> bool:
        if p is None or not math.isfinite(p) or any(abs(math.log(p / q)) <= 0.03 for q in seen):
            return False
        seen.append(float(p))
        return True

    def searches() -> Iterator[tuple[float | None, str]]:
        binned = _binned(x)
        for robust in (True, False):
            est = _search(x, robust, binned)
            yield (None if est is None else est.spacing_px), "image"
        if max(x.shape) > _WORK_SIDE:
            r0, c0 = max(0, (x.shape[0] - _WORK_SIDE) // 2), max(0, (x.shape[1] - _WORK_SIDE) // 2)
            crop = x[r0 : r0 + _WORK_SIDE, c0 : c0 + _WORK_SIDE]
            binned = _binned(crop)
            for robust in (True, False):
                est = _search(crop, robust, binned)
                yield (None if est is None else est.spacing_px), "crop"
        for p in spectrum_periods(x):
            yield p, "spectrum"

    for p, source in searches():
        if new(p):
            yield float(p), source  # type: ignore[arg-type]


# Radial power spectrum: peaks this many times above the spectrum's smooth trend count, at most this many.
_SPECTRUM_CONTRAST = 3.0
_SPECTRUM_PEAKS = 2


@functools.lru_cache(maxsize=8)
def _spectrum_geometry(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What spectrum_periods needs of a (rows, cols) image's shape alone (cached: one shape per session): the
    Hann windows (float32), which rfft2 elements fall in a ring below side / 2 cycles, their rings, and each
    ring's element count."""
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    side = min(rows, cols)
    radius = np.hypot(fy, fx) * side  # in cycles per `side` pixels
    bins = np.round(radius).astype(np.int64).ravel()
    n = int(side // 2)
    keep = bins < n
    kept = bins[keep]
    count = np.bincount(kept, minlength=n)
    out = (np.hanning(rows).astype(np.float32), np.hanning(cols).astype(np.float32), keep, kept, count)
    for a in out:
        a.flags.writeable = False
    return out


def spectrum_periods(image: np.ndarray, min_period: float = 6.5) -> list[float]:
    """Periods (px) of the strongest peaks of the radially averaged power spectrum, strongest first."""
    x = np.asarray(image, dtype=np.float32)
    if _too_thin(x, 2 * _WORK_SIDE):
        return []
    factor = max(1, math.ceil(max(x.shape) / (2 * _WORK_SIDE)))
    x = _bin(x, factor)
    rows, cols = x.shape
    lo, hi = percentile(x, [1.0, 99.0])
    if not hi > lo:
        return []
    x = np.clip(x, lo, hi)
    # Illumination and grid bars: removed by a wide high-pass, so the spectrum shows the holes.
    x = x - _smooth(x, max(rows, cols) / 16.0)
    hann_rows, hann_cols, keep, kept_bins, count = _spectrum_geometry(rows, cols)
    x *= hann_rows[:, None]  # in place, in the order x * rows' window * columns' window
    x *= hann_cols[None, :]
    f = np.fft.rfft2(x)
    power = f.real**2 + f.imag**2
    side = min(rows, cols)
    n = int(side // 2)
    total = np.bincount(kept_bins, weights=power.ravel()[keep], minlength=n)
    profile = total / np.maximum(count, 1)
    # Shortest accepted period and at least 2.5 periods across the shorter side.
    k_lo = 3
    k_hi = min(n - 2, int(side / (min_period / factor)))
    if k_hi <= k_lo + 2:
        return []
    logp = np.log(profile + 1e-30)
    trend = _running_median(logp, 8)
    contrast = logp - trend
    peaks = []
    for k in range(k_lo, k_hi + 1):
        peak = contrast[k] >= contrast[k - 1] and contrast[k] > contrast[k + 1]
        if peak and contrast[k] > math.log(_SPECTRUM_CONTRAST):
            # parabolic refinement of the peak on the log profile
            a, b, c = logp[k - 1], logp[k], logp[k + 1]
            d = a - 2 * b + c
            off = 0.5 * (a - c) / d if d < 0 else 0.0
            peaks.append((float(contrast[k]), side / (k + max(-0.5, min(0.5, off))) * factor))
    peaks.sort(reverse=True)
    return [p for _, p in peaks[:_SPECTRUM_PEAKS]]


def _running_median(x: np.ndarray, half: int) -> np.ndarray:
    """[np.median(x[max(1, k - half) : k + half + 1]) for k in range(len(x))], the same values: the full windows
    (odd length: the median is their middle element) by one sort of a strided view, the cut ones at either end
    by median (np.median's values) as before (a Python loop of 250 medians cost ~5 ms of the spectrum's 15)."""
    n = len(x)
    out = np.empty(n, dtype=np.float64)
    width = 2 * half + 1
    lo, hi = half + 1, n - half  # k in [lo, hi) has the whole window x[k - half : k + half + 1] (x[0] left out)
    if hi > lo:
        windows = np.lib.stride_tricks.sliding_window_view(x[1:], width)[: hi - lo]
        out[lo:hi] = np.sort(windows, axis=1)[:, half]
    for k in list(range(min(lo, n))) + list(range(max(hi, lo), n)):
        out[k] = median(x[max(1, k - half) : k + half + 1])
    return out

