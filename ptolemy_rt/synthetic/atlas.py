"""Synthetic low-mag atlases with ground truth (see ptolemy_rt.synthetic)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._shared import _blob_polygon, _blur, _cell_indices, _frozen, _grid, _poisson, _smooth_field, lattice_basis

SQUARE_KINDS = ("ok", "thick", "thin", "broken", "empty", "covered", "cracked", "contaminated")
_SQUARE_KIND_P = (0.55, 0.10, 0.08, 0.06, 0.04, 0.05, 0.05, 0.07)
# Relative ice brightness (square transmission / the grid's typical one) that operators call moderate.
MODERATE_BRIGHTNESS = (0.85, 1.18)


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
