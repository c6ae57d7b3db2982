"""Result dataclasses and their writers (our JSON, the original's JSON, CSV, TXT)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, TypeVar

from . import __version__
from .io import atomic_write

__all__ = [
    "ImageInfo",
    "Square",
    "Hole",
    "SquareResult",
    "HoleResult",
    "sort_targets",
    "format_result",
    "write_result",
    "FORMATS",
]

FORMATS = ("json", "txt", "csv")
Point = tuple[float, float]


def _num(value: Any) -> Any:
    """A plain JSON number (None for NaN/inf or missing), from numpy scalars too."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(f):
        return None
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", "f") in "iu":
        return int(value)
    return f


def _points(points: Iterable[Sequence[float]]) -> list[list[float]]:
    return [[_num(p[0]), _num(p[1])] for p in points]


@dataclass(frozen=True)
class ImageInfo:
    """Where a result's image came from."""

    path: str | None
    shape: tuple[int, int]
    pixel_size_A: float | None = None
    section: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "path": self.path,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "pixel_size_A": _num(self.pixel_size_A),
            "section": self.section,
        }


@dataclass(frozen=True)
class Square:
    """One grid square: centre (x=col, y=row), box corners, area in px², mean intensity, score."""

    x: float
    y: float
    vertices: tuple[Point, ...]
    area: float
    brightness: float
    score: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in our own format."""
        return {
            "x": _num(self.x),
            "y": _num(self.y),
            "vertices": _points(self.vertices),
            "area": _num(self.area),
            "brightness": _num(self.brightness),
            "score": _num(self.score),
            "scores": {k: _num(v) for k, v in sorted(self.scores.items())},
        }

    # The original low-mag finder puts the origin at the top-left pixel's corner; ours is at its centre.
    COMPAT_OFFSET = 0.5

    def compat_dict(self) -> dict[str, Any]:
        """The original lowmag_cli.py -f json record (field order, its origin and int() centre included)."""
        verts = _shift(self.vertices, self.COMPAT_OFFSET)
        return {
            "vertices": _points(verts),
            "center": _compat_center(verts),
            "area": _num(self.area),
            "brightness": _num(self.brightness),
            "score": _num(self.score),
        }


@dataclass(frozen=True)
class Hole:
    """One hole: centre (x=col, y=row), crop corners in the lattice frame, crop area in px², scores."""

    x: float
    y: float
    vertices: tuple[Point, ...]
    area: float
    score: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in our own format."""
        return {
            "x": _num(self.x),
            "y": _num(self.y),
            "vertices": _points(self.vertices),
            "area": _num(self.area),
            "score": _num(self.score),
            "scores": {k: _num(v) for k, v in sorted(self.scores.items())},
        }

    # As in low mag, the original's origin is the top-left pixel's corner.
    COMPAT_OFFSET = 0.5

    def compat_dict(self) -> dict[str, Any]:
        """The original medmag_cli.py -f json record."""
        verts = _shift(self.vertices, self.COMPAT_OFFSET)
        return {
            "vertices": _points(verts),
            "center": _compat_center(verts),
            "area": _num(self.area),
            "score": _num(self.score),
        }


def _shift(points: Sequence[Point], offset: float) -> list[Point]:
    return [(float(p[0]) + offset, float(p[1]) + offset) for p in points]


def _compat_center(vertices: Sequence[Point]) -> list[int]:
    """The original's centre: int() truncation (toward zero) of the mean of the vertices."""
    n = len(vertices)
    cx = sum(float(v[0]) for v in vertices) / n
    cy = sum(float(v[1]) for v in vertices) / n
    return [int(cx), int(cy)]


T = TypeVar("T", Square, Hole)


def sort_targets(targets: Iterable[T]) -> tuple[T, ...]:
    """Sort by score, highest first; ties (and missing scores, last) by y then x."""

    def key(t: T) -> tuple[float, float, float]:
        s = t.score
        return (-(s if s is not None and math.isfinite(s) else -math.inf), t.y, t.x)

    return tuple(sorted(targets, key=key))


@dataclass(frozen=True)
class SquareResult:
    """What find_squares returns; timings (seconds per stage) are not part of to_dict()."""

    squares: tuple[Square, ...]
    angle_deg: float | None
    image: ImageInfo
    models: dict[str, Any]
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    kind = "squares"

    @property
    def targets(self) -> tuple[Square, ...]:
        """The squares (common name for writers)."""
        return self.squares

    def to_dict(self) -> dict[str, Any]:
        """Our JSON object (stable: no timings)."""
        return {
            "version": __version__,
            "kind": self.kind,
            "models": self.models,
            "image": self.image.to_dict(),
            "angle_deg": _num(self.angle_deg),
            "reason": self.reason,
            "targets": [s.to_dict() for s in self.squares],
        }


@dataclass(frozen=True)
class HoleResult:
    """What find_holes returns; timings (seconds per stage) are not part of to_dict()."""

    holes: tuple[Hole, ...]
    angle_deg: float | None
    spacing_px: float | None
    basis: tuple[Point, Point] | None
    origin: Point | None
    image: ImageInfo
    models: dict[str, Any]
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    kind = "holes"

    @property
    def targets(self) -> tuple[Hole, ...]:
        """The holes (common name for writers)."""
        return self.holes

    def to_dict(self) -> dict[str, Any]:
        """Our JSON object (stable: no timings)."""
        return {
            "version": __version__,
            "kind": self.kind,
            "models": self.models,
            "image": self.image.to_dict(),
            "angle_deg": _num(self.angle_deg),
            "lattice": None
            if self.basis is None
            else {
                "spacing_px": _num(self.spacing_px),
                "basis": _points(self.basis),
                "origin": _points([self.origin])[0] if self.origin is not None else None,
            },
            "reason": self.reason,
            "targets": [h.to_dict() for h in self.holes],
        }


Result = SquareResult | HoleResult


def format_result(result: Result, fmt: str = "json", compat: bool = False) -> str:
    """Render a result as text: our JSON, the original's one-line JSON (compat), CSV or TXT."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    targets = result.targets
    if fmt == "json":
        if compat:
            # One line: Leginon reads only the first line of the file.
            return json.dumps([t.compat_dict() for t in targets], allow_nan=False) + "\n"
        return json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n"
    if fmt == "txt":
        return "".join(f"{_num(t.x)}\t{_num(t.y)}\n" for t in targets)
    buf = io.StringIO()
    extra = ["brightness"] if result.kind == "squares" else []
    score_keys = sorted({k for t in targets for k in t.scores})
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["x", "y", "score", "area", *extra, *[f"score_{k}" for k in score_keys]])
    for t in targets:
        row = [_num(t.x), _num(t.y), _num(t.score), _num(t.area)]
        row += [_num(getattr(t, k)) for k in extra]
        row += [_num(t.scores.get(k)) for k in score_keys]
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def write_result(
    result: Result, path: str | os.PathLike | None, fmt: str = "json", compat: bool = False
) -> str:
    """Format a result and write it atomically to `path` (None: return the text only)."""
    text = format_result(result, fmt=fmt, compat=compat)
    if path is not None:
        atomic_write(path, text)
    return text
