"""The med-mag pipeline: find the holes of a holey-carbon lattice and score them, as a composition of stages.

Stages (each timed in ``HoleResult.timings``): read -> normalise (and, for a scale-normalised U-Net, the
lattice period: spacing.py) -> unet (unet.py; at a ladder of periods when the period cannot be measured or
the map's lattice disagrees with it) -> centroids (threshold, regions) -> lattice (lattice.py) -> crops
(crops.py: one per lattice point, sampled in the lattice frame straight from the input) -> cnn (scoring.py).

Coordinates are input pixels, x = column, y = row, origin at the centre of the top-left pixel. The
original tool measured from the top-left pixel's corner, so its coordinates are ours + 0.5.

Against the original (medmag_cli.py): with HoleOptions.ptolemy() the lattice, the hole centres, the crop
windows and vertices are the original's (to 1e-6 px) and the hole CNN scores agree to < 0.01 (cv2 bicubic
instead of scipy's cubic spline). By default we differ on purpose: 6 real neighbours per centroid (the
original counted the centroid itself among its 6), least-squares refinement of the lattice, crops centred
on the lattice points and never clipped, U-Net padding to the smallest accepted size, and `unet` scores.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import numpy as np

from . import _workers
from .crops import hole_crops
from .film import film_mask, film_working_copy, on_film
from .io import Image, ImageLike, as_image, check_min_size
from .lattice import Lattice, fit_lattice, regularity, row_spacings, summed_area_table
from .models import ModelSet, ModelsLike, resolve_models
from .options import PTOLEMY_COMPAT, SCORES, HoleOptions
from .results import Hole, HoleResult, ImageInfo, sort_targets
from .scoring import HOLE_BATCHES, cnn_scores, unet_scores
from .unet import (
    MIN_PERIOD_PX,
    SCALE_TOLERANCE,
    consistent_periods,
    finer_factor,
    normalise_image,
    period_candidates,
    probability_map,
    scaled_probability_map,
    scaled_unet_input,
    tame_extremes,
    unet_factor,
)
from .views import SINGLE_HOLE_REASON, LargeHole, atlas_reason, large_holes, median, percentile

__all__ = ["find_holes", "holes_from_map", "hole_centroids", "centroid_brightness", "unet_scores", "cnn_scores",
           "default_score",
           "HoleOptions", "PTOLEMY_COMPAT", "SCORES", "MIN_SIDE", "HOLE_BATCHES"]

MIN_SIDE = 256  # the supported range is 256-4096 px per side
# Regions: mask pixels within this window of each other form one hole candidate (as in low mag).
REGION_WINDOW = 6
# A lattice whose points hold this share of the map's hole candidates, times the share of its points that
# hold one, ends the ladder (a true lattice at the right scale scores ~0.9); below the second it is not
# taken at all (the U-Net fires on pure noise, and lattices through such blobs score 0.1-0.3).
_CONVINCING = 0.7
_LADDER_MIN_QUALITY = 0.35
# A lattice point is on film when the disc of this many periods around it is. The film mask's edge runs
# along the outer holes' rims where the film is as dark as a bar (gold foil), so the disc must stay inside
# the smallest holes (radius >= ~0.22 periods) or every hole beside a bar is dropped.
FILM_RADIUS = 0.2
# Once a lattice is in hand, further candidates whose U-Net input exceeds this many pixels are skipped.
_EXTRA_MAX_PIXELS = 4_000_000
# The region window is at most this share of the period a map was made for.
_WINDOW_PERIODS = 0.25
# A ladder try whose map has more blobs than this times the lattice points the image holds is noise.
_LADDER_EXCESS = 2.0
# Beyond the primary estimate, a map with at least _REGULAR_MIN_BLOBS blobs whose nearest-neighbour distances
# are this irregular (lattice.regularity: lattices ~0.85-1, even with strays and gaps; noise, lacey and
# continuous film 0.15-0.45) gets no lattice search: on hundreds of noise blobs the search took seconds and
# found nothing (issue 11: an image with no lattice cost 1 s and more).
_MIN_REGULARITY = 0.5
_REGULAR_MIN_BLOBS = 20
# ... and a try whose U-Net input exceeds twice this many pixels is first run on a central crop of this many.
_PROBE_PIXELS = 500_000
# The probe ends a costly try when it finds fewer than _REGULAR_MIN_BLOBS candidates where the period would put
# at least this many times that number of holes in its crop.
_PROBE_EMPTY_ROOM = 4.0
# With a lattice of at least this quality in hand, a further period estimate that is one of its denser row
# spacings (within this log tolerance) is not run: the estimators read a lattice's (1, 1) and (2, 0) rows as
# periods too, and the U-Net at that scale shows the same holes (the real EPU view: 11.4 px found, 8.0 px
# estimated, the same lattice again at lower quality; a whole square at 12.8 px: 9.1 px, a superlattice
# of lower quality). Held out, no such run ever won.
_HARMONIC_QUALITY = 0.5
_HARMONIC_TOLERANCE = 0.05
# A lattice of fewer holes than this does not stop costly tries at other estimators' periods, and is judged
# by the probe like no lattice: a whole grid square's U-Net at the bars' pitch shows the squares as ~10 holes.
_SOLID_INLIERS = 20
# When every run at a period that a map's lattice showed finds nothing, that lattice is returned if its
# quality reaches this and it holds _SOLID_INLIERS holes (noise lattices score 0.1-0.3, see
# _LADDER_MIN_QUALITY, and those that pass fit_lattice are a few blobs: any three span a lattice).
_LAST_RESORT_QUALITY = 0.25
# Whole U-Net maps find_holes keeps for a second period at the same factor (the capped upscale's, mostly).
_KEPT_MAPS = 2


def hole_centroids(mask: np.ndarray, window: int = REGION_WINDOW) -> np.ndarray:
    """Area centroids (n, 2) xy of the convex hulls of the mask's regions (pixels within `window` grouped)."""
    separate = _separate_blob_centroids(mask, window)
    if separate is not None:
        return separate
    from .regions import find_regions

    regions = find_regions(mask, window=window, min_area=-math.inf, keep_labels=False)
    return np.asarray(regions.centroids, dtype=np.float64).reshape(-1, 2)


def _separate_blob_centroids(mask: np.ndarray, window: int) -> np.ndarray | None:
    """hole_centroids where every region is a single blob (the U-Net's blobs lie apart: the usual map), found
    without labelling the image; None where a region may hold several blobs (then find_regions labels it).

    find_regions labels the dilated mask (2-4 ms on 1024x1440, most of this stage) to group the blobs' outer
    contours by region. Counting is enough when no blob holds a hole (then no blob lies inside another and
    each has an outer contour, RETR_CCOMP's top level): every region holds at least one blob, so as many
    regions (the dilated mask's top-level contours) as blobs means one each. Each region's hull is then that
    contour's, and the hulls, areas, centroids and their order are find_regions' own (regions._square_hulls,
    _packed_area_centroid, raster order of the hulls' first vertices): the same bits."""
    import cv2

    from .regions import _flat_area_centroid, _square_hulls_packed

    m = np.ascontiguousarray(mask)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    elif m.dtype != np.uint8:
        m = (m != 0).astype(np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2))
    if (hierarchy[0, :, 3] >= 0).any():  # a hole's contour: a blob with a hole
        return None
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    points = np.concatenate(contours).reshape(-1, 2)
    if window > 1 and not _boxes_apart(points, bounds, window):
        # find_regions' neighbourhood (cv2's anchor for an even kernel is window // 2)
        dilated = cv2.dilate(m, np.ones((window, window), np.uint8))
        _, outer = cv2.findContours(dilated, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if int((outer[0, :, 3] < 0).sum()) != len(contours):
            return None
    # the hulls concatenated (regions._square_hulls_packed), not as a list of arrays: the same vertices
    vertices, starts, counts = _square_hulls_packed(points, bounds, np.arange(len(contours)))
    _, centroids = _flat_area_centroid(vertices, starts, counts)
    tops = vertices[starts]
    return centroids[np.lexsort((tops[:, 0], tops[:, 1]))].reshape(-1, 2)


# _boxes_apart compares at most this many pairs of blobs whose columns come near (a lattice's: ~30 per blob).
_MAX_BOX_PAIRS = 200_000


def _boxes_apart(points: np.ndarray, bounds: np.ndarray, window: int) -> bool:
    """Whether no two blobs (outer contours points[bounds[i]:bounds[i + 1]]) come within `window` + 1 px of each
    other's bounding box in both x and y: then no two of them share a region (False: maybe they do).

    The dilation by a window x window square grows a blob's box by window - 1 px in all (split between the two
    sides by the anchor), so two dilated blobs touch (8-connected) only where their boxes are at most window px
    apart in both directions, and each dilated blob is connected: a region per blob, as the dilated mask's
    contours count them (a dilated blob inside another's hole has its box inside the other's: not apart)."""
    starts = bounds[:-1]
    x0, x1 = np.minimum.reduceat(points[:, 0], starts), np.maximum.reduceat(points[:, 0], starts)
    y0, y1 = np.minimum.reduceat(points[:, 1], starts), np.maximum.reduceat(points[:, 1], starts)
    order = np.argsort(x0, kind="stable")
    # int64 (one value per blob): cv2's points are int32, and x1 + reach wrapped around for x1 near 2^31 (or
    # raised OverflowError for a window of 2^31). The pipelines never got there (window <= REGION_WINDOW = 6:
    # a mask row over 2^31 - 8 px, times MIN_SIDE rows, is 2^39 pixels); hole_centroids(mask, window) could.
    x0, x1, y0, y1 = (v[order].astype(np.int64) for v in (x0, x1, y0, y1))
    reach = window + 1  # boxes this many px apart or less (or overlapping) count as near
    # blob i's partners: the later ones (by x0) whose x0 is within reach of its x1; every near pair is one such
    end = np.searchsorted(x0, x1 + reach, side="right")
    n_pairs = np.maximum(end - np.arange(len(x0)) - 1, 0)
    total = int(n_pairs.sum())
    if total == 0:
        return True
    if total > _MAX_BOX_PAIRS:
        return False
    i = np.repeat(np.arange(len(x0)), n_pairs)
    j = np.arange(total) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs) + i + 1
    gap_y = np.maximum(y0[i], y0[j]) - np.minimum(y1[i], y1[j])
    return not bool((gap_y <= reach).any())


def default_score(models: ModelSet, cnn: bool = True) -> str:
    """The score that ranks holes when none is asked for: the set's manifest hole_score ("unet" if absent).

    "cnn" falls back to "unet" when the set has no hole CNN or `cnn` is False."""
    if models.manifest.hole_score == "cnn" and cnn and models.has("hole_cnn"):
        return "cnn"
    return "unet"


def _options(options: HoleOptions | None, overrides: dict[str, Any]) -> HoleOptions:
    if options is not None and not isinstance(options, HoleOptions):
        raise TypeError(f"options must be a HoleOptions, got {type(options).__name__}")
    return replace(options or HoleOptions(), **overrides) if overrides else (options or HoleOptions())


def find_holes(image_or_path: ImageLike, models: ModelsLike | bool = None, *, options: HoleOptions | None = None,
               section: int | None = None, provider: str = "auto", threads: int | None = None,
               **overrides: Any) -> HoleResult:
    """Find and score the holes of a med-mag image; an empty result with a reason when there are none.

    options: a HoleOptions (default HoleOptions(); HoleOptions.ptolemy() for the original's behaviour);
    keyword arguments named as its fields (edge_tolerance=100, score="unet", ...) override single fields.
    """
    opts = _options(options, overrides)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    image = as_image(image_or_path, section=section)
    check_min_size(image, MIN_SIDE, "the hole finder")
    tamed = tame_extremes(image.data, finite=True)  # as_image checked that every pixel is finite
    if tamed is not image.data:
        image = replace(image, data=tamed)
    if models is False:
        raise ValueError("find_holes needs a model set with a hole_unet (models=False is for find_squares only)")
    model_set = resolve_models(models, provider=provider, threads=threads)  # type: ignore[arg-type]
    unet_spec = model_set.spec("hole_unet")
    opts = replace(opts, score=opts.score or default_score(model_set, opts.cnn))
    opts = replace(opts, cnn=opts.cnn and (opts.score == "cnn" or model_set.has("hole_cnn")))
    if opts.cnn:
        model_set.spec("hole_cnn")  # fail early, before a second of U-Net, when it is missing
    info = _info(image)
    timings["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    scale = unet_spec.scale
    sourced = first_estimate = first_input = None
    given: dict[str, Any] = {}  # what this thread hands the worker (the normalised image) and the worker hands back
    if scale is not None and _workers.workers() > 1:
        # The period search (~10 ms on 1024x1440) on a second core while this one normalises and tests the view
        # (as long again): each computes what it computed alone. Views that end here leave it to finish unused.
        # Then, for the image's own period (the first try's, see below), the U-Net's input (~2.5 ms), which
        # this core would otherwise make after the view tests, the second one waiting.
        from .spacing import period_estimates

        sourced = period_estimates(image.data)
        first_estimate, first_input = _workers.chain(
            lambda: given.setdefault("first", next(sourced, (None, None))),  # type: ignore[arg-type]
            lambda: _first_input(given, scale, unet_spec.multiple, opts.unet_padding))
    normalised = normalise_image(image.data)
    given["normalised"] = normalised
    if normalised is None:
        _drop(first_estimate)
        _drop(first_input)
        timings["normalise"] = time.perf_counter() - t
        return _empty(info, model_set, "constant image: nothing to find", timings)
    # Views no lattice can be fitted to (one hole filling the view, an atlas): said so, not guessed at.
    # normalise_image summed the image as float32 to a finite mean: every pixel is finite
    large = large_holes(image.data, finite=True)
    if large:
        _drop(first_estimate)
        _drop(first_input)
        timings["normalise"] = time.perf_counter() - t
        return _single_holes(image, large, model_set, opts, timings, info)
    atlas = atlas_reason(image.data, finite=True)
    if atlas is not None:
        _drop(first_estimate)
        _drop(first_input)
        timings["normalise"] = time.perf_counter() - t
        return _empty(info, model_set, atlas, timings)
    if scale is None:
        timings["normalise"] = time.perf_counter() - t
        t = time.perf_counter()
        prob = probability_map(normalised, model_set, unet_padding=opts.unet_padding)
        timings["unet"] = time.perf_counter() - t
        return holes_from_map(image, prob, model_set, options=opts, timings=timings)

    if sourced is None or first_estimate is None:
        from .spacing import period_estimates

        # Raw counts, not the normalised image: the estimates mask grid bars by their near-zero dose.
        sourced = period_estimates(image.data)
        period, source = next(sourced, (None, None))
    elif first_estimate.cancel():  # no worker was free to start it (a loaded machine): done here
        period, source = next(sourced, (None, None))
    else:
        period, source = first_estimate.result()
    estimates = (p for p, _ in sourced)
    # The whole image's autocorrelation (estimate_spacing) is trusted as before; a period from another
    # estimator (a crop, the spectrum; noise gives them too) must give a convincing lattice.
    trusted = source == "image"
    timings["normalise"] = time.perf_counter() - t
    if period is not None and period < MIN_PERIOD_PX:
        # A pixel-level pattern (detector fixed pattern, a checkerboard) would make the U-Net input
        # (target/period)^2 times larger than the image: refuse instead of spending minutes and GBs.
        return _empty(info, model_set, f"lattice period {period:.1f} px is below the {MIN_PERIOD_PX:g} px "
                      "the hole finder resolves (not a hole lattice?)", timings)
    thr = _threshold(opts, model_set)
    best = None  # (quality, factor, prob, lattice)
    fallback = None  # the best lattice that disagreed with the period its map was made at
    last_resort = None  # ... of any quality above noise's, returned rather than nothing
    # The latest whole U-Net maps by factor (a capped upscale gives many periods one factor, so one map): the
    # U-Net is not run twice at a factor, but each period fits its own limits to the map. At most _KEPT_MAPS.
    maps: dict[float, np.ndarray] = {}
    first_reason = None
    tried: dict[float, float] = {}  # factor -> period
    film_copy: list[Future] = []  # the film mask's working copy for the primary period, made beside the fit
    films: dict[float, np.ndarray] = {}  # _film_quality's film mask, by period, for _holes_on_lattice

    def first_try_input(f: float, primary: bool) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The U-Net input the worker made for the image's period, for the first try if it runs at its factor
        (None: not made, or another factor). Taken once and let go of here: as large as the U-Net's input (256
        MB at 8192x8192), it must not outlive the U-Net run (no Future of it kept to the end)."""
        nonlocal first_input
        made = _taken(first_input) if primary else None
        _drop(first_input)  # the first try only (it is primary wherever the worker made an input)
        first_input = None
        return made[1] if made is not None and made[0] == f else None

    def attempt(candidate: float, primary: bool, factor: float | None = None
                ) -> tuple[Lattice | None, str | None, float, float, np.ndarray, tuple | None]:
        f = unet_factor(candidate, scale) if factor is None else factor
        tried[f] = candidate
        # Blobs closer than REGION_WINDOW are one hole; with a 10 px period neighbouring holes are that close.
        window = max(1, min(REGION_WINDOW, int(_WINDOW_PERIODS * candidate)))
        rows, cols = image.shape
        key = round(f, 9)
        kept = maps.get(key)
        if kept is None and not primary and _weak(best) and rows * cols * f * f > 2 * _PROBE_PIXELS:
            # A costly try beyond the primary estimate with no lattice in hand yet (or only a weak one, _weak):
            # the U-Net on a central crop first, and no more when its blobs lie irregularly (an image with no
            # lattice paid seconds of U-Net on its short rungs). With a lattice in hand the probe would mostly
            # be paid twice.
            side = max(1, int(math.sqrt(_PROBE_PIXELS) / f))
            r0, c0 = max(0, (rows - side) // 2), max(0, (cols - side) // 2)
            t = time.perf_counter()
            probe = scaled_probability_map(normalised[r0 : r0 + side, c0 : c0 + side], model_set, f,
                                           opts.unet_padding)
            timings["unet"] = timings.get("unet", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            positive = probe > thr
            blobs = hole_centroids(positive, window)
            timings["centroids"] = timings.get("centroids", 0.0) + time.perf_counter() - t
            crop_rows, crop_cols = probe.shape
            room = crop_rows * crop_cols / candidate**2  # lattice points the crop holds at this period
            if len(blobs) < _REGULAR_MIN_BLOBS and room >= _PROBE_EMPTY_ROOM * _REGULAR_MIN_BLOBS:
                # A lattice at this period would fill the central crop with candidates; a handful (edges of
                # a bar, specks) is not one, and the whole map would cost (image / crop) times the probe.
                reason: str | None = (f"the central crop shows {len(blobs)} hole candidates where a "
                                      f"{candidate:.0f} px lattice would give about {room:.0f}")
                return None, reason, 0.0, f, probe, None
            if len(blobs) >= _REGULAR_MIN_BLOBS and _regularity(blobs, positive) < _MIN_REGULARITY:
                reason = (f"the hole candidates of a central crop lie irregularly at a {candidate:.0f} "
                          "px period")
                return None, reason, 0.0, f, probe, None
            # The whole map's excess test (below) on the crop: noise the U-Net fires on fills the crop as it
            # does the image, and the whole map would cost (image / crop) times the crop's U-Net and centroids.
            if len(blobs) > _LADDER_EXCESS * crop_rows * crop_cols / candidate**2 + 10:
                reason = f"{len(blobs)} hole candidates in a central crop are more than the lattice can hold"
                return None, reason, 0.0, f, probe, None
        if kept is None:
            t = time.perf_counter()
            prob = scaled_probability_map(normalised, model_set, f, opts.unet_padding,
                                          prepared=first_try_input(f, primary))
            timings["unet"] = timings.get("unet", 0.0) + time.perf_counter() - t
            while len(maps) >= _KEPT_MAPS:
                del maps[next(iter(maps))]  # the oldest
            maps[key] = prob
        else:
            # The same factor (a capped upscale) is the same map: no second U-Net run (nor probe), but the
            # fit below with this period's limits (the excess test's depends on the period).
            prob = kept
        # Beyond the primary estimate, a map with far more blobs than the period allows is noise the U-Net
        # fired on; fitting a lattice to thousands of such blobs would cost seconds and find nothing.
        limit = None if primary else _LADDER_EXCESS * rows * cols / candidate**2 + 10
        t = time.perf_counter()
        mask = prob > thr  # made once: the fit's and _film_quality's
        timings["centroids"] = timings.get("centroids", 0.0) + time.perf_counter() - t
        table = None
        if primary and not film_copy and _workers.workers() > 1:
            # The second core is idle while this one fits the lattice (~8 ms on 1024x1440): there, the mask's
            # summed-area table the fit needs, then the film mask's working copy for this period (which the
            # lattice's period mostly shares: film.film_working_copy), each what it is when made here.
            t = time.perf_counter()
            table, copy = _workers.chain(lambda: summed_area_table(mask),
                                         lambda: film_working_copy(image.data, candidate, finite=True))
            film_copy.append(copy)
            timings["centroids"] = timings.get("centroids", 0.0) + time.perf_counter() - t
        lattice, reason, quality = _fit_map(prob, thr, opts, timings, max_centroids=limit, window=window,
                                            min_regularity=None if primary else _MIN_REGULARITY, image=image.data,
                                            mask=mask, table=table)
        if lattice is not None and lattice.n_inliers < _SOLID_INLIERS and _dark_candidates(mask, image.data):
            lattice, reason, quality = None, "the hole candidates are darker than the film (contamination?)", 0.0
        if (not primary and lattice is not None and quality < _LADDER_MIN_QUALITY
                and lattice.n_inliers >= _SOLID_INLIERS):
            # (the table made beside the fit, where one was: a Future's result is kept, so taken again)
            quality = _film_quality(lattice, quality, mask, image.data, films, _taken(table))
        if not primary and lattice is not None and quality < _LADDER_MIN_QUALITY:
            lattice, reason = None, "no convincing lattice"
        # the map's mask and its summed-area table (a Future, or None), for _beside_bars if this map wins
        return lattice, reason, quality, f, prob, (mask, table)

    # Measured periods: every estimator's (spacing.period_estimates, lazily) and the period of any lattice
    # the U-Net map shows at another scale; the lattice that explains its map best wins, so no estimator
    # (a grid bars' pitch, a harmonic) can veto the right scale.
    queue: list[float] = [] if period is None else [period]
    while True:
        if not queue:
            # (a convincing lattice ended the tries where it was found: the one held here is none)
            if period is None:
                break
            t = time.perf_counter()
            nxt = next(estimates, None)
            timings["normalise"] += time.perf_counter() - t
            if nxt is None:
                break
            queue.append(nxt)
        candidate = queue.pop(0)
        # (a hexagonal array's spectral period is sqrt(3)/2 of its own)
        if candidate < MIN_PERIOD_PX * 0.8 or any(abs(math.log(candidate / p)) < 0.03 for p in tried.values()):
            continue
        if best is not None and best[0] >= _HARMONIC_QUALITY and _harmonic(candidate, best[3]):
            continue  # the estimators' reading of the lattice in hand: at that scale the U-Net shows it again
        costly = image.shape[0] * image.shape[1] * unet_factor(candidate, scale) ** 2 > _EXTRA_MAX_PIXELS
        if costly and not _weak(best):
            continue  # a lattice is in hand: no seconds of U-Net on a large image at another estimator's period
        primary = trusted and not tried
        lattice, reason, quality, f, prob, held = attempt(candidate, primary)
        finer = finer_factor(candidate, scale) if primary and lattice is None else None
        if finer is not None:
            # The image's period, and no lattice at it: the U-Net once more at a finer scale, judged as a
            # further estimate's try (unet.FINER_PERIOD_FRACTION: an upsampled grid-square view's grain).
            # Nothing found there leaves everything as it was, the first try's reason included.
            again = attempt(candidate, False, finer)
            if again[0] is not None:
                lattice, reason, quality, f, prob, held = again
            again = None  # (its mask and table: not held past the choice)
        if lattice is not None and consistent_periods(lattice.spacing_px, candidate):
            best = _solid_first(best, (quality, f, prob, lattice, held))
            if _convincing(quality, lattice, image.data):
                break
            continue
        if lattice is not None and lattice.spacing_px <= min(image.shape) / 2.0:
            # The U-Net saw a lattice of another period: run it at that period before anything else, and
            # keep this one in case that run finds none (a period with fewer than two across the image is
            # no lattice: noise gives such).
            # (without the map's mask and table: 118 MB each at 4096x5760; _holes_on_lattice remakes them
            # where one of these wins)
            if quality >= _LADDER_MIN_QUALITY and (fallback is None or quality > fallback[0]):
                fallback = (quality, f, prob, lattice, None)
            last_resort = _better(last_resort, (quality, f, prob, lattice, None))
            queue.insert(0, lattice.spacing_px)
        if first_reason is None and trusted:  # another estimator's period is no "image's period" to cite
            first_reason = _why_not(reason, lattice, period)
    if best is None and fallback is not None:
        best = fallback
    if best is None:
        # No period could be measured (or none held a lattice): the ladder, longest first.
        # The rungs are LADDER_STEP apart, and the U-Net shows a lattice up to that far off its scale: one
        # seen at another period than its rung's is tried next at its own.
        ladder = period_candidates(None, image.shape, scale)
        while ladder:
            candidate = ladder.pop(0)
            if any(consistent_periods(candidate, p, math.sqrt(SCALE_TOLERANCE)) for p in tried.values()):
                continue
            lattice, reason, quality, f, prob, held = attempt(candidate, False)
            if lattice is not None and lattice.spacing_px > min(image.shape) / 2.0:
                # fewer than two periods fit: blobs on a lattice of their own by chance, not a hole array
                lattice, reason = None, "no convincing lattice"
            if lattice is not None and consistent_periods(lattice.spacing_px, candidate):
                best = _better(best, (quality, f, prob, lattice, held))
                # a map at a far too coarse scale can still hold a lattice of its period by chance, so the
                # ladder goes on until one is convincing (grid squares with bars between them are not: the
                # ladder runs longest first, and reaches the holes' period after the bars' pitch)
                if _convincing(quality, lattice, image.data):
                    break
                continue
            if lattice is not None and MIN_PERIOD_PX <= lattice.spacing_px <= min(image.shape) / 2.0:
                ladder.insert(0, lattice.spacing_px)
                last_resort = _better(last_resort, (quality, f, prob, lattice, None))
            if first_reason is None and trusted:
                first_reason = _why_not(reason, lattice, period)
    if best is None and last_resort is not None and last_resort[0] >= _LAST_RESORT_QUALITY and (
            last_resort[3].n_inliers >= _SOLID_INLIERS):
        # Every map that showed a lattice showed it at another period than it was made at, and the runs at
        # that period found nothing (the U-Net's noise on a blurred view): the lattice it showed, not nothing.
        best = last_resort
    if best is None:
        for copy in film_copy:
            _drop(copy)
        reason = first_reason or "no hole lattice at any period the hole finder resolves (blank or noise?)"
        return _empty(info, model_set, reason, timings)
    held = None  # the last try's mask and table: only the winner's (best's) are kept
    _, f, prob, lattice, kept = best
    positive, table = (None, None) if kept is None else kept
    film = films.get(lattice.spacing_px)
    if film is not None:
        for copy in film_copy:
            _drop(copy)
        film_copy.clear()
    return _holes_on_lattice(image, prob, lattice, model_set, opts, timings, info, unet_area=f * f, finite=True,
                             film_copy=film_copy.pop() if film_copy else None, film=film, positive=positive,
                             sat=_taken(table))


def holes_from_map(image: ImageLike, prob: np.ndarray, models: ModelSet, *, options: HoleOptions | None = None,
                   timings: dict[str, float] | None = None, **overrides: Any) -> HoleResult:
    """The stages after the U-Net: threshold, centroids, lattice, crops, scores (see find_holes).

    `prob` is the U-Net probability map of `image` (same shape); `timings` collects seconds per stage.
    """
    opts = _options(options, overrides)
    opts = replace(opts, score=opts.score or default_score(models, opts.cnn))
    image = as_image(image)
    if prob.shape != image.shape:
        raise ValueError(f"probability map shape {prob.shape} differs from the image's {image.shape}")
    timings = {} if timings is None else timings
    info = _info(image)
    lattice, reason, _ = _fit_map(prob, _threshold(opts, models), opts, timings, image=image.data)
    if lattice is None:
        return _empty(info, models, reason or "no lattice", timings)
    return _holes_on_lattice(image, prob, lattice, models, opts, timings, info)


def _first_input(given: dict[str, Any], scale: Any, multiple: int,
                 padding: str) -> tuple[float, tuple[np.ndarray, tuple[int, int]]] | None:
    """(factor, unet.scaled_unet_input) for the first period estimate where find_holes's first try runs the
    whole U-Net map at it (the image's own period: no probe), made by the worker that found the period.

    None where that is not so, where the normalised image is not handed over yet (never waited for: the
    calling thread may be gone), or where the input would be larger than the image (no speculative copies of
    hundreds of megabytes; find_holes makes those itself when it needs them)."""
    period, source = given.get("first", (None, None))
    normalised = given.get("normalised")
    if period is None or source != "image" or period < MIN_PERIOD_PX or normalised is None:
        return None
    f = unet_factor(period, scale)
    if f > 1.0:
        return None
    made = scaled_unet_input(normalised, f, multiple, padding)
    return None if made is None else (f, made)


def _taken(job: Future | None) -> Any:
    """A speculative job's result (one made beside this thread's work): None where there is none, where no
    worker has started it (a loaded machine: made here rather than waited for; it will not run), or where it
    failed (a MemoryError: made here, as without workers; an interrupt or exit is raised)."""
    if job is None or job.cancel():
        return None
    try:
        return job.result()
    except Exception:
        return None


def _drop(job: Future | None) -> None:
    """A job submitted beside this thread's work (a Future, or None) and no longer wanted: not started if still
    queued (one already running finishes; its result is dropped with the Future)."""
    if job is not None:
        job.cancel()


def _weak(best: tuple | None) -> bool:
    """Whether no lattice is in hand that stops costly tries: none, one below _LADDER_MIN_QUALITY, or one of
    fewer than _SOLID_INLIERS holes (a lattice of grid squares, the U-Net's holes at a far too coarse scale)."""
    return best is None or best[0] < _LADDER_MIN_QUALITY or best[3].n_inliers < _SOLID_INLIERS


def _why_not(reason: str | None, lattice: Lattice | None, period: float | None) -> str | None:
    """Why a try at the image's period gave no lattice: the fit's reason, or the other period its map showed."""
    if lattice is None:
        return reason
    return (f"the lattice in the U-Net map ({lattice.spacing_px:.1f} px) disagrees with the image's period "
            f"({period:.1f} px)")


def _solid_first(held: tuple | None, new: tuple) -> tuple:
    """The better of two (quality, factor, map, lattice) the period estimates gave: one of at least
    _SOLID_INLIERS holes over one of fewer, else the higher quality (the held one on a tie).

    A 1024x1440 whole-square view at 1x has the bars' pitch as its image estimate (383 px), whose map shows the
    grid squares as a few blobs on a lattice (tuning view 11403004: 4 of them, quality 0.53); it beat the holes'
    own lattice at the crop's period (5,442 of them, 0.49). A lattice of quality _CONVINCING still ends the tries
    whatever its size, unless grid bars lie between its points (_convincing): the reference image's is 17 holes
    (0.94), and going on cost it a second U-Net run."""
    if held is None:
        return new
    solid_new, solid_held = new[3].n_inliers >= _SOLID_INLIERS, held[3].n_inliers >= _SOLID_INLIERS
    if solid_new != solid_held:
        return new if solid_new else held
    return _better(held, new)


# _between_bars: lattice points sampled over a box of half-width 3 px (centroid_brightness's radius: twice
# that; enough against shot noise: a bar is black, film between holes about half as bright as they), and a
# midpoint is on a bar where its dose is below this share of the points' median.
_SAMPLE_RADIUS = 6.0
_BAR_SHARE = 0.2
# Doses upsampled with a cubic kernel ring below zero at a bar's edge, by a few % of the step (tuning view
# 11803000 at 2x: -2.2 against film at 50-90): data whose darkest sampled pixel lies less than this share of
# their brightest below zero still look like doses. Background-subtracted or z-scored data lie below zero by
# a share of their contrast (the reference image minus its mean: far more).
_OVERSHOOT = 0.05


def _convincing(quality: float, lattice: Lattice, image: np.ndarray) -> bool:
    """Whether a lattice of this quality ends the period estimates' tries: one of quality _CONVINCING, unless
    it has fewer than _SOLID_INLIERS holes with grid bars between them (_between_bars)."""
    if quality < _CONVINCING:
        return False
    return lattice.n_inliers >= _SOLID_INLIERS or not _between_bars(lattice, image)


def _dose_floor(image: np.ndarray) -> float | None:
    """The 1st percentile of a sparse sample of the image (every 8th pixel each way) where the data look like
    doses (it lies less than _OVERSHOOT of the 99th below zero), else None: the level below which "darker than
    a share of the holes'" means something (_between_bars, _dark_candidates).

    Percentiles, not the extremes: one hot pixel or zinger on the sample would set the overshoot allowed, and
    a low percentile takes a bar's read noise below zero in dark-subtracted data for its level."""
    sparse = image[::8, ::8]
    floor = float(percentile(sparse, 1.0))
    return floor if floor >= -_OVERSHOOT * float(percentile(sparse, 99.0)) else None


def _between_bars(lattice: Lattice, image: np.ndarray) -> bool:
    """Whether most midpoints between nearest lattice points (p + a / 2) are nearly opaque: a lattice of grid
    squares with the bars between them, not of holes with film between them.

    A 1024x1440 whole-square view at 1x has the bars' pitch as its image estimate, and the U-Net there shows each
    grid square as a blob (tuning view 11803006: 7 of them at quality 1.0, which ended the tries before the
    holes' own 10 px period). A few large holes are a convincing lattice too (the reference image: 17 at 0.94),
    with carbon film between them (about half the holes' dose; a bar passes under 3 %)."""
    rows, cols = image.shape
    # Dose is zero where nothing passes: "darker than a share of the points' level" needs that floor, which
    # only data that look like doses have. Data below zero (background-subtracted, z-scored) have none: their
    # darkest pixel is no bar's level (carbon between holes would read as bars), so no bars are seen there
    # and a convincing lattice ends the tries as it always did. Bars are wide: a sparse sample holds their
    # level, and where none of it is that dark beside the lattice's origin (on a hole or a square) there are
    # no bars (the reference image: 35 against 125), whatever the other points show.
    sample = _dose_floor(image)
    if sample is None:
        return False
    first = centroid_brightness(image, np.array([lattice.origin], dtype=np.float64), _SAMPLE_RADIUS)
    if first is None or not sample < _BAR_SHARE * float(first[0]):
        return False
    points = lattice.points((rows, cols), 0.0)
    a = np.asarray(lattice.a, dtype=np.float64)
    mids = points + 0.5 * a
    mids = mids[(mids[:, 0] >= 0) & (mids[:, 0] <= cols - 1) & (mids[:, 1] >= 0) & (mids[:, 1] <= rows - 1)]
    if len(points) == 0 or len(mids) == 0:
        return False
    # one call for both (each point's mean is its own: the same bits as two calls); None where either was
    both = centroid_brightness(image, np.concatenate((points, mids)), _SAMPLE_RADIUS)
    if both is None:
        return False
    on, between = both[: len(points)], both[len(points) :]
    held = float(median(on))
    if not held > 0.0:
        return False
    return bool(np.mean(between < _BAR_SHARE * held) >= 0.5)


def _better(held: tuple | None, new: tuple) -> tuple:
    """The one of two (quality, factor, map, lattice) with the higher quality (the held one on a tie)."""
    return new if held is None or new[0] > held[0] else held


def _harmonic(candidate: float, lattice: Lattice) -> bool:
    """Whether a period is, within _HARMONIC_TOLERANCE, the spacing of a family of the lattice's rows closer
    than its nearest-neighbour distance ((1, 1), (2, 0), a hexagonal array's rows; lattice.row_spacings)."""
    spacing = lattice.spacing_px
    return any(abs(math.log(candidate / d)) < _HARMONIC_TOLERANCE
               for d in row_spacings(lattice.a, lattice.b) if d < spacing * (1.0 - _HARMONIC_TOLERANCE))


# _dark_candidates: the U-Net's positive pixels are dark blobs, not holes, where their mean dose is below this
# share of the rest's (holes with thick ice are dimmer than their film, but not opaque as contamination is).
_DARK_SHARE = 0.5


def _dark_candidates(mask: np.ndarray, image: np.ndarray) -> bool:
    """Whether the U-Net's hole candidates (mask, the image's shape) are darker than the rest of the image.

    Holes pass more electrons than the film around them; the U-Net also fires on dark discs (contamination,
    ice balls) on continuous film, and any three of them span a lattice: held-out views 13205003 (4 blobs,
    quality 0.64 at an estimator's 400 px period) and 13305006 (4 blobs beside a bar) each returned 5-8
    targets on nothing. Only data that look like doses are judged (_dose_floor, as in _between_bars): data
    below zero (background-subtracted, z-scored) have no level that means "nothing passes"; a cubic
    upsampling's ringing below zero at a bar's edge (a few % of the step) does not make doses look so."""
    n = int(np.count_nonzero(mask))
    if n == 0 or n == mask.size or _dose_floor(image) is None:
        return False
    total = float(image.sum(dtype=np.float64))
    inside = float(image.sum(where=mask, dtype=np.float64))
    on, off = inside / n, (total - inside) / (mask.size - n)
    return bool(off > 0.0 and on < _DARK_SHARE * off)


def _threshold(opts: HoleOptions, models: ModelSet) -> float:
    return float(models.spec("hole_unet").threshold if opts.threshold is None else opts.threshold)


def _info(image: Image) -> ImageInfo:
    return ImageInfo(path=image.source, shape=image.shape, pixel_size_A=image.pixel_size_A, section=image.section)


def _fit_map(prob: np.ndarray, thr: float, opts: HoleOptions, timings: dict[str, float],
             max_centroids: float | None = None, window: int = REGION_WINDOW,
             min_regularity: float | None = None, image: np.ndarray | None = None,
             mask: np.ndarray | None = None, table: Future | None = None) -> tuple[Lattice | None, str | None, float]:
    """Threshold, centroids and lattice of a probability map: (lattice, None, quality) or (None, reason, 0).

    quality: the share of centroids on the lattice (less those on cosets set aside, Lattice.n_set_aside)
    times the share of lattice points on a positive pixel.
    With more than `max_centroids` candidates, or at least _REGULAR_MIN_BLOBS of them less regular than
    `min_regularity` (lattice.regularity), no lattice is fitted. `image` (the map's, same shape): the general
    model's index-2 check also compares the image's brightness at the centroids (centroid_brightness).
    mask: prob > thr where the caller has it; table: a Future of its summed_area_table (made on a second core).
    """
    t = time.perf_counter()
    mask = prob > thr if mask is None else mask
    centroids = hole_centroids(mask, window)
    timings["centroids"] = timings.get("centroids", 0.0) + time.perf_counter() - t
    if len(centroids) < 2:
        return None, f"fewer than 2 hole candidates in the U-Net map ({len(centroids)})", 0.0
    if max_centroids is not None and len(centroids) > max_centroids:
        return None, f"{len(centroids)} hole candidates are more than the lattice can hold", 0.0
    if min_regularity is not None and len(centroids) >= _REGULAR_MIN_BLOBS:
        t = time.perf_counter()
        share = _regularity(centroids, mask, min_regularity)
        timings["lattice"] = timings.get("lattice", 0.0) + time.perf_counter() - t
        if share < min_regularity:
            return None, f"the {len(centroids)} hole candidates lie irregularly (no lattice)", 0.0
    brightness = None
    if opts.lattice_model == "general":
        centroids = _uncut(centroids, mask)
        if image is not None:
            brightness = centroid_brightness(image, centroids, _blob_radius(mask, len(centroids)))
    t = time.perf_counter()
    # the table made beside the centroids (made here where no worker has started it, or it failed)
    sat = _taken(table)
    lattice = fit_lattice(centroids, mask, k=opts.k, refine=opts.refine, model=opts.lattice_model,  # type: ignore[arg-type]
                          brightness=brightness, sat=sat)
    timings["lattice"] = timings.get("lattice", 0.0) + time.perf_counter() - t
    if lattice is None:
        what = "square lattice" if opts.lattice_model == "square" else "lattice"
        return None, f"no {what} fits the hole candidates", 0.0
    # blobs the index-2 check set aside (the U-Net's between the holes) are no evidence against the lattice
    explained = max(len(centroids) - lattice.n_set_aside, 1)
    return lattice, None, min(lattice.n_inliers / explained, 1.0) * lattice.occupancy


# _regularity's second look keeps the blobs at least this share of the 75th-percentile blob's area.
_SIZABLE_SHARE = 0.5


def _regularity(centroids: np.ndarray, mask: np.ndarray, enough: float = _MIN_REGULARITY) -> float:
    """lattice.regularity of the candidates; where below `enough`, that of the mask's sizable blobs (at least
    _SIZABLE_SHARE of the 75th-percentile blob's area) if higher.

    The U-Net's faint blobs on the film at a square lattice's cell centres (a centred coset, which fit_lattice's
    index-2 check sets aside) lie 0.71 periods from four holes each: the nearest-neighbour distances split
    into two modes and the median falls between them (tuning view 12403003 at 2x, a 31 px grid-square
    lattice: 366 candidates, 0.42, its probe refused and the grid squares' lattice returned; the 319 blobs
    as large as holes: 0.98). Those blobs are a fraction of a hole's size; a sizable subset of noise blobs
    lies as irregularly as all of them."""
    share = regularity(centroids)
    if not share < enough:
        return share
    import cv2

    n, _, stats, cents = cv2.connectedComponentsWithStats(mask.view(np.uint8) if mask.dtype == np.bool_
                                                           else (mask != 0).astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if n - 1 < _REGULAR_MIN_BLOBS:
        return share
    sizable = cents[1:][areas >= _SIZABLE_SHARE * float(percentile(areas, 75))]
    if len(sizable) < _REGULAR_MIN_BLOBS:
        return share
    return max(share, regularity(sizable))


def _film_quality(lattice: Lattice, quality: float, positive: np.ndarray, image: np.ndarray,
                  films: dict[float, np.ndarray], sat: np.ndarray | None = None) -> float:
    """A lattice's quality (_fit_map's) with its occupancy counted over the lattice points on the film alone
    (film.film_mask, as _holes_on_lattice keeps them), where that is higher.

    Grid bars and the area outside the squares hold no holes, yet their lattice points count against the
    occupancy: a whole-square view whose bars cover half of it scores half at best (tuning view 12403003 at
    2x: 2,881 holes on the 31 px lattice, occupancy 0.47, quality 0.33, refused; the grid squares' lattice
    of 6 was returned instead). The occupancy (lattice.occupancy's footprint) is scaled by the share of the
    points on film that are occupied over that of all of them, each with a positive pixel within a quarter
    period: a view without bars keeps its quality whatever the two footprints make of it.
    films: film masks by period, made here where the lift can reach _LADDER_MIN_QUALITY and kept for
    _holes_on_lattice (a full-image pass: 20-120 ms at 1024x1440, over a second at 4096x4096).
    sat: summed_area_table(positive) where the caller has it (the fit's, made on a second core)."""
    if not lattice.occupancy > 0.0:
        return quality
    spacing = lattice.spacing_px
    points = lattice.points(positive.shape, 0.0)
    held = _occupied(points, summed_area_table(positive) if sat is None else sat, max(1, int(0.25 * spacing)))
    share = float(held.mean()) if len(held) else 0.0
    # the points on film can at most all be occupied: no film mask where even that leaves it refused
    if not share > 0.0 or quality / share < _LADDER_MIN_QUALITY:
        return quality
    mask = films.get(spacing)
    if mask is None:
        films.clear()  # one image-sized mask held at a time
        mask = films[spacing] = film_mask(image, spacing, finite=True)
    on = on_film(points, mask, FILM_RADIUS * spacing)
    if int(on.sum()) < _SOLID_INLIERS:
        return quality
    return max(quality, quality * float(held[on].mean()) / share)


def _occupied(points: np.ndarray, sat: np.ndarray, h: int) -> np.ndarray:
    """Per point (n, 2) xy: whether the box of half-width h px around it (cut by the image's edges) holds a
    positive pixel, from the mask's summed_area_table: O(1) each."""
    rows, cols = sat.shape[0] - 1, sat.shape[1] - 1
    x, y = np.rint(points[:, 0]).astype(np.int64), np.rint(points[:, 1]).astype(np.int64)
    x0, x1 = np.clip(x - h, 0, cols), np.clip(x + h + 1, 0, cols)
    y0, y1 = np.clip(y - h, 0, rows), np.clip(y + h + 1, 0, rows)
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) > 0


def _blob_radius(mask: np.ndarray, n: int) -> float:
    """The radius (px) of a disc as large as the mean blob: positive pixels per centroid."""
    return math.sqrt(float(np.count_nonzero(mask)) / max(n, 1) / math.pi)


def centroid_brightness(image: np.ndarray, centroids: np.ndarray, radius: float) -> np.ndarray | None:
    """Mean of `image` over a square of half-width ~radius / 2 (at least 1 px) around each centroid (n, 2) xy,
    cut by the image's edges; None where the image is not finite there."""
    img = np.asarray(image)
    rows, cols = img.shape
    if len(centroids) == 0:
        return np.zeros(0, dtype=np.float64)
    h = max(1, int(round(0.5 * radius)))
    x = np.rint(centroids[:, 0]).astype(np.int64)
    y = np.rint(centroids[:, 1]).astype(np.int64)
    offsets = np.arange(-h, h + 1, dtype=np.int64)
    # (n, 2h + 1) rows and columns, clipped to the image: a square cut by an edge repeats the edge's pixels
    r = np.clip(y[:, None] + offsets, 0, rows - 1)
    c = np.clip(x[:, None] + offsets, 0, cols - 1)
    patches = img[r[:, :, None], c[:, None, :]].astype(np.float64)
    values = patches.reshape(len(centroids), -1).mean(axis=1)
    return values if np.all(np.isfinite(values)) else None


def _uncut(centroids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The centroids of blobs the image's edge does not cut (farther from it than 1.2 mean blob radii).

    A cut blob's centroid lies inward of its hole's centre by up to half a radius; where a whole row of
    holes runs along an edge (a hexagonal array at 0 degrees), least squares over both basis vectors shrinks
    the lattice by that shift. The square model's single vector averages it out, and compat must not change.
    Kept as they are when fewer than 4 would remain."""
    rows, cols = mask.shape
    radius = _blob_radius(mask, len(centroids))
    edge = np.minimum(np.minimum(centroids[:, 0], cols - 1 - centroids[:, 0]),
                      np.minimum(centroids[:, 1], rows - 1 - centroids[:, 1]))
    keep = edge > 1.2 * radius
    return centroids[keep] if keep.sum() >= 4 else centroids


def _holes_on_lattice(image: Image, prob: np.ndarray, lattice: Lattice, model_set: ModelSet, opts: HoleOptions,
                      timings: dict[str, float], info: ImageInfo, unet_area: float = 1.0,
                      finite: bool = False, film_copy: Future | None = None,
                      film: np.ndarray | None = None, positive: np.ndarray | None = None,
                      sat: np.ndarray | None = None) -> HoleResult:
    """The stages after the lattice: lattice points, crops, U-Net and CNN scores.

    unet_area: U-Net pixels per input pixel (unused: the "unet" score is the mean probability over the crop,
    which a scale-normalised U-Net gives the same at any magnification; see scoring.unet_scores).
    finite: the image is known to be finite as float32 (find_holes's normalise_image summed it to a finite mean).
    film_copy: a Future of film.film_working_copy(image, some period, finite=finite), made beside the lattice fit.
    film: film.film_mask(image, lattice.spacing_px, finite=finite) where already made (_film_quality).
    positive: prob > the threshold, and sat its summed_area_table, where find_holes already made them.
    """
    if lattice.spacing_px > min(image.shape) / 2.0:
        # fewer than two periods fit: the lattice is two or three blobs, its other points invented
        return _empty(info, model_set, f"{SINGLE_HOLE_REASON} (lattice period {lattice.spacing_px:.0f} px, fewer "
                      f"than two periods fit in {image.shape[1]}x{image.shape[0]} px)", timings)
    points = lattice.points(image.shape, opts.edge_tolerance)
    if len(points) == 0:
        return _empty(info, model_set, f"no lattice point within edge_tolerance={opts.edge_tolerance:g} px",
                      timings, lattice)
    t = time.perf_counter()
    # A point beyond the image's edge (edge_tolerance > 0) is judged by the film at the nearest edge pixel:
    # on_film alone would call every point without a footprint pixel inside the image off film.
    inside = np.clip(points, 0.0, [image.shape[1] - 1.0, image.shape[0] - 1.0])
    mask = film if film is not None else film_mask(image.data, lattice.spacing_px, finite=finite,
                                                   working=_taken(film_copy))
    film_copy = None  # the copy (near the image's size at a short period) is not kept through the scores
    on = on_film(inside, mask, FILM_RADIUS * lattice.spacing_px)
    if not on.all() and on.any():
        if positive is None:
            positive = prob > _threshold(opts, model_set)
        on |= _beside_bars(image.data, positive, inside, on, mask, lattice.spacing_px, sat)
    timings["film"] = time.perf_counter() - t
    if not opts.keep_off_film:
        if not on.any():
            return _empty(info, model_set, f"all {len(points)} lattice points lie off the holey film (grid bars, "
                          "outside the square or broken film; --keep-off-film shows them)", timings, lattice)
        points, on = points[on], on[on]
    t = time.perf_counter()
    # Crops are squares along a, of side <= 0.9 |a| (|a| the nearest-neighbour distance) in every lattice:
    # in a hexagonal array a neighbour's centre then lies 0.42 |a| from the crop (0.55 |a| in a square
    # one), so its hole (radius <= 0.35 |a|) stays outside, and the crop still shows film around its own.
    geometry = hole_crops(points, lattice.angle_deg, lattice.spacing_px, image.shape, opts.crop_mode)
    unet = unet_scores(prob, geometry)
    timings["crops"] = time.perf_counter() - t
    cnn_values = cnn_scores(image.data, geometry, model_set, timings) if opts.cnn else np.full(len(points), np.nan)

    holes = []
    for i, p in enumerate(points):
        c = float(cnn_values[i]) if opts.cnn and math.isfinite(cnn_values[i]) else None
        scores = {"unet": float(unet[i]), "cnn": c}
        holes.append(Hole(x=float(p[0]), y=float(p[1]), vertices=geometry.vertices[i], area=geometry.area,
                          score=scores[str(opts.score)], scores=scores, on_film=bool(on[i])))
    return HoleResult(holes=sort_targets(holes), angle_deg=lattice.angle_deg, spacing_px=lattice.spacing_px,
                      basis=lattice.basis, origin=lattice.origin, image=info, models=model_set.ids, reason=None,
                      timings=timings, lattice=lattice)


# _beside_bars looks again at points off the film mask that lie within this many periods of its film ...
_BESIDE_PERIODS = 1.0
# ... and keeps those that show a hole (a U-Net positive within _SEEN_PERIODS, its centre _HOLE_CONTRAST times
# as bright as the film ring at _RING_PERIODS) with no pixel as dark as a bar within _RING_PERIODS: darker
# than _BAR_DARK of the median hole's brightness on the film (bars pass nearly nothing; gold foil between
# holes passes 4-18 % of a hole's dose), after a blur of _BLUR_PERIODS against shot noise.
_SEEN_PERIODS = 0.15
_RING_PERIODS = 0.45
_HOLE_CONTRAST = 1.15
_BAR_DARK = 0.03
_BLUR_PERIODS = 0.06
# The off-film area within _BESIDE_PERIODS must be a bar's or the outside's: its median below this share of
# the holes' (torn film passes a hole's dose or more; a hole partly on it is no target).
_OFF_DARK = 0.35


def _beside_bars(image: np.ndarray, positive: np.ndarray, points: np.ndarray, on: np.ndarray, mask: np.ndarray,
                 spacing: float, sat: np.ndarray | None = None) -> np.ndarray:
    """Which lattice points off the film mask (on False) are whole holes on film beside a bar after all.

    The film mask's edge follows the closed image, in which a dim hole (thick ice) in the last row before a
    bar is no brighter than film: it went off film with the bar (512x364 whole-square views: 2-9 targets a
    view, 0.4-0.7 periods from the bar). A point whose disc of _RING_PERIODS holds no bar-dark pixel has its
    hole (radius <= 0.35 periods) wholly on film or on torn film; torn film is as bright as a hole, so the
    off-film area beside the point must be dark, and the hole brighter than its ring.

    Every level is measured above the image's dark level (its 0.5th percentile, the bars' where bars are in
    view), not above zero: a pedestal (a detector's bias, a raised black level) of 3 % of the holes' dose
    would leave no pixel darker than _BAR_DARK of it, and holes on a bar would come back.

    sat: summed_area_table(positive) where the caller has it (made here where not)."""
    import cv2

    out = np.zeros(len(points), dtype=bool)
    near = ~on
    near[near] = ~on_film(points[near], ~mask, _BESIDE_PERIODS * spacing)
    if not near.any():
        return out
    seen = _SEEN_PERIODS * spacing
    # a U-Net positive in the box around the point (the hole seen; a bar's points have none)
    near[near] = _occupied(points[near], summed_area_table(positive) if sat is None else sat, max(1, int(seen)))
    if not near.any():
        return out
    data = np.asarray(image, dtype=np.float32)
    level = centroid_brightness(data, points[on], 2.0 * _SEEN_PERIODS * spacing)
    lo = float(percentile(data[::4, ::4], 0.5))
    if level is None or not math.isfinite(lo):
        return out
    top = float(median(level)) - lo
    if not top > 0.0:
        return out
    dark = lo + _BAR_DARK * top
    rows, cols = data.shape
    ring = _RING_PERIODS * spacing
    sigma = max(1.0, _BLUR_PERIODS * spacing)
    reach = _BESIDE_PERIODS * spacing
    # the blur over the ring's box only (with the kernel's reach); the off area's median over a period's
    pad = int(math.ceil(ring + 3.0 * sigma)) + 1
    wide = int(math.ceil(reach)) + 1
    for i in np.flatnonzero(near):
        x, y = points[i]
        c0, c1 = max(0, int(x) - pad), min(cols, int(x) + pad + 2)
        r0, r1 = max(0, int(y) - pad), min(rows, int(y) + pad + 2)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        disc, centre = d2 <= ring * ring, d2 <= seen * seen
        if not (centre.any() and positive[r0:r1, c0:c1][centre].any()):
            continue
        annulus = disc & (d2 >= (0.85 * ring) ** 2)
        if not annulus.any():
            continue
        patch = cv2.GaussianBlur(data[r0:r1, c0:c1], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        if patch[disc].min() < dark:
            continue
        # the film mask's off area beside it is a bar's (dark), not torn film (as bright as a hole)
        c0, c1 = max(0, int(x) - wide), min(cols, int(x) + wide + 2)
        r0, r1 = max(0, int(y) - wide), min(rows, int(y) + wide + 2)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        off = ~mask[r0:r1, c0:c1] & ((xx - x) ** 2 + (yy - y) ** 2 <= reach * reach)
        if not off.any() or not float(median(data[r0:r1, c0:c1][off])) - lo < _OFF_DARK * top:
            continue
        out[i] = float(patch[centre].mean()) - lo > _HOLE_CONTRAST * (float(median(patch[annulus])) - lo)
    return out


def _single_holes(image: Image, large: list[LargeHole], model_set: ModelSet, opts: HoleOptions,
                  timings: dict[str, float], info: ImageInfo) -> HoleResult:
    """The holes of a view that one hole fills (views.large_holes), scored by the hole CNN, with the reason."""
    t = time.perf_counter()
    points = np.array([[h.x, h.y] for h in large], dtype=np.float64)
    # The crop shows the hole and a rim of film, as a lattice crop does (holes span ~0.7 periods).
    spacing = max(h.diameter_px for h in large) / 0.7
    geometry = hole_crops(points, 0.0, spacing, image.shape, "centred")
    timings["crops"] = time.perf_counter() - t
    cnn_values = cnn_scores(image.data, geometry, model_set, timings) if opts.cnn else np.full(len(points), np.nan)
    holes = []
    for i, h in enumerate(large):
        c = float(cnn_values[i]) if opts.cnn and math.isfinite(cnn_values[i]) else None
        # no U-Net map was made: there is no lattice scale to run it at
        scores = {"unet": None, "cnn": c}
        holes.append(Hole(x=h.x, y=h.y, vertices=geometry.vertices[i], area=geometry.area,
                          score=scores[str(opts.score)], scores=scores, diameter_px=h.diameter_px, on_film=True))
    return HoleResult(holes=sort_targets(holes), angle_deg=None, spacing_px=None, basis=None, origin=None,
                      image=info, models=model_set.ids, reason=SINGLE_HOLE_REASON, timings=timings)


def _empty(info: ImageInfo, models: ModelSet, reason: str, timings: dict[str, float],
           lattice: Lattice | None = None) -> HoleResult:
    return HoleResult(
        holes=(),
        angle_deg=None if lattice is None else lattice.angle_deg,
        spacing_px=None if lattice is None else lattice.spacing_px,
        basis=None if lattice is None else lattice.basis,
        origin=None if lattice is None else lattice.origin,
        image=info,
        models=models.ids,
        reason=reason,
        timings=timings,
        lattice=lattice,
    )
