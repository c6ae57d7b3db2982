"""The med-mag pipeline: find the holes of a holey-carbon lattice and score them.

Stages (each timed in ``HoleResult.timings``): read -> normalise (zero mean, unit variance; with a
scale-normalised U-Net also estimate the lattice period and resample; when the period cannot be measured,
or the lattice in the map disagrees with it, the U-Net is tried at a ladder of periods, see
period_candidates) -> unet (pad, run, crop back, sigmoid; tiled above the manifest's max_pixels) ->
centroids (threshold, regions, hull centroids) -> lattice (summed-area search + least squares, see
lattice.py) -> crops (one per lattice point, sampled in the lattice frame straight from the input) -> cnn
(the hole CNN, honouring its BatchNorm mode).

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
from .errors import ModelError
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
    "period_candidates",
    "unet_factor",
    "crop_half_side",
    "HoleCrops",
    "hole_crops",
    "unet_scores",
    "cnn_scores",
    "PTOLEMY_COMPAT",
    "SCORES",
    "default_score",
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
# ... but a crop is never narrower than this fraction of the period: holes reach 70 % of it, and a crop
# that shows no film around the hole leaves the CNN nothing to tell a good hole from an empty one by
# (at a 40 px period the original's rule gives 20 px crops inside a 28 px hole).
CROP_MIN_FRACTION = 0.9
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


def unet_factor(period_px: float, scale: dict[str, Any]) -> float:
    """Resampling factor for a scale-normalised U-Net: target period / period, at most scale["max_upscale"].

    The cap bounds the U-Net's cost on fine lattices (the default set: 1.3, so <= 2.9 GFLOP for 1024x1440);
    such a U-Net is trained to find holes at periods down to target / max_upscale.
    """
    f = float(scale["spacing_px"]) / float(period_px)
    cap = scale.get("max_upscale")
    return min(f, float(cap)) if cap else f


def _scaled_probability_map(normalised: np.ndarray, models: ModelSet, f: float, unet_padding: str) -> np.ndarray:
    """Resample by `f`, run the U-Net, resample the map back."""
    import cv2

    rows, cols = normalised.shape
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
    """Half the side of a hole crop: floor(spacing / 2) - 10 as the original, but at least floor(0.45 spacing).

    The two agree from a 200 px period up (the real example's 290 px gives the original's 270 px crops)."""
    return int(max(math.floor(spacing_px / 2.0) - CROP_MARGIN_PX,
                   max(1.0, math.floor(CROP_MIN_FRACTION * spacing_px / 2.0))))


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


def default_score(models: ModelSet, cnn: bool = True) -> str:
    """The score that ranks holes when none is asked for: the set's manifest "hole_score", else "unet".

    "unet" (the paper's best classifier) for the published weights; the default set names "cnn": its hole
    CNN ranks a good hole first in 32 of 32 synthetic test images, its U-Net sum in 21 (see models/README.md).
    "cnn" falls back to "unet" when the set has no hole CNN or `cnn` is False.
    """
    name = models.manifest.get("hole_score", "unet")
    if name == "cnn" and cnn and models.has("hole_cnn"):
        return "cnn"
    return "unet"


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
    score: str | None = None,
    k: int = 6,
    crop_mode: str = "centred",
    unet_padding: str = "minimal",
    cnn: bool = True,
) -> HoleResult:
    """Find and score the holes of a med-mag image; an empty result with a reason when there are none.

    threshold: U-Net probability threshold (default: the model's manifest). edge_tolerance: how far (px)
    outside the image a lattice point may lie (-10: at least 10 px inside). refine: least-squares lattice
    refinement. score: "unet" (summed U-Net probability per crop, counted in the U-Net's pixels, so the same
    at any magnification) or "cnn" (hole CNN); None: the model set's choice (see default_score). k: neighbours
    per centroid in the lattice search. crop_mode / unet_padding: "ptolemy" reproduces the original's crop
    windows and padding (see PTOLEMY_COMPAT). cnn: False skips the hole CNN (scores["cnn"] = None).
    """
    if score is not None and score not in SCORES:
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
    score = default_score(model_set, cnn) if score is None else score
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
    if target is not None and not (target > 0 and float(scale.get("max_upscale") or 1.0) > 0):
        raise ModelError(f"hole_unet scale in {model_set.directory / 'manifest.json'} must be positive: {scale}")
    thr = float(unet_spec.get("threshold", 0.5) if threshold is None else threshold)
    if target is None:
        timings["normalise"] = time.perf_counter() - t
        t = time.perf_counter()
        prob = probability_map(normalised, model_set, unet_padding=unet_padding)
        timings["unet"] = time.perf_counter() - t
        return holes_from_map(
            image, prob, model_set, threshold=thr, edge_tolerance=edge_tolerance, refine=refine,
            score=score, k=k, crop_mode=crop_mode, cnn=use_cnn, timings=timings,
        )

    from .spacing import estimate_spacing

    # Raw counts, not the normalised image: the estimate masks grid bars by their near-zero dose.
    period = estimate_spacing(image.data)
    timings["normalise"] = time.perf_counter() - t
    if period is not None and period < MIN_PERIOD_PX:
        # A pixel-level pattern (detector fixed pattern, a checkerboard) would make the U-Net input
        # (target/period)^2 times larger than the image: refuse instead of spending minutes and GBs.
        return _empty(info, model_set, f"lattice period {period:.1f} px is below the {MIN_PERIOD_PX} px "
                      "the hole finder resolves (not a hole lattice?)", timings)
    best = None  # (quality, factor, prob, lattice)
    first_reason = None
    tried: set[float] = set()
    for candidate in period_candidates(period, image.shape, scale):
        f = unet_factor(candidate, scale)
        if f in tried:  # periods below the U-Net's shortest all run at its largest upscale
            continue
        tried.add(f)
        t = time.perf_counter()
        prob = _scaled_probability_map(normalised, model_set, f, unet_padding)
        timings["unet"] = timings.get("unet", 0.0) + time.perf_counter() - t
        on_ladder = candidate != period
        # Off the ladder, a map with far more blobs than the period allows is noise the U-Net fired on;
        # fitting a lattice to thousands of such blobs would cost seconds and find nothing.
        limit = _LADDER_EXCESS * image.shape[0] * image.shape[1] / candidate**2 + 10 if on_ladder else None
        lattice, reason, quality = _fit_map(prob, thr, k, refine, timings, max_centroids=limit)
        if on_ladder and lattice is not None and quality < _LADDER_MIN_QUALITY:
            lattice, reason = None, "no convincing lattice"
        if lattice is not None and _consistent(lattice.spacing_px, candidate):
            if best is None or quality > best[0]:
                best = (quality, f, prob, lattice)
            # The measured period is taken as it is; off the ladder, a map at a far too coarse scale can
            # still hold a lattice of its period by chance, so the ladder goes on until one is convincing.
            if not on_ladder or quality >= _CONVINCING:
                break
        elif first_reason is None and period is not None:
            first_reason = reason or (f"the lattice in the U-Net map ({lattice.spacing_px:.1f} px) disagrees "
                                      f"with the image's period ({period:.1f} px)")
    if best is None:
        reason = first_reason or "no hole lattice at any period the hole finder resolves (blank or noise?)"
        return _empty(info, model_set, reason, timings)
    _, f, prob, lattice = best
    return _holes_on_lattice(image, prob, lattice, model_set, edge_tolerance=edge_tolerance, score=score,
                             crop_mode=crop_mode, cnn=use_cnn, timings=timings, info=info, unet_area=f * f)


# A lattice whose points hold this share of the map's hole candidates, times the share of its points that
# hold one, ends the ladder (a true lattice at the right scale scores ~0.9); below the second it is not
# taken at all (the U-Net fires on pure noise, and lattices through such blobs score 0.1-0.3).
_CONVINCING = 0.7
_LADDER_MIN_QUALITY = 0.35
# A ladder try whose map has more blobs than this times the lattice points the image holds is noise.
_LADDER_EXCESS = 2.0
# The lattice a scale-normalised U-Net map gives must lie within this factor of the period it was run at
# (the U-Nets are trained for +-12 % of their canonical period).
_SCALE_TOLERANCE = 1.25
# Periods tried, longest first, when the image's period cannot be measured: the 40-400 px in
# steps of _SCALE_TOLERANCE, so every period is within 12 % of one of them. A try runs the U-Net on
# unet_factor(period)^2 times the image's pixels; tries above this many U-Net input pixels are skipped.
_LADDER_LONGEST = 400.0
_LADDER_SHORTEST = 40.0
_LADDER_MAX_PIXELS = 4_000_000


def period_candidates(period: float | None, shape: tuple[int, int], scale: dict[str, Any]) -> list[float]:
    """Periods (px) to run a scale-normalised U-Net at: the measured period, then a ladder 400 -> 40 px.

    Ladder rungs within 12 % of the measured period are dropped (that try already covered them), as are
    periods longer than half the image's shorter side (no lattice to fit) and those whose resampled image
    would exceed _LADDER_MAX_PIXELS (seconds of U-Net on a large image at a short period).
    """
    out = [] if period is None else [float(period)]
    rows, cols = int(shape[0]), int(shape[1])
    p = _LADDER_LONGEST
    while p >= _LADDER_SHORTEST / 1.0001:
        near_measured = period is not None and _consistent(p, period, math.sqrt(_SCALE_TOLERANCE))
        fits = p <= min(rows, cols) / 2.0 and rows * cols * unet_factor(p, scale) ** 2 <= _LADDER_MAX_PIXELS
        if fits and not near_measured:
            out.append(p)
        p /= _SCALE_TOLERANCE
    return out


def _consistent(a: float, b: float, factor: float = _SCALE_TOLERANCE) -> bool:
    return 1.0 / factor <= a / b <= factor


def _fit_map(prob: np.ndarray, thr: float, k: int, refine: bool, timings: dict[str, float],
             max_centroids: float | None = None):
    """Threshold, centroids and lattice of a probability map: (lattice, None, quality) or (None, reason, 0).

    quality: the share of centroids on the lattice times the share of lattice points on a positive pixel.
    With more than `max_centroids` candidates no lattice is fitted.
    """
    from .lattice import fit_lattice

    t = time.perf_counter()
    mask = prob > thr
    centroids = hole_centroids(mask)
    timings["centroids"] = timings.get("centroids", 0.0) + time.perf_counter() - t
    if len(centroids) < 2:
        return None, f"fewer than 2 hole candidates in the U-Net map ({len(centroids)})", 0.0
    if max_centroids is not None and len(centroids) > max_centroids:
        return None, f"{len(centroids)} hole candidates are more than the lattice can hold", 0.0
    t = time.perf_counter()
    lattice = fit_lattice(centroids, mask, k=k, refine=refine)
    timings["lattice"] = timings.get("lattice", 0.0) + time.perf_counter() - t
    if lattice is None:
        return None, "no square lattice fits the hole candidates", 0.0
    return lattice, None, lattice.n_inliers / len(centroids) * lattice.occupancy


def holes_from_map(
    image: ImageLike,
    prob: np.ndarray,
    models: ModelSet,
    *,
    threshold: float | None = None,
    edge_tolerance: float = -10.0,
    refine: bool = True,
    score: str | None = None,
    k: int = 6,
    crop_mode: str = "centred",
    cnn: bool = True,
    timings: dict[str, float] | None = None,
) -> HoleResult:
    """The stages after the U-Net: threshold, centroids, lattice, crops, scores (see find_holes).

    `prob` is the U-Net probability map of `image` (same shape); `timings` collects seconds per stage.
    """
    score = default_score(models, cnn) if score is None else score
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "cnn" and not cnn:
        raise ValueError("score='cnn' needs cnn=True")
    image = as_image(image)
    if prob.shape != image.shape:
        raise ValueError(f"probability map shape {prob.shape} differs from the image's {image.shape}")
    timings = {} if timings is None else timings
    info = ImageInfo(path=image.source, shape=image.shape, pixel_size_A=image.pixel_size_A, section=image.section)
    thr = float(models.spec("hole_unet").get("threshold", 0.5) if threshold is None else threshold)
    lattice, reason, _ = _fit_map(prob, thr, k, refine, timings)
    if lattice is None:
        return _empty(info, models, reason, timings)
    return _holes_on_lattice(image, prob, lattice, models, edge_tolerance=edge_tolerance, score=score,
                             crop_mode=crop_mode, cnn=cnn, timings=timings, info=info)


def _holes_on_lattice(image, prob: np.ndarray, lattice, model_set: ModelSet, *, edge_tolerance: float,
                      score: str, crop_mode: str, cnn: bool, timings: dict[str, float],
                      info: ImageInfo, unet_area: float = 1.0) -> HoleResult:
    """The stages after the lattice: lattice points, crops, U-Net and CNN scores.

    unet_area: U-Net pixels per input pixel. The "unet" score is the summed probability in the U-Net's own
    pixels, so that a scale-normalised U-Net gives holes the same score at any magnification (summed over
    input pixels it would grow with the square of the period, and rank every hole of a coarse image first).
    """
    use_cnn = cnn
    t = time.perf_counter()
    points = lattice.points(image.shape, edge_tolerance)
    if len(points) == 0:
        return _empty(info, model_set, f"no lattice point within edge_tolerance={edge_tolerance:g} px", timings,
                      lattice)
    geometry = hole_crops(points, lattice.angle_deg, lattice.spacing_px, image.shape, crop_mode)
    unet = unet_scores(prob, geometry) * unet_area
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
