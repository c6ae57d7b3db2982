"""What an atlas holds besides squares: the grid disc, and each square's class from its brightness.

`disc_mask` finds the grid disc: at atlas magnification the copper rim and whatever lies beyond it (the
cartridge's clip ring, the holder) pass almost no electrons, so on a map blurred over a few mesh periods the
disc is the one large bright blob. Its convex hull is the disc (the disc is convex; dark squares near its
edge would otherwise bite into it).

`classify_squares` labels squares `empty|thin|thick|broken|off-disc` from their mean intensity relative to
the atlas's own distribution of square brightness (the median square is ordinary ice, "ok"), with the beam's
vacuum level when it is known. Given the squares' lattice cells, a large atlas's median is scaled per square by
the level of the ordinary squares around it (`local_reference`), clipped to LOCAL_GAIN_RANGE: the beam's fall-off
and a montage's tile gains move whole neighbourhoods of squares, never one square, but only by so much; a wider
region of other ice keeps its class against the median. The thresholds are those `synthetic.MODERATE_BRIGHTNESS` calls
moderate; they are parameters. The label goes beside the CNN score, never instead of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ._orderstats import median as _median
from ._orderstats import percentile

__all__ = ["LOCAL_GAIN_RANGE", "LOCAL_MIN_SQUARES", "SQUARE_CLASSES", "ClassThresholds", "classify_squares",
           "disc_mask", "disc_step", "local_reference"]

SQUARE_CLASSES = ("ok", "empty", "thin", "thick", "broken", "off-disc")

# Work on a copy at most this many pixels on a side: the disc is a large, smooth object.
_DISC_SIDE = 256
_DISC_KERNEL = 31  # px: the largest closing kernel at working size


def disc_mask(image: np.ndarray, *, scale_px: float | None = None, level: float = 0.25) -> np.ndarray:
    """Boolean mask (image shape) of the grid disc: False on the rim and beyond.

    Bright pixels (above `level` x the 95th percentile) are closed with a disc `scale_px` wide (default: the
    longer side / 6; a few mesh pitches when the pitch is known), which fills the bars but not the large dark
    background; the largest closed blob's convex hull is the disc. An image with no large dark background (all
    of it inside the disc, or a med-mag image) gives all True."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    full = np.ones((h, w), dtype=bool)
    scale = float(scale_px) if scale_px else max(h, w) / 6.0
    # Closing with an ellipse costs kernel-side squared per pixel: shrink further so the kernel stays small
    # (a 540 px close at 256 px working size took 140 ms; the disc's rim needs no finer resolution).
    f = disc_step((h, w), scale_px=scale_px)
    if f > min(h, w):  # a strip (256 x 60000 px) shrinks to no row at all: no disc to find in it (cv2.error, 70)
        return full
    small = cv2.resize(img[: h - h % f, : w - w % f], (w // f, h // f), interpolation=cv2.INTER_AREA) if f > 1 else img
    hi = float(percentile(small, 95))
    if not np.isfinite(hi) or hi <= 0:
        return full
    bright = (small > level * hi).astype(np.uint8)
    k = int(max(3, round(scale / f)) | 1)
    # Pad with the border's own values... as bright: the disc may run past the image edge.
    pad = k
    padded = cv2.copyMakeBorder(bright, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    closed = _close_ellipse(padded, k)[pad:-pad, pad:-pad]
    if closed.all():
        return full
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    if n <= 1:
        return full
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    # The hull of the blob is the hull of its outer contour.
    contours, _ = cv2.findContours((labels == biggest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    small_mask = np.zeros(closed.shape, np.uint8)
    cv2.fillConvexPoly(small_mask, hull, 1)
    if f == 1:
        return small_mask.astype(bool)
    # Back to full size (nearest neighbour), the trailing partial blocks copied from their neighbours. The
    # 0/1 bytes are read as bools in place (no third full-size pass: 64 M pixels at 8192²).
    big = _upscale_nearest(small_mask, f)
    if big.shape == (h, w):
        return big.view(bool)
    out = np.empty((h, w), np.uint8)
    out[: big.shape[0], : big.shape[1]] = big
    if big.shape[0] < h:
        out[big.shape[0]:, : big.shape[1]] = big[-1:, :]
    if big.shape[1] < w:
        out[:, big.shape[1]:] = out[:, big.shape[1] - 1 : big.shape[1]]
    return out.view(bool)


def disc_step(shape: tuple[int, int], *, scale_px: float | None = None) -> int:
    """The side (px) of disc_mask's working pixel for an image of `shape`: its rim is placed to about this."""
    h, w = shape
    scale = float(scale_px) if scale_px else max(h, w) / 6.0
    return max(1, math.ceil(max(h, w) / _DISC_SIDE), math.ceil(scale / _DISC_KERNEL))


def _close_ellipse(binary: np.ndarray, k: int) -> np.ndarray:
    """cv2.morphologyEx(binary, MORPH_CLOSE, the k x k ellipse), the same bytes for a 0/1 uint8 image.

    The ellipse is a stack of centred horizontal runs, one per row: a dilation by it is the maximum of each
    run's line dilation shifted by its row's offset (cv2 visits every one of the ellipse's ~0.8 k² points for
    each pixel; ~1.7x faster at k = 29), and the erosion is the complement's dilation (cv2's borders: pixels
    outside count for neither). Any other kernel shape goes to cv2."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    r = k // 2
    half: list[int | None] = []
    for row in kernel:
        on = np.flatnonzero(row)
        if on.size == 0:
            half.append(None)
        elif k % 2 == 1 and on[0] == r - (on[-1] - r) and on.size == on[-1] - on[0] + 1:
            half.append(int(on[-1] - r))
        else:
            return cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    lines = {w: np.ones((1, 2 * w + 1), np.uint8) for w in set(half) if w is not None}

    def dilate(x: np.ndarray) -> np.ndarray:
        rows = {w: cv2.dilate(x, line) for w, line in lines.items()}
        out = np.zeros_like(x)
        n = x.shape[0]
        for i, w in enumerate(half):
            dy = i - r  # kernel row i reaches the source row dy away
            if w is None or abs(dy) >= n:
                continue
            if dy >= 0:
                np.maximum(out[: n - dy], rows[w][dy:], out=out[: n - dy])
            else:
                np.maximum(out[-dy:], rows[w][: n + dy], out=out[-dy:])
        return out

    return 1 - dilate(1 - dilate(binary))


def _upscale_nearest(small: np.ndarray, f: int) -> np.ndarray:
    """cv2.resize(small, (w f, h f), interpolation=INTER_NEAREST), the same bytes: output pixel x takes source
    pixel min(floor(x * (1 / f)), w - 1) (rows likewise; cv2's resizeNN). Where that is each pixel f times (all
    but a few f: 49 x (1 / 49) < 1), the rows and columns are repeated by a broadcast copy (4x faster)."""
    sh, sw = small.shape

    def source(n: int) -> np.ndarray:
        return np.minimum(np.floor(np.arange(n * f) * (1.0 / f)).astype(np.intp), n - 1)

    if np.array_equal(source(sw), np.repeat(np.arange(sw), f)) and \
            np.array_equal(source(sh), np.repeat(np.arange(sh), f)):
        out = np.empty((sh, f, sw * f), small.dtype)
        out[...] = np.repeat(small, f, axis=1)[:, None, :]
        return out.reshape(sh * f, sw * f)
    return cv2.resize(small, (sw * f, sh * f), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class ClassThresholds:
    """Bounds of the classes, as brightness relative to the atlas's median square (up to its illumination: see
    classify_squares' cells) or to vacuum."""

    thick_below: float = 0.85  # relative to the median square (times the clipped local gain)
    thin_above: float = 1.18
    empty_above: float = 1.6  # relative, when the vacuum level is unknown
    broken_above: float = 2.2
    empty_vacuum: float = 0.85  # transmission (brightness / vacuum), when the vacuum level is known
    broken_vacuum: float = 0.97
    broken_fraction: float = 0.15  # share of a square's pixels at the vacuum level that makes it broken

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return dict(self.__dict__)


# local_reference: squares within this many lattice cells (a square window) give a square's first, rough level, and
# within this many its level among the ordinary squares (those the rough level calls neither thick nor thin); a
# level needs this many squares in its window (else the rough one, else the atlas's median). Atlases with fewer
# squares than LOCAL_MIN_SQUARES keep the atlas's median: the windows' own minimum counts would do, but the shipped
# goldens' atlas0 (under 200 squares) then changes; with LOCAL_GAIN_RANGE the step at the gate is at most a
# 0.8-1.25 rescaling of the reference.
_LOCAL_ROUGH = 5
_LOCAL_FINE = 2
_LOCAL_MIN_ROUGH = 25
_LOCAL_MIN_FINE = 5
LOCAL_MIN_SQUARES = 200
# The local level over its own median (across the atlas) is used only within this range: what montage tile gains and
# the beam's fall-off do to whole neighbourhoods (tuning atlases 9.8e6 / 9.9e6, squares' local level over its
# median: montages 0.78-1.24 / 0.79-1.31 from the 0.5th to the 99.5th percentile, 0.83-1.13 / 0.81-1.25 from the
# 2nd to the 98th; every other category within 0.86-1.11 at 0.5-99.5 %). Beyond it a region differs in its ice,
# not its illumination: a thick band or an empty rim wider than the windows would otherwise become its own
# "ordinary" level and be called ok; clipped, it keeps a class away from ok (a region of x0.6 reads 0.75, thick;
# one of x1.8 reads 1.44 inside, thin rather than empty, and ok squares bordering it on two sides may read 0.8,
# thick). Taking the level only from squares that could be ok under such a gain kept those classes too, but cost
# thick_empty atlases 67 of 667 ok squares (tuning 9.8e6): their thin squares then pulled the level up.
LOCAL_GAIN_RANGE = (0.8, 1.25)
# The lattice cells' bounding box may hold at most this many cells per square (plus a constant) before
# local_reference falls back to the atlas's median: a stray cell far off would otherwise allocate a huge grid.
_LOCAL_MAX_CELLS_PER_SQUARE = 16
_LOCAL_MAX_CELLS_EXTRA = 1 << 16
_LOCAL_RUN = 4096


def _window_medians(values: np.ndarray, cells: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per square: the median of the finite `values` of the squares whose lattice cells lie within `radius` of its
    own (a square window), and how many there were. Two squares in one cell: the later one counts."""
    lo = cells.min(axis=0)
    ij = cells - lo + radius
    shape = tuple(int(v) for v in ij.max(axis=0) + radius + 1)
    grid = np.full(shape, np.nan)
    grid[ij[:, 0], ij[:, 1]] = values
    d = np.arange(-radius, radius + 1)
    di, dj = (v.ravel() for v in np.meshgrid(d, d, indexing="ij"))
    med = np.full(len(values), np.nan)
    count = np.zeros(len(values), dtype=np.int64)
    # In runs of squares: a fine mesh's 100 000 squares' windows at once would take ~100 MB.
    for a in range(0, len(values), _LOCAL_RUN):
        part = ij[a : a + _LOCAL_RUN]
        window = np.sort(grid[part[:, 0:1] + di[None, :], part[:, 1:2] + dj[None, :]], axis=1)  # NaN sort last
        c = np.count_nonzero(np.isfinite(window), axis=1)
        rows = np.arange(len(part))
        mid = 0.5 * (window[rows, np.maximum(c - 1, 0) // 2] + window[rows, c // 2])
        med[a : a + len(part)] = np.where(c > 0, mid, np.nan)
        count[a : a + len(part)] = c
    return med, count


def _cells_compact(cells: np.ndarray) -> bool:
    """Whether the window grid over `cells`' bounding box (with the rough window's margin) stays small."""
    if cells.shape[0] == 0:
        return False
    extent = cells.max(axis=0).astype(np.float64) - cells.min(axis=0) + 2 * _LOCAL_ROUGH + 1
    limit = _LOCAL_MAX_CELLS_PER_SQUARE * cells.shape[0] + _LOCAL_MAX_CELLS_EXTRA
    return float(extent[0]) * float(extent[1]) <= limit


def local_reference(brightness: np.ndarray, cells: np.ndarray, *,
                    thresholds: ClassThresholds | None = None) -> np.ndarray:
    """Per square, the brightness of ordinary ice around it: the median of the squares near it in the lattice
    (`cells`: (n, 2) integer lattice indices) that a rough local level (a wider window's median) calls neither
    thick nor thin. A patch of other ice wider than about half the wide window becomes its own level: hence
    classify_squares uses it only within LOCAL_GAIN_RANGE of its median. Where too few squares are near, the wider
    window's median, else the atlas's median square (for every square when the cells' bounding box is far larger
    than their number)."""
    t = ClassThresholds() if thresholds is None else thresholds
    b = np.asarray(brightness, dtype=np.float64).reshape(-1)
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    good = np.isfinite(b) & (b > 0)
    overall = float(_median(b[good])) if good.any() else float("nan")
    if not _cells_compact(cells):
        return np.full(b.shape, overall)
    vals = np.where(good, b, np.nan)
    rough, n_rough = _window_medians(vals, cells, _LOCAL_ROUGH)
    rough = np.where(n_rough >= _LOCAL_MIN_ROUGH, rough, overall)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = vals / rough
    ordinary = (rel >= t.thick_below) & (rel <= t.thin_above)
    fine, n_fine = _window_medians(np.where(ordinary, vals, np.nan), cells, _LOCAL_FINE)
    return np.where(n_fine >= _LOCAL_MIN_FINE, fine, rough)


def classify_squares(
    brightness: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    in_disc: np.ndarray | None = None,
    vacuum: float | None = None,
    vacuum_fraction: np.ndarray | None = None,
    thresholds: ClassThresholds = ClassThresholds(),
    cells: np.ndarray | None = None,
) -> tuple[str, ...]:
    """One class per square from its mean intensity relative to the atlas's own distribution.

    brightness: (n,) mean counts per square. reference: the atlas's square brightness distribution
    (default: `brightness` itself); its median is ordinary ice ("ok"). in_disc: (n,) False for squares outside the
    grid disc ("off-disc"). vacuum: counts through no specimen (e.g. a broken square's or the beam's level),
    when known: then empty and broken are told from transmission, else from the relative brightness.
    vacuum_fraction: (n,) share of each square's pixels at the vacuum level (broken film), when known.
    cells: (n, 2) the squares' lattice indices (used with LOCAL_MIN_SQUARES squares or more and no `reference`): the
    median is scaled, per square, by the level of the ordinary squares around it (local_reference) over that level's
    median, clipped to LOCAL_GAIN_RANGE (tile gains, beam fall-off): classes stay relative to the atlas's median
    square, up to the illumination."""
    b = np.asarray(brightness, dtype=np.float64).reshape(-1)
    n = b.shape[0]
    if n == 0:
        return ()
    ref = b if reference is None else np.asarray(reference, dtype=np.float64).reshape(-1)
    ref = ref[np.isfinite(ref) & (ref > 0)]
    median = float(_median(ref)) if ref.size else float("nan")
    t = thresholds
    out = np.full(n, "ok", dtype=object)
    if np.isfinite(median) and median > 0:
        rel = b / median
        if cells is not None and reference is None and n >= LOCAL_MIN_SQUARES:
            local = local_reference(b, cells, thresholds=t)
            seen = local[np.isfinite(local) & (local > 0)]
            if seen.size:
                # Relative to its own median (an atlas of many thick squares keeps its median's level: the ordinary
                # squares' median sits higher there, and called fewer squares thin or empty), and clipped to what
                # illumination does: a region of other ice keeps its class against the atlas's median.
                with np.errstate(divide="ignore", invalid="ignore"):
                    gain = np.clip(local / float(_median(seen)), *LOCAL_GAIN_RANGE)
                    rel = np.where(np.isfinite(gain), b / (median * gain), rel)
        out[rel < t.thick_below] = "thick"
        out[rel > t.thin_above] = "thin"
        if vacuum is not None and vacuum > 0:
            trans = b / float(vacuum)
            out[trans >= t.empty_vacuum] = "empty"
            out[trans >= t.broken_vacuum] = "broken"
        else:
            out[rel > t.empty_above] = "empty"
            out[rel > t.broken_above] = "broken"
    if vacuum_fraction is not None:
        out[np.asarray(vacuum_fraction, dtype=np.float64).reshape(-1) > t.broken_fraction] = "broken"
    if in_disc is not None:
        out[~np.asarray(in_disc, dtype=bool).reshape(-1)] = "off-disc"
    return tuple(str(s) for s in out)
