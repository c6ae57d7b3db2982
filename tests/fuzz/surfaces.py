"""Generator classes for the attack surfaces beyond the first nine: raster decoders, MRC modes and stacks,
sidecar files, navigators, session folders for `batch`, numeric edge values of the commands, full disks.

Most run the real command line in-process (`call: "main"`: cli.main(argv) in the fuzz worker, stdout and
stderr captured), which costs milliseconds where a subprocess costs a second; `full_disk` needs a process
of its own (a file-size limit, stdout on /dev/full).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

NEW_CLASSES = ("rasters", "mrc_stacks", "sidecars", "navs", "sessions", "edge_options", "full_disk", "small_files",
               "pipelines", "batch_signals", "model_graphs", "resume", "path_names")


def _main(argv: list[str], expect: set[int], outdir: Path | None = None, **extra) -> dict:
    """An in-process command-line case."""
    case = {"kind": "api", "call": "main", "argv": [str(a) for a in argv], "expect": sorted(expect), **extra}
    if outdir is not None:
        case["outdir"] = str(outdir)
    return case


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


# ---------------------------------------------------------------------------------------------- rasters

def _tiff_bytes(rng: np.random.Generator, pages: list[np.ndarray]) -> bytes:
    import tempfile

    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.tif")
        params = [cv2.IMWRITE_TIFF_COMPRESSION, int(_pick(rng, [1, 5, 32773, 8]))]
        if not cv2.imwritemulti(path, pages, params):
            cv2.imwritemulti(path, pages)
        return Path(path).read_bytes()


def _tiff_mutate(rng: np.random.Generator, raw: bytearray) -> None:
    """Overwrite the value of a few IFD entries of the first page with lies."""
    order = "<" if raw[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", raw[4:8])[0]
    if ifd + 2 > len(raw):
        return
    count = struct.unpack(order + "H", raw[ifd:ifd + 2])[0]
    lies = [0, 1, 2, 3, 7, 8, 12, 16, 24, 32, 64, 255, 256, 65535, 1 << 16, 1 << 24, 2**31 - 1, 2**32 - 1]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(max(count, 1)))
        e = ifd + 2 + 12 * k
        if e + 12 > len(raw):
            return
        tag = struct.unpack(order + "H", raw[e:e + 2])[0]
        if rng.random() < 0.2:  # the tag itself: a strip tag becomes a tile tag, a size tag a type tag
            raw[e:e + 2] = struct.pack(order + "H", int(_pick(rng, [256, 257, 258, 259, 262, 273, 277, 278, 279,
                                                                   284, 317, 322, 323, 324, 325, 339])))
        elif rng.random() < 0.2:  # the count
            raw[e + 4:e + 8] = struct.pack(order + "I", int(_pick(rng, [0, 1, 2, 1000, 2**31 - 1])))
        else:
            value = int(_pick(rng, lies))
            typ = struct.unpack(order + "H", raw[e + 2:e + 4])[0]
            if typ == 3:
                raw[e + 8:e + 10] = struct.pack(order + "H", value & 0xFFFF)
            else:
                raw[e + 8:e + 12] = struct.pack(order + "I", value & 0xFFFFFFFF)
        del tag


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _png(rng: np.random.Generator) -> tuple[bytes, bool]:
    """A hand-made PNG: any bit depth and colour type, a palette or none, interlaced or not; (bytes, valid)."""
    colour, depth = _pick(rng, [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 4), (3, 8),
                                (4, 8), (4, 16), (6, 8), (6, 16), (3, 16), (5, 8), (0, 7)])
    w, h = (int(v) for v in rng.integers(1, 80, 2))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    row_bytes = (w * channels * depth + 7) // 8
    rows = b"".join(b"\0" + rng.integers(0, 256, row_bytes).astype(np.uint8).tobytes() for _ in range(h))
    interlace = int(rng.random() < 0.2)
    valid = (colour, depth) not in ((3, 16), (5, 8), (0, 7)) and not interlace
    body = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))
    if colour == 3 and rng.random() < 0.8:
        n = int(rng.integers(1, 257))
        body += _png_chunk(b"PLTE", rng.integers(0, 256, 3 * n).astype(np.uint8).tobytes())
    elif colour == 3:
        valid = False  # no palette
    if rng.random() < 0.2:
        body += _png_chunk(b"tRNS", rng.integers(0, 256, int(rng.integers(0, 300))).astype(np.uint8).tobytes())
        valid = False
    body += _png_chunk(b"IDAT", zlib.compress(rows, 6)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body, valid


def rasters(rng: np.random.Generator, d: Path) -> dict:
    """TIFFs (any dtype, several pages, compressions, lying IFD entries), PNGs (bit depths, palettes), JPEGs
    (progressive, colour, a lying frame header): read with a section or none. Expected: 0 or 2, nothing else,
    and an error message that names the file."""
    import cv2

    kind = _pick(rng, ["tif", "tif", "tif", "png", "jpg"])
    section = None if rng.random() < 0.6 else int(_pick(rng, [0, 1, 2, -1, -2, 5, 4095, 4096, -4097]))
    if kind == "tif":
        dtype = _pick(rng, ["uint8", "uint16", "int16", "float32", "float64", "int8", "int32", "uint32"])
        n = int(_pick(rng, [1, 1, 2, 3, 7]))
        shape = tuple(int(v) for v in rng.integers(4, 64, 2))
        pages = []
        for _ in range(n):
            if rng.random() < 0.3:
                shape = tuple(int(v) for v in rng.integers(4, 64, 2))
            page = (rng.normal(100, 30, shape) if dtype.startswith("float") else
                    rng.integers(0, 100, shape)).astype(dtype)
            if rng.random() < 0.15:
                page = np.dstack([page] * int(_pick(rng, [3, 4])))
            if dtype.startswith("float") and rng.random() < 0.1:
                with np.errstate(over="ignore"):  # 1e300 is inf in float32
                    page.flat[0] = _pick(rng, [np.nan, np.inf, 1e300])
            pages.append(page)
        try:
            raw = bytearray(_tiff_bytes(rng, pages))
        except cv2.error:
            grey = [q.astype(np.uint16) for q in pages]
            raw = bytearray(_tiff_bytes(rng, [q[..., 0] if q.ndim == 3 else q for q in grey]))
        if rng.random() < 0.5:
            _tiff_mutate(rng, raw)
        if rng.random() < 0.15:
            raw = raw[: int(rng.integers(8, len(raw)))]
    elif kind == "png":
        body, _ = _png(rng)
        raw = bytearray(body)
        if rng.random() < 0.2:
            raw = raw[: int(rng.integers(8, len(raw)))]
    else:
        colour = rng.random() < 0.5
        shape = tuple(int(v) for v in rng.integers(8, 64, 2)) + ((3,) if colour else ())
        params = [cv2.IMWRITE_JPEG_PROGRESSIVE, int(rng.random() < 0.5)]
        _, buf = cv2.imencode(".jpg", rng.integers(0, 256, shape).astype(np.uint8), params)
        raw = bytearray(buf.tobytes())
        sof = next((i for i in range(2, len(raw) - 9) if raw[i] == 0xFF and raw[i + 1] in (0xC0, 0xC2)), None)
        if sof is not None and rng.random() < 0.6:
            what = int(rng.integers(0, 3))
            if what == 0:  # the frame's size
                raw[sof + 5:sof + 9] = struct.pack(">HH", *(int(_pick(rng, [0, 1, 8191, 16000, 65535]))
                                                          for _ in range(2)))
            elif what == 1:  # the component count (4: CMYK/YCCK, 2: none such)
                raw[sof + 9] = int(_pick(rng, [0, 2, 4, 255]))
            else:  # the sample precision (12-bit JPEG)
                raw[sof + 4] = int(_pick(rng, [12, 16, 0]))
    path = d / f"r.{kind}"
    path.write_bytes(bytes(raw))
    case = {"kind": "api", "call": "read_segment", "path": str(path), "expect": [0, 2], "named": True}
    if section is not None:
        case["section"] = section
    return case


# ---------------------------------------------------------------------------------------------- MRC stacks

def mrc_stacks(rng: np.random.Generator, d: Path) -> dict:
    """MRC files of every mode (0, 1, 2, 4, 6, 12, 101), single images, stacks and volume stacks, with an
    extended header (FEI1/FEI2/CCP4, honest or not) and a --section at and beyond the ends. The oracle is
    exact: 0 when the mode is read, the section exists and the pixels are finite; 2 otherwise."""
    import mrcfile

    mode = int(_pick(rng, [0, 1, 2, 2, 4, 6, 12, 101]))
    nz = int(_pick(rng, [1, 1, 2, 3, 17, 300]))
    ny, nx = (int(v) for v in rng.integers(2, 40, 2))
    dtype = {0: np.int8, 1: np.int16, 2: np.float32, 4: np.complex64, 6: np.uint16, 12: np.float16}.get(mode,
                                                                                                      np.uint8)
    data = rng.integers(0, 100, (nz, ny, nx)).astype(dtype)
    if mode in (2, 12) and rng.random() < 0.15:
        data.flat[int(rng.integers(data.size))] = _pick(rng, [np.nan, np.inf])
    path = d / "s.mrc"
    volume = nz > 1 and rng.random() < 0.2
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore")  # NaN data
        if mode == 101:
            m.set_data(np.zeros((nz, ny, nx), np.uint8))
        else:
            m.set_data(data if nz > 1 else data[0])
        if volume:
            m.header.ispg = 401
            m.header.mz = int(_pick(rng, [1, nz, 2, 3]))
        unknown_ext = False
        if rng.random() < 0.3:
            ext_n = int(_pick(rng, [0, 128, 768, 4096]))
            m.set_extended_header(np.zeros(ext_n, np.uint8))
            m.header.exttyp = _pick(rng, [b"FEI1", b"FEI2", b"CCP4", b"SERI", b"\0\0\0\0"])
            unknown_ext = ext_n > 0 and m.header.exttyp == b""  # mrcfile's validator refuses it
    raw = bytearray(path.read_bytes())
    if mode == 101:
        raw[12:16] = np.int32(101).tobytes()
    honest = True
    if rng.random() < 0.2:  # the extended header size lies: over the data, or past the end
        lie = int(_pick(rng, [4, 1024, 1 << 20, len(raw)]))
        raw[92:96] = np.int32(lie).tobytes()
        honest = False
    path.write_bytes(bytes(raw))
    finite = True
    section = None if rng.random() < 0.3 else int(_pick(rng, [0, 1, nz - 1, nz, nz + 1, -1, -nz, -nz - 1,
                                                              2**31 - 1, 2**63 - 1, -(2**63)]))
    if volume:
        mz = int(np.frombuffer(raw[36:40], np.int32)[0])
        if mz < 1 or nz % mz:
            honest = False
    exists = section is None or (-nz <= section < nz if nz > 1 else section == 0)
    if exists and mode in (2, 12):  # only the section read must be finite
        finite = bool(np.isfinite(data[section or 0].astype(np.float64)).all())
    ok = mode in (0, 1, 2, 6, 12) and finite and exists and honest and not unknown_ext
    case = {"kind": "api", "call": "read_segment", "path": str(path), "expect": [0] if ok else [2],
            "named": True, "permissive": False}
    if not honest:
        case["expect"] = [0, 2]  # a lying size may still describe readable data (a short extended header)
    if section is not None:
        case["section"] = section
    return case


# ---------------------------------------------------------------------------------------------- sidecars

_XMLS = [
    b"",
    b"<",
    b"\xff\xfe<\x00a\x00>\x00",
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]><a>&y;</a>',
    b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>',
    b"<a>" + b"<b>" * 5000 + b"</b>" * 5000 + b"</a>",
    b"<a>" + b"<b>" * 200000 + b"</b>" * 200000 + b"</a>",
]


def _epu_xml(rng: np.random.Generator, shape: tuple[int, int]) -> bytes:
    pixel = _pick(rng, ["1e-10", "nan", "inf", "-1e-10", "0", "1e300", "abc", "", "1.2e-10 3", "1e-45",
                        "4.5e-10", "-0"])
    readout = _pick(rng, [f"{shape[1]}", "0", "nan", "-5", "1e30", "x", f"{shape[1] * 4}"])
    stage = _pick(rng, ["1e-5", "nan", "inf", "", "1e308"])
    m = _pick(rng, ["1", "0", "nan", "1e308", "-1e308"])
    return (f'<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects">'
            f"<SpatialScale><pixelSize><x><numericValue>{pixel}</numericValue></x>"
            f"<y><numericValue>{pixel}</numericValue></y></pixelSize></SpatialScale>"
            f"<microscopeData><stage><Position><X>{stage}</X><Y>{stage}</Y></Position></stage></microscopeData>"
            f"<ReadoutArea><width>{readout}</width><height>{readout}</height></ReadoutArea>"
            f"<ReferenceTransformation><matrix><_m11>{m}</_m11><_m12>0</_m12><_m21>0</_m21><_m22>{m}</_m22>"
            f"</matrix></ReferenceTransformation></MicroscopeImage>").encode()


def _mdoc_text(rng: np.random.Generator, nz: int, tile: tuple[int, int], montage: bool) -> str:
    lines = [f"PixelSpacing = {_pick(rng, ['10.5', 'nan', 'inf', '-3', '0', 'abc', '1e308', ''])}",
             f"ImageSize = {tile[1]} {tile[0]}"]
    count = int(_pick(rng, [nz, nz, nz + 1, 0, 1, 5000]))
    for z in range(count):
        zv = z if rng.random() < 0.9 else int(_pick(rng, [-1, nz, 10**9, z]))
        lines.append(f"[ZValue = {zv}]")
        lines.append(f"Magnification = {_pick(rng, ['135', '2250', 'nan', 'inf', '-1', 'x', '1e309'])}")
        if montage:
            x = z % 2 * (tile[1] - 8)
            y = z // 2 * (tile[0] - 8)
            lie = rng.random()
            if lie < 0.15:
                x, y = (int(_pick(rng, [-(2**31), 2**31 - 1, 10**7, -(10**7), 10**18, 16000, 9000, -12000]))
                        for _ in range(2))
            xs, ys = str(x), str(y)
            if rng.random() < 0.1:
                xs = _pick(rng, ["nan", "inf", "-inf", "1e309", "x", ""])
            lines.append(f"PieceCoordinates = {xs} {ys} {_pick(rng, ['0', '0', '1', 'nan', '-1'])}")
            if rng.random() < 0.3:
                lines.append(f"AlignedPieceCoords = {x + int(rng.integers(-5, 6))} {y} 0")
    return "\n".join(lines) + "\n"


def sidecars(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """Hostile files beside the image: EPU .xml (entities, DTDs, deep nesting, NaN and absurd numbers), SerialEM
    .mdoc (lying counts, NaN pixel spacing, montage piece coordinates far out or not numbers), an .mdoc that is
    a directory or huge. A broken sidecar is a warning for the pixel size (exit 0); a montage .mdoc makes the
    stack a montage, which may be refused (2). Run as `squares IMAGE --no-score -o OUT`."""
    import mrcfile

    out = d / "out"
    out.mkdir()
    kind = int(rng.integers(0, 4))
    if kind <= 1:  # a single image and its EPU .xml
        img = d / "img.mrc"
        img.write_bytes(image.read_bytes())
        xml = d / "img.xml"
        if rng.random() < 0.5:
            xml.write_bytes(_epu_xml(rng, (320, 320)))
        else:
            xml.write_bytes(_pick(rng, _XMLS))
        if rng.random() < 0.1:
            with open(xml, "ab") as fh:  # over the size limit, sparse
                fh.truncate(9 * 1024 * 1024)
        expect = {0}
    elif kind == 2:  # a single image and a pixel-size .mdoc
        img = d / "img.mrc"
        img.write_bytes(image.read_bytes())
        mdoc = d / _pick(rng, ["img.mrc.mdoc", "img.mdoc"])
        if rng.random() < 0.1:
            mdoc.mkdir()
        else:
            mdoc.write_text(_mdoc_text(rng, 1, (320, 320), montage=False))
        expect = {0}
    else:  # a montage stack and its .mdoc
        with mrcfile.open(image) as m:
            atlas = m.data.copy()
        tile = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        nz = int(_pick(rng, [2, 4, 6]))
        stack = np.stack([atlas[(z // 2) * 60:(z // 2) * 60 + tile[0], (z % 2) * 60:(z % 2) * 60 + tile[1]]
                          for z in range(nz)])
        img = d / "mont.mrc"
        with mrcfile.new(img) as m:
            m.set_data(stack.astype(np.float32))
        mdoc = d / "mont.mrc.mdoc"
        mdoc.write_text(_mdoc_text(rng, nz, tile, montage=True))
        expect = {0, 2}
    argv = ["squares", str(img), "--no-score", "-o", str(out / "r.json")]
    return _main(argv, expect, out, rerun=[str(out / "r.json")])


# ---------------------------------------------------------------------------------------------- navigators

def _nav_item(rng: np.random.Generator, label: str, map_file: str, lie: float) -> list[str]:
    def val(good: str, bad: list[str]) -> str:
        return _pick(rng, bad) if rng.random() < lie else good

    numbers = ["nan", "inf", "-inf", "1e309", "x", "", "1e308", "-0", "3.5", "99999999999999999999"]
    mats = ["0 0 0 0", "nan 0 0 1", "1e200 0 0 1e200", "1 2 3", "1e-300 0 0 1e-300"]
    sizes = ["0 0", "-320 320", "nan 320", "inf inf", "1e300 1e300", "320", "3 3"]
    files = ["", "C:\\x\\img.mrc", "/dev/zero", "../../img.mrc"]
    lines = [f"[Item = {label}]",
             f"Type = {val('2', ['0', '1', '2.0', 'x', ''])}",
             f"MapID = {val(str(int(rng.integers(1, 10**6))), numbers)}",
             f"StageXYZ = {val('10 -20 0', ['nan nan 0', 'inf 0 0', '1', '', '1e308 1e308 1e308', 'x y z'])}",
             f"MapScaleMat = {val('2 0 0 -2', mats)}",
             f"MapWidthHeight = {val('320 320', sizes)}",
             f"MapFile = {val(map_file, files)}",
             f"MapSection = {val('0', numbers + ['-1', '1'])}",
             f"MapMontage = {val('0', ['1', 'x'])}",
             f"Regis = {val('1', numbers)}"]
    if rng.random() < lie:
        lines.append(f"GroupID = {_pick(rng, numbers + ['²', '-5', '99999'])}")
    return lines


def navs(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """`squares IMAGE --no-score --nav NAV`: navigators with lying or non-numeric map keys, odd labels (unicode
    digits, empty, very long), repeated maps of the same file, no version line, CRLF, binary junk. A navigator
    that cannot take the points is refused (2); else the copy is written (0); never 70."""
    out = d / "out"
    out.mkdir()
    img = d / "img.mrc"
    img.write_bytes(image.read_bytes())
    lie = float(_pick(rng, [0.0, 0.1, 0.3, 0.7]))
    lines = [] if rng.random() < 0.05 else ["AdocVersion = 2.00", "LastSavedAs = C:\\x\\s.nav"]
    labels = ["1", "2", "²", "٣", "", "A" * 300, "-1", "1e5", "007", "99999999999999999999"]
    n = int(_pick(rng, [1, 1, 2, 3]))
    for i in range(n):
        label = _pick(rng, labels) if rng.random() < lie else str(i + 1)
        lines += _nav_item(rng, label, "img.mrc" if rng.random() > lie / 2 else "other.mrc", lie)
    if rng.random() < 0.2:  # points and other items with odd labels and ids
        lines += [f"[Item = {_pick(rng, labels)}]", "Type = 0", f"MapID = {_pick(rng, ['²', '-3', '1' * 30])}",
                  f"GroupID = {_pick(rng, ['²', '٣', '-0', '5'])}"]
    newline = "\r\n" if rng.random() < 0.2 else "\n"
    text = newline.join(lines) + newline
    raw = text.encode("utf-8")
    if rng.random() < 0.1:
        raw = raw[: int(rng.integers(0, len(raw) + 1))] + rng.integers(0, 256, 64).astype(np.uint8).tobytes()
    nav = d / "s.nav"
    nav.write_bytes(raw)
    argv = ["squares", str(img), "--no-score", "-o", str(out / "r.json"), "--nav", str(nav),
            "--nav-out", str(out / "s_ptolemy.nav")]
    if rng.random() < 0.2:
        argv += ["--map-label", _pick(rng, labels)]
    return _main(argv, {0, 2}, out, rerun=[str(out / "s_ptolemy.nav")],
                 together=[str(out / "r.json"), str(out / "s_ptolemy.nav")])


# ---------------------------------------------------------------------------------------------- sessions

MAP_FILES = ["map.mrc", "C:/a/map.mrc", "/etc/passwd", "../../../x.mrc", "fifo.mrc", "loop.mrc", ""]


def sessions(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """`batch SESSION -o OUT --workers 1`: session folders with symlink loops, dangling links, FIFOs and folders
    named like images, empty and garbage images, names with newlines and odd unicode, .nav files pointing
    anywhere, .mdoc files beside images that lie. The batch keeps going and exits 0 or 2."""
    session = d / "session"
    kind = _pick(rng, ["epu", "leginon", "serialem", "plain"])
    good = image.read_bytes()
    if kind == "epu":
        atlas_dir = session / "Atlas"
        atlas_dir.mkdir(parents=True)
        (atlas_dir / "Atlas_1.mrc").write_bytes(good)
        if rng.random() < 0.5:
            (atlas_dir / "Atlas_1.xml").write_bytes(_epu_xml(rng, (320, 320)) if rng.random() < 0.7
                                                    else _pick(rng, _XMLS))
        sq = session / "Images-Disc1" / "GridSquare_1"
        sq.mkdir(parents=True)
        (sq / "GridSquare_1_2.jpg").write_bytes(_pick(rng, [b"", b"\xff\xd8\xff", good[:100]]))
        folder = sq
    elif kind == "leginon":
        folder = session / "rawdata"
        folder.mkdir(parents=True)
        (folder / "s_00012gr.mrc").write_bytes(good)
        (folder / "s_00012gr_00003sq.mrc").write_bytes(_pick(rng, [b"", good[:2000], b"x" * 1024]))
    elif kind == "serialem":
        folder = session
        folder.mkdir(parents=True)
        (folder / "map.mrc").write_bytes(good)
        (folder / "map.mrc.mdoc").write_text(_mdoc_text(rng, 1, (320, 320), montage=rng.random() < 0.3))
        entries = ["AdocVersion = 2.00", "[Item = 1]", "Type = 2",
                   f"MapFile = {_pick(rng, MAP_FILES)}",
                   "MapID = 5", "StageXYZ = 0 0 0", "MapScaleMat = 1 0 0 -1", "MapWidthHeight = 320 320"]
        (folder / "s.nav").write_text("\n".join(entries) + "\n")
    else:
        folder = session
        folder.mkdir(parents=True)
        (folder / "atlas_a.mrc").write_bytes(good)
    # the hostile extras
    for _ in range(int(rng.integers(1, 4))):
        extra = int(rng.integers(0, 9))
        try:
            if extra == 0:
                (folder / "loop").symlink_to(folder)
            elif extra == 1:
                (folder / "dangling.mrc").symlink_to(d / "nowhere.mrc")
            elif extra == 2:
                os.mkfifo(folder / "fifo.mrc")
            elif extra == 3:
                (folder / "dir.mrc").mkdir()
            elif extra == 4:
                (folder / _pick(rng, ["new\nline_atlas.mrc", "tab\tatlas.mrc", "\u00e9t\u00e9 atlas.mrc",
                                      "\u202eatlas.mrc", "atlas \U0001f600.mrc", "-atlas.mrc", " atlas.mrc"])
                 ).write_bytes(good)
            elif extra == 5:
                (folder / "atlas_empty.mrc").write_bytes(b"")
            elif extra == 6:
                (folder / "atlas_junk.tif").write_bytes(rng.integers(0, 256, 300).astype(np.uint8).tobytes())
            elif extra == 7:
                (folder / "loop.mrc").symlink_to(folder / "loop.mrc")
            else:
                (folder / "atlas_link.mrc").symlink_to(folder.parent)
        except (FileExistsError, OSError):
            pass
    out = d / "out"
    argv = ["batch", str(session), "-o", str(out), "--workers", "1", "--no-progress", "--threads", "1"]
    if kind == "plain" or rng.random() < 0.3:
        argv += ["--kind", "squares"]
    if rng.random() < 0.3:
        argv.append("--no-report")
    return _main(argv, {0, 2}, out, batch_out=str(out))


# ---------------------------------------------------------------------------------------------- options

# (command, option, lo, hi, lo_open, hi_open, integer)
EDGE_OPTIONS = [
    ("squares", "--top", 0, None, False, False, True),
    ("squares", "--min-score", None, None, False, False, False),
    ("squares", "--pixel-size", 1e-2, 1e6, False, False, False),
    ("squares", "--section", 0, 0, False, False, True),
    ("squares", "--max-pixels", 1, 1 << 40, False, False, True),
    ("batch", "--section", 0, 0, False, False, True),
    ("batch", "--workers", 1, None, False, False, True),
    ("batch", "--threads", 1, max(1, min(256, 4 * (os.cpu_count() or 1))), False, False, True),
]
EDGE_VALUES = ["0", "1", "-1", "2", "nan", "inf", "-inf", "1e309", "1e-320", "-0", "0.0", "0.5", "1e9",
               "9223372036854775807", "9223372036854775808", "-9223372036854775809", "99999999999999999999999",
               "0x10", "1_0", " 3", "3 ", "", "abc", "1e3", "10000", "0.49", "10001", "102400", "\u0663",
               "\uff11", "1\u00a0"]


def _accepted(spec: tuple, text: str) -> bool:
    _, option, lo, hi, lo_open, hi_open, integer = spec
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        return False
    if not np.isfinite(float(value)):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    return not (hi is not None and (value >= hi if hi_open else value > hi))


def edge_options(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """Edge values of --top, --min-score, --pixel-size, --section, --max-pixels (squares) and --section,
    --workers, --threads (batch), run for real on the atlas: 0 when the value is in range, 2 otherwise
    (--section 0 of a single image and --max-pixels below its 102,400 pixels included)."""
    spec = EDGE_OPTIONS[int(rng.integers(len(EDGE_OPTIONS)))]
    command, option = spec[0], spec[1]
    text = _pick(rng, EDGE_VALUES)
    ok = _accepted(spec, text)
    if option == "--max-pixels" and ok and int(text) < 320 * 320:
        ok = False  # the image is over that budget
    out = d / "out"
    if command == "squares":
        out.mkdir()
        argv = ["squares", str(image), "--no-score", "-o", str(out / "r.json"), option, text]
        if rng.random() < 0.3:
            argv += ["--top", _pick(rng, ["0", "1", "3"])]
        return _main(argv, {0} if ok else {2}, out, rerun=[str(out / "r.json")] if ok else [],
                     absent=[] if ok else [str(out / "r.json")])
    argv = ["batch", str(image), "-o", str(out), "--kind", "squares", "--no-progress", "--no-report", option, text]
    if option != "--workers":
        argv += ["--workers", "1"]
    if option != "--threads":
        argv += ["--threads", "1"]
    return _main(argv, {0} if ok else {2}, out if ok else None, batch_out=str(out) if ok else None)


# ---------------------------------------------------------------------------------------------- full disk

def full_disk(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """Outputs that cannot be written whole: a file-size limit below the output's size (the disk fills up
    half-way: EFBIG), stdout on /dev/full (ENOSPC) or closed. Exit 4, and no partial or temporary file."""
    out = d / "out"
    out.mkdir()
    kind = int(rng.integers(0, 4))
    base = ["squares", str(image), "--no-score"]
    if kind == 0:
        limit = int(_pick(rng, [1, 100, 1000]))
        target = out / "r.json"
        if rng.random() < 0.3:
            target.write_text("old")
        return {"kind": "cli", "argv": [*base, "-o", str(target)], "expect": [4], "outdir": str(out),
                "fsize": limit, "unchanged": {str(target): "old"} if target.exists() else {},
                "absent": [] if target.exists() else [str(target)]}
    if kind == 1:
        limit = int(_pick(rng, [2000, 20000]))
        return {"kind": "cli", "argv": [*base, "--overlay", str(out / "o.png"), "-o", str(out / "r.json")],
                "expect": [4], "outdir": str(out), "fsize": limit,
                "absent": [str(out / "o.png"), str(out / "r.json")]}
    if kind == 2:
        fmt = _pick(rng, ["json", "csv", "txt"])
        return {"kind": "cli", "argv": [*base, "-f", fmt], "expect": [4], "outdir": str(out),
                "stdout": "/dev/full"}
    return {"kind": "cli", "argv": ["batch", str(image), "-o", str(out / "b"), "--kind", "squares",
                                    "--workers", "1", "--threads", "1", "--no-progress"],
            "expect": [4], "outdir": str(out), "fsize": int(_pick(rng, [1, 3000]))}


# ---------------------------------------------------------------------------------------------- small files

def _hostile_file(rng: np.random.Generator, path: Path, form: str) -> None:
    if form == "loop":
        path.symlink_to(path)
    elif form == "zero":
        path.symlink_to(_pick(rng, ["/dev/zero", "/dev/urandom", "/dev/null"]))
    elif form == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as fh:
            fh.truncate(int(_pick(rng, [300 << 20, 3 << 30])))


def _hostile_json(rng: np.random.Generator, good: dict) -> bytes:
    """`good` with one field made hostile, or JSON nested past any recursion limit, or not UTF-8."""
    what = int(rng.integers(0, 4))
    if what == 0:
        depth = int(_pick(rng, [1000, 100000]))
        return b"[" * depth + b"]" * depth
    if what == 1:
        return json.dumps(good).encode("utf-16")
    key = _pick(rng, sorted(good))
    value = _pick(rng, [float("inf"), float("nan"), -1e308, 1e308, [], {}, "x", None, True, 2**70,
                        [0.5] * 100000, [[0.1]], {"a": [1e999]}])
    return json.dumps({**good, key: value}).encode()


def small_files(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """The small files a command reads besides the image: --calibration, the model set's manifest.json, --nav, a
    session's .nav, a stack's .mdoc, as /dev/zero (or urandom, null) behind a link, a FIFO, a sparse file of
    hundreds of megabytes to gigabytes, or JSON with Infinity, NaN, huge numbers, wrong types, deep nesting.
    Refused unread and named (2, 3 for a model set), never a hang, a memory blow-up or 70."""
    from ptolemy_rt.calibration import CALIBRATION_FORMAT, VERSION

    out = d / "out"
    out.mkdir()
    where = _pick(rng, ["calibration", "calibration", "manifest", "nav", "session_nav", "mdoc", "models"])
    form = _pick(rng, ["zero", "fifo", "sparse", "json", "loop"])
    if where == "models":  # the --models path itself
        models = d / "set"
        _hostile_file(rng, models, "sparse" if form == "json" else form)
        command = _pick(rng, ["squares", "batch", "leginon-script", "models", "doctor"])
        argv = {"squares": ["squares", image, "-o", out / "r.json"],
                "batch": ["batch", image, "-o", out / "b", "--kind", "squares", "--workers", "1", "--threads", "1"],
                "leginon-script": ["leginon-script", "squares"], "models": ["models"], "doctor": ["doctor"]}[command]
        return _main([*argv, "--models", models], {3}, out)
    if where in ("nav", "session_nav", "mdoc") and form == "json":
        form = "sparse"
    if where == "calibration":
        cal = d / "cal.json"
        if form == "json":
            good = {"format": CALIBRATION_FORMAT, "version": VERSION, "kind": "squares", "score": "score",
                    "against": "x", "pairs": 2, "models": {}, "ours": [0.2, 0.6], "target": [0.3, 0.7]}
            cal.write_bytes(_hostile_json(rng, good))
        else:
            _hostile_file(rng, cal, form)
        return _main(["squares", image, "--calibration", cal, "-o", out / "r.json"], {2}, out,
                     absent=[str(out / "r.json")])
    if where == "manifest":
        models = d / "set"
        models.mkdir()
        if form == "json":
            good = {"format": 1, "models": [{"task": "square_cnn", "file": "a.onnx", "sha256": "0" * 64}]}
            (models / "manifest.json").write_bytes(_hostile_json(rng, good))
        else:
            _hostile_file(rng, models / "manifest.json", form)
        return _main(["squares", image, "--models", models, "-o", out / "r.json"], {3}, out,
                     absent=[str(out / "r.json")])
    if where == "nav":
        nav = d / "s.nav"
        _hostile_file(rng, nav, form)
        return _main(["squares", image, "--no-score", "--nav", nav, "-o", out / "r.json"], {2}, out,
                     absent=[str(out / "r.json")])
    if where == "session_nav":
        session = d / "session"
        session.mkdir()
        (session / "map.mrc").write_bytes(image.read_bytes())
        _hostile_file(rng, session / "s.nav", form)
        return _main(["batch", session, "-o", out / "b", "--workers", "1", "--threads", "1", "--no-progress"],
                     {2}, out)
    import mrcfile

    with mrcfile.open(image) as m:
        stack = np.stack([m.data] * 2)
    with mrcfile.new(d / "stack.mrc") as m:
        m.set_data(stack)
    _hostile_file(rng, d / "stack.mrc.mdoc", form)
    # a .mdoc that is not a file is not looked at: the stack's section 0 is read (exit 0, with a warning)
    return _main(["squares", d / "stack.mrc", "--no-score", "-o", out / "r.json"],
                 {2} if form == "sparse" else {0}, out)


# ---------------------------------------------------------------------------------------------- pipelines

def _odd_image(rng: np.random.Generator) -> np.ndarray:
    """An image of an odd shape, pixel type or content, for the whole pipelines."""
    from ptolemy_rt.synthetic import make_atlas, make_medmag

    shape = _pick(rng, [(1, 1), (1, 700), (700, 1), (3, 5000), (64, 64), (255, 400), (256, 256), (300, 900),
                        (512, 512), (600, 400)])
    content = _pick(rng, ["medmag", "atlas", "constant", "noise", "stripes", "checker", "ramp", "saturated"])
    rows, cols = shape
    if content == "medmag" and min(shape) >= 256:
        data, _ = make_medmag(int(rng.integers(0, 1000)))
        data = data[:rows, :cols]
    elif content == "atlas" and min(shape) >= 256:
        data, _ = make_atlas(int(rng.integers(0, 1000)), shape=(rows, cols))
    elif content == "constant":
        data = np.full(shape, float(_pick(rng, [0.0, 1.0, -5.0, 1e-40, 3e38, 65535.0])))
    elif content == "stripes":
        data = np.tile((np.arange(cols) % int(rng.integers(2, 40)) < 3).astype(float) * 100, (rows, 1))
    elif content == "checker":
        k = int(rng.integers(1, 30))
        data = (((np.arange(rows)[:, None] // k) + (np.arange(cols)[None, :] // k)) % 2) * 1000.0
    elif content == "ramp":
        data = np.add.outer(np.arange(rows), np.arange(cols)).astype(float) * float(_pick(rng, [1e-30, 1, 1e30]))
    elif content == "saturated":
        data = np.where(rng.random(shape) < 0.5, 0.0, 65535.0)
    else:
        data = rng.normal(0, 1, shape) * float(_pick(rng, [1e-20, 1, 1e20]))
    data = np.asarray(data, np.float64)
    dtype = _pick(rng, ["float32", "float32", "int16", "uint16", "int8", "float16"])
    if dtype != "float32":
        info = np.iinfo(dtype) if dtype.startswith(("int", "uint")) else np.finfo(dtype)
        with np.errstate(all="ignore"):
            data = np.clip(data, float(info.min), float(info.max))
    with np.errstate(all="ignore"):
        return data.astype(dtype)


def pipelines(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """`holes` and `squares` with their models on images of odd shapes (1x1, 1x700, 3x5000), pixel types and
    contents (constant, stripes, checkers, ramps at 1e-30 and 1e30, saturated), with any output format and
    selection: 0 (an empty result has a reason) or 2 (too small, non-finite), the same bytes on a rerun."""
    import warnings

    import mrcfile

    data = _odd_image(rng)
    path = d / "odd.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(path) as m:
            m.set_data(data)
    out = d / "out"
    out.mkdir()
    command = _pick(rng, ["holes", "holes", "squares"])
    fmt = _pick(rng, ["json", "csv", "txt"])
    target = out / f"r.{fmt}"
    argv = [command, str(path), "-f", fmt, "-o", str(target)]
    for option, values in (("--top", ["0", "1", "5"]), ("--min-score", ["0", "0.5", "1", "-1"]),
                           ("--compat", ["ptolemy"]), ("--pixel-size", ["0.01", "1", "1000000"])):
        if rng.random() < 0.2:
            argv += [option, _pick(rng, values)]
    if command == "holes":
        for option, values in (("--score", ["unet", "cnn"]), ("--edge-tolerance", ["-1000000", "0", "1000"]),
                               ("--threshold", ["1e-9", "0.5", "0.999999"])):
            if rng.random() < 0.2:
                argv += [option, _pick(rng, values)]
        for flag in ("--no-refine", "--keep-off-film"):
            if rng.random() < 0.2:
                argv.append(flag)
    elif rng.random() < 0.3:
        argv.append("--no-score")
    if "--compat" not in argv and fmt == "json" and rng.random() < 0.3:
        argv.append("--pretty")
    if rng.random() < 0.2:
        argv += ["--overlay", str(out / "o.png")]
    return _main(argv, {0, 2}, out, rerun=[str(target)])


# ---------------------------------------------------------------------------------------------- batch signals

def batch_signals(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """`batch` over a few images, in this process or two workers, interrupted by SIGINT or SIGTERM at any
    moment: 130 (or 0 when it had finished; -2/-15 before Python started), no temporary file left, and a
    readable summary.json whenever there is one."""
    session = d / "session"
    session.mkdir()
    for k in range(int(rng.integers(4, 11))):
        (session / f"atlas_{k}.mrc").write_bytes(image.read_bytes())
    out = d / "out"
    out.mkdir()
    argv = ["batch", str(session), "-o", str(out / "b"), "--kind", "squares", "--no-progress",
            "--workers", _pick(rng, ["1", "1", "2"]), "--threads", "1"]
    return {"kind": "cli", "argv": argv, "expect": [0, 130, -2, -15], "outdir": str(out),
            "signal": _pick(rng, ["SIGINT", "SIGTERM"]), "delay": float(rng.uniform(0.1, 0.9)),
            "batch_out": str(out / "b"),
            # the batch makes its output folder once the package runs: a start-up Ctrl-C is accepted only before
            "started": str(out / "b")}


# ---------------------------------------------------------------------------------------------- model graphs

def _hostile_graph(rng: np.random.Generator, task: str) -> bytes:
    """A graph for `task` that loads but lies: wrong input or output shapes, channels or type, NaN or infinite
    scores, or one that fails when run."""
    from onnx import TensorProto, helper

    lie = _pick(rng, ["out_shape", "in_shape", "nan", "inf", "huge", "int_out", "run_error", "channels"])
    in_shape = ["N", 1, 240, 240] if task == "square_cnn" else ["N", 1, "H", "W"]
    out_shape = ["N", 1, "H", "W"] if task == "hole_unet" else ["N", 1]
    out_type = TensorProto.FLOAT
    inits = []
    if lie in ("nan", "inf", "huge"):
        value = {"nan": float("nan"), "inf": float("inf"), "huge": 3e38}[lie]
        inits = [helper.make_tensor("k", TensorProto.FLOAT, [], [value])]
        nodes = [helper.make_node("Mul", ["image", "k"], ["p"])]
        if task == "hole_unet":
            nodes.append(helper.make_node("Identity", ["p"], ["logit"]))
        else:
            inits.append(helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]))
            inits.append(helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]))
            nodes += [helper.make_node("ReduceMean", ["p", "axes"], ["m"], keepdims=1),
                      helper.make_node("Reshape", ["m", "shape"], ["logit"])]
    elif lie == "out_shape":  # the whole input back, or a flat vector, whatever the task expects
        nodes = [helper.make_node("Identity", ["image"], ["logit"])] if task != "hole_unet" else [
            helper.make_node("ReduceMean", ["image", "axes"], ["logit"], keepdims=0)]
        if task == "hole_unet":
            inits = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])]
        out_shape = ["N", 1, "H", "W"] if task != "hole_unet" else ["N"]
    elif lie == "in_shape":  # a fixed input size the pipeline does not use
        side = int(_pick(rng, [7, 64, 241]))
        in_shape = ["N", 1, side, side]
        nodes = [helper.make_node("Identity", ["image"], ["logit"])] if task == "hole_unet" else [
            helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=1),
            helper.make_node("Reshape", ["m", "shape"], ["logit"])]
        if task != "hole_unet":
            inits = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
                     helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])]
    elif lie == "channels":  # three input channels
        in_shape = ["N", 3, 240, 240] if task == "square_cnn" else ["N", 3, "H", "W"]
        nodes = [helper.make_node("Identity", ["image"], ["logit"])]
        out_shape = in_shape
    elif lie == "int_out":
        nodes = [helper.make_node("Cast", ["image"], ["logit"], to=TensorProto.INT64)]
        out_type = TensorProto.INT64
        out_shape = in_shape
    else:  # run_error: a reshape that cannot hold
        inits = [helper.make_tensor("shape", TensorProto.INT64, [2], [7, 3])]
        nodes = [helper.make_node("Reshape", ["image", "shape"], ["logit"])]
        out_shape = [7, 3]
    graph = helper.make_graph(nodes, task, [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("logit", out_type, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="fuzz")
    model.ir_version = 8
    return model.SerializeToString()


def model_graphs(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """A model set whose manifest is right (hashes and all) but one graph lies about its shapes or gives NaN,
    infinite or huge scores, or fails when run: a model-set error (3), or results (0) in which no NaN or
    infinity is written, never 70 (models.ModelSet.run refuses an answer in another shape than its task's)."""
    import hashlib

    from ptolemy_rt.synthetic import make_medmag
    from tests.tiny_models import make_tiny_set

    models = make_tiny_set(d / "set")
    task = _pick(rng, ["square_cnn", "hole_unet", "hole_cnn"])
    blob = _hostile_graph(rng, task)
    (models / f"{task}.onnx").write_bytes(blob)
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"][task]["sha256"] = hashlib.sha256(blob).hexdigest()
    (models / "manifest.json").write_text(json.dumps(manifest))
    out = d / "out"
    out.mkdir()
    if task == "square_cnn":
        argv = ["squares", str(image)]
    else:
        import mrcfile

        data, _ = make_medmag(int(rng.integers(0, 100)))
        with mrcfile.new(d / "med.mrc") as m:
            m.set_data(data[:400, :400].astype(np.float32))
        argv = ["holes", str(d / "med.mrc"), "--score", "unet" if task == "hole_unet" else "cnn"]
    return _main([*argv, "--models", str(models), "-o", str(out / "r.json")], {0, 3}, out,
                 rerun=[str(out / "r.json")])


# ---------------------------------------------------------------------------------------------- resume

def resume(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """`batch --resume` after an earlier run whose .state rows, results or summary were damaged (fields of the
    wrong type, Infinity, missing, nested JSON, garbage): the damaged images run again, exit 0, a readable
    summary."""
    session = d / "session"
    session.mkdir()
    for k in range(int(rng.integers(1, 4))):
        (session / f"atlas_{k}.mrc").write_bytes(image.read_bytes())
    out = d / "out"
    argv = ["batch", str(session), "-o", str(out), "--kind", "squares", "--workers", "1", "--threads", "1",
            "--no-progress"]
    if rng.random() < 0.5:
        argv.append("--no-report")
    edits = []
    for _ in range(int(rng.integers(1, 4))):
        where = _pick(rng, [".state/*.json", ".state/*.json", "results/*.json", "summary.json"])
        if rng.random() < 0.3:
            edits.append({"glob": str(out / where), "text": _pick(rng, ["", "{", "[" * 5000, "null", "[]", "\x00"])})
        else:
            edits.append({"glob": str(out / where),
                          "field": _pick(rng, ["count", "exit_code", "id", "status", "best_score", "rows", "seconds",
                                               "atlas_square", "stage_xy_m", "sha256", "key", "targets", "extra"]),
                          "value": _pick(rng, ["x", None, [1], {"a": 1}, float("inf"), -1, 2**70, True, "ok"])})
    return _main([*argv, "--resume"], {0}, d / "out", before=argv, tamper=edits, batch_out=str(out))


# ---------------------------------------------------------------------------------------------- path names

def _odd_name(rng: np.random.Generator) -> str:
    return _pick(rng, ["a" * 256, "a" * 255, "b/" * 2100, "new\nline", "tab\tname", "-dash", " space ", "~", ".",
                       "", "a//b", "trail/", "\u00e9t\u00e9", "\u202eevil", "\U0001f600", "x" * 100 + "/" + "y" * 300,
                       "/dev/null", "/dev/full", "/proc/self/mem", "\\", "C:\\x", "*", "?", "[a]", "$HOME"])


def path_names(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """Odd names for every path option (over-long names and paths, newlines, tabs, leading dashes, bidi
    overrides, devices, '/', '..', glob characters): an answer (0), a refusal (2, 3, 4) naming what is wrong,
    never 70, no file left half-written."""
    out = d / "out"
    out.mkdir()
    name = _odd_name(rng)
    where = _pick(rng, ["-o", "--overlay", "--nav-out", "--models", "--calibration", "--nav", "batch-o", "batch-path",
                        "image"])
    # everything lands under `out` (the devices aside): the fuzzer must not write beside itself
    path = name if name.startswith("/") else str(out) + "/" + name
    if where == "batch-o":
        argv = ["batch", str(image), "--kind", "squares", "--workers", "1", "--threads", "1", "-o", path]
    elif where == "batch-path":
        argv = ["batch", path, "-o", str(out / "b"), "--workers", "1", "--threads", "1"]
    elif where == "image":
        argv = ["squares", path, "--no-score", "-o", str(out / "r.json")]
    else:
        argv = ["squares", str(image), "-o", str(out / "r.json")]
        if where in ("--nav-out", "--nav"):
            nav = d / "s.nav"
            nav.write_text("AdocVersion = 2.00\n[Item = 1]\nType = 2\nMapFile = atlas.mrc\nMapID = 5\n"
                           "StageXYZ = 0 0 0\nMapScaleMat = 1 0 0 -1\nMapWidthHeight = 320 320\n")
            argv += ["--nav", str(nav)] if where == "--nav-out" else []
        if where not in ("--models", "--calibration"):
            argv.append("--no-score")
        argv = [a if a != str(out / "r.json") or where != "-o" else path for a in argv]
        if where != "-o":
            argv += [where, path]
    return _main(argv, {0, 2, 3, 4}, out)
