"""The med-mag pipeline: find the holes of a holey-carbon lattice and score them.

Stages (each timed in ``HoleResult.timings``): read -> normalise (zero mean, unit variance; with a
scale-normalised U-Net also estimate the lattice period and resample) -> unet (pad, run, crop back,
sigmoid; tiled above the manifest's max_pixels) -> centroids (threshold, regions, hull centroids) ->
lattice (summed-area search + least squares, see lattice.py) -> crops (one per lattice point, sampled in
the lattice frame straight from the input) -> cnn (the hole CNN, honouring its BatchNorm mode).

Coordinates are input pixels, x = column, y = row, origin at the centre of the top-left pixel. The
original tool measured from the top-left pixel's corner (its centroids are hulls of pixel corners), so
its coordinates are ours + 0.5.

Against the original (medmag_cli.py): with PTOLEMY_COMPAT settings the lattice, the hole centres, the
crop windows and vertices are the original's (to 1e-6 px) and the hole CNN scores agree to < 0.01 (cv2
bicubic instead of scipy's cubic spline). By default we differ on purpose: 6 real neighbours per centroid
(the original counted the centroid itself among its 6), least-squares refinement of the lattice, crops
centred on the lattice points and never clipped (the original's sit up to a pixel off, and are cut where
the enlarged rotated image ends), U-Net padding to the smallest accepted size, and `unet` scores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .crops import crop_matrix, sample_affine
from .io import ImageLike, as_image, check_min_size
from .models import ModelSet, resolve_models, sigmoid
from .results import Hole, HoleResult, ImageInfo, sort_targets

__all__ = [
    "find_holes",
    "holes_from_map",
    "normalise_image",
    "unet_pad_shape",
    "probability_map",
    "hole_centroids",
    "crop_half_side",
    "HoleCrops",
    "hole_crops",
    "unet_scores",
    "cnn_scores",
    "PTOLEMY_COMPAT",
    "SCORES",
    "CROP_MODES",
    "PADDINGS",
    "MIN_SIDE",
]

SCORES = ("unet", "cnn")
CROP_MODES = ("centred", "ptolemy")
PADDINGS = ("minimal", "ptolemy")
# Shortest lattice period (px) the scale-normalised path accepts; holes are specified at 40-400 px.
MIN_PERIOD_PX = 20.0
MIN_SIDE = 256  # the supported range is 256-4096 px per side
# The original trims this many pixels from each side of a lattice cell to make a hole crop.
CROP_MARGIN_PX = 10
# Regions: mask pixels within this window of each other form one hole candidate (as in low mag).
REGION_WINDOW = 6
# Hole crops of independent-statistics CNNs go in batches holding at most this many input pixels
# (the first conv's 128 channels make ~0.5 KB of activations per input pixel).
_CNN_BATCH_PIXELS = 512 * 1024
# What reproduces the original medmag_cli.py: its 5 nearest neighbours, no refinement, its crop windows
# and U-Net padding, scores from the hole CNN.
PTOLEMY_COMPAT: dict[str, Any] = {
    "k": 5,
    "refine": False,
    "crop_mode": "ptolemy",
    "unet_padding": "ptolemy",
    "score": "cnn",
}


# ---------------------------------------------------------------------------------------------------
# Probability map


def normalise_image(data: np.ndarray) -> np.ndarray | None:
    """(data - mean) / std as float32 (statistics accumulated in float64); None for a constant image."""
    x = np.asarray(data, dtype=np.float32)
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    if not (std > 0.0 and math.isfinite(std)) or std < 1e-12 * max(1.0, abs(mean)):
        return None
    return (x - np.float32(mean)) * np.float32(1.0 / std)


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


def _tiles(n: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
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
        return models.run("hole_unet", padded[None, None])[0, 0]
    m = max(1, multiple)
    side = max(m, int(math.isqrt(int(max_pixels)) // m) * m)
    tile_r = min(rows, side)
    tile_c = min(cols, max(m, int(max_pixels // tile_r) // m * m))
    # The overlap lets each tile's kept part see context on every side; a tile's borders are its worst part.
    margin_r = min(max(m // 2, 64), max(0, (tile_r - m) // 2))
    margin_c = min(max(m // 2, 64), max(0, (tile_c - m) // 2))
    out = np.empty((rows, cols), dtype=np.float32)
    for r0, r1, kr0, kr1 in _tiles(rows, tile_r, margin_r):
        for c0, c1, kc0, kc1 in _tiles(cols, tile_c, margin_c):
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
    multiple = int(spec.get("multiple") or 1)
    rows, cols = normalised.shape
    if pad_shape is None:
        pad_shape = unet_pad_shape((rows, cols), multiple, unet_padding)
    pr, pc = int(pad_shape[0]), int(pad_shape[1])
    if pr < rows or pc < cols:
        raise ValueError(f"pad_shape {pad_shape} is smaller than the image {normalised.shape}")
    padded = np.zeros((pr, pc), dtype=np.float32)
    padded[:rows, :cols] = normalised
    logits = _unet_logits(padded, models, multiple, spec.get("max_pixels"))
    return sigmoid(np.ascontiguousarray(logits[:rows, :cols]))


def _scaled_probability_map(
    normalised: np.ndarray, models: ModelSet, spacing_px: float, target_px: float, unet_padding: str
) -> np.ndarray:
    """Resample so the lattice period is `target_px`, run the U-Net, resample the map back."""
    import cv2

    rows, cols = normalised.shape
    f = float(target_px) / float(spacing_px)
    new_size = (max(1, int(round(cols * f))), max(1, int(round(rows * f))))
    interp = cv2.INTER_AREA if f < 1.0 else cv2.INTER_CUBIC
    small = cv2.resize(normalised, new_size, interpolation=interp)
    # Normalise after resampling (area averaging lowers the variance), as such a U-Net was trained.
    small = normalise_image(small)
    if small is None:
        return np.zeros((rows, cols), dtype=np.float32)
    prob = probability_map(small, models, unet_padding=unet_padding)
    # cv2.resize maps pixel centres ((x + 0.5) * f - 0.5), so the map lands back on the input's pixels.
    return cv2.resize(prob, (cols, rows), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------------
# Centroids


def hole_centroids(mask: np.ndarray, window: int = REGION_WINDOW) -> np.ndarray:
    """Area centroids (n, 2) xy of the convex hulls of the mask's regions (pixels within `window` grouped)."""
    from .regions import find_regions

    regions = find_regions(mask, window=window, min_area=-math.inf, keep_labels=False)
    return np.asarray(regions.centroids, dtype=np.float64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------------
# Crops


def crop_half_side(spacing_px: float) -> int:
    """Half the side of a hole crop: floor(spacing / 2) - 10 as the original, but at least spacing / 4."""
    return int(max(math.floor(spacing_px / 2.0) - CROP_MARGIN_PX, max(1.0, math.floor(spacing_px / 4.0))))


@dataclass(frozen=True)
class HoleCrops:
    """Per hole: the 2x3 matrix from crop pixel (col, row, 1) to input (x, y), and the crop's (rows, cols)."""

    matrices: tuple[np.ndarray, ...]
    shapes: tuple[tuple[int, int], ...]
    vertices: tuple[tuple[tuple[float, float], ...], ...]
    area: float


def _ptolemy_window(
    point: np.ndarray, angle_deg: float, half: float, shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """The original's crop window: an int()-bounded slice of the image rotated by -angle (scipy, enlarged).

    scipy.ndimage.rotate maps output index o to input index M o + offset about the array centres
    ((n - 1) / 2), while the original placed points with centres n // 2 in corner coordinates: crops sit
    up to a pixel off the lattice point and are clipped where they leave the enlarged rotated image.
    """
    rows, cols = shape
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, -s], [s, c]])  # scipy's matrix for rotate(image, -angle): input = rot @ out + offset
    bounds = rot @ np.array([[0, 0, rows, rows], [0, cols, 0, cols]], dtype=np.float64)
    out_rows, out_cols = (np.ptp(bounds, axis=1) + 0.5).astype(int)
    in_centre = np.array([(rows - 1) / 2.0, (cols - 1) / 2.0])
    offset = in_centre - rot @ np.array([(out_rows - 1) / 2.0, (out_cols - 1) / 2.0])
    # The original's point, in its corner coordinates, rotated about the integer centres.
    pr, pc = point[1] + 0.5 - rows // 2, point[0] + 0.5 - cols // 2
    row = c * pr + s * pc + out_rows // 2
    col = -s * pr + c * pc + out_cols // 2
    r0, r1 = int(max(row - half, 0)), int(min(row + half, out_rows))
    c0, c1 = int(max(col - half, 0)), int(min(col + half, out_cols))
    # crop pixel (j, i) -> rotated index (r0 + i, c0 + j) -> input (row, col) = rot @ (.) + offset
    matrix = np.array(
        [
            [rot[1, 1], rot[1, 0], rot[1, 0] * r0 + rot[1, 1] * c0 + offset[1]],
            [rot[0, 1], rot[0, 0], rot[0, 0] * r0 + rot[0, 1] * c0 + offset[0]],
        ]
    )
    return matrix, (max(0, r1 - r0), max(0, c1 - c0))


def hole_crops(
    points: np.ndarray, angle_deg: float, spacing_px: float, shape: tuple[int, int], mode: str = "centred"
) -> HoleCrops:
    """Crop geometry per lattice point: a square of side 2 * crop_half_side in the lattice frame.

    "centred": centred on the point; "ptolemy": the original's window (see _ptolemy_window). The
    vertices are the ideal square in both, in the original's corner order.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {mode!r}")
    half = crop_half_side(spacing_px)
    side = 2 * half
    a = math.radians(angle_deg)
    ec = np.array([math.cos(a), -math.sin(a)])  # crop columns run along ec, rows along er
    er = np.array([math.sin(a), math.cos(a)])
    corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    matrices, shapes, vertices = [], [], []
    for p in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        if mode == "centred":
            matrices.append(crop_matrix((p[0], p[1]), angle_deg, side, side))
            shapes.append((side, side))
        else:
            m, sh = _ptolemy_window(p, angle_deg, float(half), shape)
            matrices.append(m)
            shapes.append(sh)
        vertices.append(tuple((float(p[0] + dc * ec[0] + dr * er[0]), float(p[1] + dc * ec[1] + dr * er[1]))
                              for dc, dr in corners))
    return HoleCrops(tuple(matrices), tuple(shapes), tuple(vertices), float(side * side))


def unet_scores(prob: np.ndarray, crops: HoleCrops) -> np.ndarray:
    """Summed U-Net probability inside each crop (bilinear samples of the map, 0 outside the image)."""
    import cv2

    src = np.ascontiguousarray(prob, dtype=np.float32)
    out = np.zeros(len(crops.matrices), dtype=np.float64)
    for i, (m, (rows, cols)) in enumerate(zip(crops.matrices, crops.shapes)):
        if rows < 1 or cols < 1:
            continue
        s = cv2.warpAffine(src, m, (cols, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        out[i] = float(s.sum(dtype=np.float64))
    return out


def _cnn_input(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], min_size: int) -> np.ndarray:
    """One hole crop, resized up to min_size where smaller, normalised to zero mean and unit variance."""
    import cv2

    crop = sample_affine(image, matrix, shape)
    rows, cols = crop.shape
    if rows < min_size or cols < min_size:
        crop = cv2.resize(crop, (max(cols, min_size), max(rows, min_size)), interpolation=cv2.INTER_CUBIC)
    x = crop.astype(np.float64)
    std = float(x.std())
    # A crop with no contrast (wholly off the image) has nothing to normalise: zeros, not NaN.
    x = (x - x.mean()) / std if std > 0 else np.zeros_like(x)
    return x.astype(np.float32)


def cnn_scores(image: np.ndarray, crops: HoleCrops, models: ModelSet) -> np.ndarray:
    """Hole CNN probability per crop; NaN for an empty crop.

    bn="batch" graphs normalise with the statistics of their batch, so (as the original) each crop runs
    alone; other graphs get batches of equal-sized crops, which changes nothing but the speed.
    """
    spec = models.spec("hole_cnn")
    min_size = int(spec.get("min_size") or 1)
    n = len(crops.matrices)
    out = np.full(n, np.nan, dtype=np.float64)
    valid = [i for i in range(n) if min(crops.shapes[i]) >= 1]
    if spec.get("bn") == "batch":
        for i in valid:
            x = _cnn_input(image, crops.matrices[i], crops.shapes[i], min_size)
            out[i] = float(models.predict("hole_cnn", x[None, None]).reshape(-1)[0])
        return out
    groups: dict[tuple[int, int], list[int]] = {}
    for i in valid:
        groups.setdefault(crops.shapes[i], []).append(i)
    for shape, idx in sorted(groups.items()):
        side = max(shape[0], min_size) * max(shape[1], min_size)
        per_batch = max(1, _CNN_BATCH_PIXELS // side)
        for b in range(0, len(idx), per_batch):
            chunk = idx[b : b + per_batch]
            batch = np.stack([_cnn_input(image, crops.matrices[i], crops.shapes[i], min_size) for i in chunk])
            out[chunk] = models.predict("hole_cnn", batch[:, None]).reshape(-1)
    return out


# ---------------------------------------------------------------------------------------------------
# Pipeline


def _empty(info: ImageInfo, models: ModelSet, reason: str, timings: dict[str, float],
           lattice=None) -> HoleResult:
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
    )


def find_holes(
    image_or_path: ImageLike,
    models: ModelSet | str | None = None,
    *,
    section: int | None = None,
    provider: str = "auto",
    threads: int | None = None,
    threshold: float | None = None,
    edge_tolerance: float = -10.0,
    refine: bool = True,
    score: str = "unet",
    k: int = 6,
    crop_mode: str = "centred",
    unet_padding: str = "minimal",
    cnn: bool = True,
) -> HoleResult:
    """Find and score the holes of a med-mag image; an empty result with a reason when there are none.

    threshold: U-Net probability threshold (default: the model's manifest). edge_tolerance: how far (px)
    outside the image a lattice point may lie (-10: at least 10 px inside). refine: least-squares lattice
    refinement. score: "unet" (summed U-Net probability per crop) or "cnn" (hole CNN). k: neighbours per
    centroid in the lattice search. crop_mode / unet_padding: "ptolemy" reproduces the original's crop
    windows and padding (see PTOLEMY_COMPAT). cnn: False skips the hole CNN (scores["cnn"] = None).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
    if unet_padding not in PADDINGS:
        raise ValueError(f"unet_padding must be one of {PADDINGS}, got {unet_padding!r}")
    if score == "cnn" and not cnn:
        raise ValueError("score='cnn' needs cnn=True")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    image = as_image(image_or_path, section=section)
    check_min_size(image, MIN_SIDE, "the hole finder")
    if models is False:
        raise ValueError("find_holes needs a model set with a hole_unet (models=False is for find_squares only)")
    model_set = resolve_models(models, provider=provider, threads=threads)
    unet_spec = model_set.spec("hole_unet")
    use_cnn = cnn and (score == "cnn" or model_set.has("hole_cnn"))
    if use_cnn:
        model_set.spec("hole_cnn")  # fail early, before a second of U-Net, when it is missing
    info = ImageInfo(path=image.source, shape=image.shape, pixel_size_A=image.pixel_size_A, section=image.section)
    timings["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    normalised = normalise_image(image.data)
    if normalised is None:
        timings["normalise"] = time.perf_counter() - t
        return _empty(info, model_set, "constant image: nothing to find", timings)
    scale = unet_spec.get("scale") or None
    target = float(scale["spacing_px"]) if isinstance(scale, dict) and scale.get("spacing_px") else None
    period = None
    if target is not None:
        from .spacing import estimate_spacing

        period = estimate_spacing(normalised)
        if period is None:
            timings["normalise"] = time.perf_counter() - t
            return _empty(info, model_set, "no lattice period found in the image (blank or noise?)", timings)
        if period < MIN_PERIOD_PX:
            # A pixel-level pattern (detector fixed pattern, a checkerboard) would make the U-Net input
            # (target/period)^2 times larger than the image: refuse instead of spending minutes and GBs.
            timings["normalise"] = time.perf_counter() - t
            return _empty(info, model_set, f"lattice period {period:.1f} px is below the {MIN_PERIOD_PX} px "
                          "the hole finder resolves (not a hole lattice?)", timings)
    timings["normalise"] = time.perf_counter() - t

    t = time.perf_counter()
    if period is None:
        prob = probability_map(normalised, model_set, unet_padding=unet_padding)
    else:
        prob = _scaled_probability_map(normalised, model_set, period, target, unet_padding)
    timings["unet"] = time.perf_counter() - t

    return holes_from_map(
        image, prob, model_set, threshold=threshold, edge_tolerance=edge_tolerance, refine=refine,
        score=score, k=k, crop_mode=crop_mode, cnn=use_cnn, timings=timings,
    )


def holes_from_map(
    image: ImageLike,
    prob: np.ndarray,
    models: ModelSet,
    *,
    threshold: float | None = None,
    edge_tolerance: float = -10.0,
    refine: bool = True,
    score: str = "unet",
    k: int = 6,
    crop_mode: str = "centred",
    cnn: bool = True,
    timings: dict[str, float] | None = None,
) -> HoleResult:
    """The stages after the U-Net: threshold, centroids, lattice, crops, scores (see find_holes).

    `prob` is the U-Net probability map of `image` (same shape); `timings` collects seconds per stage.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "cnn" and not cnn:
        raise ValueError("score='cnn' needs cnn=True")
    image = as_image(image)
    if prob.shape != image.shape:
        raise ValueError(f"probability map shape {prob.shape} differs from the image's {image.shape}")
    timings = {} if timings is None else timings
    model_set = models
    unet_spec = model_set.spec("hole_unet")
    use_cnn = cnn
    info = ImageInfo(path=image.source, shape=image.shape, pixel_size_A=image.pixel_size_A, section=image.section)
    t = time.perf_counter()
    thr = float(unet_spec.get("threshold", 0.5) if threshold is None else threshold)
    mask = prob > thr
    centroids = hole_centroids(mask)
    timings["centroids"] = time.perf_counter() - t
    if len(centroids) < 2:
        return _empty(info, model_set, f"fewer than 2 hole candidates in the U-Net map ({len(centroids)})", timings)

    t = time.perf_counter()
    from .lattice import fit_lattice

    lattice = fit_lattice(centroids, mask, k=k, refine=refine)
    timings["lattice"] = time.perf_counter() - t
    if lattice is None:
        return _empty(info, model_set, "no square lattice fits the hole candidates", timings)

    t = time.perf_counter()
    points = lattice.points(image.shape, edge_tolerance)
    if len(points) == 0:
        return _empty(info, model_set, f"no lattice point within edge_tolerance={edge_tolerance:g} px", timings,
                      lattice)
    geometry = hole_crops(points, lattice.angle_deg, lattice.spacing_px, image.shape, crop_mode)
    unet = unet_scores(prob, geometry)
    timings["crops"] = time.perf_counter() - t

    cnn_values = np.full(len(points), np.nan)
    if use_cnn:
        t = time.perf_counter()
        cnn_values = cnn_scores(image.data, geometry, model_set)
        timings["cnn"] = time.perf_counter() - t

    holes = []
    for i, p in enumerate(points):
        c = float(cnn_values[i]) if use_cnn and math.isfinite(cnn_values[i]) else None
        scores = {"unet": float(unet[i]), "cnn": c}
        holes.append(Hole(x=float(p[0]), y=float(p[1]), vertices=geometry.vertices[i], area=geometry.area,
                          score=scores[score], scores=scores))
    return HoleResult(
        holes=sort_targets(holes),
        angle_deg=lattice.angle_deg,
        spacing_px=lattice.spacing_px,
        basis=lattice.basis,
        origin=lattice.origin,
        image=info,
        models=model_set.ids,
        reason=None,
        timings=timings,
    )
