"""The pixel size of an input image: from the command line, EPU's .xml, SerialEM's .mdoc or the MRC header.

Sources are tried in this order and the first that gives a usable value wins (DESIGN.md, Inputs):

1. ``--pixel-size`` (Å per pixel of the input image, as given).
2. The EPU ``.xml`` beside the image (``NAME.xml`` for ``NAME.jpg``/``NAME.mrc``). Its
   ``SpatialScale/pixelSize/x/numericValue`` is in metres per pixel of the camera readout
   (``camera/ReadoutArea``, binning already applied); EPU's JPEGs are that readout scaled down, so one
   image pixel is ``pixelSize * readout width / image width`` (a JPEG or PNG whose .xml has no ReadoutArea: unknown).
3. SerialEM's ``.mdoc`` beside the image (``NAME.mrc.mdoc``, or ``NAME.mdoc``): ``PixelSpacing`` (Å) of the
   ``[ZValue = section]`` block, else the file-level one.
4. The MRC header's voxel size (Å), except 0 and 1, which writers put there when they do not know it.

Unknown is ``None``: a placeholder is never reported as a pixel size.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, PtolemyError
from .smallfiles import is_regular

if TYPE_CHECKING:  # the parser loads when a sidecar .xml is read: most images have none
    from xml.etree import ElementTree

__all__ = [
    "PLACEHOLDER_A",
    "PixelSize",
    "epu_pixel_size",
    "mdoc_pixel_size",
    "mrc_pixel_size",
    "parse_xml_safely",
    "pixel_size_for",
    "read_xml_safely",
]

log = logging.getLogger(__name__)

# Header values that mean "not set" (mrcfile and many writers store 0; IMOD and others 1 Å).
PLACEHOLDER_A = (0.0, 1.0)
# A pixel size outside this range (Å) is not a TEM image's: 0.01 Å to 1 mm covers every magnification.
PLAUSIBLE_A = (1e-2, 1e7)
_MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec"}
_PREVIEW_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class PixelSize:
    """A pixel size in Å per pixel of the input image (None: unknown) and where it came from."""

    angstrom: float | None
    source: str | None = None  # "option", "epu-xml", "mdoc", "mrc-header" (None when unknown)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"pixel_size_A": self.angstrom, "source": self.source}


UNKNOWN = PixelSize(None, None)


def _plausible(value_A: float | None) -> bool:
    return value_A is not None and math.isfinite(value_A) and PLAUSIBLE_A[0] <= value_A <= PLAUSIBLE_A[1]


def _read_bounded(path: Path) -> bytes:
    """The bytes of a small sidecar file; refuse (InputError) one that is too large to be what it claims."""
    from . import smallfiles

    return smallfiles.read_small(path, smallfiles.MAX_SIDECAR_BYTES, "metadata file")


def read_xml_safely(path: str | os.PathLike) -> ElementTree.Element:
    """Parse a small XML file, refusing DTDs and entity declarations (no entity expansion, no external fetch)."""
    p = Path(path)
    return parse_xml_safely(_read_bounded(p), p)


def parse_xml_safely(raw: bytes, p: str | os.PathLike) -> ElementTree.Element:
    """Parse XML bytes read from `p` (named in errors), refusing DTDs and entity declarations (InputError)."""
    refused = f"{p}: XML with a DTD or entity declarations is refused"
    # ElementTree expands internal entities (the "billion laughs" file): a metadata file needs no DTD at all.
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", raw, re.IGNORECASE):
        raise InputError(refused)
    from xml.etree import ElementTree

    class NoDoctype(ElementTree.TreeBuilder):
        """The parser's own sight of a DTD, whatever the encoding: in UTF-16 (with a byte-order mark, or told by
        the declaration) the bytes above hold no '<!DOCTYPE', and its entities were expanded."""

        def doctype(self, name, pubid, system):
            raise InputError(refused)

    # .NET writes a document serialised through a string with encoding="utf-16" in its declaration and then saves
    # it as UTF-8 (or ASCII): expat refuses the whole file over that one word. Bytes of UTF-16 text have a mark or
    # a NUL beside '<'; without either, the declaration is what is wrong. A UTF-8 mark may come first (.NET's
    # StreamWriter with Encoding.UTF8 writes one): the declaration is looked for after it.
    declared = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"'](utf-16|unicode)[\"']", re.IGNORECASE).match(
        raw, 3 if raw.startswith(b"\xef\xbb\xbf") else 0)
    if declared and b"\x00" not in raw[:4]:
        raw = raw[:declared.start(1)] + b"utf-8" + raw[declared.end(1):]
    parser = ElementTree.XMLParser(target=NoDoctype())
    try:
        parser.feed(raw)
        return parser.close()
    except ElementTree.ParseError as exc:
        raise InputError(f"{p}: not well-formed XML ({exc})") from None
    except PtolemyError:
        raise
    except (LookupError, ValueError) as exc:
        # the declaration names an encoding expat cannot read ("x-nothing", "rot13", "shift_jis", "utf-32"): its
        # LookupError or ValueError ended the run as an internal error (exit 70), a batch's session scan with it
        raise InputError(f"{p}: unreadable XML ({type(exc).__name__}: {exc})") from None


def _local(tag: str) -> str:
    """An element's name without its namespace ('{ns}width' -> 'width')."""
    return tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element | None, *names: str) -> ElementTree.Element | None:
    """Follow a path of local names (namespaces ignored), first match at each step."""
    for name in names:
        if element is None:
            return None
        element = next((c for c in element if _local(c.tag) == name), None)
    return element


def _find(root: ElementTree.Element, name: str) -> ElementTree.Element | None:
    """The first descendant with this local name."""
    return next((e for e in root.iter() if _local(e.tag) == name), None)


def _float(element: ElementTree.Element | None) -> float | None:
    if element is None or element.text is None:
        return None
    try:
        return float(element.text.strip())
    except ValueError:
        return None


def epu_pixel_size(xml_path: str | os.PathLike, image_shape: tuple[int, int], preview: bool = False) -> float | None:
    """Å per pixel of an image of `image_shape` (rows, cols) from EPU's .xml; None when it holds none.

    preview: the image is one of EPU's JPEG (or PNG) previews, a downscaled copy of the readout: without the
    readout's size (`ReadoutArea` absent or nil) its scale is unknown, and the readout's pixel size is not its own.
    """
    root = read_xml_safely(xml_path)
    scale = _find(root, "SpatialScale")
    given = _child(scale, "pixelSize", "x", "numericValue")
    metres = _float(given)
    if metres == 0 or given is None or given.text is None or not given.text.strip():
        return None  # none given (0: as a header's 0, not set)
    if metres is None or not metres > 0 or not math.isfinite(metres):
        # NaN, infinite, negative or no number: dropped without a word, the pixel size then unknown or another
        # source's, as if EPU had written none
        warnings.warn(f"{xml_path}: pixelSize {given.text.strip()[:40]!r} is not a pixel size (metres per pixel "
                      "above 0); ignoring it", stacklevel=2)
        return None
    readout_w = _float(_child(_find(root, "ReadoutArea"), "width"))
    readout_h = _float(_child(_find(root, "ReadoutArea"), "height"))
    rows, cols = image_shape
    factor = 1.0
    if preview and not (readout_w and readout_w > 0):
        warnings.warn(f"{xml_path}: no camera ReadoutArea to scale its pixel size to this {cols}x{rows} preview; "
                      "pixel size unknown (pass --pixel-size)", stacklevel=2)
        return None
    if readout_w and readout_w > 0:
        factor = readout_w / cols
        if readout_h and readout_h > 0 and abs(readout_h / rows - factor) > 0.02 * factor:
            # Not a uniform downscale of the readout (cropped? another image's .xml?): do not guess.
            warnings.warn(f"{xml_path}: camera readout {readout_w:g}x{readout_h:g} does not scale to the image's "
                          f"{cols}x{rows}; pixel size unknown", stacklevel=2)
            return None
    value = metres * 1e10 * factor
    if not _plausible(value):
        warnings.warn(f"{xml_path}: pixelSize {metres:g} m gives {value:g} Å per pixel of this {cols}x{rows} image, "
                      f"outside {PLAUSIBLE_A[0]:g} to {PLAUSIBLE_A[1]:g} Å; ignoring it", stacklevel=2)
        return None
    return value


def _mdoc_blocks(text: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """File-level keys and [ZValue = N] blocks of a SerialEM .mdoc (autodoc) text."""
    top: dict[str, str] = {}
    zblocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = top
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            key, _, value = line[1:-1].partition("=")
            if key.strip() == "ZValue":
                current = zblocks.setdefault(value.strip(), {})
            else:
                current = None  # [T = ...] title lines, [MontSection = ...] and others carry no pixel size for us
            continue
        if current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return top, zblocks


def mdoc_pixel_size(mdoc_path: str | os.PathLike, section: int | None = None) -> float | None:
    """Å per pixel from a SerialEM .mdoc: the section's PixelSpacing, else the file-level one."""
    p = Path(mdoc_path)
    from .smallfiles import text_of

    text = text_of(_read_bounded(p))
    top, zblocks = _mdoc_blocks(text)
    found: float | None = None
    unusable: str | None = None
    for block in (zblocks.get(str(section or 0), {}), top):
        given = block.get("PixelSpacing")
        if not given:
            continue
        try:
            value = float(given)
        except ValueError:
            value = math.nan
        if value in PLACEHOLDER_A:
            continue
        if _plausible(value):
            found = value
            break
        unusable = unusable or given
    if unusable is not None:
        # NaN, negative, 1e308 or no number: dropped without a word, as if the .mdoc held none (said once a file)
        warnings.warn(f"{p}: PixelSpacing {unusable[:40]!r} is not a pixel size (Å per pixel, {PLAUSIBLE_A[0]:g} "
                      f"to {PLAUSIBLE_A[1]:g}); ignoring it", stacklevel=2)
    return found


def mrc_pixel_size(path: str | os.PathLike) -> float | None:
    """Å per pixel from an MRC header (voxel size x), None for the placeholders 0 and 1 Å."""
    import mrcfile

    from .io import _mrcfile_warnings, mrc_voxel_x

    try:
        # mrcfile's warnings for this file taken and dropped, another thread's left alone (io._own_warnings)
        with _mrcfile_warnings():
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                value = mrc_voxel_x(mrc)
    except (OSError, ValueError):
        return None
    if value in PLACEHOLDER_A or not _plausible(value):
        return None
    return value


def _sidecars(path: Path) -> tuple[list[Path], list[Path]]:
    """Candidate EPU .xml and SerialEM .mdoc files beside an image."""
    xmls = [path.with_suffix(".xml")]
    mdocs = [path.with_name(path.name + ".mdoc"), path.with_suffix(".mdoc")]
    return xmls, mdocs


def pixel_size_for(path: str | os.PathLike | None, image: Any = None, override_A: float | None = None) -> PixelSize:
    """The pixel size of `image` (read from `path`): --pixel-size, EPU .xml, .mdoc, MRC header, else unknown.

    `image` is an io.Image (or anything with `shape` (rows, cols) and `section`); a broken sidecar file is
    reported as a warning and skipped, never fatal: the targets do not depend on the pixel size.
    """
    if override_A is not None:
        if not _plausible(override_A):
            raise InputError(f"--pixel-size {override_A}: expected Å per pixel between "
                             f"{PLAUSIBLE_A[0]:g} and {PLAUSIBLE_A[1]:g}")
        return PixelSize(float(override_A), "option")
    if path is None:
        return UNKNOWN
    p = Path(path)
    shape = tuple(image.shape) if image is not None else None
    section = getattr(image, "section", None)
    xmls, mdocs = _sidecars(p)
    for xml in xmls:
        if is_regular(xml) and xml != p and shape is not None:
            try:
                # EPU's JPEGs are downscaled previews of the readout; its MRC and TIFF images are the readout
                value = epu_pixel_size(xml, shape, preview=p.suffix.lower() in _PREVIEW_SUFFIXES)  # type: ignore
            except (InputError, OSError) as exc:
                warnings.warn(f"{exc}; ignoring it", stacklevel=2)
                continue
            if value is not None:
                return PixelSize(value, "epu-xml")
    for mdoc in mdocs:
        if is_regular(mdoc) and mdoc != p:
            try:
                value = mdoc_pixel_size(mdoc, section)
            except (InputError, OSError) as exc:
                warnings.warn(f"{exc}; ignoring it", stacklevel=2)
                continue
            if value is not None:
                return PixelSize(value, "mdoc")
    if p.suffix.lower() in _MRC_SUFFIXES and p.is_file():
        value = mrc_pixel_size(p)
        if value is not None:
            return PixelSize(value, "mrc-header")
    return UNKNOWN
