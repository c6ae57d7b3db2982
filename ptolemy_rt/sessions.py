"""Finding the images of a session (EPU, Leginon, SerialEM, plain files) and which pipeline each one needs.

An atlas (low mag) goes to `squares`, a grid-square image (medium mag) to `holes`. The kind is read from where
the file sits and what is written beside it; nothing is guessed from pixels:

- EPU: `Atlas/Atlas*.{mrc,jpg,...}` are atlases (the `Tile_*` pieces are not); `Images-Disc*/GridSquare_*/
  GridSquare_*.{mrc,jpg,...}` are grid-square images (the `FoilHoles/` and `Data/` images below them are not
  targeted). The `.xml` beside an image gives its stage position (its pixel size is read by metadata.py).
- Leginon `rawdata/`: the last preset label of the file name, `..._00012gr.mrc` (grid atlas) and
  `..._00003sq.mrc` / `..._00003sq_v01.mrc` / `..._00003sq_00` (square; re-acquired, one of a tilt pair); hole and
  exposure images (`hl`, `ex`, `en`, `esn`, `fc`, `fa`, ...) are not targeted and are left out.
- SerialEM: the map items (`MapFile`) of a `.nav` (autodoc or XML form); the `.mdoc` beside a map (`NAME.mrc.mdoc`,
  else `NAME.mdoc`) gives its magnification (an atlas at or below LOW_MAG_MAX, a grid-square map above) and its
  pixel spacing. A file holding several maps (`MapSection`; SerialEM appends each new map to the open file) is one
  item per map, `FILE@SECTION`: a single-frame map's kind from that section's `[ZValue]` block, a montage map
  (`MapMontage = 1`, its MapSection the frame of its pieces) assembled from its own pieces.
- Anything else: a name starting with "atlas", or a folder named "atlas", means an atlas (EPU's grid-square, hole
  and exposure images, SerialEM maps with a magnification in their .mdoc and Leginon's rawdata/ images stay what
  they are below such a folder); otherwise the kind is unknown and the image fails with a message asking for
  `--kind`.

Where an image sits on the stage (to link grid-square images to atlas squares), from what the session wrote:
- EPU: `stage/Position` X, Y of the image's .xml is the stage position of the image centre (metres), and
  `ReferenceTransformation/matrix` its pixel-to-stage matrix, read as System.Windows.Media.Matrix does
  (row vector times matrix: a pixel step (dx, dy), x right and y down, moves the stage by
  (dx m11 + dy m21, dx m12 + dy m22)). Only its directions are used (`Item.pixel_axes`): its scale is the
  unbinned readout's, the image's own pixel size comes from metadata.py. Without a matrix the image is taken
  as unrotated: x along stage X, y against stage Y.
- SerialEM: a map's `StageXYZ` (µm) and `MapScaleMat` / `MapWidthHeight` in the .nav (`Item.nav_frame`,
  navigator.MapFrame: its own stage-to-pixel mapping, MRC y flip and binned or montage copies included).
- Leginon and plain files: no stage position (no links).
"""

from __future__ import annotations

import fnmatch
import glob
import math
import ntpath
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .outputs import NAME_MAX
from .smallfiles import is_regular, mdocs_beside

__all__ = [
    "IMAGE_SUFFIXES",
    "LOW_MAG_MAX",
    "UNROTATED",
    "Item",
    "discover",
    "epu_pixel_axes",
    "epu_stage_position",
    "kind_of",
    "mdoc_metadata",
    "nav_frames",
    "nav_maps",
    "nav_sections",
    "pixel_to_stage",
    "stage_to_pixel",
]

IMAGE_SUFFIXES = (".mrc", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
# When a session saves one image twice (EPU: .mrc and .jpg), the first suffix in this order is used.
_PREFERENCE = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
# SerialEM atlases (LMM) are taken at tens to a few hundred x; grid-square maps (MMM) at about a thousand and up.
LOW_MAG_MAX = 500.0
# Leginon names an image PARENT_NNNNNpreset, a re-acquisition adding _vNN and a tilt pair _00 / _01 (real names:
# 10sep19a_a_00006gr_00017sq_v01_00021hl_v02_00004em, 07jan05b_00012gr_00001sq_v01_00002sq_00_00002en_00); files
# processed after it (Appion, Magellon) add -a, -e, -DW. The kind is the last preset's.
_LEGINON = re.compile(r"_\d+([a-z]+)(?:_v\d+)?(?:_\d\d)?(?:-[a-z0-9]+)*$", re.IGNORECASE)
_LEGINON_KINDS = {"gr": "squares", "sq": "holes"}
_GLOB_CHARS = set("*?[")
# Stage directions of a step along +x (right) and +y (down) of an unrotated image: (x_X, x_Y, y_X, y_Y).
UNROTATED = (1.0, 0.0, 0.0, -1.0)


@dataclass(frozen=True)
class Item:
    """One image to process: where it is, its id (relative path, '/' separated), kind and session metadata."""

    path: Path
    id: str
    kind: str | None
    source: str
    stage_xy_m: tuple[float, float] | None = None
    # Unit stage directions of +x and +y image steps (x_X, x_Y, y_X, y_Y); None: unknown (UNROTATED assumed).
    pixel_axes: tuple[float, float, float, float] | None = None
    # A SerialEM map's navigator frame (navigator.MapFrame), which maps stage to its pixels by itself.
    nav_frame: Any = None
    # The section of a stack holding several SerialEM maps (the .nav's MapSection); None: the file's one image.
    section: int | None = None
    # Whether those maps are montages: `section` is then the montage's frame (PieceCoordinates z), assembled.
    montage: bool = False
    # A montage frame's [ZValue] block in the .mdoc that gives its pixel size (its first piece's); None: the file's.
    block: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (paths as strings; "section" only for one map of a stack of several)."""
        out = {
            "id": self.id,
            "input": str(self.path),
            "kind": self.kind,
            "source": self.source,
            "stage_xy_m": list(self.stage_xy_m) if self.stage_xy_m is not None else None,
            "pixel_axes": list(self.pixel_axes) if self.pixel_axes is not None else None,
        }
        if self.section is not None:
            out["section"] = self.section
            out["montage"] = self.montage
        return out


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


def epu_pixel_axes(xml_path: Path) -> tuple[float, float, float, float] | None:
    """Unit stage directions of +x and +y image steps from an EPU .xml's `ReferenceTransformation/matrix`.

    (m11, m12) is where a step right goes, (m21, m22) a step down (System.Windows.Media.Matrix, row vectors);
    None where absent, unreadable or degenerate.
    """
    from .metadata import read_xml_safely

    try:
        root = read_xml_safely(xml_path)
    except (InputError, OSError):
        return None
    ref = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "ReferenceTransformation"), None)
    matrix = next((c for c in ref if c.tag.rsplit("}", 1)[-1] == "matrix"), None) if ref is not None else None
    if matrix is None:
        return None
    values = {c.tag.rsplit("}", 1)[-1]: c.text for c in matrix}
    try:
        m11, m12, m21, m22 = (float(values[k].strip()) for k in ("_m11", "_m12", "_m21", "_m22"))  # type: ignore
    except (KeyError, AttributeError, ValueError):
        return None
    nx, ny = math.hypot(m11, m12), math.hypot(m21, m22)
    if not all(math.isfinite(v) for v in (m11, m12, m21, m22)) or nx == 0 or ny == 0:
        return None
    axes = (m11 / nx, m12 / nx, m21 / ny, m22 / ny)
    # Two directions less than ~6 degrees apart cannot be an image's axes: a garbled matrix, not a rotation.
    if abs(axes[0] * axes[3] - axes[1] * axes[2]) < 0.1:
        return None
    return axes


def _mdoc_keys(mdoc_path: Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """A SerialEM .mdoc's first Magnification and PixelSpacing, and those of each [ZValue = n] block (by n as
    written), read in one pass; empty where the file is too large or unreadable (as io and metadata refuse it)."""
    from . import smallfiles

    found: dict[str, float] = {}
    blocks: dict[str, dict[str, float]] = {}
    try:
        raw = smallfiles.read_small(mdoc_path, smallfiles.MAX_SIDECAR_BYTES, "SerialEM .mdoc")
        text = smallfiles.text_of(raw)
    except InputError:
        return found, blocks
    block: dict[str, float] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            name, _, value = stripped[1:-1].partition("=")
            block = blocks.setdefault(value.strip(), {}) if name.strip() == "ZValue" else None
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key in ("Magnification", "PixelSpacing"):
            try:
                number = float(value.split()[0])
            except (ValueError, IndexError):
                continue
            if not (math.isfinite(number) and number > 0):
                continue  # no magnification: NaN made the map a grid-square one (NaN <= LOW_MAG_MAX is false)
            found.setdefault(key, number)
            if block is not None:
                block.setdefault(key, number)
    return found, blocks


def mdoc_metadata(mdoc_path: Path, section: int | None = None) -> dict[str, float]:
    """Magnification and PixelSpacing (Å) from the first section of a SerialEM .mdoc that has them; with `section`,
    from its [ZValue = section] block first (a stack of maps taken at different magnifications)."""
    return _mdoc_for(_mdoc_keys(mdoc_path), section)


def _mdoc_for(keys: tuple[dict[str, float], dict[str, dict[str, float]]], section: int | None) -> dict[str, float]:
    found, blocks = keys
    return {**found, **(blocks.get(str(section), {}) if section is not None else {})}


# What a .nav says of a map file holding several maps: whether they are montages, its sections (a montage's
# frames) with their MapFrame, and how many sections named in the .nav the file lacks
Stack = tuple[bool, dict[int, Any], int]


@dataclass(frozen=True)
class _NavRead:
    """A SerialEM .nav read once for discovery: its map files (resolved), their frames and stacks of maps."""

    maps: list[Path]
    frames: dict[Path, Any]
    stacks: dict[Path, Stack]
    # the [ZValue] block describing each section of a stack (a montage frame's first piece), where not the section
    blocks: dict[Path, dict[int, int]]
    unusable: int  # map items whose MapFile can name no file (a NUL byte in it)
    empty: int = 0  # map items whose MapFile is empty (it named the .nav's own folder, an input failing as such)


def _read_session_nav(nav_path: Path) -> _NavRead:
    """Read, parse and resolve a .nav once (its map files, frames and stacks); InputError naming it where it is no
    navigator. An autodoc navigator the parser refuses still gives its MapFile lines, without frames or stacks."""
    from .navigator import MAX_NAV_BYTES, _whole, file_name, is_xml_nav, lines, map_frame, nav_text, parse_nav
    from .smallfiles import read_small

    # a FIFO named *.nav in a session folder blocked the batch; /dev/zero behind a link filled the memory
    raw = read_small(nav_path, MAX_NAV_BYTES, "SerialEM navigator file")
    # as navigator.read_nav reads it; names as navigator.file_name decodes them
    text = nav_text(raw, nav_path, mark=False)
    nav = None
    if is_xml_nav(text):
        nav = parse_nav(text, str(nav_path))  # SerialEM's XML form: read whole, as read_nav reads it
    elif not text.lstrip().startswith("AdocVersion"):
        raise InputError(f"{nav_path}: not a SerialEM navigator file (no 'AdocVersion' line, nor SerialEM's XML "
                         "form)")
    else:
        try:
            nav = parse_nav(text, str(nav_path))
        except InputError:
            nav = None
    if nav is not None:
        stored = [v for k, v in nav.header if k == "MapFile"]
        stored += [v for it in nav.items for k, v in it.fields if k == "MapFile"]
    else:
        stored = [value for key, sep, value in (line.partition("=") for line in lines(text))
                  if sep and key.strip() == "MapFile"]
    resolved: dict[str, Path | None] = {}  # each stored name resolved once (a session's maps share a few files)

    def where(value: str) -> Path | None:
        if value not in resolved:
            resolved[value] = _map_path(nav_path, file_name(value))
        return resolved[value]

    maps: dict[Path, None] = {}
    unusable = empty = 0
    for value in stored:
        path = where(value)
        if path is None and not file_name(value).strip():
            empty += 1
        elif path is None:
            unusable += 1
        else:
            maps.setdefault(path)
    frames: dict[Path, Any] = {}
    shared: set[Path] = set()
    found: dict[Path, list[tuple[int, bool, Any]]] = {}
    for item in nav.items if nav is not None else ():
        value = item.get("MapFile")
        if item.get("Type") != "2" or not value:
            continue
        path = where(value)
        if path is None:
            continue
        try:
            frame = map_frame(item)
        except InputError:
            frame = None
        if frame is not None:
            if path in frames:
                shared.add(path)
            frames[path] = frame
        try:
            section = _whole(item, "MapSection", 0)
        except InputError:
            continue
        found.setdefault(path, []).append((section, item.get("MapMontage", "0") == "1", frame))
    stacks: dict[Path, Stack] = {}
    blocks: dict[Path, dict[int, int]] = {}
    for path, used in found.items():
        sections = [s for s, _, _ in used]
        montages = {m for _, m, _ in used}
        if set(sections) == {0} or min(sections) < 0 or len(montages) > 1:
            continue
        montage = montages.pop()
        have = _sections_in(path, montage)
        if have is None:  # the file (or its montage .mdoc) cannot tell: one item, as before
            continue
        # only the sections the file has (a navigator of a million items naming one file made a million items)
        uses = Counter(sections)
        chosen = {s: (f if uses[s] == 1 else None) for s, _, f in sorted(used, key=lambda m: m[0])
                  if (s < have if isinstance(have, int) else s in have)}
        if set(chosen) <= {0}:
            continue
        stacks[path] = (montage, chosen, len(uses) - len(chosen))
        if isinstance(have, dict):
            blocks[path] = {s: have[s] for s in chosen}
    return _NavRead(list(maps), {p: f for p, f in frames.items() if p not in shared}, stacks, blocks, unusable,
                    empty)


def nav_maps(nav_path: Path) -> list[Path]:
    """The map image files (`MapFile`) of a SerialEM .nav, resolved beside the .nav when the stored path is gone
    (a MapFile that can name no file, holding a NUL byte, left out)."""
    return _read_session_nav(nav_path).maps


def nav_frames(nav_path: Path) -> dict[Path, Any]:
    """navigator.MapFrame of each map file of a SerialEM .nav (resolved as nav_maps does), for stage positions.

    A file used by several maps (sections of one stack) or a map item lacking its frame keys gets none.
    """
    try:
        return _read_session_nav(nav_path).frames
    except InputError:
        return {}


def nav_sections(nav_path: Path) -> dict[Path, Stack]:
    """The map files of a SerialEM .nav that hold their maps as sections of one stack (SerialEM appends each new
    map to the open file: MMM.mrc with MapSection 0, 1, 2, ...), each with whether they are montages (a montage's
    MapSection is its frame, the z of its PieceCoordinates), its sections' MapFrame (None for a section used by
    several items or lacking its frame keys), only those the file has, and how many sections named in the .nav
    it does not have. A file of one map at section 0 is not listed: it is read as one image, as before; nor is
    one mixing montages and single frames, or one whose sections cannot be told (not a regular MRC file)."""
    try:
        return _read_session_nav(nav_path).stacks
    except InputError:
        return {}


def _sections_in(path: Path, montage: bool) -> int | dict[int, int] | None:
    """What a map file holds: a stack's number of sections (its MRC header's nz, as far as the file's size holds
    them), a montage stack's frames (the z of its .mdoc's PieceCoordinates, those whose pieces the file holds) with
    the [ZValue] of each frame's first piece; None where the file or its .mdoc cannot tell (not a regular MRC
    file)."""
    from .errors import PtolemyError
    from .mrcdims import MRC_ITEMSIZE, MRC_SUFFIXES, mrc_dims  # no numpy: the batch process reads these headers

    if path.suffix.lower() not in MRC_SUFFIXES - {".rec"} or not is_regular(path):
        return None
    try:
        with open(path, "rb") as fh:
            dims = mrc_dims(fh.read(1024))
            size = os.fstat(fh.fileno()).st_size
        if dims is None:
            return None
        nx, ny, nz, mode, nsymbt = dims
        if min(nx, ny, nz) < 1 or mode not in MRC_ITEMSIZE or nsymbt < 0:
            return None
        # a header claiming 1000 sections of a 3-section file made 1000 items: the others go to the left-out note
        held = min(nz, max(0, size - 1024 - nsymbt) // (nx * ny * MRC_ITEMSIZE[mode]))
        if montage:
            if not mdocs_beside(path):  # none to read: no need of io, which loads numpy (an atlas is a montage)
                return None
            from .io import _montage_mdoc

            found = _montage_mdoc(path)
            if found is None:
                return None
            pieces: dict[int, list[int]] = {}
            for s in found[1].sections:
                if s.piece is not None:
                    pieces.setdefault(s.piece[2], []).append(s.z)
            return {frame: min(zs) for frame, zs in pieces.items() if all(0 <= z < held for z in zs)}
    except (PtolemyError, OSError, ValueError):
        return None
    return held if held > 0 else None


# A copied session's map sits at most this many folders below the .nav's own folder: SerialEM's sessions keep
# their maps beside the .nav or in a folder or two per grid (grid1/LMM.mrc, grid1/squares/MMM.mrc); eight leaves
# room for deeper copies while a stored path of thousands of folders (a hostile .nav) costs no more to look up.
_TAIL_FOLDERS = 8
_DRIVE = re.compile(r"^[A-Za-z]:")


def _map_path(nav_path: Path, stored: str) -> Path | None:
    """Where a .nav's stored MapFile is here; None where the name can be no file's (empty, or holding a NUL byte).

    Navigators are often moved from the acquisition PC: the stored path's last folders below the .nav's own
    folder (a session copied whole keeps its subfolders: D:\\s\\grid1\\LMM.mrc stored in D:\\s\\nav.nav is
    grid1/LMM.mrc beside the copied nav.nav), the longest tail first, down to the file name beside the .nav."""
    stored = stored.strip()
    if not stored or "\0" in stored:
        return None
    # '..' resolved as the acquisition PC did (D:\s\grid1\..\LMM.mrc is D:\s\LMM.mrc), in its own path syntax;
    # a '..' left at the start of a relative path is dropped with what it climbs out of: a tail never leaves the
    # .nav's folder
    windows = "\\" in stored or bool(_DRIVE.match(stored))
    normal = ntpath.splitdrive(ntpath.normpath(stored))[1] if windows else posixpath.normpath(stored)
    parts = [p for p in re.split(r"[\\/]" if windows else "/", normal) if p not in ("", ".")]
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index(".."):]
    base = nav_path.parent

    def candidates() -> Iterable[Path]:
        yield Path(stored)
        yield base / stored
        # built one at a time from the end, at most _TAIL_FOLDERS folders (all tails of a stored path of 8000
        # folders took 26 s each)
        for n in range(min(len(parts), _TAIL_FOLDERS + 1), 0, -1):
            yield base.joinpath(*parts[-n:])

    last = base / (parts[-1] if parts else stored)
    return next((c for c in candidates() if is_regular(c)), last)


def kind_of(path: Path, section: int | None = None) -> tuple[str | None, str, str | None]:
    """(kind or None, session source, note) for one image file (its `section` of a stack of SerialEM maps: the
    [ZValue] block of its .mdoc), from its place and the files beside it."""
    return _kind_of(path, section, {})


def _kind_of(path: Path, section: int | None, mdocs: dict[Path, Any]) -> tuple[str | None, str, str | None]:
    """kind_of, each .mdoc read once into `mdocs` (a stack of 400 maps re-read its 8 MB .mdoc for each: 121 s)."""
    parts = [p.lower() for p in path.parts[:-1]]
    stem = path.stem
    lower = stem.lower()
    tile = (None, "epu", "an EPU atlas tile (the stitched Atlas image is used)")
    if lower.startswith("atlas") or (parts and parts[-1] == "atlas"):
        return tile if lower.startswith("tile_") else ("squares", "epu" if "atlas" in parts else "file", None)
    # An EPU session's own layout before a folder named 'atlas' further up: a session kept under one (a
    # facility's <visit>/atlas/ holding the screening and the collection) made every grid-square image an atlas.
    if lower.startswith("gridsquare_") and any(p.startswith("gridsquare_") for p in parts):
        return "holes", "epu", None
    if any(p == "foilholes" or p == "data" for p in parts) and any(p.startswith("gridsquare_") for p in parts):
        return None, "epu", "an EPU hole or exposure image (not targeted)"
    # What the session wrote beside the image, or Leginon's own rawdata/ folder, before a folder named 'atlas'
    # further up (a SerialEM or Leginon session kept in one: its grid-square maps and hole images were atlases)
    for mdoc in mdocs_beside(path):
        if mdoc not in mdocs:
            mdocs[mdoc] = _mdoc_keys(mdoc)
        meta = _mdoc_for(mdocs[mdoc], section)
        if "Magnification" in meta:
            return ("squares" if meta["Magnification"] <= LOW_MAG_MAX else "holes"), "serialem", None
    match = _LEGINON.search(stem)
    label = match.group(1).lower() if match else None
    if label is not None and "rawdata" in parts:
        if label in _LEGINON_KINDS:
            return _LEGINON_KINDS[label], "leginon", None
        return None, "leginon", f"a Leginon '{label}' image (only 'gr' atlases and 'sq' squares are targeted)"
    if "atlas" in parts:
        return tile if lower.startswith("tile_") else ("squares", "epu", None)
    if label in _LEGINON_KINDS and path.suffix.lower() == ".mrc":
        return _LEGINON_KINDS[label], "leginon", None
    return None, "file", None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _session_files(directory: Path, navs_seen: dict[Path, _NavRead]) -> list[Path]:
    """The images of a directory tree worth considering (EPU sub-images and tiles included; kind_of sorts them)."""
    below = _visible_files(directory)
    navs = sorted(p for p in below if p.name.endswith(".nav"))
    if navs:
        files: list[Path] = []
        for nav in navs:
            files.extend(_nav_files(nav, navs_seen))
        return files
    return sorted(p for p in below if _is_image(p))


def _visible_files(directory: Path) -> list[Path]:
    """The files below `directory` but those below a hidden name (one starting with '.'), as a `**` pattern
    (_glob) sees them: Path.rglob walked hidden folders (a NetApp .snapshot copy of the whole tree, macOS's ._NAME
    resource forks of every image, refused as corrupt) that `SESSION/**/*.mrc` leaves out. Hidden folders are not
    walked; links to folders are not followed, as Path.rglob did not follow them."""
    found: list[Path] = []
    for folder, _, files in _walk_visible(str(directory)):
        found.extend(Path(folder, name) for name in files if not name.startswith("."))
    return found


def _walk_visible(base: str, follow_links: bool = False, dotted: Sequence[str] = ()) -> Iterator[
        tuple[str, list[str], list[str]]]:
    """os.walk(base) into no hidden folder (a name starting with '.') but those a pattern of `dotted` matches;
    the caller may prune the folder lists further, as os.walk's own."""
    for folder, dirs, files in os.walk(base, followlinks=follow_links):
        dirs[:] = [d for d in dirs if not d.startswith(".") or any(fnmatch.fnmatch(d, p) for p in dotted)]
        yield folder, dirs, files


def _nav_files(nav: Path, navs_seen: dict[Path, _NavRead]) -> list[Path]:
    """A .nav's map files, the .nav read once for all that discovery takes from it (kept in `navs_seen`)."""
    real = _real(nav)
    if real not in navs_seen:
        navs_seen[real] = _read_session_nav(nav)
    return navs_seen[real].maps


def _expand(arg: str, navs_seen: dict[Path, _NavRead]) -> list[Path]:
    path = Path(arg)
    if path.exists():
        if path.is_dir():
            return _session_files(path, navs_seen)
        if path.suffix.lower() == ".nav":
            return _nav_files(path, navs_seen)
        return [path]
    if _GLOB_CHARS & set(arg):
        matches = sorted(Path(m) for m in _glob(arg))
        if not matches:
            raise InputError(f"{arg}: no file matches this pattern")
        out: list[Path] = []
        for m in matches:
            if m.is_dir() or m.suffix.lower() == ".nav":
                out.extend(_expand(str(m), navs_seen))
            elif _is_image(m):  # a pattern also matches notes and metadata: only images are taken
                out.append(m)
        if not out:
            raise InputError(f"{arg}: no image matches this pattern")
        return out
    raise InputError(f"{arg}: no such file or directory")


def _glob(pattern: str) -> list[str]:
    """glob.glob(pattern, recursive=True), but a link loop below a `**` is not followed round: glob follows links to
    folders there without end, so two links to '.' in a session folder made `batch "SESSION/**/*.mrc"` run for good.
    A link to a folder elsewhere (the raw data on another disk) is still followed, as glob follows it. (A session
    folder given as such is walked by _visible_files, which follows no link to a folder, as Path.rglob did: a pattern
    and a folder differ there.) As in glob, `**` matches no hidden name, and a trailing separator
    matches folders only."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    k = parts.index("**")
    prefix, rest = os.sep.join(parts[:k]), parts[k:]
    folders_only = rest[-1] == ""  # `g/s/**/`: the folders, each with a trailing separator, as glob gives them
    if folders_only:
        rest = rest[:-1]
    # only a component starting with '.' matches a hidden name: the other hidden folders (NetApp's .snapshot copies
    # of the whole tree) are not walked at all
    dotted = [part for part in rest if part.startswith(".")]
    bases = glob.glob(prefix) if glob.has_magic(prefix) else [prefix]
    found: list[str] = []
    for base in bases:
        if not os.path.isdir(base or os.curdir):
            continue
        reals: dict[str, str] = {}  # each folder walked: its real path
        for folder, dirs, files in _walk_visible(base or os.curdir, follow_links=True, dotted=dotted):
            real = reals[folder] = os.path.realpath(folder)
            above, up = folder, os.path.dirname(folder)
            while up != above and up in reals:  # a folder inside itself (a link loop) is walked no further
                if reals[up] == real:
                    dirs[:], files[:] = [], []
                    break
                above, up = up, os.path.dirname(up)
            rel = os.path.relpath(folder, base or os.curdir)
            names = [] if rel == os.curdir else rel.split(os.sep)
            # the base itself once (a folder below is named by its parent's listing)
            for name in [*([] if names else [""]), *sorted(dirs), *([] if folders_only else sorted(files))]:
                path_names = names + [name] if name else names
                if (path_names or base) and _glob_match(path_names, rest):
                    # a folder that a last `**` matches as no name at all (`**/.h/**` gives `a/.h/`) ends in a
                    # separator, as glob gives it
                    as_folder = not path_names or folders_only or (
                        len(rest) > 1 and rest[-1] == "**" and name in dirs
                        and _glob_match(path_names, rest[:-1]))
                    path = os.path.join(base, *path_names)
                    found.append(os.path.join(path, "") if as_folder else path)
    return found


def _glob_match(names: list[str], parts: list[str]) -> bool:
    """Whether the names of a path below a `**` match the pattern's components `parts`, as glob matches them: `**`
    any number of folders, a name starting with '.' only by a component that does."""
    if not parts:
        return not names
    if parts[0] == "**":
        for i in range(len(names) + 1):
            if _glob_match(names[i:], parts[1:]):
                return True
            if i < len(names) and names[i].startswith("."):
                return False
        return False
    if not names or (names[0].startswith(".") and not parts[0].startswith(".")):
        return False
    return fnmatch.fnmatch(names[0], parts[0]) and _glob_match(names[1:], parts[1:])


def _dedupe_formats(paths: Sequence[Path]) -> list[Path]:
    """Keep one file per (folder, stem) when a session saved the same image as .mrc and .jpg: those of the format
    preferred (all of them: `a.mrc` and `a.MRC` are two images, not one saved twice; one was left out unsaid)."""
    best: dict[tuple[Path, str], int] = {}
    for p in paths:
        key = (p.parent, p.stem)
        best[key] = min(best.get(key, 99), _PREFERENCE.get(p.suffix.lower(), 99))
    return [p for p in paths if _PREFERENCE.get(p.suffix.lower(), 99) == best[(p.parent, p.stem)]]


def _real(path: Path) -> Path:
    """The path with its symbolic links resolved; a link loop stays as it is (Path.resolve raised RuntimeError on
    one, an internal error for the whole batch; the image then fails alone, naming the loop)."""
    return Path(os.path.realpath(path))


def discover(paths: Iterable[str], kind: str | None = None, exclude: str | os.PathLike | None = None,
             name_max: int = NAME_MAX) -> tuple[list[Item], list[str]]:
    """Expand files, globs, session folders and .nav files into Items (sorted by id) and notes on what was left out.

    kind: "squares" or "holes" for every image, overriding what the session says; None: from the session.
    exclude: a folder whose files are never inputs (the batch's own output folder, which may sit in the session).
    name_max: the bytes a name takes where the outputs go (outputs.folder_name_max): ids are cut to fit it.
    """
    files: list[Path] = []
    navs: dict[Path, _NavRead] = {}  # each .nav read once (maps, frames, stacks)
    for arg in paths:
        files.extend(_expand(str(arg), navs))
    frames: dict[Path, Any] = {}
    stacks: dict[Path, Stack] = {}  # files of several SerialEM maps: an item per map
    blocks: dict[Path, dict[int, int]] = {}  # the [ZValue] block of each montage frame (its first piece)
    left_out: dict[str, int] = {}
    for read in navs.values():
        frames.update({_real(p): f for p, f in read.frames.items()})
        stacks.update({_real(p): s for p, s in read.stacks.items()})
        blocks.update({_real(p): b for p, b in read.blocks.items()})
        if read.unusable:
            why = "a .nav map whose MapFile can name no file (a NUL byte in it)"
            left_out[why] = left_out.get(why, 0) + read.unusable
        if read.empty:
            why = "a .nav map whose MapFile is empty"
            left_out[why] = left_out.get(why, 0) + read.empty
    skip = _real(Path(exclude)) if exclude is not None else None
    seen: set[Path] = set()
    unique: list[Path] = []
    excluded: set[Path] = set()  # a file named twice (`batch . "./**/*.mrc" -o .`) is left out once
    for f in files:
        r = _real(f)
        if skip is not None and r.is_relative_to(skip):
            excluded.add(r)
            continue
        if r not in seen:
            seen.add(r)
            unique.append(r)
    unique = _dedupe_formats(unique)
    if not unique:
        why = "".join(f" (left out {n}: {why})" for why, n in sorted(left_out.items()))
        # a navigator of no maps said nothing of why it gave no images
        why += "".join(f" ({path}: a navigator naming no map file, MapFile)" for path, read in navs.items()
                       if not read.maps)
        if excluded:  # `batch . -o .` said "no images found in ." alone
            why += f" (left out {len(excluded)}: below the output folder {exclude}, which holds no inputs)"
        raise InputError("no images found in " + ", ".join(str(p) for p in paths) + why)
    root = Path(os.path.commonpath([str(p.parent) for p in unique]))
    items: list[Item] = []
    mdocs: dict[Path, Any] = {}  # each .mdoc read once, whatever the number of maps it describes
    for p in unique:
        montage, sections, missing = stacks.get(p, (False, {None: None}, 0))
        if missing:
            why = "a .nav map at a section its file does not have"
            left_out[why] = left_out.get(why, 0) + missing
        for section, section_frame in sections.items():
            # a montage's [ZValue] blocks are its pieces, not its frames: its kind from its first piece's
            block = blocks.get(p, {}).get(section, None) if montage else section  # type: ignore[arg-type]
            detected, source, note = _kind_of(p, block, mdocs)
            if detected is None and note is not None and kind is None:
                left_out[note] = left_out.get(note, 0) + 1
                continue
            if detected is None and note is not None and source == "epu":
                left_out[note] = left_out.get(note, 0) + 1  # --kind does not turn EPU tiles or exposures into targets
                continue
            xml = p.with_suffix(".xml")
            stage, axes, frame = None, None, frames.get(p) if section is None else section_frame
            if frame is not None:
                stage = (frame.stage[0] * 1e-6, frame.stage[1] * 1e-6)  # the .nav says micrometres
            elif is_regular(xml):
                stage, axes = epu_stage_position(xml), epu_pixel_axes(xml)
            # one map of a stack: its section after the file's name ('@', kept as is in the report's links)
            ident = _output_id(p.relative_to(root).as_posix() + ("" if section is None else f"@{section}"), name_max)
            items.append(Item(path=p, id=ident, kind=kind or detected, source=source, stage_xy_m=stage,
                              pixel_axes=axes, nav_frame=frame, section=section, montage=montage,
                              block=block if montage else None))
    notes = [f"left out {n} image(s): {why}" for why, n in sorted(left_out.items())]
    # a stack's maps in section order (MMM.mrc@2 before MMM.mrc@10), after the file's name as any id
    return sorted(items, key=lambda i: (i.id if i.section is None else i.id.rpartition("@")[0],
                                        -1 if i.section is None else i.section)), notes


# The longest suffix a batch gives the files it names after an id (results/ID.json, .state/ID.json, images/ID.jpg).
_ID_SUFFIX = ".json"


def _output_id(ident: str, name_max: int) -> str:
    """An item's id, each part cut to a name of `name_max` bytes (outputs.fitting_name), its last with room for the
    outputs' suffix: an input named near the file system's limit failed in the batch with ENAMETOOLONG (exit 4) at
    its result, and so did one in a folder named past the output's limit (results/FOLDER/: an input disc's 200-byte
    folder, an eCryptfs output of 143). Names that fit are kept as they are, so --resume finds their results."""
    from .outputs import fitting_name

    *folders, name = ident.split("/")
    return "/".join([*(fitting_name(folder, "", name_max) for folder in folders),
                     fitting_name(name, _ID_SUFFIX, name_max).removesuffix(_ID_SUFFIX)])


def _axes_matrix(axes: tuple[float, float, float, float] | None, pixel_size_m: float) -> tuple[float, ...]:
    xx, xy, yx, yy = axes if axes is not None else UNROTATED
    # Columns: the stage step (metres) of one pixel right, one pixel down.
    return xx * pixel_size_m, yx * pixel_size_m, xy * pixel_size_m, yy * pixel_size_m


def stage_to_pixel(stage_xy_m: tuple[float, float], centre_xy_m: tuple[float, float], pixel_size_m: float,
                   shape: tuple[int, int], axes: tuple[float, float, float, float] | None = None
                   ) -> tuple[float, float]:
    """Stage (X, Y) in metres to (x, y) pixels of an image centred at `centre_xy_m` (image y down).

    axes: unit stage directions of a step right and a step down (Item.pixel_axes); None: unrotated (x along
    stage X, y against stage Y).
    """
    rows, cols = shape
    a, b, c, d = _axes_matrix(axes, pixel_size_m)
    det = a * d - b * c
    dx, dy = stage_xy_m[0] - centre_xy_m[0], stage_xy_m[1] - centre_xy_m[1]
    return (cols - 1) / 2 + (d * dx - b * dy) / det, (rows - 1) / 2 + (a * dy - c * dx) / det


def pixel_to_stage(xy: tuple[float, float], centre_xy_m: tuple[float, float], pixel_size_m: float,
                   shape: tuple[int, int], axes: tuple[float, float, float, float] | None = None
                   ) -> tuple[float, float]:
    """The inverse of stage_to_pixel."""
    rows, cols = shape
    a, b, c, d = _axes_matrix(axes, pixel_size_m)
    u, v = xy[0] - (cols - 1) / 2, xy[1] - (rows - 1) / 2
    return centre_xy_m[0] + a * u + b * v, centre_xy_m[1] + c * u + d * v
