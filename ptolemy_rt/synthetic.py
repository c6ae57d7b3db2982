"""Synthetic atlases and med-mag images with ground truth (numpy + cv2 only).

`ptolemy-rt demo` needs these at run time; `export/` trains the default model set on them and
`benchmarks/accuracy.py` measures on seeds that training never draws.

Both generators are physical in spirit: a transmission map (film, ice, holes, bars, defects) is blurred,
multiplied by the illumination (gain, vignetting) and a dose in counts per pixel, and sampled with Poisson shot
noise. Everything random comes from ``np.random.default_rng(seed)``, so one seed gives one image, bit for bit.

Coordinates follow the project: x = column, y = row, origin at the centre of the top-left pixel; an angle
is counter-clockwise on screen (y down), in [0, 90) for a square lattice. A lattice at angle θ with period s
has basis u = s (cos θ, -sin θ), v = s (sin θ, cos θ) in (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "AtlasTruth",
    "MedmagTruth",
    "make_atlas",
    "make_medmag",
    "lattice_basis",
    "SQUARE_KINDS",
    "HOLE_DEFECTS",
]

# Bump whenever a change alters the images a seed produces (model provenance records it).
GENERATOR_VERSION = "1"

SQUARE_KINDS = ("ok", "thick", "thin", "broken", "empty", "covered", "cracked", "contaminated")
_SQUARE_KIND_P = (0.55, 0.10, 0.08, 0.06, 0.04, 0.05, 0.05, 0.07)
# Relative ice brightness (square transmission / the grid's typical one) that operators call moderate.
MODERATE_BRIGHTNESS = (0.85, 1.18)
HOLE_DEFECTS = ("", "bar", "edge", "broken", "empty", "contaminated")


def lattice_basis(spacing_px: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Basis vectors (u, v) in (x, y) of a square lattice at `angle_deg` (counter-clockwise on screen)."""
    t = np.deg2rad(angle_deg)
    u = spacing_px * np.array([np.cos(t), -np.sin(t)])
    v = spacing_px * np.array([np.sin(t), np.cos(t)])
    return u, v


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class AtlasTruth:
    """What a synthetic atlas contains: one entry per grid square that reaches into the image.

    vertices: (n, 4, 2) corners (x, y) of each square's outline, corner rounding ignored, counter-clockwise
    on screen; may lie outside the image for cut squares. centers: (n, 2). kinds: one of SQUARE_KINDS.
    visible_fraction: share of the square's area inside the image and lit by the beam. brightness: mean
    noise-free counts over the square's visible pixels. collectable: what an operator would pick: a whole,
    lit square of moderate brightness that is not broken, empty, covered, cracked or contaminated.
    """

    vertices: np.ndarray
    centers: np.ndarray
    kinds: tuple[str, ...]
    visible_fraction: np.ndarray
    brightness: np.ndarray
    relative_ice: np.ndarray
    collectable: np.ndarray
    side_px: float
    pitch_px: float
    angle_deg: float
    seed: int
    shape: tuple[int, int]

    @property
    def n(self) -> int:
        """Number of squares."""
        return int(self.centers.shape[0])

    @property
    def detectable(self) -> np.ndarray:
        """Squares a segmenter should find: not covered (dark as a bar) and at least 30 % visible."""
        kinds = np.array(self.kinds)
        return (kinds != "covered") & (self.visible_fraction >= 0.3)


@dataclass(frozen=True, eq=False)
class MedmagTruth:
    """What a synthetic med-mag image contains: one entry per hole whose centre lies inside the image.

    centers: (n, 2) hole centres (x, y); radius_px: hole radius; good: (n,) bool, the hole CNN's label;
    defects: per hole "" (good) or the first reason it is bad, in HOLE_DEFECTS order ("bar": over 10 % under a
    grid bar, "edge": cut by the image edge, "broken", "empty": no ice, "contaminated": over 10 % of the hole
    under ice contamination); visible: less than half under a grid bar.
    spacing_px, angle_deg, origin, basis: the lattice (origin + i u + j v).
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

    @property
    def n(self) -> int:
        """Number of holes."""
        return int(self.centers.shape[0])


# ----------------------------------------------------------------------------------------------- helpers


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x (1, w) and y (h, 1) coordinates, to broadcast (no full-size arrays)."""
    h, w = shape
    return np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int, amplitude: float,
                  exp: bool = False) -> np.ndarray:
    """A smooth random field (random bumps on `cells` x `cells` plus a linear ramp) scaled to `amplitude`;
    exp(field) with `exp`. Built on a 64x64 grid and resized, so it costs one resize at full size."""
    h, w = shape
    coarse = cv2.resize(rng.standard_normal((cells + 1, cells + 1)).astype(np.float32), (64, 64),
                        interpolation=cv2.INTER_CUBIC)
    gx, gy = rng.standard_normal(2)
    ramp = np.linspace(-1, 1, 64, dtype=np.float32)
    field = np.float32(amplitude * 0.5) * (coarse + ramp[None, :] * np.float32(gx) + ramp[:, None] * np.float32(gy))
    if exp:
        field = np.exp(field)
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def _blob_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int = 9) -> np.ndarray:
    """An irregular star-shaped polygon around (cx, cy) as int32 points for cv2 (4 fractional bits)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.6, 1.15, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(pts * 16).astype(np.int32)


def _poisson(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Shot noise: exact Poisson draws where the mean is below 10 counts, the normal limit
    (mean + sqrt(mean) N(0, 1), rounded) above, where the two agree closely and the latter is ~10x faster."""
    lam = np.maximum(lam, 0).astype(np.float32)
    out = np.rint(lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32))
    low = lam < 10
    if low.any():
        out[low] = rng.poisson(lam[low].astype(np.float64))
    return np.maximum(out, 0, out=out)


def _cell_indices(x: np.ndarray, y: np.ndarray, origin: np.ndarray, u: np.ndarray, v: np.ndarray, shape):
    """Lattice cell (i, j) nearest each pixel, the pixel's offset from that cell's centre, and the cell ranges."""
    s2 = float(u @ u)
    rx = x - np.float32(origin[0])
    ry = y - np.float32(origin[1])
    a = (rx * np.float32(u[0]) + ry * np.float32(u[1])) / np.float32(s2)
    b = (rx * np.float32(v[0]) + ry * np.float32(v[1])) / np.float32(s2)
    i = np.rint(a)
    j = np.rint(b)
    spacing = np.float32(np.sqrt(s2))
    la = (a - i) * spacing  # offset along u, px
    lb = (b - j) * spacing  # offset along v, px
    h, w = shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64) - origin
    ca = corners @ u / s2
    cb = corners @ v / s2
    i0, i1 = int(np.floor(ca.min())) - 1, int(np.ceil(ca.max())) + 1
    j0, j1 = int(np.floor(cb.min())) - 1, int(np.ceil(cb.max())) + 1
    nj = j1 - j0 + 1
    k = ((i.astype(np.int32) - i0) * nj + (j.astype(np.int32) - j0)).astype(np.int32)
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    centres = origin + ii.reshape(-1, 1) * u + jj.reshape(-1, 1) * v
    return k, la, lb, centres


# ------------------------------------------------------------------------------------------------- atlas


def make_atlas(
    seed: int,
    shape: tuple[int, int] = (1024, 1024),
    *,
    pitch_px: float | None = None,
    angle_deg: float | None = None,
) -> tuple[np.ndarray, AtlasTruth]:
    """A synthetic low-mag atlas tile (int16, values like a real one: bars near 0, squares ~100-250 counts).

    A square grid of rounded squares at any angle, dark bars, squares of varying ice brightness; broken (very
    bright), empty, covered (dark), cracked, contaminated, thick/thin-ice and edge-cut squares; beam
    vignetting, holey-carbon texture, smooth ice gradients, blur and Poisson noise.
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    pitch = float(pitch_px) if pitch_px is not None else float(rng.uniform(110.0, 220.0))
    side = pitch * float(rng.uniform(0.5, 0.72))
    angle = float(angle_deg) % 90.0 if angle_deg is not None else float(rng.uniform(0.0, 90.0))
    half = side / 2
    corner_r = side * float(rng.uniform(0.05, 0.2))
    u, v = lattice_basis(pitch, angle)
    origin = np.array([w / 2, h / 2]) + rng.uniform(0, 1) * u + rng.uniform(0, 1) * v
    x, y = _grid((h, w))
    k, la, lb, centres = _cell_indices(x, y, origin, u, v, (h, w))
    n_cells = centres.shape[0]

    # Per-square properties.
    kinds = rng.choice(len(SQUARE_KINDS), size=n_cells, p=_SQUARE_KIND_P)
    t_grid = float(rng.uniform(0.45, 0.75))  # the grid's typical ice transmission
    rel = np.exp(rng.normal(0.0, 0.05, n_cells)).clip(0.88, 1.13)
    rel = np.where(kinds == 1, rng.uniform(0.55, 0.78, n_cells), rel)  # thick ice
    rel = np.where(kinds == 2, rng.uniform(1.25, 1.5, n_cells), rel)  # thin ice
    t_sq = np.minimum(t_grid * rel, 0.97)
    t_sq = np.where(kinds == 4, rng.uniform(0.9, 0.98, n_cells), t_sq)  # empty: film, no ice
    # Covered: dark all over, or (partly covered) normal ice under a dark straight-edged wedge.
    partial = (kinds == 5) & (rng.random(n_cells) < 0.4)
    t_sq = np.where((kinds == 5) & ~partial, rng.uniform(0.02, 0.12, n_cells), t_sq)
    rel = t_sq / t_grid
    t_bar = float(rng.uniform(0.02, 0.07))

    # Rounded-square coverage from the signed distance to each cell's square.
    hc = np.float32(half - corner_r)
    qa = np.abs(la) - hc
    qb = np.abs(lb) - hc
    outside = np.sqrt(np.maximum(qa, 0) ** 2 + np.maximum(qb, 0) ** 2)
    sdf = outside + np.minimum(np.maximum(qa, qb), 0) - np.float32(corner_r)
    cover = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)

    # Texture inside squares: the holey carbon seen at low mag, and the common darker ice spot near the centre.
    tex_period = float(rng.uniform(3.0, 7.0))
    tex_amp = float(rng.uniform(0.0, 0.06))
    texture = 1 + np.float32(tex_amp) * np.cos(np.float32(2 * np.pi / tex_period) * la) * np.cos(
        np.float32(2 * np.pi / tex_period) * lb
    )
    spot_depth = np.where(rng.random(n_cells) < 0.45, rng.uniform(0.05, 0.25, n_cells), 0.0).astype(np.float32)
    spot_r = (side * rng.uniform(0.08, 0.2, n_cells)).astype(np.float32)
    spot_x = (side * rng.uniform(-0.15, 0.15, n_cells)).astype(np.float32)
    spot_y = (side * rng.uniform(-0.15, 0.15, n_cells)).astype(np.float32)
    dx = la - spot_x[k]
    dy = lb - spot_y[k]
    spot = 1 - spot_depth[k] * np.exp(-(dx * dx + dy * dy) / (2 * spot_r[k] ** 2))

    ice_grad = _smooth_field(rng, (h, w), 3, float(rng.uniform(0.0, 0.08)), exp=True)

    # Defects drawn as masks: broken film, cracks, contamination, partial covering.
    canvas = np.zeros((h, w), np.uint8)
    broken = canvas.copy()
    cracks = canvas.copy()
    dirt = np.zeros((h, w), np.float32)
    shade = canvas.copy()
    in_view = ((centres[:, 0] > -pitch) & (centres[:, 0] < w + pitch)
               & (centres[:, 1] > -pitch) & (centres[:, 1] < h + pitch))
    for c in np.flatnonzero(in_view):
        cx, cy = centres[c]
        kind = SQUARE_KINDS[kinds[c]]
        if kind == "broken":
            off = rng.uniform(-0.25, 0.25, 2) * side
            poly = _blob_polygon(rng, cx + off[0], cy + off[1], side * rng.uniform(0.35, 0.75), 10)
            cv2.fillPoly(broken, [poly], 255, lineType=cv2.LINE_AA, shift=4)
        elif kind == "cracked":
            for _ in range(int(rng.integers(1, 4))):
                p0 = np.array([cx, cy]) + rng.uniform(-0.5, 0.5, 2) * side
                p1 = p0 + rng.normal(0, 1, 2) * side * 0.6
                cv2.line(cracks, tuple(np.round(p0 * 16).astype(int)), tuple(np.round(p1 * 16).astype(int)), 255,
                         thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA, shift=4)
        elif kind == "contaminated":
            for _ in range(int(rng.integers(1, 5))):
                p = np.array([cx, cy]) + rng.uniform(-0.4, 0.4, 2) * side
                r = side * rng.uniform(0.08, 0.22)
                cv2.fillPoly(dirt, [_blob_polygon(rng, p[0], p[1], r, 8)], float(rng.uniform(0.5, 0.9)),
                             lineType=cv2.LINE_AA, shift=4)
        elif kind == "covered" and partial[c]:
            normal = rng.normal(0, 1, 2)
            normal /= np.linalg.norm(normal)
            d = rng.uniform(-0.2, 0.3) * side
            tang = np.array([-normal[1], normal[0]])
            base = np.array([cx, cy]) + normal * d
            quad = [base + tang * side, base + tang * side + normal * side, base - tang * side + normal * side,
                    base - tang * side]
            cv2.fillPoly(shade, [np.round(np.array(quad) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
        elif kind in ("ok", "thick", "thin") and rng.random() < 0.3:
            # Harmless specks (a few px), as on most real atlases.
            for _ in range(int(rng.integers(1, 3))):
                p = np.array([cx, cy]) + rng.uniform(-0.45, 0.45, 2) * side
                cv2.circle(dirt, tuple(np.round(p * 16).astype(int)), int(16 * rng.uniform(1.0, 2.5)),
                           float(rng.uniform(0.4, 0.8)), -1, lineType=cv2.LINE_AA, shift=4)
    t_square = t_sq.astype(np.float32)[k] * texture * spot * ice_grad
    trans = t_bar + cover * (t_square - t_bar)
    if shade.any():
        s = shade.astype(np.float32) / 255
        trans = trans * (1 - s * cover) + s * cover * np.float32(rng.uniform(0.03, 0.1))
    if broken.any():
        b = broken.astype(np.float32) / 255 * cover
        trans = trans * (1 - b) + b * np.float32(1.0)
    if cracks.any():
        cmask = cracks.astype(np.float32) / 255 * cover
        trans = np.minimum(trans + cmask * np.float32(rng.uniform(0.25, 0.5)), 1.0)
    if dirt.any():
        trans = trans * (1 - dirt * cover)

    blur = float(rng.uniform(1.0, 3.5))
    trans = _blur(trans, blur)

    # Beam: a disc of illumination, sometimes with its edge inside the field of view.
    bc = np.array([w / 2, h / 2]) + rng.normal(0, 0.15, 2) * np.array([w, h])
    radius = float(rng.uniform(0.55, 1.0)) * np.hypot(w, h)
    soft = float(rng.uniform(10, 60))
    rr = np.sqrt((x - np.float32(bc[0])) ** 2 + (y - np.float32(bc[1])) ** 2)
    vignette = (0.5 - 0.5 * np.tanh((rr - np.float32(radius)) / np.float32(2 * soft))).astype(np.float32)
    vignette *= 1 - np.float32(rng.uniform(0.0, 0.2)) * (rr / np.float32(radius)) ** 2
    gain = 1 + _smooth_field(rng, (h, w), 2, float(rng.uniform(0.0, 0.05)))
    dose = float(np.exp(rng.uniform(np.log(150), np.log(2500))))
    clean = dose * trans * vignette * gain
    counts = _poisson(rng, clean)
    image = np.clip(counts, 0, 32767).astype(np.int16)

    # Truth per square.
    # Areas are counted on every second pixel of every second row (x4): 4x faster, error < 1 %.
    sub = (slice(0, None, 2), slice(0, None, 2))
    kf = k[sub].ravel()
    cov = cover[sub].ravel()
    vig = vignette[sub].ravel()
    area_full = (side * side - (4 - np.pi) * corner_r ** 2) / 4
    visible = np.bincount(kf, weights=cov * (vig > 0.5), minlength=n_cells) / area_full
    dim = np.bincount(kf, weights=cov * (vig < 0.8), minlength=n_cells) > 0.02 * area_full
    mass = np.bincount(kf, weights=cov, minlength=n_cells)
    bright = np.bincount(kf, weights=cov * clean[sub].ravel(), minlength=n_cells) / np.maximum(mass, 1e-9)
    dirt_area = np.bincount(kf, weights=(dirt[sub].ravel() > 0) * cov, minlength=n_cells)
    kind_names = [SQUARE_KINDS[i] for i in kinds]
    keep = visible > 0.0
    names = []
    for c in range(n_cells):
        name = kind_names[c]
        if name in ("ok", "thick", "thin") and dirt_area[c] > 0.03 * area_full:
            name = "contaminated"  # specks that grew too big count as contamination
        names.append(name)
    names_arr = np.array(names)
    moderate = (rel >= MODERATE_BRIGHTNESS[0]) & (rel <= MODERATE_BRIGHTNESS[1])
    collectable = (names_arr == "ok") & moderate & (visible >= 0.98) & ~dim
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * half
    # Corner (a, b) offsets along (u, v) -> image (x, y); u, v unit vectors.
    uu = u / pitch
    vv = v / pitch
    verts = centres[:, None, :] + corners[None, :, 0:1] * uu + corners[None, :, 1:2] * vv
    idx = np.flatnonzero(keep)
    truth = AtlasTruth(
        vertices=_frozen(verts[idx]),
        centers=_frozen(centres[idx]),
        kinds=tuple(names_arr[idx].tolist()),
        visible_fraction=_frozen(np.minimum(visible[idx], 1.0)),
        brightness=_frozen(bright[idx]),
        relative_ice=_frozen(rel[idx]),
        collectable=_frozen(collectable[idx]),
        side_px=float(side),
        pitch_px=pitch,
        angle_deg=angle,
        seed=int(seed),
        shape=(h, w),
    )
    return image, truth


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
) -> tuple[np.ndarray, MedmagTruth]:
    """A synthetic med-mag image of holey film (float32 counts) and its holes.

    A square lattice of round holes at any angle, spacing 40-400 px (or `spacing_px`), diameter 30-70 % of the
    spacing; carbon film (holes a little brighter or darker than the film, down to barely visible) or gold
    (strong contrast, either sign); an ice meniscus (darker rim) in ice-filled holes; Fresnel fringes at hole
    edges; smooth gain and ice gradients; ice
    contamination; broken and empty holes; grid bars; partial holes at the edges; blur; Poisson shot noise.
    `min_visibility` is the least contrast-to-noise ratio of one whole hole (the dose is raised to reach it).
    With `defects=False` the image has no bars, contamination, broken or empty holes.
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    spacing = float(spacing_px) if spacing_px is not None else float(np.exp(rng.uniform(np.log(40), np.log(400))))
    angle = float(angle_deg) % 90.0 if angle_deg is not None else float(rng.uniform(0.0, 90.0))
    dfrac = float(diameter_frac) if diameter_frac is not None else float(rng.uniform(0.3, 0.7))
    radius = 0.5 * dfrac * spacing
    film = film if film is not None else ("gold" if rng.random() < 0.35 else "carbon")
    u, v = lattice_basis(spacing, angle)
    origin = np.array([w / 2, h / 2]) + rng.uniform(0, 1) * u + rng.uniform(0, 1) * v
    x, y = _grid((h, w))
    k, la, lb, centres = _cell_indices(x, y, origin, u, v, (h, w))
    n_cells = centres.shape[0]
    dist = np.sqrt(la * la + lb * lb)
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
    dose = float(np.exp(rng.uniform(np.log(20), np.log(400))))
    # Raise the dose until one whole hole stands out of the noise by `min_visibility`.
    signal = abs(t_hole - t_film) / max(np.sqrt(max(t_film, t_hole)), 1e-6)
    needed = (min_visibility / max(signal * np.sqrt(np.pi * radius * radius), 1e-9)) ** 2
    dose = max(dose, float(needed))
    counts = _poisson(rng, dose * trans * gain)
    if rng.random() < 0.3:  # rendered or resampled images: correlated noise
        counts = _blur(counts, float(rng.uniform(0.5, 1.5)))

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
        else:
            reasons.append("")
    idx = np.flatnonzero(inside)
    reasons_sel = tuple(reasons[c] for c in idx)
    truth = MedmagTruth(
        centers=_frozen(centres[idx]),
        radius_px=float(radius),
        good=_frozen(np.array([r == "" for r in reasons_sel], dtype=bool)),
        defects=reasons_sel,
        visible=_frozen(under_bar[idx] < 0.5),
        spacing_px=spacing,
        angle_deg=angle,
        origin=(float(origin[0]), float(origin[1])),
        basis=((float(u[0]), float(u[1])), (float(v[0]), float(v[1]))),
        film=film,
        seed=int(seed),
        shape=(h, w),
    )
    return counts.astype(np.float32), truth
