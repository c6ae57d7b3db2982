"""Training data for the default model set: synthetic (ptolemy_rt.synthetic) or a facility's own labelled images.

Three kinds of examples, each made exactly as the runtime will see them:
- U-Net: images resampled by the runtime's own factor (ptolemy_rt.unet.unet_factor: to CANONICAL_SPACING px,
  or to a shorter period for the short periods of whole grid-square views), normalised to zero mean and unit
  variance over the whole image, with a target map of Gaussian blobs (sigma TARGET_SIGMA) at hole centres.
  The mix (UNET_MIX, LATTICE_MIX): med-mag views and whole grid-square views; square, skewed, hexagonal and
  oblique lattices; periods 8-400 px as saved; vignetting, EPU-like 8-bit contrast and JPEG round trips.
- Square CNN: SQUARE_CROP_SIZE² crops, at 1/SQUARE_CROP_SCALE of the image's resolution, lowered per atlas
  (ptolemy_rt.crops.square_crop_scale) so that the median square stays SQUARE_CROP_MIN_SIDE crop px across
  (fine meshes: down to full resolution), of the squares that ptolemy_rt.squares finds on a synthetic atlas,
  made by its own crop code (ptolemy_rt.crops.square_crops), labelled collectable or not by matching to the
  generator's truth.
- Hole CNN: lattice-frame crops (ptolemy_rt.crops.crop_half_side: spacing/2 - 10, at least 0.45 spacing),
  per-crop normalised, labelled good or bad, with the lattice jittered as much as the runtime's lattice
  fit errs; from med-mag and whole grid-square views (HOLE_MIX) of the same variety.

None of this draws on benchmarks/holes_sets.py (the held-out set of issue 11 stays independent of training).

Seeds: every training image's seed is drawn below TEST_SEED_BASE; benchmarks/accuracy.py uses seeds from
TEST_SEED_BASE up, so no test image is ever seen in training.

Real data: `read_points` reads an image's operator-selected points (CSV or JSON); `labelled_pairs` finds
image + points pairs in a folder; export/train.py --real DIR trains the CNNs on them with the same code.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ptolemy_rt.crops import hole_crop_input, hole_crops, square_crops
from ptolemy_rt.io import ImageLike
from ptolemy_rt.manifest import UnetScale
from ptolemy_rt.synthetic import GENERATOR_VERSION, make_atlas, make_medmag
from ptolemy_rt.unet import normalise_image, resample, scaled_input, unet_factor

__all__ = [
    "CANONICAL_SPACING",
    "TARGET_SIGMA",
    "TEST_SEED_BASE",
    "GENERATOR_VERSION",
    "DATA_VERSION",
    "UNET_DATA_VERSION",
    "HOLE_RIM",
    "UNET_MIX",
    "HOLE_MIX",
    "LATTICE_MIX",
    "UNET_SCALE",
    "SQUARE_CROP_SIZE",
    "SQUARE_CROP_SCALE",
    "SQUARE_CROP_MIN_SIDE",
    "train_seeds",
    "test_seeds",
    "resample",
    "unet_input",
    "centre_target",
    "UnetImage",
    "unet_image",
    "unet_pool",
    "sample_unet_batch",
    "hole_crop",
    "square_examples",
    "real_square_examples",
    "real_hole_examples",
    "hole_examples",
    "read_points",
    "labelled_pairs",
]

CANONICAL_SPACING = 64.0
# The square CNN's input: a 60x60 canvas of the image averaged over 4x4 blocks (the original's 240x240 canvas
# at a quarter of its resolution, a sixteenth of its pixels; a 48x48 canvas, 30 % less CNN time, ranked
# coarse meshes' squares worse) ...
SQUARE_CROP_SIZE = 60
SQUARE_CROP_SCALE = 4
# ... but never so reduced that the median square is under this many crop pixels across (fine meshes:
# ptolemy_rt.crops.square_crop_scale lowers the factor per image, so their squares stay 20-40 px wide).
SQUARE_CROP_MIN_SIDE: int | None = 20
TARGET_SIGMA = 2.0
# Target peak of a visible but bad hole (edge-cut, broken, empty, contaminated); good holes peak at 1. Small
# enough that the U-Net's summed probability ranks good holes first (the "unet" score), large enough that
# bad holes still give a centroid above the 0.3 threshold (with BCE positive weight 20, p* ~ 0.7).
BAD_HOLE_TARGET = 0.1
TEST_SEED_BASE = 1 << 40
# The shipped U-Net's scale (manifest scale.max_upscale): it is enlarged at most this much, down to
# ptolemy_rt.unet.MIN_UNET_PERIOD_FRACTION of the canonical period for short periods.
UNET_MAX_UPSCALE = 1.3
UNET_SCALE = UnetScale(CANONICAL_SPACING, UNET_MAX_UPSCALE)
# What the training images show (fractions of the U-Net pool; the hole CNN's images draw from HOLE_MIX).
UNET_MIX = {"native": 0.4, "canonical": 0.3, "grid_square": 0.3}
HOLE_MIX = {"medmag": 0.75, "grid_square": 0.25}
# Fraction of the hole CNN's grid-square views drawn with make_medmag's `rim` (soft bar edges as EPU shows them,
# thick ice along the bars: the outer rings of holes are bad, as on real grid squares).
HOLE_RIM = 0.85
LATTICE_MIX = (("square", 0.5), ("skewed", 0.2), ("hexagonal", 0.2), ("oblique", 0.1))
# Bump whenever the training mix changes (model provenance records it beside the generator's version).
# 3: the hole CNN's grid-square views have soft bar edges and thick rim ice (make_medmag `rim`, HOLE_RIM) and
# its bad examples are the visible ones first; the U-Net's data are those of 2.
DATA_VERSION = "3"
UNET_DATA_VERSION = "2"


def train_seeds(seed: int, n: int, stream: int) -> np.ndarray:
    """`n` image seeds for training stream `stream` (0 U-Net, 1 square, 2 hole) from master seed `seed`;
    all below TEST_SEED_BASE."""
    rng = np.random.default_rng([seed, stream])
    return rng.integers(0, TEST_SEED_BASE, size=n, dtype=np.int64)


def test_seeds(n: int, stream: int = 0) -> list[int]:
    """The fixed synthetic test set's seeds (never drawn in training)."""
    return [TEST_SEED_BASE + 1000 * stream + i for i in range(n)]


def centre_target(shape: tuple[int, int], centres: np.ndarray, sigma: float = TARGET_SIGMA,
                  peaks: np.ndarray | None = None) -> np.ndarray:
    """Map of Gaussian blobs (peak 1 or `peaks`, max where they overlap) at `centres` (x, y)."""
    h, w = shape
    target = np.zeros((h, w), np.float32)
    r = int(np.ceil(3 * sigma))
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    peaks = np.ones(len(centres), np.float32) if peaks is None else np.asarray(peaks, np.float32)
    for (cx, cy), peak in zip(centres, peaks):
        x0, x1 = max(int(np.floor(cx)) - r, 0), min(int(np.floor(cx)) + r + 2, w)
        y0, y1 = max(int(np.floor(cy)) - r, 0), min(int(np.floor(cy)) + r + 2, h)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32) - np.float32(cx)
        ys = np.arange(y0, y1, dtype=np.float32) - np.float32(cy)
        blob = np.float32(peak) * np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / np.float32(2 * sigma * sigma))
        np.maximum(target[y0:y1, x0:x1], blob, out=target[y0:y1, x0:x1])
    return target


def unet_input(image: np.ndarray, scale: float | None) -> np.ndarray:
    """The U-Net's input for `image` resampled by `scale` (None: at its own scale), made by the runtime's own
    stages (ptolemy_rt.unet: normalise, resample, normalise again), so training sees what inference sees."""
    normalised = normalise_image(image)
    if normalised is None:
        raise ValueError("a constant image has no U-Net input")
    if scale is None:
        return normalised
    out = scaled_input(normalised, scale)
    if out is None:
        raise ValueError("the resampled image is constant")
    return out


@dataclass(frozen=True)
class UnetImage:
    """One U-Net training image at the canonical scale: normalised image and centre target."""

    image: np.ndarray
    target: np.ndarray
    centres: np.ndarray
    seed: int


def _lattice_kind(rng: np.random.Generator) -> str:
    """A lattice kind in the training mix's proportions (LATTICE_MIX)."""
    kinds, weights = zip(*LATTICE_MIX)
    return str(kinds[int(rng.choice(len(kinds), p=np.asarray(weights) / sum(weights)))])


def _photometry(rng: np.random.Generator, p: float) -> dict:
    """make_medmag's image-formation options, each with probability `p`: vignetting, EPU-like 8-bit contrast,
    and a JPEG round trip (quality 50-95)."""
    out: dict = {}
    if rng.random() < p:
        out["vignetting"] = float(rng.uniform(0.1, 0.5))
    if rng.random() < p:
        out["epu_contrast"] = True
    if rng.random() < p:
        out["jpeg_quality"] = int(rng.integers(50, 96))
    return out


def _user_upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """A user's enlargement of a small JPEG before targeting (cv2 bicubic, as the benchmarks and docs do)."""
    if factor == 1:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def _scaled_centres(centres: np.ndarray, before: tuple[int, int], after: tuple[int, int]) -> np.ndarray:
    """Points (x, y) of an image of shape `before` in the same image resized to `after` (pixel-centre mapping)."""
    sx, sy = after[1] / before[1], after[0] / before[0]
    c = np.asarray(centres, np.float64).reshape(-1, 2)
    return np.stack([(c[:, 0] + 0.5) * sx - 0.5, (c[:, 1] + 0.5) * sy - 0.5], axis=1)


def unet_image(seed: int) -> UnetImage:
    """A synthetic image as the U-Net sees it at run time: normalised (zero mean, unit variance), then resampled
    by the runtime's own factor (ptolemy_rt.unet.unet_factor for the model's scale) for a period estimate with
    the +-12 % error it may carry, in that order as ptolemy_rt.holes does; the target marks every visible
    hole's centre, good holes with peak 1 and bad ones with BAD_HOLE_TARGET (hidden holes, under a grid bar,
    not at all).

    The mix (UNET_MIX): med-mag views drawn at their native period (40-400 px) and resampled, like real inputs;
    med-mag views drawn straight at the canonical period (more variety per CPU second); and whole grid-square
    views (period 8-24 px as saved, JPEG-like, optionally enlarged 2x or 4x by the user) brought to the period
    the runtime gives them (down to MIN_UNET_PERIOD_FRACTION of the canonical one), with the resampling
    artefacts that come with it. Lattices: square, skewed, hexagonal, oblique (LATTICE_MIX)."""
    rng = np.random.default_rng([int(seed), 7])
    jitter = float(np.exp(rng.uniform(np.log(0.88), np.log(1.12))))
    hc, wc = int(rng.integers(192, 448)), int(rng.integers(192, 448))
    kind = _lattice_kind(rng)
    branch = float(rng.random())
    if branch < UNET_MIX["canonical"]:
        img, truth = make_medmag(int(seed), (hc, wc), spacing_px=CANONICAL_SPACING * jitter, lattice=kind,
                                 **_photometry(rng, 0.25))
        img = unet_input(img, None)
        centres = np.asarray(truth.centers)
    else:
        if branch < UNET_MIX["canonical"] + UNET_MIX["native"]:
            period = float(np.exp(rng.uniform(np.log(40), np.log(400))))
            options = dict(spacing_px=period, lattice=kind, **_photometry(rng, 0.25))
            up = 1
        else:
            # Whole grid square as saved (8-24 px period), as the user may enlarge it before targeting.
            hc, wc = int(rng.integers(256, 576)), int(rng.integers(256, 576))
            period = float(np.exp(rng.uniform(np.log(8), np.log(24))))
            options = dict(spacing_px=period, lattice=kind, view="square", **_photometry(rng, 0.6))
            up = int(rng.choice([1, 2, 4], p=[0.45, 0.35, 0.2]))
        scale = unet_factor(period * up * jitter, UNET_SCALE)
        total = scale * up
        shape = (int(np.clip(round(hc / total), 48, 2048)), int(np.clip(round(wc / total), 48, 2048)))
        img, truth = make_medmag(int(seed), shape, **options)
        img = _user_upscale(img, up)
        shown = img.shape
        img = unet_input(img, scale)
        centres = _scaled_centres(_scaled_centres(truth.centers, shape, shown), shown, img.shape)
    visible = np.asarray(truth.visible)
    peaks = np.where(np.asarray(truth.good), 1.0, BAD_HOLE_TARGET)[visible]
    centres = centres[visible]
    return UnetImage(image=img.astype(np.float32), target=centre_target(img.shape, centres, peaks=peaks),
                     centres=centres, seed=int(seed))


def unet_pool(seed: int, n: int) -> list[UnetImage]:
    """`n` U-Net training images from master seed `seed`."""
    return [unet_image(int(s)) for s in train_seeds(seed, n, stream=0)]


def sample_unet_batch(rng: np.random.Generator, pool: Sequence[UnetImage], batch: int, patch: int,
                      invert: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random patches (N, 1, patch, patch) with targets: random crop (zero-padded where the image
    is smaller, as the runtime pads with the normalised mean), 90-degree rotation, flip, sign inversion."""
    xs = np.zeros((batch, 1, patch, patch), np.float32)
    ys = np.zeros((batch, 1, patch, patch), np.float32)
    for b in range(batch):
        item = pool[int(rng.integers(len(pool)))]
        h, w = item.image.shape
        y0 = int(rng.integers(0, max(h - patch, 0) + 1))
        x0 = int(rng.integers(0, max(w - patch, 0) + 1))
        img = item.image[y0:y0 + patch, x0:x0 + patch]
        tgt = item.target[y0:y0 + patch, x0:x0 + patch]
        k = int(rng.integers(4))
        img, tgt = np.rot90(img, k), np.rot90(tgt, k)
        if rng.random() < 0.5:
            img, tgt = img[:, ::-1], tgt[:, ::-1]
        if invert and rng.random() < 0.5:
            img = -img
        xs[b, 0, :img.shape[0], :img.shape[1]] = img
        ys[b, 0, :tgt.shape[0], :tgt.shape[1]] = tgt
    return xs, ys


# ------------------------------------------------------------------------------------------------- holes


def hole_crop(image: np.ndarray, centre_xy: tuple[float, float], spacing_px: float, angle_deg: float,
              min_size: int = 1) -> np.ndarray:
    """One hole's CNN input exactly as ptolemy_rt.holes makes it: the lattice-frame square of half-side
    crop_half_side(spacing) around the point, resized up to `min_size` if smaller, normalised by its own
    mean and std."""
    geometry = hole_crops(np.array([centre_xy], dtype=np.float64), angle_deg, spacing_px, image.shape)
    return hole_crop_input(image, geometry.matrices[0], geometry.shapes[0], min_size)


def hole_examples(seed: int, n_images: int, max_per_image: int = 40, shape: tuple[int, int] = (768, 1024),
                  min_size: int = 1) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """Hole CNN examples: (crops of varied sizes, labels good=1, image index of each crop).

    The mix (HOLE_MIX): med-mag views of `shape` (square, skewed, hexagonal or oblique lattices, LATTICE_MIX;
    sometimes vignetted, EPU-like 8-bit or JPEG) and whole grid-square views at half that size as saved
    (period 8-24 px, JPEG-like; HOLE_RIM of them with soft bar edges and thick rim ice, make_medmag `rim`),
    enlarged 1x, 2x or 4x as a user may before targeting. Every hole whose lattice point lies at least 10 px
    inside the image (the runtime's default edge tolerance) is a candidate; at most `max_per_image` per image,
    bad ones preferred so both classes are well represented, visible bad ones (not hidden under a bar) first.
    Crops follow the runtime: squares along a shortest lattice vector, its length as the spacing. The lattice
    used for cropping is the truth with a small random error (centre ~2 %, spacing ~1.5 %, angle ~0.7 deg),
    which the runtime's fitted lattice also carries."""
    crops: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    for i, s in enumerate(train_seeds(seed, n_images, stream=2)):
        rng = np.random.default_rng([int(s), 11])
        kind = _lattice_kind(rng)
        if rng.random() < HOLE_MIX["medmag"]:
            img, truth = make_medmag(int(s), shape, lattice=kind, **_photometry(rng, 0.25))
            c = np.asarray(truth.centers)
            spacing0 = truth.spacing_px
        else:
            period = float(np.exp(rng.uniform(np.log(8), np.log(24))))
            up = int(rng.choice([1, 2, 4], p=[0.3, 0.4, 0.3]))
            saved = (shape[0] // 2, shape[1] // 2)
            rim = bool(np.random.default_rng([int(s), 12]).random() < HOLE_RIM)  # its own stream
            img, truth = make_medmag(int(s), saved, spacing_px=period, lattice=kind, view="square",
                                     rim=rim, **_photometry(rng, 0.6))
            img = _user_upscale(img, up)
            c = _scaled_centres(truth.centers, saved, img.shape)
            spacing0 = truth.spacing_px * up
        h, w = img.shape
        inside = (c[:, 0] >= 10) & (c[:, 0] <= w - 11) & (c[:, 1] >= 10) & (c[:, 1] <= h - 11)
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            continue
        good = np.asarray(truth.good)[idx]
        visible = np.asarray(truth.visible)[idx]
        # Keep every bad hole (up to half the quota; the visible ones first: a hole deep under a bar is only dark
        # noise, while those at the bars' edge are what the CNN must learn to reject) and fill with good ones.
        bad_idx = np.concatenate([rng.permutation(idx[~good & visible]),
                                  rng.permutation(idx[~good & ~visible])])[: max_per_image // 2]
        good_idx = rng.permutation(idx[good])[: max_per_image - bad_idx.size]
        for j in np.concatenate([bad_idx, good_idx]):
            spacing = spacing0 * float(np.exp(rng.normal(0, 0.015)))
            angle = truth.angle_deg + float(rng.normal(0, 0.7))
            centre = c[j] + rng.normal(0, 0.02 * spacing0, 2)
            crops.append(hole_crop(img, (centre[0], centre[1]), spacing, angle, min_size))
            labels.append(int(truth.good[j]))
            groups.append(i)
    return crops, np.array(labels, np.float32), groups


# --------------------------------------------------------------------------------------------- real data


def read_points(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Operator-selected points of one image: (n, 2) x, y (column, row) and optional labels (1 selected /
    good, 0 rejected), from CSV (header with x, y and optionally label; or two or three bare columns) or JSON
    (a list of [x, y] / [x, y, label] / {"x", "y", "label"} / {"center": [x, y], "label"}, or such a list under
    "points" or "targets"; ptolemy-rt's own result JSON works too)."""
    path = Path(path)
    rows: list[tuple[float, float, float | None]] = []
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("points", data.get("targets", []))
        for item in data:
            if isinstance(item, dict):
                if "center" in item:
                    x, y = item["center"][:2]
                else:
                    x, y = item["x"], item["y"]
                label = item.get("label", item.get("selected"))
                rows.append((float(x), float(y), None if label is None else float(label)))
            else:
                rows.append((float(item[0]), float(item[1]), float(item[2]) if len(item) > 2 else None))
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            table = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
        header = [c.strip().lower() for c in table[0]] if table else []
        if header and "x" in header and "y" in header:
            ix, iy = header.index("x"), header.index("y")
            il = header.index("label") if "label" in header else None
            body = table[1:]
        else:
            ix, iy, il = 0, 1, 2 if table and len(table[0]) > 2 else None
            body = table
        for r in body:
            rows.append((float(r[ix]), float(r[iy]), float(r[il]) if il is not None and r[il].strip() else None))
    points = np.array([(x, y) for x, y, _ in rows], dtype=np.float64).reshape(-1, 2)
    labels = None
    if rows and all(lab is not None for _, _, lab in rows):
        labels = np.array([lab for _, _, lab in rows], dtype=np.float32)
    return points, labels


def labelled_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, points) pairs in `folder`: each image (MRC/TIFF/PNG/JPEG) with a same-stem .csv or .json."""
    folder = Path(folder)
    pairs = []
    for image in sorted(folder.iterdir()):
        if image.suffix.lower() not in (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg", ".jpeg"):
            continue
        for ext in (".csv", ".json"):
            points = image.with_suffix(ext)
            if points.is_file():
                pairs.append((image, points))
                break
    return pairs


# ----------------------------------------------------------------------------------------------- squares


@dataclass(frozen=True)
class AtlasSquares:
    """The squares ptolemy_rt.squares finds in one atlas, with the square CNN's inputs."""

    centers: np.ndarray  # (n, 2) x, y box centres
    areas: np.ndarray  # (n,) box areas, px²
    crops: np.ndarray  # (n, 1, size, size) float32, normalised as the runtime does


def atlas_squares(image: ImageLike, size: int = SQUARE_CROP_SIZE, scale: int = SQUARE_CROP_SCALE,
                  min_side: int | None = SQUARE_CROP_MIN_SIDE) -> AtlasSquares | None:
    """Run the low-mag pipeline's geometry (mixture, regions, grid angle, boxes, crops) on an image or array,
    with the runtime's own functions, so training crops are the crops the model will score (square_crops at
    the model's crop size and scale, as ptolemy_rt.squares calls it with the manifest's)."""
    from ptolemy_rt.io import as_image
    from ptolemy_rt.mixture import segment
    from ptolemy_rt.regions import find_regions
    from ptolemy_rt.squares import boxes_at_angle, class_stats, grid_angle

    img = as_image(image)
    seg = segment(img.data, img.dtype)
    if seg.mask is None:
        return None
    data = np.maximum(img.data, np.float32(0.0))
    regions = find_regions(seg.mask, window=6, min_area=100.0)
    if len(regions) == 0:
        return None
    theta = grid_angle(regions.hulls, method="brent")  # as the compat pipeline (the original's)
    boxes = boxes_at_angle(regions.hulls, theta)
    mean, std = class_stats(data, seg.mask)
    crops = square_crops(data, regions.hulls, theta, mean, std, size=size, scale=scale, min_side=min_side)
    return AtlasSquares(np.asarray(boxes.centers), np.asarray(boxes.areas), crops)


def match_points(found: np.ndarray, truth: np.ndarray, tolerance: float) -> np.ndarray:
    """Index of the nearest `truth` point within `tolerance` of each `found` point, -1 where none."""
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    if len(found) == 0 or len(truth) == 0:
        return np.full(len(found), -1, dtype=np.int64)
    d = np.hypot(found[:, None, 0] - truth[None, :, 0], found[:, None, 1] - truth[None, :, 1])
    nearest = d.argmin(axis=1)
    return np.where(d[np.arange(len(found)), nearest] <= tolerance, nearest, -1)


def square_examples(seed: int, n_atlases: int, shape: tuple[int, int] = (1024, 1024), size: int = SQUARE_CROP_SIZE,
                    scale: int = SQUARE_CROP_SCALE, min_side: int | None = SQUARE_CROP_MIN_SIDE,
                    fine_share: float = 0.0,
                    fine_pitch: tuple[float, float] = (24.0, 110.0)) -> tuple[np.ndarray, np.ndarray]:
    """Square CNN examples: (crops (n, 1, size, size) float32, labels collectable=1) from synthetic atlases.

    fine_share: the share of atlases (every k-th, deterministically) drawn with a finer mesh, its pitch
    log-uniform in `fine_pitch` px (make_atlas's own pitches are 110-220 px): 300-400 mesh atlases and
    large atlases show squares of 25-100 px, which the crops at 1/scale make a few pixels wide.

    A found square takes the label of the truth square its centre lies on (within 0.35 x pitch) when it
    covers at least half of that square; anything else (merged, split, spurious) is not collectable."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    pitch_rng = np.random.default_rng([seed, 1, 1])
    done = 0.0
    for k, s in enumerate(train_seeds(seed, n_atlases, stream=1)):
        pitch = None
        if fine_share > 0 and (k + 1) * fine_share >= done + 1:
            done += 1
            pitch = float(np.exp(pitch_rng.uniform(np.log(fine_pitch[0]), np.log(fine_pitch[1]))))
        image, truth = make_atlas(int(s), shape, pitch_px=pitch)
        found = atlas_squares(image, size, scale, min_side)
        if found is None:
            continue
        j = match_points(found.centers, truth.centers, 0.35 * truth.pitch_px)
        whole = found.areas >= 0.5 * truth.side_px ** 2
        label = np.where((j >= 0) & whole, np.asarray(truth.collectable)[np.maximum(j, 0)], False)
        xs.append(found.crops)
        ys.append(label.astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------------------------- real data


def real_square_examples(folder: str | Path, size: int = SQUARE_CROP_SIZE, scale: int = SQUARE_CROP_SCALE,
                         min_side: int | None = SQUARE_CROP_MIN_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Square CNN examples (size x size crops) from a facility's atlases: each image with a same-stem
    .csv/.json of the squares an operator selected (points inside them; with a label column, 0 marks a
    rejected square). Squares found by the runtime that hold a selected point are positives, all others negatives."""
    from ptolemy_rt.io import read_image

    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for image_path, points_path in labelled_pairs(folder):
        found = atlas_squares(read_image(image_path), size, scale, min_side)
        if found is None:
            continue
        points, labels = read_points(points_path)
        side = float(np.sqrt(np.median(found.areas)))
        # Nearest found square to each point, within half a square's side.
        j = match_points(points, found.centers, 0.5 * side)
        label = np.zeros(len(found.centers), np.float32)
        for k, idx in enumerate(j):
            if idx >= 0:
                label[idx] = 1.0 if labels is None else float(labels[k] > 0)
        xs.append(found.crops)
        ys.append(label)
    if not xs:
        return np.zeros((0, 1, size, size), np.float32), np.zeros(0, np.float32)
    return np.concatenate(xs), np.concatenate(ys)


def real_hole_examples(folder: str | Path, models=None, min_size: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """Hole CNN examples from a facility's med-mag images: each image with a same-stem .csv/.json of the
    holes an operator selected (or labelled 1/0). The lattice comes from ptolemy_rt.holes.find_holes with
    `models` (default: the shipped set, so train the U-Net first); lattice points within a quarter period
    of a selected point are positives, the rest negatives."""
    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.io import read_image

    crops: list[np.ndarray] = []
    labels_out: list[float] = []
    for image_path, points_path in labelled_pairs(folder):
        image = read_image(image_path)
        result = find_holes(image, models, cnn=False)
        if not result.holes:
            continue
        points, labels = read_points(points_path)
        lattice = np.array([(h.x, h.y) for h in result.holes])
        j = match_points(points, lattice, 0.25 * result.spacing_px)
        label = np.zeros(len(lattice), np.float32)
        for k, idx in enumerate(j):
            if idx >= 0:
                label[idx] = 1.0 if labels is None else float(labels[k] > 0)
        for p, lab in zip(lattice, label):
            crops.append(hole_crop(image.data, (p[0], p[1]), result.spacing_px, result.angle_deg, min_size))
            labels_out.append(float(lab))
    return crops, np.array(labels_out, np.float32)
