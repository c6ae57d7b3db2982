"""Pipeline options as values: what find_squares and find_holes may be asked to do differently, checked once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["HoleOptions", "SquareOptions", "SCORES", "CROP_MODES", "PADDINGS", "LATTICE_MODELS", "PTOLEMY_COMPAT",
           "COMPAT_WINDOW", "COMPAT_MIN_AREA", "MAX_THREADS", "max_threads", "check_flag", "check_range", "check_real"]

# The most inference threads a model set takes (onnxruntime starts every thread it is given: 100,000 took 16 GB).
MAX_THREADS = 256


def max_threads() -> int:
    """The most inference threads the command line accepts: four per CPU, at most MAX_THREADS."""
    import os

    return max(1, min(MAX_THREADS, 4 * (os.cpu_count() or 1)))


# The ranges the command line takes (cli.py): the API refuses what the command line refuses, before any work.
WINDOW_RANGE = (1, 1024)
MIN_AREA_MAX = 1e12
EDGE_TOLERANCE_RANGE = (-1e6, 1000.0)
K_RANGE = (1, 100)


def _shown(value: Any) -> str:
    """repr(value), short: an error message stays one short line (a 5,000-digit int's repr even raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def check_flag(owner: str, name: str, value: Any) -> None:
    """TypeError naming the field unless `value` is a bool (a string such as "no" would be true)."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}.{name} must be True or False, got {_shown(value)}")


def check_real(owner: str, name: str, value: Any, *, integer: bool = False) -> float:
    """`value` as a finite float (a whole number when `integer`): TypeError for a str, bool or other non-number,
    ValueError for NaN, infinity or a fraction. The error names the field."""
    import math
    import numbers

    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}.{name} must be a {'whole ' if integer else ''}number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{name} is far out of range, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {_shown(value)}")
    if integer and not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {_shown(value)}")
    return number


def check_range(owner: str, name: str, value: Any, lo: float, hi: float, unit: str = "", *, integer: bool = False,
                open_ends: bool = False) -> float:
    """check_real, and a ValueError naming the field and its range unless lo <= value <= hi (open: lo < value < hi)."""
    number = check_real(owner, name, value, integer=integer)
    inside = lo < number < hi if open_ends else lo <= number <= hi
    if not inside:
        lo_text, hi_text = (f"{int(lo)}", f"{int(hi)}") if integer else (f"{lo:g}", f"{hi:g}")
        ends = f"({lo_text}, {hi_text})" if open_ends else f"[{lo_text}, {hi_text}]"
        raise ValueError(f"{name} must be in {ends}{unit}, got {_shown(value)}")
    return number


SCORES = ("unet", "cnn")
CROP_MODES = ("centred", "ptolemy")
PADDINGS = ("minimal", "ptolemy")
LATTICE_MODELS = ("general", "square")


@dataclass(frozen=True)
class HoleOptions:
    """How find_holes works (defaults: ours; HoleOptions.ptolemy(): the original medmag_cli.py's behaviour).

    threshold: U-Net probability threshold (None: the model's manifest). edge_tolerance: how far (px) outside
    the image a lattice point may lie (-10: at least 10 px inside). refine: least-squares lattice refinement.
    score: "unet" (mean U-Net probability over the crop, in [0, 1], the same at any
    magnification) or "cnn" (hole CNN); None: the model set's choice. k: neighbours per centroid in the
    lattice search. crop_mode / unet_padding: "ptolemy" reproduces the original's crop windows and U-Net
    padding. cnn: False skips the hole CNN (scores["cnn"] = None). lattice_model: "general" (any two basis
    vectors: square, skewed, hexagonal arrays) or "square" (the original's). keep_off_film: keep lattice
    points off the holey film (over grid bars, outside the square, on broken film; each hole says on_film).
    """

    threshold: float | None = None
    edge_tolerance: float = -10.0
    refine: bool = True
    score: str | None = None
    k: int = 6
    crop_mode: str = "centred"
    unet_padding: str = "minimal"
    cnn: bool = True
    lattice_model: str = "general"
    keep_off_film: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_range("HoleOptions", "threshold", self.threshold, 0.0, 1.0, open_ends=True)
        check_range("HoleOptions", "edge_tolerance", self.edge_tolerance, *EDGE_TOLERANCE_RANGE, " px")
        object.__setattr__(self, "k", int(check_range("HoleOptions", "k", self.k, *K_RANGE, integer=True)))
        for name in ("refine", "cnn", "keep_off_film"):
            check_flag("HoleOptions", name, getattr(self, name))
        if self.score is not None and self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.unet_padding not in PADDINGS:
            raise ValueError(f"unet_padding must be one of {PADDINGS}, got {self.unet_padding!r}")
        if self.lattice_model not in LATTICE_MODELS:
            raise ValueError(f"lattice_model must be one of {LATTICE_MODELS}, got {self.lattice_model!r}")
        if self.score == "cnn" and not self.cnn:
            raise ValueError("score='cnn' needs cnn=True")

    @classmethod
    def ptolemy(cls, **changes: Any) -> HoleOptions:
        """The original medmag_cli.py: its 5 nearest neighbours, square lattice, no refinement, its crop windows
        and U-Net padding, scores from the hole CNN, every lattice point kept (no film filter); `changes`
        override single fields, e.g. edge_tolerance."""
        return cls(**{**PTOLEMY_COMPAT, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return asdict(self)


# What HoleOptions.ptolemy() changes (kept as a dict for callers that spread it into find_holes).
PTOLEMY_COMPAT: dict[str, Any] = {
    "k": 5,
    "refine": False,
    "crop_mode": "ptolemy",
    "unet_padding": "ptolemy",
    "score": "cnn",
    "lattice_model": "square",
    "keep_off_film": True,
}


@dataclass(frozen=True)
class SquareOptions:
    """How find_squares works (defaults: ours; SquareOptions.ptolemy(): the original lowmag_cli.py's behaviour).

    window: pixels within this window join one square; min_area: smallest hull area (px²) kept. None (the
    default): set from the measured grid mesh (mesh.Mesh.grouping_window / min_square_area); an explicit value
    wins over the mesh's, while the rest of the mesh-driven pipeline (disc, lattice) still runs. In compat
    mode None means the original's 6 px and 100 px². batch_size: most crops per square-CNN batch.
    compat: the original pipeline exactly (no mesh, disc, lattice, seams or classes). seams: remove thin
    straight montage seams (montage.remove_seams) before the mixture model when any are detected.
    lattice: fit the lattice of square centres (row/col, off-lattice squares dropped, missed lattice points
    added as found_by "lattice")."""

    window: int | None = None
    min_area: float | None = None
    batch_size: int = 256
    compat: bool = False
    seams: bool = True
    lattice: bool = True

    def __post_init__(self) -> None:
        if self.window is not None:  # whole numbers are kept as int (6.0 or numpy's int64 slice and print as 6)
            window = check_range("SquareOptions", "window", self.window, *WINDOW_RANGE, " px", integer=True)
            object.__setattr__(self, "window", int(window))
        if self.min_area is not None:
            check_range("SquareOptions", "min_area", self.min_area, 0.0, MIN_AREA_MAX, " px²")
        if check_real("SquareOptions", "batch_size", self.batch_size, integer=True) < 1:
            raise ValueError(f"batch_size must be at least 1, got {_shown(self.batch_size)}")
        object.__setattr__(self, "batch_size", int(self.batch_size))
        for name in ("compat", "seams", "lattice"):
            check_flag("SquareOptions", name, getattr(self, name))

    @classmethod
    def ptolemy(cls, **changes: Any) -> SquareOptions:
        """The original lowmag_cli.py: its 6 px window and 100 px² (`changes` override single fields)."""
        base: dict[str, Any] = {"compat": True, "window": COMPAT_WINDOW, "min_area": COMPAT_MIN_AREA}
        return cls(**{**base, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return asdict(self)


# The original's fixed grouping window (px) and smallest hull area (px²).
COMPAT_WINDOW = 6
COMPAT_MIN_AREA = 100.0
