"""Reading images: MRC (modes 0, 1, 2, 6, 12), TIFF, PNG and JPEG into float32 2-D arrays.

A SerialEM montage stack (an MRC stack with its `.mdoc` beside it, `NAME.mrc.mdoc` or `NAME.mdoc`, whose
sections carry `PieceCoordinates`) is read as the assembled montage (montage.read_montage: pieces placed in
the nominal montage frame, tile brightness flattened), with the .mdoc's pixel size, unless a section is
asked for. The pixel budget applies to the stack and to the assembled size, both checked before reading.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, cast

import numpy as np

from .errors import (
    CorruptFileError,
    MissingFileError,
    NonFiniteError,
    OptionError,
    PtolemyError,
    ShapeError,
    TooLargeError,
    TooSmallError,
    UnsupportedFormatError,
    one_line,
    size_text,
)
from .mrcdims import MRC_ITEMSIZE, MRC_SUFFIXES, mrc_byte_order  # numpy-free (sessions reads stack headers)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Image",
    "ImageLike",
    "as_image",
    "atomic_write",
    "check_min_size",
    "montage_mdoc",
    "read_image",
    "read_montage_frame",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = {".tif", ".tiff"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
MRC_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
# The most pixels a file may claim (all sections together) unless the caller raises it (--max-pixels).
DEFAULT_MAX_PIXELS = 1 << 28
# A compressed file claiming more than this many times its own size is treated as a decompression bomb; a raster
# image of at most RATIO_FREE_PIXELS whose samples take at most RATIO_FREE_BYTES decoded is not tested (a blank
# or near-blank 4096x4096 float64 or 16-bit RGB one compresses past the ratio; a float64 RGBA one is 512 MiB).
MAX_RATIO = 1000
RATIO_FREE_PIXELS = 1 << 24
RATIO_FREE_BYTES = 256 << 20
# A raster's pixels as decoded (all channels, all bytes) may take this many bytes per pixel of the budget: the
# size of the float32 image the budget allows. A 16384x16384 16-bit RGB TIFF of zeros (1.6 MB, padded past the
# ratio test) needed 3.2 GB to decode; colour and float rasters above 1 GiB of pixels need --max-pixels.
DECODE_BYTES_PER_PIXEL = 4
MAX_PAGES = 4096
# OpenCV's own decoder limit (default 2**30 pixels) is read once, at the first decode: lower it to our budget
# so that a header we cannot parse (BigTIFF, exotic JPEG) cannot make OpenCV allocate gigabytes either.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))


@dataclass(frozen=True)
class Image:
    """A 2-D float32 image with what we know of where it came from."""

    data: np.ndarray
    pixel_size_A: float | None = None
    source: str | None = None
    dtype: str = "float32"
    section: int | None = None
    pieces: int = 0  # montage pieces assembled into `data` (0: a single image or section)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the data."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def name(self) -> str:
        """The source path, or '<array>' for in-memory data (used in error messages)."""
        return self.source if self.source is not None else "<array>"


ImageLike = Union[Image, np.ndarray, str, os.PathLike]


def _validate(data: np.ndarray, name: str) -> np.ndarray:
    """Check shape and finiteness; return a C-contiguous float32 copy-or-view."""
    if data.ndim != 2:
        raise ShapeError(f"{name}: expected a 2-D image, got an array of shape {tuple(data.shape)}")
    if data.size == 0 or min(data.shape) < 1:
        raise ShapeError(f"{name}: the image is empty (shape {tuple(data.shape)})")
    if data.dtype.kind not in "biuf":
        raise UnsupportedFormatError(f"{name}: unsupported pixel type {data.dtype}")
    out = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise NonFiniteError(f"{name}: {bad} pixel(s) are NaN or infinite")
    return out


def _section_index(n: int, section: int | None, name: str, stacklevel: int) -> int:
    """The index (0 to n - 1) of `section` in a stack of n (negative: from the end); 0 with a warning (at the
    caller's `stacklevel`) when none is given; ShapeError for one the stack does not have."""
    if section is None:
        warnings.warn(f"{name}: a stack of {n} sections; using section 0 (choose with --section)",
                      stacklevel=stacklevel + 1)
        section = 0
    if not -n <= section < n:
        raise ShapeError(f"{name}: section {section} does not exist (the stack has {n})")
    return section % n


def _pick_section(data: np.ndarray, section: int | None, name: str) -> tuple[np.ndarray, int | None]:
    """Take one section of a stack (section 0 with a warning when none is given)."""
    if data.ndim == 3 and data.shape[0] == 1 and section in (None, 0):
        return data[0], None
    if data.ndim == 3:
        index = _section_index(data.shape[0], section, name, stacklevel=3)
        return data[index], index
    if section not in (None, 0):
        raise ShapeError(f"{name}: section {section} requested but the file holds a single 2-D image")
    return data, None


def _mrc_header(head: bytes, name: str) -> np.recarray:
    """The 1024-byte MRC header as a record, in the byte order its mode makes sense in."""
    from mrcfile.dtypes import HEADER_DTYPE

    if len(head) < HEADER_DTYPE.itemsize:
        raise CorruptFileError(f"{name}: too short for an MRC header ({len(head)} of 1024 bytes)")
    header = np.frombuffer(head[: HEADER_DTYPE.itemsize], dtype=HEADER_DTYPE).reshape(())
    return header.view(header.dtype.newbyteorder(mrc_byte_order(head))).view(np.recarray)


# An MRC extended header's size at most: FEI's and SerialEM's hold under 1 kB a section (FEI1: 128 bytes, for
# 1024 sections), with room for a writer's own metadata block.
MAX_EXTENDED_HEADER = 16 << 20
EXTENDED_HEADER_PER_SECTION = 4096


def _mrc_claim(header: np.recarray, name: str, max_pixels: int) -> tuple[int, int]:
    """Check what an MRC header claims against the pixel budget; return (data offset, data bytes)."""
    mode = int(header.mode)
    if mode not in MRC_ITEMSIZE:
        raise UnsupportedFormatError(f"{name}: unsupported MRC mode {mode} (modes 0, 1, 2, 6, 12 are read)")
    nx, ny, nz, mz = (int(header.nx), int(header.ny), int(header.nz), int(header.mz))
    nsymbt, ispg = int(header.nsymbt), int(header.ispg)
    if min(nx, ny, nz) < 1:
        raise CorruptFileError(f"{name}: the MRC header gives dimensions nx={nx}, ny={ny}, nz={nz}; "
                               "each must be at least 1")
    if nsymbt < 0:
        raise CorruptFileError(f"{name}: the MRC header gives a negative extended header size ({nsymbt})")
    if nsymbt > MAX_EXTENDED_HEADER + EXTENDED_HEADER_PER_SECTION * nz:
        # mrcfile reads the extended header whole, into memory: a 1 GB one took 3 GB before the file was refused.
        raise CorruptFileError(f"{name}: the MRC header claims an extended header of {size_text(nsymbt)} for "
                               f"{nz} section(s), more than any writer puts there (at most "
                               f"{size_text(MAX_EXTENDED_HEADER + EXTENDED_HEADER_PER_SECTION * nz)})")
    if 401 <= ispg <= 630 and (mz < 1 or nz % mz):
        # mrcfile divides nz by mz for a volume stack (space groups 401-630).
        raise CorruptFileError(f"{name}: error in dimensions for volume stack: nz should be divisible by mz. "
                               f"Found nz = {nz}, mz = {mz}")
    if nx * ny > max_pixels or nx * ny * nz > max_pixels:
        raise TooLargeError(f"{name}: the MRC header claims {nx}x{ny}x{nz} pixels, over the budget of "
                            f"{max_pixels} (raise it with --max-pixels)")
    return 1024 + nsymbt, nx * ny * nz * MRC_ITEMSIZE[mode]


def _mrc_fits(header: np.recarray, name: str, max_pixels: int, size: int) -> tuple[int, int]:
    """_mrc_claim, and the claim against the file's `size`: (data offset, data bytes), or CorruptFileError naming
    what the header claims where the file is shorter."""
    offset, nbytes = _mrc_claim(header, name, max_pixels)
    if offset + nbytes > size:
        raise CorruptFileError(f"{name}: truncated: the header claims {offset + nbytes} bytes "
                               f"({int(header.nx)}x{int(header.ny)}x{int(header.nz)}, mode {int(header.mode)}, "
                               f"{offset - 1024}-byte extended header), the file holds {size}")
    return offset, nbytes


def _decompress_to(path: Path, compression: str, out, name: str, max_pixels: int, permissive: bool) -> None:
    """Stream-decompress an MRC file into `out`, never past what its header claims (a bomb stops there)."""
    import bz2
    import gzip

    opener = gzip.open if compression == "gzip" else bz2.open
    packed = path.stat().st_size
    try:
        with opener(path, "rb") as src:
            head = src.read(1024)
            offset, nbytes = _mrc_claim(_mrc_header(head, name), name, max_pixels)
            claimed = offset + nbytes
            if claimed > MAX_RATIO * max(packed, 1) and claimed > (1 << 20):
                raise CorruptFileError(f"{name}: the header claims {claimed} bytes from {packed} compressed "
                                       f"bytes (a ratio over {MAX_RATIO}: refused as a compression bomb)")
            _spill(out, head, name)
            left = claimed - len(head)
            while left > 0:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    break
                _spill(out, chunk, name)
                left -= len(chunk)
            if left == 0 and src.read(1):
                msg = f"{name}: the decompressed file is larger than its header says ({claimed} bytes)"
                if not permissive:
                    raise CorruptFileError(msg + " (--permissive reads it anyway)")
                warnings.warn(msg, stacklevel=4)
    except PtolemyError:  # said already (a header's claim, the temporary folder's disk): not the data's fault
        raise
    except (EOFError, OSError, zlib_error(), ValueError) as exc:
        raise CorruptFileError(f"{name}: truncated or corrupt {compression} data ({exc})") from None
    _spill(out, b"", name, flush=True)


def _spill(out, data: bytes, name: str, flush: bool = False) -> None:
    """Write decompressed bytes to the temporary file: a full disk there is said as such (it was "truncated or
    corrupt gzip data (No space left on device)", the file blamed for the temporary folder's disk)."""
    try:
        out.write(data)
        if flush:
            out.flush()
    except OSError as exc:
        import tempfile

        raise TooLargeError(f"{name}: cannot be decompressed into the temporary folder {tempfile.gettempdir()} "
                            f"({exc.strerror or exc}; TMPDIR chooses it)") from None


def zlib_error():
    """zlib.error, which gzip raises for corrupt streams."""
    import zlib

    return zlib.error


def _montage_mdoc(path: str | os.PathLike) -> tuple[Path, Any] | None:
    """The SerialEM `.mdoc` with piece coordinates that makes `path` a montage stack, and its parse (PATH.mdoc, else the
    name with .mdoc for its suffix), or None. A montage .mdoc that cannot be parsed is a CorruptFileError."""
    from .smallfiles import mdocs_beside

    for cand in mdocs_beside(Path(path)):
        from .montage import read_mdoc  # a .mdoc over smallfiles.MAX_SIDECAR_BYTES: CorruptFileError, unread

        md = read_mdoc(cand)
        if md.is_montage:
            return cand, md
    return None


def montage_mdoc(path: str | os.PathLike) -> Path | None:
    """The SerialEM montage `.mdoc` of `path` (_montage_mdoc), or None."""
    found = _montage_mdoc(path)
    return None if found is None else found[0]


def _read_montage(path: Path, mdoc: Any, header: np.recarray, max_pixels: int, frame: int | None = None) -> Image:
    """The assembled montage (`frame`: which one of a stack of several; default the first) of a stack whose header
    was checked (budget, size) already."""
    from .montage import read_montage

    name = str(path)
    mode = int(header.mode)
    if mode not in MRC_MODES:
        raise UnsupportedFormatError(f"{name}: MRC mode {mode} is not supported (modes 0, 1, 2, 6, 12 are)")
    m = read_montage(path, mdoc, max_pixels=max_pixels, frame=frame)
    dtype = np.dtype(MRC_MODES[mode]).name
    log.debug("%s: montage of %d pieces from %s assembled to %s (%s)", name, len(m.positions), mdoc.source,
              m.image.shape, dtype)
    # Gains make the pixels non-integer: the mixture rescales them as any float image ("float32").
    return Image(data=_validate(m.image, name), pixel_size_A=m.pixel_size_A, source=name, dtype="float32",
                 section=None, pieces=len(m.positions))


def _read_mrc(path: Path, section: int | None, max_pixels: int, permissive: bool) -> Image:
    name = str(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    compression = "gzip" if magic[:2] == b"\x1f\x8b" else "bzip2" if magic[:3] == b"BZh" else None
    if compression is None:
        if section is None:
            montage = _maybe_montage(path, name, max_pixels, permissive)
            if montage is not None:
                return montage
        return _read_mrc_file(path, name, section, max_pixels, permissive)
    # Decompressed into a temporary file and memory-mapped, so the image is never held twice in memory. (tempfile
    # here only: with shutil and random it costs ~3.7 ms of CPU a process that reads no compressed file.)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ptolemy-rt-") as tmp:
        plain = Path(tmp) / "image.mrc"
        with open(plain, "wb") as out:
            _decompress_to(path, compression, out, name, max_pixels, permissive)
        image = _read_mrc_file(plain, name, section, max_pixels, permissive)
    return image


def _maybe_montage(path: Path, name: str, max_pixels: int, permissive: bool, frame: int | None = None
                   ) -> Image | None:
    """The assembled montage when `path` is a stack with a montage .mdoc beside it, else None; with `frame`, that
    montage of a stack of several, or CorruptFileError where no montage .mdoc is beside it."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    header = _mrc_header(head, name)
    if frame is None and (len(head) < 1024 or int(header.nz) < 2):
        return None
    found = _montage_mdoc(path)
    if found is None:
        if frame is None:
            return None
        raise CorruptFileError(f"{name}: no montage .mdoc (PieceCoordinates) beside it for montage {frame}")
    if bytes(header.map)[:3] != b"MAP" and not permissive:
        raise CorruptFileError(f"{name}: Map ID string not found - not an MRC file, or file is corrupt")
    _mrc_fits(header, name, max_pixels, path.stat().st_size)
    return _read_montage(path, found[1], header, max_pixels, frame)


# mrcfile's validator accepts header statistics within 1 % (np.isclose, rtol=0.01) of the data's own; a
# float64 estimate within 0.9 % of the header's value decides that as the validator's float32 figure would, for
# finite header figures and data far from float32's range (_statistics_hold checks both).
_STATISTICS_MARGIN = 0.009
# Pixel types whose statistics OpenCV computes in float64 (mrcfile's modes 0, 1, 2, 6).
_CV_STATISTICS_TYPES = frozenset(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.float32))


def _statistics_hold(header: np.recarray, data: np.ndarray | None) -> bool:
    """Whether the header's RMS, minimum, maximum and mean pass mrcfile's validator on `data`, for sure.

    One float64 pass (cv2.meanStdDev, cv2.minMaxLoc) instead of the validator's float32 std, min, max and
    float64 mean, each after an array-sized `data > 0`. False whenever the answer is not certain (a value
    near the tolerance, a spread small against the mean, non-finite data, a pixel type OpenCV does not
    read): the validator then runs on the data itself.
    """
    import cv2

    if data is None or data.size == 0 or data.dtype not in _CV_STATISTICS_TYPES or not data.dtype.isnative:
        return False
    rms, dmin, dmax, dmean = (float(header.rms), float(header.dmin), float(header.dmax), float(header.dmean))
    if not all(math.isfinite(v) for v in (rms, dmin, dmax, dmean)):
        return False  # an infinite header figure is within any relative margin of anything: the validator decides
    plane = data.reshape(-1, data.shape[-1])
    mean_px, std_px = cv2.meanStdDev(plane)
    mean, std = float(mean_px[0, 0]), float(std_px[0, 0])
    if not (math.isfinite(mean) and math.isfinite(std)):
        return False  # NaN or inf pixels: the validator's own figures name them
    low, high, _, _ = cv2.minMaxLoc(plane)
    largest = max(abs(low), abs(high))
    n = data.size
    if n * (2.0 * largest) ** 2 >= 1e38:
        return False  # the validator's float32 sum of squares may overflow: its figure, not the true one, counts
    # The validator's float32 std is accurate to ~1e-6 of itself while the mean is within 1000 spreads.
    if rms >= 0 and not (std > 0 and abs(mean) <= 1000 * std and abs(std - rms) <= _STATISTICS_MARGIN * rms):
        return False
    if dmin < dmax and (low != dmin or high != dmax):
        return False
    # Both means are float64 sums of n values of at most `largest`: they differ by at most ~n eps largest, which a
    # mean small against the values (cancellation) would make a large part of it.
    if dmean > min(dmin, dmax) and not (abs(mean - dmean) + 4.0 * n * 2.0**-52 * largest
                                        <= _STATISTICS_MARGIN * abs(dmean)):
        return False
    return True


# One thread at a time swaps the process's warning filters and hook to take its own warnings (_own_warnings).
_WARNINGS_LOCK = threading.RLock()


def _new_warnings_lock() -> None:
    """A fresh lock in a forked child: one held by another thread at the fork (a thread that does not exist
    there) would block every read of the child for good (review of fuzz13: a fork beside a reading thread)."""
    global _WARNINGS_LOCK
    _WARNINGS_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_warnings_lock)
# Warnings raised in this package's modules (ours, and what C libraries warn of through our frames).
_OUR_MODULES = re.escape(__name__.rpartition(".")[0]) + r"(\.|$)"


@contextlib.contextmanager
def _own_warnings(modules: str, origin: str | None = None) -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings this thread raises meanwhile (with `origin`, those raised in files under it only), those
    of `modules` (a pattern, as warnings.filterwarnings takes it) whatever the filters say; every other warning,
    another thread's among them, goes on where it was going.

    catch_warnings(record=True) swaps the process's warning state: two threads' sections interleaved left
    warnings.showwarning replaced for good and warnings lost, and another thread's warning recorded while an MRC
    opened refused a valid file as invalid. Sections run one at a time, and take their own thread's warnings only.
    """
    ident = threading.get_ident()
    caught: list[warnings.WarningMessage] = []
    taking = [True]  # a hook left in place (another section's swap, not ours, restored it) passes everything on
    with _WARNINGS_LOCK, warnings.catch_warnings():
        passed_on = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if taking[0] and threading.get_ident() == ident and (origin is None or str(filename).startswith(origin)):
                caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
            else:
                passed_on(message, category, filename, lineno, file, line)

        warnings.filterwarnings("always", module=modules)
        warnings.showwarning = show
        try:
            yield caught
        finally:
            taking[0] = False


@contextlib.contextmanager
def held_warnings() -> Iterator[None]:
    """warnings.catch_warnings(), one swap of the process's warning state at a time with the readers' own."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        yield


def _mrcfile_warnings() -> contextlib.AbstractContextManager[list[warnings.WarningMessage]]:
    """_own_warnings for mrcfile's: those raised in its files, whatever the filters say."""
    import mrcfile

    return _own_warnings(r"mrcfile(\.|$)", os.path.dirname(os.path.abspath(mrcfile.__file__)) + os.sep)


def _validator_lines(mrc, file_size: int) -> list[str]:
    """The lines mrcfile's validator prints for the open file `mrc` (MrcFile.validate), the same lines faster.

    The validator's data statistics take 3.5 of the 4 ms a 1024x1440 file's read takes. Where they surely
    pass (_statistics_hold), the validator checks the header with its statistics marked undetermined (a
    header-only reading of it, so every other check and its wording stay mrcfile's) and the file's size is
    checked as MrcFile.validate checks it; otherwise the validator runs on the file as it is.
    """
    import mrcfile.mrcinterpreter

    data, extended = mrc.data, mrc.extended_header
    exttyp = bytes(mrc.header.exttyp)
    # The validator words an unknown extended header type by decoding it as ASCII: a byte over 127 raised
    # UnicodeDecodeError, and a file whose data block is whole was refused even with --permissive ("not a readable
    # image (UnicodeDecodeError: ...)"). Such a header is checked without it (and its statistics are not), and the
    # validator's line is said here.
    foreign = int(mrc.header.nsymbt) > 0 and not exttyp.isascii()
    if data is not None and extended is not None and (foreign or _statistics_hold(mrc.header, data)):
        header = mrc.header.copy()
        header.rms, header.dmin, header.dmax, header.dmean = -1, 0, 0, -1  # undetermined, as MRC2014 has it
        if foreign:
            header.exttyp = b"MRCO"
        stream = io.BytesIO(header.tobytes() + extended.tobytes())
        report = io.StringIO()
        with _mrcfile_warnings():  # what the header's reading warns of, the validator prints
            mrcfile.mrcinterpreter.MrcInterpreter(stream, permissive=True, header_only=True).validate(
                print_file=report)
        expected = header.nbytes + extended.nbytes + data.nbytes
        if file_size != expected:  # MrcFile.validate's own check, in its words
            print(f"File is larger than expected. Actual size: {file_size} bytes; expected size: {expected} "
                  "bytes (calculated from header)", file=report)
        if foreign:
            # as mrcfile says it ('XXXX', trailing NULs dropped), its bytes over 127 escaped
            said = mrc.header.exttyp.item().decode("ascii", "backslashreplace")
            print(f"Extended header type is undefined or unrecognised: exttyp = '{said}'", file=report)
    else:
        report = io.StringIO()
        with np.errstate(all="ignore"), _mrcfile_warnings():  # numpy's overflow in float16 statistics
            mrc.validate(print_file=report)
    return [line.strip() for line in report.getvalue().splitlines() if line.strip()]


# IMOD's stamp (bytes 152-155 of the header, "IMOD" as a little-endian int32 in the file's byte order) and flags
# (156-159): with the stamp, mode 0 is unsigned unless bit 0 of the flags says signed (IMOD, SerialEM).
IMOD_STAMP = 1146047817


def imod_unsigned_bytes(header: np.recarray) -> bool:
    """Whether a mode 0 MRC header says its bytes are unsigned: IMOD's stamp with the signed-bytes flag clear.

    mrcfile reads mode 0 as signed (MRC2014), so SerialEM's and IMOD's unsigned 8-bit images had every pixel over
    127 wrapped to a negative value: an atlas's bright squares read as its darkest pixels. Without the stamp the
    bytes are signed, as MRC2014 says, not guessed from the header's minimum and maximum as IMOD itself does."""
    if int(header.mode) != 0:
        return False
    order = header.dtype["mode"].byteorder
    stamp, flags = np.frombuffer(bytes(header.extra2)[40:48], dtype=np.dtype(np.int32).newbyteorder(
        order if order in "<>" else "="))
    return int(stamp) == IMOD_STAMP and not int(flags) & 1


def mrc_voxel_x(mrc: Any) -> float:
    """An open mrcfile's voxel size x (Å, cell length / sampling): NaN or infinite where the header's mx is 0,
    without numpy's bare 'divide by zero encountered in divide', which named no file."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(mrc.voxel_size.x)


def _read_mrc_file(path: Path, name: str, section: int | None, max_pixels: int, permissive: bool) -> Image:
    import mrcfile

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(1024)
    header = _mrc_header(head, name)
    if bytes(header.map)[:3] != b"MAP" and not permissive:
        raise CorruptFileError(f"{name}: Map ID string not found - not an MRC file, or file is corrupt")
    _mrc_fits(header, name, max_pixels, size)
    if int(header.mode) not in MRC_MODES:
        raise UnsupportedFormatError(f"{name}: MRC mode {int(header.mode)} is not supported (modes 0, 1, 2, 6, 12 are)")
    problems: list[str] = []
    with _mrcfile_warnings() as caught:  # mrcfile's own, for this file: another thread's are not its problems
        try:
            # Read, not memory-mapped: a file cut short while mapped (rewritten in place by another program)
            # killed the process with SIGBUS at the first page past its new end, a whole batch with it.
            mrc = mrcfile.open(path, mode="r", permissive=permissive)
        except ValueError as exc:
            from mrcfile.utils import byte_order_from_machine_stamp

            stamp = bytes(header.machst)
            try:
                says = "big" if byte_order_from_machine_stamp(stamp) == ">" else "little"
            except ValueError:  # a stamp mrcfile does not know (zeros, garbage from older writers)
                raise CorruptFileError(f"{name}: invalid MRC file: its machine stamp ({stamp.hex(' ')}) names no "
                                       "byte order (--permissive reads it anyway)") from None
            reads = "big" if header.dtype["mode"].str[0] == ">" else "little"
            if says != reads:
                # mrcfile reads the header in the order the stamp says, where _mrc_header found the other one:
                # "Unrecognised mode '16777216'" named a problem the file does not have
                raise CorruptFileError(f"{name}: invalid MRC file: the machine stamp ({stamp.hex(' ')}) says "
                                       f"{says}-endian, the header reads {reads}-endian (--permissive reads it "
                                       "anyway)") from None
            raise CorruptFileError(f"{name}: not a valid MRC file ({exc})") from None
    with mrc:
        if mrc.data is None:
            detail = "; ".join(str(w.message) for w in caught) or "no data block"
            raise CorruptFileError(f"{name}: unreadable data block ({detail})")
        opened = [str(w.message) for w in caught]
        found = _validator_lines(mrc, size)
        # Header statistics are never used to read the data, and mrcfile's own check of them overflows
        # on float16 files it wrote itself: a stale statistic is reported, not refused.
        stale = [line for line in found if line.startswith("Data statistics")]
        unsigned = imod_unsigned_bytes(mrc.header)
        if unsigned:  # mrcfile checks them against the bytes read signed: IMOD's are right
            found, stale = [line for line in found if line not in stale], []
        problems = [m for m in opened if m not in found] + [line for line in found if line not in stale]
        if problems:
            detail = "; ".join(problems)
            if not permissive:
                raise CorruptFileError(f"{name}: invalid MRC file: {detail} (--permissive reads it anyway)")
            warnings.warn(f"{name}: {detail}", stacklevel=4)
        if stale:
            warnings.warn(f"{name}: {'; '.join(stale)}", stacklevel=4)
        raw = mrc.data
        if unsigned:
            raw = raw.view(np.uint8)
        if raw.ndim == 4:  # a volume stack: its volumes' sections one after another
            raw = raw.reshape(-1, raw.shape[-2], raw.shape[-1])
        dtype = raw.dtype.newbyteorder("=").name
        pixel = mrc_voxel_x(mrc)
        pixel_size = pixel if math.isfinite(pixel) and pixel > 0 else None
        plane, sec = _pick_section(raw, section, name)
        # A real copy: the memory map closes below.
        data = _validate(np.array(plane, dtype=np.float32), name)
        del raw, plane
    return Image(data=data, pixel_size_A=pixel_size, source=name, dtype=dtype, section=sec)


def _quiet_cv2(cv2) -> None:
    """Silence OpenCV's own stderr log: our error message is the one line the user should see."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        cv2.setLogLevel(0)


def _raster_claims(raw: bytes | memoryview | _FileView, name: str) -> list[tuple[int, int, int]]:
    """(width, height, bytes per pixel) of each page a PNG, JPEG, BMP or TIFF header declares; [] if unknown."""
    import struct

    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        # libpng takes a 13-byte IHDR as the first chunk, or nothing: a PNG cut in its header, or of a 4-byte IHDR
        # (its size then read from the CRC and the next chunk: "claims 256x3944077345 pixels"), said neither
        if len(raw) < 33:
            raise CorruptFileError(f"{name}: too short for a PNG header ({len(raw)} of 33 bytes)")
        if raw[8:16] != b"\x00\x00\x00\x0dIHDR":
            raise CorruptFileError(f"{name}: a PNG whose first chunk is not its 13-byte header (IHDR): "
                                   f"{bytes(raw[8:16])!r}")
        width, height = struct.unpack(">II", raw[16:24])
        depth, colour = raw[24], raw[25]
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
        _png_image_data(raw, name)
        return [(width, height, max(1, depth // 8) * channels)]
    if raw[:2] == b"BM":
        return _bmp_claims(raw, name)
    if raw[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(raw):
            # A marker where one must be, else not a frame header we can read: the walk went on byte by byte
            # through the file (a 100 MB sparse .jpg: 35 s). Entropy-coded data (after SOS) holds no frame header.
            if raw[i] != 0xFF:
                return []
            marker = raw[i + 1]
            if marker == 0xFF:  # fill bytes: on to the last of the run (a 64 MB run, byte by byte: 45 s)
                i = _fill_end(raw, i + 2) - 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            if marker in (0xF7, 0xF8, 0xDE):
                # JPEG-LS (its frame header SOF55, its LSE) and hierarchical JPEG (DHP): libjpeg reads neither; the
                # walk passed them as unknown segments and said the file had no frame header at its scan
                kind = "hierarchical JPEG (DHP)" if marker == 0xDE else "JPEG-LS file (SOF55)"
                raise UnsupportedFormatError(f"{name}: a {kind} is not read; save it as TIFF or PNG")
            if marker in (0xDA, 0xD9):
                # libjpeg reads no scan nor end before a frame header: "not a readable image" said nothing of it
                where = "its first scan (SOS)" if marker == 0xDA else "its end (EOI)"
                raise CorruptFileError(f"{name}: a JPEG without a frame header (SOF) before {where}")
            length = struct.unpack(">H", raw[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", raw[i + 5:i + 9])
                components = raw[i + 9] if i + 9 < len(raw) else 3
                if components not in (1, 3, 4):
                    # libjpeg converts 1 (grey), 3 (YCbCr, RGB) and 4 (CMYK, YCCK) components only: a 2- or
                    # 5-component file (or one of none) said only "not a readable image"
                    raise UnsupportedFormatError(f"{name}: a JPEG of {components} colour components is not read "
                                                 "(1, 3 or 4 are); save it as grey or RGB")
                return [(width, height, max(1, components))]
            i += 2 + length
        raise CorruptFileError(f"{name}: a JPEG that ends before its frame header (SOF) ({len(raw)} bytes)")
    if raw[:4] in (b"II*\x00", b"MM\x00*"):
        if len(raw) < 8:  # no link to the first IFD: struct.error's words were the message
            raise CorruptFileError(f"{name}: too short for a TIFF header ({len(raw)} of 8 bytes)")
        return _tiff_claims(raw, "<" if raw[:2] == b"II" else ">", name)
    if raw[:4] in (b"II+\x00", b"MM\x00+") and len(raw) >= 16:
        # BigTIFF (OpenCV's libtiff reads it): unchecked, an 8 GB float RGBA canvas was allocated for a 68 kB file
        return _tiff_claims(raw, "<" if raw[:2] == b"II" else ">", name, big=True)
    return []


# BMP compressions by number (OpenCV reads the first four), and the bits a pixel it reads with each.
_BMP_COMPRESSIONS = ("none", "RLE8", "RLE4", "bit fields", "JPEG", "PNG", "alpha bit fields")
_BMP_KINDS = {0: (1, 4, 8, 16, 24, 32), 1: (8,), 2: (4,), 3: (16, 32)}


def _bmp_claims(raw: bytes | memoryview | _FileView, name: str) -> list[tuple[int, int, int]]:
    """[(width, height, 4)] of a BMP's info header, OS/2's 12-byte one (16-bit sides) included; refuse, saying why,
    one OpenCV's BMP reader reads nothing of (each said only 'not a readable image'): an info header size, bits
    a pixel or compression it does not read, a palette of over 256 colours, a width not above 0, or pixels the
    file ends before (it reads none of a file one byte short)."""
    import struct

    if len(raw) < 30:
        raise CorruptFileError(f"{name}: too short for a BMP header ({len(raw)} of at least 30 bytes)")
    offset, size = struct.unpack("<II", raw[10:18])
    if size == 12:  # OS/2's: its 16-bit sides were read as one 32-bit width, a valid file refused as too large
        width, height, bits = *struct.unpack("<HH", raw[18:22]), struct.unpack("<H", raw[24:26])[0]
        compression, colours = 0, 0
    elif 36 <= size < 1 << 31:
        if len(raw) < 50:
            raise CorruptFileError(f"{name}: too short for a BMP header ({len(raw)} of 50 bytes)")
        width, height = struct.unpack("<ii", raw[18:26])
        bits, compression = struct.unpack("<HI", raw[28:34])
        colours = struct.unpack("<I", raw[46:50])[0]
    else:
        raise UnsupportedFormatError(f"{name}: a BMP of a {size}-byte info header is not read (OpenCV reads 12 "
                                     "bytes, or 36 and more)")
    if bits not in _BMP_KINDS.get(compression, ()):
        how = _BMP_COMPRESSIONS[compression] if compression < len(_BMP_COMPRESSIONS) else f"number {compression}"
        raise UnsupportedFormatError(f"{name}: a BMP of {bits} bits a pixel with compression {how} is not read by "
                                     "OpenCV; save it as an uncompressed 8-bit or 24-bit BMP, or as PNG or TIFF")
    if bits <= 8 and colours > 256:
        raise CorruptFileError(f"{name}: a BMP whose palette claims {colours} colours (at most 256)")
    if width <= 0:
        raise CorruptFileError(f"{name}: a BMP of width {width}; it must be above 0")
    if compression in (0, 3):
        stride = (width * bits + 31) // 32 * 4
        need = offset + stride * abs(height)
        if need > len(raw):
            raise CorruptFileError(f"{name}: truncated: the BMP header claims {need} bytes ({width}x{abs(height)}, "
                                   f"{bits} bits a pixel), the file holds {len(raw)}")
    return [(width, abs(height), 4)]


# Chunks walked before a PNG's first IDAT (a real file has a few to a few tens: text, colour, physical size; each
# read is a 64 kB block of _FileView's): past them its image data is not looked for.
MAX_PNG_CHUNKS = 256


def _peek(raw: bytes | memoryview | _FileView, at: int, n: int) -> bytes:
    """`n` bytes at `at` (fewer at the end) read without replacing a _FileView's block: a header walk's small
    value away from the block it walks (a TIFF IFD, a PNG's chunk headers)."""
    return raw.peek(at, n) if isinstance(raw, _FileView) else bytes(raw[at:at + n])


def _png_image_data(raw: bytes | memoryview | _FileView, name: str) -> None:
    """Refuse a PNG whose chunks (after IHDR) reach its end (IEND) or the file's before its image data (IDAT), or
    claim a length libpng refuses (over 2**31 - 1): each said only 'not a readable image'."""
    import struct

    i = 33
    for _ in range(MAX_PNG_CHUNKS):
        if i + 8 > len(raw):
            raise CorruptFileError(f"{name}: a PNG that ends before its image data (IDAT) ({len(raw)} bytes)")
        length, kind = struct.unpack(">I4s", _peek(raw, i, 8))  # not a 64 kB block for each chunk's 8 bytes
        if length > 0x7FFFFFFF:
            raise CorruptFileError(f"{name}: a PNG chunk {kind!r} claims {length} bytes (at most 2**31 - 1)")
        if kind == b"IDAT":
            return
        if kind == b"IEND":
            raise CorruptFileError(f"{name}: a PNG without image data (IDAT) before its end (IEND)")
        i += 12 + length


# Fill bytes skipped at once by _fill_end: a block of _FileView's size.
_FILL_BLOCK = 1 << 16


def _fill_end(raw: bytes | memoryview | _FileView, i: int) -> int:
    """The index of the first byte from `i` on that is not 0xFF (JPEG fill), else len(raw); read in blocks."""
    n = len(raw)
    while i < n:
        block = bytes(raw[i:i + _FILL_BLOCK])
        rest = len(block.lstrip(b"\xff"))
        if rest:
            return i + len(block) - rest
        i += len(block)
    return n


# Entries read from one IFD (libtiff's own tag table has a few hundred), and the last tag read (SampleFormat).
MAX_IFD_ENTRIES = 4096
MAX_TIFF_ENTRIES = 1 << 16  # all IFDs together: MAX_PAGES pages of the ~9 entries read in each, with room
_LAST_TIFF_TAG = 339
# The tags read: ImageWidth, ImageLength, BitsPerSample, SamplesPerPixel, PlanarConfiguration, SampleFormat.
_TIFF_TAGS_READ = frozenset((256, 257, 258, 277, 284, 339))


class _Claims(list):
    """_raster_claims' (width, height, bytes per pixel) of each page; `refused`: why OpenCV cannot read a page right,
    how to save it instead, and whether OpenCV then fails the pages before it too, by page (_refuse_page)."""

    refused: dict[int, tuple[str, str, bool]]


# The integer TIFF types libtiff takes for the tags read here (the signed ones when not negative), by struct code:
# a float, rational, text or IFD (13, 18) value it refuses for them ("Incompatible type": TIFFReadDirEntryShort and
# TIFFReadDirEntryLong take neither IFD type), and such a tag is left unread.
_TIFF_INTEGERS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}


def _tiff_first(raw: bytes | memoryview | _FileView, order: str, typ: int, n: int, field: bytes,
                link_fmt: str) -> int | None:
    """The first value of an IFD entry of `n` values of type `typ`: in its `field` where all fit, else where the
    field points; None for a type not an integer, a negative value, or one past the file's end.

    A value of 8 bytes in a classic TIFF (LONG8: libtiff reads it where the entry points) was read as the
    pointer: an ImageWidth of 20000 claimed 8 (the budget and the ratio tests passed it), one of 2 bytes in a
    4-byte type's reading (SSHORT, big-endian) claimed 1310720000."""
    import struct

    code = _TIFF_INTEGERS.get(typ)
    if code is None or n < 1:
        return None
    size = struct.calcsize(code)
    if n * size <= len(field):
        data = bytes(field[:size])
    else:
        at = struct.unpack(order + link_fmt, field[:struct.calcsize(link_fmt)])[0]
        data = _peek(raw, at, size)
        if len(data) < size:
            return None
    value = struct.unpack(order + code, data)[0]
    return value if value >= 0 else None


def _tiff_claims(raw: bytes | memoryview | _FileView, order: str, name: str,
                 big: bool = False) -> list[tuple[int, int, int]]:
    """Walk a classic TIFF's (or with `big`, a BigTIFF's) IFD chain (bounded, loop-safe) for each page's size."""
    import struct

    # classic: 2-byte entry count, 12-byte entries with a 4-byte value, 4-byte links; BigTIFF: 8, 20, 8 and 8
    count_fmt, entry_size, link_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size, link_size = struct.calcsize(count_fmt), struct.calcsize(link_fmt)
    pages = _Claims()
    pages.refused = {}
    offset = struct.unpack(order + link_fmt, raw[8:16] if big else raw[4:8])[0]
    seen: set[int] = set()
    budget = MAX_TIFF_ENTRIES
    while offset and offset not in seen and offset + count_size <= len(raw):
        seen.add(offset)
        if len(seen) > MAX_PAGES:
            raise TooLargeError(f"{name}: the TIFF holds more than {MAX_PAGES} pages")
        count = struct.unpack(order + count_fmt, raw[offset:offset + count_size])[0]
        width = height = 0
        samples, bits, planar, sample_format = 1, 8, 1, 1
        first = offset + count_size
        # Real IFDs hold tens of entries, in tag order: a sparse file claiming millions each, chained, was walked
        # for hours (2.3 s an IFD). The entries past MAX_IFD_ENTRIES, past the last tag read here, or past the
        # whole chain's budget are skipped (a page left 0x0 is checked as an unknown one); the link to the next IFD
        # is read where the count puts it.
        readable = min(count, MAX_IFD_ENTRIES, budget, len(raw) // entry_size + 1)
        budget -= readable
        # The entries are read once, as one slice: a value read where an entry points must not evict them
        entries = bytes(raw[first:first + entry_size * readable])
        for k in range(readable):
            entry = entries[entry_size * k: entry_size * (k + 1)]
            if len(entry) < entry_size:
                break
            if big:
                tag, typ, n = struct.unpack(order + "HHQ", entry[:12])
                field = entry[12:20]
            else:
                tag, typ, n = struct.unpack(order + "HHI", entry[:8])
                field = entry[8:12]
            if tag > _LAST_TIFF_TAG:
                break
            if tag not in _TIFF_TAGS_READ:  # StripOffsets, TileByteCounts, ...: their values are never followed
                continue
            value = _tiff_first(raw, order, typ, n, field, link_fmt)
            if value is None:  # a type libtiff refuses for these tags (float, rational, text): the tag is unread
                continue
            if tag == 256:
                width = value
            elif tag == 257:
                height = value
            elif tag == 277:
                samples = value
            elif tag == 284:
                planar = value
            elif tag == 258:  # one value per sample: the first
                bits = value
            elif tag == 339:
                sample_format = value
        refusal = _tiff_page_refusal(bits, samples, planar, sample_format)
        if refusal:
            pages.refused[len(pages)] = refusal
        pages.append((width, height, max(1, samples) * max(1, bits // 8)))
        end = first + entry_size * count
        if end + link_size > len(raw):
            break
        offset = struct.unpack(order + link_fmt, raw[end:end + link_size])[0]
    return pages


# Bits a sample OpenCV's TIFF header check takes (others fail it: "Invalid bitsperpixel value"), and the sample
# formats it takes (unsigned, signed, float; 4, void, fails it, as does one no TIFF defines).
_OPENCV_TIFF_BITS = (1, 8, 10, 12, 14, 16, 32, 64)
_TIFF_SAMPLE_FORMATS = (1, 2, 3, 5, 6)


def _tiff_page_refusal(bits: int, samples: int, planar: int, sample_format: int) -> tuple[str, str, bool] | None:
    """Why OpenCV cannot read a TIFF page of these samples right, how to save it instead, and whether its header
    check then fails the pages before it too (_Claims.refused); None for a page it reads."""
    if samples > 4:
        # OpenCV's header check takes 1 to 4 channels: a 5-sample page said only "not a readable TIFF image"
        return f"{samples} samples a pixel", "save it as one grey channel", True
    if sample_format not in _TIFF_SAMPLE_FORMATS or sample_format == 4:
        return (f"samples of SampleFormat {sample_format} (neither integer nor floating point)",
                "save it as integer or floating-point samples", True)
    if sample_format == 3 and bits not in (32, 64):
        # OpenCV decodes float32 and float64 only: a float16 page (tifffile's, ImageJ's) failed as "not a
        # readable TIFF image", saying nothing of why; its header check fails it and every page before it
        return f"{bits}-bit floating-point samples (SampleFormat 3)", "save it as 32-bit floating point", True
    if sample_format in (5, 6):
        return f"complex samples (SampleFormat {sample_format})", "save its amplitude as real samples", True
    if bits and bits not in _OPENCV_TIFF_BITS:
        # 2-, 4- and 24-bit pages failed OpenCV's header check, said as "not a readable TIFF image"
        return (f"{bits}-bit samples", "save it with 8, 16 or 32 bits a sample (OpenCV reads 1, 8, 10, 12, 14, 16, "
                "32 or 64)", True)
    if bits == 1 and samples > 1:
        return f"{samples} samples of 1 bit", "save it as one grey channel", False
    if planar == 2 and samples > 1 and not (bits == 8 and samples in (3, 4)):
        # Separate sample planes: OpenCV decodes 8-bit RGB(A) ones through libtiff's RGBA reader, every other
        # kind as if its samples were interleaved: a 16-bit RGB or a grey-and-alpha file came out as a
        # scrambled image, exit 0 with targets found in noise.
        return (f"separate sample planes (PlanarConfiguration 2) with {samples} samples of {bits} bits",
                "save it with interleaved samples (PlanarConfiguration 1) or as one grey channel", False)
    if samples == 2 and bits > 8:
        # grey and alpha of 16 bits or more: OpenCV reads it through libtiff's 8-bit RGBA reader, unsigned
        # pixels cut to their top 8 bits, signed ones to zeros
        return f"grey and alpha samples of {bits} bits", "save it as one grey channel", False
    return None


def _refuse_page(name: str, claims: list[tuple[int, int, int]], section: int | None) -> None:
    """Refuse, before decoding, a TIFF whose page to be read OpenCV cannot read right (_Claims.refused), or whose
    page b OpenCV decodes nothing of when b <= the page asked for + 1: its header check fails the pages up to the
    one after the page decoded (a float32 stack with a float16 page 3 reads pages 0 and 1); another page's kind (a
    thumbnail's) is otherwise no matter: the page asked for is decoded alone."""
    refused = getattr(claims, "refused", {})
    page = 0 if section is None or not claims else section % len(claims)  # no section: main's page 0
    bad = page
    if page not in refused:
        bad = next((k for k, (_, _, whole) in sorted(refused.items()) if whole and k <= page + 1), page)
    if bad in refused:
        which = f"page {bad} is a TIFF of" if len(claims) > 1 else "a TIFF of"
        what, advice, _ = refused[bad]
        also = f" (nor then page {page}, as OpenCV reads the pages up to the one after it)" if bad != page else ""
        raise UnsupportedFormatError(f"{name}: {which} {what} is not read correctly by OpenCV{also}; {advice}")


def _check_raster_section(path: Path, name: str, section: int | None, pages: int) -> None:
    """Refuse, before decoding, a section the file cannot hold: PNG and JPEG hold one image, a TIFF the pages
    its IFD chain lists (a 12000x12000 colour TIFF was decoded, 1.7 GB, before `--section 150` was refused)."""
    if section in (None, 0):
        return
    if path.suffix.lower() not in TIFF_SUFFIXES or pages == 1:
        raise ShapeError(f"{name}: section {section} requested but the file holds a single image")
    if pages > 1 and not -pages <= section < pages:
        raise ShapeError(f"{name}: section {section} does not exist (the stack has {pages})")


class _FileView:
    """An open file's bytes as `raw[i]` and `raw[a:b]` read them, in 64 kB blocks: a raster's header checked
    before the file is read whole (a 3 GB sparse file named .tif was read into memory, 56 s, then refused)."""

    BLOCK = 1 << 16

    def __init__(self, fh, size: int):
        self._fh, self._size = fh, size
        self._at, self._block = 0, b""

    def __len__(self) -> int:
        return self._size

    def _read(self, start: int, n: int) -> bytes:
        if self._at <= start and start + n <= self._at + len(self._block):
            return self._block[start - self._at:start - self._at + n]
        if n > self.BLOCK:
            self._fh.seek(start)
            return self._fh.read(n)
        self._fh.seek(start)
        self._at, self._block = start, self._fh.read(self.BLOCK)
        return self._block[:n]

    def peek(self, start: int, n: int) -> bytes:
        """`n` bytes at `start`, the block held kept: a TIFF value where an IFD entry points, read in the IFD's walk."""
        if self._at <= start and start + n <= self._at + len(self._block):
            return self._block[start - self._at:start - self._at + n]
        if not 0 <= start < self._size:
            return b""
        self._fh.seek(start)
        return self._fh.read(min(n, self._size - start))

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._size)
            if step != 1:
                raise ValueError("a file view is read in order")
            return self._read(start, stop - start) if stop > start else b""
        index = key + self._size if key < 0 else key
        if not 0 <= index < self._size:
            raise IndexError("file view index out of range")
        return self._read(index, 1)[0]


# Slack for what a raster file holds beside its pixels (metadata, thumbnails, an ICC profile), and the factor by
# which compressed pixels may outgrow raw ones.
RASTER_FILE_SLACK = 16 << 20
RASTER_FILE_FACTOR = 2


# How a TIFF begins: classic and BigTIFF, in either byte order.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_raster(raw: bytes | memoryview | _FileView, name: str,
                  max_pixels: int) -> list[tuple[int, int, int]]:
    """Refuse, from the header alone, a raster image that claims more pixels than the budget, or a file larger than
    any image within the budget could take; return the images the header lists (_raster_claims; [] when unread)."""
    claims = _raster_claims(raw, name)
    head = bytes(raw[:8])
    if not claims and not head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"BM", *_TIFF_MAGIC)):
        # OpenCV decodes whatever it recognises, whatever the name: JPEG 2000, AVIF, WebP, GIF, Radiance, PxM, ...
        # of which no header is checked here. An 829-byte JPEG 2000 named .png decoded to 8000x8000 RGB (1 GB, 14 s):
        # a compression bomb no ratio test saw. Only the formats read are decoded.
        raise UnsupportedFormatError(f"{name}: not a TIFF, PNG, JPEG or BMP file (it begins {head!r}); other "
                                     "formats are not read")
    total = 0
    for width, height, bpp in claims:
        pixels = width * height
        if not pixels and not head.startswith(_TIFF_MAGIC):  # (a TIFF page left 0x0 is one whose tags went unread)
            # said as "not a readable image", nothing of why
            raise CorruptFileError(f"{name}: the header claims a {width}x{height} image: no pixels to read")
        if pixels > max_pixels:
            raise TooLargeError(f"{name}: the header claims {width}x{height} pixels, over the budget of "
                                f"{max_pixels} (raise it with --max-pixels)")
        total += pixels
        if total > max_pixels:
            raise TooLargeError(f"{name}: its {len(claims)} pages claim over {max_pixels} pixels together "
                                "(raise the budget with --max-pixels)")
        if pixels * bpp > DECODE_BYTES_PER_PIXEL * max_pixels:
            raise TooLargeError(f"{name}: the header claims {width}x{height} pixels of {bpp} bytes "
                                f"({size_text(pixels * bpp)} to decode), over the budget of "
                                f"{size_text(DECODE_BYTES_PER_PIXEL * max_pixels)} ({DECODE_BYTES_PER_PIXEL} "
                                "bytes a pixel of --max-pixels; raise it with --max-pixels)")
        # Images of up to RATIO_FREE_PIXELS are not ratio-tested (a blank one compresses past it), unless their samples
        # take more than RATIO_FREE_BYTES decoded: a 6 kB BigTIFF of 4096x4096 float64 RGBA took 1.1 GB to read.
        # (Counted in decoded bytes, not against a float32 image's: blank 4096x4096 float64 grey and 16-bit RGB
        # files, ratio 1023 in one deflate strip, were read on main.)
        free = pixels <= RATIO_FREE_PIXELS and pixels * bpp <= RATIO_FREE_BYTES
        if pixels * bpp > MAX_RATIO * len(raw) and not free:
            raise CorruptFileError(f"{name}: the header claims {width}x{height} pixels from {len(raw)} bytes "
                                   f"(a ratio over {MAX_RATIO}: refused as a compression bomb, or a blank or "
                                   f"near-blank image of {size_text(pixels * bpp)} decoded)")
    # Never against what the header claims: valid files hold far more than their first IFD lists (an ImageJ stack
    # over 4 GB, or tifffile's truncate=True, has one IFD and every page's data after it; ImageJ metadata in a
    # private tag; an animated PNG's frames). The cap is the budget's, whatever the header says.
    limit = RASTER_FILE_FACTOR * DECODE_BYTES_PER_PIXEL * max_pixels + RASTER_FILE_SLACK
    if len(raw) > limit:
        raise TooLargeError(f"{name}: the file holds {size_text(len(raw))}, more than an image within the "
                            f"budget of {max_pixels} pixels takes ({size_text(limit)}; raise it with "
                            "--max-pixels): refused unread")
    return claims


# A progressive JPEG's scans each take a pass over the whole image: libjpeg's own scripts write 6-10, tuned
# encoders a few tens. A 94 kB file of 1,000 copies of a 31-byte refinement scan over 4000x4000 pixels took 44 s to
# decode (30,000 copies, under 1 MB: 22 minutes). At most MAX_JPEG_SCANS scans, and at most JPEG_SCAN_PASSES passes
# over an image of the pixel budget's size, both counted as at least a megapixel (scans of tiny images cost their
# per-scan overhead; a small budget still allows a small image's usual scans).
MAX_JPEG_SCANS = 1000
JPEG_SCAN_PASSES = 16
# Bytes looked at at once for scan headers: a few times this in booleans, whatever the file's size (int64 offsets
# of every 0xFF byte took 16 bytes a byte of the file: 1 GB for a 64 MB file of fill).
_SCAN_BLOCK = 8 << 20


def _check_jpeg_scans(raw: np.ndarray, name: str, max_pixels: int, claims: list[tuple[int, int, int]]) -> None:
    """Refuse a JPEG (the file's bytes; `claims`: _raster_claims') whose scans would take longer to decode than
    any image's should."""
    if raw.size < 4 or raw[0] != 0xFF or raw[1] != 0xD8:
        return
    # Entropy-coded data holds 0xFF only before 0x00 (stuffing) or a restart marker: 0xFF 0xDA is a scan header
    # (or one of an embedded thumbnail's, counted too: a few).
    scans = 0
    for start in range(0, raw.size - 1, _SCAN_BLOCK):
        stop = min(start + _SCAN_BLOCK, raw.size - 1)
        scans += int(np.count_nonzero((raw[start:stop] == 0xFF) & (raw[start + 1:stop + 1] == 0xDA)))
    pixels = max((w * h for w, h, _ in claims), default=0)
    if scans > MAX_JPEG_SCANS or scans * max(pixels, 1 << 20) > JPEG_SCAN_PASSES * max(max_pixels, 1 << 20):
        raise CorruptFileError(f"{name}: a JPEG of {scans} scans over {pixels} pixels (each scan a pass over the "
                               f"whole image; at most {MAX_JPEG_SCANS}, and {JPEG_SCAN_PASSES} passes over the pixel "
                               f"budget of {max_pixels}, raise it with --max-pixels): refused as a decoding-time bomb")


# The decoders' own lines re-issued as warnings for one image, at most (libjpeg prints the first of its warnings).
MAX_LIBRARY_MESSAGES = 3


class _Collected(list):
    """The lines _library_messages collected; `capturing`: whether descriptor 2 is redirected (else none are)."""

    capturing = False


@contextlib.contextmanager
def _library_messages():
    """Collect what C libraries write to descriptor 2 meanwhile (libjpeg's "Corrupt JPEG data: bad Huffman code",
    libpng's warnings): a list of lines, filled in on exit. Printed there they were stray stderr lines naming
    no file (a batch's among them), beside the one error line or a result; the caller re-issues them as warnings
    naming the file. Only the main thread redirects (descriptor 2 is the process's: two threads swapping it would
    leave it on a closed pipe), and where descriptor 2 cannot be redirected nothing is collected."""
    import threading

    lines = _Collected()
    if threading.current_thread() is not threading.main_thread():
        yield lines
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        yield lines
        return
    try:
        os.set_blocking(write_end, False)  # more than the pipe holds is dropped: a library never blocks on it
        saved = os.dup(2)
    except OSError:
        os.close(read_end)
        os.close(write_end)
        yield lines
        return
    try:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()  # Python's own pending text goes where it was going
        os.dup2(write_end, 2)
        lines.capturing = True
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        os.close(write_end)
        chunks = []
        with contextlib.suppress(OSError):
            os.set_blocking(read_end, False)
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
        os.close(read_end)
        text = b"".join(chunks).decode("utf-8", "replace")
        lines.extend(line.strip() for line in text.splitlines() if line.strip())


# How OpenCV's log shows libtiff's error handler's lines ("[ERROR:0@0.02] global grfmt_tiff.cpp:117 TIFF_Error
# Compression scheme 65535 strip decoding is not implemented"), and how they are shown here.
_TIFF_ERROR = " TIFF_Error "
_LIBTIFF = "libtiff: "
_LIBPNG_ERROR = "libpng error: "


@contextlib.contextmanager
def _libtiff_errors(cv2, on: bool):
    """With `on`, OpenCV logs errors (libtiff's among them) meanwhile, to descriptor 2, which _library_messages
    collects: _quiet_cv2 silences them, and a strip libtiff could not decode left no trace."""
    if not on:
        yield
        return
    logging_ = cv2.utils.logging
    level = logging_.getLogLevel()
    logging_.setLogLevel(logging_.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging_.setLogLevel(level)


def _libtiff_line(line: str) -> str:
    """A libtiff error line of OpenCV's log as 'libtiff: MESSAGE'; any other line as it is."""
    head, sep, message = line.partition(_TIFF_ERROR)
    return _LIBTIFF + message.strip() if sep and head.startswith("[") else line


def _read_raster(path: Path, section: int | None, max_pixels: int) -> Image:
    import cv2

    name = str(path)
    _quiet_cv2(cv2)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise CorruptFileError(f"{name}: the file is empty")
        # the header is checked before the file is read (into memory, once: a copy held a large TIFF twice)
        claims = _check_raster(_FileView(fh, size), name, max_pixels)
        pages = len(claims)
        _check_raster_section(path, name, section, pages)
        _refuse_page(name, claims, section)
        fh.seek(0)
        # cv2.imread cannot open non-ASCII paths on Windows. `size` bytes, those checked: a file still being written
        # (or grown by another program) was read to its end, whatever the header and the size checks had allowed
        raw_bytes = np.fromfile(fh, dtype=np.uint8, count=size)
    if raw_bytes.size == 0:
        raise CorruptFileError(f"{name}: the file is empty")
    _check_jpeg_scans(raw_bytes, name, max_pixels, claims)
    tiff = _tiff_content(raw_bytes)
    # Our own warnings (a stack's "using section 0") are held until descriptor 2 is back: printed meanwhile (a
    # library caller's default filter prints them at once), they were collected as a library's lines and came out
    # twice, mangled ("NAME: /…/io.py:816: UserWarning: NAME: a stack of 3 sections…").
    # Only while descriptor 2 is collected (the main thread): elsewhere they are said at once, as they are raised.
    with _library_messages() as messages:
        held: contextlib.AbstractContextManager[list] = (_own_warnings(_OUR_MODULES) if messages.capturing else
                                                         contextlib.nullcontext([]))
        with held as ours:
            undecoded: CorruptFileError | None = None
            try:
                with _libtiff_errors(cv2, tiff and messages.capturing):
                    raw, section = _decode_raster(cv2, raw_bytes, path, name, section, pages)
            except cv2.error as exc:
                detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
                raise CorruptFileError(f"{name}: not a readable image ({detail})") from None
            except CorruptFileError as exc:  # OpenCV decoded nothing: libtiff's reason, collected below, says why
                undecoded = exc
    messages[:] = [_libtiff_line(m) for m in messages]
    failed = [m for m in messages if m.startswith(_LIBTIFF)]
    if undecoded is not None:
        # "not a readable TIFF image" alone, for a strip the file ends inside, a tile layout libtiff refuses, a
        # compression or predictor it lacks: libtiff had said which, to a log that is silenced; libpng its own
        # errors (a bit depth PNG lacks, no PLTE before a palette image's IDAT, a bad filter) to descriptor 2
        said = failed or [m for m in messages if m.startswith(_LIBPNG_ERROR)]
        raise CorruptFileError(f"{undecoded} ({said[0]})" if said else str(undecoded)) from None
    if failed and not np.any(raw):
        # OpenCV hands back a canvas of zeros where libtiff could not decode the pixels (a compression it lacks,
        # corrupt LZW or deflate data): read as a blank image, exit 0 with "blank" for a file that is no image
        raise CorruptFileError(f"{name}: not a readable TIFF image ({failed[0]})")
    for warning in ours:
        warnings.warn(warning.message, stacklevel=3)
    for message in messages[:MAX_LIBRARY_MESSAGES]:
        warnings.warn(f"{name}: {message}", stacklevel=3)
    del raw_bytes  # the file's bytes, and below the colour pixels once grey: not all alive at the peak
    if raw.ndim == 3:
        channels = raw.shape[2]
        if channels in (3, 4) and raw.dtype not in (np.uint8, np.uint16, np.float32):
            # cvtColor takes 8-bit, 16-bit unsigned and float32 pixels only (a colour int16 TIFF raised): the
            # same weights (ITU-R BT.601, B G R order) in float64.
            weights = np.array([0.114, 0.587, 0.299])
            raw = (raw[:, :, :3].astype(np.float64) @ weights).astype(np.float32)
        elif channels == 4:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
        elif channels == 1:
            raw = raw[:, :, 0]
        else:
            raise UnsupportedFormatError(f"{name}: {channels}-channel images are not supported")
    dtype = str(raw.dtype)
    return Image(data=_validate(raw, name), pixel_size_A=None, source=name, dtype=dtype, section=section)


def _tiff_content(raw_bytes: np.ndarray) -> bool:
    """Whether the file's bytes begin as a TIFF's (classic or BigTIFF), whatever its name says."""
    return bytes(raw_bytes[:4]) in _TIFF_MAGIC


def _decode_raster(cv2, raw_bytes: np.ndarray, path: Path, name: str, section: int | None, listed: int = 0):
    """Decode with OpenCV: (pixels, section or None). `listed`: the pages the TIFF's IFD chain lists; with more
    than one only the page asked for is decoded (300 pages of 12000x64 float64 took 3.6 GB and 37 s for one)."""
    # Pages are a TIFF's: OpenCV's imdecodemulti decodes every frame of anything (an animated PNG named .tif, 3000
    # frames of 1000x1000 zeros in 3 MB, took 6 GB; its header lists one image). Other content: the first image.
    multi = path.suffix.lower() in TIFF_SUFFIXES and _tiff_content(raw_bytes)
    if multi and listed > 1:
        if section is None:
            warnings.warn(f"{name}: a stack of {listed} sections; using section 0 (choose with --section)",
                          stacklevel=4)
            section = 0
        page = section % listed  # in range: _check_raster_section
        ok, pages = cv2.imdecodemulti(raw_bytes, cv2.IMREAD_UNCHANGED, None, (page, page + 1))
        if not ok or not pages:
            raise CorruptFileError(f"{name}: not a readable TIFF image (page {page} of {listed})")
        return pages[0], page
    if multi:
        ok, pages = cv2.imdecodemulti(raw_bytes, cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise CorruptFileError(f"{name}: not a readable TIFF image")
        if len(pages) > 1:
            index = _section_index(len(pages), section, name, stacklevel=4)
            return pages[index], index
        if section not in (None, 0):
            raise ShapeError(f"{name}: section {section} requested but the file holds a single image")
        return pages[0], None
    raw = cv2.imdecode(raw_bytes, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise CorruptFileError(f"{name}: not a readable image")
    if section not in (None, 0):
        raise ShapeError(f"{name}: section {section} requested but the file holds a single image")
    return raw, None


def read_image(path: str | os.PathLike, section: int | None = None, *, max_pixels: int | None = None,
               permissive: bool = False) -> Image:
    """Read an MRC (also .gz/.bz2), TIFF, PNG or JPEG file into a float32 2-D Image (one section of a stack).

    Every failure is an InputError naming the file, raised before any allocation the file's header asks for:
    at most `max_pixels` pixels (default 2**28) are read. MRC files are checked by mrcfile's validator;
    `permissive=True` reads a file it flags (its warning is issued instead). A SerialEM montage stack (a
    `.mdoc` with PieceCoordinates beside it) is read as its assembled montage unless `section` is given.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_image: path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not text:  # Path("") is ".": "'.: not a regular file'" named a folder nobody gave
        raise MissingFileError("read_image: an empty path names no file")
    if "\0" in str(text):  # os.stat's ValueError: "not a readable image (ValueError: embedded null byte)"
        raise MissingFileError(f"{one_line(str(text))}: no such file (a path holding a NUL byte names none)")
    p = Path(path)
    budget = DEFAULT_MAX_PIXELS if max_pixels is None else _budget(p, max_pixels)
    if not isinstance(permissive, (bool, np.bool_)):
        raise TypeError(f"read_image: permissive must be True or False, got {type(permissive).__name__}")
    try:
        return _read_any(p, section, budget, permissive)
    except PtolemyError:
        raise
    except MemoryError:
        raise TooLargeError(f"{p}: not enough memory to read it") from None
    except RecursionError:
        raise CorruptFileError(f"{p}: not a readable image (nested too deeply)") from None
    except OSError as exc:
        raise CorruptFileError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 -- a decoder's own exception: the file is at fault, not the caller
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1] if lines else "no detail"  # OpenCV's messages run over several lines: the last says it
        raise CorruptFileError(f"{p}: not a readable image ({type(exc).__name__}: {detail[:300]})") from None


def read_montage_frame(path: str | os.PathLike, frame: int, *, max_pixels: int | None = None) -> Image:
    """One montage of a SerialEM stack holding several (the pieces whose PieceCoordinates z is `frame`: a .nav's
    MapSection of a montage map), assembled as read_image assembles the first; InputError naming the file."""
    p = Path(path)
    name = str(p)
    budget = DEFAULT_MAX_PIXELS if max_pixels is None else _budget(p, max_pixels)
    try:
        if not p.is_file():
            raise MissingFileError(f"{name}: no such file")
        return cast(Image, _maybe_montage(p, name, budget, False, frame))  # with a frame: a montage or an error
    except PtolemyError:
        raise
    except MemoryError:
        raise TooLargeError(f"{name}: not enough memory to read it") from None
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{name}: not a readable montage ({exc})") from None


def _budget(p: Path, max_pixels: Any) -> int:
    """The pixel budget asked for, checked: a whole number from 1 to 2**40, as --max-pixels (NaN and "x" raised a
    bare ValueError, True and 1.5 were read as 1)."""
    from .options import check_range

    try:
        return int(check_range("read_image", "max_pixels", max_pixels, 1, 1 << 40, integer=True))
    except ValueError as exc:
        raise OptionError(f"{p}: {exc}") from None


def _read_any(p: Path, section: int | None, max_pixels: int, permissive: bool) -> Image:
    if section is not None and (not isinstance(section, (int, np.integer)) or isinstance(section, bool)):
        raise ShapeError(f"{p}: section must be an integer, got {section!r}")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MissingFileError(f"{p}: no such file") from None
    except NotADirectoryError:
        raise MissingFileError(f"{p}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        from .smallfiles import not_regular

        raise MissingFileError(not_regular(p))
    name = p.name.lower()
    suffix = p.suffix.lower()
    if suffix in (".gz", ".bz2"):
        suffix = Path(name[: -len(suffix)]).suffix
    if suffix in MRC_SUFFIXES:
        return _read_mrc(p, section, max_pixels, permissive)
    if suffix in TIFF_SUFFIXES or suffix in RASTER_SUFFIXES:
        return _read_raster(p, section, max_pixels)
    with open(p, "rb") as fh:
        head = fh.read(1024)
    if (len(head) >= 212 and head[208:211] == b"MAP") or head[:2] == b"\x1f\x8b" or head[:3] == b"BZh":
        return _read_mrc(p, section, max_pixels, permissive)
    raise UnsupportedFormatError(f"{p}: unknown file type '{p.suffix}' (expected .mrc, .tif, .png or .jpg)")


def as_image(image: ImageLike, section: int | None = None, name: str | None = None) -> Image:
    """Accept an Image, a 2-D array or a path, and return a validated Image."""
    if isinstance(image, Image):
        data = image.data
        if isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 2 and data.flags.c_contiguous \
                and data.size and np.isfinite(data).all():
            return image
        return Image(data=_validate(np.asarray(data), image.name), pixel_size_A=image.pixel_size_A,
                     source=image.source, dtype=image.dtype, section=image.section)
    if isinstance(image, np.ndarray):
        label = name or "<array>"
        if section is not None and (not isinstance(section, (int, np.integer)) or isinstance(section, bool)):
            raise ShapeError(f"{label}: section must be an integer, got {section!r}")
        if image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 4:
            # (rows, cols, RGB[A]) colour data, not a stack of sections: average the colour channels.
            image = image[:, :, :3].astype(np.float32).mean(axis=2)
        plane, sec = _pick_section(image, section, label)
        return Image(data=_validate(plane, label), source=name, dtype=str(image.dtype), section=sec)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, section=section)
    raise TypeError(f"expected an Image, a numpy array or a path, got {type(image).__name__}")


def check_min_size(image: Image, min_side: int, what: str = "this pipeline") -> None:
    """Raise TooSmallError when either side of the image is below `min_side` pixels."""
    rows, cols = image.shape
    if min(rows, cols) < min_side:
        raise TooSmallError(
            f"{image.name}: image is {rows}x{cols} px; {what} needs at least {min_side} px per side"
        )


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` whole or not at all (kept here for old imports: see outputs.atomic_write)."""
    from .outputs import atomic_write as _write

    _write(path, data)
