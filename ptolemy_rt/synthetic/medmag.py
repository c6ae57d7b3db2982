"""Synthetic med-mag images of holey film with ground truth (see ptolemy_rt.synthetic)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._shared import _blob_polygon, _blur, _cell_indices, _frozen, _grid, _poisson, _smooth_field, lattice_basis

HOLE_DEFECTS = ("", "bar", "edge", "broken", "empty", "contaminated")


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
