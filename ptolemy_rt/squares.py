"""The low-mag pipeline: find grid squares in an atlas image and score them.

Stages (each timed in ``SquareResult.timings``): read -> mesh (grid pitch, bar width, angle: mesh.py; no mesh:
an empty result with the reason) -> disc (atlas_classes.disc_mask) -> seams (montage.remove_seams: the cleaned
image is used only when a seam was found, its tiles' brightness offsets then flattened:
montage.flatten_tile_offsets) -> mixture (Poisson mixture mask, mixture.py) -> regions (grouping window and
area limits from the mesh, convex hulls, regions.py) -> lattice (regions off the disc or off the lattice are
dropped; regions larger than one square, squares joined across a bar or a bright seam, are split along the
fitted lattice (split_on_lattice); one region per lattice point; lattice points with no region added as
``found_by: "lattice"``; squares the image's edge or the disc's rim cut to under half flagged ``edge``) -> angle
(grid angle, boxes: here) -> classes (brightness: the mean in the axis-aligned box inscribed in 80 % of each
square, the same for every square; atlas_classes.classify_squares, relative to the atlas's median square scaled
by the illumination around it on the lattice (200 squares or more), clipped to what tile gains and fall-off
do) -> crops (crops.py) -> cnn (scoring.py).

``SquareOptions(compat=True)`` (``SquareOptions.ptolemy()``, the CLI's ``--compat ptolemy``) runs the original
pipeline only: read -> mixture -> regions (6 px, 100 px²) -> angle -> crops -> cnn.

A path to a SerialEM montage stack with its ``.mdoc`` beside it (PATH.mdoc) is read as the assembled montage
(io.read_image: montage.read_montage, per-piece gains flattened), in every mode; pass ``section=`` to take one
piece instead.

Explicit ``window`` / ``min_area`` win over the mesh's values; the mesh, disc and lattice stages still run.
Squares off the grid disc are dropped (background, never a square), so the class "off-disc" never appears.

Angles: the grid angle search works with the original's theta, the rotation (counter-clockwise on
screen) that makes the grid upright; the box edges then run along (cos theta, sin theta) in the input,
i.e. at -theta on screen. ``SquareResult.angle_deg`` follows our convention (counter-clockwise on
screen, in [0, 90)): (-theta) mod 90.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from . import _orderstats, _workers
from .crops import CROP_SIZE, _hull_points, reduced_square_crops, rotated_frame, square_crop_source, square_crops
from .io import ImageLike, as_image, check_min_size
from .models import ModelsLike
from .options import COMPAT_MIN_AREA, COMPAT_WINDOW, SquareOptions
from .regions import Regions, find_regions, region_means
from .results import ImageInfo, Square, SquareResult, sort_targets
from .scoring import BatchPolicy, classify, plan_batches

__all__ = [
    "find_squares",
    "summed_box_area",
    "grid_angle",
    "Boxes",
    "boxes_at_angle",
    "square_crops",
    "class_stats",
    "crop_normalisation",
    "SquareOptions",
    "angle_ccw",
    "square_outline",
    "may_have_seams",
    "inner_means",
    "MIN_SIDE",
    "CROP_SIZE",
]

MIN_SIDE = 256
# The original scored all crops of an image in one batch; onnxruntime's memory grows with the batch, so
# larger sets go in batches of this many (a documented deviation: batch-statistics scores then differ).
MAX_BATCH = 256
# Models whose BatchNorm uses running statistics (or none) give the same scores in any batch: small
# batches bound memory at no cost. Four 240x240 crops a batch; smaller crops in more crops a batch, up to 16
# (16 of 60x60 run as fast as 64 on two cores, and onnxruntime's buffers for 64 added ~60 MiB of peak memory).
_INDEPENDENT_BATCH = 4
_INDEPENDENT_MAX = 16


def _batch_policy(batch_size: int) -> BatchPolicy:
    per = max(1, min(int(batch_size), MAX_BATCH))
    return BatchPolicy(original_batch=None, max_batch=per, independent_batch=min(per, _INDEPENDENT_MAX),
                       independent_pixels=min(per, _INDEPENDENT_BATCH) * CROP_SIZE * CROP_SIZE)


# ---------------------------------------------------------------------------------------------------
# Grid angle


def _pack(hulls: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All hull vertices in one (m, 2) array, each hull relative to its first vertex, and its start offsets."""
    lengths = np.fromiter((len(h) for h in hulls), dtype=np.int64, count=len(hulls))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    points = np.concatenate([h - h[0] for h in hulls]).astype(np.float64)
    return points, starts


def summed_box_area(points: np.ndarray, starts: np.ndarray, angles_deg: np.ndarray | float) -> np.ndarray:
    """Sum over hulls of the area of each hull's bounding rectangle in the frame rotated by each angle."""
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    out = np.empty(angles.shape[0], dtype=np.float64)
    # Chunk the angles so the (angles, points) temporaries stay near 16 MB whatever the image.
    chunk = max(1, int(2_000_000 // max(points.shape[0], 1)))
    x = points[:, 0][None, :]
    y = points[:, 1][None, :]
    for a0 in range(0, angles.shape[0], chunk):
        rad = np.radians(angles[a0 : a0 + chunk])[:, None]
        c, s = np.cos(rad), np.sin(rad)
        u = x * c + y * s
        v = y * c - x * s
        du = np.maximum.reduceat(u, starts, axis=1) - np.minimum.reduceat(u, starts, axis=1)
        dv = np.maximum.reduceat(v, starts, axis=1) - np.minimum.reduceat(v, starts, axis=1)
        out[a0 : a0 + chunk] = (du * dv).sum(axis=1)
    return out


_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _refine_scan(points: np.ndarray, starts: np.ndarray, lo: float, hi: float, xatol: float,
                 n: int = 17) -> tuple[float, float]:
    """(theta, value) minimising summed_box_area in [lo, hi]: n evenly spaced angles in one vectorised call pick
    the basin, then a golden-section search within one spacing of the best refines it to xatol (about 20
    evaluations, each one call over all hull vertices: at 8192² the vertices are ~10^5, so fewer calls beat
    finer scans). Deterministic, and without scipy.optimize (0.2-0.3 s of every process's imports)."""
    xs = np.linspace(lo, hi, n)
    vs = summed_box_area(points, starts, xs)
    k = int(np.argmin(vs))
    best_x, best_v = float(xs[k]), float(vs[k])
    step = (hi - lo) / (n - 1)
    a, b = max(lo, best_x - step), min(hi, best_x + step)  # within the bounds, as Brent keeps to them

    def f(x: float) -> float:
        return float(summed_box_area(points, starts, x)[0])

    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 2.0 * xatol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)
    for x, v in ((c, fc), (d, fd)):
        if v < best_v:
            best_x, best_v = x, v
    return best_x, best_v


def grid_angle(hulls: Sequence[np.ndarray], *, step_deg: float = 1.0, xatol: float = 1e-5,
               around: float | None = None, span_deg: float = 2.0, method: str = "scan") -> float:
    """Theta in [0, 90) minimising the summed area of the theta-aligned bounding rectangles of all hulls.

    A scan every `step_deg` picks the basin, then the minimum is refined within one step either side:
    method "scan" by a finer scan and a golden-section search (_refine_scan), "brent" by scipy's bounded Brent search
    (minimize_scalar), as recorded `--compat ptolemy` results were. The original ran Brent over [0, 90] at once,
    which can settle in a local minimum that depends on the image's orientation; the scan makes rotated and
    mirrored images agree. `around`: a theta known already (the mesh's): the scan covers only +- span_deg
    about it."""
    if method not in ("scan", "brent"):
        raise ValueError(f"grid_angle: method must be 'scan' or 'brent', not {method!r}")
    points, starts = _pack(hulls)
    if around is None:
        grid = np.arange(0.0, 90.0, step_deg)
    else:
        grid = float(around) + np.arange(-span_deg, span_deg + 1e-9, min(step_deg, 0.5 * span_deg))
    values = summed_box_area(points, starts, grid)
    best = int(np.argmin(values))
    centre = float(grid[best])
    if method == "scan":
        x, fun = _refine_scan(points, starts, centre - step_deg, centre + step_deg, xatol)
    else:
        from scipy.optimize import minimize_scalar  # only here: its import costs a process 0.2-0.3 s

        def objective(a: float) -> float:
            return float(summed_box_area(points, starts, a)[0])

        res = minimize_scalar(objective, bounds=(centre - step_deg, centre + step_deg), method="bounded",
                              options={"xatol": xatol})
        x, fun = float(res.x), float(res.fun)
    theta = x if fun <= values[best] else centre
    theta = theta % 90.0
    return 0.0 if theta >= 90.0 else theta


def angle_ccw(theta_deg: float) -> float:
    """Our angle convention (grid edges, counter-clockwise on screen, [0, 90)) from the original's theta."""
    a = (-theta_deg) % 90.0
    return 0.0 if a >= 90.0 else a


# ---------------------------------------------------------------------------------------------------
# Boxes


@dataclass(frozen=True)
class Boxes:
    """Theta-aligned bounding rectangles of hulls: vertices in the original's corner order, centres, areas."""

    theta_deg: float
    vertices: np.ndarray  # (n, 4, 2) x, y
    centers: np.ndarray  # (n, 2) x, y: mean of the vertices
    areas: np.ndarray  # (n,) px²


def boxes_at_angle(hulls: Sequence[np.ndarray], theta_deg: float) -> Boxes:
    """Each hull's bounding rectangle in the frame rotated by theta, mapped back to input coordinates.

    Corner order as the original's: (u_min, v_min), (u_min, v_max), (u_max, v_max), (u_max, v_min), where
    u = x cos + y sin and v = y cos - x sin."""
    n = len(hulls)
    if n == 0:
        return Boxes(theta_deg, np.zeros((0, 4, 2)), np.zeros((0, 2)), np.zeros(0))
    origins = np.array([h[0] for h in hulls], dtype=np.float64)
    points, starts = _pack(hulls)
    rad = math.radians(theta_deg)
    c, s = math.cos(rad), math.sin(rad)
    u = points[:, 0] * c + points[:, 1] * s
    v = points[:, 1] * c - points[:, 0] * s
    umin, umax = np.minimum.reduceat(u, starts), np.maximum.reduceat(u, starts)
    vmin, vmax = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
    cu = np.stack([umin, umin, umax, umax], axis=1)
    cv = np.stack([vmin, vmax, vmax, vmin], axis=1)
    x = cu * c - cv * s + origins[:, 0:1]
    y = cu * s + cv * c + origins[:, 1:2]
    vertices = np.stack([x, y], axis=2)
    return Boxes(theta_deg, vertices, vertices.mean(axis=1), (umax - umin) * (vmax - vmin))


# ---------------------------------------------------------------------------------------------------
# Pixel statistics

def class_stats(image: np.ndarray, mask: np.ndarray, *, integral: bool = False) -> tuple[float, float]:
    """Mean and standard deviation of the non-zero image pixels of the square class (the original's crop
    normalisation: it took image * mask and dropped zeros).

    integral: the caller knows every pixel is a whole number of magnitude at most 2**16 (counts:
    mixture.CountScale.integer): then the first pass is exact in any order (_exact_sum) without checking."""
    return _class_stats(image, mask, integral=integral, for_crops=False)


def crop_normalisation(image: np.ndarray, mask: np.ndarray, *, integral: bool = False) -> tuple[float, float]:
    """(mean, std) to normalise the square crops by: class_stats' mean, and a std whose float32 reciprocal is
    class_stats' (np.float32(1 / std) is all that square_crops and reduced_frame take of it, and std > 0).

    The second pass is summed in any order (np.sum, blocks on threads). Any order of adding n non-negative
    terms is within (n - 1) u / (1 - (n - 1) u) of their exact sum (u = 2**-53; Higham, Accuracy and Stability
    of Numerical Algorithms, 4.2), the pixel-order sum too; float32(1 / sqrt(S / n)) is monotone in S, so
    where it is the same at both ends of that bound it is class_stats' value. Otherwise (a reciprocal within
    ~1e-9 of a float32 rounding boundary) the pixel-order sum is taken."""
    return _class_stats(image, mask, integral=integral, for_crops=True)


# The any-order second pass's bound, in units of n * 2**-53 * sum: 2 for both sums' errors, 2 to spare.
_ORDER_BOUND = 4.0


def _class_stats(image: np.ndarray, mask: np.ndarray, *, integral: bool, for_crops: bool) -> tuple[float, float]:
    x = np.ascontiguousarray(image, dtype=np.float32)
    m = np.asarray(mask)
    # Two passes in float64, each summed in pixel order (cumsum; np.sum is pairwise), as recorded results were.
    # A block of rows at a time, the running sum carried into the next block's first element: the same
    # additions in the same order (the same bits) without a float64 copy of every selected pixel (2 x 240 MB
    # at 8192²).
    rows = max(1, _STATS_BLOCK // max(1, x.shape[1])) if x.ndim == 2 else x.shape[0]
    blocks = [(r, min(r + rows, x.shape[0])) for r in range(0, x.shape[0], rows)]

    def select(span: tuple[int, int]) -> np.ndarray:
        xb = x[span[0] : span[1]]
        return xb[(m[span[0] : span[1]] != 0) & (xb != 0.0)]

    # Up to _KEEP_SELECTED pixels, each block's selected pixels are taken once for both passes (float32, at most
    # 16 MB; read-only: the passes copy before they write); larger images select again in the second pass.
    kept = None if x.size > _KEEP_SELECTED else _workers.run_all(lambda i, _: select(blocks[i]), len(blocks))

    def selected(span: tuple[int, int]) -> np.ndarray:
        return select(span) if kept is None else kept[blocks.index(span)]

    integral = integral and x.size < 2**36
    first = _exact_sum(x, m, blocks, integral=integral) if kept is None else _exact_sum_of(kept, integral=integral)
    if first is None:
        total, n = _running_sum(blocks, lambda span: selected(span).astype(np.float64))
    else:
        total, n = first
    if n == 0:
        return 0.0, 0.0
    mean = total / n

    def deviations(span: tuple[int, int]) -> np.ndarray:
        # float64(x) - mean in one pass (the ufunc casts each pixel first: the same values as astype, then -=).
        sel = np.subtract(selected(span), mean, dtype=np.float64)
        sel *= sel
        return sel

    if for_crops:
        with np.errstate(all="ignore"):
            any_order = math.fsum(_workers.run_all(lambda i, _: float(np.sum(deviations(blocks[i]))), len(blocks)))
        bound = _ORDER_BOUND * n * 2.0**-53 * any_order
        lo, hi = any_order - bound, any_order + bound
        if math.isfinite(any_order) and lo > 0.0 and \
                np.float32(1.0 / math.sqrt(lo / n)) == np.float32(1.0 / math.sqrt(hi / n)):
            return mean, math.sqrt(any_order / n)
    total, _ = _running_sum(blocks, deviations)
    return mean, math.sqrt(total / n)


def _running_sum(blocks: list[tuple[int, int]], values: Any) -> tuple[float, int]:
    """The float64 sum in order (each addition rounded in turn, as one cumsum) of values(block) over the blocks,
    and their count. With a second thread, the next block's values are made while this block is summed (the
    running sum itself is one chain: the same additions in the same order, the same bits)."""
    total, n = 0.0, 0

    def add(v: np.ndarray) -> None:
        nonlocal total, n
        if v.size:
            v[0] += total
            total = float(np.cumsum(v)[-1])
            n += v.size

    if len(blocks) < 2 or _workers.workers() < 2:
        for span in blocks:
            add(values(span))
        return total, n
    ahead = _workers.submit(values, blocks[0])
    for i in range(len(blocks)):
        v = ahead.result()
        if i + 1 < len(blocks):
            ahead = _workers.submit(values, blocks[i + 1])
        add(v)
    return total, n


def _exact_sum(x: np.ndarray, m: np.ndarray, blocks: list[tuple[int, int]], *,
               integral: bool = False) -> tuple[float, int] | None:
    """The float64 sum and count of the non-zero pixels of x where m is set, when every partial sum of them is
    exact (so any order of adding gives the pixel-order sum's bits), else None.

    The pixels are float32: each positive one is a whole multiple of 2**q, q = frexp(smallest)[1] - 24 (a
    float32 holds 24 significant bits; larger pixels are coarser multiples). A float64 holds every multiple of
    2**q below 2**(53 + q) exactly, so with all pixels positive and their sum under 2**(52 + q) (a factor 2
    to spare for the check's own rounding) no partial sum in any order is rounded. integral: the caller knows
    the pixels are whole numbers under 2**16 in magnitude and fewer than 2**36 (then every partial sum is under
    2**52: exact) and zeros are in the sum, which adds nothing. Blocks are summed on several threads."""

    def part(span: tuple[int, int]) -> tuple[float, int, float]:
        xb, mb = x[span[0] : span[1]], m[span[0] : span[1]] != 0
        if integral:
            return float(np.sum(xb, where=mb, dtype=np.float64)), int(np.count_nonzero(mb & (xb != 0.0))), 1.0
        sel = mb & (xb != 0.0)
        c = int(np.count_nonzero(sel))
        if c == 0:
            return 0.0, 0, math.inf
        # NaN makes the smallest NaN (then no exact sum); -inf or any negative pixel makes it <= 0 (likewise).
        return float(np.sum(xb, where=sel, dtype=np.float64)), c, float(np.min(xb, where=sel, initial=np.inf))

    parts = _workers.run_all(lambda i, _: part(blocks[i]), len(blocks))
    n = sum(p[1] for p in parts)
    total = math.fsum(p[0] for p in parts)  # each part exact when the whole is: any sum of them is exact too
    if integral or n == 0:
        return total, n
    smallest = min(p[2] for p in parts)
    if not (smallest > 0.0 and math.isfinite(total)):
        return None
    q = math.frexp(smallest)[1] - 24
    return (total, n) if total <= math.ldexp(1.0, 52 + q) else None


# Pixels per block in class_stats.
_STATS_BLOCK = 1 << 20
# Images of at most this many pixels have their class's pixels selected once for both of class_stats' passes.
_KEEP_SELECTED = 4 << 20


def _exact_sum_of(parts: list[np.ndarray], *, integral: bool = False) -> tuple[float, int] | None:
    """_exact_sum of pixels already selected (the non-zero pixels of x where m is set, block by block): the same
    sum and count where every partial sum is exact, else None (the same test on the same values)."""
    n = sum(int(v.size) for v in parts)
    total = math.fsum(float(np.sum(v, dtype=np.float64)) for v in parts)
    if integral or n == 0:
        return total, n
    smallest = min(float(np.min(v)) if v.size else math.inf for v in parts)
    if not (smallest > 0.0 and math.isfinite(total)):
        return None
    q = math.frexp(smallest)[1] - 24
    return (total, n) if total <= math.ldexp(1.0, 52 + q) else None


# ---------------------------------------------------------------------------------------------------
# Pipeline


def find_squares(
    image_or_path: ImageLike,
    models: ModelsLike | bool = None,
    *,
    options: SquareOptions | None = None,
    section: int | None = None,
    provider: str = "auto",
    threads: int | None = None,
    **overrides: Any,
) -> SquareResult:
    """Find and score the grid squares of a low-mag atlas image (models=False: geometry only, score None).

    options: a SquareOptions; keyword arguments named as its fields (window=, min_area=, batch_size=, compat=)
    override single fields."""
    if options is not None and not isinstance(options, SquareOptions):
        raise TypeError(f"options must be a SquareOptions, got {type(options).__name__}")
    opts = replace(options or SquareOptions(), **overrides)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    image = as_image(image_or_path, section=section)
    check_min_size(image, MIN_SIDE, "find_squares")
    info = ImageInfo(path=image.source, shape=image.shape, pixel_size_A=image.pixel_size_A, section=image.section)
    t = time.perf_counter()
    timings["read"] = t - t_start
    model_set = None
    if models is not False:
        from .models import resolve_models

        model_set = resolve_models(models, provider=provider, threads=threads)  # type: ignore[arg-type]
        model_set.spec("square_cnn")  # fail early (ModelError) when the set has no square model
        timings["models"] = time.perf_counter() - t
    model_ids = model_set.ids if model_set is not None else {}
    if opts.compat:
        return _compat_squares(image, info, model_set, model_ids, opts, timings, t_start)
    return _mesh_squares(image, info, model_set, model_ids, opts, timings, t_start)


def _score(model_set: Any, data: np.ndarray, hulls: Sequence[np.ndarray], theta: float, mean: float, std: float,
           batch_size: int, timings: dict[str, float]) -> np.ndarray:
    """Square-CNN scores of the hulls' theta-aligned boxes."""
    t = time.perf_counter()
    spec = model_set.spec("square_cnn")
    # The same decision and source as training's crops (square_crops): None for full-resolution crops; else
    # the reduced image, rotated and normalised once, each batch's crops slices of it.
    reduced_img = square_crop_source(data, hulls, theta, mean, std, size=spec.crop_size, scale=spec.crop_scale,
                                     min_side=spec.crop_min_side)
    frame = rotated_frame(data.shape, theta) if reduced_img is None else None
    timings["crops"] = time.perf_counter() - t
    n = len(hulls)
    batches = plan_batches([(spec.crop_size, spec.crop_size)] * n, _batch_policy(batch_size), spec.batch_statistics)

    # One input buffer for every batch.
    largest = max((len(b) for b in batches), default=0)
    buffer = np.empty((largest, 1, spec.crop_size, spec.crop_size), dtype=np.float32)
    if reduced_img is not None:
        source = reduced_img

        def reduced(idx: list[int]) -> np.ndarray:
            # Refills the batch's canvases whole (60x60 canvases: cheap).
            return reduced_square_crops(source, hulls[idx[0] : idx[-1] + 1], size=spec.crop_size, out=buffer,
                                        first=idx[0])

        return classify(model_set, "square_cnn", n, batches, reduced, timings)
    # Full-resolution canvases: each batch resets only the pixels the previous one wrote (crops of small
    # squares are a few % of the canvas; filling whole canvases cost ~20 µs a square).
    written: list[tuple[int, int, int, int] | None] = []  # empty: the buffer is filled on first use

    def inputs(idx: list[int]) -> np.ndarray:
        # Batches are runs of consecutive squares: crop only the batch's own.
        return square_crops(data, hulls[idx[0] : idx[-1] + 1], theta, mean, std, size=spec.crop_size,
                            frame=frame, out=buffer, written=written)

    return classify(model_set, "square_cnn", n, batches, inputs, timings)


def _compat_squares(image: Any, info: ImageInfo, model_set: Any, model_ids: dict, opts: SquareOptions,
                    timings: dict[str, float], t_start: float) -> SquareResult:
    """The original lowmag pipeline, unchanged (fixed window and area, no mesh)."""
    window = COMPAT_WINDOW if opts.window is None else int(opts.window)
    min_area = COMPAT_MIN_AREA if opts.min_area is None else float(opts.min_area)

    def empty(reason: str) -> SquareResult:
        timings["total"] = time.perf_counter() - t_start
        return SquareResult((), None, info, model_ids, reason, timings)

    from .mixture import segment  # imported on first use

    t = time.perf_counter()
    seg = segment(image.data, image.dtype)
    timings["mixture"] = time.perf_counter() - t
    if seg.mask is None:
        return empty(seg.reason or "no square class")

    t = time.perf_counter()
    # Counts cannot be negative: brightness and crops use the clipped image, as the original did.
    data = image.data if seg.scale.min_value >= 0.0 else np.maximum(image.data, np.float32(0.0))
    regions: Regions = find_regions(seg.mask, window=window, min_area=min_area)
    brightness, _ = region_means(regions, seg.mask, data)
    hulls = regions.hulls
    timings["regions"] = time.perf_counter() - t
    if not hulls:
        return empty(f"no region of the bright class has a convex hull over {min_area:g} px²")

    t = time.perf_counter()
    theta = grid_angle(hulls, method="brent")  # as the original, to the last bit
    boxes = boxes_at_angle(hulls, theta)
    timings["angle"] = time.perf_counter() - t

    scores: np.ndarray | None = None
    if model_set is not None:
        t = time.perf_counter()
        mean, std = crop_normalisation(data, seg.mask, integral=seg.scale.integer)
        stats_s = time.perf_counter() - t
        # The mask and the label image are done with: free them before the network's activations arrive.
        del seg, regions
        scores = _score(model_set, data, hulls, theta, mean, std, opts.batch_size, timings)
        timings["crops"] += stats_s  # the crops' normalisation statistics

    squares = _squares(boxes, brightness, scores)
    timings["total"] = time.perf_counter() - t_start
    return SquareResult(squares, angle_ccw(theta), info, model_ids, None, timings)


def _squares(boxes: Boxes, brightness: np.ndarray, scores: np.ndarray | None,
             **fields: Sequence[Any]) -> tuple[Square, ...]:
    """Square results, sorted, from boxes, brightness, CNN scores (or None) and optional per-square fields."""
    # Python floats of every array at once (tolist: the same values as float() of each element, ~10x faster).
    xy = np.asarray(boxes.centers, dtype=np.float64).reshape(-1, 2).tolist()
    verts = [tuple(map(tuple, v)) for v in np.asarray(boxes.vertices, dtype=np.float64).tolist()]
    areas = np.asarray(boxes.areas, dtype=np.float64).tolist()
    bright = np.asarray(brightness).astype(np.float64).tolist()
    score_list = [None] * len(areas) if scores is None else np.asarray(scores).astype(np.float64).tolist()
    out = []
    for i in range(len(areas)):
        score = score_list[i]
        out.append(
            Square(
                x=xy[i][0],
                y=xy[i][1],
                vertices=verts[i],
                area=areas[i],
                brightness=bright[i],
                score=score,
                scores={} if score is None else {"cnn": score},
                **{name: values[i] for name, values in fields.items()},
            )
        )
    return sort_targets(out)


def square_outline(centre: np.ndarray, side: float, angle_ccw_deg: float) -> np.ndarray:
    """Corners (4, 2) x, y of a square of `side` px centred at `centre`, its edges at angle_ccw_deg on screen."""
    t = math.radians(angle_ccw_deg)
    u = np.array([math.cos(t), -math.sin(t)]) * side / 2
    v = np.array([math.sin(t), math.cos(t)]) * side / 2
    c = np.asarray(centre, dtype=np.float64)
    return np.array([c - u - v, c - u + v, c + u + v, c + u - v])


def inner_means(data: np.ndarray, centres: np.ndarray, side: float, angle_ccw_deg: float, *,
                disc: np.ndarray | None = None, disc_margin: int = 0) -> np.ndarray:
    """Mean of `data` in the axis-aligned square inscribed (80 %) in each square of `side` at the angle: the
    same measure for every square, whether the mixture found it or not (NaN where it lies off the image).
    disc (the grid disc's mask): a box within the image reaching past it is measured on its part on the disc at least
    `disc_margin` px from the disc's edge (the mask's own precision), else on the disc, else whole (the copper
    rim beyond is no ice: squares cut by the rim read as thick)."""
    import cv2

    t = math.radians(angle_ccw_deg)
    half = max(1, int(0.4 * side / (abs(math.cos(t)) + abs(math.sin(t)))))
    h, w = data.shape
    out = np.full(len(centres), np.nan)
    for k, (x, y) in enumerate(np.asarray(centres, dtype=np.float64).reshape(-1, 2)):
        cx, cy = int(round(x)), int(round(y))
        r0, r1 = max(0, cy - half), min(h, cy + half + 1)
        c0, c1 = max(0, cx - half), min(w, cx + half + 1)
        if r1 > r0 and c1 > c0:
            box = data[r0:r1, c0:c1]
            # A box the image's edge cuts is an edge square's, measured whole as before (its box is no square's
            # inner part either way).
            inside = r0 == cy - half and r1 == cy + half + 1 and c0 == cx - half and c1 == cx + half + 1
            # The disc mask is convex: a box whose four corners lie on it lies wholly on it (no look at its pixels).
            corners = disc is not None and inside and bool(disc[r0, c0] and disc[r0, c1 - 1] and disc[r1 - 1, c0]
                                                           and disc[r1 - 1, c1 - 1])
            on = None if disc is None or not inside or corners else disc[r0:r1, c0:c1]
            if on is not None and not on.all() and on.any():
                if disc_margin > 0:
                    m = disc_margin
                    a0, a1, b0, b1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
                    near = np.ascontiguousarray(disc[a0:a1, b0:b1], dtype=np.uint8)
                    inner = cv2.erode(near, np.ones((2 * m + 1, 2 * m + 1), np.uint8),
                                      borderType=cv2.BORDER_REPLICATE)[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0] != 0
                    if inner.any():
                        on = inner
                out[k] = float(box[on].mean(dtype=np.float64))
            else:
                out[k] = float(box.mean(dtype=np.float64))
    return out


def lattice_cells(centres: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(n, 2) integer lattice indices of square centres (x, y) on the mesh's lattice (basis rows a, b, px): the
    nearest lattice point after the centres' common phase (a circular mean) is taken off."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    st = (c - c[0]) @ np.linalg.inv(np.asarray(basis, dtype=np.float64).T).T
    ang = 2 * np.pi * st
    phase = np.arctan2(np.sin(ang).mean(axis=0), np.cos(ang).mean(axis=0)) / (2 * np.pi)
    return np.rint(st - phase).astype(np.int64)


def _pixel(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """mask at the nearest pixel of each (x, y), clipped to the image."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    px = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, mask.shape[1] - 1)
    py = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, mask.shape[0] - 1)
    return mask[py, px]


def _leaves_disc(disc: np.ndarray, vertices: np.ndarray, centres: np.ndarray, margin_px: float) -> np.ndarray:
    """Per box, whether any corner moved `margin_px` further from the box's centre lies off the `disc` mask."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 4, 2)
    if len(v) == 0:
        return np.zeros(0, dtype=bool)
    out = v - np.asarray(centres, dtype=np.float64).reshape(-1, 1, 2)
    norm = np.maximum(np.hypot(out[..., 0], out[..., 1]), 1e-9)[..., None]
    corners = v + out / norm * margin_px
    return ~_pixel(disc, corners.reshape(-1, 2)).reshape(-1, 4).all(axis=1)


def _touches_edge(hulls: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """Per hull, whether it reaches within a pixel of the image edge (x < 1, y < 1, x > w - 2 or y > h - 2)."""
    if len(hulls) == 0:
        return np.zeros(0, dtype=bool)
    # Every hull's extremes in one pass over all vertices (reduceat), not four reductions per hull.
    points, starts = _hull_points(hulls)
    lo, hi = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
    return (lo[:, 0] < 1) | (lo[:, 1] < 1) | (hi[:, 0] > w - 2) | (hi[:, 1] > h - 2)


def _profile_outliers(profile: np.ndarray, step: float, threshold: float, max_width: int = 12) -> bool:
    """Whether a thin run of entries of a row (or column) mean profile, away from its ends, stands out from the
    profile shifted by +-1..3 lattice steps (the lattice maps whole rows onto rows of the same mean; a seam does
    not move with it).
    Shifts are fractional (linear interpolation), so a 0-degree mesh's sharp bar edges line up."""
    n = len(profile)
    if step < 1 or n < 4 * step:
        return False
    x = np.arange(n, dtype=np.float64)
    shifted = []
    for k in (1, -1, 2, -2, 3, -3):
        pos = x + k * step
        out = np.interp(pos, x, profile)
        out[(pos < 0) | (pos > n - 1)] = np.nan
        shifted.append(out)
    import warnings

    from .io import held_warnings  # not interleaved with a reader's own swap (io._own_warnings)

    with held_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        resid = profile - _orderstats.nanmedian(np.array(shifted), axis=0)
    ok = np.isfinite(resid)
    if ok.sum() < 16:
        return False
    med = float(_orderstats.median(resid[ok]))
    mad = 1.4826 * float(_orderstats.median(np.abs(resid[ok] - med)))
    flag = ok & (np.abs(resid - med) > threshold * max(mad, 1e-9))
    # remove_seams takes only runs with a line either side (a dark image border is no seam) and at most
    # max_width wide; twice that here, as the lower threshold widens a run.
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flag.view(np.int8), [0]))))
    for start, stop in zip(edges[::2], edges[1::2]):
        if start > 0 and stop < n and stop - start <= 2 * max_width:
            return True
    return False


def may_have_seams(image: np.ndarray, mesh: Any, *, threshold: float = 5.0) -> bool:
    """A cheap look (row and column means over about 1024 samples a line) for straight full-width seams: True
    when a row or column mean stands out from its lattice-shifted neighbours, so montage.remove_seams (which
    looks harder, with medians) is worth running. A lower threshold than remove_seams': a false alarm costs
    time only."""
    h, w = image.shape
    a = np.asarray(mesh.basis[0], dtype=np.float64)
    b = np.asarray(mesh.basis[1], dtype=np.float64)
    for axis in (0, 1):
        # The shortest step across the lines (y for rows, x for columns) of a lattice vector that still moves
        # a seam (up to 12 px, as remove_seams takes) off itself: most shifts then fit in the image.
        steps = [abs(float(c[1 - axis])) for c in (a, b, a + b, a - b)]
        step = min([st for st in steps if st > 13.0] or [max(steps)])
        if axis == 0:
            profile = image[:, :: max(1, w // 1024)].mean(axis=1, dtype=np.float64)
        else:
            profile = image[:: max(1, h // 1024), :].mean(axis=0, dtype=np.float64)
        if _profile_outliers(profile, step, threshold):
            return True
    return False


# Smallest share of a square's area kept for a square cut by the image edge.
EDGE_SQUARE_SHARE = 0.05
# An edge-cut square showing less than this share of the mesh's square area is flagged `edge: true`: its
# centre lies outside the image, so a target at its box centre is not at the square's centre (so is a square the
# grid disc's rim cuts to less than this share, by its hull's area). Such squares
# are kept, not dropped: the original keeps every hull over 100 px² (the real atlas has a 9 % sliver it
# finds), and they are real squares; on the held-out set they are all of the remaining false positives
# (benchmarks/squares_accuracy_real.py reports precision with and without them).
EDGE_TARGETABLE_SHARE = 0.5
# Below this share of squares on the lattice the fit is not trusted: no square is dropped or added.
MIN_ON_LATTICE = 0.5


# split_on_lattice maps a region's pixels onto the lattice this many at a time.
_SPLIT_CHUNK = 1 << 16


def split_on_lattice(mask: np.ndarray, hull: np.ndarray, origin: np.ndarray, basis: np.ndarray, side_px: float,
                     *, min_area: float = 0.0, margin_px: float = 1.5) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Split a region holding several squares (merged across a bar or a bright seam) along the mesh lattice.

    The mask pixels inside the region's convex `hull` are given to their nearest lattice point (origin +
    i a + j b, basis rows a, b); only those within the square's footprint (side_px / 2 + margin_px of the
    point along both lattice directions) count, so the bar or seam that joined two squares is cut away.
    Returns ((i, j), hull) for each lattice point whose pixels' hull is over `min_area` px², by (j, i)."""
    import cv2

    from .regions import _square_hulls

    h, w = mask.shape
    x0, y0 = max(0, int(math.floor(hull[:, 0].min()))), max(0, int(math.floor(hull[:, 1].min())))
    x1, y1 = min(w - 1, int(math.ceil(hull[:, 0].max()))), min(h - 1, int(math.ceil(hull[:, 1].max())))
    if x1 < x0 or y1 < y0:
        return []
    inside = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillConvexPoly(inside, np.rint(hull - [x0, y0]).astype(np.int32).reshape(-1, 1, 2), 1)
    ys, xs = np.nonzero(inside & (mask[y0 : y1 + 1, x0 : x1 + 1] != 0))
    if ys.size == 0:
        return []
    n = ys.size
    pts = np.empty((n, 2), dtype=np.int32)
    np.add(xs, x0, out=pts[:, 0], casting="unsafe")
    np.add(ys, y0, out=pts[:, 1], casting="unsafe")
    basis = np.asarray(basis, dtype=np.float64)
    to_cells = np.linalg.inv(basis.T).T
    o = np.asarray(origin, dtype=np.float64)
    lengths = np.hypot(basis[:, 0], basis[:, 1])
    reach = (0.5 * side_px + margin_px) / lengths
    ij = np.empty((n, 2), dtype=np.int64)
    near = np.empty(n, dtype=bool)
    # A run of pixels at a time (a merged region of a fine mesh can hold the whole image: 1.5 M pixels whose
    # float64 temporaries left the cache). numpy multiplies a run of two rows or more as it multiplies the whole
    # array, row by row the same bits, but a lone row by another routine, up to an ulp off: _runs never
    # makes one.
    for a, b in _runs(n, _SPLIT_CHUNK):
        st = (pts[a:b] - o) @ to_cells
        ij[a:b] = np.rint(st)
        # st - ij, ij as int64 (the float past 2**63 would not have wrapped as the integer does)
        np.abs(np.subtract(st, ij[a:b], out=st), out=st)
        np.logical_and(st[:, 0] <= reach[0], st[:, 1] <= reach[1], out=near[a:b])
    # np.compress: a boolean index along the first axis of (n, 2) arrays took 9 times as long (the costliest
    # step of the whole function on a 600k-pixel region).
    pts, ij = np.compress(near, pts, axis=0), np.compress(near, ij, axis=0)
    if len(pts) == 0:
        return []
    # The pixels by lattice point (j, then i), in their raster order within each: one stable sort on one key,
    # or lexsort's two where the key would not fit in int64 (a basis far under a pixel: never from a mesh).
    low = ij.min(axis=0)
    span = [int(top) - int(bottom) + 1 for top, bottom in zip(ij.max(axis=0), low)]  # Python ints: no wrap
    if span[0] * span[1] < 2**62:
        key = (ij[:, 1] - low[1]) * span[0] + (ij[:, 0] - low[0])
        order = np.argsort(key, kind="stable")
        key = key[order]
        new_cell = key[1:] != key[:-1]
    else:
        order = np.lexsort((ij[:, 0], ij[:, 1]))
        new_cell = (np.diff(ij[order], axis=0) != 0).any(axis=1)
    pts = pts[order]
    starts = np.concatenate(([0], np.flatnonzero(new_cell) + 1))
    cells = ij[order[starts]]
    # Only a row's two end pixels can be vertices of a point's hull (those between lie on the segment joining
    # them), so the hulls are taken of those alone: the same hulls from a tenth of the points.
    row = pts[:, 1]
    first = np.ones(len(pts), dtype=bool)
    first[1:] = new_cell | (row[1:] != row[:-1])
    last = np.append(first[1:], True)
    ends = np.flatnonzero(first | last)
    bounds = np.append(np.searchsorted(ends, starts), len(ends))
    hulls = _square_hulls(pts[ends], bounds, np.arange(len(starts)))
    from .regions import polygon_area

    return [((int(c[0]), int(c[1])), hl) for c, hl in zip(cells.tolist(), hulls) if polygon_area(hl) > min_area]


def _runs(n: int, size: int) -> list[tuple[int, int]]:
    """[a, b) bounds covering range(n) in runs of `size`, the last one longer rather than of a single row."""
    bounds, a = [], 0
    while a < n:
        b = n if n - a <= size + 1 else a + size
        bounds.append((a, b))
        a = b
    return bounds


def _mesh_squares(image: Any, info: ImageInfo, model_set: Any, model_ids: dict, opts: SquareOptions,
                  timings: dict[str, float], t_start: float) -> SquareResult:
    """Our pipeline: the mesh sets the segmentation, the disc bounds it, the lattice completes it."""
    from .atlas_classes import classify_squares, disc_mask, disc_step
    from .mesh import detect_mesh, fit_square_lattice

    t = time.perf_counter()
    det = detect_mesh(image.data)
    timings["mesh"] = time.perf_counter() - t
    mesh = det.mesh

    def empty(reason: str) -> SquareResult:
        timings["total"] = time.perf_counter() - t_start
        return SquareResult((), None, info, model_ids, reason, timings, mesh)

    if mesh is None:
        return empty(det.reason or "no grid mesh")
    window = mesh.grouping_window if opts.window is None else int(opts.window)
    min_area = mesh.min_square_area if opts.min_area is None else float(opts.min_area)

    t = time.perf_counter()
    disc_scale = 3 * mesh.pitch_px  # the grid disc's closing scale, here and for the disc without seams
    disc = disc_mask(image.data, scale_px=disc_scale)
    timings["disc"] = time.perf_counter() - t

    source = image.data
    if opts.seams:
        t = time.perf_counter()
        redisc = 0.0  # the second disc's time: under "disc", not "seams"
        if may_have_seams(image.data, mesh):
            from .montage import remove_seams

            cleaned, seams = remove_seams(image.data, mesh=mesh)
            if seams:
                # A bright seam runs on across the dark beyond the grid disc: closed into the disc's blob, it
                # stretched the disc's hull out to the image's edge, and the lattice filled squares there. The
                # squares take the disc again, from the atlas without its seams (made before the flattening below
                # divides that copy in place); the tiles' gains are measured within the first disc, as before
                # (within the new one they moved, and a tuning montage's ok class fell from 0.88 to 0.86).
                t_disc = time.perf_counter()
                clean_disc = disc_mask(cleaned, scale_px=disc_scale)
                redisc = time.perf_counter() - t_disc
                timings["disc"] += redisc
                # Seams are where tiles were joined: flatten the tiles' brightness offsets too, so that one
                # mixture threshold and one brightness scale (classes) hold for every tile.
                from .montage import flatten_tile_offsets

                # remove_seams' copy is ours: flattened in place (no second 64 MB at 4096²).
                source, _ = flatten_tile_offsets(cleaned, seams, pitch_px=mesh.pitch_px, valid=disc, in_place=True,
                                                 mesh=mesh)
                disc = clean_disc
            del cleaned
        timings["seams"] = time.perf_counter() - t - redisc

    from .mixture import segment  # imported on first use

    t = time.perf_counter()
    seg = segment(source, image.dtype)
    timings["mixture"] = time.perf_counter() - t
    if seg.mask is None:
        return empty(seg.reason or "no square class")

    t = time.perf_counter()
    # Counts cannot be negative: brightness and crops use the clipped image, as the original did.
    data = source if seg.scale.min_value >= 0.0 else np.maximum(source, np.float32(0.0))
    # A square cut by the image edge may show less than the mesh's smallest square (a tenth): there a
    # twentieth is kept, so edge squares the original keeps (over 100 px²) stay unless they are slivers.
    edge_area = min(min_area, EDGE_SQUARE_SHARE * mesh.square_side_px ** 2) if opts.min_area is None else min_area
    # No label image: brightness is measured in each square's box below, the same way for every square.
    regions: Regions = find_regions(seg.mask, window=window, min_area=edge_area, keep_labels=False)
    timings["regions"] = time.perf_counter() - t

    t = time.perf_counter()
    h, w = image.shape
    edge = _touches_edge(regions.hulls, h, w)
    # A hull larger than one square holds several (merged across a bar or a bright seam): it is split along
    # the lattice below. Regions off the disc are background.
    areas_all = np.asarray(regions.areas)
    keep = np.flatnonzero((areas_all <= mesh.max_square_area) & ((areas_all > min_area) | edge)).tolist()
    big = np.flatnonzero(areas_all > mesh.max_square_area)
    merged = big[_pixel(disc, regions.centroids[big])].tolist() if big.size else []
    edge = edge[keep] if keep else np.zeros(0, dtype=bool)
    hulls = [regions.hulls[i] for i in keep]
    centroids = regions.centroids[keep] if keep else np.zeros((0, 2))
    areas = regions.areas[keep] if keep else np.zeros(0)
    if len(hulls):
        on_disc = _pixel(disc, centroids)
        hulls = [hl for hl, ok in zip(hulls, on_disc) if ok]
        centroids, areas = centroids[on_disc], areas[on_disc]
        edge = edge[on_disc]
    rows: list[int | None] = [None] * len(hulls)
    cols: list[int | None] = [None] * len(hulls)
    found_by = ["mixture"] * len(hulls)
    cut = [bool(e) for e in edge]
    if opts.lattice:
        # Lattice points whose centre is inside the image (squares at least half visible) can be filled.
        fit = fit_square_lattice(centroids, mesh, shape=image.shape, disc=disc, margin=0.0)
        fit_rows, fit_cols = fit.rows.copy(), fit.cols.copy()
        on = fit_rows >= 0
        if on.any() and (edge & ~on).any():
            # A square cut by the image edge has its centroid off its lattice point: the nearest point within
            # half a pitch is its own.
            o = np.asarray(fit.origin)
            inv = np.linalg.inv(np.column_stack(fit.basis))
            ij = np.rint((centroids - o) @ inv.T).astype(np.int64)
            d = np.hypot(*(centroids - o - ij @ np.asarray(fit.basis)).T)
            k = int(np.flatnonzero(on)[0])
            off_i, off_j = ij[k, 0] - fit_cols[k], ij[k, 1] - fit_rows[k]
            snap = edge & ~on & (d < 0.5 * mesh.pitch_px)
            fit_cols[snap] = ij[snap, 0] - off_i
            fit_rows[snap] = ij[snap, 1] - off_j
            on = fit_rows >= 0
        if merged and (fit.rows >= 0).any() and (fit.rows >= 0).mean() >= MIN_ON_LATTICE:
            # Regions over the largest square (squares joined across a thin bar or a bright seam): split along
            # the lattice, each piece a square of its own lattice point.
            k = int(np.flatnonzero(fit.rows >= 0)[0])
            o = np.asarray(fit.origin)
            basis = np.asarray(fit.basis)
            ij_k = np.rint((centroids[k] - o) @ np.linalg.inv(basis.T).T).astype(np.int64)
            off_i, off_j = ij_k[0] - fit.cols[k], ij_k[1] - fit.rows[k]
            pieces = [pc for r in merged for pc in split_on_lattice(seg.mask, regions.hulls[r], o, basis,
                                                                    mesh.square_side_px, min_area=edge_area)]
            if pieces:
                from .regions import polygon_area, polygon_centroid

                new_hulls = [hl for _, hl in pieces]
                hulls = list(hulls) + new_hulls
                areas = np.concatenate([areas, [polygon_area(hl) for hl in new_hulls]])
                centroids = np.vstack([centroids.reshape(-1, 2), [polygon_centroid(hl) for hl in new_hulls]])
                edge = np.concatenate([edge, _touches_edge(new_hulls, h, w)]).astype(bool)
                fit_cols = np.concatenate([fit_cols, [i - off_i for (i, _), _ in pieces]]).astype(np.int64)
                fit_rows = np.concatenate([fit_rows, [j - off_j for (_, j), _ in pieces]]).astype(np.int64)
                on = (fit_rows >= 0) & (fit_cols >= 0)
                # A piece not bigger than a square's share (min_area) away from the edge is a bar's bit.
                on &= (areas > min_area) | edge
        if len(hulls) == 0 or (fit.rows >= 0).mean() >= MIN_ON_LATTICE:
            # One region per lattice point (a square split by a seam or a crack): the largest one.
            best: dict[tuple[int, int], int] = {}
            for r in np.flatnonzero(on).tolist():
                key = (int(fit_rows[r]), int(fit_cols[r]))
                if key not in best or areas[r] > areas[best[key]]:
                    best[key] = r
            idx = sorted(best.values())
            hulls = [hulls[i] for i in idx]
            rows = [int(fit_rows[i]) for i in idx]
            cols = [int(fit_cols[i]) for i in idx]
            found_by = ["mixture"] * len(idx)
            cut = [bool(edge[i]) for i in idx]
            side = mesh.square_side_px
            # Lattice points a snapped edge square holds are not missing.
            held = set(best)
            fill_at = [k for k in range(len(fit.missing))
                       if (int(fit.missing_rows[k]), int(fit.missing_cols[k])) not in held]
            for k in fill_at:
                centre = fit.missing[k]
                hulls.append(square_outline(centre, side, mesh.angle_deg))
                rows.append(int(fit.missing_rows[k]))
                cols.append(int(fit.missing_cols[k]))
                found_by.append("lattice")
                cut.append(False)  # a lattice point is filled only when its centre is inside the image
    timings["lattice"] = time.perf_counter() - t
    if not hulls:
        return empty(f"no region of the bright class has a convex hull over {min_area:g} px² on the grid disc")

    t = time.perf_counter()
    n_mixture = found_by.count("mixture")
    # The grid angle from the regions (as the original), or the mesh's when the lattice found them all.
    theta0 = (-mesh.angle_deg) % 90.0
    theta = grid_angle(hulls[:n_mixture], around=theta0) if n_mixture else theta0
    boxes = boxes_at_angle(hulls, theta)
    timings["angle"] = time.perf_counter() - t

    t = time.perf_counter()
    # Brightness and classes from one measure for every square, whether the mixture found it or the lattice
    # (a region's mask pixels would see only the bright part of a dark square).
    disc_px = disc_step(image.shape, scale_px=disc_scale)  # the disc's rim is placed to about this
    brightness = inner_means(data, boxes.centers, mesh.square_side_px, mesh.angle_deg, disc=disc,
                             disc_margin=disc_px)
    classes = classify_squares(brightness, cells=lattice_cells(boxes.centers, mesh.basis))
    timings["classes"] = time.perf_counter() - t

    scores: np.ndarray | None = None
    if model_set is not None:
        t = time.perf_counter()
        # Counts as read (an integer file's pixels, or float ones checked whole by the mixture), not a flattened
        # montage: the mixture takes an integer file's dtype on trust, and flattening divides by gains.
        mean, std = crop_normalisation(data, seg.mask, integral=seg.scale.integer and source is image.data)
        stats_s = time.perf_counter() - t
        del seg, regions
        scores = _score(model_set, data, hulls, theta, mean, std, opts.batch_size, timings)
        timings["crops"] += stats_s  # the crops' normalisation statistics

    # A square the grid disc's rim cuts is an edge square as one the image's edge cuts is (its box centre is not
    # its centre): its box corners, pushed out from the centre by the disc mask's precision, leave the disc. Its
    # share is its hull's area (the box of a piece cut off by an arc at an angle to the grid is up to twice it).
    from .regions import polygon_area

    rim = _leaves_disc(disc, boxes.vertices, boxes.centers, disc_px)
    least = EDGE_TARGETABLE_SHARE * mesh.square_side_px ** 2
    # (A square the image's edge cuts keeps its own rule: its box is cut straight along the image's side.)
    sliver = [bool(a < least if c else r and polygon_area(hl) < least)
              for c, r, a, hl in zip(cut, rim.tolist(), boxes.areas, hulls)]
    squares = _squares(boxes, brightness, scores, row=rows, col=cols, found_by=found_by, square_class=classes,
                       edge=sliver)
    timings["total"] = time.perf_counter() - t_start
    return SquareResult(squares, angle_ccw(theta), info, model_ids, None, timings, mesh)
