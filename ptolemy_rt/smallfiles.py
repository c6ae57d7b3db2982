"""Reading the small text files around the images (calibrations, manifests, .mdoc, .nav): whole, bounded, and
only from regular files.

`Path.read_text` reads whatever it is pointed at: /dev/zero until memory runs out, a FIFO until someone writes
to it, a sparse file of gigabytes into memory. These files are kilobytes to megabytes; anything else is refused
with an error naming the file, before it is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InputError, PtolemyError

__all__ = ["read_small"]


def read_small(path: str | os.PathLike, limit: int, what: str, error: type[PtolemyError] = InputError) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; `error` naming it (and `what` it should be)
    when it is missing, not a regular file, larger, or unreadable."""
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO swapped in after a check would not block the open (it is refused below).
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except OSError as exc:
        raise error(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: not a regular file (a {what} is expected)")
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
