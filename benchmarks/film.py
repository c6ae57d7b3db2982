"""Film mask (ptolemy_rt.film) timing on a 1024 x 1440 synthetic grid image, beside a plain Gaussian blur of
the same image as the baseline, and the real EPU grid-square view when it is present: its lattice (from a
plain bright-blob detector standing in for the U-Net) and holes on and off film at 1x, 2x and 4x.

    python -m benchmarks.film [--repeat N] [--overlay PATH]

Prints tables; asserts nothing. --overlay writes the real view at 2x with off-film areas tinted and lattice
points on film green, off film red (PNG).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import machine_line, print_markdown, print_table, time_it  # noqa: E402
from ptolemy_rt.film import film_mask, on_film  # noqa: E402
from ptolemy_rt.lattice import fit_lattice  # noqa: E402

REAL = REPO.parent / "shared" / "real-epu" / "smartem_gs8999138.jpg"


def synthetic(shape=(1024, 1440), spacing=60.0, seed=0) -> np.ndarray:
    """Bright holes on grey film, a dark bar band across and a dark border (see tests/test_film.py)."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    a = (xx * c + yy * s) / spacing
    b = (-xx * s + yy * c) / spacing
    hole = (a - np.round(a)) ** 2 + (b - np.round(b)) ** 2 < 0.3**2
    img = np.where(hole, 200.0, 100.0).astype(np.float32)
    img[np.abs((xx - cols / 2) * 0.8 - (yy - rows / 2) * 0.6) < 1.5 * spacing] = 3.0
    border = (xx < 0.1 * cols) | (xx > 0.9 * cols) | (yy < 0.1 * rows) | (yy > 0.9 * rows)
    img[border] = 3.0
    return rng.poisson(img).astype(np.float32)


def real_view(real: np.ndarray, overlay: Path | None) -> list[list[str]]:
    """Per scale: blobs, fitted lattice, lattice points inside the image and how many lie on film."""
    import time

    import cv2

    table = [["scale", "centroids", "kind", "a length px", "b length px", "angle a-b", "inliers", "points", "on film",
              "off film", "lattice ms", "film ms"]]
    for scale in (1, 2, 4):
        im = real if scale == 1 else cv2.resize(real, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        # holes: small bright blobs above the local background (a stand-in for the U-Net's map)
        blobs = (im - cv2.GaussianBlur(im, (0, 0), 6 * scale)) > 12
        _, _, stats, cents = cv2.connectedComponentsWithStats(blobs.astype(np.uint8), connectivity=8)
        cents = cents[1:][stats[1:, cv2.CC_STAT_AREA] >= 2 * scale * scale]
        fit_lattice(cents, blobs, model="general")  # warm (Numba cache)
        t = time.perf_counter()
        lat = fit_lattice(cents, blobs, model="general")
        t_lat = (time.perf_counter() - t) * 1000
        if lat is None:
            table.append([f"{scale}x", str(len(cents)), "none"] + [""] * 9)
            continue
        t = time.perf_counter()
        film = film_mask(im, lat.spacing_px)
        t_film = (time.perf_counter() - t) * 1000
        pts = lat.points(im.shape, -10.0 * scale / 4)
        on = on_film(pts, film, 0.3 * lat.spacing_px)
        table.append([f"{scale}x", str(len(cents)), lat.kind, f"{lat.spacing_a:.2f}", f"{lat.spacing_b:.2f}",
                      f"{lat.angle_ab_deg:.1f}", str(lat.n_inliers), str(len(pts)), str(int(on.sum())),
                      str(int((~on).sum())), f"{t_lat:.1f}", f"{t_film:.1f}"])
        if overlay is not None and scale == 2:
            rgb = cv2.cvtColor(np.clip(im, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            rgb[~film] = (0.6 * rgb[~film] + [0, 0, 100]).astype(np.uint8)
            for (x, y), o in zip(pts, on):
                cv2.circle(rgb, (round(x), round(y)), 3, (0, 200, 0) if o else (0, 0, 255), -1)
            cv2.imwrite(str(overlay), rgb)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--overlay", type=Path, default=None)
    args = parser.parse_args(argv)
    import cv2

    print(machine_line())
    img = synthetic()
    mask = film_mask(img, 60.0)
    pts = np.stack(np.meshgrid(np.arange(30, 1440, 60.0), np.arange(30, 1024, 60.0)), -1).reshape(-1, 2)
    rows = [
        time_it("gaussian blur sigma 8 (baseline)", lambda: cv2.GaussianBlur(img, (0, 0), 8.0), repeat=args.repeat),
        time_it("film_mask, spacing 60 px given", lambda: film_mask(img, 60.0), repeat=args.repeat),
        time_it("film_mask, spacing estimated", lambda: film_mask(img), repeat=args.repeat),
        time_it(f"on_film, {len(pts)} points", lambda: on_film(pts, mask, 18.0), repeat=args.repeat),
    ]
    extra = [("synthetic film share", f"{mask.mean():.3f}")]
    if REAL.exists():
        real = cv2.imread(str(REAL), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        rows.append(time_it(f"film_mask, real EPU view {real.shape[1]}x{real.shape[0]}, spacing 11 px",
                            lambda: film_mask(real, 11.0), repeat=args.repeat))
        real_mask = film_mask(real, 11.0)
        extra.append(("real view film share (spacing 11 px)", f"{real_mask.mean():.3f}"))
        extra.append(("real view film share (spacing estimated)", f"{film_mask(real).mean():.3f}"))
        real_table = real_view(real, args.overlay)
    print_table(rows, title="Film mask, 1024 x 1440 (warm)", baseline=rows[0].name, extra=extra)
    if REAL.exists():
        print(f"\n## Real EPU view {REAL.name}: lattice and holes on film (edge tolerance -2.5 px at 1x)\n")
        print_markdown(real_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
