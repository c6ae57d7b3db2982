"""Shared pieces of the synthetic generators: the lattice basis, smooth fields, blur, blobs, Poisson noise."""

from __future__ import annotations

import cv2
import numpy as np

# Bump whenever a change alters the images a seed produces or adds options (model provenance records it).
# 2: make_medmag's lattice kinds, whole grid-square views, vignetting, EPU 8-bit contrast, JPEG (the default
# images of every seed are unchanged). 3: make_medmag's `rim` for grid-square views (soft bar edges, thick rim ice,
# defect "thick"; every image made without it is unchanged).
GENERATOR_VERSION = "3"


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


def reduced_basis(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2-D lattice basis: |u| <= |v| and |u.v| <= |u|^2 / 2 (same lattice)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    if u @ u > v @ v:
        u, v = v, u
    while True:
        m = round(float(u @ v) / float(u @ u))
        v = v - m * u
        if v @ v >= u @ u:
            return u, v
        u, v = v, u


def _cell_indices_general(x: np.ndarray, y: np.ndarray, origin: np.ndarray, u: np.ndarray, v: np.ndarray, shape):
    """Nearest lattice point of any 2-D lattice (reduced basis u, v) to each pixel: cell index, distance to it
    (px) and the cells' centres (the 3 x 3 neighbours of the rounded oblique coordinates hold the nearest)."""
    h, w = shape
    inv = np.linalg.inv(np.stack([u, v], axis=1))
    rx = x - np.float32(origin[0])
    ry = y - np.float32(origin[1])
    a0 = np.rint(rx * np.float32(inv[0, 0]) + ry * np.float32(inv[0, 1]))
    b0 = np.rint(rx * np.float32(inv[1, 0]) + ry * np.float32(inv[1, 1]))
    best = np.full((h, w), np.inf, np.float32)
    bi = np.zeros((h, w), np.float32)
    bj = np.zeros((h, w), np.float32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i = a0 + np.float32(di)
            j = b0 + np.float32(dj)
            dx = rx - i * np.float32(u[0]) - j * np.float32(v[0])
            dy = ry - i * np.float32(u[1]) - j * np.float32(v[1])
            d2 = dx * dx + dy * dy
            better = d2 < best
            best = np.where(better, d2, best)
            bi = np.where(better, i, bi)
            bj = np.where(better, j, bj)
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64) - origin
    ab = corners @ inv.T
    i0, i1 = int(np.floor(ab[:, 0].min())) - 2, int(np.ceil(ab[:, 0].max())) + 2
    j0, j1 = int(np.floor(ab[:, 1].min())) - 2, int(np.ceil(ab[:, 1].max())) + 2
    nj = j1 - j0 + 1
    k = ((bi.astype(np.int32) - i0) * nj + (bj.astype(np.int32) - j0)).astype(np.int32)
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    centres = origin + ii.reshape(-1, 1) * u + jj.reshape(-1, 1) * v
    return k, np.sqrt(best), centres
