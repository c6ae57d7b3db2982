"""Synthetic med-mag images of holey film with ground truth (see ptolemy_rt.synthetic)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._shared import (
    _blob_polygon,
    _blur,
    _cell_indices,
    _cell_indices_general,
    _frozen,
    _grid,
    _poisson,
    _smooth_field,
    lattice_basis,
    reduced_basis,
)

HOLE_DEFECTS = ("", "bar", "edge", "broken", "empty", "contaminated", "thick")
# Lattices make_medmag draws: square (the default), skewed (2-4 % anisotropy along a random direction and up to
# 1 degree of shear, as stage tilt or pixel aspect give), hexagonal (60 degrees, HexAuFoil-like), oblique
# (50-130 degrees between the basis vectors, length ratio 0.8-1.25).
LATTICE_KINDS = ("square", "skewed", "hexagonal", "oblique")
# "holes": a med-mag view of the holey film; "square": a whole grid square, its rounded opening between opaque
# grid bars (random angle and width) with a darker band of film along the bars, neighbouring squares beyond.
VIEWS = ("holes", "square")
# With `rim`, a hole whose ice transmits less than this fraction of the square's typical hole is "thick" (bad: the
# operators' rule is that thick ice is not collected).
RIM_THICK = 0.75


@dataclass(frozen=True, eq=False)
class MedmagTruth:
    """What a synthetic med-mag image contains: one entry per hole whose centre lies inside the image.

    centers: (n, 2) hole centres (x, y); radius_px: hole radius; good: (n,) bool, the hole CNN's label;
    defects: per hole "" (good) or the first reason it is bad, in HOLE_DEFECTS order ("bar": over 10 % under a
    grid bar, "edge": cut by the image edge, "broken", "empty": no ice, "contaminated": over 10 % of the hole
    under ice contamination, "thick": with `rim`, ice in the band along the bars so thick that the hole
    transmits under RIM_THICK of the square's typical hole); visible: less than half under a grid bar.
    spacing_px, angle_deg, origin, basis: the lattice (origin + i u + j v; for lattice kinds other than square a
    reduced basis: u a shortest vector, spacing_px its length and angle_deg its angle in [0, 180)).
    lattice, view: the kind of lattice (LATTICE_KINDS) and of view (VIEWS).
    """

    centers: np.ndarray
    radius_px: float
    good: np.ndarray
    defects: tuple[str, ...]
    visible: np.ndarray
    spacing_px: float
    angle_deg: float
    origin: tuple[float, float]
    basis: tuple[tuple[float, float], tuple[float, float]]
    film: str
    seed: int
    shape: tuple[int, int]
    lattice: str = "square"
    view: str = "holes"

    @property
    def n(self) -> int:
        """Number of holes."""
        return int(self.centers.shape[0])


# ------------------------------------------------------------------------------------------------ medmag


def make_medmag(
    seed: int,
    shape: tuple[int, int] = (1024, 1440),
    spacing_px: float | None = None,
    *,
    angle_deg: float | None = None,
    film: str | None = None,
    diameter_frac: float | None = None,
    defects: bool = True,
    min_visibility: float = 8.0,
    lattice: str = "square",
    view: str = "holes",
    vignetting: float = 0.0,
    epu_contrast: bool = False,
    jpeg_quality: int | None = None,
    rim: bool = False,
) -> tuple[np.ndarray, MedmagTruth]:
    """A synthetic med-mag image of holey film (float32 counts) and its holes.

    A square lattice of round holes at any angle, spacing 40-400 px (or `spacing_px`), diameter 30-70 % of the
    spacing; carbon film (holes a little brighter or darker than the film, down to barely visible) or gold
    (strong contrast, either sign); an ice meniscus (darker rim) in ice-filled holes; Fresnel fringes at hole
    edges; smooth gain and ice gradients; ice
    contamination; broken and empty holes; grid bars; partial holes at the edges; blur; Poisson shot noise.
    `min_visibility` is the least contrast-to-noise ratio of one whole hole (the dose is raised to reach it).
    With `defects=False` the image has no bars, contamination, broken or empty holes.

    Options beyond the defaults (each draws from its own random stream, so the default image of a seed is
    unchanged): `lattice` (LATTICE_KINDS; the hole diameter is then a fraction of the nearest-neighbour
    distance), `view="square"` (a whole grid square: rounded opening between grid bars, with the square's
    dark edge; combine with a short `spacing_px`, 8-30 px), `vignetting` (illumination falling by this fraction
    towards the corners around an off-centre point), `epu_contrast` (8-bit output as EPU saves it: a random
    black and white point, bars clipped to 0, a gamma), `jpeg_quality` (8-bit, then a JPEG round trip), `rim`
    (with `view="square"`: the bars' edge blurred over 0.15-0.6 of a period, as EPU's grid-square views show
    it, so the outer ring of holes lies half in the bar's shadow; and ice thickening towards the bars over 0.7-2.5
    periods, up to 0.2-1.2 optical density more at the bar, in ice-filled holes; "thick" marks the holes it
    darkens below RIM_THICK; its own random stream too).
    """
    if lattice not in LATTICE_KINDS:
        raise ValueError(f"lattice must be one of {LATTICE_KINDS}, got {lattice!r}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if rim and view != "square":
        raise ValueError("rim needs view='square' (it shapes the grid bars' edge)")
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([int(seed), 2])  # the options' own stream
    h, w = int(shape[0]), int(shape[1])
    spacing = float(spacing_px) if spacing_px is not None else float(np.exp(rng.uniform(np.log(40), np.log(400))))
    angle = float(angle_deg) % 90.0 if angle_deg is not None else float(rng.uniform(0.0, 90.0))
    dfrac = float(diameter_frac) if diameter_frac is not None else float(rng.uniform(0.3, 0.7))
    radius = 0.5 * dfrac * spacing
    u, v = lattice_basis(spacing, angle)
    if lattice != "square":
        u, v = reduced_basis(*_other_lattice(extra, u, v, lattice))
        radius = 0.5 * dfrac * float(np.hypot(*u))
    film = film if film is not None else ("gold" if rng.random() < 0.35 else "carbon")
    origin = np.array([w / 2, h / 2]) + rng.uniform(0, 1) * u + rng.uniform(0, 1) * v
    x, y = _grid((h, w))
    if lattice == "square":
        k, la, lb, centres = _cell_indices(x, y, origin, u, v, (h, w))
        dist = np.sqrt(la * la + lb * lb)
    else:
        k, dist, centres = _cell_indices_general(x, y, origin, u, v, (h, w))
    n_cells = centres.shape[0]
    hole = np.clip(np.float32(radius) + 0.5 - dist, 0.0, 1.0).astype(np.float32)

    # Film and hole transmission.
    if film == "carbon":
        t_film = float(rng.uniform(0.55, 0.9))
        contrast = float(np.exp(rng.uniform(np.log(0.02), np.log(0.3))))
        sign = 1.0 if rng.random() < 0.7 else -1.0
        t_hole = min(t_film * (1 + sign * contrast), 0.97)
    else:
        t_film = float(rng.uniform(0.02, 0.2))
        t_hole = float(rng.uniform(0.45, 0.9))
        if rng.random() < 0.25:  # inverted contrast: dark holes in a bright foil
            t_film, t_hole = t_hole, t_film
    kind = np.zeros(n_cells, np.int8)  # 0 normal, 1 empty, 2 broken
    if defects:
        draw = rng.random(n_cells)
        kind[draw < 0.05] = 1
        kind[(draw >= 0.05) & (draw < 0.09)] = 2
    per_hole = t_hole * np.exp(rng.normal(0, 0.02, n_cells))
    per_hole = np.where(kind == 1, rng.uniform(0.97, 1.0, n_cells), per_hole).astype(np.float32)
    # Ice meniscus: ice thickens towards the hole's rim, darkening it; empty holes (no ice) are flat.
    meniscus = np.where(kind == 1, 0.0, rng.uniform(0.05, 0.3, n_cells)).astype(np.float32)
    rho = np.minimum(dist / np.float32(radius), 1.0)
    rho2 = rho * rho
    hole_t = per_hole[k] * np.exp(-meniscus[k] * rho2 * rho2)
    grad = _smooth_field(rng, (h, w), 3, float(rng.uniform(0.0, 0.12)), exp=True)
    trans = (t_film + hole * (hole_t - t_film)) * grad

    # Fresnel fringe at the hole edge (the real example has a dark rim).
    ring_amp = float(rng.uniform(-0.2, 0.1))
    ring_w = float(rng.uniform(1.0, 4.0)) * min(1.0, spacing / 100)
    if abs(ring_amp) > 1e-3:
        e = (dist - np.float32(radius)) / np.float32(max(ring_w, 0.5))
        trans = trans * (1 + np.float32(ring_amp) * np.exp(-e * e))

    canvas = np.zeros((h, w), np.uint8)
    torn = canvas.copy()
    dirt = np.zeros((h, w), np.float32)
    bar = np.zeros((h, w), np.float32)
    in_view = (centres[:, 0] > -spacing) & (centres[:, 0] < w + spacing) & (centres[:, 1] > -spacing) & (
        centres[:, 1] < h + spacing)
    if defects:
        for c in np.flatnonzero(in_view & (kind == 2)):
            cx, cy = centres[c]
            off = rng.uniform(-0.2, 0.2, 2) * radius
            cv2.fillPoly(torn, [_blob_polygon(rng, cx + off[0], cy + off[1], radius * rng.uniform(1.15, 1.6), 11)], 255,
                         lineType=cv2.LINE_AA, shift=4)
        n_blobs = int(rng.poisson(rng.uniform(0.0, 1.5) * h * w / max(spacing, 60) ** 2 / 12))
        candidates = np.flatnonzero(in_view)
        for _ in range(n_blobs):
            if rng.random() < 0.6 and candidates.size:
                c = centres[rng.choice(candidates)] + rng.normal(0, 0.35, 2) * radius
            else:
                c = rng.uniform(0, 1, 2) * np.array([w, h])
            r = spacing * float(np.exp(rng.uniform(np.log(0.04), np.log(0.35))))
            cv2.fillPoly(dirt, [_blob_polygon(rng, c[0], c[1], r, 9)], float(rng.uniform(0.4, 0.95)),
                         lineType=cv2.LINE_AA, shift=4)
        if rng.random() < 0.3:
            # A grid bar: an opaque band with soft edges crossing part of the image.
            normal = rng.normal(0, 1, 2)
            normal /= np.linalg.norm(normal)
            p0 = rng.uniform(0, 1, 2) * np.array([w, h])
            half_w = float(rng.uniform(0.05, 0.4)) * min(h, w)
            d = np.abs((x - np.float32(p0[0])) * np.float32(normal[0])
                       + (y - np.float32(p0[1])) * np.float32(normal[1]))
            edge = float(rng.uniform(2.0, 12.0))
            bar = (0.5 - 0.5 * np.tanh((d - np.float32(half_w)) / np.float32(2 * edge))).astype(np.float32)
    thick = np.zeros(n_cells, bool)
    if view == "square":
        rim_rng = np.random.default_rng([int(seed), 3]) if rim else None  # the rim's own stream
        soft = spacing * float(rim_rng.uniform(0.15, 0.6)) if rim_rng is not None else None
        grid_bar, dark_edge, bar_distance = _grid_bars(extra, (h, w), spacing, x, y, soft)
        trans = trans * (1 - dark_edge)
        bar = np.maximum(bar, grid_bar)
        if rim_rng is not None:
            # Ice thickens towards the bars (blotting leaves more there): extra optical density in ice-filled holes.
            depth = float(rim_rng.uniform(0.2, 1.2))
            reach = spacing * float(rim_rng.uniform(0.7, 2.5))
            d_c = bar_distance(centres[:, 0], centres[:, 1])
            density = np.where(kind == 1, 0.0, depth * np.exp(np.minimum(d_c, 0.0) / reach))
            thick = np.exp(-density) < RIM_THICK
            trans = trans * (1 - hole * (1 - np.exp(-density[k]).astype(np.float32)))
    if torn.any():
        tmask = torn.astype(np.float32) / 255
        trans = trans * (1 - tmask) + tmask * np.float32(1.0) * grad
    if dirt.any():
        dirt = _blur(dirt, max(0.7, spacing / 150))
        trans = trans * (1 - dirt)
    if bar.any():
        trans = trans * (1 - bar) + bar * np.float32(rng.uniform(0.0, 0.03))

    blur = float(rng.uniform(0.3, 2.5))
    trans = _blur(trans.astype(np.float32), blur)
    gain = 1 + _smooth_field(rng, (h, w), 2, float(rng.uniform(0.0, 0.08)))
    if vignetting > 0:
        centre = np.array([w, h]) * extra.uniform(0.3, 0.7, 2)
        r2 = (x - np.float32(centre[0])) ** 2 + (y - np.float32(centre[1])) ** 2
        gain = gain * (1 - np.float32(vignetting) * r2 / np.float32(0.25 * (h * h + w * w)))
    dose = float(np.exp(rng.uniform(np.log(20), np.log(400))))
    # Raise the dose until one whole hole stands out of the noise by `min_visibility`.
    signal = abs(t_hole - t_film) / max(np.sqrt(max(t_film, t_hole)), 1e-6)
    needed = (min_visibility / max(signal * np.sqrt(np.pi * radius * radius), 1e-9)) ** 2
    dose = max(dose, float(needed))
    counts = _poisson(rng, dose * trans * gain)
    if rng.random() < 0.3:  # rendered or resampled images: correlated noise
        counts = _blur(counts, float(rng.uniform(0.5, 1.5)))
    if epu_contrast or jpeg_quality is not None:
        counts = _epu_8bit(extra, counts)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", counts.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        counts = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32)

    # Truth: holes whose centre lies inside the image.
    inside = (centres[:, 0] >= -0.5) & (centres[:, 0] <= w - 0.5) & (centres[:, 1] >= -0.5) & (centres[:, 1] <= h - 0.5)
    # Areas on every second pixel of every second row (x4), as in make_atlas.
    sub = (slice(0, None, 2), slice(0, None, 2))
    kf = k[sub].ravel()
    disc = hole[sub].ravel()
    area = np.maximum(np.bincount(kf, weights=disc, minlength=n_cells), 1e-9)
    under_bar = np.zeros(n_cells)
    if bar.any():
        under_bar = np.bincount(kf, weights=disc * bar[sub].ravel(), minlength=n_cells) / area
    dirty = np.zeros(n_cells)
    if dirt.any():
        dirty = np.bincount(kf, weights=disc * (dirt[sub].ravel() > 0.1), minlength=n_cells) / area
    cut = (centres[:, 0] - radius < -0.5) | (centres[:, 0] + radius > w - 0.5) | (centres[:, 1] - radius < -0.5) | (
        centres[:, 1] + radius > h - 0.5)
    reasons = []
    for c in range(n_cells):
        if under_bar[c] > 0.1:
            reasons.append("bar")
        elif cut[c]:
            reasons.append("edge")
        elif kind[c] == 2:
            reasons.append("broken")
        elif kind[c] == 1:
            reasons.append("empty")
        elif dirty[c] > 0.1:
            reasons.append("contaminated")
        elif thick[c]:
            reasons.append("thick")
        else:
            reasons.append("")
    idx = np.flatnonzero(inside)
    if lattice != "square" and not 0.0 <= np.degrees(np.arctan2(-u[1], u[0])) < 180.0:
        u = -u  # the reported shortest vector points into [0, 180) degrees (same lattice, same image)
    reasons_sel = tuple(reasons[c] for c in idx)
    truth = MedmagTruth(
        centers=_frozen(centres[idx]),
        radius_px=float(radius),
        good=_frozen(np.array([r == "" for r in reasons_sel], dtype=bool)),
        defects=reasons_sel,
        visible=_frozen(under_bar[idx] < 0.5),
        spacing_px=spacing if lattice == "square" else float(np.hypot(*u)),
        angle_deg=angle if lattice == "square" else float(np.degrees(np.arctan2(-u[1], u[0]))),
        origin=(float(origin[0]), float(origin[1])),
        basis=((float(u[0]), float(u[1])), (float(v[0]), float(v[1]))),
        film=film,
        seed=int(seed),
        shape=(h, w),
        lattice=lattice,
        view=view,
    )
    return counts.astype(np.float32), truth


def _other_lattice(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The basis of a skewed, hexagonal or oblique lattice made from the square one (u, v) (see LATTICE_KINDS)."""
    if kind == "hexagonal":
        return u, 0.5 * u + 0.5 * np.sqrt(3.0) * v
    if kind == "oblique":
        phi = np.deg2rad(rng.uniform(50.0, 130.0))
        return u, float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))) * (np.cos(phi) * u + np.sin(phi) * v)
    # skewed: v turned by up to 1 degree, then stretched 2-4 % (either sign) along a random direction
    shear = np.deg2rad(rng.uniform(-1.0, 1.0))
    v = np.cos(shear) * v - np.sin(shear) * u
    t = rng.uniform(0.0, np.pi)
    d = np.array([np.cos(t), np.sin(t)])
    stretch = np.eye(2) + rng.choice([-1.0, 1.0]) * rng.uniform(0.02, 0.04) * np.outer(d, d)
    return stretch @ u, stretch @ v


def _grid_bars(rng: np.random.Generator, shape: tuple[int, int], spacing: float, x: np.ndarray,
               y: np.ndarray, soft: float | None = None):
    """Grid bars around a whole grid square (opaque fraction per pixel), the square's dark edge (fraction
    of transmission lost in the film along the bars) and the signed distance to the bars' edge as a function of
    points (x, y) (> 0 on the bars). `soft`: the edge's width in px (default: drawn, 0.7-3 px; the draws
    from `rng` are the same either way)."""
    h, w = shape
    theta = np.deg2rad(rng.uniform(0.0, 90.0))
    side = spacing * float(np.exp(rng.uniform(np.log(20.0), np.log(50.0))))
    pitch = side * (1.0 + float(rng.uniform(0.12, 0.5)))
    corner = side * float(rng.uniform(0.03, 0.2))
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.3, 0.3, 2) * np.array([w, h])

    def distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance (px) to the rounded opening's edge: > 0 on the bars, < 0 inside."""
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        dx, dy = np.float32(x) - np.float32(centre[0]), np.float32(y) - np.float32(centre[1])
        px, py = dx * c + dy * s, dy * c - dx * s
        qx = np.abs(px - np.float32(pitch) * np.rint(px / np.float32(pitch)))
        qy = np.abs(py - np.float32(pitch) * np.rint(py / np.float32(pitch)))
        half = np.float32(side / 2 - corner)
        ax, ay = qx - half, qy - half
        return np.hypot(np.maximum(ax, 0), np.maximum(ay, 0)) + np.minimum(np.maximum(ax, ay), 0) - np.float32(corner)

    d = distance(x, y)
    edge = float(rng.uniform(0.7, 3.0))
    opaque = (0.5 + 0.5 * np.tanh(d / np.float32(edge if soft is None else soft))).astype(np.float32)
    depth = float(rng.uniform(0.05, 0.5))
    width = spacing * float(rng.uniform(0.5, 4.0))
    dark = (np.float32(depth) * np.exp(np.minimum(d, 0) / np.float32(width)) * (1 - opaque)).astype(np.float32)
    return opaque, dark, distance


def _epu_8bit(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Counts as EPU saves a JPEG's pixels: a black point near the darkest pixels (bars clip to 0), a white point
    near the brightest, a gamma, rounded to 0-255 (float32)."""
    sample = counts[::4, ::4]
    lo = float(np.percentile(sample, rng.uniform(0.0, 3.0)))
    hi = float(np.percentile(sample, rng.uniform(99.0, 100.0))) * float(rng.uniform(1.0, 1.1))
    gamma = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    scaled = np.clip((counts - np.float32(lo)) / np.float32(max(hi - lo, 1e-6)), 0.0, 1.0) ** np.float32(gamma)
    return np.rint(np.float32(255.0) * scaled).astype(np.float32)
