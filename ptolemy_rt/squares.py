"""The low-mag pipeline: find grid squares in an atlas image and score them.

Stages (each timed in ``SquareResult.timings``): read -> mixture (Poisson mixture mask, mixture.py) -> regions
(grouping, convex hulls, brightness, regions.py) -> angle (grid angle, boxes: here) -> crops (crops.py) ->
cnn (scoring.py).

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

from .crops import CROP_SIZE, rotated_frame, square_crops
from .io import ImageLike, as_image, check_min_size
from .models import ModelsLike
from .options import SquareOptions
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
    "SquareOptions",
    "angle_ccw",
    "MIN_SIDE",
    "CROP_SIZE",
]

MIN_SIDE = 256
# The original scored all crops of an image in one batch; onnxruntime's memory grows with the batch, so
# larger sets go in batches of this many (a documented deviation: batch-statistics scores then differ).
MAX_BATCH = 256
# Models whose BatchNorm uses running statistics (or none) give the same scores in any batch: small
# batches bound memory at no cost.
_INDEPENDENT_BATCH = 4


def _batch_policy(batch_size: int) -> BatchPolicy:
    per = max(1, min(int(batch_size), MAX_BATCH))
    return BatchPolicy(original_batch=None, max_batch=per, independent_batch=min(per, _INDEPENDENT_BATCH))


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


def grid_angle(hulls: Sequence[np.ndarray], *, step_deg: float = 1.0, xatol: float = 1e-5) -> float:
    """Theta in [0, 90) minimising the summed area of the theta-aligned bounding rectangles of all hulls.

    A scan every `step_deg` picks the basin, then bounded Brent (scipy minimize_scalar) refines it within
    one step either side. The original ran Brent over [0, 90] at once, which can settle in a local minimum
    that depends on the image's orientation; the scan makes rotated and mirrored images agree."""
    from scipy.optimize import minimize_scalar

    points, starts = _pack(hulls)
    grid = np.arange(0.0, 90.0, step_deg)
    values = summed_box_area(points, starts, grid)
    best = int(np.argmin(values))
    centre = float(grid[best])

    def objective(a: float) -> float:
        return float(summed_box_area(points, starts, a)[0])

    res = minimize_scalar(objective, bounds=(centre - step_deg, centre + step_deg), method="bounded",
                          options={"xatol": xatol})
    theta = float(res.x) if res.fun <= values[best] else centre
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

def class_stats(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the non-zero image pixels of the square class (the original's crop
    normalisation: it took image * mask and dropped zeros)."""
    x = np.ascontiguousarray(image, dtype=np.float32)
    sel = x[(np.asarray(mask) != 0) & (x != 0.0)].astype(np.float64)
    if sel.size == 0:
        return 0.0, 0.0
    # Two passes in float64, each summed in pixel order (cumsum; np.sum is pairwise), as recorded results were.
    mean = float(np.cumsum(sel)[-1]) / sel.size
    sel -= mean
    sel *= sel
    return mean, math.sqrt(float(np.cumsum(sel)[-1]) / sel.size)


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

    options: a SquareOptions; keyword arguments named as its fields (window=, min_area=, batch_size=)
    override single fields."""
    opts = replace(options or SquareOptions(), **overrides)
    window, min_area = opts.window, opts.min_area
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
        t = time.perf_counter()
    model_ids = model_set.ids if model_set is not None else {}

    def empty(reason: str) -> SquareResult:
        timings["total"] = time.perf_counter() - t_start
        return SquareResult((), None, info, model_ids, reason, timings)

    from .mixture import segment  # imported on first use

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
    theta = grid_angle(hulls)
    boxes = boxes_at_angle(hulls, theta)
    timings["angle"] = time.perf_counter() - t

    n = len(hulls)
    scores: np.ndarray | None = None
    if model_set is not None:
        t = time.perf_counter()
        mean, std = class_stats(data, seg.mask)
        # The mask and the label image are done with: free them before the network's activations arrive.
        del seg, regions
        frame = rotated_frame(image.shape, theta)
        spec = model_set.spec("square_cnn")
        timings["crops"] = time.perf_counter() - t
        batches = plan_batches([(spec.crop_size, spec.crop_size)] * n, _batch_policy(opts.batch_size),
                               spec.batch_statistics)

        def inputs(idx: list[int]) -> np.ndarray:
            # Batches are runs of consecutive squares: crop only the batch's own.
            return square_crops(data, hulls[idx[0] : idx[-1] + 1], theta, mean, std, size=spec.crop_size,
                                frame=frame)

        scores = classify(model_set, "square_cnn", n, batches, inputs, timings)

    squares = []
    for i in range(n):
        score = None if scores is None else float(scores[i])
        squares.append(
            Square(
                x=float(boxes.centers[i, 0]),
                y=float(boxes.centers[i, 1]),
                vertices=tuple((float(px), float(py)) for px, py in boxes.vertices[i]),
                area=float(boxes.areas[i]),
                brightness=float(brightness[i]),
                score=score,
                scores={} if score is None else {"cnn": score},
            )
        )
    timings["total"] = time.perf_counter() - t_start
    return SquareResult(sort_targets(squares), angle_ccw(theta), info, model_ids, None, timings)
