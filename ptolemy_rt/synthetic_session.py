"""A synthetic EPU-like session on disk: one atlas, grid-square folders with med-mag images and EPU .xml files.

    python -m ptolemy_rt.synthetic_session OUTDIR [--squares 20] [--per-square 2] [--seed 0]

Layout (as EPU writes it): `Atlas/Atlas_1.mrc` + `Atlas_1.xml`, and `Images-Disc1/GridSquare_<id>/
GridSquare_<date>_<time>.jpg` + `.xml` per med-mag image. Each .xml holds the stage position (metres) and the
pixel size of the camera readout, which is twice the JPEG's width, as when EPU saves a downscaled JPEG. The
grid-square images sit at the stage positions of whole, visible atlas squares, so the report can link them.
`truth.json` at the top records which atlas square each folder belongs to (EPU has no such file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .io import atomic_write
from .sessions import pixel_to_stage
from .synthetic import (  # the one import of the generator
    make_atlas,
    make_medmag,
)

__all__ = ["epu_xml", "make_epu_session"]

ATLAS_CENTRE_M = (1.0e-4, -2.0e-4)
MESH_PITCH_M = 83.3e-6  # a 300-mesh grid
HOLE_PERIOD_M = 3.0e-6  # R2/1 Quantifoil
READOUT_FACTOR = 2  # the camera readout is twice the JPEG's width


def epu_xml(stage_xy_m: tuple[float, float], pixel_size_m: float, readout: tuple[int, int]) -> str:
    """A minimal EPU MicroscopeImage .xml: stage position, readout pixel size and readout area."""
    return f"""<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects" \
xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
    <name>Synthetic</name>
    <microscopeData>
        <acquisition>
            <camera>
                <ReadoutArea xmlns:a="http://schemas.datacontract.org/2004/07/System.Drawing">
                    <a:height>{readout[0]}</a:height>
                    <a:width>{readout[1]}</a:width>
                    <a:x>0</a:x>
                    <a:y>0</a:y>
                </ReadoutArea>
            </camera>
        </acquisition>
        <stage>
            <Position>
                <X>{stage_xy_m[0]!r}</X>
                <Y>{stage_xy_m[1]!r}</Y>
            </Position>
        </stage>
    </microscopeData>
    <SpatialScale>
        <pixelSize>
            <x><numericValue>{pixel_size_m!r}</numericValue></x>
            <y><numericValue>{pixel_size_m!r}</numericValue></y>
        </pixelSize>
    </SpatialScale>
</MicroscopeImage>
"""


def _write_mrc(path: Path, data: np.ndarray, pixel_size_A: float) -> None:
    from .demo import write_mrc

    write_mrc(path, data, pixel_size_A)


def _jpeg(data: np.ndarray) -> bytes:
    import cv2

    lo, hi = np.percentile(data, [0.1, 99.9])
    scaled = np.clip((data - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", scaled, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("could not encode a JPEG")
    return buf.tobytes()


def make_epu_session(root: str | Path, n_squares: int = 20, per_square: int = 2, seed: int = 0,
                     medmag_shape: tuple[int, int] = (1024, 1440), atlas_shape: tuple[int, int] = (1024, 1024)
                     ) -> dict:
    """Write a synthetic EPU session under `root`; return what truth.json holds (squares and their images)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for attempt in range(50):
        atlas, truth = make_atlas(seed + 7919 * attempt, atlas_shape)
        whole = np.flatnonzero(truth.detectable & (truth.visible_fraction >= 0.999))
        if whole.size >= n_squares:
            break
    else:
        raise ValueError(f"no atlas among 50 seeds has {n_squares} whole squares; ask for fewer")
    chosen = np.sort(rng.choice(whole, size=n_squares, replace=False))
    atlas_px = MESH_PITCH_M / truth.pitch_px
    _write_mrc(root / "Atlas" / "Atlas_1.mrc", atlas, atlas_px * 1e10)
    atomic_write(root / "Atlas" / "Atlas_1.xml", epu_xml(ATLAS_CENTRE_M, atlas_px, atlas_shape))
    squares = []
    for n, index in enumerate(chosen):
        centre = tuple(float(c) for c in truth.centers[index])
        square_id = 1000000 + 37 * int(index)
        folder = root / "Images-Disc1" / f"GridSquare_{square_id}"
        images = []
        for j in range(per_square):
            image, med = make_medmag(seed * 100003 + n * per_square + j + 1, medmag_shape)
            pixel = HOLE_PERIOD_M / med.spacing_px
            # Two views of one square, a few micrometres apart.
            stage = pixel_to_stage(centre, ATLAS_CENTRE_M, atlas_px, atlas_shape)
            stage = (stage[0] + 4e-6 * j, stage[1] - 3e-6 * j)
            name = f"GridSquare_20260101_12{n % 60:02d}{j % 60:02d}"
            readout = (medmag_shape[0] * READOUT_FACTOR, medmag_shape[1] * READOUT_FACTOR)
            atomic_write(folder / f"{name}.jpg", _jpeg(image))
            atomic_write(folder / f"{name}.xml", epu_xml(stage, pixel / READOUT_FACTOR, readout))
            images.append({"image": f"Images-Disc1/GridSquare_{square_id}/{name}.jpg", "holes": med.n,
                           "spacing_px": med.spacing_px})
        squares.append({"folder": f"GridSquare_{square_id}", "atlas_index": int(index), "atlas_xy": list(centre),
                        "images": images})
    info = {"atlas": "Atlas/Atlas_1.mrc", "atlas_pixel_size_m": atlas_px, "squares": squares}
    atomic_write(root / "truth.json", json.dumps(info, indent=1, allow_nan=False) + "\n")
    return info


def main(argv=None) -> int:
    """Command line: write a synthetic EPU session."""
    p = argparse.ArgumentParser(prog="python -m ptolemy_rt.synthetic_session", description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--squares", type=int, default=20)
    p.add_argument("--per-square", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--medmag-shape", type=int, nargs=2, default=(1024, 1440), metavar=("ROWS", "COLS"))
    a = p.parse_args(argv)
    make_epu_session(a.outdir, a.squares, a.per_square, a.seed, tuple(a.medmag_shape))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
