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

from ._shared import GENERATOR_VERSION, lattice_basis
from .atlas import MODERATE_BRIGHTNESS, SQUARE_KINDS, AtlasTruth, make_atlas
from .medmag import HOLE_DEFECTS, LATTICE_KINDS, VIEWS, MedmagTruth, make_medmag

__all__ = [
    "GENERATOR_VERSION",
    "AtlasTruth",
    "MedmagTruth",
    "make_atlas",
    "make_medmag",
    "lattice_basis",
    "SQUARE_KINDS",
    "HOLE_DEFECTS",
    "LATTICE_KINDS",
    "VIEWS",
    "MODERATE_BRIGHTNESS",
]
