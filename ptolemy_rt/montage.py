"""Montaged atlases: SerialEM montage stacks assembled into one image, tile brightness flattened, seams removed.

SerialEM saves a montage as an image stack (`.mrc`/`.st`, one section per piece) and beside it a `.mdoc`
text file (SerialEM's autodoc format, described in the SerialEM help under "Montaging" and in IMOD's
autodoc documentation): `Key = value` lines, a global header first, then one block per section headed
`[ZValue = n]` (n = the section's index in the stack). For montages each block holds
`PieceCoordinates = x y z`: the piece's position in the montage in (binned, saved) pixels, with z the
montage's frame number; SerialEM adds `AlignedPieceCoords` (or `AlignedPieceCoordsVS` when it aligned the
pieces on the fly, "very sloppy" montages; both may be there, the VS ones are used then) with positions
corrected by its own alignment, and
`PixelSpacing` (Å). Example from a public `.mdoc` (Titan Krios, 2021):

    ImageSize = 5064 3976
    Montage = 1
    [ZValue = 0]
    PieceCoordinates = 0 0 0
    PixelSpacing = 656.139
    AlignedPieceCoordsVS = 38 -65 0

Orientation: as in IMOD's piece lists (blendmont), (x, y) is where the piece's first pixel (data[0, 0]) lies
in the montage, x along columns and y along the stored rows. IMOD displays row 0 at the bottom, so the
"lower-left corner" of its documentation is data[0, 0]; in numpy's file-order arrays (ours, row 0 first)
a piece therefore fills rows y .. y + ny - 1 and columns x .. x + nx - 1, with no flip. Coordinates need
not start at 0 (aligned ones can be negative): the montage starts at the smallest.

Assembly: where pieces overlap, each montage pixel comes from the piece it lies deepest inside (the one
whose nearest edge is farthest), so no pixel is an average of two misregistered pieces and the cut runs
mid-overlap. Tile brightness: per-piece gains (dose and illumination differ from piece to piece) from the
mean intensities of each overlap, solved by least squares in log space; a piece with no overlap (a gap
all round) is matched by its median. Gaps between pieces are filled from their neighbourhood.

`remove_seams` is for atlases stitched elsewhere (EPU's Atlas_1.mrc): thin bright or dark straight lines
along rows or columns are found as outliers of the row (column) means against what the mesh predicts
there, and replaced by interpolation across them. `flatten_tile_offsets` then takes the seams as tile
boundaries (completing the regular grid they imply) and divides each tile by its brightness gain, from the
mean brightness on either side of each boundary (least squares in log space, as tile_gains). Given the mesh, it
also takes the straight brightness steps `tile_steps` finds as boundaries: a boundary shows a seam only where
the stitch drew one, but a gain step wherever two tiles' gains differ.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import _workers
from ._orderstats import median, nanmedian, percentile
from .errors import CorruptFileError, MissingFileError, PtolemyError, ShapeError, TooLargeError

__all__ = [
    "MAX_PIXELS",
    "Mdoc",
    "MdocSection",
    "Montage",
    "Seam",
    "assemble",
    "flatten_tile_offsets",
    "montage_extent",
    "parse_mdoc",
    "read_mdoc",
    "read_montage",
    "remove_seams",
    "tile_boundaries",
    "tile_gains",
    "tile_steps",
]

MAX_PIXELS = 2**28
# A montage's pieces overlap, and a few may be missing: its extent is about their area (a thin diagonal polygon
# montage of n pieces: about n times). One over MAX_SPREAD times their area is a .mdoc whose piece coordinates lie.
MAX_SPREAD = 64
_SECTION = re.compile(r"^\[\s*ZValue\s*=\s*(-?\d+)\s*\]\s*$", re.IGNORECASE)
# A section may carry both: public readers of SerialEM montages take the "very sloppy" (VS) ones when present
# (EMBL's render/pyEM tools, instamatic's montage reader); the first key found here wins.
_ALIGNED_KEYS = ("AlignedPieceCoordsVS", "AlignedPieceCoords", "AlignedPieceCoordinates")


@dataclass(frozen=True)
class MdocSection:
    """One `[ZValue = n]` block: its index, piece coordinates (x, y, z) and every key as text."""

    z: int
    piece: tuple[int, int, int] | None
    aligned: tuple[int, int, int] | None
    fields: dict[str, str]


@dataclass(frozen=True)
class Mdoc:
    """A parsed `.mdoc`: the global header, the sections in file order, the pixel size (Å) when given."""

    header: dict[str, str]
    sections: tuple[MdocSection, ...]
    pixel_size_A: float | None
    source: str | None = None

    @property
    def is_montage(self) -> bool:
        """Whether the sections carry piece coordinates."""
        return any(s.piece is not None for s in self.sections)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the section keys omitted)."""
        return {
            "source": self.source,
            "pixel_size_A": self.pixel_size_A,
            "sections": [{"z": s.z, "piece": s.piece, "aligned": s.aligned} for s in self.sections],
        }


_MAX_COORDINATE = 2.0**31
# Pieces whose gains tile_gains solves by lstsq (an SVD: 1 s of CPU at 1024 pieces, the cube of the count); more by
# the normal equations. A montage of more pieces than MAX_PIECES is refused: its normal equations alone are
# pieces^2 doubles (134 MB at 4096), where SerialEM's atlases are of tens to hundreds. An 8 MB .mdoc names 180,000
# pieces: 2304 of 32x32 px (a 4.7 MB stack) took 165 s and 700 MB, 4096 more than 5 minutes and 2 GB.
LSTSQ_PIECES = 1024
MAX_PIECES = 4096
# A piece overlaps its neighbours: 8 in a grid whose overlaps are under half a piece, 4 pairs a piece. Pieces piled
# on each other are no montage's layout: an 8 MB stack of 1024 pieces of 64 px at one place took 13 GB (lstsq's
# design matrix of 523,776 pairs) and minutes. Layouts of more than MAX_OVERLAPS overlapping pairs per piece (a pair
# touches two pieces: twice as many overlaps a piece), and more than OVERLAPS_FLOOR pairs in all, are refused.
MAX_OVERLAPS = 32
OVERLAPS_FLOOR = 4096


def _ints3(value: str, name: str, key: str) -> tuple[int, int, int]:
    parts = value.split()
    try:
        floats = [float(p) for p in parts[:3]]
    except ValueError:
        raise CorruptFileError(f"{name}: {key} = {value!r} is not numeric") from None
    if not all(abs(v) < _MAX_COORDINATE for v in floats):  # NaN and infinities too
        # SerialEM writes 32-bit pixel coordinates: 1e308 and inf raised OverflowError, read as "not a readable
        # image (OverflowError: Python int too large to convert to C long)" naming the stack, not the .mdoc
        raise CorruptFileError(f"{name}: {key} = {value!r} is not a pixel coordinate (|value| < 2**31)")
    nums = [round(v) for v in floats]
    if len(nums) < 2:
        raise CorruptFileError(f"{name}: {key} = {value!r} needs x y (z)")
    return nums[0], nums[1], nums[2] if len(nums) > 2 else 0


def parse_mdoc(text: str, name: str = "<mdoc>") -> Mdoc:
    """Parse the text of a SerialEM `.mdoc` (Key = value lines, `[ZValue = n]` sections)."""
    header: dict[str, str] = {}
    sections: list[MdocSection] = []
    current: dict[str, str] | None = None
    skipping = False  # in a block that is neither a piece nor a title: its keys are dropped
    z = -1

    def close() -> None:
        if current is None:
            return
        piece = _ints3(current["PieceCoordinates"], name, "PieceCoordinates") if "PieceCoordinates" in current else None
        aligned = next((_ints3(current[k], name, k) for k in _ALIGNED_KEYS if k in current), None)
        sections.append(MdocSection(z, piece, aligned, dict(current)))

    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _SECTION.match(s)
        if m:
            close()
            current, z, skipping = {}, int(m.group(1)), False
            continue
        if s.startswith("["):
            # Other bracketed blocks ([T = ...] titles, [MontSection = n]) are not pieces. A [MontSection]'s keys
            # describe the montage as a whole (its stage position, FullMontSize, ...): they are not the file's
            # header either (they replaced its PixelSpacing; metadata.mdoc_pixel_size never read them).
            close()
            current = None
            skipping = s[1:].split("=", 1)[0].strip() != "T"
            continue
        key, sep, value = s.partition("=")
        if not sep or (current is None and skipping):
            continue
        (header if current is None else current)[key.strip()] = value.strip()
    close()
    pixel = None
    for src in [header] + [s.fields for s in sections]:
        if "PixelSpacing" in src:
            try:
                v = float(src["PixelSpacing"].split()[0])
            except (ValueError, IndexError):
                raise CorruptFileError(f"{name}: PixelSpacing = {src['PixelSpacing']!r} is not a number") from None
            pixel = v if math.isfinite(v) and v > 1.0 else None
            break
    return Mdoc(header, tuple(sections), pixel, name)


def read_mdoc(path: str | os.PathLike) -> Mdoc:
    """Read and parse a `.mdoc` file."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: no such .mdoc file")
    from . import smallfiles

    raw = smallfiles.read_small(p, smallfiles.MAX_SIDECAR_BYTES, ".mdoc", CorruptFileError)
    text = smallfiles.text_of(raw)
    return parse_mdoc(text, str(p))


# ------------------------------------------------------------------------------------------------ assembly


@dataclass(frozen=True, eq=False)
class Montage:
    """An assembled atlas: image (float32), which pixels a piece covered, each piece's top-left (x, y) in it,
    the gain each piece was divided by, the pixel size (Å) when known."""

    image: np.ndarray
    coverage: np.ndarray
    positions: np.ndarray
    gains: np.ndarray
    pixel_size_A: float | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no pixel data)."""
        return {
            "shape": list(self.image.shape),
            "positions": self.positions.tolist(),
            "gains": self.gains.tolist(),
            "pixel_size_A": self.pixel_size_A,
            "source": self.source,
        }


def montage_extent(positions: np.ndarray, tile_shape: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the montage holding tiles of `tile_shape` at integer top-left `positions` (x, y)."""
    pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if len(pos) == 0:
        return 0, 0
    span = pos.max(axis=0) - pos.min(axis=0)
    return int(span[1]) + int(tile_shape[0]), int(span[0]) + int(tile_shape[1])


def _overlap(p: np.ndarray, q: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Overlap of tiles at p and q (x, y) as (y0, y1, x0, x1) in montage pixels, or None."""
    h, w = shape
    x0, x1 = max(p[0], q[0]), min(p[0], q[0]) + w
    y0, y1 = max(p[1], q[1]), min(p[1], q[1]) + h
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    return int(y0), int(y1), int(x0), int(x1)


def tile_gains(
    tiles: Sequence[np.ndarray] | np.ndarray, positions: np.ndarray, *, prior_weight: float = 1e-3
) -> np.ndarray:
    """Per-tile gains g (divide each tile by its g) that make overlapping tiles agree in mean brightness.

    Least squares in log space: for each overlap log g_i - log g_j = log(mean_i / mean_j) over the overlap;
    a weak prior ties each tile to its median / the median of all tiles, which decides isolated tiles; the
    geometric mean of the gains is 1."""
    pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    n = len(pos)
    if n == 0:
        return np.zeros(0)
    shape = tiles[0].shape
    medians = np.array([float(np.median(t[::4, ::4])) for t in tiles])
    ref = float(np.median(medians[medians > 0])) if (medians > 0).any() else 1.0
    all_means = np.array([float(np.mean(t[::4, ::4])) for t in tiles])
    floor = 0.05 * float(np.median(all_means[all_means > 0])) if (all_means > 0).any() else 0.0
    rows: list[np.ndarray] = []
    rhs: list[float] = []
    pairs: list[tuple[int, int, float]] = []
    for i, j in _overlapping_pairs(pos, shape):
        ov = _overlap(pos[i], pos[j], shape)
        if ov is None:
            continue
        y0, y1, x0, x1 = ov
        a = tiles[i][y0 - pos[i, 1] : y1 - pos[i, 1], x0 - pos[i, 0] : x1 - pos[i, 0]]
        b = tiles[j][y0 - pos[j, 1] : y1 - pos[j, 1], x0 - pos[j, 0] : x1 - pos[j, 0]]
        ma, mb = float(np.mean(a)), float(np.mean(b))
        if ma <= floor or mb <= floor:
            continue  # a dark overlap (off the disc) says nothing about gains
        pairs.append((i, j, math.log(ma / mb)))
    priors = []
    for i in range(n):
        prior = medians[i] / ref if medians[i] > 0 and ref > 0 else 1.0
        priors.append(prior_weight * math.log(float(np.clip(prior, 0.5, 2.0))))
    if n > LSTSQ_PIECES or len(pairs) > 16 * n:
        return np.exp(_gains_normal(n, pairs, priors, prior_weight))
    for i, j, d in pairs:
        r = np.zeros(n)
        r[i], r[j] = 1.0, -1.0
        rows.append(r)
        rhs.append(d)
    for i in range(n):
        r = np.zeros(n)
        r[i] = prior_weight
        rows.append(r)
        rhs.append(priors[i])
    rows.append(np.full(n, 1.0))
    rhs.append(0.0)
    sol, *_ = np.linalg.lstsq(np.vstack(rows), np.asarray(rhs), rcond=None)
    return np.exp(sol - sol.mean())


def _overlapping_after(pos: np.ndarray, shape: tuple[int, int], i: int) -> np.ndarray:
    """Which tiles after tile i (at `pos`, all of `shape`) overlap it by at least 4 px each way (_overlap's test)."""
    h, w = shape
    x, y = pos[:, 0], pos[:, 1]
    xs, ys = x[i + 1 :], y[i + 1 :]
    return ((np.minimum(x[i], xs) + w - np.maximum(x[i], xs) >= 4)
            & (np.minimum(y[i], ys) + h - np.maximum(y[i], ys) >= 4))


def _overlapping_pairs(pos: np.ndarray, shape: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """(i, j), i < j, of the tiles at `pos` whose bounding boxes overlap by at least 4 px each way, in the order of
    the double loop over i and j > i: one array operation per tile (a Python test per pair took minutes for a few
    thousand pieces)."""
    for i in range(len(pos) - 1):
        for j in np.flatnonzero(_overlapping_after(pos, shape, i)):
            yield i, i + 1 + int(j)


def _overlap_count(pos: np.ndarray, shape: tuple[int, int]) -> int:
    """How many pairs of the tiles at `pos` overlap (_overlapping_pairs), counted without listing them."""
    return sum(int(np.count_nonzero(_overlapping_after(pos, shape, i))) for i in range(len(pos) - 1))


def _gains_normal(n: int, pairs: list[tuple[int, int, float]], priors: list[float], prior_weight: float
                  ) -> np.ndarray:
    """tile_gains' least-squares log gains (mean 0) by its normal equations, built without the n-column design
    matrix: lstsq's SVD of it takes O(pieces^3) time and (pairs x pieces) memory, minutes and gigabytes for a few
    thousand pieces. The system is full rank (the prior rows), as montage's flatten_tile_offsets solves it."""
    normal = np.ones((n, n))  # the row of ones (sum of the log gains 0)
    normal[np.diag_indices(n)] += prior_weight**2
    rhs = prior_weight * np.asarray(priors, dtype=np.float64)
    if pairs:
        i, j, d = (np.array(v) for v in zip(*pairs))
        i, j = i.astype(np.int64), j.astype(np.int64)
        np.add.at(normal, (i, i), 1.0)
        np.add.at(normal, (j, j), 1.0)
        np.add.at(normal, (i, j), -1.0)
        np.add.at(normal, (j, i), -1.0)
        np.add.at(rhs, i, d)
        np.add.at(rhs, j, -d)
    try:
        sol = np.linalg.solve(normal, rhs)
    except np.linalg.LinAlgError:  # prior_weight=0 and tiles in separate groups: the least-norm answer, as lstsq
        sol = np.linalg.lstsq(normal, rhs, rcond=None)[0]
    return sol - sol.mean()


def _fill_gaps(image: np.ndarray, covered: np.ndarray, rounds: int = 6, k: int = 9) -> None:
    """Fill uncovered pixels in place with the mean of covered ones nearby (normalised box filter)."""
    cov = covered.astype(np.float32)
    for _ in range(rounds):
        if cov.all():
            return
        num = cv2.blur(image * cov, (k, k), borderType=cv2.BORDER_REFLECT)
        den = cv2.blur(cov, (k, k), borderType=cv2.BORDER_REFLECT)
        fill = (cov == 0) & (den > 1e-3)
        image[fill] = num[fill] / den[fill]
        cov[fill] = 1.0


def assemble(
    tiles: Sequence[np.ndarray] | np.ndarray,
    positions: np.ndarray,
    *,
    flatten: bool = True,
    fill_gaps: bool = True,
    max_pixels: int = MAX_PIXELS,
    name: str = "<montage>",
    pixel_size_A: float | None = None,
    extent: tuple[int, int] | None = None,
) -> Montage:
    """Paste tiles (same shape) at integer top-left positions (x, y) into one float32 montage.

    flatten: divide each tile by its gain (tile_gains) first. fill_gaps: fill pixels no tile covers from
    their neighbourhood (they stay False in `coverage`). extent: (rows, cols) of the montage, the positions
    then taken as they are (a tile reaching past it is clipped); default: the tiles' bounding box, positions
    shifted to start at 0. Refuses (TooLargeError) a montage over `max_pixels` before allocating it, and with
    `flatten` (CorruptFileError) tiles piled on each other, as read_montage refuses a .mdoc that piles them."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    n = len(pos)
    if n == 0 or len(tiles) != n:
        raise ShapeError(f"{name}: {len(tiles)} tiles but {n} piece positions")
    shape = tuple(int(v) for v in tiles[0].shape)
    if len(shape) != 2 or any(tuple(t.shape) != shape for t in tiles):
        raise ShapeError(f"{name}: montage pieces must be 2-D and all of one shape")
    ipos = np.rint(pos).astype(np.int64)
    if extent is None:
        ipos -= ipos.min(axis=0)
        h, w = montage_extent(ipos, shape)
    else:
        h, w = int(extent[0]), int(extent[1])
    _check_budget(h, w, max_pixels, name)
    if flatten and n > MAX_PIECES:  # the gains' normal equations are pieces^2 doubles
        raise TooLargeError(f"{name}: {n} montage pieces, more than the {MAX_PIECES} whose gains are solved "
                            "(flatten=False pastes them as they are)")
    if flatten:  # tile_gains lists every overlapping pair: seconds and gigabytes for a pile
        _check_pile(ipos, shape, name)
    gains = tile_gains(tiles, ipos) if flatten else np.ones(n)
    out = np.zeros((h, w), dtype=np.float32)
    # Depth of each tile pixel: its distance to the tile's nearest edge; the deepest tile wins a pixel.
    th, tw = shape
    rr = np.minimum(np.arange(th), np.arange(th)[::-1]).astype(np.int32)
    cc = np.minimum(np.arange(tw), np.arange(tw)[::-1]).astype(np.int32)
    depth_tile = np.minimum(rr[:, None], cc[None, :])
    depth = np.full((h, w), -1, dtype=np.int32)
    for k in range(n):
        x0, y0 = int(ipos[k, 0]), int(ipos[k, 1])
        # The part of the tile inside the montage (all of it unless an extent clips it).
        r0, c0 = max(0, -y0), max(0, -x0)
        r1, c1 = min(th, h - y0), min(tw, w - x0)
        if r1 <= r0 or c1 <= c0:
            continue
        dv = depth[y0 + r0 : y0 + r1, x0 + c0 : x0 + c1]
        ov = out[y0 + r0 : y0 + r1, x0 + c0 : x0 + c1]
        dt = depth_tile[r0:r1, c0:c1]
        take = dt > dv
        ov[take] = (np.asarray(tiles[k][r0:r1, c0:c1], dtype=np.float32) / np.float32(gains[k]))[take]
        dv[take] = dt[take]
    covered = depth >= 0
    del depth
    if fill_gaps and not covered.all():
        _fill_gaps(out, covered)
    return Montage(out, covered, ipos, gains, pixel_size_A, name)


def _check_budget(h: int, w: int, max_pixels: int, name: str) -> None:
    """TooLargeError (exit 2) for a montage over the pixel budget, before anything is allocated."""
    if h * w > max_pixels:
        raise TooLargeError(f"{name}: the assembled montage would be {h} x {w} = {h * w} pixels, "
                            f"over the budget of {max_pixels} (max_pixels; raise it with --max-pixels)")


def _check_pile(pos: np.ndarray, shape: tuple[int, int], source: str) -> None:
    """CorruptFileError naming `source` for pieces (of `shape`, at `pos`) piled on each other: more than MAX_OVERLAPS
    overlapping pairs a piece and OVERLAPS_FLOOR in all, no montage's layout, whose gains take minutes to solve."""
    pairs = _overlap_count(pos, shape)
    if pairs > max(MAX_OVERLAPS * len(pos), OVERLAPS_FLOOR):
        raise CorruptFileError(f"{source}: the piece coordinates pile {len(pos)} pieces of {shape[1]}x{shape[0]} px "
                               f"on each other ({pairs} overlapping pairs, {2 * pairs / len(pos):.0f} a piece): not a "
                               "montage's layout")


def _check_image_size(md: Mdoc, nx: int, ny: int) -> None:
    """Refuse (CorruptFileError) a .mdoc whose ImageSize (SerialEM's size of the file's images, its pieces) is not
    the stack's: it is another file's, or the stack was binned after it was written (newstack -bin), and its piece
    coordinates would scatter the pieces of this one. A missing or unreadable ImageSize is not checked."""
    parts = md.header.get("ImageSize", "").split()
    try:
        width, height = (int(float(v)) for v in parts[:2]) if len(parts) >= 2 else (None, None)
    except (ValueError, OverflowError):
        return
    if width is not None and (width, height) != (nx, ny):
        raise CorruptFileError(f"{md.source}: ImageSize {width} x {height} is not the size of the stack's pieces "
                               f"({nx} x {ny}): the .mdoc of another file, or of the stack before it was binned "
                               "(--section N reads one piece)")


def read_montage(
    path: str | os.PathLike,
    mdoc: str | os.PathLike | Mdoc | None = None,
    *,
    aligned: bool = True,
    frame: int | None = None,
    flatten: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> Montage:
    """Read a SerialEM montage stack and its `.mdoc` (default: path + '.mdoc') and assemble it.

    aligned: place pieces at SerialEM's aligned piece coordinates when the .mdoc has them. frame: which
    montage of a multi-montage file (the z of PieceCoordinates; default: the first).

    The montage is always in the nominal frame: pixel (0, 0) is the smallest PieceCoordinates, the size is
    the nominal pieces' bounding box (SerialEM's full montage; its map overview is this image binned), so
    a target's pixel maps onto the montage map (navigator.py) whatever the alignment. Aligned pieces are
    placed with their mean offset from the nominal positions removed (aligned coordinates have their own,
    arbitrary origin) and clipped to that box; a target is then off SerialEM's own aligned display by at
    most the piece's alignment residual."""
    import mrcfile

    p = Path(path)
    name = str(p)
    if not p.is_file():
        raise MissingFileError(f"{name}: no such file")
    md = mdoc if isinstance(mdoc, Mdoc) else read_mdoc(mdoc if mdoc is not None else Path(name + ".mdoc"))
    if not md.is_montage:
        raise CorruptFileError(f"{md.source}: no PieceCoordinates: not a montage .mdoc")
    secs = [s for s in md.sections if s.piece is not None]
    zs = sorted({s.piece[2] for s in secs})
    want = zs[0] if frame is None else int(frame)
    if frame is None and len(zs) > 1:
        import warnings

        # SerialEM appends montage maps to the open file: the others are not silently dropped (batch reads them all
        # through the .nav's MapSection)
        warnings.warn(f"{name}: a stack of {len(zs)} montages (frames {zs[0]} to {zs[-1]}); using montage {want}",
                      stacklevel=2)
    secs = [s for s in secs if s.piece[2] == want]
    if not secs:
        raise CorruptFileError(f"{md.source}: no pieces in montage frame {want} (frames: {zs})")
    if flatten and len(secs) > MAX_PIECES:  # as assemble refuses them, before any piece is read
        raise TooLargeError(f"{md.source}: montage frame {want} has {len(secs)} pieces, more than the "
                            f"{MAX_PIECES} assembled (--section N reads one piece)")
    twice = next((z for z, n in Counter(s.z for s in secs).items() if n > 1), None)
    if twice is not None:
        # Each piece is a section of its own: 196 pieces of a 16 MB stack of two 2048 px sections took 4 GB (a
        # float32 copy a piece), where the stack's own size bounds a montage's pieces.
        raise CorruptFileError(f"{md.source}: ZValue {twice} is more than one piece of montage frame {want}")
    from .io import _mrc_fits, _mrc_header, mrc_voxel_x

    try:
        # the header's claim against the budget and the file's size first: mrcfile allocates what it claims
        with open(p, "rb") as fh:
            header = _mrc_header(fh.read(1024), name)
            _mrc_fits(header, name, max_pixels, os.fstat(fh.fileno()).st_size)
        _check_image_size(md, int(header.nx), int(header.ny))
        mrc = mrcfile.open(p, mode="r", permissive=True)  # read, not mapped: see io._read_mrc_file (SIGBUS)
    except PtolemyError:
        raise
    except (ValueError, OSError) as exc:
        raise CorruptFileError(f"{name}: not a readable MRC file ({exc})") from None
    with mrc:
        data = mrc.data
        from .io import imod_unsigned_bytes

        if data is not None and imod_unsigned_bytes(mrc.header):
            data = data.view(np.uint8)
        if data is None or data.ndim != 3:
            dims = "no" if data is None else f"{data.ndim}-D"
            raise ShapeError(f"{name}: a montage needs a 3-D stack, the file holds {dims} data")
        nz = data.shape[0]
        bad = [s.z for s in secs if not 0 <= s.z < nz]
        if bad:
            raise CorruptFileError(f"{md.source}: ZValue {bad[0]} outside the stack's {nz} sections")
        use_aligned = aligned and all(s.aligned is not None for s in secs)
        nominal = np.array([s.piece[:2] for s in secs], dtype=np.int64)
        h, w = montage_extent(nominal, data.shape[1:])
        _check_budget(h, w, max_pixels, name)
        area = len(secs) * int(data.shape[1]) * int(data.shape[2])
        if h * w > MAX_SPREAD * area and h * w > (1 << 22):
            # Two 64 px pieces 16,000 px apart made a 1 GB image, 6.6 GB of memory and a minute of gap filling.
            raise CorruptFileError(f"{md.source}: the piece coordinates spread {len(secs)} pieces of "
                                   f"{data.shape[2]}x{data.shape[1]} px over {w}x{h} px, {h * w / area:.0f} times "
                                   "their area: not a montage's layout")
        pos = nominal - nominal.min(axis=0)
        if use_aligned:
            ali = np.array([s.aligned[:2] for s in secs], dtype=np.int64)
            pos = pos + (ali - nominal) - np.rint((ali - nominal).mean(axis=0)).astype(np.int64)
        _check_pile(pos, data.shape[1:], md.source)  # before the pieces are read
        tiles = [np.asarray(data[s.z], dtype=np.float32) for s in secs]
        pixel = md.pixel_size_A
        if pixel is None:
            v = mrc_voxel_x(mrc)
            pixel = v if math.isfinite(v) and v > 1.0 else None
    if any(not np.isfinite(t).all() for t in tiles):
        raise CorruptFileError(f"{name}: a montage piece holds NaN or infinite values")
    # assemble checks the pile again, as read_montage did before the pieces were read: the same positions, the
    # same verdict, in milliseconds (28 ms for 1024 pieces) beside reading and pasting them
    return assemble(tiles, pos, flatten=flatten, max_pixels=max_pixels, name=name, pixel_size_A=pixel,
                    extent=(h, w))


# --------------------------------------------------------------------------------------------------- seams


@dataclass(frozen=True)
class Seam:
    """A seam found and removed: axis 0 = a run of rows (start..stop-1) across columns lo..hi-1, axis 1 =
    a run of columns across rows lo..hi-1; contrast = its mean deviation relative to the image level."""

    axis: int
    start: int
    stop: int
    lo: int
    hi: int
    contrast: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


def _shifts(mesh: Any, axis: int, max_width: int) -> list[tuple[int, int]]:
    """(dy, dx) shifts that map the scene onto itself but move a seam along `axis` off itself: +-1, +-2, +-3
    times the lattice vector with the largest step across the seam; without a mesh, rows (columns) just
    beyond a seam's width."""
    if mesh is None:
        d = max_width + 2
        rows = [(d, 0), (-d, 0), (d + 2, 0), (-(d + 2), 0)]
        return rows if axis == 0 else [(dx, dy) for dy, dx in rows]
    a = np.asarray(mesh.basis[0], dtype=np.float64)
    b = np.asarray(mesh.basis[1], dtype=np.float64)
    cands = [a, b, a + b, a - b]
    comp = 1 if axis == 0 else 0  # y moves row seams, x moves column seams
    v = max(cands, key=lambda c: abs(c[comp]))
    out = []
    for k in (1, -1, 2, -2, 3, -3):
        dx, dy = round(k * v[0]), round(k * v[1])
        if abs(dy if axis == 0 else dx) > max_width:
            out.append((dy, dx))
    return out


def _median_rows(d: np.ndarray, *, finite: bool = False, overwrite: bool = False) -> np.ndarray:
    """np.median(d, axis=1), the same values, ~3-5x faster: np.median partitions at both middle elements
    (kth=[k - 1, k]), which is far slower than one partition at k plus the maximum of the lower half (the
    lower middle element); their mean is taken as np.median takes it (in d's dtype). finite: the caller
    knows d holds no NaN (else it is checked: a NaN makes np.median's row NaN, so those go to it).
    overwrite: d is scratch, partitioned in place (no copy of it)."""
    n = d.shape[1]
    if n == 0 or (not finite and np.isnan(d).any()):
        return np.median(d, axis=1, overwrite_input=overwrite)
    k = n // 2
    if overwrite:
        d.partition(k, axis=1)
        part = d
    else:
        part = np.partition(d, k, axis=1)
    hi = part[:, k]
    if n % 2:
        return hi
    lo = part[:, :k].max(axis=1)
    return np.mean(np.stack([lo, hi], axis=1), axis=1)


def _row_residual(img: np.ndarray, shifts: list[tuple[int, int]], axis: int) -> np.ndarray:
    """Per row (axis 0) or column (axis 1): the median over the other axis of the image minus its shifted
    copy, then the median over the shifts (NaN where no shift fits)."""
    # Lines along the rows of `view`: for columns (axis 1) the transpose, so both axes are one case below.
    view = img if axis == 0 else img.T
    n, m = view.shape
    step = max(1, m // 1024)  # ~1024 samples along a line make a steady median
    per_shift = np.full((len(shifts), n), np.nan)
    # A NaN or inf pixel could make a difference NaN: then _median_rows checks each difference. (A finite sum
    # means every pixel is finite; an overflow to inf only sends the search down the checked path.)
    with np.errstate(all="ignore"):
        finite = bool(np.isfinite(np.sum(img)))
    # Shifts come in pairs +-v: line r's pixel pairs under -v are line r - v's under +v (the same sample columns),
    # each difference negated; so are the medians, to the bit (IEEE negation commutes with subtraction, the order
    # statistics and their mean). So only one of each pair is measured; the other is filled in below.
    measured: list[tuple[int, int, int, int, int, int, int]] = []
    mirrored: list[tuple[int, int, int, int, int]] = []
    done: dict[tuple[int, int], int] = {}
    for k, (dy, dx) in enumerate(shifts):
        across, along = (dy, dx) if axis == 0 else (dx, dy)
        r0, r1 = max(0, -across), min(n, n - across)
        c0, c1 = max(0, -along), min(m, m - along)
        if r1 - r0 < 8 or c1 - c0 < 8:
            continue
        j = done.get((-dy, -dx))
        if j is None:
            done[(dy, dx)] = k
            measured.append((k, across, along, r0, r1, c0, c1))
        else:
            mirrored.append((k, j, across, r0, r1))
    width = len(range(0, m, step))
    # Lines in blocks (64 rows, 128 columns) through every measured shift before the next block: the block's
    # pixels are read from cache for each shift, and its differences are partitioned in place while still in
    # cache (~25 % less time than whole shifts at 4096²). Blocks on worker threads (_workers), each thread with
    # its own scratch arrays (each line's median is its own: the same bits on any number of threads).
    block = 64 if axis == 0 else 128
    dtype = np.result_type(img.dtype, img.dtype)
    scratch: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def lines(i: int, slot: int) -> None:
        if slot not in scratch:
            buf = np.empty(block * width, dtype=dtype)
            scratch[slot] = (buf, np.empty_like(buf) if axis == 1 else buf[:0])
        buf, flipped = scratch[slot]
        first, last = i * block, min((i + 1) * block, n)
        for k, across, along, r0, r1, c0, c1 in measured:
            lo, hi = max(first, r0), min(last, r1)
            if hi <= lo:
                continue
            count = len(range(c0, c1, step))
            d = buf[: (hi - lo) * count].reshape(hi - lo, count)
            if axis == 0:
                # Every step-th pixel of each row, read in place (strided, no copy of the samples first).
                np.subtract(view[lo:hi, c0:c1:step], view[lo + across : hi + across, c0 + along : c1 + along : step],
                            out=d)
            else:
                # Columns: the differences of every step-th row (contiguous reads), then transposed by cv2, so
                # that the partition runs along contiguous rows (~2x faster).
                t = flipped[: d.size].reshape(count, hi - lo)
                np.subtract(img[c0:c1:step, lo:hi], img[c0 + along : c1 + along : step, lo + across : hi + across],
                            out=t)
                d = cv2.transpose(t, dst=d)
            per_shift[k, lo:hi] = _median_rows(d, finite=finite, overwrite=True)

    _workers.run_all(lines, -(-n // block))
    for k, j, across, r0, r1 in mirrored:
        # 0 - x, not -x: a zero median stays +0.0.
        per_shift[k, r0:r1] = 0.0 - per_shift[j, r0 + across : r1 + across]
    import warnings

    from .io import held_warnings  # not interleaved with a reader's own swap (io._own_warnings)

    with held_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # Near the image's edges only the shifts one way fit: ask for one each way (the list alternates
        # +k, -k), so an edge's own gradient is never a seam.
        fin = np.isfinite(per_shift)
        both = fin[0::2].any(axis=0) & fin[1::2].any(axis=0)
        return np.where(both, nanmedian(per_shift, axis=0), np.nan)


def _seams_1d(img: np.ndarray, axis: int, mesh: Any, max_width: int, threshold: float, min_contrast: float,
              scale: float) -> list[Seam]:
    """Runs of at most max_width rows (axis 0) or columns (axis 1) that differ from their lattice-shifted
    copies across the whole image."""
    shifts = _shifts(mesh, axis, max_width)
    if not shifts:
        return []
    resid = _row_residual(img, shifts, axis)
    ok = np.isfinite(resid)
    if ok.sum() < 16:
        return []
    med = float(median(resid[ok]))
    mad = float(median(np.abs(resid[ok] - med))) * 1.4826
    flag = ok & (np.abs(resid - med) > threshold * max(mad, 1e-9)) & (np.abs(resid - med) > min_contrast * scale)
    n = len(resid)
    other = img.shape[1] if axis == 0 else img.shape[0]
    seams: list[Seam] = []
    r = 0
    while r < n:
        if not flag[r]:
            r += 1
            continue
        s0 = r
        while r < n and flag[r]:
            r += 1
        if r - s0 <= max_width and s0 > 0 and r < n:
            seams.append(Seam(axis, s0, r, 0, other, float((resid[s0:r] - med).mean() / scale)))
    return seams


def remove_seams(
    image: np.ndarray,
    *,
    mesh: Any = None,
    max_width: int = 12,
    threshold: float = 8.0,
    min_contrast: float = 0.05,
) -> tuple[np.ndarray, tuple[Seam, ...]]:
    """A copy of a stitched atlas with thin straight seams (bright or dark rows/columns, up to `max_width`
    px, e.g. where tiles were joined) replaced by interpolation across them, and the seams found.

    A row is compared with its copy shifted by a lattice vector of the mesh (mesh.Mesh; measured when None):
    the shift maps squares and bars onto themselves, so their differences are as often positive as negative
    and the row's median difference is ~0, at any mesh angle; a seam does not move with the lattice, so its
    rows stand out. Rows more than `threshold` robust deviations and `min_contrast` of the bright level
    (90th percentile) away, in runs of at most `max_width`, are seams."""
    img = np.array(image, dtype=np.float32, copy=True)
    if img.ndim != 2 or min(img.shape) < 4 * (max_width + 4):
        return img, ()
    if mesh is None:
        from .mesh import measure_mesh

        mesh = measure_mesh(img)
    h, w = img.shape
    scale = max(float(percentile(img[:: max(1, h // 512), :: max(1, w // 512)], 90)), 1e-6)
    found: list[Seam] = []
    for axis in (0, 1):
        seams = _seams_1d(img, axis, mesh, max_width, threshold, min_contrast, scale)
        view = img if axis == 0 else img.T
        for s in seams:
            before = view[s.start - 1].astype(np.float32)
            after = view[s.stop].astype(np.float32)
            k = s.stop - s.start
            for i in range(k):
                t = np.float32((i + 1) / (k + 1))
                view[s.start + i] = before * (1 - t) + after * t
        found.extend(seams)
    return img, tuple(found)


# ------------------------------------------------------------------------------------- tile offsets (stitched)

# tile_steps: the window either side of a line spans this many lattice vectors (one: a step's response is a
# triangle that wide, so one vector places it best; two were steadier but placed steps a fifth of a pitch off);
# blocks along the line are at least this wide (px) and two pitches; a block's log ratio is the running median
# over this many neighbouring blocks (a tile's step holds along its whole width, an odd square's in one block); a
# line's strength is this quantile of its blocks' values; a step is at least this strong (log ratio) and this
# many times the typical line's strength.
_STEP_VECTORS = 1
_STEP_BLOCK_PX = 64
_STEP_RUN = 5
_STEP_MIN = 0.15
_STEP_OVER_TYPICAL = 3.0
_STEP_SHARE = 0.75


def _non_negative(img: np.ndarray) -> bool:
    """Whether brightness ratios mean something: at most 1 % of the pixels (every 4th in each direction) below 0.

    A dark-subtracted atlas has a few negative noise pixels on its bars (one of them turned every step off, review);
    a zero-mean, normalised copy has about half."""
    sample = img[::4, ::4]
    return int(np.count_nonzero(sample < 0)) <= 0.01 * sample.size


def tile_steps(image: np.ndarray, mesh: Any, axis: int, *, valid: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Straight brightness steps along rows (axis 0) or columns (axis 1) of a stitched atlas: where one tile's gain
    meets another's with no seam drawn (a gap hidden in a bar, no blend line). (position, strength) per step, the
    strength the median |log ratio| of the brightness below / above the line over blocks along it.

    The window above a line is compared with the window below it shifted by a lattice vector of the mesh: the two
    hold the same squares and bars pixel for pixel (at any mesh angle), so their means differ only by the squares'
    own ice (random from square to square) and by a gain step at the line (the same along a tile's whole width).
    `valid` (the grid disc): only blocks whose windows lie wholly on it count. A gain multiplies brightness, so
    the ratios mean something only for non-negative data: an image with more than 1 % of its values below 0 (a
    zero-mean, normalised atlas) gives no steps; a few negative noise pixels (dark subtraction) are no matter, as
    blocks whose sums are not positive count for nothing."""
    img = np.asarray(image)
    if img.size == 0 or not _non_negative(img):
        return []
    h, w = img.shape if axis == 0 else img.shape[::-1]  # h: positions across the line, w: along it
    a = np.asarray(mesh.basis[0], dtype=np.float64)
    b = np.asarray(mesh.basis[1], dtype=np.float64)
    comp = 1 if axis == 0 else 0  # rows: the y component moves across the line
    v = max((a, b, a + b, a - b), key=lambda c: abs(c[comp]))
    v = _STEP_VECTORS * (v if v[comp] > 0 else -v)
    across, along = int(round(v[comp])), int(round(v[1 - comp]))
    width = max(_STEP_BLOCK_PX, int(round(2 * mesh.pitch_px)))
    lo, hi = max(0, -along), w - max(0, along) - width
    if across < 4 or hi <= lo or h <= 2 * across + 2:
        return []
    n = (hi - lo) // width + 1
    if n < _STEP_RUN:
        return []

    def block_rows(x: np.ndarray, first: int) -> np.ndarray:
        # Sums over n blocks of `width` along the line from `first`, accumulated across it: (h + 1, n), float64.
        # (Summed in the array's own type, float32 for an image: 2-pitch blocks, far inside its precision; the
        # sums over rows of a row band read contiguous memory for either axis. A 0/1 mask is summed as int64
        # through sum's small buffers: reduceat with dtype= would cast the whole slice, 8 bytes a pixel.)
        if axis == 0 and x.dtype == np.float32:
            sums = np.add.reduceat(x[:, first : first + n * width], np.arange(0, n * width, width), axis=1)
        elif axis == 0:
            sums = x[:, first : first + n * width].reshape(x.shape[0], n, width).sum(axis=2, dtype=np.int64)
        else:
            sums = x[first : first + n * width].reshape(n, width, x.shape[1]).sum(axis=1).T
        return np.vstack([np.zeros((1, n)), np.cumsum(sums, axis=0, dtype=np.float64)])

    data = img if img.dtype == np.float32 else img.astype(np.float32)
    top = block_rows(data, lo)
    bottom = block_rows(data, lo + along)
    lines = np.arange(across, h - across + 1)
    up = top[lines] - top[lines - across]
    down = bottom[lines + across] - bottom[lines]
    good = (up > 0) & (down > 0)
    if valid is not None:
        full = float(across * width)
        inside = np.ascontiguousarray(valid, dtype=bool).view(np.uint8)  # 0/1 bytes, summed as int64
        vt = block_rows(inside, lo)
        vb = block_rows(inside, lo + along)
        good &= (vt[lines] - vt[lines - across] >= full) & (vb[lines + across] - vb[lines] >= full)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(good, np.log(np.where(good, down, 1.0) / np.where(good, up, 1.0)), 0.0)
    # The running median over _STEP_RUN blocks (the end blocks repeated; scipy.ndimage's median_filter would
    # import numpy.ma into a finder run). Off the disc a block counts as no step (0): a run half off the disc is
    # damped, never made up.
    half = _STEP_RUN // 2
    padded = np.pad(ratio, ((0, 0), (half, half)), mode="edge")
    stack = np.stack([padded[:, k : k + n] for k in range(_STEP_RUN)])
    run = np.abs(np.partition(stack, half, axis=0)[half])
    counted = good.sum(axis=1)
    enough = counted >= _STEP_RUN
    if not enough.any():
        return []
    # A line's strength: the _STEP_SHARE quantile of its blocks' |running median| (a boundary where some tiles
    # happen to have the same gain still stands out), over the blocks on the disc (the others sort first).
    ranked = np.sort(np.where(good, run, -1.0)[enough], axis=1)
    first = n - counted[enough]
    pick = first + np.floor(_STEP_SHARE * (counted[enough] - 1)).astype(np.int64)
    strength = np.full(len(lines), np.nan)
    strength[enough] = np.take_along_axis(ranked, pick[:, None], axis=1)[:, 0]
    typical = float(median(strength[enough]))
    floor = max(_STEP_MIN, _STEP_OVER_TYPICAL * typical)
    # Peaks: strongest first, none within a window's height of a stronger one (a step's response is a triangle
    # that wide).
    order = np.argsort(-np.nan_to_num(strength, nan=-1.0), kind="stable")
    taken: list[tuple[int, float]] = []
    for i in order.tolist():
        s = strength[i]
        if not s >= floor:
            break
        pos = int(lines[i])
        if all(abs(pos - p) > across for p, _ in taken):
            taken.append((pos, float(s)))
    return sorted(taken)


def tile_boundaries(positions: Sequence[float], size: int, *, weights: Sequence[float] | None = None,
                    merge_px: float = 24.0, min_step: float = 64.0, tolerance_px: float = 6.0,
                    finer: bool = False) -> list[int]:
    """Tile boundaries along one axis from the seams found there. A montage's tiles are taken on a regular grid: the
    spacing that puts the most seams on one grid, less a quarter for each boundary of it with no seam (ties: the
    larger spacing), gives every boundary of that grid, those with no visible line too (a brightness step is left
    there); seams off it (a false seam, the far side of a wide gap) are not boundaries. With fewer than two seams on
    a grid, the seams as found. A seam is on the grid within `tolerance_px` (or a hundredth of the spacing). Only
    seams at the grid's boundaries count for a spacing: a seam within a quarter spacing of the image's edge (where
    the grid gives no boundary) no longer counts for it. finer (the positions include gain steps, absent where two
    tiles' gains happen to match): a smaller spacing through the same seams and more, with seams at more than half
    its boundaries, is taken over the larger one."""
    wts = [1.0] * len(positions) if weights is None else [abs(float(v)) for v in weights]
    # Seams in a chain each within merge_px of the next are one boundary (the two edges of a wide gap, the
    # rows beside a strong step): the strongest seam of the chain (weights), else their middle.
    pos: list[float] = []
    chain: list[tuple[float, float]] = []
    for p, wt in sorted(zip((float(v) for v in positions), wts)) + [(math.inf, 0.0)]:
        if chain and p - chain[-1][0] > merge_px:
            top = max(c[1] for c in chain)
            strongest = [c[0] for c in chain if c[1] >= top]
            pos.append(0.5 * (min(strongest) + max(strongest)))
            chain = []
        chain.append((p, wt))
    if len(pos) < 2:
        return [int(round(p)) for p in pos]
    arr = np.asarray(pos)
    best: tuple[float, float, float, int] | None = None
    grids: list[tuple[float, float, float, int, int, frozenset[int]]] = []
    for i in range(len(arr)):
        for j in range(i + 1, len(arr)):
            for m in range(1, 9):
                step = (arr[j] - arr[i]) / m
                if step < min_step:
                    break
                tol = max(tolerance_px, 0.01 * step)
                k = np.rint((arr - arr[i]) / step)
                k_first, k_last = _grid_k_range(float(arr[i]), step, size)
                # Only seams at the grid's boundaries count for it: one within a quarter step of the image's edge
                # is no boundary it gives (a grid whose only other seam lies there would give one boundary).
                on = (np.abs(arr - arr[i] - k * step) <= tol) & (k >= k_first) & (k <= k_last)
                count = int(on.sum())
                # A finer grid always fits as many seams: each grid boundary without a seam counts against it.
                n_grid = k_last - k_first + 1
                merit = count - 0.25 * max(0, n_grid - count)
                grids.append((merit, step, float(arr[i]), count, n_grid, frozenset(np.flatnonzero(on).tolist())))
                if best is None or (merit, step) > (best[0], best[1]):
                    best = (merit, step, float(arr[i]), count)
    if best is None or best[3] < 2:
        return [int(round(p)) for p in pos]
    if finer and _edge_tile_narrow(best[1], best[2], size):
        chosen = next(g[5] for g in grids if g[:4] == best)
        # Seams at 996 and 2986 px fit a 1990 px grid with no empty boundary, and the true 995 px one with one
        # (1991, between tiles of like gain): the one empty boundary must not outweigh a first tile half a
        # spacing wide.
        held = [g for g in grids if g[1] < best[1] and g[5] >= chosen and 2 * g[3] > g[4]]
        if held:
            best = max(held, key=lambda g: (g[0], g[1]))[:4]
    _, step, p0, _ = best
    k = np.rint((arr - p0) / step)
    inl = np.abs(arr - p0 - k * step) <= max(tolerance_px, 0.01 * step)
    design = np.column_stack([np.ones(int(inl.sum())), k[inl]])
    (c, step), *_ = np.linalg.lstsq(design, arr[inl], rcond=None)
    return _grid_positions(c, step, size, dict(zip(k[inl].astype(int).tolist(), arr[inl].tolist())))


def _grid_positions(c: float, step: float, size: int, found: dict[int, float]) -> list[int]:
    """The boundaries of the grid c + k x step inside the image (_grid_k_range): a seam's own position where one
    was found at k (the stitch's real cut), the grid's elsewhere."""
    k_lo, k_hi = _grid_k_range(c, step, size)
    return [int(round(found.get(i, c + i * step))) for i in range(k_lo, k_hi + 1)]


def _grid_k_range(p0: float, step: float, size: int) -> tuple[int, int]:
    """First and last k of the grid p0 + k x step that lie inside the image, none within a quarter spacing of its
    edge (a seam there is no tile boundary)."""
    return math.ceil((0.25 * step - p0) / step), math.floor((size - 0.25 * step - p0) / step)


def _edge_tile_narrow(step: float, p0: float, size: int) -> bool:
    """Whether the grid through p0 at `step` leaves a tile at either edge of the image under 0.9 of a spacing wide.

    An uncropped montage's edge tiles are at least a tile wide: a grid that makes one narrower (1990 px through
    996 and 2986 of a 4096 px stitch) may be missing boundaries, while one with wide edge tiles (600 px tiles of a
    3072 px stitch, a false line at 900) is not taken finer (review: it split every tile in two)."""
    k_first, k_last = _grid_k_range(p0, step, size)
    return p0 + k_first * step < 0.9 * step or size - (p0 + k_last * step) < 0.9 * step


def _near(p: float, ps: Sequence[float], tol: float) -> bool:
    """Whether p lies within tol of any of ps."""
    return min((abs(p - q) for q in ps), default=math.inf) <= tol


def square_tile_grid(rows: list[int], cols: list[int], shape: tuple[int, int], *, tolerance_px: float = 6.0,
                     seams: tuple[Sequence[float], Sequence[float]] | None = None) -> tuple[list[int], list[int]]:
    """Tile boundaries (rows, cols) with one axis's spacing lent to the other where that one's are too few or miss
    its own seams.

    A montage's tiles are taken on one grid with the same overlap both ways, and square cameras make square tiles:
    where one axis's boundaries are a regular grid of three or more holding at least two drawn seams (`seams`: the
    positions of drawn seams per axis; None: each axis's boundaries are its seams), and the other axis has two drawn
    seams one or two of that spacing apart (to a pixel: 1 % of a spacing), all its seams on a grid of that spacing,
    the other axis takes every boundary of that grid (its own positions where found) when its own boundaries are
    fewer, all on that grid (a tile boundary between tiles of like gain and with no seam drawn shows nothing there),
    or leave out one of its seams away from the image's edge (a grid through brightness steps, which place a
    boundary to a fraction of a pitch only, at another spacing). Otherwise (rectangular tiles, a seam off the
    spacing, a single seam) each axis keeps its own."""
    drawn = (rows, cols) if seams is None else seams
    out = [list(rows), list(cols)]
    for lend, take in ((0, 1), (1, 0)):
        grid, own = (rows, cols)[lend], (rows, cols)[take]
        found = sorted(float(p) for p in drawn[take])
        if len(grid) < 3 or len(found) < 2:
            continue
        diffs = np.diff(np.asarray(grid, dtype=np.float64))
        step = float(median(diffs))
        tol = max(tolerance_px, 0.01 * step)
        if step <= 0 or np.abs(diffs - step).max() > tol:
            continue
        # A grid through brightness steps alone may be wrong (review): the lender holds two drawn seams.
        if sum(_near(float(q), drawn[lend], tol) for q in grid) < 2:
            continue
        pos = np.asarray(found, dtype=np.float64)
        k = np.rint((pos - pos[0]) / step)
        dev = pos - pos[0] - k * step
        if np.abs(dev).max() > tol:
            continue
        # Square tiles are assumed, not known (a K2's are 3.4 % off square: 40 px of drift across a stitch from
        # one seam): two drawn seams, placed to a pixel, one or two spacings apart show the spacing is this axis's.
        sq_tol = max(2.0, 0.01 * step)
        if not any(1 <= k[j] - k[i] <= 2 and abs(dev[j] - dev[i]) <= sq_tol
                   for i in range(len(pos)) for j in range(i + 1, len(pos))):
            continue
        c = float(np.mean(pos - k * step))
        size = shape[take]
        lent = _grid_positions(c, step, size, dict(zip(k.astype(int).tolist(), found)))
        # A seam within a quarter spacing of the edge is no boundary (tile_boundaries drops it): it cannot show a
        # grid missed; nor can a single seam (review: one false seam replaced a correct grid).
        inside = [p for p in found if 0.25 * step <= p <= size - 0.25 * step]
        missed = any(not _near(p, own, tol) for p in inside)
        fewer = len(lent) > len(own) and all(_near(float(q), lent, tol) for q in own)
        if fewer or (missed and all(_near(p, lent, tol) for p in inside)):
            out[take] = lent
    return out[0], out[1]


def flatten_tile_offsets(
    image: np.ndarray,
    seams: Sequence[Seam],
    *,
    pitch_px: float,
    valid: np.ndarray | None = None,
    min_change: float = 0.05,
    min_contrast: float = 0.15,
    in_place: bool = False,
    mesh: Any = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Divide each tile of a stitched atlas by its brightness gain; the tiles are the cells between the seams of at
    least `min_contrast` (remove_seams; with the grid they imply: tile_boundaries). Returns the flattened image (the
    input itself when no gain differs from 1 by `min_change` or more) and the gains per cell (rows x cols) or None.
    in_place: a float32 image the caller owns (remove_seams' copy) is divided in place, not copied.
    mesh: the atlas's mesh (mesh.Mesh): brightness steps with no seam (tile_steps) are tile boundaries too.

    Across each boundary the mean of a band on either side (two mesh pitches wide, so it holds whole periods of the
    mesh: the same mean for the same gain) gives the ratio of the two cells' gains, where `valid` (the grid disc)
    holds on both sides; the gains are solved for by least squares in log space (as tile_gains for a montage's
    pieces), their geometric mean 1."""
    h, w = image.shape
    edges: dict[int, list[float]] = {0: [], 1: []}
    strength: dict[int, list[float]] = {0: [], 1: []}
    for s in seams:
        # Weak "seams" are found beside a strong brightness step too (rows that straddle it): a tile boundary
        # needs a seam of some contrast (a gap, a blend line, a gain band); the grid fills in the rest.
        if abs(s.contrast) >= min_contrast:
            edges[s.axis].append((s.start + s.stop) / 2.0)
            strength[s.axis].append(abs(s.contrast))
    tolerance = 6.0
    drawn = (list(edges[0]), list(edges[1]))
    stepped = [False, False]
    if mesh is not None and edges[0] + edges[1]:
        # A boundary shows a seam only where the stitch drew one (a gap inside a bar shows none, nor does a plain
        # cut): the gain steps mark the others (merged with a seam beside them, the stronger one kept).
        for axis in (0, 1):
            for pos, step in tile_steps(image, mesh, axis, valid=valid):
                edges[axis].append(float(pos))
                strength[axis].append(step)
                stepped[axis] = True
        # A step is placed to a fraction of a pitch (its windows gain or lose a row of squares per pitch), a seam
        # to a pixel: the grid takes the steps within a quarter pitch.
        tolerance = max(tolerance, 0.25 * float(pitch_px))
    # Two tile boundaries are many mesh pitches apart: seams closer than a pitch are one.
    merge = max(24.0, float(pitch_px))
    # With steps among them, a boundary between tiles of like gain shows nothing: tile_boundaries' finer grid.
    rows_b = tile_boundaries(edges[0], h, weights=strength[0], merge_px=merge, tolerance_px=tolerance,
                             finer=stepped[0])
    cols_b = tile_boundaries(edges[1], w, weights=strength[1], merge_px=merge, tolerance_px=tolerance,
                             finer=stepped[1])
    rows_b, cols_b = square_tile_grid(rows_b, cols_b, (h, w), tolerance_px=tolerance, seams=drawn)
    if not rows_b and not cols_b:
        return image, None
    wid = {0: {}, 1: {}}
    for s in seams:
        wid[s.axis][int(round((s.start + s.stop) / 2.0))] = (s.start, s.stop)
    band = max(4, int(round(2 * pitch_px)))
    ry = [0] + rows_b + [h]
    cx = [0] + cols_b + [w]
    nr, nc = len(ry) - 1, len(cx) - 1
    ok = np.ones((h, w), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    floor = 0.05 * max(float(percentile(image[:: max(1, h // 512), :: max(1, w // 512)], 90)), 1e-6)
    eqs: list[tuple[int, int, float, float]] = []
    sides: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}

    def boundary(axis: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        # Boundary k along `axis` (0: between row cells), along its whole length: the band means either side
        # and where both bands are valid; each cell's comparison takes its part (numpy's float64 band means are
        # per position, the same bits over the whole length as over a cell's part of it: one call, not one
        # per cell).
        if (axis, k) not in sides:
            bnd = (ry if axis == 0 else cx)[k + 1]
            start, stop = wid[axis].get(bnd, (bnd, bnd))
            size = h if axis == 0 else w
            n0, n1 = max(0, start - band), min(size, stop + band)
            if start - n0 < band // 2 or n1 - stop < band // 2:
                sides[(axis, k)] = None
            else:
                view, vmask = (image, ok) if axis == 0 else (image.T, ok.T)
                use = np.asarray(vmask[n0:start].all(axis=0) & vmask[stop:n1].all(axis=0))
                # Means across the band first (one pass), then over the positions where both sides are valid.
                sides[(axis, k)] = (view[n0:start].mean(axis=0, dtype=np.float64),
                                    view[stop:n1].mean(axis=0, dtype=np.float64), use)
        return sides[(axis, k)]

    def compare(axis: int, k: int, lo: int, hi: int, a: int, b: int) -> None:
        # Boundary k along `axis`, over lo..hi of the other axis; cells a | b.
        found = boundary(axis, k) if hi - lo >= band else None
        if found is None:
            return
        left, right, valid = found
        use = valid[lo:hi]
        if use.sum() < band:
            return
        ml = float(left[lo:hi][use].mean())
        mr = float(right[lo:hi][use].mean())
        if ml > floor and mr > floor:
            eqs.append((a, b, math.log(mr / ml), float(use.sum())))

    for k in range(nr - 1):
        for j in range(nc):
            compare(0, k, cx[j], cx[j + 1], k * nc + j, (k + 1) * nc + j)
    for k in range(nc - 1):
        for i in range(nr):
            compare(1, k, ry[i], ry[i + 1], i * nc + k, i * nc + k + 1)
    n = nr * nc
    if not eqs:
        return image, None
    mat = np.zeros((len(eqs) + n + 1, n))
    rhs = np.zeros(len(eqs) + n + 1)
    for e, (a, b, d, weight) in enumerate(eqs):
        sw = math.sqrt(weight)
        mat[e, b], mat[e, a], rhs[e] = sw, -sw, sw * d
    # A weak pull to 1 decides cells no comparison reaches; the product of the gains is 1.
    mat[len(eqs) : len(eqs) + n] = 1e-3 * np.eye(n)
    mat[-1] = 1.0
    # Normal equations (full rank: the prior rows): a small solve, where lstsq's SVD costs ~30x more.
    sol = np.linalg.solve(mat.T @ mat, mat.T @ rhs)
    sol -= sol.mean()
    gains = np.exp(sol).reshape(nr, nc)
    if np.abs(sol).max() < math.log1p(min_change):
        return image, gains
    # One multiply by a (rows x cols) gain map built from the per-cell rows and columns.
    row_cell = np.repeat(np.arange(nr), np.diff(ry))
    col_cell = np.repeat(np.arange(nc), np.diff(cx))
    inv = (1.0 / gains).astype(np.float32)
    own = in_place and image.dtype == np.float32 and image.flags.c_contiguous and image.flags.writeable
    out = image if own else np.empty((h, w), dtype=np.float32)
    for i in range(nr):
        np.multiply(image[ry[i] : ry[i + 1]], inv[i][col_cell][None, :], out=out[ry[i] : ry[i + 1]])
    del row_cell
    return out, gains
