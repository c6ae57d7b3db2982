"""Drawing results on their image (cv2), for a quick visual check of what was targeted.

The picture is the image (contrast-stretched, shrunk to at most `max_side`) with each target's outline in
the colour of its score on a fixed scale (COLOUR_MAP: 0 blue, 1 red; grey when unscored), its rank beside
it, and below the image a legend strip: the colour bar with 0 and 1 labelled, the counts, what the line
styles mean (squares the mixture missed and the lattice filled in: dashed; a square's class where it is not
"ok", written beside it; holes off the film: grey) and, when the pixel size is known, a scale bar of a round
length. Drawing is deterministic: the same result gives the same bytes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ._orderstats import percentile
from .errors import OutputError
from .outputs import atomic_write, overlay_format

__all__ = ["COLOUR_MAP", "Layout", "layout", "render_overlay", "scale_bar", "score_colour", "write_overlay"]

UNSCORED = (160, 160, 160)  # BGR
OFF_FILM = (110, 110, 110)
DEFAULT_CLASS = "ok"


def _colour_map() -> np.ndarray:
    """(256, 3) uint8 BGR: blue (0) through green-tinged to red (1), readable on a grey image."""
    t = np.linspace(0.0, 1.0, 256)
    bgr = np.stack([255 * (1 - t), 80 + 100 * (1 - np.abs(2 * t - 1)), 255 * t], axis=1)
    return np.round(bgr).astype(np.uint8)


COLOUR_MAP = _colour_map()


def score_colour(score: float | None) -> tuple[int, int, int]:
    """BGR colour of a score in [0, 1] (clipped) on COLOUR_MAP; grey when unscored."""
    if score is None or not math.isfinite(score):
        return UNSCORED
    index = int(round(min(max(float(score), 0.0), 1.0) * 255))
    return tuple(int(v) for v in COLOUR_MAP[index])  # type: ignore[return-value]


def scale_bar(nm_per_px: float, width_px: int) -> tuple[float, str]:
    """A round length (1, 2 or 5 x 10^k nm) whose bar is at most a fifth of `width_px` picture pixels of
    `nm_per_px` nm each (the largest such length), and its label ("500 nm", "2 um")."""
    target = width_px / 5.0 * nm_per_px
    exponent = math.floor(math.log10(target))
    length = 10.0 ** exponent
    for m in (2.0, 5.0, 10.0):
        if m * 10.0 ** exponent <= target:
            length = m * 10.0 ** exponent
    if length >= 1000.0:
        label = f"{length / 1000.0:g} um"  # Hershey fonts have no micro sign
    else:
        label = f"{length:g} nm"
    return length, label


def _to_uint8(data: np.ndarray) -> np.ndarray:
    """Contrast-stretch to 8 bits between the 0.5th and 99.5th percentiles."""
    lo, hi = percentile(data, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    scaled = (data.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Layout:
    """Where things go in the picture (pixels of the picture): the image on top (rows 0..image_rows), the
    legend strip below it (None: no legend), the colour bar and scale bar as (x0, y0, x1, y1), inclusive."""

    image_rows: int
    width: int
    scale: float  # picture pixels per input pixel
    strip_rows: int
    text_scale: float
    colour_bar: tuple[int, int, int, int] | None
    scale_bar: tuple[int, int, int, int] | None
    scale_bar_nm: float | None
    scale_bar_label: str | None


def layout(shape: tuple[int, int], result, max_side: int = 2048, legend: bool = True) -> Layout:
    """The picture's layout for an input image of `shape` (rows, cols) and its result: the legend strip is
    drawn when `legend` and the result has targets; the scale bar when the pixel size is known too."""
    scale = min(1.0, max_side / max(shape))
    rows = int(round(shape[0] * scale)) if scale < 1.0 else int(shape[0])
    cols = int(round(shape[1] * scale)) if scale < 1.0 else int(shape[1])
    if not legend or not result.targets:
        return Layout(rows, cols, scale, 0, 0.0, None, None, None, None)
    s = min(3.0, max(0.3, cols / 1000.0))  # text and marks grow with the picture
    row_h = int(round(30 * s))
    pad = max(2, int(round(8 * s)))
    strip = 2 * row_h + 2 * pad
    y0 = rows + pad
    bar_x0 = pad + _text_width("score 0", s) + pad
    bar_w = max(16, int(round(200 * s)))
    bar = (bar_x0, y0 + row_h // 4, bar_x0 + bar_w - 1, y0 + row_h - row_h // 4)
    sb = None
    sb_nm = sb_label = None
    nm_per_px = result.image.pixel_size_nm
    if nm_per_px is not None:
        sb_nm, sb_label = scale_bar(nm_per_px / scale, cols)
        length = int(round(sb_nm / nm_per_px * scale))
        x1 = cols - 1 - pad
        yb = y0 + row_h + row_h // 2
        sb = (x1 - length + 1, yb, x1, yb + max(2, int(round(4 * s))) - 1)
    return Layout(rows, cols, scale, strip, s, bar, sb, sb_nm, sb_label)


def _text_width(text: str, s: float) -> int:
    import cv2

    (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * s, max(1, int(round(s))))
    return int(w)


def _put(image: np.ndarray, text: str, x: int, y: int, s: float, colour=(255, 255, 255)) -> int:
    """Write `text` with its baseline at y; return the x after it."""
    import cv2

    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * s, colour, max(1, int(round(s))), cv2.LINE_AA)
    return x + _text_width(text, s)


def _dashed(image: np.ndarray, pts: np.ndarray, colour, thickness: int, dash: float) -> None:
    """A closed polygon (float picture coordinates) drawn as dashes of `dash` px with equal gaps."""
    import cv2

    shift = 4
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        length = float(np.hypot(*(b - a)))
        n = max(1, int(length // (2 * dash)))
        for k in range(n):
            p = a + (b - a) * (2 * k * dash / length) if length else a
            q = a + (b - a) * (min(length, (2 * k + 1) * dash) / length) if length else a
            cv2.line(image, tuple(int(v) for v in np.round(p * (1 << shift))),
                     tuple(int(v) for v in np.round(q * (1 << shift))), colour, thickness, cv2.LINE_AA, shift)


def render_overlay(data: np.ndarray, result, max_side: int = 2048, legend: bool = True) -> np.ndarray:
    """Return a BGR uint8 picture of `data` with the result's outlines coloured by score and, when it has
    targets, a legend strip below the image (see the module docstring and layout())."""
    import cv2

    lay = layout(data.shape, result, max_side, legend)
    image = cv2.cvtColor(_to_uint8(data), cv2.COLOR_GRAY2BGR)
    if lay.scale < 1.0:
        image = cv2.resize(image, (lay.width, lay.image_rows), interpolation=cv2.INTER_AREA)
    scale = lay.scale
    thickness = max(1, int(round(2 * max(image.shape[:2]) / 1024)))
    shift = 4  # sub-pixel drawing precision, 1/16 px
    for rank, t in enumerate(result.targets):
        off = getattr(t, "on_film", None) is False
        colour = OFF_FILM if off else score_colour(t.score)
        verts = np.asarray(t.vertices, dtype=np.float64) * scale
        if getattr(t, "found_by", None) == "lattice" or off:
            _dashed(image, verts, colour, thickness, dash=max(3.0, 6.0 * thickness))
        else:
            pts = np.round(verts * (1 << shift)).astype(np.int32)
            cv2.polylines(image, [pts.reshape(-1, 1, 2)], True, colour, thickness, cv2.LINE_AA, shift)
        centre = (int(round(t.x * scale * (1 << shift))), int(round(t.y * scale * (1 << shift))))
        cv2.circle(image, centre, 3 << shift, colour, -1, cv2.LINE_AA, shift)
        label = str(rank + 1) if rank < 99 else ""
        klass = getattr(t, "square_class", None)
        if klass is not None and klass != DEFAULT_CLASS:
            label = f"{label} {klass}".strip()
        if label:
            org = (int(t.x * scale) + 5, int(t.y * scale) - 5)
            cv2.putText(image, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, 1, cv2.LINE_AA)
    if lay.strip_rows:
        image = np.concatenate([image, np.zeros((lay.strip_rows, lay.width, 3), np.uint8)], axis=0)
        _draw_legend(image, lay, result)
    return image


def _draw_legend(image: np.ndarray, lay: Layout, result) -> None:
    """The strip below the image: colour bar (0, 1), counts, line styles and the scale bar."""
    import cv2

    s = lay.text_scale
    assert lay.colour_bar is not None
    x0, y0, x1, y1 = lay.colour_bar
    base = y1  # text baseline of the first row
    _put(image, "score 0", x0 - _text_width("score 0", s) - max(2, int(round(8 * s))), base, s)
    ramp = COLOUR_MAP[np.round(np.linspace(0, 255, x1 - x0 + 1)).astype(int)]
    image[y0:y1 + 1, x0:x1 + 1] = ramp[None, :, :]
    x = _put(image, "1", x1 + max(2, int(round(6 * s))), base, s)
    targets = result.targets
    gap = max(4, int(round(20 * s)))
    counts = f"{len(targets)} {result.kind}"
    if result.kind == "squares":
        lattice = sum(1 for t in targets if getattr(t, "found_by", None) == "lattice")
        if lattice:
            counts += f" ({lattice} filled in from the lattice)"
    else:
        off = sum(1 for t in targets if getattr(t, "on_film", None) is False)
        if off:
            counts += f" ({off} off the film)"
    unscored = sum(1 for t in targets if t.score is None)
    if unscored:
        counts += f", {unscored} unscored"
    _put(image, counts, x + gap, base, s)
    # Second row: what the line styles mean (only those drawn), scale bar on the right.
    row2 = base + int(round(30 * s))
    x = x0 - _text_width("score 0", s) - max(2, int(round(8 * s)))
    sample = max(12, int(round(30 * s)))
    thick = max(1, int(round(2 * s)))
    mid = row2 - int(round(5 * s))
    entries = []
    if result.kind == "squares":
        if any(getattr(t, "found_by", None) == "lattice" for t in targets):
            entries += [("solid", "found", (255, 255, 255)), ("dashed", "filled in from the lattice", (255, 255, 255))]
        if any(getattr(t, "square_class", None) not in (None, DEFAULT_CLASS) for t in targets):
            entries.append(("text", "class beside rank where not ok", (255, 255, 255)))
    elif any(getattr(t, "on_film", None) is False for t in targets):
        entries.append(("dashed", "off the film", OFF_FILM))
    if unscored:
        entries.append(("solid", "unscored", UNSCORED))
    for style, text, colour in entries:
        if style == "solid":
            cv2.line(image, (x, mid), (x + sample, mid), colour, thick, cv2.LINE_AA)
            x += sample + max(2, int(round(6 * s)))
        elif style == "dashed":
            _dashed(image, np.array([[x, mid], [x + sample, mid]], np.float64), colour, thick, max(3.0, sample / 6))
            x += sample + max(2, int(round(6 * s)))
        x = _put(image, text, x, row2, s) + gap
    if lay.scale_bar is not None:
        bx0, by0, bx1, by1 = lay.scale_bar
        image[by0:by1 + 1, bx0:bx1 + 1] = 255
        label = lay.scale_bar_label or ""
        _put(image, label, bx1 - _text_width(label, s), by0 - max(2, int(round(4 * s))), s)


def write_overlay(path: str | os.PathLike, data: np.ndarray, result) -> None:
    """Write the overlay atomically, as PNG, JPEG or TIFF after its extension (OutputError for any other)."""
    import cv2

    ext = overlay_format(path)  # before the drawing: an unusable name costs nothing
    ok, buf = cv2.imencode(ext, render_overlay(data, result))
    if not ok:
        raise OutputError(f"{path}: could not encode the overlay as {ext[1:].upper()}")
    atomic_write(path, buf.tobytes())
