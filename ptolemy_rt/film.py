"""Film mask: where the holey film is, as opposed to grid bars, the square's dark edge and outside the square.

Grid bars and the areas outside a grid square pass (nearly) no electrons: they are dark and wide, many hole
periods across. Holes are bright and small, and the film between them is grey (carbon) or dark (gold foil,
nearly as opaque as a bar). So a grey-level closing (dilate, then erode) with a disc a little wider than
the gaps between holes spreads every hole's brightness over the film around it, while a bar, wider than the
disc, stays dark; a threshold at a fraction of the bright level then splits film from bar. The closing runs
on a copy shrunk so that a period is ~8 px (INTER_AREA keeps each hole's mean brightness), which makes it
cheap at any magnification.

Pure functions over arrays; nothing here knows about lattices or models.
"""

from __future__ import annotations

import math

import numpy as np

from ._orderstats import median, percentile, unique
from .views import finite_float32

__all__ = ["FILM_LEVEL", "film_mask", "film_working_copy", "on_film"]

# Film is where the closed image exceeds this fraction of its bright level (99th percentile) above the dark
# level (0 for count data). Bars and outside areas are near zero dose; vignetting leaves film corners at
# >= ~0.5 of the centre's level, so 0.35 splits them with margin on both sides.
FILM_LEVEL = 0.35
# The closing's disc spans this many periods: the widest gap between holes (a square cell's centre, 0.71
# periods from its holes' centres, ~0.4 from their edges) closes, bars (many periods wide) stay.
_CLOSING_PERIODS = 1.2
# Broken film: pixels brighter than the film by this fraction of the hole-to-film contrast, in areas a
# disc of this many periods fits into (a hole is < 1 period across, so only torn film is that wide).
_BROKEN_LEVEL = 0.6
_BROKEN_PERIODS = 1.5
# ... and flat: the brightness range within 0.3 periods below this share of its median on the film (where
# holes everywhere make it the hole-to-film contrast).
_FLAT_SHARE = 0.5
# ... over a core that holds a disc this many periods wide (a cell's centre between holes is flat over
# < 0.5 periods).
_FLAT_CORE_PERIODS = 1.0
# Bar darkness: film is never darker than this share of the image's bright level (bars and the outside
# pass almost no electrons; film whose holes an ice gradient dims stays above it).
_DARK_LEVEL = 0.05
# Below this share of the bright level, film must be textured by holes (_textured: a brightness range
# within 0.3 periods above _TEXTURE_LEVEL of the bright level; a smooth ramp in the dark outside stays below).
_DIM_LEVEL = 0.15
_TEXTURE_LEVEL = 0.05
# Off-film areas must hold a disc this many periods wide.
_OFF_MIN_PERIODS = 1.5
# Off-film areas that film encloses and that are smaller than a disc this many periods across are film (dimmed
# holes; _islands).
_ISLAND_PERIODS = 3.0
# The local bright level is the closed image's maximum within this many periods (a disc's diameter): wide
# enough to reach bright film across a bar's edge, narrow against gradients (tens of periods).
_LOCAL_PERIODS = 4.0
# Working scale: a period of about this many pixels.
_WORK_PERIOD_PX = 8.0


def film_mask(image: np.ndarray, spacing_px: float | None = None, *, finite: bool = False,
              working: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (image shape), True on holey film, False on grid bars, dark edges, outside the square and
    on broken film (areas as bright as a hole but wider than 1.5 periods).

    spacing_px: the hole period in pixels; None estimates it from the bright blobs (falls back to 1/16 of
    the shorter side). A blank or constant image is all film. finite: the caller knows the image is finite
    as float32 (a pass over it saved; the same result). working: film_working_copy(image, p, finite=finite)
    for some period p, used where it has the shape this spacing gives (the same array; else ignored).
    """
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"film_mask needs a non-empty 2-D image, got shape {img.shape}")
    import cv2

    rows, cols = img.shape
    data = np.asarray(img, dtype=np.float32) if finite else finite_float32(img)
    if spacing_px is None or not (math.isfinite(spacing_px) and spacing_px > 0):
        spacing_px = _estimate_period(data)
    factor = max(1.0, float(spacing_px) / _WORK_PERIOD_PX)
    size = _working_size(img.shape, factor)
    if size is None:
        small = data
    elif working is not None and working.shape == (size[1], size[0]) and working.dtype == np.float32:
        small = working
    else:
        small = cv2.resize(data, size, interpolation=cv2.INTER_AREA)
    period = float(spacing_px) / factor
    # Shot noise would survive the dilation as its maxima: smooth below the hole size first.
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(0.5, 0.12 * period))
    k = 2 * math.ceil(0.5 * _CLOSING_PERIODS * period) + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    # Pad with the border's own values (reflect): a constant pad would make the image edge look like film
    # or like a bar.
    closed = cv2.morphologyEx(small, cv2.MORPH_CLOSE, disc, borderType=cv2.BORDER_REFLECT)
    lo = min(0.0, float(percentile(closed, 0.5)))
    hi = float(percentile(closed, 99.0))
    if not hi > lo:
        return np.ones((rows, cols), dtype=bool)
    span = hi - lo
    dark = lo + _DARK_LEVEL * span
    dim = lo + _DIM_LEVEL * span
    # Torn film first: it is brighter than any hole and would raise the bright level around it.
    broken = _broken_film(small, closed > dark, period)
    if broken is not None:
        # its blurred rim too (a period), or the film around a tear would look dim against it
        kb = 2 * math.ceil(period) + 1
        rim = cv2.dilate(broken.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kb, kb))).astype(bool)
        closed = np.where(broken, lo, closed)
        bright = np.where(rim, lo, closed)
    else:
        bright = closed
    # The level is FILM_LEVEL of the brightest film within _LOCAL_PERIODS, not of the whole image's: an ice
    # gradient or vignetting can leave film (and its holes) several times dimmer on one side than on the
    # other, while a bar next to film is dark against that film wherever it is. Far from any film, bar
    # darkness (a share of the global bright level) decides.
    kl = 2 * math.ceil(0.5 * _LOCAL_PERIODS * period) + 1
    local_hi = cv2.dilate(bright, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kl, kl)),
                          borderType=cv2.BORDER_REFLECT)
    level = lo + FILM_LEVEL * (local_hi - lo)
    # Dim areas (below _DIM_LEVEL of the bright level, far from bright film) are film only where holes
    # texture them: the dark grey outside a square is as dim as film an ice gradient darkened, but flat.
    spread = _spread(small, period)
    busy = spread > _TEXTURE_LEVEL * span  # within 0.3 periods of a hole's edge
    textured = _textured(busy, period)
    dim_margin = np.maximum((closed - dim) / span, np.where(textured, 0.05, -0.05))
    # The film's edge, to sub-pixel precision once scaled up: where the lowest margin crosses zero.
    edge = np.minimum(np.minimum((closed - level) / span, (closed - dark) / span), dim_margin).astype(np.float32)
    # Off-film areas narrower than _OFF_MIN_PERIODS are a hole or two dimmed by thick ice, not a bar (bars
    # and the outside are many periods wide; torn film is handled above): film again.
    ko = 2 * math.ceil(0.5 * _OFF_MIN_PERIODS * period) + 1
    off = edge <= 0
    wide = cv2.morphologyEx(off.view(np.uint8), cv2.MORPH_OPEN,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ko, ko)),
                            borderType=cv2.BORDER_REFLECT).astype(bool)
    edge = np.where(off & ~wide, np.float32(0.5 / 255.0), edge).astype(np.float32)
    islands = _islands(edge <= 0, busy, period, small, _TEXTURE_LEVEL * span)
    if islands is not None:
        edge = np.where(islands, np.float32(0.5 / 255.0), edge).astype(np.float32)
    if broken is not None:
        edge = np.where(broken, -1.0, edge).astype(np.float32)
    if edge.shape != (rows, cols):
        uniform = _uniform_sign(edge)
        if uniform is not None:
            return np.full((rows, cols), uniform, dtype=bool)
        edge = cv2.resize(edge, (cols, rows), interpolation=cv2.INTER_LINEAR)
    return edge > 0


def _islands(off: np.ndarray, busy: np.ndarray, period: float, work: np.ndarray,
             rise: float) -> np.ndarray | None:
    """The off-film areas (working scale) that film encloses (none touches the image's edge), that are smaller
    than a disc _ISLAND_PERIODS across and textured throughout (`busy`: within 0.3 periods of a hole's edge): a
    few holes that thick ice dims on dark film (gold foil), below the film level beside brighter ones. Bars and
    the outside cross the view or meet its edge; contamination on the film (the real EPU view's ice crystal
    over two holes, at 2x and 4x) is flat inside. None where there are none.

    Tuning grid-square views 13603000 and 13703007: 4 and 9 such areas of 121-371 working px, every pixel's
    brightness range at least 0.13 of the bright level; the real view's crystal: 0.01 in its core.

    Texture alone is no hole: an ice crystal's facets or a mottled contamination patch have a range as wide.
    So the area must also show its holes (_on_lattice): brightness peaks, each on the lattice that the holes
    in the film around it continue (work: the smoothed working copy; rise: a peak's height above its
    surround)."""
    import cv2

    if not off.any():
        return None
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(off.view(np.uint8), 8, cv2.CV_32S,
                                                                          cv2.CCL_GRANA)
    rows, cols = off.shape
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]
    small = stats[:, cv2.CC_STAT_AREA] < math.pi / 4 * (_ISLAND_PERIODS * period) ** 2
    keep = small & (x0 > 0) & (y0 > 0) & (x1 < cols) & (y1 < rows)
    keep[0] = False
    keep[np.bincount(labels[~busy], minlength=n) > 0] = False
    for i in np.flatnonzero(keep):
        keep[i] = _on_lattice(labels, int(i), (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])), work, period,
                              rise, float(stats[i, cv2.CC_STAT_AREA]))
    return keep[labels] if keep.any() else None


# _on_lattice: a hole's peak is the brightest pixel within 0.3 periods, at least `rise` above the darkest within
# 0.6 (a dimmed hole on gold foil: 30 on 12, with 180 the holes' level, 0.1); the holes in the film within
# _RING_PERIODS of an area give the lattice's steps (peaks 0.75-1.3 periods apart), and a peak in the area (at
# least _INSIDE_PERIODS inside it) is on it where a step from a peak on it (the film's, or one found so) lands
# within _ON_LATTICE periods of it (a peak anywhere by chance: pi * 0.15^2, ~7 %; the test's dimmed holes lie
# 0.03-0.09 periods off, a textured crystal's peaks near lattice points 0.16-0.27). At least _ON_SHARE of the
# area's peaks must be, and at least one per two cells of its area.
_RING_PERIODS = 2.0
_ON_LATTICE = 0.15
_ON_SHARE = 0.75
_INSIDE_PERIODS = 0.2


def _peaks(crop: np.ndarray, period: float, rise: float) -> np.ndarray:
    """Brightness peaks (xy, working px in the crop): the centroids of the pixels brightest within 0.3 periods
    and at least `rise` above the darkest within 0.6."""
    import cv2

    kp = 2 * math.ceil(0.3 * period) + 1
    kn = 2 * math.ceil(0.6 * period) + 1
    top = cv2.dilate(crop, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kp, kp)), borderType=cv2.BORDER_REFLECT)
    low = cv2.erode(crop, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kn, kn)), borderType=cv2.BORDER_REFLECT)
    peak = ((crop >= top) & (crop - low >= rise)).view(np.uint8)
    _, _, _, cents = cv2.connectedComponentsWithStats(peak, 8, cv2.CV_32S)
    return cents[1:]


def _on_lattice(labels: np.ndarray, i: int, box: tuple[int, int, int, int], work: np.ndarray, period: float,
                rise: float, area: float) -> bool:
    """Whether off-film area i (labels' component, its bounding box) shows holes on the lattice of those around
    it (see _islands)."""
    import cv2

    rows, cols = labels.shape
    reach = math.ceil(_RING_PERIODS * period)
    c0, r0 = max(0, box[0] - reach), max(0, box[1] - reach)
    c1, r1 = min(cols, box[2] + reach), min(rows, box[3] + reach)
    crop_labels = labels[r0:r1, c0:c1]
    peaks = _peaks(np.ascontiguousarray(work[r0:r1, c0:c1]), period, rise)
    if len(peaks) == 0:
        return False
    px = np.clip(np.rint(peaks).astype(int), 0, [c1 - c0 - 1, r1 - r0 - 1])
    at = crop_labels[px[:, 1], px[:, 0]]
    # a peak in the area counts where it lies _INSIDE_PERIODS inside: the bright part of a film's hole that the
    # area's edge cuts (a crystal over holes) peaks at that edge, near its lattice point; a peak in another
    # off-film area is neither the area's nor the film's
    depth = cv2.distanceTransform((crop_labels == i).astype(np.uint8), cv2.DIST_L2, 3)
    inside = peaks[(at == i) & (depth[px[:, 1], px[:, 0]] >= _INSIDE_PERIODS * period)]
    film = peaks[at == 0]
    need = max(1, math.ceil(0.5 * area / period**2))
    if len(inside) < need or len(film) < 3:
        return False
    d = (film[:, None, :] - film[None, :, :]).reshape(-1, 2)
    length = np.hypot(d[:, 0], d[:, 1])
    steps = d[(length >= 0.75 * period) & (length <= 1.3 * period)]
    if len(steps) == 0:
        return False
    known, todo = film, inside
    tol = _ON_LATTICE * period
    on = 0
    while len(todo):
        guesses = (known[:, None, :] + steps[None, :, :]).reshape(-1, 2)
        hit = np.array([np.min(np.hypot(*(guesses - p).T)) <= tol for p in todo])
        if not hit.any():
            break
        on += int(hit.sum())
        known, todo = todo[hit], todo[~hit]
    return on >= need and on >= _ON_SHARE * len(inside)


def _working_size(shape: tuple[int, int], factor: float) -> tuple[int, int] | None:
    """(cols, rows) of film_mask's working copy at a shrink factor; None at factor 1 (the image itself)."""
    if not factor > 1.0:
        return None
    rows, cols = shape
    return max(1, round(cols / factor)), max(1, round(rows / factor))


def film_working_copy(image: np.ndarray, spacing_px: float, *, finite: bool = False) -> np.ndarray | None:
    """The image shrunk as film_mask shrinks it for this period (INTER_AREA), None where it is not shrunk.

    cv2.resize's result depends on the two sizes alone, and the sizes change only where the period crosses a
    rounding boundary, so the copy made for a period estimated earlier mostly serves the lattice's period too
    (find_holes makes it on a second core while the lattice is fitted: ~2.5 ms of the film mask's 3 on
    1024x1440)."""
    import cv2

    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"film_working_copy needs a non-empty 2-D image, got shape {img.shape}")
    if not (math.isfinite(spacing_px) and spacing_px > 0):
        raise ValueError(f"film_working_copy needs a finite positive spacing_px, got {spacing_px!r}")
    size = _working_size(img.shape, max(1.0, float(spacing_px) / _WORK_PERIOD_PX))
    if size is None:
        return None
    data = np.asarray(img, dtype=np.float32) if finite else finite_float32(img)
    return cv2.resize(data, size, interpolation=cv2.INTER_AREA)


# _uniform_sign: a margin map whose values all lie this far from zero, relative to its largest magnitude (and
# absolutely, _TINY_MARGIN), has one sign after scaling up.
_SIGN_RATIO = 2.0**-20
_TINY_MARGIN = 1e-30


def _uniform_sign(edge: np.ndarray) -> bool | None:
    """The sign of edge scaled up (cv2.resize, INTER_LINEAR, float32) when it is one throughout: True when every
    output pixel is > 0, False when every one is < 0; None when that is not sure without scaling up.

    Bilinear interpolation makes each output pixel a weighted mean of input pixels (weights >= 0 that sum to
    1), so its exact value lies between the smallest and the largest input. Whatever the float32 formula
    (weighted sums, a + (b - a) t, fused or not), its rounding errors are a few units in the last place of
    the largest magnitude, ~2^-23 of it: with every input >= 2^-20 of that magnitude (and >= _TINY_MARGIN,
    far from underflow) each output is > 0, and likewise < 0 for inputs all <= -that. Most views are film
    throughout (the reference image: margins 0.58-0.66; film's smallest is 0.5 / 255), and there the
    full-size resize and its test (~1 ms on 1024x1440) are not needed."""
    lo, hi = float(edge.min()), float(edge.max())
    if lo >= max(_TINY_MARGIN, _SIGN_RATIO * hi):
        return True
    if hi <= -max(_TINY_MARGIN, _SIGN_RATIO * -lo):
        return False
    return None


def _spread(small: np.ndarray, period: float) -> np.ndarray:
    """The brightness range within 0.3 periods of each pixel (working scale)."""
    import cv2

    kr = 2 * math.ceil(0.3 * period) + 1
    return cv2.morphologyEx(small, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kr, kr)),
                            borderType=cv2.BORDER_REFLECT)


def _textured(busy: np.ndarray, period: float) -> np.ndarray:
    """Where holes texture the image (working scale): `busy` (the brightness range within 0.3 periods, _spread,
    above _TEXTURE_LEVEL of the bright level) closed over the cells' centres (farther than that from any hole)."""
    import cv2

    kc = 2 * math.ceil(0.5 * _CLOSING_PERIODS * period) + 1
    return cv2.morphologyEx(busy.view(np.uint8), cv2.MORPH_CLOSE,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kc, kc)),
                            borderType=cv2.BORDER_REFLECT).astype(bool)


def _broken_film(small: np.ndarray, film: np.ndarray, period: float) -> np.ndarray | None:
    """Torn film at the working scale: areas as bright as the holes (no film, full dose) but wider than
    _BROKEN_PERIODS periods, which no hole is. None when there is nothing to find."""
    import cv2

    if film.sum() < 16:
        return None
    values = small[film]
    # Film pixels outnumber hole pixels (holes cover < 50 % of a cell), so the median is the film's level
    # and a high percentile the holes'.
    film_level = float(median(values))
    hole_level = float(percentile(values, 99.5))
    if not hole_level > film_level:
        return None
    bright = (small > film_level + _BROKEN_LEVEL * (hole_level - film_level)) & film
    # Torn film is flat; film that a brightness gradient lifts above that level still shows its holes.
    kr = 2 * math.ceil(0.3 * period) + 1
    reach = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kr, kr))
    spread = cv2.morphologyEx(small, cv2.MORPH_GRADIENT, reach, borderType=cv2.BORDER_REFLECT)
    flat = bright & (spread < _FLAT_SHARE * float(median(spread[film])))
    # Width is measured on the bright area, flatness on its core: the gradient's reach and the blurred,
    # fringed rim take ~0.5 periods off each side of the flat area, so a tear 2.3 periods across (the
    # smallest that holds a 1.5-period disc) leaves a flat core of ~1.3 periods, which no flat opening of
    # 1.5 periods finds (issue 11: a torn hexagonal view kept its tear as film, and the intact film around
    # it, dim against the tear, went off film). Textured film that a gradient lifts above the level is
    # flat only at its cells' centres (< 0.5 periods across), never over a _FLAT_CORE_PERIODS disc.
    k = 2 * math.ceil(0.5 * _BROKEN_PERIODS * period) + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    wide = cv2.morphologyEx(bright.view(np.uint8), cv2.MORPH_OPEN, disc, borderType=cv2.BORDER_REFLECT)
    kf = 2 * math.ceil(0.5 * _FLAT_CORE_PERIODS * period) + 1
    core = cv2.morphologyEx(flat.view(np.uint8), cv2.MORPH_OPEN,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kf, kf)), borderType=cv2.BORDER_REFLECT)
    if not (wide.any() and core.any()):
        return None
    # the wide bright areas that hold a flat core
    n, labels = cv2.connectedComponents(wide, connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[unique(labels[core.astype(bool) & (labels > 0)])] = True
    keep[0] = False
    # ... and of those only the part near the core (within _BROKEN_PERIODS / 2 of it, which reaches past the
    # tear's blurred rim): textured film a gradient lifts above the level, touching a small tear, is one
    # component with it, and would go off film as a whole.
    wide = (keep[labels] & cv2.dilate(core, disc).astype(bool)).view(np.uint8)
    if not wide.any():
        return None
    # back out to the tear's edge, which the opening had rounded off at corners
    return cv2.dilate(wide, reach).astype(bool) & bright


def _estimate_period(data: np.ndarray) -> float:
    """Median nearest-neighbour distance of the bright blobs (holes) of an image; a fallback without them."""
    import cv2

    rows, cols = data.shape
    fallback = min(rows, cols) / 16.0
    # Work at <= 512 px: blobs stay resolvable for periods of a few pixels at that size and up.
    f = max(1.0, max(rows, cols) / 512.0)
    small = cv2.resize(data, (max(1, round(cols / f)), max(1, round(rows / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    lo, hi = float(small.min()), float(small.max())
    if not hi > lo:
        return fallback
    u8 = np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    _, bright = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Grana's labelling: the default's stats and centroids to the bit, faster on one thread (see views._regions)
    _, _, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(bright, 8, cv2.CV_32S, cv2.CCL_GRANA)
    keep = stats[1:, cv2.CC_STAT_AREA] >= 3
    pts = centroids[1:][keep]
    if len(pts) < 4:
        return fallback
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(pts, k=2)
    period = float(median(d[:, 1])) * f
    return period if period >= 2.0 else fallback


# on_film checks the boxes of up to this many points one by one, more through a summed-area table.
_DIRECT_BOXES = 64


def on_film(points_xy: np.ndarray, mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Per point (n, 2) xy: whether its footprint (the pixels whose centres lie within radius_px) is on film.

    Off film if any pixel of the footprint inside the image is off film (mask False); the image's own edge
    does not count. Points with no footprint pixel inside the image (farther out than radius_px) are off.
    """
    import cv2

    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    out = np.zeros(len(pts), dtype=bool)
    if len(pts) == 0 or m.size == 0:
        return out
    rows, cols = m.shape
    r = max(0.0, float(radius_px))
    finite = np.all(np.isfinite(pts), axis=1)
    x = np.where(finite, pts[:, 0], -1e9)
    y = np.where(finite, pts[:, 1], -1e9)
    # the footprint's bounding box of pixel centres, clipped to the image
    c0 = np.maximum(np.ceil(x - r), 0).astype(np.int64)
    c1 = np.minimum(np.floor(x + r), cols - 1).astype(np.int64)
    r0 = np.maximum(np.ceil(y - r), 0).astype(np.int64)
    r1 = np.minimum(np.floor(y + r), rows - 1).astype(np.int64)
    boxed = finite & (c0 <= c1) & (r0 <= r1)
    # Whether a box holds off-film pixels: only those that do need the exact disc (near a bar's edge). Few
    # points look at their boxes directly (a lattice of 290 px: 17 boxes, 1/6 of the mask); many at a
    # summed-area table of the whole mask, O(1) per point.
    if len(pts) <= _DIRECT_BOXES:
        clear = boxed.copy()
        for i in np.flatnonzero(boxed):
            clear[i] = m[r0[i] : r1[i] + 1, c0[i] : c1[i] + 1].all()
    else:
        off = cv2.integral((~np.ascontiguousarray(m)).view(np.uint8), sdepth=cv2.CV_32S)
        c0b, c1b, r0b, r1b = (np.where(boxed, t, 0) for t in (c0, c1, r0, r1))
        count = off[r1b + 1, c1b + 1] - off[r0b, c1b + 1] - off[r1b + 1, c0b] + off[r0b, c0b]
        clear = boxed & (count == 0)
    out[clear] = True
    for i in np.flatnonzero(boxed & ~clear):
        yy, xx = np.ogrid[r0[i] : r1[i] + 1, c0[i] : c1[i] + 1]
        disc = (xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= r * r
        # an empty disc (the box's corners only) holds no pixel: off, as a point with no footprint
        out[i] = disc.any() and not (disc & ~m[r0[i] : r1[i] + 1, c0[i] : c1[i] + 1]).any()
    # a box whose disc holds no pixel (a point just beyond a corner of the image) has no footprint
    near_x = x - np.clip(x, c0, c1)
    near_y = y - np.clip(y, r0, r1)
    out[clear & (near_x**2 + near_y**2 > r * r)] = False
    return out
