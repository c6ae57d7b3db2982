"""Generator class for what the decoders make of files beyond the others' reach (decoder_lies), session 13's
hand-made defects in generated form.

- tiff_lost: a TIFF whose strip libtiff cannot decode (a compression it lacks, or a stream of zeros for deflate or
  LZW): OpenCV handed back a canvas of zeros, read as a blank image (exit 0). Now 2, naming the file.
- tiff_planes: separate sample planes (PlanarConfiguration 2): OpenCV reads 8-bit RGB right (its pixels are
  checked), every other kind scrambled; and grey and alpha of 16 bits, interleaved, cut to 8 bits or zeros. Those
  are refused (2).
- jpeg_scans: a progressive JPEG whose last scan is repeated up to thousands of times (each scan a pass over the
  image: 44 s for a 94 kB file): read within the time limit, or refused (2).
- mrc_exttyp: an MRC extended header whose type is four random bytes (non-ASCII ones made mrcfile's validator
  raise): read with --permissive (0), else 0 or 2 naming the file.
- xml_encoding: an EPU .xml beside the image declaring an encoding expat cannot read (exit 70 for `squares`): 0.
- nav_overflow: a navigator map whose MapScaleMat overflows to an infinite stage position ("PtsX = -inf" was
  written): 2, and no copy.
- mdoc_coords: a montage .mdoc whose PieceCoordinates hold 1e308, infinities or NaN: 2, naming the .mdoc.
- raster_grow: a PNG, JPEG or TIFF grown by gigabytes (sparse) after its checks: read as checked (0) within the
  memory limit (it was read to its new end).
- apng_tif: an animated PNG of up to 3000 frames named .tif: its first image (0) within the memory limit (every
  frame was decoded, 6 GB).
- other_format: WebP, JPEG 2000, GIF, AVIF, Radiance, PxM, PFM or Sun raster content named .png, .jpg or .tif:
  refused (2; OpenCV decoded them unchecked, an 829-byte JPEG 2000 to 1 GB).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .surfaces import _png_chunk

DECODER_CLASSES = ("decoder_lies",)


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


def tiff_file(pages: list[dict]) -> bytes:
    """A little-endian TIFF of `pages`, each given as _tiff's arguments by name (tests/test_io.py writes its own)."""
    out = bytearray(b"II*\x00\0\0\0\0")
    link = 4
    for page in pages:
        width, height, blobs = page["width"], page["height"], page["blobs"]
        bits, samples, fmt = page["bits"], page["samples"], page["fmt"]
        offsets = []
        for blob in blobs:
            offsets.append(len(out))
            out += blob + b"\0" * (len(blob) % 2)
        entries = [(256, 4, [width]), (257, 4, [height]), (258, 3, [bits] * samples), (259, 3, [page["compression"]]),
                   (262, 3, [2 if samples >= 3 else 1]), (273, 4, offsets), (277, 3, [samples]), (278, 4, [height]),
                   (279, 4, [len(b) for b in blobs]), (284, 3, [page["planar"]]), (339, 3, [fmt] * samples)]
        apart = {}
        for tag, typ, values in entries:
            data = struct.pack(f"<{len(values)}{'H' if typ == 3 else 'I'}", *values)
            if len(data) > 4:
                apart[tag] = len(out)
                out += data + b"\0" * (len(data) % 2)
        struct.pack_into("<I", out, link, len(out))
        out += struct.pack("<H", len(entries))
        for tag, typ, values in entries:
            field = struct.pack("<I", apart[tag]) if tag in apart else \
                struct.pack(f"<{len(values)}{'H' if typ == 3 else 'I'}", *values).ljust(4, b"\0")
            out += struct.pack("<HHI", tag, typ, len(values)) + field
        link = len(out)
        out += b"\0\0\0\0"
    return bytes(out)


def _tiff(width: int, height: int, blobs: list[bytes], bits: int, samples: int, fmt: int, compression: int,
          planar: int) -> bytes:
    """A little-endian TIFF of one page: one strip per blob (a plane each with `planar` 2)."""
    return tiff_file([{"width": width, "height": height, "blobs": blobs, "bits": bits, "samples": samples,
                       "fmt": fmt, "compression": compression, "planar": planar}])


def _api(path: Path, expect: list[int], **extra) -> dict:
    return {"kind": "api", "call": "read_segment", "path": str(path), "expect": expect, "named": True, **extra}


def _tiff_lost(rng: np.random.Generator, d: Path) -> dict:
    width, height = (int(v) for v in rng.integers(256, 400, 2))
    bits = int(_pick(rng, [8, 16]))
    compression = int(_pick(rng, [5, 8, 32946, 34712, 65535, 50002, 9, 34926]))
    path = d / "lost.tif"
    path.write_bytes(_tiff(width, height, [bytes(width * height * bits // 8)], bits, 1, 1, compression, 1))
    return _api(path, [2])


def _tiff_planes(rng: np.random.Generator, d: Path) -> dict:
    dtype, fmt, samples, planar = _pick(rng, [(np.uint8, 1, 3, 2), (np.uint8, 1, 3, 2), (np.uint16, 1, 3, 2),
                                              (np.int16, 2, 3, 2), (np.float32, 3, 3, 2), (np.uint16, 1, 4, 2),
                                              (np.uint8, 1, 2, 2), (np.uint32, 1, 3, 2), (np.uint16, 1, 2, 1),
                                              (np.int16, 2, 2, 1)])
    width, height = (int(v) for v in rng.integers(16, 96, 2))
    planes = (rng.random((samples, height, width)) * 200).astype(dtype)
    path = d / "planes.tif"
    blobs = [p.tobytes() for p in planes] if planar == 2 else [np.moveaxis(planes, 0, -1).tobytes()]
    path.write_bytes(_tiff(width, height, blobs, planes.dtype.itemsize * 8, samples, fmt, 1, planar))
    if dtype is np.uint8 and samples == 3:  # read right: its grey pixels are checked
        a = planes.astype(np.float64)
        np.save(d / "want.npy", 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2])
        return {"kind": "api", "call": "decoders", "op": "grey", "path": str(path), "want": str(d / "want.npy"),
                "expect": [0], "named": True}
    return _api(path, [2])


def _jpeg_scans(rng: np.random.Generator, d: Path) -> dict:
    import cv2

    side = int(_pick(rng, [256, 512, 1024]))
    image = np.full((side, side), int(rng.integers(0, 256)), np.uint8)
    _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    raw = buf.tobytes()
    last = raw.rfind(b"\xff\xda")
    extra = int(_pick(rng, [0, 3, 60, 300, 1001, 5000]))
    path = d / "scans.jpg"
    path.write_bytes(raw[:-2] + raw[last:-2] * extra + b"\xff\xd9")
    return _api(path, [0, 2])


def _mrc_exttyp(rng: np.random.Generator, d: Path) -> dict:
    import mrcfile

    path = d / "ext.mrc"
    with mrcfile.new(path) as m:
        m.set_data(rng.poisson(50, tuple(int(v) for v in rng.integers(16, 64, 2))).astype(np.int16))
        m.set_extended_header(np.zeros(int(_pick(rng, [4, 64, 128, 1024])), np.uint8))
    raw = bytearray(path.read_bytes())
    raw[104:108] = rng.integers(0, 256, 4).astype(np.uint8).tobytes() if rng.random() < 0.7 else \
        _pick(rng, [b"FEI1", b"FEI2", b"SERI", b"\x80\x81\x82\x83"])
    path.write_bytes(bytes(raw))
    permissive = bool(rng.random() < 0.5)
    return _api(path, [0] if permissive else [0, 2], permissive=permissive)


def _xml_encoding(rng: np.random.Generator, d: Path, image: Path) -> dict:
    out = d / "out"
    out.mkdir()
    img = d / "img.mrc"
    img.write_bytes(image.read_bytes())
    encoding = _pick(rng, ["x-nothing", "rot13", "shift_jis", "utf-32", "idna", "hex", "undefined", "utf-7"])
    (d / "img.xml").write_text(f'<?xml version="1.0" encoding="{encoding}"?><MicroscopeImage><SpatialScale>'
                               "<pixelSize><x><numericValue>2e-9</numericValue></x></pixelSize></SpatialScale>"
                               "</MicroscopeImage>")
    return {"kind": "api", "call": "main", "argv": ["squares", str(img), "--no-score", "-o", str(out / "r.json")],
            "expect": [0], "outdir": str(out), "rerun": [str(out / "r.json")]}


def _nav_overflow(rng: np.random.Generator, d: Path, image: Path) -> dict:
    out = d / "out"
    out.mkdir()
    img = d / "img.mrc"
    img.write_bytes(image.read_bytes())
    big = _pick(rng, ["1e308", "-1e308", "1.7976931348623157e308"])
    mat = _pick(rng, [f"1 {big} 0 1", f"1 0 {big} 1"])
    (d / "s.nav").write_text("AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapID = 5\nStageXYZ = 10 -20 0\n"
                             f"MapScaleMat = {mat}\nMapWidthHeight = 320 320\nMapFile = img.mrc\n")
    nav_out = out / "s_ptolemy.nav"
    return {"kind": "api", "call": "main", "expect": [2], "outdir": str(out), "absent": [str(nav_out)],
            "argv": ["squares", str(img), "--no-score", "-o", str(out / "r.json"), "--nav", str(d / "s.nav"),
                     "--nav-out", str(nav_out)]}


def _mdoc_coords(rng: np.random.Generator, d: Path) -> dict:
    import mrcfile

    path = d / "mont.mrc"
    with mrcfile.new(path) as m:
        m.set_data(rng.poisson(50, (2, 64, 64)).astype(np.int16))
    lie = _pick(rng, ["1e308", "-1e308", "inf", "-inf", "nan", "2147483648", "1e19"])
    where = int(rng.integers(0, 2))
    pieces = [["0", "0"], ["60", "0"]]
    pieces[where][int(rng.integers(0, 2))] = lie
    (d / "mont.mrc.mdoc").write_text("PixelSpacing = 10\nMontage = 1\n\n" + "".join(
        f"[ZValue = {z}]\nPieceCoordinates = {x} {y} 0\n\n" for z, (x, y) in enumerate(pieces)))
    return _api(path, [2])


def _raster_grow(rng: np.random.Generator, d: Path) -> dict:
    import cv2

    ext = _pick(rng, [".png", ".jpg", ".tif"])
    path = d / f"grow{ext}"
    data = rng.integers(0, 200, tuple(int(v) for v in rng.integers(16, 300, 2))).astype(np.uint8)
    assert cv2.imwrite(str(path), data)
    return {"kind": "api", "call": "decoders", "op": "grow", "path": str(path),
            "grow": int(_pick(rng, [1, 2, 3])) << 30, "expect": [0], "named": True}


def apng_file(side: int, frames: int, pixels: bytes) -> bytes:
    """An animated grey PNG of `frames` side x side frames, each of the zlib stream `pixels` (filtered rows)."""
    raw = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    raw += _png_chunk(b"acTL", struct.pack(">II", frames, 0))
    seq = 0
    for frame in range(frames):
        raw += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, side, side, 0, 0, 1, 10, 0, 0))
        seq += 1
        if frame == 0:
            raw += _png_chunk(b"IDAT", pixels)
        else:
            raw += _png_chunk(b"fdAT", struct.pack(">I", seq) + pixels)
            seq += 1
    return raw + _png_chunk(b"IEND", b"")


def _apng_tif(rng: np.random.Generator, d: Path) -> dict:
    side = int(_pick(rng, [64, 300, 1000]))
    frames = int(_pick(rng, [2, 50, 3000]))
    raw = apng_file(side, frames, zlib.compress(b"\0" * ((side + 1) * side), 9))
    path = d / _pick(rng, ["frames.tif", "frames.tiff", "frames.png"])
    path.write_bytes(raw)
    return _api(path, [0])


def _other_format(rng: np.random.Generator, d: Path) -> dict:
    import cv2

    ext = _pick(rng, [".webp", ".jp2", ".gif", ".avif", ".hdr", ".pgm", ".pfm", ".ras"])
    data = rng.integers(0, 200, (int(rng.integers(16, 300)), int(rng.integers(16, 300)), 3)).astype(np.uint8)
    ok, buf = cv2.imencode(ext, data.astype(np.float32) if ext in (".hdr", ".pfm") else
                           data[:, :, 0] if ext == ".pgm" else data)
    path = d / f"other{_pick(rng, ['.png', '.jpg', '.tif', '.jpeg', '.tiff'])}"
    path.write_bytes(buf.tobytes() if ok else b"GIF89a" + bytes(64))
    return _api(path, [2])


def decoder_lies(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """One of the ten kinds above."""
    kind = _pick(rng, ["tiff_lost", "tiff_planes", "jpeg_scans", "mrc_exttyp", "xml_encoding", "nav_overflow",
                       "mdoc_coords", "raster_grow", "apng_tif", "other_format"])
    if kind == "xml_encoding":
        return _xml_encoding(rng, d, image)
    if kind == "nav_overflow":
        return _nav_overflow(rng, d, image)
    return {"tiff_lost": _tiff_lost, "tiff_planes": _tiff_planes, "jpeg_scans": _jpeg_scans,
            "mrc_exttyp": _mrc_exttyp, "mdoc_coords": _mdoc_coords, "raster_grow": _raster_grow,
            "apng_tif": _apng_tif, "other_format": _other_format}[kind](rng, d)


def run_decoder_case(case: dict) -> tuple[int, str]:
    """The in-process part of a `grey` or `grow` case: (exit code, detail; '!wrong_value: ...' on a defect)."""
    import os

    from ptolemy_rt import io, read_image

    if case["op"] == "grey":
        got = read_image(case["path"]).data
        want = np.load(case["want"])
        if got.shape != want.shape or np.abs(got - want).max() > 1.0:
            return 0, f"!wrong_value: {case['path']}: the grey pixels are not the planes' own"
        return 0, ""
    checked = io._check_raster_section

    def grow(path, *args):  # another program appends to the file meanwhile (sparse: no disk used)
        checked(path, *args)
        os.truncate(path, path.stat().st_size + case["grow"])

    io._check_raster_section = grow
    try:
        read_image(case["path"])
    finally:
        io._check_raster_section = checked
    return 0, ""
