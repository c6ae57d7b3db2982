"""Finding the images of a session (EPU, Leginon, SerialEM, plain files) and which pipeline each one needs.

An atlas (low mag) goes to `squares`, a grid-square image (medium mag) to `holes`. The kind is read from where
the file sits and what is written beside it; nothing is guessed from pixels:

- EPU: `Atlas/Atlas*.{mrc,jpg,...}` are atlases (the `Tile_*` pieces are not); `Images-Disc*/GridSquare_*/
  GridSquare_*.{mrc,jpg,...}` are grid-square images (the `FoilHoles/` and `Data/` images below them are not
  targeted). The `.xml` beside an image gives its stage position (its pixel size is read by metadata.py).
- Leginon `rawdata/`: the last preset label of the file name, `..._00012gr.mrc` (grid atlas) and
  `..._00003sq.mrc` / `..._00003sq_v01.mrc` (square); hole and exposure images (`hl`, `ex`, `en`, `fc`, `fa`)
  are not targeted and are left out.
- SerialEM: the map items (`MapFile`) of a `.nav`; the `.mdoc` beside a map gives its magnification (an atlas at
  or below LOW_MAG_MAX, a grid-square map above) and its pixel spacing.
- Anything else: a name or folder containing "atlas" means an atlas; otherwise the kind is unknown and the image
  fails with a message asking for `--kind`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "LOW_MAG_MAX",
    "Item",
    "discover",
    "epu_stage_position",
    "kind_of",
    "mdoc_metadata",
    "nav_maps",
]

IMAGE_SUFFIXES = (".mrc", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
# When a session saves one image twice (EPU: .mrc and .jpg), the first suffix in this order is used.
_PREFERENCE = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
# SerialEM atlases (LMM) are taken at tens to a few hundred x; grid-square maps (MMM) at about a thousand and up.
LOW_MAG_MAX = 500.0
_LEGINON = re.compile(r"_\d+([a-z]+)(?:_v\d+)?$", re.IGNORECASE)
_LEGINON_KINDS = {"gr": "squares", "sq": "holes"}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Item:
    """One image to process: where it is, its id (relative path, '/' separated), kind and session metadata."""

    path: Path
    id: str
    kind: str | None
    source: str
    stage_xy_m: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (paths as strings)."""
        return {
            "id": self.id,
            "input": str(self.path),
            "kind": self.kind,
            "source": self.source,
            "stage_xy_m": list(self.stage_xy_m) if self.stage_xy_m is not None else None,
        }


def epu_stage_position(xml_path: Path) -> tuple[float, float] | None:
    """Stage (X, Y) in metres from an EPU image .xml (`stage/Position`); None where absent or unreadable.

    Read with metadata.read_xml_safely (no DTD or entities, bounded size); the pixel size is metadata's job.
    """
    from .metadata import read_xml_safely

    try:
        root = read_xml_safely(xml_path)
    except (InputError, OSError):
        return None
    stage = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "stage"), None)
    position = next((c for c in stage if c.tag.rsplit("}", 1)[-1] == "Position"), None) if stage is not None \
        else None
    if position is None:
        return None
    values = {c.tag.rsplit("}", 1)[-1]: c.text for c in position}
    try:
        x, y = float(values["X"].strip()), float(values["Y"].strip())  # type: ignore[union-attr]
    except (KeyError, AttributeError, ValueError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def mdoc_metadata(mdoc_path: Path) -> dict[str, float]:
    """Magnification and PixelSpacing (Å) from the first section of a SerialEM .mdoc that has them."""
    found: dict[str, float] = {}
    try:
        text = mdoc_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key in ("Magnification", "PixelSpacing") and key not in found:
            try:
                found[key] = float(value.split()[0])
            except (ValueError, IndexError):
                pass
    return found


def nav_maps(nav_path: Path) -> list[Path]:
    """The map image files (`MapFile`) of a SerialEM .nav, resolved beside the .nav when the stored path is gone."""
    try:
        text = nav_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{nav_path}: cannot read the navigator file ({exc})") from None
    if not text.lstrip().startswith("AdocVersion"):
        raise InputError(f"{nav_path}: not a SerialEM navigator file (no 'AdocVersion' line)")
    maps: list[Path] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "MapFile":
            stored = value.strip()
            # Navigators are often moved from the acquisition PC: fall back to the file name beside the .nav.
            name = stored.replace("\\", "/").rsplit("/", 1)[-1]
            candidates = [Path(stored), nav_path.parent / stored, nav_path.parent / name]
            path = next((c for c in candidates if c.is_file()), candidates[-1])
            if path not in maps:
                maps.append(path)
    return maps


def kind_of(path: Path) -> tuple[str | None, str, str | None]:
    """(kind or None, session source, note) for one image file, from its place and the files beside it."""
    parts = [p.lower() for p in path.parts[:-1]]
    stem = path.stem
    lower = stem.lower()
    if "atlas" in parts or lower.startswith("atlas"):
        if lower.startswith("tile_"):
            return None, "epu", "an EPU atlas tile (the stitched Atlas image is used)"
        return "squares", "epu" if "atlas" in parts else "file", None
    if lower.startswith("gridsquare_") and any(p.startswith("gridsquare_") for p in parts):
        return "holes", "epu", None
    if any(p == "foilholes" or p == "data" for p in parts) and any(p.startswith("gridsquare_") for p in parts):
        return None, "epu", "an EPU hole or exposure image (not targeted)"
    mdoc = path.with_name(path.name + ".mdoc")
    if mdoc.is_file():
        meta = mdoc_metadata(mdoc)
        if "Magnification" in meta:
            return ("squares" if meta["Magnification"] <= LOW_MAG_MAX else "holes"), "serialem", None
    match = _LEGINON.search(stem)
    if match and ("rawdata" in parts or path.suffix.lower() == ".mrc"):
        label = match.group(1).lower()
        if label in _LEGINON_KINDS:
            return _LEGINON_KINDS[label], "leginon", None
        if "rawdata" in parts:
            return None, "leginon", f"a Leginon '{label}' image (only 'gr' atlases and 'sq' squares are targeted)"
    return None, "file", None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _session_files(directory: Path) -> list[Path]:
    """The images of a directory tree worth considering (EPU sub-images and tiles included; kind_of sorts them)."""
    navs = sorted(directory.rglob("*.nav"))
    if navs:
        files: list[Path] = []
        for nav in navs:
            files.extend(nav_maps(nav))
        return files
    return sorted(p for p in directory.rglob("*") if _is_image(p))


def _expand(arg: str) -> list[Path]:
    path = Path(arg)
    if path.exists():
        if path.is_dir():
            return _session_files(path)
        if path.suffix.lower() == ".nav":
            return nav_maps(path)
        return [path]
    if _GLOB_CHARS & set(arg):
        matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg}: no file matches this pattern")
        out: list[Path] = []
        for m in matches:
            if m.is_dir() or m.suffix.lower() == ".nav":
                out.extend(_expand(str(m)))
            elif _is_image(m):  # a pattern also matches notes and metadata: only images are taken
                out.append(m)
        if not out:
            raise InputError(f"{arg}: no image matches this pattern")
        return out
    raise InputError(f"{arg}: no such file or directory")


def _dedupe_formats(paths: Sequence[Path]) -> list[Path]:
    """Keep one file per (folder, stem) when a session saved the same image as .mrc and .jpg."""
    best: dict[tuple[Path, str], Path] = {}
    for p in paths:
        key = (p.parent, p.stem)
        old = best.get(key)
        if old is None or _PREFERENCE.get(p.suffix.lower(), 99) < _PREFERENCE.get(old.suffix.lower(), 99):
            best[key] = p
    return [p for p in paths if best[(p.parent, p.stem)] == p]


def discover(paths: Iterable[str], kind: str | None = None, exclude: str | os.PathLike | None = None
             ) -> tuple[list[Item], list[str]]:
    """Expand files, globs, session folders and .nav files into Items (sorted by id) and notes on what was left out.

    kind: "squares" or "holes" for every image, overriding what the session says; None: from the session.
    exclude: a folder whose files are never inputs (the batch's own output folder, which may sit in the session).
    """
    files: list[Path] = []
    for arg in paths:
        files.extend(_expand(str(arg)))
    skip = Path(exclude).resolve() if exclude is not None else None
    seen: set[Path] = set()
    unique: list[Path] = []
    for f in files:
        r = f.resolve()
        if skip is not None and r.is_relative_to(skip):
            continue
        if r not in seen:
            seen.add(r)
            unique.append(r)
    unique = _dedupe_formats(unique)
    if not unique:
        raise InputError("no images found in " + ", ".join(str(p) for p in paths))
    root = Path(os.path.commonpath([str(p.parent) for p in unique]))
    items: list[Item] = []
    left_out: dict[str, int] = {}
    for p in unique:
        detected, source, note = kind_of(p)
        if detected is None and note is not None and kind is None:
            left_out[note] = left_out.get(note, 0) + 1
            continue
        if detected is None and note is not None and source == "epu":
            left_out[note] = left_out.get(note, 0) + 1  # --kind does not turn EPU tiles or exposures into targets
            continue
        xml = p.with_suffix(".xml")
        stage = epu_stage_position(xml) if xml.is_file() else None
        ident = p.relative_to(root).as_posix()
        items.append(Item(path=p, id=ident, kind=kind or detected, source=source, stage_xy_m=stage))
    notes = [f"left out {n} image(s): {why}" for why, n in sorted(left_out.items())]
    return sorted(items, key=lambda i: i.id), notes


def stage_to_pixel(stage_xy_m: tuple[float, float], centre_xy_m: tuple[float, float], pixel_size_m: float,
                   shape: tuple[int, int]) -> tuple[float, float]:
    """Stage (X, Y) in metres to (x, y) pixels of an image centred at `centre_xy_m` (stage y up, image y down).

    Assumes the image is not rotated against the stage, as in our synthetic sessions; a real EPU atlas needs the
    atlas-to-stage transform of its Atlas.dm, which is not read here.
    """
    rows, cols = shape
    x = (cols - 1) / 2 + (stage_xy_m[0] - centre_xy_m[0]) / pixel_size_m
    y = (rows - 1) / 2 - (stage_xy_m[1] - centre_xy_m[1]) / pixel_size_m
    return x, y


def pixel_to_stage(xy: tuple[float, float], centre_xy_m: tuple[float, float], pixel_size_m: float,
                   shape: tuple[int, int]) -> tuple[float, float]:
    """The inverse of stage_to_pixel."""
    rows, cols = shape
    return (centre_xy_m[0] + (xy[0] - (cols - 1) / 2) * pixel_size_m,
            centre_xy_m[1] - (xy[1] - (rows - 1) / 2) * pixel_size_m)
