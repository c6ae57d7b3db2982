"""Drawing results on their image (cv2), for a quick visual check of what was targeted."""

from __future__ import annotations

import os

import numpy as np

from .errors import OutputError
from .outputs import atomic_write, overlay_format

__all__ = ["render_overlay", "write_overlay"]


def _to_uint8(data: np.ndarray) -> np.ndarray:
    """Contrast-stretch to 8 bits between the 0.5th and 99.5th percentiles."""
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    scaled = (data.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _score_colour(score: float | None, lo: float, hi: float) -> tuple[int, int, int]:
    """BGR colour from blue (low) to red (high); grey when unscored."""
    if score is None:
        return (160, 160, 160)
    t = 0.5 if hi <= lo else float(np.clip((score - lo) / (hi - lo), 0.0, 1.0))
    return (int(255 * (1 - t)), int(80 + 100 * (1 - abs(2 * t - 1))), int(255 * t))


def render_overlay(data: np.ndarray, result, max_side: int = 2048) -> np.ndarray:
    """Return a BGR uint8 picture of `data` with the result's boxes coloured by score."""
    import cv2

    image = cv2.cvtColor(_to_uint8(data), cv2.COLOR_GRAY2BGR)
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    targets = result.targets
    scores = [t.score for t in targets if t.score is not None]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    thickness = max(1, int(round(2 * max(image.shape[:2]) / 1024)))
    shift = 4  # sub-pixel drawing precision, 1/16 px
    for rank, t in enumerate(targets):
        pts = np.round(np.asarray(t.vertices, dtype=np.float64) * scale * (1 << shift)).astype(np.int32)
        colour = _score_colour(t.score, lo, hi)
        cv2.polylines(image, [pts.reshape(-1, 1, 2)], True, colour, thickness, cv2.LINE_AA, shift)
        centre = (int(round(t.x * scale * (1 << shift))), int(round(t.y * scale * (1 << shift))))
        cv2.circle(image, centre, 3 << shift, colour, -1, cv2.LINE_AA, shift)
        if rank < 99:
            org = (int(t.x * scale) + 5, int(t.y * scale) - 5)
            cv2.putText(image, str(rank + 1), org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, 1, cv2.LINE_AA)
    return image


def write_overlay(path: str | os.PathLike, data: np.ndarray, result) -> None:
    """Write the overlay atomically, as PNG, JPEG or TIFF after its extension (OutputError for any other)."""
    import cv2

    ext = overlay_format(path)  # before the drawing: an unusable name costs nothing
    ok, buf = cv2.imencode(ext, render_overlay(data, result))
    if not ok:
        raise OutputError(f"{path}: could not encode the overlay as {ext[1:].upper()}")
    atomic_write(path, buf.tobytes())
