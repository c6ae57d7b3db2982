"""SerialEM navigator (.nav) files: read the autodoc format, and add targets as points drawn on a map item.

SerialEM's format rules that matter here. Source: SerialEM's own code (github mastcu/SerialEM at dfff4de:
NavigatorDlg.cpp, NavHelper.cpp, KStoreMRC.cpp, KImageStore.cpp, MapDrawItem.h, and the help page
about_formats.htm), as summarised and checked numerically against a real map item in the team notes
shared/serialem-nav.md:

- The first line is ``AdocVersion = 2.00``; without it SerialEM reads the file as the obsolete tab format.
  ``LastSavedAs = PATH`` may follow. Then one section per item, ``[Item = LABEL]``, with ``Key = value``
  lines; arrays are space-separated numbers.
- A point item needs ``Color`` (0-5; 0 is SerialEM's point default), ``StageXYZ`` (3 numbers), ``NumPts = 1``,
  ``Regis`` (the registration of the map it belongs to: the map's), ``Type = 0`` (0 point, 1 polygon, 2 map)
  and ``PtsX``/``PtsY`` (stage X and Y; for a point the same as StageXYZ). ``DrawnID`` is the ``MapID`` of the
  map it was drawn on; ``Acquire``, ``GroupID`` and ``Note`` are optional.
- ``MapID`` is every item's unique id. SerialEM makes ids >= 100000 and asks external tools to use ids
  below 100000. Labels are not checked on reading, but SerialEM labels its next item one more than the
  largest numeric label, so we use unique numeric labels above it.
- SerialEM rewrites the whole file when it saves: items added to a file it has open are lost unless the
  user reads or merges it (ReadNavFile, MergeNavFile). So we write a new file and never touch the original.
- ``MapScaleMat = a b c d`` maps stage to map pixels (binning folded in) in SerialEM's display frame, y
  down: ``x = a(X-X0) + b(Y-Y0) + W/2``, ``y_down = c(X-X0) + d(Y-Y0) + H/2``, with X0 Y0 the map's
  ``StageXYZ`` and W H its ``MapWidthHeight``; ``MapBinning``/``MontBinning`` do not enter. SerialEM flips y
  when it writes an MRC file, so file row 0 is the bottom of the displayed map: ``y_down = H - row``.
  Inverted, for file column/row: ``u = col - W/2``, ``v = H/2 - row``, ``X = X0 + (d u - b v)/det``,
  ``Y = Y0 + (a v - c u)/det`` with ``det = a d - b c``.
- ``CoordsInMap = col row Z`` with ``DrawnID`` is SerialEM's own way for external tools to give a map
  position (file pixels, 0,0 at the lower left = file col, row), converted to stage on reading; we write it
  beside the stage position when the image is the map's own single-frame file at its own size, where the
  two are the same point, with the map's stage Z as the third value.
- Montage maps (``MapMontage = 1``): ``MapScaleMat`` and ``MapWidthHeight`` describe the overview; a stitched
  montage at any binning with the overview's aspect ratio is scaled onto it. Whether a coordinate names a
  pixel's corner or centre is not settled by the source: at most half a map pixel. The montage's own file
  (the pieces' stack with its .mdoc) is accepted when io.read_image assembled it: montage.read_montage puts
  it in the nominal montage frame (pixel 0 at the smallest PieceCoordinates, the nominal pieces' bounding
  box, i.e. SerialEM's full montage, whose overview is a binned copy), so its pixels scale onto the overview
  as any stitched copy's do; pieces sit at their aligned positions less the mean aligned-nominal offset, so a
  point is off SerialEM's aligned display by at most that piece's alignment residual. Only stage positions
  are written for montages (no ``CoordsInMap``).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, PtolemyError

__all__ = [
    "EXTERNAL_ID_LIMIT",
    "MapFrame",
    "NavItem",
    "NavWriteError",
    "Navigator",
    "add_points",
    "default_nav_output",
    "file_name",
    "find_map",
    "format_item",
    "format_xml_item",
    "is_xml_nav",
    "lines",
    "map_frame",
    "nav_text",
    "parse_nav",
    "point_item",
    "read_nav",
    "targets_nav_text",
    "write_nav_text",
    "write_targets_to_nav",
]

class NavWriteError(PtolemyError):
    """The navigator copy cannot be written (exit code 4: output cannot be written)."""

    exit_code = 4


# SerialEM's own ids start here; external tools use ids below it (NavigatorDlg.cpp).
EXTERNAL_ID_LIMIT = 100000
# A session's navigator is a few MB (ten thousand items); parsed, a file of short lines takes ~20 times its size
# in memory (40 MB: 830 MB), so 256 MB could take 5 GB: 64 MB is the most read.
MAX_NAV_BYTES = 64 * 1024 * 1024
# The XML form takes about twice the autodoc form's memory once parsed (16 MB of short elements: 700 MB), and a
# real one about twice its bytes (ten thousand items: ~15 MB): half the limit keeps the same bound on memory.
MAX_XML_NAV_BYTES = MAX_NAV_BYTES // 2
# The image's aspect ratio may differ from the map's by this much and still be a scaled copy of it.
ASPECT_TOLERANCE = 0.01
_SECTION = re.compile(r"^\[\s*([^=\]]+?)\s*=\s*(.*?)\s*\]\s*$")


@dataclass(frozen=True)
class NavItem:
    """One ``[Item = LABEL]`` section: its label and its keys in file order (values as written)."""

    label: str
    fields: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of `key` (the last one if repeated), or `default`."""
        found = default
        for k, v in self.fields:
            if k == key:
                found = v
        return found

    def numbers(self, key: str) -> list[float]:
        """The value of `key` as numbers (empty when absent)."""
        value = self.get(key)
        if value is None:
            return []
        try:
            return [float(v) for v in value.split()]
        except ValueError:
            raise InputError(f"navigator item {self.label}: {key} = {value!r} is not a list of numbers") from None


@dataclass(frozen=True)
class Navigator:
    """A parsed navigator: the file-level keys (AdocVersion, LastSavedAs) and its items in order."""

    header: tuple[tuple[str, str], ...]
    items: tuple[NavItem, ...]
    # SerialEM also reads and writes its navigator as XML (<navigator>, <PreData>, <Item name=...>): new items
    # are then written in that form, into the copy of that file.
    xml: bool = False

    def item(self, label: str) -> NavItem:
        """The item labelled `label` (InputError when none is)."""
        for it in self.items:
            if it.label == label:
                return it
        raise InputError(f"navigator has no item labelled '{label}' "
                         f"(maps: {', '.join(it.label for it in self.items if it.get('Type') == '2') or 'none'})")


def lines(text: str) -> list[str]:
    """The lines of a navigator's text, split at CR LF, LF or CR only. str.splitlines also splits at \\x85, \\x1c-
    \\x1e, \\v and \\f: read byte for byte (latin-1), a UTF-8 name holding the byte 0x85 ('Å' is C3 85) was cut in
    two, and the map it names lost."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_nav(text: str, name: str = "<navigator>") -> Navigator:
    """Parse the text of an autodoc navigator (version line first, then [Item = LABEL] sections)."""
    header: list[tuple[str, str]] = []
    items: list[NavItem] = []
    label: str | None = None
    fields: list[tuple[str, str]] = []
    seen_version = False
    # a UTF-8 byte-order mark (decoded, or read byte for byte as nav_text reads it) is no part of the version line
    text = text.removeprefix("\ufeff").removeprefix(_UTF8_MARK)
    if is_xml_nav(text):
        return _parse_xml_nav(text, name)
    for number, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not seen_version:
            key, sep, value = line.partition("=")
            if not sep or key.strip() != "AdocVersion":
                raise InputError(f"{name}: not an autodoc navigator (first line must be 'AdocVersion = 2.00'; "
                                 "save it again with SerialEM 3.x or later)")
            seen_version = True
            header.append(("AdocVersion", value.strip()))
            continue
        section = _SECTION.match(line)
        if section:
            if label is not None:
                items.append(NavItem(label, tuple(fields)))
            if section.group(1) != "Item":
                raise InputError(f"{name}:{number}: unexpected section [{section.group(1)} = ...]")
            label, fields = section.group(2), []
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InputError(f"{name}:{number}: expected 'Key = value', got {line[:60]!r}")
        if label is None:
            header.append((key.strip(), value.strip()))
        else:
            fields.append((key.strip(), value.strip()))
    if not seen_version:
        raise InputError(f"{name}: empty navigator file")
    if label is not None:
        items.append(NavItem(label, tuple(fields)))
    return Navigator(tuple(header), tuple(items))


def is_xml_nav(text: str) -> bool:
    """Whether a navigator's text (byte-order mark dropped) is SerialEM's XML form rather than the autodoc one."""
    return text.lstrip().startswith("<")


def _parse_xml_nav(text: str, name: str) -> Navigator:
    """SerialEM's XML navigator: <navigator>, then <PreData> (AdocVersion, LastSavedAs) and one <Item name="LABEL">
    per item holding one element per key. Values are kept as the autodoc parser keeps them, the file's bytes read
    as latin-1 (file_name decodes them), so that the two forms give the same items."""
    from .metadata import _local, parse_xml_safely

    if len(text) > MAX_XML_NAV_BYTES:
        raise InputError(f"{name}: {len(text)} bytes is too large for an XML navigator (limit {MAX_XML_NAV_BYTES}; "
                         "the autodoc form may be twice that)")
    try:
        raw = text.encode("latin-1")  # the bytes as read (nav_text)
    except UnicodeEncodeError:
        raw = text.encode("utf-8")  # text given already decoded
    root = parse_xml_safely(raw, name)

    def value(element: Any) -> str:
        return (element.text or "").strip().encode("utf-8").decode("latin-1")

    if _local(root.tag) != "navigator":
        raise InputError(f"{name}: XML whose root is <{_local(root.tag)}>, not a SerialEM navigator (<navigator>)")
    header: list[tuple[str, str]] = []
    items: list[NavItem] = []
    for child in root:
        tag = _local(child.tag)
        if tag == "PreData":
            header.extend((_local(c.tag), value(c)) for c in child if _local(c.tag))
        elif tag == "Item":
            label = child.get("name")
            if label is None or not label.strip():
                raise InputError(f"{name}: an XML navigator <Item> without its name=\"LABEL\" attribute")
            fields = tuple((_local(c.tag), value(c)) for c in child if _local(c.tag))
            items.append(NavItem(label.strip().encode("utf-8").decode("latin-1"), fields))
        elif tag:
            raise InputError(f"{name}: unexpected element <{tag}> in an XML navigator (only PreData and Item)")
    if not any(k == "AdocVersion" for k, _ in header):
        raise InputError(f"{name}: XML navigator without <PreData><AdocVersion>: not a SerialEM navigator")
    return Navigator(tuple(header), tuple(items), xml=True)


def read_nav(path: str | os.PathLike) -> tuple[Navigator, str]:
    """Read and parse a .nav file; return it and its text (decoded byte for byte, latin-1)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such navigator file")
    from .smallfiles import read_small

    text = nav_text(read_small(p, MAX_NAV_BYTES, "navigator file"), p)
    return parse_nav(text, str(p)), text


# A UTF-8 byte-order mark read byte for byte (latin-1).
_UTF8_MARK = "\xef\xbb\xbf"
# Unicode's other line breaks in UTF-8, read byte for byte (latin-1): U+2028 LINE SEPARATOR, U+2029 PARAGRAPH
# SEPARATOR and U+0085 NEXT LINE, before what begins a navigator's line (a section, a key). SerialEM ends lines at
# LF alone: such a file is one line to it, and was to lines() ("no images found", saying nothing of why). Inside
# a value (a Note pasted from a Mac text app) they are no line end to SerialEM either, which reads the file: only a
# file whose item sections they hide (no [Item = ...] line of its own) is refused (_hidden_break).
_FOREIGN_BREAK = re.compile("(\xe2\x80[\xa8\xa9]|\xc2\x85)[ \t]*(?:\\[|[A-Za-z][A-Za-z0-9]*[ \t]*=)")
_FOREIGN_CHARS = re.compile("\xe2\x80[\xa8\xa9]|\xc2\x85")
_BREAK_NAMES = {"\xe2\x80\xa8": "U+2028 (LINE SEPARATOR)", "\xe2\x80\xa9": "U+2029 (PARAGRAPH SEPARATOR)",
                "\xc2\x85": "U+0085 (NEXT LINE)"}


def _hidden_break(text: str) -> re.Match | None:
    """The first U+2028/U+2029/U+0085 (read byte for byte) before a section or a `key =`, when the file has no
    section line of its own between LFs: its structure is hidden from SerialEM; None when there is none, or when
    they sit inside values of a file SerialEM reads."""
    foreign = _FOREIGN_BREAK.search(text)
    if foreign is None or any(_SECTION.match(line.strip()) and not _FOREIGN_CHARS.search(line)
                              for line in lines(text)):
        return None
    return foreign


def nav_text(raw: bytes, name: str | os.PathLike, mark: bool = True) -> str:
    """A navigator's bytes as text, byte for byte (latin-1: every byte one character, so that the copy written
    back is the original exactly), an editor's UTF-8 byte-order mark kept (dropped with mark=False); InputError
    naming the file for UTF-16/32 text, which no byte-for-byte copy can extend, and for lines an autodoc
    navigator's reader (SerialEM's, lines()) does not see: separated by U+2028, U+2029 or U+0085."""
    from .smallfiles import unicode_bom

    bom = unicode_bom(raw)
    if bom is not None and bom[1] != "utf-8":
        raise InputError(f"{name}: {bom[1].upper()} text; a navigator is ASCII as SerialEM writes it (save it again "
                         "as ASCII or UTF-8)")
    text = raw.decode("latin-1")
    foreign = _hidden_break(text)
    if foreign is not None and not is_xml_nav(text.removeprefix(_UTF8_MARK)):
        line = len(lines(text[:foreign.start()]))
        raise InputError(f"{name}:{line}: lines separated by {_BREAK_NAMES[foreign.group(1)]}, which SerialEM does "
                         "not read as a line end (save it again with LF or CR LF line ends)")
    return text if mark else text.removeprefix(_UTF8_MARK)


def format_item(item: NavItem, newline: str = "\n") -> str:
    """An item as SerialEM writes it: the section line, its keys, then a blank line."""
    lines = [f"[Item = {item.label}]"] + [f"{k} = {v}" for k, v in item.fields]
    return newline.join(lines) + newline + newline


def format_xml_item(item: NavItem, newline: str = "\n", indent: str = "  ") -> str:
    """An item in SerialEM's XML navigator form: <Item name="LABEL"> and one element per key, indented."""
    from xml.sax.saxutils import escape, quoteattr

    lines = [f"{indent}<Item name={quoteattr(item.label)}>"]
    lines += [f"{indent * 2}<{k}>{escape(v)}</{k}>" for k, v in item.fields]
    lines.append(f"{indent}</Item>")
    return newline.join(lines) + newline


def _g(value: float) -> str:
    """A number as SerialEM writes them (plain decimal, 6 significant digits are not enough for stage µm)."""
    text = f"{value:.9g}"
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class MapFrame:
    """What it takes to turn a map's pixels into stage coordinates (see the module docstring)."""

    label: str
    map_id: int
    regis: int
    stage: tuple[float, float, float]
    matrix: tuple[float, float, float, float]
    width: int
    height: int
    montage: bool
    map_file: str | None
    section: int

    def stage_xy(self, col: float, row: float, image_shape: tuple[int, int] | None = None) -> tuple[float, float]:
        """Stage X, Y (µm) of file pixel (col, row) of an image of `image_shape` (rows, cols) showing this map."""
        sx, sy = self._scale(image_shape)
        # Pixel centres map to pixel centres when the image is a binned copy of the map.
        col_m, row_m = (col + 0.5) * sx - 0.5, (row + 0.5) * sy - 0.5
        a, b, c, d = self.matrix
        det = a * d - b * c
        u, v = col_m - self.width / 2.0, self.height / 2.0 - row_m
        return self.stage[0] + (d * u - b * v) / det, self.stage[1] + (a * v - c * u) / det

    def pixel(self, x: float, y: float, image_shape: tuple[int, int] | None = None) -> tuple[float, float]:
        """The inverse of stage_xy: file (col, row) of stage (x, y)."""
        sx, sy = self._scale(image_shape)
        a, b, c, d = self.matrix
        dx, dy = x - self.stage[0], y - self.stage[1]
        col_m = a * dx + b * dy + self.width / 2.0
        row_m = self.height / 2.0 - (c * dx + d * dy)
        return (col_m + 0.5) / sx - 0.5, (row_m + 0.5) / sy - 0.5

    def _scale(self, image_shape: tuple[int, int] | None) -> tuple[float, float]:
        if image_shape is None:
            return 1.0, 1.0
        rows, cols = image_shape
        sx, sy = self.width / cols, self.height / rows
        if abs(sx - sy) > ASPECT_TOLERANCE * max(sx, sy):
            raise InputError(f"the image ({cols}x{rows} px) is not map {self.label} ({self.width}x{self.height} px) "
                             "or a uniformly scaled copy of it")
        return sx, sy


def _whole(item: NavItem, key: str, default: int) -> int:
    """An integer key of an item (SerialEM writes '3' or '3.0'); InputError naming it when it is not one."""
    text = item.get(key)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or abs(value) >= 2**63:
        raise InputError(f"navigator item {item.label}: {key} = {text!r} is not an integer")
    return int(value)


def _is_number(text: str) -> bool:
    """Whether `text` is a plain ASCII integer, as SerialEM writes labels and ids ('²'.isdigit() is True)."""
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def map_frame(item: NavItem) -> MapFrame:
    """The MapFrame of a map item (InputError naming the item and the missing key otherwise)."""
    if item.get("Type") != "2":
        raise InputError(f"navigator item {item.label} is not a map (Type = {item.get('Type')})")
    for key in ("MapID", "StageXYZ", "MapScaleMat", "MapWidthHeight"):
        if item.get(key) is None:
            raise InputError(f"navigator map {item.label} has no {key}")
    stage = item.numbers("StageXYZ")
    matrix = item.numbers("MapScaleMat")
    wh = item.numbers("MapWidthHeight")
    if len(stage) < 2 or len(matrix) != 4 or len(wh) != 2 or not all(math.isfinite(v) for v in stage + wh) \
            or min(wh) < 1 or max(wh) > 2**31:
        raise InputError(f"navigator map {item.label}: malformed StageXYZ, MapScaleMat or MapWidthHeight")
    det = matrix[0] * matrix[3] - matrix[1] * matrix[2]
    if not math.isfinite(det) or abs(det) < 1e-12:
        raise InputError(f"navigator map {item.label}: MapScaleMat {matrix} cannot be inverted")
    z = stage[2] if len(stage) > 2 else 0.0
    return MapFrame(
        label=item.label,
        map_id=_whole(item, "MapID", 0),
        regis=_whole(item, "Regis", 1),
        stage=(stage[0], stage[1], z),
        matrix=(matrix[0], matrix[1], matrix[2], matrix[3]),
        width=int(wh[0]),
        height=int(wh[1]),
        montage=item.get("MapMontage", "0") == "1",
        map_file=item.get("MapFile"),
        section=_whole(item, "MapSection", 0),
    )


def file_name(value: str) -> str:
    """A path stored in a navigator as the text it names. The navigator is read byte for byte (latin-1); SerialEM
    writes a name with accents in UTF-8 or in the Windows code page (cp1252): UTF-8 where the bytes are that, else
    cp1252. Read one way here and the other in batch discovery, a map named 'carte_é.mrc' was matched by one and
    missed by the other (no map for the image; 'no such file' in the batch)."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value  # text that was decoded already (parse_nav given a str)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _basename(path: str) -> str:
    """The file name of a Windows or POSIX path stored in a navigator, lower-cased (SerialEM runs on Windows)."""
    return re.split(r"[\\/]", file_name(path).strip())[-1].lower()


def find_map(nav: Navigator, label: str | None = None, image_path: str | os.PathLike | None = None,
             section: int | None = None) -> NavItem:
    """The map item labelled `label`, else the one whose MapFile (and MapSection) is the image."""
    if label is not None:
        return nav.item(label)
    maps = [it for it in nav.items if it.get("Type") == "2"]
    if image_path is not None:
        name = Path(image_path).name.lower()
        hits = [it for it in maps if _basename(it.get("MapFile") or "") == name]
        if len(hits) > 1:
            hits = [it for it in hits if _whole(it, "MapSection", 0) == (section or 0)]
        if len(hits) == 1:
            return hits[0]
        labels = [it.label for it in hits]
        counts = Counter(labels)
        alike = sorted({lb for lb in labels if counts[lb] > 1}, key=labels.index)
        unique = [lb for lb in labels if lb not in alike]
        if alike and not unique:  # an item written twice: "choose one with --map-label (2, 2)" could not
            raise InputError(f"several navigator maps labelled alike use {name} ({', '.join(labels)}): "
                             "--map-label cannot choose between them; remove the copies in SerialEM")
        if alike:  # labels 2, 2 and 5: --map-label 5 chooses its map, 2 none of its two
            raise InputError(f"several navigator maps use {name}: choose one with --map-label "
                             f"({', '.join(unique)}); those labelled {', '.join(alike)} it cannot choose between "
                             "(remove the copies in SerialEM)")
        if len(hits) > 1:
            raise InputError(f"several navigator maps use {name}: choose one with --map-label "
                             f"({', '.join(labels)})")
    raise InputError(f"no navigator map's MapFile is {Path(image_path).name if image_path else 'this image'}: "
                     f"choose one with --map-label ({', '.join(it.label for it in maps) or 'the file has no maps'})")


def point_item(frame: MapFrame, label: str, map_id: int, col: float, row: float,
               image_shape: tuple[int, int] | None = None, group_id: int | None = None, acquire: bool = False,
               note: str | None = None, exact_map_coords: bool = False) -> NavItem:
    """A point item at file pixel (col, row) of the image, drawn on `frame`'s map."""
    x, y = frame.stage_xy(col, row, image_shape)
    if not (math.isfinite(x) and math.isfinite(y)):
        # finite keys whose product overflows (MapScaleMat = 1 1e308 0 1 has determinant 1): "StageXYZ = -inf"
        # and "PtsX = -inf" were written into the copy for SerialEM, exit 0
        raise InputError(f"navigator map {frame.label}: its StageXYZ and MapScaleMat put pixel ({col:g}, {row:g}) "
                         f"of the image at stage ({x:g}, {y:g}) µm, which is no stage position")
    fields: list[tuple[str, str]] = [
        ("Color", "0"),
        ("StageXYZ", f"{_g(x)} {_g(y)} {_g(frame.stage[2])}"),
        ("NumPts", "1"),
        ("Regis", str(frame.regis)),
        ("Type", "0"),
    ]
    if group_id is not None:
        fields.append(("GroupID", str(group_id)))
    fields += [("MapID", str(map_id)), ("DrawnID", str(frame.map_id)), ("Acquire", "1" if acquire else "0")]
    if exact_map_coords:
        # The third value is the stage Z, as the map's (what other external tools write there too).
        fields.append(("CoordsInMap", f"{_g(col)} {_g(row)} {_g(frame.stage[2])}"))
    if note:
        fields.append(("Note", note.replace("\n", " ").replace("\r", " ")))
    fields += [("PtsX", _g(x)), ("PtsY", _g(y))]
    return NavItem(label, tuple(fields))


def _free_ids(nav: Navigator) -> tuple[int, int, set[int]]:
    """The next numeric label, and the next external id and the ids already used."""
    labels = [int(it.label) for it in nav.items if _is_number(it.label) and not it.label.startswith("-")]
    used: set[int] = set()
    for it in nav.items:
        for key in ("MapID", "GroupID"):
            value = it.get(key)
            if value is not None and _is_number(value):
                used.add(int(value))
    below = [i for i in used if i < EXTERNAL_ID_LIMIT]
    return max(labels, default=0) + 1, max(below, default=0) + 1, used


def add_points(nav: Navigator, text: str, map_item: NavItem, points: Sequence[tuple[float, float]],
               image_shape: tuple[int, int] | None = None, notes: Sequence[str] | None = None,
               acquire: bool = False, image_is_map_file: bool = False, name: str | os.PathLike = "<navigator>"
               ) -> tuple[str, list[NavItem]]:
    """The navigator text with one point item per (col, row) appended, drawn on `map_item`, in one new group
    (`name`: the navigator file, named in errors)."""
    frame = map_frame(map_item)
    if frame.montage and image_is_map_file:
        raise InputError(f"{name}: navigator map {frame.label} is a montage: its file holds the pieces; run on the "
                         "stitched montage (blendmont, or SerialEM's File > Save as) and pass that image")
    next_label, next_id, used = _free_ids(nav)

    def fresh() -> int:
        nonlocal next_id
        while next_id in used:
            next_id += 1
        if next_id >= EXTERNAL_ID_LIMIT:
            raise InputError(f"{name}: the navigator has no ids below {EXTERNAL_ID_LIMIT} left for new items")
        used.add(next_id)
        return next_id

    exact = (not frame.montage and image_shape is not None
             and tuple(image_shape) == (frame.height, frame.width))
    group = fresh() if points else None
    items = []
    for i, (col, row) in enumerate(points):
        item_id = fresh()
        try:
            items.append(point_item(frame, str(next_label + i), item_id, col, row, image_shape, group_id=group,
                                    acquire=acquire, note=notes[i] if notes else None, exact_map_coords=exact))
        except InputError as exc:  # the map's problem, said by point_item, which has no file: the .nav is named
            raise type(exc)(f"{name}: {exc}") from None
    newline = "\r\n" if "\r\n" in text else "\n"
    if nav.xml:
        return _insert_xml_items(text, items, newline, name), items
    body = text if not text or text.endswith(("\n", "\r")) else text + newline
    if items and not body.endswith(newline + newline):
        body += newline
    return body + "".join(format_item(it, newline) for it in items), items


def _insert_xml_items(text: str, items: Sequence[NavItem], newline: str, name: str | os.PathLike) -> str:
    """An XML navigator's text with `items` inserted before its closing </navigator>, indented as its items are."""
    # the root's own closing tag: not one quoted in a comment, CDATA or processing instruction (which parsed XML
    # holds nowhere else: '<' is not allowed in text or attribute values), masked out at the same length
    masked = re.sub(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>", lambda m: " " * len(m.group()), text, flags=re.S)
    closings = list(re.finditer(r"</\s*(?:[\w.-]+:)?navigator\s*>", masked))
    if not closings:
        raise InputError(f"{name}: the XML navigator has no closing </navigator>")
    if not items:
        return text
    found = re.search(r"(?:^|\n)([ \t]*)<Item\b", text)
    indent = found.group(1) if found and found.group(1) else "  "
    closing = closings[-1]
    head = text[:closing.start()]
    line_start = head.rfind("\n") + 1
    if head[line_start:].strip():  # </navigator> shares its line with other markup: the items go on new lines
        prefix, suffix = head + newline, ""
    else:  # the closing tag keeps its line and its indentation; the items go on the lines before it
        prefix, suffix = head[:line_start], head[line_start:]
    new = "".join(format_xml_item(it, newline, indent) for it in items)
    return prefix + new + suffix + text[closing.start():]


def default_nav_output(nav_path: str | os.PathLike) -> Path:
    """Where write_targets_to_nav puts its copy by default: NAME_ptolemy.nav beside NAME.nav (cut to the bytes a
    name takes there, outputs.folder_name_max)."""
    from .outputs import fitting_name, folder_name_max

    p = Path(nav_path)
    return p.with_name(fitting_name(f"{p.stem}_ptolemy", p.suffix or ".nav", folder_name_max(p.parent)))


def _notes(result: Any) -> list[str]:
    notes = []
    for rank, t in enumerate(result.targets, 1):
        score = "none" if t.score is None else f"{t.score:.4g}"
        notes.append(f"ptolemy-rt {result.kind} rank {rank} score {score}")
    return notes


def _assembled_montage(image_path: str | os.PathLike | None) -> bool:
    """Whether io.read_image assembles this file (a SerialEM montage stack with its .mdoc) when no section is
    asked for: the image is then the whole montage in its nominal frame (montage.read_montage)."""
    from .io import montage_mdoc

    try:
        return image_path is not None and Path(image_path).is_file() and montage_mdoc(image_path) is not None
    except PtolemyError:
        return False


def targets_nav_text(nav_in: str | os.PathLike, result: Any, map_label: str | None = None,
                     nav_out: str | os.PathLike | None = None,
                     image_path: str | os.PathLike | None = None, acquire: bool = False) -> tuple[Path, str, int]:
    """What write_targets_to_nav would write, without writing: (path, text, number of points).

    Every check (the navigator parses, the map exists and fits the image, the copy is not the original)
    happens here, so a caller can prepare all its outputs before writing any.
    """
    nav, text = read_nav(nav_in)
    out = Path(nav_out) if nav_out is not None else default_nav_output(nav_in)
    if os.path.realpath(out) == os.path.realpath(nav_in):  # realpath: a symlink loop is no RuntimeError
        raise InputError(f"{out}: the navigator copy must not replace the original (SerialEM rewrites the file "
                         "it has open); choose another --nav-out and merge it in SerialEM")
    try:
        map_item = find_map(nav, map_label, image_path, result.image.section)
        frame_file = map_item.get("MapFile")
        same_file = bool(image_path and frame_file and _basename(frame_file) == Path(image_path).name.lower())
        if same_file and result.image.section is None and _assembled_montage(image_path):
            same_file = False  # io read the montage's pieces as one stitched image: its pixels are the montage's
        points = [(float(t.x), float(t.y)) for t in result.targets]
        new_text, items = add_points(nav, text, map_item, points, tuple(result.image.shape), _notes(result),
                                     acquire=acquire, image_is_map_file=same_file, name=nav_in)
    except InputError as exc:
        # the map's problems (no map for the image, a MapScaleMat that cannot be inverted, a malformed StageXYZ)
        # said "navigator map 2: ...", naming no file: the .nav is named, once
        if str(exc).startswith(f"{nav_in}: "):
            raise
        raise type(exc)(f"{nav_in}: {exc}") from None
    return out, new_text, len(items)


def write_nav_text(path: str | os.PathLike, text: str) -> None:
    """Write a navigator text atomically, byte for byte as read (latin-1); NavWriteError (exit 4) on failure."""
    from .io import atomic_write

    try:
        atomic_write(path, text.encode("latin-1"))
    except OSError as exc:
        raise NavWriteError(f"{path}: cannot write the navigator copy ({exc})") from None


def write_targets_to_nav(nav_in: str | os.PathLike, result: Any, map_label: str | None = None,
                         nav_out: str | os.PathLike | None = None, image_path: str | os.PathLike | None = None,
                         acquire: bool = False) -> tuple[Path, int]:
    """Write a copy of `nav_in` with one point per target of `result`, drawn on the map; return (path, count).

    The map is `map_label`, else the map whose MapFile is `image_path`. Target positions are in pixels of
    the result's image (its shape scales them onto the map). The original file is never modified.
    """
    out, text, count = targets_nav_text(nav_in, result, map_label, nav_out, image_path, acquire)
    write_nav_text(out, text)
    return out, count
