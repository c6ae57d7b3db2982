"""Reading the small text files around the images (calibrations, manifests, .mdoc, .nav): whole, bounded, and
only from regular files.

`Path.read_text` reads whatever it is pointed at: /dev/zero until memory runs out, a FIFO until someone writes
to it, a sparse file of gigabytes into memory. These files are kilobytes to megabytes; anything else is refused
with an error naming the file, before it is read.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from .errors import InputError, PtolemyError

__all__ = ["MAX_SIDECAR_BYTES", "is_regular", "mdocs_beside", "not_regular", "open_regular", "read_small", "text_of",
           "unicode_bom"]

# The text files beside an image (EPU's .xml, 10-100 kB; SerialEM's .mdoc, a few kB per section, montages
# included): anything far larger is not one. Read at call time, so that a test may lower it in one place.
MAX_SIDECAR_BYTES = 8 * 1024 * 1024


def not_regular(path: str | os.PathLike, what: str | None = None) -> str:
    """The one wording for an input that is no regular file (a folder, a FIFO, a device): images and small files."""
    return f"{Path(path)}: not a regular file" + (f" (a {what} is expected)" if what else "")


def is_regular(path: str | os.PathLike) -> bool:
    """Whether a regular file is at `path` (links followed); False where none is or the name cannot be looked
    up. Path.is_file raised for a sidecar's name one suffix over the 255-byte limit (ENAMETOOLONG, beside an
    image whose own name was legal) or in a folder that cannot be searched: exit 70 for a probe."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # ValueError: a NUL in a name from a navigator file
        return False


def mdocs_beside(path: Path) -> list[Path]:
    """The SerialEM .mdoc files beside `path` that are regular files: NAME.mrc.mdoc, which SerialEM writes, then
    NAME.mdoc, which a map converted or renamed elsewhere often keeps."""
    return [m for m in (path.with_name(path.name + ".mdoc"), path.with_suffix(".mdoc")) if m != path and is_regular(m)]


def open_regular(path: str | os.PathLike, what: str | None = None,
                 error: type[PtolemyError] = InputError) -> tuple[int, os.stat_result]:
    """A read-only descriptor of `path` and its stat, or `error` naming it when it is missing, cannot be opened
    or is not a regular file (`what` says what was expected); the caller closes the descriptor.

    What decides is os.fstat on the opened descriptor: the file checked is the file read, whatever is swapped in
    at the path meanwhile. O_NONBLOCK keeps the open of a FIFO swapped in from blocking until a writer comes (it
    is refused right after); O_NOCTTY keeps a terminal from becoming ours. A stat first refuses what is no
    regular file without opening it (opening a device can act: a tape rewinds when closed, a watchdog arms).
    """
    p = Path(path)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        regular = stat.S_ISREG(os.stat(p).st_mode)
        fd = os.open(p, os.O_RDONLY | nonblock | getattr(os, "O_NOCTTY", 0)) if regular else -1
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the name
        raise error(f"{p}: no such file") from None
    except OSError as exc:
        raise error(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not regular:
        raise error(not_regular(p, what))
    try:
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        if regular and nonblock:  # a regular file's reads ignore it; cleared so that nothing downstream sees EAGAIN
            os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise error(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not regular:
        os.close(fd)
        raise error(not_regular(p, what))
    return fd, st


def read_small(path: str | os.PathLike, limit: int, what: str, error: type[PtolemyError] = InputError) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; `error` naming it (and `what` it should be)
    when it is missing, not a regular file, larger, or unreadable."""
    p = Path(path)
    fd, st = open_regular(p, what, error)
    try:
        if st.st_size > limit:
            raise error(f"{p}: {st.st_size} bytes is too large for a {what} (limit {limit})")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{p}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # grew while being read
        raise error(f"{p}: over {limit} bytes is too large for a {what}")
    return data


# Byte-order marks and the encodings they name; UTF-32-LE's mark begins with UTF-16-LE's, so it is tried first.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def unicode_bom(raw: bytes) -> tuple[bytes, str] | None:
    """The byte-order mark `raw` begins with and the encoding it names, or None."""
    return next(((bom, codec) for bom, codec in _BOMS if raw.startswith(bom)), None)


def text_of(raw: bytes, errors: str = "replace") -> str:
    """The text of a small file: UTF-8, or the encoding its byte-order mark names, the mark dropped.

    An editor on Windows saves a .mdoc or a calibration with a mark (UTF-8's, or UTF-16 as "Unicode"): read as
    plain UTF-8, the mark stuck to the first key ('\\ufeffPixelSpacing'), and the pixel size was silently lost."""
    found = unicode_bom(raw)
    if found is None:
        return raw.decode("utf-8", errors)
    bom, codec = found
    return raw[len(bom):].decode(codec, errors)
