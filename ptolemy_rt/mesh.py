"""The grid mesh of a low-mag atlas: bar pitch, bar width and angle, measured before any segmentation.

The mesh is itself a square lattice (bright squares, dark bars), so its autocorrelation has peaks at every
lattice vector. `detect_mesh`:

1. works on a copy of at most `_ACF_SIDE` px a side (block means), high-passed and with the region outside
   the grid disc (atlas_classes.disc_mask) set to zero; the autocorrelation is divided by the mask's own
   autocorrelation (normalised, so the disc edge and the image border leave no envelope);
2. takes the shortest strong autocorrelation peak that stands above the valley half-way to it as the first
   basis vector a (the shortest lattice vector, not the strongest: the (1, 1) peak can be the stronger one;
   points on a bar's ridge have no valley), reduces a cell diagonal to its sides, checks that a peak sits
   at a rotated by 90 degrees (a square lattice), then fits a and b by least squares to the peaks n a + m b
   along the rows and columns of peaks through the origin, in growing shells (sub-pixel by a quadratic fit
   around each), so the pitch error shrinks with n;
3. folds the full-resolution pixels of a central window into one lattice cell (mean intensity per cell
   bin, smoothed): the cell's profile across a bar gives the bar width (width at half depth) and the phase
   (where the squares' centres are); the bright region's shape tells a square mesh from round holes (its
   area against the product of its widths, and its extent along the cell diagonal against sqrt 2 x its
   width: ~1 for squares, ~0.71 for discs): a med-mag image of holes is "no mesh", and so is a lattice
   whose autocorrelation peak is weak (noise, texture).

When a pitch is too fine for the binned copy, the measurement is repeated on a full-resolution window.

`fit_square_lattice` puts found square centres on the lattice of square centres: row/col per square, and
the lattice points inside the disc that nothing was found at (`found_by: lattice` candidates).

Conventions: x = column, y = row; the mesh angle is counter-clockwise on screen (y down) in [0, 90); the
lattice is origin + i a + j b, a = pitch (cos t, -sin t), b = pitch (sin t, cos t) as in synthetic.lattice_basis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import _orderstats, _workers
from .atlas_classes import disc_mask
from .views import percentile

__all__ = [
    "NO_MESH",
    "LatticeFit",
    "Mesh",
    "MeshDetection",
    "detect_mesh",
    "fit_square_lattice",
    "measure_mesh",
    "mesh_number",
]

NO_MESH = "no grid mesh: this looks like a med-mag or high-mag image"
_ACF_SIDE = 512
# A first look on the _ACF_SIDE copy binned 2x more when it is over this many px a side, kept when the
# pitch there is at least _COARSE_MIN_PITCH px.
_ACF_COARSE_SIDE = 256
_COARSE_MIN_PITCH = 16.0
_FOLD_SIDE_MAX = 1024
MM_IN_A = 1e7


@dataclass(frozen=True)
class Mesh:
    """A measured grid mesh and the segmentation parameters derived from it (all in input pixels)."""

    pitch_px: float  # centre-to-centre distance of neighbouring squares
    bar_width_px: float  # width of a bar at half depth
    angle_deg: float  # counter-clockwise on screen, [0, 90)
    origin: tuple[float, float]  # (x, y) of one square's centre
    basis: tuple[tuple[float, float], tuple[float, float]]  # a, b in (x, y) px
    strength: float  # normalised autocorrelation at the first lattice vector, (0, 1]
    squareness: float  # shape of the folded cell: ~0.9-1 for squares, ~0.71 for round holes

    @property
    def square_side_px(self) -> float:
        """Side of an (ideal) square: pitch - bar width."""
        return max(self.pitch_px - self.bar_width_px, 1.0)

    @property
    def grouping_window(self) -> int:
        """Grouping window for regions.find_regions: it joins mask gaps up to window - 1 px, so it stays
        below the bar width (squares across a 2-4 px bar never merge) and bridges splits inside a square."""
        return int(max(1, min(math.floor(0.6 * self.bar_width_px), math.floor(0.08 * self.pitch_px), 24)))

    @property
    def min_square_area(self) -> float:
        """Smallest hull area (px²) kept as a square: a tenth of a square (edge-cut squares count)."""
        return 0.1 * self.square_side_px ** 2

    @property
    def max_square_area(self) -> float:
        """Largest hull area (px²) of one square; above it a region holds several squares."""
        return 1.6 * self.square_side_px ** 2

    @property
    def hull_tolerance_px(self) -> float:
        """How far a hull may stray from the square it outlines (px): a quarter bar, at least 1 px."""
        return max(1.0, 0.25 * self.bar_width_px)

    def mesh_number(self, pixel_size_A: float | None) -> float | None:
        """Mesh number (bars per inch) when the pixel size is known."""
        return mesh_number(self.pitch_px, pixel_size_A)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (derived parameters included)."""
        return {
            "pitch_px": self.pitch_px,
            "bar_width_px": self.bar_width_px,
            "angle_deg": self.angle_deg,
            "origin": list(self.origin),
            "basis": [list(self.basis[0]), list(self.basis[1])],
            "strength": self.strength,
            "squareness": self.squareness,
            "square_side_px": self.square_side_px,
            "grouping_window": self.grouping_window,
            "min_square_area": self.min_square_area,
            "max_square_area": self.max_square_area,
            "hull_tolerance_px": self.hull_tolerance_px,
        }


@dataclass(frozen=True)
class MeshDetection:
    """The mesh, or None with the reason none was found."""

    mesh: Mesh | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"mesh": None if self.mesh is None else self.mesh.to_dict(), "reason": self.reason}


def mesh_number(pitch_px: float, pixel_size_A: float | None) -> float | None:
    """Mesh number = 25.4 mm / pitch; None when the pixel size is unknown (None, 0 or 1 Å placeholders)."""
    if pixel_size_A is None or not np.isfinite(pixel_size_A) or pixel_size_A <= 1.0 or pitch_px <= 0:
        return None
    return 25.4 * MM_IN_A / (float(pitch_px) * float(pixel_size_A))


# --------------------------------------------------------------------------------------------- autocorrelation


def _binned(img: np.ndarray, f: int) -> np.ndarray:
    """Block means of f x f pixels (the trailing partial blocks dropped)."""
    if f == 1:
        return img
    h, w = img.shape
    return cv2.resize(img[: h - h % f, : w - w % f], (w // f, h // f), interpolation=cv2.INTER_AREA)


def _smooth_background(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The image's large-scale trend over the mask (a normalised Gaussian blur, sigma = longer side / 12),
    computed on an 8x smaller copy: a blur that wide costs seconds at full size."""
    h, w = img.shape
    f = 8 if min(h, w) >= 128 else 1
    sw, sh = max(1, w // f), max(1, h // f)
    si = cv2.resize(img * m, (sw, sh), interpolation=cv2.INTER_AREA)
    sm = cv2.resize(m, (sw, sh), interpolation=cv2.INTER_AREA)
    sigma = max(h, w) / 12.0 / f
    num = cv2.GaussianBlur(si, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(sm, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(num / np.maximum(den, 1e-6), (w, h), interpolation=cv2.INTER_LINEAR)


def _autocorrelation(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Circular autocorrelation of `x` zero-padded to `shape` (float32, lag (0, 0) at index (0, 0)).

    cv2's DFT (float32, packed real spectra): as fast as pocketfft here, and cv2 is loaded anyway, while
    importing scipy.fft costs a process 0.2-0.3 s."""
    h, w = x.shape
    pad = np.zeros(shape, np.float32)
    pad[:h, :w] = x
    spec = cv2.dft(pad, nonzeroRows=h)
    return cv2.idft(cv2.mulSpectrums(spec, spec, 0, conjB=True), flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)


def _normalised_acf(img: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation of the high-passed image over `valid`, divided by the mask's autocorrelation.

    Returns (acf, overlap), both fft-shifted so lag (0, 0) is at (h // 2 + ..) index `centre`; lags where
    the overlap is under a quarter of the valid area are zeroed."""
    h, w = img.shape
    m = valid.astype(np.float32)
    n_valid = float(m.sum())
    # Padded by half a side at least (lags up to half the image do not wrap), to a size the DFT likes.
    shape = (cv2.getOptimalDFTSize(int(1.5 * h) + 1), cv2.getOptimalDFTSize(int(1.5 * w) + 1))
    # The mask's autocorrelation on a worker meanwhile (cv2's DFT gives the same bits on any thread): detect_mesh
    # 19.1 -> 18.1 ms on the 1024² reference atlas with the second core idle; 16.2 -> 16.6 with it busy
    # (OpenBLAS threads spinning after a matrix product). The image's binned copy beside the disc won nothing.
    mask_acf = _workers.submit(_autocorrelation, m, shape)
    # High-pass with a normalised blur (only valid pixels contribute), so the disc edge makes no step.
    x = (img - _smooth_background(img, m)) * m
    # Clip the brightest and darkest outliers (broken squares, dirt) so they do not dominate.
    vals = x[valid]
    lo, hi = percentile(vals, [0.5, 99.5]) if vals.size else (0.0, 0.0)
    x = np.clip(x, np.float32(lo), np.float32(hi)) * m
    acf = np.fft.fftshift(_autocorrelation(x, shape))
    # Not started yet (the second core busy): computed here instead of waited for.
    ovl = np.fft.fftshift(_autocorrelation(m, shape) if mask_acf.cancel() else mask_acf.result())
    good = ovl > np.float32(0.25 * n_valid)
    out = np.zeros(shape, np.float32)
    np.divide(acf, ovl, out=out, where=good)
    zero = float(out[shape[0] // 2, shape[1] // 2])
    if zero <= 0:
        return np.zeros_like(out), good
    out *= np.float32(1.0 / zero)
    return out, good


def _local_maxima(a: np.ndarray, min_value: float) -> np.ndarray:
    """(k, 2) row, col of 3x3 local maxima above min_value."""
    dil = cv2.dilate(a, np.ones((3, 3), np.uint8))
    rr, cc = np.nonzero((a >= dil) & (a > min_value))
    return np.column_stack([rr, cc])


def _peak_near(
    a: np.ndarray, centre: tuple[int, int], lag: np.ndarray, radius: float
) -> tuple[float, float, float] | None:
    """The strongest local maximum within `radius` of lag (x, y): (lag x, lag y, value) sub-pixel, or None."""
    return _peaks_near(a, centre, [[float(lag[0]), float(lag[1])]], radius)[0]


def _peaks_near(a: np.ndarray, centre: tuple[int, int], lags: list[list[float]],
                radius: float) -> list[tuple[float, float, float] | None]:
    """The strongest local maximum within `radius` of each lag (x, y): (lag x, lag y, value) sub-pixel, or None
    where the window leaves the array or its maximum (the first in row-major order) lies on its border. The
    position is refined by a separable quadratic fit on the 3x3 neighbourhood, clipped to half a pixel."""
    if not lags:
        return []
    cy, cx = centre
    h, w = a.shape
    lag = np.asarray(lags, dtype=np.float64).reshape(-1, 2)
    px, py = cx + lag[:, 0], cy + lag[:, 1]
    r0, r1 = np.floor(py - radius).astype(np.int64), np.ceil(py + radius).astype(np.int64) + 1
    c0, c1 = np.floor(px - radius).astype(np.int64), np.ceil(px + radius).astype(np.int64) + 1
    inside = (r0 >= 1) & (c0 >= 1) & (r1 <= h - 1) & (c1 <= w - 1)
    out: list[tuple[float, float, float] | None] = [None] * len(lag)
    k = np.flatnonzero(inside)
    if not k.size:
        return out
    r0, r1, c0, c1 = r0[k], r1[k], c0[k], c1[k]
    hr, hc = int((r1 - r0).max()), int((c1 - c0).max())
    dr, dc = np.arange(hr), np.arange(hc)
    rows, cols = r0[:, None] + dr, c0[:, None] + dc
    # Every window from its top-left corner, the cells past its own size at -inf (the larger windows' shape):
    # the first maximum in row-major order is the window's own.
    win = a[np.minimum(rows, h - 1)[:, :, None], np.minimum(cols, w - 1)[:, None, :]].astype(np.float64)
    win[~((rows < r1[:, None])[:, :, None] & (cols < c1[:, None])[:, None, :])] = -np.inf
    flat = win.reshape(len(k), -1).argmax(axis=1)
    r, c = r0 + flat // hc, c0 + flat % hc
    # The window's maximum on its border is no peak of its own.
    ok = (r != r0) & (r != r1 - 1) & (c != c0) & (c != c1 - 1)
    z = a[r, c].astype(np.float64)
    up, dn = a[r - 1, c].astype(np.float64), a[np.minimum(r + 1, h - 1), c].astype(np.float64)
    lf, rt = a[r, c - 1].astype(np.float64), a[r, np.minimum(c + 1, w - 1)].astype(np.float64)

    def vertex(m1: np.ndarray, p1: np.ndarray) -> np.ndarray:
        # The vertex clipped to [-0.5, 0.5] as min(0.5, max(-0.5, x)) picks: a NaN gives -0.5.
        d = m1 - 2 * z + p1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = 0.5 * (m1 - p1) / d
        x = np.where(x > -0.5, x, -0.5)
        return np.where(d >= 0, 0.0, np.where(x < 0.5, x, 0.5))

    rr, cc = r + vertex(up, dn), c + vertex(lf, rt)
    for j, i in enumerate(k.tolist()):
        if ok[j]:
            out[i] = (float(cc[j] - cx), float(rr[j] - cy), float(z[j]))
    return out


def _lattice_from_acf(acf: np.ndarray, min_strength: float,
                      min_pitch: float = 3.0) -> tuple[np.ndarray, np.ndarray, float] | str:
    """Basis (a, b) in (x, y) lag px and the strength, or a reason string (a first lattice vector under
    min_pitch px: before the refinement, whose peaks grow as the pitch shrinks)."""
    ch, cw = acf.shape[0] // 2, acf.shape[1] // 2
    peaks = _local_maxima(acf, min_strength)
    lags = np.column_stack([peaks[:, 1] - cw, peaks[:, 0] - ch]).astype(np.float64)
    r = np.hypot(lags[:, 0], lags[:, 1])
    keep = r >= 2.5
    lags, r, peaks = lags[keep], r[keep], peaks[keep]
    if len(r) == 0:
        return "no periodic structure"
    vals = acf[peaks[:, 0], peaks[:, 1]]
    # A lattice peak stands above the valley half-way to it (squares over bars there); a point on a bar's
    # ridge (the autocorrelation along a bar's own direction) does not.
    mid = acf[np.rint(ch + lags[:, 1] / 2).astype(np.int64), np.rint(cw + lags[:, 0] / 2).astype(np.int64)]
    strong = vals >= 0.5 * vals.max()
    peaked = strong & (vals - mid >= 0.15 * vals)
    if peaked.any():
        strong = peaked
    # The shortest strong lag is the first lattice vector (one of a half-plane pair)...
    order = np.lexsort((-vals[strong], r[strong]))
    a0 = lags[strong][order[0]]
    strength = float(vals[strong][order[0]])
    # ...unless it is a cell diagonal: then a peak sits at (a0 -+ a0 rotated 90) / 2 (when square brightness
    # varies much more than the bars are wide, the diagonal peak can be the first to pass).
    for _ in range(3):
        rot = np.array([-a0[1], a0[0]])
        half = [(a0 - rot) / 2, (a0 + rot) / 2]
        found = [_peak_near(acf, (ch, cw), h, 0.12 * float(np.hypot(*h))) for h in half]
        found = [f for f in found if f is not None and f[2] >= 0.5 * strength]
        if not found or float(np.hypot(*half[0])) < 2.5:
            break
        best = max(found, key=lambda f: f[2])
        a0, strength = np.array([best[0], best[1]]), float(best[2])
    b0 = np.array([-a0[1], a0[0]])  # a rotated by 90 degrees
    pitch0 = float(np.hypot(*a0))
    if pitch0 < max(3.0, min_pitch):
        return f"period under {max(3.0, min_pitch):g} px"
    pb = _peak_near(acf, (ch, cw), b0, 0.12 * pitch0)
    if pb is None or pb[2] < 0.35 * strength:
        return "the periodic structure is not a square lattice"
    # Least squares over the peaks n a + m b, in growing shells: the integer first guess is off by up to
    # half a pixel, so far peaks are looked for only once the near ones have refined the basis.
    ext = min(ch, cw)
    kmax = max(1, int(ext / pitch0))
    a, b = a0, b0
    k = 2
    while True:
        kk = min(k, kmax)
        rows, targets, weights = [], [], []
        shell = _shell(a, b, kk, 0.95 * ext)
        for ((n, m), _), pk in zip(shell, _peaks_near(acf, (ch, cw), [p for _, p in shell], 0.15 * pitch0)):
            if pk is None or pk[2] < 0.25 * strength:
                continue
            rows.append((n, m))
            targets.append((pk[0], pk[1]))
            weights.append(pk[2])
        if len(rows) < 2:
            return "the periodic structure is not a square lattice"
        nm = np.asarray(rows, dtype=np.float64)
        tg = np.asarray(targets, dtype=np.float64)
        wt = np.sqrt(np.asarray(weights, dtype=np.float64))
        sol, *_ = np.linalg.lstsq(nm * wt[:, None], tg * wt[:, None], rcond=None)
        a, b = sol[0], sol[1]
        if kk >= kmax:
            return a, b, strength
        k *= 2


def _shell(a: np.ndarray, b: np.ndarray, k: int, reach: float) -> list[tuple[tuple[int, int], list[float]]]:
    """The lattice vectors n a + m b, |n|, |m| <= k, whose peaks the basis is fitted to: ((n, m), [x, y]) in
    order of n then m, those longer than `reach` left out.

    The rows and columns through the origin and their neighbours carry the long lever arms; the rest of the
    square of peaks adds little but time. All at once: the same products and sums as n * a + m * b one by one."""
    nm = [(n, m) for n in range(-k, k + 1) for m in range(-k, k + 1)
          if not ((n == 0 and m == 0) or min(abs(n), abs(m)) > 1)]
    f = np.array(nm, dtype=np.float64)
    preds = f[:, :1] * a + f[:, 1:] * b
    far = (np.hypot(preds[:, 0], preds[:, 1]) > reach).tolist()
    return [(q, p) for q, p, out in zip(nm, preds.tolist(), far) if not out]


def _canonical(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The basis in our convention: a = p (cos t, -sin t), b = p (sin t, cos t), t in [0, 90).

    Of a, b, -a, -b exactly one points at an angle (counter-clockwise on screen) in [0, 90): that is the new a;
    the new b is it rotated by +90 on screen, (-a_y, a_x), at the mean length of the two."""
    angles = [(math.degrees(math.atan2(-v[1], v[0])) % 360.0, i) for i, v in enumerate((a, b, -a, -b))]
    t, k = min(angles)
    a1 = (a, b, -a, -b)[k]
    length = 0.5 * (float(np.hypot(*a)) + float(np.hypot(*b)))
    a1 = a1 / float(np.hypot(*a1)) * length
    b1 = np.array([-a1[1], a1[0]])
    if t >= 90.0 - 1e-9:
        t = 0.0
    return a1, b1, float(t)


# --------------------------------------------------------------------------------------------------- folding


def _cell_bins(cx: float, cy: float, c0: float, xs: np.ndarray, ys: np.ndarray, nb: int) -> np.ndarray:
    """Bin (0..nb-1) of floor(nb * frac(c0 + cx x + cy y)) for every pixel (x in xs, y in ys) (int32).

    In float32 on the window's own coordinates (a bin to ~1e-4; a pixel on a bin edge may fall either
    side): a few passes instead of float64 and an integer remainder."""
    u = (cy * ys + c0).astype(np.float32)[:, None] + (cx * xs).astype(np.float32)[None, :]
    u -= np.floor(u)
    u *= np.float32(nb)
    # u rounded up to nb (a tiny negative u's fraction rounds to 1): clipped where it occurs at all, before the
    # cast (u >= 0, so the cast of the clipped value is the clipped cast); a maximum costs a sixth of the clip.
    # (not u.max() < nb: a NaN, from a non-finite lattice, clips as before; no pixels, nothing to clip)
    if u.size and not u.max() < np.float32(nb):
        np.minimum(u, np.float32(nb - 1), out=u)
    return u.astype(np.int32)


# Rows per block in _fold: the block's temporaries (a few 0.5 MB arrays at 1024 px a row) stay in cache.
_FOLD_ROWS = 128


def _fold(img: np.ndarray, valid: np.ndarray, a: np.ndarray, b: np.ndarray, x0: int, y0: int, nb: int) -> np.ndarray:
    """Mean intensity per (nb x nb) bin of the lattice cell (s, t fractional coordinates), NaN where empty."""
    h, w = img.shape
    inv = np.linalg.inv(np.column_stack([a, b]))
    s0, t0 = inv @ np.array([x0, y0], dtype=np.float64)
    s0, t0 = s0 % 1.0, t0 % 1.0
    xs = np.arange(w, dtype=np.float64)
    tot = np.zeros(nb * nb + 1)
    cnt = np.zeros(nb * nb + 1, dtype=np.int64)
    # One thread: on worker threads (each block's sums apart, added in order: the same bits) the fold lost more
    # than it won where the second core is busy (OpenBLAS threads spinning after a matrix product, other
    # processes): 17.4 ms detect_mesh with this loop against 18.7 threaded, 13.6 against 13.1 on an idle core.
    for r0 in range(0, h, _FOLD_ROWS):
        ys = np.arange(r0, min(h, r0 + _FOLD_ROWS), dtype=np.float64)
        idx = _cell_bins(inv[1, 0], inv[1, 1], t0, xs, ys, nb)
        idx *= nb
        idx += _cell_bins(inv[0, 0], inv[0, 1], s0, xs, ys, nb)
        # Pixels off the disc go to one bin past the cell (dropped): cheaper than gathering the valid ones.
        v = valid[r0 : r0 + _FOLD_ROWS]
        if not v.all():
            idx[~v] = nb * nb
        # bincount takes intp indices (an int32 array is converted by each of the two calls).
        idx = idx.astype(np.intp).ravel()
        tot += np.bincount(idx, weights=img[r0 : r0 + _FOLD_ROWS].astype(np.float64).ravel(), minlength=nb * nb + 1)
        cnt += np.bincount(idx, minlength=nb * nb + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tot[: nb * nb] / cnt[: nb * nb]).reshape(nb, nb)


def _fill_nan_circular(cell: np.ndarray) -> np.ndarray:
    """Replace empty bins by the mean of their filled neighbours (cells are periodic), repeatedly."""
    c = cell.copy()
    for _ in range(8):
        bad = ~np.isfinite(c)
        if not bad.any():
            break
        z = np.where(bad, 0.0, c)
        k = (~bad).astype(np.float64)
        num = sum(np.roll(np.roll(z, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        den = sum(np.roll(np.roll(k, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        c = np.where(bad & (den > 0), num / np.maximum(den, 1), c)
    return np.where(np.isfinite(c), c, np.nanmean(c))


def _smooth_circular(cell: np.ndarray) -> np.ndarray:
    """A 3 x 3 binomial smoothing of a periodic cell (it wraps round)."""
    k = (0.25, 0.5, 0.25)
    out = sum(w * np.roll(cell, d, axis=0) for w, d in zip(k, (-1, 0, 1)))
    return sum(w * np.roll(out, d, axis=1) for w, d in zip(k, (-1, 0, 1)))


def _run_width(profile: np.ndarray, level: float) -> float:
    """Width (in bins, linear interpolation at both ends) of the run below `level` around index 0 (circular)."""
    n = len(profile)
    p = np.roll(profile, n // 2)  # index 0 now in the middle
    mid = n // 2
    if p[mid] >= level:
        return 0.0
    lo = hi = mid
    while lo > 0 and p[lo - 1] < level:
        lo -= 1
    while hi < n - 1 and p[hi + 1] < level:
        hi += 1

    def crossing(inside: int, outside: int) -> float:
        # Where the profile crosses `level` between an inside bin and its outside neighbour.
        d = p[outside] - p[inside]
        return (level - p[inside]) / d if d != 0 else 0.5

    left = lo - crossing(lo, lo - 1) if lo > 0 else lo - 0.5
    right = hi + crossing(hi, hi + 1) if hi < n - 1 else hi + 0.5
    return float(right - left)


def _run_centre(profile: np.ndarray) -> int:
    """Index of the middle of the dark run (below half depth) around the profile's minimum (circular): a wide
    bar's darkest bin can lie anywhere along its flat bottom."""
    n = len(profile)
    k = int(np.argmin(profile))
    p = np.roll(profile, n // 2 - k)  # the minimum now at n // 2
    level = 0.5 * (float(p.min()) + float(p.max()))
    lo = hi = n // 2
    while lo > 0 and p[lo - 1] < level:
        lo -= 1
    while hi < n - 1 and p[hi + 1] < level:
        hi += 1
    return round(k + (lo + hi) / 2 - n // 2) % n


def _diagonal(c: np.ndarray) -> np.ndarray:
    """Mean of each bin on a periodic cell's main diagonal and its two neighbours along the row (all rows at
    once: the same sums, in the same order, as row by row)."""
    nb = c.shape[0]
    i = np.arange(nb)
    return (c[i, (i - 1) % nb] + c[i, i] + c[i, (i + 1) % nb]) / 3.0


def _cell_geometry(cell: np.ndarray) -> tuple[float, float, float, float, float]:
    """(bar s bin, bar t bin, bar width in bins, squareness, contrast) of a folded cell."""
    nb = cell.shape[0]
    k = np.array([0.25, 0.5, 0.25])
    prof_s = cell.mean(axis=0)
    prof_t = cell.mean(axis=1)

    def smooth(p: np.ndarray) -> np.ndarray:
        return k[0] * np.roll(p, 1) + k[1] * p + k[2] * np.roll(p, -1)

    bs = _run_centre(smooth(prof_s))
    bt = _run_centre(smooth(prof_t))
    # Roll so the bars lie on index 0 of both axes and a square fills the middle.
    c = np.roll(np.roll(cell, -bt, axis=0), -bs, axis=1)
    centre = slice(int(0.3 * nb), int(0.7 * nb) + 1)
    ps = c[centre, :].mean(axis=0)  # across the bars along s, away from the other bars
    pt = c[:, centre].mean(axis=1)
    hi = float(_orderstats.median(c[centre, centre]))
    lo = float(min(ps.min(), pt.min()))
    if hi <= lo:
        return float(bs), float(bt), 0.0, 0.0, 0.0
    level = 0.5 * (hi + lo)
    ws, wt = _run_width(ps, level), _run_width(pt, level)
    # Squareness from the widths through the square's centre line (a disc's chord there is its diameter,
    # so a disc scores pi / 4 while a square scores 1).
    mid = slice(nb // 2 - 1, nb // 2 + 2)
    cs = nb - _run_width(c[mid, :].mean(axis=0), level)
    ct = nb - _run_width(c[:, mid].mean(axis=1), level)
    # ...and the bright run along the cell's diagonal: a square's reaches its corners (sqrt 2 x its side),
    # a disc's only its diameter, so this ratio is ~1 for squares and ~0.71 for round holes.
    cd = _run_width(-np.roll(_diagonal(c), -(nb // 2)), -level) * math.sqrt(2.0)
    area = float((c > level).sum())
    squareness = min(area / max(cs * ct, 1.0), cd / max(math.sqrt(2.0 * cs * ct), 1.0))
    contrast = (hi - lo) / max(abs(hi), 1e-9)
    # A bar's centre is the middle of its run, not the darkest bin.
    return float(bs), float(bt), 0.5 * (ws + wt), squareness, contrast


def detect_mesh(
    image: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    min_strength: float = 0.3,
    min_squareness: float = 0.8,
) -> MeshDetection:
    """Measure the grid mesh of an atlas (pitch, bar width, angle), or say why there is none."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 32:
        return MeshDetection(None, "image too small to measure a mesh")
    h, w = img.shape
    vmin, vmax = float(img.min()), float(img.max())
    if not (math.isfinite(vmin) and math.isfinite(vmax)):  # min/max see any NaN or inf: no isfinite pass
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        vmin, vmax = float(img.min()), float(img.max())
    if vmax <= vmin:
        return MeshDetection(None, f"{NO_MESH} (constant image)")
    if valid is None:
        valid = disc_mask(img)
    if np.count_nonzero(valid) < 0.02 * h * w:
        return MeshDetection(None, f"{NO_MESH} (no grid disc)")

    f = max(1, math.ceil(max(h, w) / _ACF_SIDE))
    if f > min(h, w):  # binned to no row at all (a 300 x 100000 px strip: cv2.error, exit 70)
        return MeshDetection(None, f"{NO_MESH} (a {h}x{w} px strip)")
    small, vsmall = _binned_pair(img, valid, f)
    found: Any = None
    if max(small.shape) > _ACF_COARSE_SIDE and min(small.shape) >= 2:
        # A coarse mesh is measured on that copy binned 2x more (a quarter of the DFT work); its pitch must
        # span _COARSE_MIN_PITCH binned px there, twice the finest pitch the finer copy takes, so the peaks
        # are located as well relative to the pitch. Otherwise the finer copy decides, as before.
        # (A first guess well under that pitch is not refined: a fine mesh has many peaks to fit.)
        found = _measure_small(*_binned_pair(small, vsmall, 2), min_strength, 0.75 * _COARSE_MIN_PITCH)
        if isinstance(found, tuple) and float(np.hypot(*found[0])) >= _COARSE_MIN_PITCH:
            f *= 2
        else:
            found = None
    if found is None:
        found = _measure_small(small, vsmall, min_strength)
    if isinstance(found, tuple) and f > 1 and float(np.hypot(*found[0])) < 8.0:
        # The pitch is too fine for the binned copy: measure again on a full-resolution window.
        found = None
    if f > 1 and not isinstance(found, tuple):
        y0, x0 = _window_origin(valid, _ACF_SIDE)
        win = img[y0 : y0 + _ACF_SIDE, x0 : x0 + _ACF_SIDE]
        vwin = valid[y0 : y0 + _ACF_SIDE, x0 : x0 + _ACF_SIDE]
        found = _measure_small(win, vwin, min_strength)
        f = 1
    if not isinstance(found, tuple):
        return MeshDetection(None, f"{NO_MESH} ({found or 'no periodic structure'})")
    a_b, b_b, strength = found
    a, b = a_b * f, b_b * f
    pitch = 0.5 * (float(np.hypot(*a)) + float(np.hypot(*b)))
    if pitch > 0.5 * min(h, w):
        return MeshDetection(None, f"{NO_MESH} (period {pitch:.0f} px: under two squares across)")
    a, b, angle = _canonical(a, b)

    # Fold a full-resolution window into one cell: bar width, phase, squareness.
    side = int(min(_FOLD_SIDE_MAX, max(512, 12 * pitch)))
    y0, x0 = _window_origin(valid, side)
    win = img[y0 : y0 + side, x0 : x0 + side]
    vwin = valid[y0 : y0 + side, x0 : x0 + side]
    # About one bin per pixel, and at least ~20 pixels per bin (each bin then mixes many squares).
    nb = int(np.clip(min(math.ceil(pitch), math.sqrt(max(float(np.count_nonzero(vwin)), 1.0) / 20.0)), 16, 256))
    cell = _smooth_circular(_fill_nan_circular(_fold(win, vwin, a, b, x0, y0, nb)))
    bs, bt, width_bins, squareness, contrast = _cell_geometry(cell)
    if contrast < 0.05:
        return MeshDetection(None, f"{NO_MESH} (a lattice with no bar contrast)")
    if squareness < min_squareness:
        return MeshDetection(None, f"{NO_MESH} (a lattice of round holes, squareness {squareness:.2f})")
    bar = width_bins * pitch / nb
    # The square's centre lies half a cell from the bar crossing.
    s_c = (bs + 0.5) / nb + 0.5
    t_c = (bt + 0.5) / nb + 0.5
    origin = s_c * a + t_c * b
    mesh = Mesh(
        pitch_px=pitch,
        bar_width_px=float(bar),
        angle_deg=float(angle),
        origin=(float(origin[0]), float(origin[1])),
        basis=((float(a[0]), float(a[1])), (float(b[0]), float(b[1]))),
        strength=float(strength),
        squareness=float(squareness),
    )
    return MeshDetection(mesh, None)


def _window_origin(valid: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left (row, col) of a side x side window centred on the valid region's centroid, inside the image."""
    h, w = valid.shape
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    cy = 0.5 * (rows[0] + rows[-1]) if rows.size else h / 2
    cx = 0.5 * (cols[0] + cols[-1]) if cols.size else w / 2
    y0 = int(np.clip(round(cy - side / 2), 0, max(0, h - side)))
    x0 = int(np.clip(round(cx - side / 2), 0, max(0, w - side)))
    return y0, x0


def _binned_pair(img: np.ndarray, valid: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """The f-binned image and its valid mask (a block is valid when all its pixels are)."""
    if f == 1:
        return img, valid
    # The mask binned as uint8 (cv2's area mean): 255 only where every pixel is valid.
    return _binned(img, f), _binned(valid.view(np.uint8) * np.uint8(255), f) >= 255


def _measure_small(small: np.ndarray, vsmall: np.ndarray, min_strength: float, min_pitch: float = 3.0):
    """The lattice of an (already binned) image over its valid mask: (a, b, strength) in its px, or a reason."""
    if np.count_nonzero(vsmall) < 64:
        return "no grid disc"
    vals = small[vsmall]
    if float(vals.std()) <= 1e-6 * max(abs(float(vals.mean())), 1.0):
        return "blank image"
    acf, _ = _normalised_acf(small, vsmall)
    return _lattice_from_acf(acf, min_strength, min_pitch)


def measure_mesh(image: np.ndarray, **kwargs: Any) -> Mesh | None:
    """The grid mesh of an atlas, or None when the image shows none (see detect_mesh for the reason)."""
    return detect_mesh(image, **kwargs).mesh


# ------------------------------------------------------------------------------------------------- lattice


@dataclass(frozen=True)
class LatticeFit:
    """Square centres on the mesh lattice origin + col a + row b.

    rows, cols: (n,) per input centre, -1 where it lies off the lattice (over `tolerance` x pitch away).
    missing: (m, 2) lattice points inside the disc and image with no centre near them; missing_rows/cols.
    residual_px: RMS distance of the on-lattice centres to their lattice points after the fit."""

    origin: tuple[float, float]
    basis: tuple[tuple[float, float], tuple[float, float]]
    rows: np.ndarray
    cols: np.ndarray
    missing: np.ndarray
    missing_rows: np.ndarray
    missing_cols: np.ndarray
    residual_px: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "origin": list(self.origin),
            "basis": [list(self.basis[0]), list(self.basis[1])],
            "rows": self.rows.tolist(),
            "cols": self.cols.tolist(),
            "missing": self.missing.tolist(),
            "missing_rows": self.missing_rows.tolist(),
            "missing_cols": self.missing_cols.tolist(),
            "residual_px": self.residual_px,
        }


def fit_square_lattice(
    centres: np.ndarray,
    mesh: Mesh,
    *,
    shape: tuple[int, int] | None = None,
    disc: np.ndarray | None = None,
    tolerance: float = 0.3,
    margin: float = 0.5,
) -> LatticeFit:
    """Row/col of each square centre on the mesh lattice, refined by least squares, and the lattice points
    the centres miss inside the image (at least `margin` x side inside) and the disc mask."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    a = np.asarray(mesh.basis[0], dtype=np.float64)
    b = np.asarray(mesh.basis[1], dtype=np.float64)
    o = np.asarray(mesh.origin, dtype=np.float64)
    pitch = mesh.pitch_px
    if len(c):
        # The phase from the centres themselves (circular mean of their fractional lattice coordinates),
        # so a mesh origin off by part of a cell cannot shift every index.
        st0 = (c - o) @ np.linalg.inv(np.column_stack([a, b])).T
        ang = 2 * np.pi * st0
        phase = np.arctan2(np.sin(ang).mean(axis=0), np.cos(ang).mean(axis=0)) / (2 * np.pi)
        o = o + phase[0] * a + phase[1] * b
    # Rounds: assign indices with the current lattice, refit origin and basis on the inliers.
    for _ in range(3):
        inv = np.linalg.inv(np.column_stack([a, b]))
        st = (c - o) @ inv.T
        ij = np.rint(st)
        pred = o + ij @ np.vstack([a, b])
        d = np.hypot(*(c - pred).T) if len(c) else np.zeros(0)
        inl = d < tolerance * pitch
        if inl.sum() < 3 or len(_orderstats.unique(ij[inl, 0])) < 2 or len(_orderstats.unique(ij[inl, 1])) < 2:
            # Too few to fit a basis: keep the measured one, fit the origin only.
            if inl.any():
                o = o + (c[inl] - pred[inl]).mean(axis=0)
            break
        design = np.column_stack([np.ones(int(inl.sum())), ij[inl]])
        sol, *_ = np.linalg.lstsq(design, c[inl], rcond=None)
        o, a, b = sol[0], sol[1], sol[2]
    inv = np.linalg.inv(np.column_stack([a, b]))
    st = (c - o) @ inv.T if len(c) else np.zeros((0, 2))
    ij = np.rint(st).astype(np.int64)
    pred = o + ij @ np.vstack([a, b]) if len(c) else np.zeros((0, 2))
    d = np.hypot(*(c - pred).T) if len(c) else np.zeros(0)
    inl = d < tolerance * pitch
    residual = float(np.sqrt(np.mean(d[inl] ** 2))) if inl.any() else float("nan")

    # Lattice points over the image (or the centres' extent when no shape is given).
    if shape is not None:
        h, w = shape
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    elif len(c):
        lo, hi = c.min(axis=0), c.max(axis=0)
        corners = np.array([lo, hi, [lo[0], hi[1]], [hi[0], lo[1]]])
    else:
        corners = np.zeros((1, 2))
    cst = (corners - o) @ inv.T
    i0, i1 = int(np.floor(cst[:, 0].min())) - 1, int(np.ceil(cst[:, 0].max())) + 1
    j0, j1 = int(np.floor(cst[:, 1].min())) - 1, int(np.ceil(cst[:, 1].max())) + 1
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    grid_ij = np.column_stack([ii.ravel(), jj.ravel()])
    pts = o + grid_ij @ np.vstack([a, b])
    keep = np.ones(len(pts), dtype=bool)
    if shape is not None:
        m = margin * mesh.square_side_px
        keep &= (pts[:, 0] >= m - 0.5) & (pts[:, 0] <= shape[1] - 0.5 - m)
        keep &= (pts[:, 1] >= m - 0.5) & (pts[:, 1] <= shape[0] - 0.5 - m)
    if disc is not None:
        px = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, disc.shape[1] - 1)
        py = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, disc.shape[0] - 1)
        keep &= disc[py, px]
    if inl.any():
        taken = set(map(tuple, ij[inl].tolist()))
        keep &= np.array([tuple(g) not in taken for g in grid_ij.tolist()], dtype=bool)
    # Rows/cols counted from the lattice's first index over the image, so they are non-negative there.
    rows = np.where(inl, ij[:, 1] - j0, -1).astype(np.int64)
    cols = np.where(inl, ij[:, 0] - i0, -1).astype(np.int64)
    return LatticeFit(
        origin=(float(o[0]), float(o[1])),
        basis=((float(a[0]), float(a[1])), (float(b[0]), float(b[1]))),
        rows=rows,
        cols=cols,
        missing=pts[keep],
        missing_rows=(grid_ij[keep, 1] - j0).astype(np.int64),
        missing_cols=(grid_ij[keep, 0] - i0).astype(np.int64),
        residual_px=residual,
    )
