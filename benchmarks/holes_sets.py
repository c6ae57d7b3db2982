"""A held-out set of med-mag and grid-square views, modelled independently of ptolemy_rt.synthetic (issue 11).

    from benchmarks.holes_sets import CATEGORIES, make_sample, holes_set

Image formation, not drawn shapes: the specimen is a thickness map (film: carbon or gold foil; holes: ice
whose thickness follows a tilted wedge with per-hole scatter; grid bars and the area outside the square:
opaque; torn film: vacuum), turned into transmission exp(-t / lambda); a defocused image adds Fresnel-like
fringes (the transmission's difference from two blurred copies of itself, a bright rim inside each edge and
a dark one outside); an off-centre illumination disc vignettes; counts are Poisson at 15-150 e/px; the
detector blurs by 0.5-1.1 px after the noise (so noise is correlated, as a scintillator's is); EPU-like
display contrast stretches between low and high percentiles with a gamma and saves an 8-bit JPEG (quality
45-92). ptolemy_rt.synthetic draws blobs on a film level with additive noise and none of these.

Categories (CATEGORIES): square, skewed (2-3 % anisotropy along a random direction, plus up to 1 degree of
shear), hexagonal (gold foil, 60 degree lattice), whole_square (a grid-square view: a rounded square of film
between grid bars at a random angle and width, spacings 10-20 px; 512 x 364 and 1024 x 1440; square or
hexagonal arrays), single_hole (one hole 36-60 % of the shorter side across, neighbours cut by the edges),
no_lattice (continuous film with an ice gradient and contamination, a bar across continuous film, lacey
film: random holes of many sizes, no lattice).

Truth per image: `targets`, the holes wholly on film whose centres lie at least EDGE_PX inside the image
(what find_holes with edge tolerance -10 should return); `ambiguous`, holes a finder may return or not
without being wrong (partly under a bar, torn film or contamination, or within 3 px of the edge band).
Seeds: 9_100_000 + 1000 * category index + i (another base: make_sample's seed0), disjoint from the training
and test streams of export.datasets (< 2**32 and >= 2**40 respectively are not used here either way:
nothing trains on this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CATEGORIES", "EDGE_PX", "Sample", "make_sample", "holes_set", "upsample"]

CATEGORIES = ("square", "skewed", "hexagonal", "whole_square", "single_hole", "no_lattice")
EDGE_PX = 10.0
SEED0 = 9_100_000


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with its truth: every hole centre (n, 2) xy near the image, each one's distance (px) to the
    nearest non-film area (bar, outside, tear; negative: its centre is in one; inf: none; -inf: touched by
    contamination, counted as ambiguous), the lattice spacing and hole radius in px (0 without a lattice),
    category, variant and seed. targets / ambiguous follow from these and the image's edge."""

    image: np.ndarray
    centres: np.ndarray
    clear: np.ndarray
    spacing_px: float
    radius_px: float
    category: str
    variant: str
    seed: int

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        if self.category == "single_hole":
            return _whole_holes(self.centres, self.radius_px, self.image.shape)
        return _split_truth(self.centres, self.clear, self.radius_px, self.image.shape)

    @property
    def targets(self) -> np.ndarray:
        """Holes a finder must return (n, 2) xy."""
        return self._split()[0]

    @property
    def ambiguous(self) -> np.ndarray:
        """Holes a finder may return or not (m, 2) xy."""
        return self._split()[1]


def _basis(rng: np.random.Generator, spacing: float, kind: str) -> np.ndarray:
    """Rows a, b of the lattice basis (px) for kind square, skewed or hexagonal at a random orientation."""
    t = rng.uniform(0, 2 * math.pi)
    a = spacing * np.array([math.cos(t), math.sin(t)])
    turn = math.radians(60.0 if kind == "hexagonal" else 90.0)
    b = spacing * np.array([math.cos(t + turn), math.sin(t + turn)])
    m = np.stack([a, b])
    if kind == "skewed":
        eps = rng.uniform(0.02, 0.03) * rng.choice([-1, 1])
        phi = rng.uniform(0, math.pi)
        r = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        stretch = r @ np.diag([1.0 + eps, 1.0]) @ r.T
        shear = np.array([[1.0, math.tan(math.radians(rng.uniform(-1, 1)))], [0.0, 1.0]])
        m = m @ (stretch @ shear).T
    return m


def _lattice_centres(shape: tuple[int, int], basis: np.ndarray, origin: np.ndarray, margin: float) -> np.ndarray:
    """All lattice points within `margin` px of the image."""
    rows, cols = shape
    corners = np.array([[-margin, -margin], [cols + margin, -margin], [-margin, rows + margin],
                        [cols + margin, rows + margin]])
    frac = (corners - origin) @ np.linalg.inv(basis)
    lo, hi = np.floor(frac.min(0)) - 1, np.ceil(frac.max(0)) + 1
    mm, nn = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    idx = np.stack([mm.ravel(), nn.ravel()], 1)
    pts = origin + idx @ basis
    keep = ((pts[:, 0] > -margin) & (pts[:, 0] < cols + margin) & (pts[:, 1] > -margin) & (pts[:, 1] < rows + margin))
    return pts[keep]


def _discs(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray, values: np.ndarray,
           ellipticity: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased discs (slightly elliptical): coverage map in [0, 1] and the value map (value per disc)."""
    rows, cols = shape
    cover = np.zeros(shape, np.float32)
    value = np.zeros(shape, np.float32)
    c, s = math.cos(angle), math.sin(angle)
    for (x, y), r, v in zip(centres, radii, values):
        r0, r1 = max(int(y - r - 2), 0), min(int(y + r + 3), rows)
        c0, c1 = max(int(x - r - 2), 0), min(int(x + r + 3), cols)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        dx, dy = xx - x, yy - y
        u, w = dx * c + dy * s, (-dx * s + dy * c) * (1.0 + ellipticity)
        d = np.sqrt(u * u + w * w) - r
        k = np.clip(0.5 - d, 0.0, 1.0)
        cover[r0:r1, c0:c1] = np.maximum(cover[r0:r1, c0:c1], k)
        value[r0:r1, c0:c1] = np.where(k > 0, v, value[r0:r1, c0:c1])
    return cover, value


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A smooth random field, zero mean, unit standard deviation, features ~scale px."""
    rows, cols = shape
    f = max(1.0, scale / 4.0)
    small = rng.normal(size=(max(2, int(rows / f) + 1), max(2, int(cols / f) + 1))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 2.0)
    big = cv2.resize(small, (cols, rows), interpolation=cv2.INTER_CUBIC)
    return (big - big.mean()) / (big.std() + 1e-6)


def _image_formation(rng: np.random.Generator, transmission: np.ndarray, fringe_px: float) -> np.ndarray:
    """Transmission -> defocus fringes -> vignetted illumination -> Poisson counts -> detector blur -> EPU-like
    8-bit display -> JPEG; returned as float32 (what a reader of the JPEG gets)."""
    rows, cols = transmission.shape
    t = transmission.astype(np.float32)
    if fringe_px > 0:
        k = rng.uniform(0.3, 0.9)
        t = t + k * (t - cv2.GaussianBlur(t, (0, 0), fringe_px)) - 0.3 * k * (
            cv2.GaussianBlur(t, (0, 0), fringe_px) - cv2.GaussianBlur(t, (0, 0), 2.5 * fringe_px))
        t = np.maximum(t, 0.0)
    cx, cy = cols * rng.uniform(0.35, 0.65), rows * rng.uniform(0.35, 0.65)
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (0.25 * (rows**2 + cols**2))
    illum = np.clip(1.0 - rng.uniform(0.1, 0.45) * r2, 0.2, 1.0)
    dose = rng.uniform(15, 150)
    counts = rng.poisson(np.maximum(t * illum * dose, 0)).astype(np.float32)
    counts = cv2.GaussianBlur(counts, (0, 0), rng.uniform(0.5, 1.1))
    lo, hi = np.percentile(counts, [rng.uniform(0.05, 1.0), rng.uniform(99.0, 99.95)])
    x = np.clip((counts - lo) / max(hi - lo, 1e-6), 0, 1) ** rng.uniform(0.8, 1.25)
    u8 = np.round(255 * x).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 93))])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32)


def _split_truth(centres: np.ndarray, clear_dist: np.ndarray, radius: float, shape: tuple[int, int]):
    """targets / ambiguous from each hole's distance to anything that is not film (clear_dist, px; +inf
    where none) and to the image edge."""
    rows, cols = shape
    edge = np.minimum(np.minimum(centres[:, 0], cols - 1 - centres[:, 0]),
                      np.minimum(centres[:, 1], rows - 1 - centres[:, 1]))
    on = clear_dist >= radius + 1.0
    partly = ((clear_dist >= 0) | np.isneginf(clear_dist)) & ~on
    inside = edge >= EDGE_PX + 3
    band = (edge >= EDGE_PX - 3) & ~inside
    targets = centres[on & inside]
    ambiguous = centres[(partly & (edge >= EDGE_PX - 3)) | (on & band)]
    return targets, ambiguous


def _medmag(rng: np.random.Generator, kind: str, seed: int, category: str) -> Sample:
    """Square, skewed or hexagonal med-mag view, 1024 x 1440 (a quarter at 512 x 720), spacing 40-160 px."""
    shape = (1024, 1440) if rng.random() < 0.75 else (512, 720)
    spacing = rng.uniform(40, 160) * shape[0] / 1024 if kind != "hexagonal" else rng.uniform(40, 120)
    spacing = max(spacing, 30.0)
    basis = _basis(rng, spacing, kind)
    origin = np.array([rng.uniform(0, shape[1]), rng.uniform(0, shape[0])])
    centres = _lattice_centres(shape, basis, origin, spacing)
    frac = rng.uniform(0.45, 0.65) if kind != "hexagonal" else rng.uniform(0.42, 0.55)
    radius = 0.5 * frac * spacing
    radii = radius * (1 + 0.03 * rng.standard_normal(len(centres)))
    rows, cols = shape
    wedge = _smooth_field(rng, shape, 0.7 * max(shape)) * 0.25 + np.linspace(-0.3, 0.3, cols)[None, :] * rng.uniform(
        -1, 1)
    ice = np.clip(0.9 + wedge, 0.2, 2.5).astype(np.float32)  # in mean free paths
    per_hole = np.clip(rng.normal(1.0, 0.12, len(centres)), 0.5, 1.6)
    cover, thick = _discs(shape, centres, radii, per_hole.astype(np.float32), rng.uniform(0, 0.05),
                          rng.uniform(0, math.pi))
    film_t = rng.uniform(0.9, 1.6) if kind != "hexagonal" else rng.uniform(3.0, 4.5)  # carbon vs gold foil
    t = np.where(cover > 0, thick * ice, 0.0)
    thickness = cover * t + (1 - cover) * (film_t + 0.6 * ice)
    clear = np.full(len(centres), np.inf)
    variant = kind
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    if rng.random() < 0.35:  # torn film: a vacuum patch over a few holes
        variant += "+torn"
        px, py = rng.uniform(0.2, 0.8) * cols, rng.uniform(0.2, 0.8) * rows
        pr = rng.uniform(1.5, 3.0) * spacing
        torn = (xx - px) ** 2 + ((yy - py) * 1.3) ** 2 < pr**2
        thickness = np.where(torn, 0.0, thickness)
        # a hole is off film where any of it lies in the tear (distance approximated on the ellipse's scale)
        d = np.hypot(centres[:, 0] - px, (centres[:, 1] - py) * 1.3) - pr
        clear = np.minimum(clear, np.where(d > 0, d / 1.3, -1.0))
    n_cont = int(rng.integers(0, 5))
    if n_cont:
        variant += f"+{n_cont}contam"
        cc = np.stack([rng.uniform(0, cols, n_cont), rng.uniform(0, rows, n_cont)], 1)
        cr = rng.uniform(0.15, 0.5, n_cont) * spacing
        ccov, _ = _discs(shape, cc, cr, np.ones(n_cont, np.float32), 0.3, 0.0)
        thickness = thickness + 3.0 * ccov
        d = np.min(np.hypot(*(centres[:, None, :] - cc[None, :, :]).transpose(2, 0, 1)) - cr[None, :], axis=1)
        # a hole touched by contamination may be returned or not
        clear = np.where(d < radius, -np.inf, clear)
    img = _image_formation(rng, np.exp(-thickness), rng.uniform(1.0, 3.5))
    return Sample(img, centres, clear, float(np.linalg.norm(basis, axis=1).min()), radius, category, variant, seed)


def _whole_square(rng: np.random.Generator, seed: int) -> Sample:
    """A grid-square view: rounded square(s) of holey film between opaque bars, spacing 10-20 px."""
    shape = (364, 512) if rng.random() < 0.6 else (1024, 1440)
    rows, cols = shape
    kind = "hexagonal" if rng.random() < 0.3 else "square"
    spacing = rng.uniform(10, 20)
    basis = _basis(rng, spacing, kind)
    origin = np.array([rng.uniform(0, cols), rng.uniform(0, rows)])
    centres = _lattice_centres(shape, basis, origin, spacing)
    radius = 0.5 * rng.uniform(0.45, 0.6) * spacing
    side = rng.uniform(0.75, 1.0) * rows if rows < 500 else rng.uniform(0.45, 0.8) * rows
    bar = rng.uniform(0.15, 0.4) * side
    pitch = side + bar
    theta = rng.uniform(0, math.pi / 2)
    cx, cy = cols / 2 + rng.uniform(-0.1, 0.1) * cols, rows / 2 + rng.uniform(-0.1, 0.1) * rows
    corner = rng.uniform(0.05, 0.15) * side

    def film_distance(x, y):
        """Signed distance (px) to the nearest bar edge: positive inside a square's rounded opening."""
        c, s = math.cos(theta), math.sin(theta)
        u = (x - cx) * c + (y - cy) * s
        v = -(x - cx) * s + (y - cy) * c
        u = np.abs((u + pitch / 2) % pitch - pitch / 2)
        v = np.abs((v + pitch / 2) % pitch - pitch / 2)
        h = side / 2 - corner
        qx, qy = u - h, v - h
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
        return corner - outside

    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    dist = film_distance(xx, yy)
    radii = radius * (1 + 0.04 * rng.standard_normal(len(centres)))
    per_hole = np.clip(rng.normal(1.0, 0.25, len(centres)), 0.3, 2.0).astype(np.float32)
    cover, thick = _discs(shape, centres, radii, per_hole, rng.uniform(0, 0.05), rng.uniform(0, math.pi))
    ice = np.clip(0.8 + 0.2 * _smooth_field(rng, shape, 0.5 * max(shape)), 0.2, 2.0)
    film_t = rng.uniform(1.0, 1.8) if kind == "square" else rng.uniform(2.5, 4.0)
    thickness = cover * thick * ice + (1 - cover) * (film_t + 0.5 * ice)
    opaque = np.clip(0.5 - dist, 0, 1)  # antialiased bar edge
    thickness = thickness * (1 - opaque) + 8.0 * opaque
    clear = film_distance(centres[:, 0], centres[:, 1])
    img = _image_formation(rng, np.exp(-thickness), rng.uniform(0.4, 1.2))
    return Sample(img, centres, clear, float(np.linalg.norm(basis, axis=1).min()), radius, "whole_square",
                  f"{kind} {cols}x{rows}", seed)


def _single_hole(rng: np.random.Generator, seed: int) -> Sample:
    """One hole 36-60 % of the shorter side across near the centre; neighbours at the period, cut by the edges."""
    shape = (1024, 1024) if rng.random() < 0.5 else (1024, 1440)
    rows, cols = shape
    # fewer than two periods fit in the shorter side: spacing >= 0.36 / 0.7 of it
    diameter = rng.uniform(0.36, 0.6) * rows
    spacing = diameter / rng.uniform(0.5, 0.7)
    basis = _basis(rng, spacing, "square" if rng.random() < 0.7 else "hexagonal")
    origin = np.array([cols / 2 + rng.uniform(-0.08, 0.08) * cols, rows / 2 + rng.uniform(-0.08, 0.08) * rows])
    centres = _lattice_centres(shape, basis, origin, spacing)
    radius = diameter / 2
    per_hole = np.clip(rng.normal(1.0, 0.15, len(centres)), 0.5, 1.6).astype(np.float32)
    cover, thick = _discs(shape, centres, np.full(len(centres), radius), per_hole, rng.uniform(0, 0.04), 0.0)
    ice = np.clip(0.8 + 0.15 * _smooth_field(rng, shape, 0.5 * rows), 0.2, 2.0)
    thickness = cover * thick * ice + (1 - cover) * rng.uniform(1.2, 2.0)
    img = _image_formation(rng, np.exp(-thickness), rng.uniform(3.0, 8.0))
    return Sample(img, centres, np.full(len(centres), np.inf), spacing, radius, "single_hole",
                  f"d={diameter:.0f}px {cols}x{rows}", seed)


def _whole_holes(centres: np.ndarray, radius: float, shape: tuple[int, int]):
    """Single-hole views: a hole is a target when wholly inside the image (EPU would centre on it); one the
    edge cuts a little is ambiguous."""
    rows, cols = shape
    edge = np.minimum(np.minimum(centres[:, 0], cols - 1 - centres[:, 0]),
                      np.minimum(centres[:, 1], rows - 1 - centres[:, 1]))
    return centres[edge >= radius + 2], centres[(edge < radius + 2) & (edge >= 0.9 * radius)]


def _no_lattice(rng: np.random.Generator, seed: int) -> Sample:
    """Continuous film (gradient, contamination), a bar across continuous film, or lacey film (random holes)."""
    shape = (1024, 1440)
    rows, cols = shape
    variant = ("continuous", "bar", "lacey")[int(rng.integers(0, 3))]
    thickness = 1.2 + 0.3 * _smooth_field(rng, shape, 600.0)
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    if variant == "bar":
        t = rng.uniform(0, math.pi)
        d = np.abs((xx - cols / 2) * math.cos(t) + (yy - rows / 2) * math.sin(t))
        thickness = np.where(d < rng.uniform(60, 250), 8.0, thickness)
    if variant == "lacey":
        n = int(rng.integers(20, 60))
        cc = np.stack([rng.uniform(0, cols, n), rng.uniform(0, rows, n)], 1)
        cr = np.exp(rng.uniform(math.log(8), math.log(90), n))
        cov, _ = _discs(shape, cc, cr, np.ones(n, np.float32), 0.4, rng.uniform(0, math.pi))
        thickness = thickness * (1 - cov) + 0.3 * cov
    n_cont = int(rng.integers(0, 6))
    if n_cont:
        cc = np.stack([rng.uniform(0, cols, n_cont), rng.uniform(0, rows, n_cont)], 1)
        cov, _ = _discs(shape, cc, rng.uniform(10, 60, n_cont), np.ones(n_cont, np.float32), 0.3, 0.0)
        thickness = thickness + 3.0 * cov
    img = _image_formation(rng, np.exp(-thickness), rng.uniform(1.0, 3.0))
    return Sample(img, np.zeros((0, 2)), np.zeros(0), 0.0, 0.0, "no_lattice", variant, seed)


def make_sample(category: str, i: int, seed0: int = SEED0) -> Sample:
    """Image i of a category (deterministic: its own seed, seed0 + 1000 * category index + i).

    Another seed0 (a multiple of 10_000 at least SEED0, e.g. 9_200_000) draws a fresh held-out set of the
    same categories, to check that a change tuned on the default set holds on images it never saw."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if not 0 <= i < 1000:
        raise ValueError(f"image index must be in 0-999, got {i}")
    seed = seed0 + 1000 * CATEGORIES.index(category) + i
    rng = np.random.default_rng(seed)
    if category in ("square", "skewed", "hexagonal"):
        return _medmag(rng, category, seed, category)
    if category == "whole_square":
        return _whole_square(rng, seed)
    if category == "single_hole":
        return _single_hole(rng, seed)
    return _no_lattice(rng, seed)


def holes_set(n_per_category: int, categories: tuple[str, ...] = CATEGORIES, seed0: int = SEED0) -> list[Sample]:
    """n images of each category (seed0: see make_sample)."""
    return [make_sample(c, i, seed0) for c in categories for i in range(n_per_category)]


def upsample(sample: Sample, factor: int) -> Sample:
    """The sample resampled by an integer factor (cv2 bicubic), its truth mapped with it."""
    if factor == 1:
        return sample
    img = cv2.resize(sample.image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)

    def f(p):
        return (p + 0.5) * factor - 0.5

    # distances scale; the edge band (EDGE_PX) does not: targets are re-derived at the new size
    return Sample(img, f(sample.centres), sample.clear * factor, sample.spacing_px * factor,
                  sample.radius_px * factor, sample.category, f"{sample.variant} @{factor}x", sample.seed)
