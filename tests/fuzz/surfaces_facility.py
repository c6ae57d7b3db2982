"""Generator class for files as real facilities leave them, beyond what the other classes make (facility_files).

- bigtiff: a BigTIFF (as large-image writers save one) of deflated tiles of zeros, claiming up to 16384x16384
  pixels of 1-4 samples of 8-64 bits, or a small one holding real pixels: exit 0 or 2 (an error naming the file)
  within the memory limits. Its header was not read: OpenCV was handed an 8 GiB canvas for a 68 kB file.
- imod_bytes: a mode 0 MRC with or without IMOD's stamp and its flags (SerialEM and IMOD write unsigned bytes):
  the pixels read must be the bytes as the stamp says (unsigned unless bit 0 of the flags says signed).
- long_names: an image (a single image or a two-section stack) and an output whose names are legal but within a
  suffix of the 255-byte limit (NAME.mrc.mdoc is probed, .NAME.XXXXXXXX.tmp written): exit 0, one output.
- cut_while_read: an MRC file cut short by another program just after it was opened (rewritten in place): exit 0
  or 2 with one line naming it, never a SIGBUS (reported as a segfault: the worker dies).
- sparse: a PNG, JPEG or TIFF header followed by gigabytes of (sparse) zeros: refused (2) before it is read whole.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

FACILITY_CLASSES = ("facility_files",)
IMOD_STAMP = 1146047817


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


def _bigtiff(width: int, height: int, tile_bytes: bytes, tile: int, bits: int, samples: int, fmt: int,
             pages: int) -> bytes:
    """A little-endian BigTIFF whose tiles are all the one deflated `tile_bytes`."""
    out = bytearray(b"II+\x00" + struct.pack("<HHQ", 8, 0, 0))
    blob = zlib.compress(tile_bytes, 9)
    link = 8
    for _ in range(pages):
        at = len(out)
        out += blob
        n = min(-(-width // tile) * -(-height // tile), 1 << 16)
        offsets = len(out)
        out += struct.pack(f"<{n}Q", *([at] * n))
        counts = len(out)
        out += struct.pack(f"<{n}Q", *([len(blob)] * n))
        entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 8),
                   (262, 3, 1, 2 if samples >= 3 else 1), (277, 3, 1, samples), (284, 3, 1, 1), (322, 4, 1, tile),
                   (323, 4, 1, tile), (324, 16, n, offsets), (325, 16, n, counts), (339, 3, 1, fmt)]
        if len(out) % 2:
            out += b"\0"
        struct.pack_into("<Q", out, link, len(out))
        out += struct.pack("<Q", len(entries))
        for tag, typ, count, value in entries:
            out += struct.pack("<HHQ", tag, typ, count) + struct.pack({3: "<H6x", 4: "<I4x", 16: "<Q"}[typ], value)
        link = len(out)
        out += bytes(8)
    return bytes(out)


def _bigtiff_case(rng: np.random.Generator, d: Path) -> dict:
    bits, fmt = _pick(rng, [(8, 1), (16, 1), (32, 3), (64, 3), (16, 2)])
    samples = int(_pick(rng, [1, 1, 3, 4]))
    pages = int(_pick(rng, [1, 1, 1, 3]))
    dtype = {(8, 1): np.uint8, (16, 1): np.uint16, (32, 3): np.float32, (64, 3): np.float64, (16, 2): np.int16}[
        (bits, fmt)]
    if rng.random() < 0.5:  # a claim: zeros far beyond the file's bytes
        side = int(_pick(rng, [4096, 12000, 16384, 70000]))
        tile = int(_pick(rng, [256, 512]))
        pixels = np.zeros((tile, tile, samples), dtype)
        width, height = side, int(_pick(rng, [side, 8192, 256]))
    else:  # a small one holding pixels: read, or refused with one line
        tile = 16
        pixels = (rng.random((tile, tile, samples)) * 200).astype(dtype)
        width, height = (int(v) for v in rng.integers(16, 200, 2))
    path = d / "big.tif"
    path.write_bytes(_bigtiff(width, height, pixels.tobytes(), tile, bits, samples, fmt, pages))
    case = {"kind": "api", "call": "read_segment", "path": str(path), "expect": [0, 2], "named": True}
    if pages > 1 and rng.random() < 0.5:
        case["section"] = int(_pick(rng, [1, 2, 3, -1]))
    return case


def _imod_case(rng: np.random.Generator, d: Path) -> dict:
    import mrcfile

    pixels = rng.integers(0, 256, tuple(int(v) for v in rng.integers(8, 64, 2))).astype(np.uint8)
    path = d / "bytes.mrc"
    with mrcfile.new(path) as m:
        m.set_data(pixels.view(np.int8))
    stamp = _pick(rng, [None, IMOD_STAMP, IMOD_STAMP, IMOD_STAMP, IMOD_STAMP + 1])
    flags = int(_pick(rng, [0, 0, 1, 2, 3, 16, 17]))
    if stamp is not None:
        raw = bytearray(path.read_bytes())
        raw[152:160] = struct.pack("<ii", stamp, flags)
        path.write_bytes(bytes(raw))
    unsigned = stamp == IMOD_STAMP and not flags & 1
    np.save(d / "want.npy", (pixels if unsigned else pixels.view(np.int8)).astype(np.float32))
    return {"kind": "api", "call": "facility", "op": "imod", "path": str(path), "want": str(d / "want.npy"),
            "expect": [0], "named": True}


def _long_names_case(rng: np.random.Generator, d: Path, image: Path) -> dict:
    import mrcfile

    out = d / "out"
    out.mkdir()
    length = int(rng.integers(236, 252))  # with ".mrc": 240-255 bytes, legal
    img = d / ("n" * length + ".mrc")
    argv = ["squares", str(img), "--no-score"]
    if rng.random() < 0.4:  # a stack: NAME.mrc.mdoc is probed for a montage
        with mrcfile.open(image) as m:
            data = m.data.copy()
        with mrcfile.new(img) as m:
            m.set_data(np.stack([data, data]))
        argv += ["--section", str(int(_pick(rng, [0, 1])))]
    else:
        img.write_bytes(image.read_bytes())
    name = "o" * int(rng.integers(230, 251)) + ".json"  # its temporary file's name was 14 bytes longer
    argv += ["-o", str(out / name)]
    return {"kind": "api", "call": "main", "argv": argv, "expect": [0], "outdir": str(out),
            "rerun": [str(out / name)]}


def _cut_case(rng: np.random.Generator, d: Path) -> dict:
    import mrcfile

    nz = int(_pick(rng, [1, 3, 6]))
    shape = (nz, int(rng.integers(256, 512)), int(rng.integers(256, 512)))
    path = d / "cut.mrc"
    with mrcfile.new(path) as m:
        m.set_data(rng.normal(100, 10, shape).astype(np.float32))
    keep = int(_pick(rng, [0, 1024, 1024 + 4096, 1 << 16]))
    case = {"kind": "api", "call": "facility", "op": "cut", "path": str(path), "keep": keep, "expect": [0, 2],
            "named": True}
    if nz > 1:
        case["section"] = int(rng.integers(nz))
    return case


def _sparse_case(rng: np.random.Generator, d: Path) -> dict:
    import cv2

    kind = _pick(rng, ["png", "tif", "jpg", "tif_empty"])
    if kind == "tif_empty":
        head, kind = b"II*\x00\x08\x00\x00\x00\x00\x00", "tif"
    else:
        head = cv2.imencode("." + kind, np.zeros((64, 64), np.uint8))[1].tobytes()
    path = d / f"sparse.{kind}"
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(int(_pick(rng, [2300, 2600, 3100])) << 20)  # sparse: no disk used
    return {"kind": "api", "call": "read_segment", "path": str(path), "expect": [2], "named": True}


def facility_files(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """One of the five kinds above."""
    kind = _pick(rng, ["bigtiff", "bigtiff", "imod", "long", "cut", "sparse"])
    if kind == "sparse":
        return _sparse_case(rng, d)
    if kind == "bigtiff":
        return _bigtiff_case(rng, d)
    if kind == "imod":
        return _imod_case(rng, d)
    if kind == "long":
        return _long_names_case(rng, d, image)
    return _cut_case(rng, d)


def run_facility_case(case: dict) -> tuple[int, str]:
    """The in-process part of an `imod` or `cut` case: (exit code, detail; '!wrong_value: ...' on a defect)."""
    import os

    import mrcfile

    from ptolemy_rt import read_image

    if case["op"] == "imod":
        image = read_image(case["path"])
        want = np.load(case["want"])
        if image.data.shape != want.shape or not np.array_equal(image.data, want):
            return 0, f"!wrong_value: {case['path']}: the pixels are not the bytes as the IMOD stamp says"
        return 0, ""
    patched = {name: getattr(mrcfile, name) for name in ("open", "mmap")}

    def opener(real):
        def cut(path, *args, **kwargs):  # another program rewrites the file in place meanwhile
            handle = real(path, *args, **kwargs)
            os.truncate(path, case["keep"])
            return handle

        return cut

    try:
        for name, real in patched.items():
            setattr(mrcfile, name, opener(real))
        read_image(case["path"], section=case.get("section"))
    finally:
        for name, real in patched.items():
            setattr(mrcfile, name, real)
    return 0, ""
