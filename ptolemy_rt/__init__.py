"""ptolemy-rt: fast, dependable targeting for cryo-EM data collection (the Ptolemy method, on onnxruntime)."""

from __future__ import annotations

import importlib.util as _util

__version__ = "0.1.0"

if _util.find_spec("onnxruntime") is None:
    raise ImportError(
        "ptolemy-rt needs onnxruntime: pip install 'ptolemy-rt[cpu]' (CPU) or pip install 'ptolemy-rt[gpu]' (CUDA)"
    )

from .errors import (  # noqa: E402
    CorruptFileError,
    InputError,
    MissingFileError,
    ModelError,
    NonFiniteError,
    PtolemyError,
    ShapeError,
    TooSmallError,
    UnsupportedFormatError,
)
from .io import Image, read_image  # noqa: E402
from .models import ModelSet, ModelSpec, load_models  # noqa: E402
from .options import HoleOptions, SquareOptions  # noqa: E402

__all__ = [
    "__version__",
    "find_squares",
    "find_holes",
    "fit_lattice",
    "load_models",
    "read_image",
    "Image",
    "ModelSet",
    "ModelSpec",
    "HoleOptions",
    "SquareOptions",
    "PtolemyError",
    "InputError",
    "MissingFileError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "NonFiniteError",
    "ShapeError",
    "TooSmallError",
    "ModelError",
]


def __getattr__(name: str):
    # The pipelines pull in scipy, cv2 and numba: import them on first use, keeping `import ptolemy_rt` fast.
    if name == "find_squares":
        from .squares import find_squares

        return find_squares
    if name == "find_holes":
        from .holes import find_holes

        return find_holes
    if name == "fit_lattice":
        from .lattice import fit_lattice

        return fit_lattice
    raise AttributeError(f"module 'ptolemy_rt' has no attribute {name!r}")
