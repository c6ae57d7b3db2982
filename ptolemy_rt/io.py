"""Reading images: MRC (modes 0, 1, 2, 6, 12), TIFF, PNG and JPEG into float32 2-D arrays."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from .errors import (
    CorruptFileError,
    MissingFileError,
    NonFiniteError,
    ShapeError,
    TooSmallError,
    UnsupportedFormatError,
)

__all__ = ["Image", "read_image", "as_image", "check_min_size", "atomic_write", "ImageLike"]

log = logging.getLogger(__name__)

MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec"}
TIFF_SUFFIXES = {".tif", ".tiff"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
MRC_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


@dataclass(frozen=True)
class Image:
    """A 2-D float32 image with what we know of where it came from."""

    data: np.ndarray
    pixel_size_A: float | None = None
    source: str | None = None
    dtype: str = "float32"
    section: int | None = None

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


def _pick_section(data: np.ndarray, section: int | None, name: str) -> tuple[np.ndarray, int | None]:
    """Take one section of a stack (section 0 with a warning when none is given)."""
    if data.ndim == 3 and data.shape[0] == 1 and section in (None, 0):
        return data[0], None
    if data.ndim == 3:
        n = data.shape[0]
        if section is None:
            warnings.warn(f"{name}: a stack of {n} sections; using section 0 (choose with --section)", stacklevel=3)
            section = 0
        if not -n <= section < n:
            raise ShapeError(f"{name}: section {section} does not exist (the stack has {n})")
        return data[section], section % n
    if section not in (None, 0):
        raise ShapeError(f"{name}: section {section} requested but the file holds a single 2-D image")
    return data, None


def _read_mrc(path: Path, section: int | None) -> Image:
    import mrcfile

    name = str(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.open(path, mode="r", permissive=True)
    except ValueError as exc:
        # mrcfile raises ValueError for unknown modes and malformed headers.
        msg = str(exc)
        if "mode" in msg.lower():
            raise UnsupportedFormatError(f"{name}: unsupported MRC mode ({msg})") from None
        raise CorruptFileError(f"{name}: not a readable MRC file ({msg})") from None
    except OSError as exc:
        raise CorruptFileError(f"{name}: cannot read ({exc})") from None
    with mrc:
        mode = int(mrc.header.mode)
        if mode not in MRC_MODES:
            raise UnsupportedFormatError(f"{name}: MRC mode {mode} is not supported (modes 0, 1, 2, 6, 12 are)")
        if mrc.data is None:
            detail = "; ".join(str(w.message) for w in caught) or "no data block"
            raise CorruptFileError(f"{name}: truncated or unreadable data block ({detail})")
        dims = (int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx))
        expected = dims[0] * dims[1] * dims[2]
        if mrc.data.size != expected:
            raise CorruptFileError(f"{name}: data block holds {mrc.data.size} values, header says {expected}")
        raw = np.asarray(mrc.data)
        dtype = str(raw.dtype)
        pixel = float(mrc.voxel_size.x)
        pixel_size = pixel if np.isfinite(pixel) and pixel > 0 else None
        plane, sec = _pick_section(raw, section, name)
        data = _validate(plane, name)
    return Image(data=data, pixel_size_A=pixel_size, source=name, dtype=dtype, section=sec)


def _quiet_cv2(cv2) -> None:
    """Silence OpenCV's own stderr log: our error message is the one line the user should see."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        cv2.setLogLevel(0)


def _read_raster(path: Path, section: int | None) -> Image:
    import cv2

    name = str(path)
    _quiet_cv2(cv2)
    raw_bytes = np.fromfile(path, dtype=np.uint8)  # cv2.imread cannot open non-ASCII paths on Windows
    if raw_bytes.size == 0:
        raise CorruptFileError(f"{name}: the file is empty")
    if path.suffix.lower() in TIFF_SUFFIXES:
        ok, pages = cv2.imdecodemulti(raw_bytes, cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise CorruptFileError(f"{name}: not a readable TIFF image")
        if len(pages) > 1:
            n = len(pages)
            if section is None:
                warnings.warn(f"{name}: a stack of {n} sections; using section 0 (choose with --section)",
                              stacklevel=3)
                section = 0
            if not -n <= section < n:
                raise ShapeError(f"{name}: section {section} does not exist (the stack has {n})")
            raw, section = pages[section], section % n
        else:
            raw = pages[0]
            if section not in (None, 0):
                raise ShapeError(f"{name}: section {section} requested but the file holds a single image")
            section = None
    else:
        raw = cv2.imdecode(raw_bytes, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise CorruptFileError(f"{name}: not a readable image")
        if section not in (None, 0):
            raise ShapeError(f"{name}: section {section} requested but the file holds a single image")
        section = None
    if raw.ndim == 3:
        channels = raw.shape[2]
        if channels == 4:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
        elif channels == 1:
            raw = raw[:, :, 0]
        else:
            raise UnsupportedFormatError(f"{name}: {channels}-channel images are not supported")
    dtype = str(raw.dtype)
    return Image(data=_validate(raw, name), pixel_size_A=None, source=name, dtype=dtype, section=section)


def read_image(path: str | os.PathLike, section: int | None = None) -> Image:
    """Read an MRC, TIFF, PNG or JPEG file into a float32 2-D Image (one section of a stack)."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{p}: no such file")
    if not p.is_file():
        raise MissingFileError(f"{p}: not a file")
    suffix = p.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return _read_mrc(p, section)
    if suffix in TIFF_SUFFIXES or suffix in RASTER_SUFFIXES:
        return _read_raster(p, section)
    with open(p, "rb") as fh:
        head = fh.read(1024)
    if len(head) >= 212 and head[208:211] == b"MAP":
        return _read_mrc(p, section)
    raise UnsupportedFormatError(f"{p}: unknown file type '{suffix}' (expected .mrc, .tif, .png or .jpg)")


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
    """Write `data` to `path` through a temporary file and a rename, so no partial file is ever seen."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only; give it the mode a plain open() would (0666 less the umask).
        if hasattr(os, "fchmod"):
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
