"""An MRC header's dimensions read with `struct` alone: the batch process finds a SerialEM stack's sections
without importing numpy (io's header record, _mrc_header, needs numpy and mrcfile)."""

from __future__ import annotations

import struct

__all__ = ["MRC_ITEMSIZE", "MRC_SUFFIXES", "mrc_byte_order", "mrc_dims"]

MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec"}
# Bytes per pixel of the modes mrcfile knows (4, complex, is refused after the size checks).
MRC_ITEMSIZE = {0: 1, 1: 2, 2: 4, 4: 8, 6: 2, 12: 2}
_HEADER_BYTES = 1024


def mrc_byte_order(head: bytes) -> str:
    """The byte order ('<' or '>') of a 1024-byte MRC header: its machine stamp's, else the other where only that
    one makes its mode a known one (io._mrc_header and mrc_dims both read it so)."""
    order = ">" if head[212:214] == b"\x11\x11" else "<"
    if struct.unpack_from(order + "i", head, 12)[0] not in MRC_ITEMSIZE:
        # Some writers get the machine stamp wrong; the mode word tells the byte order apart.
        swapped = "<" if order == ">" else ">"
        if struct.unpack_from(swapped + "i", head, 12)[0] in MRC_ITEMSIZE:
            return swapped
    return order


def mrc_dims(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(nx, ny, nz, mode, nsymbt) of a 1024-byte MRC header, in its byte order (mrc_byte_order); None when `head`
    is too short for a header."""
    if len(head) < _HEADER_BYTES:
        return None
    order = mrc_byte_order(head)
    nx, ny, nz, mode = struct.unpack_from(order + "4i", head, 0)
    (nsymbt,) = struct.unpack_from(order + "i", head, 92)
    return nx, ny, nz, mode, nsymbt
