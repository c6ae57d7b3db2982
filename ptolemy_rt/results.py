"""Result dataclasses and their writers (our JSON, the original's JSON, CSV, TXT).

Units: positions, lengths and areas are in pixels of the input image (x = column, y = row, origin at the
centre of the top-left pixel). When the pixel size is known (see metadata.py) physical values are reported
beside them: ``x_um``/``y_um`` from the image centre (same axis directions as x/y: right and down),
``area_um2``, ``diameter_um``, ``spacing_um``; they are ``null`` when it is not known, never a guess.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from . import __version__
from .errors import clean_text
from .metadata import PLAUSIBLE_A
from .outputs import atomic_write

__all__ = [
    "FORMATS",
    "Hole",
    "HoleResult",
    "ImageInfo",
    "Square",
    "SquareResult",
    "format_result",
    "json_text",
    "select",
    "sort_targets",
    "summary_line",
    "table",
    "with_pixel_size",
    "write_result",
]

FORMATS = ("json", "txt", "csv")
Point = tuple[float, float]


def _num(value: Any) -> Any:
    """A plain JSON number (None for NaN/inf or missing), from numpy scalars too."""
    if type(value) is float:  # the common case first: ~13k calls per 600-hole result
        return value if math.isfinite(value) else None
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
    pixel_size_source: str | None = None  # "option", "epu-xml", "mdoc", "mrc-header" (metadata.PixelSize)

    @property
    def known_pixel_size_A(self) -> float | None:
        """Å per pixel, None when unknown: 0 and 1 Å from a header are placeholders unless given as an option."""
        value = _num(self.pixel_size_A)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= PLAUSIBLE_A[1]:
            return None  # beyond a millimetre per pixel no microscope goes (1e300 Å: its µm² overflowed, exit 70)
        if value == 1.0 and self.pixel_size_source != "option":
            return None  # what MRC writers put in a header that nobody filled in (image readers keep it)
        return float(value)

    @property
    def pixel_size_nm(self) -> float | None:
        """nm per pixel, None when unknown."""
        value = self.known_pixel_size_A
        return None if value is None else value / 10.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "path": clean_text(self.path) if isinstance(self.path, str) else self.path,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "pixel_size_A": self.known_pixel_size_A,
            "pixel_size_nm": self.pixel_size_nm,
            "pixel_size_source": self.pixel_size_source if self.pixel_size_nm is not None else None,
            "section": self.section,
        }

    def units(self) -> _Units:
        """The pixel-to-µm conversion for targets of this image."""
        return _Units(self.pixel_size_nm, (self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)


@dataclass(frozen=True)
class _Units:
    """µm per pixel (None: unknown) and the image centre in pixels (x, y)."""

    nm_per_px: float | None = None
    cx: float = 0.0
    cy: float = 0.0

    def um(self, length_px: Any) -> float | None:
        """A length in µm."""
        v = _num(length_px)
        return None if self.nm_per_px is None or v is None else v * self.nm_per_px / 1000.0

    def um2(self, area_px: Any) -> float | None:
        """An area in µm²."""
        v = _num(area_px)
        return None if self.nm_per_px is None or v is None else v * (self.nm_per_px / 1000.0) ** 2

    def xy(self, x: Any, y: Any) -> tuple[float | None, float | None]:
        """A position in µm from the image centre (x right, y down)."""
        fx, fy = _num(x), _num(y)
        if fx is None or fy is None:
            return None, None
        return self.um(fx - self.cx), self.um(fy - self.cy)


NO_UNITS = _Units()


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
    # On the mesh lattice (None without one, e.g. in compat mode): row/col index, how the square was found
    # ("mixture": a region of the bright class; "lattice": a lattice point the mixture missed) and its class
    # from brightness (atlas_classes.SQUARE_CLASSES), reported beside the CNN score.
    row: int | None = None
    col: int | None = None
    found_by: str | None = None
    square_class: str | None = None
    # Cut by the image edge with less than half of it visible (squares.EDGE_TARGETABLE_SHARE): a real square
    # (kept, as the original keeps it) whose box centre is not the square's centre; None in compat mode.
    edge: bool | None = None

    def to_dict(self, units: _Units = NO_UNITS) -> dict[str, Any]:
        """JSON-ready dict in our own format (µm fields null unless `units` knows the pixel size)."""
        return {
            **_placed(self, units),
            "area_um2": units.um2(self.area),
            "brightness": _num(self.brightness),
            "score": _num(self.score),
            "scores": {k: _num(v) for k, v in sorted(self.scores.items())},
            "class": self.square_class,
            "row": self.row,
            "col": self.col,
            "found_by": self.found_by,
            "edge": self.edge,
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
    """One hole: centre (x=col, y=row), crop corners in the lattice frame, crop area in px², scores.

    `diameter_px` is the hole's diameter where it was measured (see hole_diameter_px), else None.
    `on_film`: whether the hole lies on the holey film (not over a grid bar, outside the square or on
    broken film; see film.py); None where it was not judged.
    """

    x: float
    y: float
    vertices: tuple[Point, ...]
    area: float
    score: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    diameter_px: float | None = None
    on_film: bool | None = None

    def to_dict(self, units: _Units = NO_UNITS) -> dict[str, Any]:
        """JSON-ready dict in our own format (µm fields null unless `units` knows the pixel size)."""
        return {
            **_placed(self, units),
            "diameter_px": _num(self.diameter_px),
            "diameter_um": units.um(self.diameter_px),
            "on_film": None if self.on_film is None else bool(self.on_film),
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


def _placed(target: Square | Hole, units: _Units) -> dict[str, Any]:
    """The keys every target's JSON starts with: its centre in px and in µm from the image centre, its outline
    and its area (px²)."""
    x_um, y_um = units.xy(target.x, target.y)
    return {
        "x": _num(target.x),
        "y": _num(target.y),
        "x_um": x_um,
        "y_um": y_um,
        "vertices": _points(target.vertices),
        "area": _num(target.area),
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
R = TypeVar("R", "SquareResult", "HoleResult")


def sort_targets(targets: Iterable[T]) -> tuple[T, ...]:
    """Sort by score, highest first; ties (and missing scores, last) by y then x."""

    def key(t: T) -> tuple[float, float, float]:
        s = t.score
        return (-(s if s is not None and math.isfinite(s) else -math.inf), t.y, t.x)

    return tuple(sorted(targets, key=key))


def _result_dict(result: SquareResult | HoleResult, geometry: str, value: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON object of either result, its keys in this order; `geometry` ("mesh" or "lattice") and its value
    are what the two differ by."""
    units = result.image.units()
    return {
        "version": __version__,
        "kind": result.kind,
        "models": result.models,
        "image": result.image.to_dict(),
        "angle_deg": _num(result.angle_deg),
        geometry: value,
        "reason": result.reason,
        "targets": [t.to_dict(units) for t in result.targets],
    }


@dataclass(frozen=True)
class SquareResult:
    """What find_squares returns; timings (seconds per stage) are not part of to_dict()."""

    squares: tuple[Square, ...]
    angle_deg: float | None
    image: ImageInfo
    models: dict[str, Any]
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    mesh: Any = None  # mesh.Mesh measured on the atlas (None in compat mode or without one)

    kind = "squares"

    @property
    def targets(self) -> tuple[Square, ...]:
        """The squares (common name for writers)."""
        return self.squares

    def to_dict(self) -> dict[str, Any]:
        """Our JSON object (stable: no timings)."""
        return _result_dict(self, "mesh", self._mesh_dict())

    def _mesh_dict(self) -> dict[str, Any] | None:
        """The grid mesh: pitch and bar width in px, and in µm with the mesh number (bars per inch) only when the
        pixel size is known."""
        if self.mesh is None:
            return None
        pitch = _num(self.mesh.pitch_px)
        pitch_um = self.image.units().um(pitch)
        return {
            "pitch_px": pitch,
            "bar_width_px": _num(self.mesh.bar_width_px),
            "angle_deg": _num(self.mesh.angle_deg),
            "mesh_number": None if pitch_um is None or not pitch_um > 0 else 25_400.0 / pitch_um,
            "pitch_um": pitch_um,
        }


@dataclass(frozen=True)
class HoleResult:
    """What find_holes returns; timings (seconds per stage) are not part of to_dict().

    `lattice`: the fitted lattice (lattice.Lattice) when there is one; angle_deg, spacing_px, basis and
    origin repeat its orientation, |a|, (a, b) and origin (kept for readers of the first format).
    """

    holes: tuple[Hole, ...]
    angle_deg: float | None
    spacing_px: float | None
    basis: tuple[Point, Point] | None
    origin: Point | None
    image: ImageInfo
    models: dict[str, Any]
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    lattice: Any = None

    kind = "holes"

    @property
    def targets(self) -> tuple[Hole, ...]:
        """The holes (common name for writers)."""
        return self.holes

    def to_dict(self) -> dict[str, Any]:
        """Our JSON object (stable: no timings)."""
        return _result_dict(self, "lattice", self._lattice_dict())

    def _lattice_dict(self) -> dict[str, Any] | None:
        """The lattice as issue 11 asks (a, b, origin, spacing_a/b, angle_deg: a's orientation, angle_ab_deg:
        between a and b, kind) beside the first format's spacing_px, spacing_um and basis."""
        if self.basis is None:
            return None
        units = self.image.units()
        out: dict[str, Any] = {
            "spacing_px": _num(self.spacing_px),
            "spacing_um": units.um(self.spacing_px),
            "basis": _points(self.basis),
            "origin": _points([self.origin])[0] if self.origin is not None else None,
        }
        lat = self.lattice
        if lat is not None:
            out.update({
                "a": _points([lat.a])[0],
                "b": _points([lat.b])[0],
                "spacing_a": _num(lat.spacing_a),
                "spacing_b": _num(lat.spacing_b),
                "spacing_a_um": units.um(lat.spacing_a),
                "spacing_b_um": units.um(lat.spacing_b),
                "angle_deg": _num(lat.angle_deg),
                "angle_ab_deg": _num(lat.angle_ab_deg),
                "kind": lat.kind,
            })
        return out


Result = SquareResult | HoleResult


# A square's class and place on the mesh lattice, as in its JSON (Square.to_dict).
SQUARE_LATTICE_FIELDS = ("class", "found_by", "row", "col", "edge")


def _vertex_columns(n: int) -> list[str]:
    return [f"vertex{i}_{axis}" for i in range(1, n + 1) for axis in ("x", "y")]


def table(result: Result, compat: bool = False) -> tuple[list[str], list[list[Any]]]:
    """The targets as a header and rows (None for a missing value): the fields of the JSON it mirrors.

    Default: our target fields (x, y, score, area, [brightness], score_<name>..., x_um, y_um, [area_um2, class,
    found_by, row, col, edge | diameter_px, diameter_um, on_film], vertex1_x, vertex1_y, ...); the square fields are
    empty where the JSON has null (no mesh, or --compat). `compat`: the original's fields in its order
    (vertex1_x ... , center_x, center_y, area, [brightness], score), its origin and int() centres.
    """
    targets = result.targets
    squares = result.kind == "squares"
    n_vertices = max((len(t.vertices) for t in targets), default=4)
    rows: list[list[Any]] = []
    if compat:
        header = _vertex_columns(n_vertices) + ["center_x", "center_y", "area"] + (["brightness"] if squares else [])
        header.append("score")
        for t in targets:
            rec = t.compat_dict()
            flat = [v for p in rec["vertices"] for v in p]
            flat += [None] * (2 * n_vertices - len(flat))
            extra = [rec["brightness"]] if squares else []
            rows.append(flat + rec["center"] + [rec["area"]] + extra + [rec["score"]])
        return header, rows
    score_keys = sorted({k for t in targets for k in t.scores})
    header = ["x", "y", "score", "area"] + (["brightness"] if squares else [])
    header += [f"score_{k}" for k in score_keys] + ["x_um", "y_um"]
    # holes' on_film too: with keep_off_film the table would otherwise not tell the kept off-film holes apart
    header += (["area_um2"] + list(SQUARE_LATTICE_FIELDS)) if squares else ["diameter_px", "diameter_um", "on_film"]
    header += _vertex_columns(n_vertices)
    units = result.image.units()
    for t in targets:
        d = t.to_dict(units)
        row = [d["x"], d["y"], d["score"], d["area"]] + ([d["brightness"]] if squares else [])
        row += [d["scores"].get(k) for k in score_keys] + [d["x_um"], d["y_um"]]
        row += ([d["area_um2"]] + [d[k] for k in SQUARE_LATTICE_FIELDS]) if squares else [d["diameter_px"],
                                                                                          d["diameter_um"],
                                                                                          d["on_film"]]
        flat = [v for p in d["vertices"] for v in p]
        rows.append(row + flat + [None] * (2 * n_vertices - len(flat)))
    return header, rows


def format_result(result: Result, fmt: str = "json", compat: bool = False, pretty: bool = False) -> str:
    """Render a result as text: JSON (one line unless `pretty`), CSV or TXT (tab-separated), each with a header.

    `compat`: the original Ptolemy CLI's target records (JSON: its one-line list, byte for byte; CSV/TXT:
    its fields). Otherwise our own object (JSON) or our target fields (CSV/TXT); see table().
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if fmt == "json":
        if compat:
            # One line: Leginon reads only the first line of the file. Never indented, even with `pretty`.
            return json.dumps([t.compat_dict() for t in result.targets], allow_nan=False) + "\n"
        return json_text(result.to_dict(), pretty)
    header, rows = table(result, compat=compat)
    # Booleans as in the JSON (true/false), missing values empty.
    cells = [["" if v is None else ("true" if v else "false") if isinstance(v, bool) else v for v in row]
             for row in rows]
    if fmt == "txt":
        return "".join("\t".join(str(v) for v in line) + "\n" for line in [header, *cells])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells)
    return buf.getvalue()


def json_text(record: dict[str, Any], pretty: bool = False) -> str:
    """Our JSON text of a result's to_dict() record (what format_result writes for fmt="json")."""
    return json.dumps(record, indent=1 if pretty else None, allow_nan=False) + "\n"


def write_result(
    result: Result, path: str | os.PathLike | None, fmt: str = "json", compat: bool = False, pretty: bool = False
) -> str:
    """Format a result and write it atomically to `path` (None: return the text only)."""
    text = format_result(result, fmt=fmt, compat=compat, pretty=pretty)
    if path is not None:
        atomic_write(path, text)
    return text


def with_pixel_size(result: R, pixel_size_A: float | None, source: str | None = None) -> R:
    """The result with this pixel size (Å per input pixel; None: unknown) in place of the reader's guess.

    Pass what metadata.pixel_size_for found, even None: it replaces a placeholder the image reader kept.
    """
    value = _num(pixel_size_A)
    if value is not None and not value > 0:
        value = None
    info = replace(result.image, pixel_size_A=value, pixel_size_source=source if value is not None else None)
    return replace(result, image=info)


def select(result: R, top: int | None = None, min_score: float | None = None) -> R:
    """Keep the targets scoring at least `min_score` (unscored ones are dropped), then the first `top`.

    Targets are already sorted best first, so this keeps the best. When the selection empties a non-empty
    result, `reason` says why (an empty result is never left unexplained).
    """
    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    targets = result.targets
    kept = tuple(t for t in targets if min_score is None or (t.score is not None and t.score >= min_score))
    if top is not None:
        kept = kept[:top]
    if len(kept) == len(targets):
        return result
    reason = result.reason
    if not kept and reason is None:
        reason = (f"none of {len(targets)} {result.kind} scored >= {min_score:g} (--min-score)"
                  if min_score is not None and (top is None or top > 0) else "--top 0")
    changes: dict[str, Any] = {"squares" if result.kind == "squares" else "holes": kept, "reason": reason}
    return replace(result, **changes)


def summary_line(name: str, result: Result, elapsed_s: float, provider: str, found: int | None = None) -> str:
    """The one -v line per image: targets, wall time split into stages that add up to it, provider, pixel size.

    `elapsed_s` is the wall time of the whole image (read, pipeline, output); the pipeline's own stages are
    listed and whatever they do not cover is `other`, so the numbers add up to the one total printed.
    """
    total_ms = elapsed_s * 1000.0
    stages = {k: v * 1000.0 for k, v in result.timings.items() if k != "total"}
    other = max(0.0, total_ms - sum(stages.values()))
    parts = " + ".join(f"{k} {v:.1f}" for k, v in [*stages.items(), ("other", other)])
    n = len(result.targets)
    shown = f"{n} {result.kind}" + (f" (of {found} found)" if found is not None and found != n else "")
    px = result.image.pixel_size_nm
    pixel = f"{px:.4g} nm/px ({result.image.pixel_size_source})" if px is not None else "unknown"
    line = f"{name}: {shown}; {total_ms:.1f} ms total = {parts} ms; provider {provider}; pixel size {pixel}"
    return line + (f"; reason: {result.reason}" if result.reason else "")
