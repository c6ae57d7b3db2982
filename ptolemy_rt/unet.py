"""The hole U-Net as a stage: normalise and resample its input, pad or tile, run the graph, return a probability map.

Every step that prepares the U-Net's input is a public function here, and export/ trains on their output,
so what the network saw in training and what it sees at run time cannot drift apart. A scale-normalised
U-Net (manifest `scale`) is run on the image resampled so the lattice period is scale.spacing_px; which
periods to try when the image's own period is unknown is decided here too (period_candidates).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ._orderstats import percentile
from .manifest import UnetScale
from .models import ModelSet, sigmoid
from .options import PADDINGS

__all__ = [
    "normalise_image",
    "resample",
    "scaled_input",
    "scaled_unet_input",
    "unet_pad_shape",
    "tile_spans",
    "probability_map",
    "scaled_probability_map",
    "unet_factor",
    "finer_factor",
    "period_candidates",
    "consistent_periods",
    "MIN_PERIOD_PX",
    "LADDER_STEP",
    "MIN_UNET_PERIOD_FRACTION",
    "SCALE_TOLERANCE",
]

# Shortest lattice period (px) the scale-normalised path accepts: a whole grid square seen at 1x has
# periods of 8-20 px (holes are specified at 40-400 px in med-mag views).
MIN_PERIOD_PX = 8.0
# Whatever max_upscale says, a period is enlarged to at least this fraction of scale.spacing_px: the
# default U-Net finds holes down to ~0.4 of its canonical period (a 22 px period at 1.3x: recall 0.99),
# not at the 10-15 px of a whole grid square at 1x. The cap on the upscale is for cost on fine med-mag
# lattices; below this it would make the hole finder blind.
MIN_UNET_PERIOD_FRACTION = 0.44
# A second look at the image's period where the first map holds no lattice (finer_factor): the period at this
# fraction of scale.spacing_px, where the U-Net sees a grid-square view at 1-2x (MIN_UNET_PERIOD_FRACTION to
# max_upscale x its 10-40 px periods). Upsampled 4x, such a view's film grain is hole-sized at the canonical
# scale and the U-Net fires on it as on the holes (held-out 9903002 at 4x: 1083 candidates for 342 holes, no
# lattice); at half the period the grain is gone again (380 candidates, the lattice found).
FINER_PERIOD_FRACTION = 0.5
# The lattice a scale-normalised U-Net map gives must lie within this factor of the period it was run at
# (the U-Nets are trained for +-12 % of their canonical period).
SCALE_TOLERANCE = 1.25
# Periods tried, longest first, when the image's period cannot be measured: the 40-400 px in
# steps of LADDER_STEP, so every period is within sqrt(LADDER_STEP) of one of them. The U-Net then sees a
# lattice at 0.71-1.41 of its canonical period, within what it finds (down to MIN_UNET_PERIOD_FRACTION; on
# the held-out set its blobs stay regular from 0.4 to 1.25 periods), and find_holes retries a lattice it
# shows at another period at its own. (Steps of SCALE_TOLERANCE, 11 rungs, cost an image without a lattice
# 1 s of U-Net; these 4 a quarter of that.) A try runs the U-Net on unet_factor(period)^2 times the image's
# pixels; tries above this many U-Net input pixels are skipped.
_LADDER_LONGEST = 400.0
_LADDER_SHORTEST = 40.0
LADDER_STEP = 2.0
_LADDER_MAX_PIXELS = 4_000_000


# ---------------------------------------------------------------------------------------------------
# Input


def normalise_image(data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | None:
    """(data - mean) / std as float32 (statistics accumulated in float64); None for a constant image.

    out: a float32 array of data's shape to write the result into (a view into the U-Net's padded input
    saves the copy); it is returned."""
    x = np.asarray(data, dtype=np.float32)
    if x.size == 0:
        return None
    # numpy's x.mean(dtype=float64) and x.std(dtype=float64) unrolled: the same reductions in the same order
    # (the same bits), but the sum over the image is made once and the deviations squared in place.
    mean = float(np.add.reduce(x, axis=None, dtype=np.float64)) / x.size
    if x.flags.c_contiguous and x.size > _LEAF:
        squares = _pairwise_squares(x.reshape(-1), np.float64(mean), np.empty(_LEAF, dtype=np.float64))
    else:
        d = np.subtract(x, np.float64(mean), dtype=np.float64)
        squares = float(np.add.reduce(np.multiply(d, d, out=d), axis=None))
        del d
    std = math.sqrt(squares / x.size)
    # Relative test only: an image scaled to 1e-30 still has structure (an absolute floor called it constant).
    if not (std > 0.0 and math.isfinite(std)) or std < 1e-7 * abs(mean):
        return None
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    m32, s32 = np.float32(mean), np.float32(1.0 / std)
    # In bands of rows that stay in the cache between the two passes (elementwise: the same values).
    if x.ndim != 2:
        np.subtract(x, m32, out=out)
        out *= s32
        return out
    step = max(1, _LEAF // max(1, x.shape[1]))
    for r in range(0, len(x), step):
        band = out[r : r + step]
        np.subtract(x[r : r + step], m32, out=band)
        band *= s32
    return out


# Squared deviations are summed in runs of at most this many (half a megabyte of float64, cache-resident).
_LEAF = 1 << 16


def _pairwise_squares(x: np.ndarray, mean: np.float64, buf: np.ndarray) -> float:
    """np.add.reduce((x - mean)**2) in float64 over a 1-D contiguous float32 x, to the bit, in cache-sized runs.

    numpy sums a contiguous float64 array pairwise: halves (the first rounded down to a multiple of 8) summed
    separately and added, recursively. Following that split down to runs of at most _LEAF elements, each run's
    own pairwise sum is numpy's reduce of it, so the deviations need no image-sized float64 array (the same
    additions in the same order; 1.5 ms of the 4 ms on 1024x1440)."""
    n = x.size
    if n <= _LEAF:
        d = np.subtract(x, mean, out=buf[:n], dtype=np.float64)
        return float(np.add.reduce(np.multiply(d, d, out=d)))
    half = n // 2
    half -= half % 8
    return _pairwise_squares(x[:half], mean, buf) + _pairwise_squares(x[half:], mean, buf)


# Detector counts and normalised floats stay far below this; beyond it float32 sums of squares overflow.
VALUE_LIMIT = 1e15


def tame_extremes(data: np.ndarray, *, finite: bool = False) -> np.ndarray:
    """`data` as it is, unless its magnitude is beyond VALUE_LIMIT (or below its inverse): then made safe.

    Outliers (a hot pixel of 3e38) are clipped to 10 times the 0.01-99.99 percentile span beyond it; an image
    that is large throughout is scaled down by a power of two, so that every later float32 statistic is finite.
    finite: the caller knows `data` is finite (io.as_image checked it): its extremes are then found in one pass.
    """
    if finite and data.ndim == 2 and data.dtype == np.float32 and data.flags.c_contiguous and data.size:
        # cv2.minMaxLoc: both extremes in one pass (0.13 ms on 1024x1440, numpy's two 0.4), the same values; it
        # skips NaN where numpy's propagate, hence finite data only.
        low, high = cv2.minMaxLoc(data)[:2]
        peak = max(abs(high), abs(low))
    else:
        peak = max(abs(float(data.max())), abs(float(data.min())))
    if 0.0 < peak < 1.0 / VALUE_LIMIT:
        # Tiny values (denormals near 1e-38): scaled up by a power of two, exactly, so float32 keeps its precision.
        return (np.asarray(data, dtype=np.float64) * 2.0 ** -math.floor(math.log2(peak / 1e4))).astype(np.float32)
    if not peak > VALUE_LIMIT:
        return data
    x = np.asarray(data, dtype=np.float64)
    p0, p1 = percentile(x, [0.01, 99.99])
    span = p1 - p0
    x = np.clip(x, p0 - 10.0 * span, p1 + 10.0 * span)
    peak = float(np.abs(x).max())
    if peak > VALUE_LIMIT:
        x = x * 2.0 ** -math.ceil(math.log2(peak / 1e4))
    return x.astype(np.float32)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by `factor` (area averaging when shrinking, bicubic when enlarging) to round(side * factor).

    cv2.resize maps pixel centres: input x lands on (x + 0.5) * (new width / old width) - 0.5."""
    rows, cols = image.shape
    new_size = (max(1, int(round(cols * factor))), max(1, int(round(rows * factor))))
    interp = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image, dtype=np.float32), new_size, interpolation=interp)


def scaled_input(normalised: np.ndarray, factor: float) -> np.ndarray | None:
    """What a scale-normalised U-Net is given: the normalised image resampled by `factor`, normalised again
    (area averaging lowers the variance, and such a U-Net is trained on unit variance); None if constant."""
    return normalise_image(resample(normalised, factor))


def _ceil_to(n: int, m: int) -> int:
    return -(-int(n) // int(m)) * int(m)


def unet_pad_shape(shape: tuple[int, int], multiple: int, padding: str = "minimal") -> tuple[int, int]:
    """Padded (rows, cols) for the U-Net: the smallest multiples of `multiple`, or the original's rule.

    "ptolemy": at least 1024 rows and 1440 columns, then up to the next multiple of 512 (1024x1440 ->
    1024x1536), which is how the reference map was made; the padding changes the map by up to ~3e-3.
    """
    rows, cols = int(shape[0]), int(shape[1])
    m = max(1, int(multiple))
    if padding == "minimal":
        return _ceil_to(rows, m), _ceil_to(cols, m)
    if padding == "ptolemy":
        step = max(512, m)
        return _ceil_to(max(rows, 1024), step), _ceil_to(max(cols, 1440), step)
    raise ValueError(f"unet_padding must be one of {PADDINGS}, got {padding!r}")


# ---------------------------------------------------------------------------------------------------
# Running the graph


def tile_spans(n: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, stop, keep_from, keep_to); kept parts partition [0, n)."""
    if n <= tile:
        return [(0, n, 0, n)]
    step = max(1, tile - 2 * margin)
    starts = list(range(0, n - tile, step)) + [n - tile]
    out = []
    for idx, s in enumerate(starts):
        lo = 0 if idx == 0 else (s + starts[idx - 1] + tile) // 2
        hi = n if idx == len(starts) - 1 else (starts[idx + 1] + s + tile) // 2
        out.append((s, s + tile, lo, hi))
    return out


def _unet_logits(padded: np.ndarray, models: ModelSet, multiple: int, max_pixels: int | None) -> np.ndarray:
    """U-Net logits of a padded image, in overlapping tiles when it exceeds `max_pixels`."""
    rows, cols = padded.shape
    if not max_pixels or rows * cols <= max_pixels:
        return np.asarray(models.run("hole_unet", padded[None, None])[0, 0])
    m = max(1, multiple)
    side = max(m, int(math.isqrt(int(max_pixels)) // m) * m)
    tile_r = min(rows, side)
    tile_c = min(cols, max(m, int(max_pixels // tile_r) // m * m))
    # The overlap lets each tile's kept part see context on every side; a tile's borders are its worst part.
    margin_r = min(max(m // 2, 64), max(0, (tile_r - m) // 2))
    margin_c = min(max(m // 2, 64), max(0, (tile_c - m) // 2))
    out = np.empty((rows, cols), dtype=np.float32)
    for r0, r1, kr0, kr1 in tile_spans(rows, tile_r, margin_r):
        for c0, c1, kc0, kc1 in tile_spans(cols, tile_c, margin_c):
            tile = np.ascontiguousarray(padded[r0:r1, c0:c1])
            logits = models.run("hole_unet", tile[None, None])[0, 0]
            out[kr0:kr1, kc0:kc1] = logits[kr0 - r0 : kr1 - r0, kc0 - c0 : kc1 - c0]
    return out


def probability_map(
    normalised: np.ndarray,
    models: ModelSet,
    *,
    unet_padding: str = "minimal",
    pad_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """U-Net probabilities (float32, same shape) of a normalised image, run at the image's own scale.

    The image is padded at the bottom and right with 0 (its mean) to `pad_shape`, else to the shape
    `unet_padding` gives; above the manifest's max_pixels the padded image is run in overlapping tiles.
    """
    spec = models.spec("hole_unet")
    rows, cols = normalised.shape
    if pad_shape is None:
        pad_shape = unet_pad_shape((rows, cols), spec.multiple, unet_padding)
    pr, pc = int(pad_shape[0]), int(pad_shape[1])
    if pr < rows or pc < cols:
        raise ValueError(f"pad_shape {pad_shape} is smaller than the image {normalised.shape}")
    padded = np.zeros((pr, pc), dtype=np.float32)
    padded[:rows, :cols] = normalised
    return _padded_probability(padded, (rows, cols), models)


def _padded_probability(padded: np.ndarray, shape: tuple[int, int], models: ModelSet) -> np.ndarray:
    """U-Net probabilities of the top-left `shape` of a padded input (see probability_map)."""
    spec = models.spec("hole_unet")
    logits = _unet_logits(padded, models, spec.multiple, spec.max_pixels)
    return sigmoid(logits[: shape[0], : shape[1]])


def scaled_unet_input(normalised: np.ndarray, factor: float, multiple: int,
                      unet_padding: str = "minimal") -> tuple[np.ndarray, tuple[int, int]] | None:
    """scaled_input padded for the U-Net (unet_pad_shape; 0 beyond it) and the resampled shape; None if constant."""
    # scaled_input normalised straight into the padded U-Net input (probability_map without its copy).
    resampled = resample(normalised, factor)
    small_shape = resampled.shape
    padded = np.zeros(unet_pad_shape(small_shape, multiple, unet_padding), dtype=np.float32)
    if normalise_image(resampled, out=padded[: small_shape[0], : small_shape[1]]) is None:
        return None
    return padded, (int(small_shape[0]), int(small_shape[1]))


def scaled_probability_map(normalised: np.ndarray, models: ModelSet, factor: float,
                           unet_padding: str = "minimal", *,
                           prepared: tuple[np.ndarray, tuple[int, int]] | None = None) -> np.ndarray:
    """Resample by `factor` (scaled_input), run the U-Net, resample the map back onto the input's pixels.

    prepared: scaled_unet_input(normalised, factor, the U-Net's multiple, unet_padding), where the caller made it
    (find_holes: on a second core); it must be that input."""
    rows, cols = normalised.shape
    if prepared is None:
        prepared = scaled_unet_input(normalised, factor, models.spec("hole_unet").multiple, unet_padding)
    if prepared is None:
        return np.zeros((rows, cols), dtype=np.float32)
    padded, small_shape = prepared
    prob = _padded_probability(padded, small_shape, models)
    # cv2.resize maps pixel centres ((x + 0.5) * f - 0.5), so the map lands back on the input's pixels.
    return cv2.resize(prob, (cols, rows), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------------
# Scale


def unet_factor(period_px: float, scale: UnetScale) -> float:
    """Resampling factor for a scale-normalised U-Net: target period / period, at most scale.max_upscale.

    The cap bounds the U-Net's cost on fine lattices (the default set: 1.3, so <= 2.9 GFLOP for 1024x1440);
    such a U-Net is trained to find holes at periods down to target / max_upscale. Short periods (a whole
    grid square, 8-20 px) are still enlarged to MIN_UNET_PERIOD_FRACTION of the target (above max_pixels
    the U-Net runs in tiles, so memory stays bounded).
    """
    f = float(scale.spacing_px) / float(period_px)
    if not scale.max_upscale:
        return f
    return max(min(f, float(scale.max_upscale)), MIN_UNET_PERIOD_FRACTION * f)


def finer_factor(period_px: float, scale: UnetScale) -> float | None:
    """The resampling factor that puts period_px at FINER_PERIOD_FRACTION of scale.spacing_px, where that is
    finer than unet_factor's by more than SCALE_TOLERANCE (a different view of the holes); else None."""
    f = FINER_PERIOD_FRACTION * float(scale.spacing_px) / float(period_px)
    return f if f * SCALE_TOLERANCE < unet_factor(period_px, scale) else None


def consistent_periods(a: float, b: float, factor: float = SCALE_TOLERANCE) -> bool:
    """Whether periods a and b agree within `factor` either way."""
    return 1.0 / factor <= a / b <= factor


def period_candidates(period: float | None, shape: tuple[int, int], scale: UnetScale) -> list[float]:
    """Periods (px) to run a scale-normalised U-Net at: the measured period, then a ladder covering 400 -> 40 px.

    Rungs are LADDER_STEP apart (every period in 40-400 px within sqrt(LADDER_STEP) of one). Rungs within
    12 % of the measured period are dropped (that try already covered them), as are those whose lower half
    lies beyond half the image's shorter side (no lattice to fit; a rung beyond it is moved down to it) and
    those whose resampled image would exceed _LADDER_MAX_PIXELS (seconds of U-Net on a large image at a
    short period).
    """
    out = [] if period is None else [float(period)]
    rows, cols = int(shape[0]), int(shape[1])
    half_step = math.sqrt(LADDER_STEP)
    longest = min(rows, cols) / 2.0
    rungs = []
    p = _LADDER_SHORTEST * half_step
    while p / half_step < _LADDER_LONGEST * 0.9999:
        if p / half_step <= longest:
            # a rung beyond the longest period that fits (or 400 px) is moved down to it (its lower half still counts)
            rungs.append(min(p, longest, _LADDER_LONGEST))
        p *= LADDER_STEP
    # A rung over the pixel budget is moved up to the shortest period within it (its upper half still counts).
    affordable = float(scale.spacing_px) * math.sqrt(rows * cols / _LADDER_MAX_PIXELS)
    rungs = [p if rows * cols * unet_factor(p, scale) ** 2 <= _LADDER_MAX_PIXELS else max(p, affordable)
             for p in rungs]
    for p in sorted(set(rungs), reverse=True):
        near_measured = period is not None and consistent_periods(p, period, math.sqrt(SCALE_TOLERANCE))
        fits = p <= longest and rows * cols * unet_factor(p, scale) ** 2 <= _LADDER_MAX_PIXELS * 1.0001
        if not near_measured and fits:
            out.append(p)
    return out
