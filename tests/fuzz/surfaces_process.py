"""Generator classes for what surrounds a process: its standard output (stdout_commands), its environment
(environment) and raster files that claim more than they hold (raster_bombs).

- stdout_commands: every command with its standard output on a full disk (/dev/full), closed (`>&-`) or a pipe
  nobody reads: exit 4 with one error line naming standard output when the command prints its result there,
  else its usual exit code; never 70, never an "Exception ignored" or a traceback.
- environment: HOME, TMPDIR and XDG_CACHE_HOME missing, a file or /dev/null, LANG=C / LC_ALL=C,
  PYTHONIOENCODING=ascii with non-ASCII image and output names: the same bytes as the reference run (exit 0),
  for a missing image one error line (exit 2), for a batch over names that are not all UTF-8 exit 0 and a
  readable summary.
- raster_bombs: hand-made TIFFs (one strip or tiles, deflate or none, any bit depth and sample count, many pages),
  PNGs and JPEGs that claim up to 2**31 pixels, read with a section inside or beyond what they hold: exit 0 or 2
  within the memory and time limits, an error line naming the file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PROCESS_CLASSES = ("stdout_commands", "environment", "raster_bombs")


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


# ---------------------------------------------------------------------------------------------- stdout

def stdout_commands(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """A command whose standard output is /dev/full, closed or a pipe closed at once."""
    out = d / "out"
    out.mkdir()
    where = _pick(rng, ["/dev/full", "/dev/full", "closed", "pipe"])
    command = _pick(rng, ["squares", "squares-o", "holes", "doctor", "models", "leginon", "help", "version",
                          "demo", "usage"])
    prints = True
    argv = {"squares": ["squares", str(image), "--no-score", "-f", _pick(rng, ["json", "csv", "txt"])],
            "squares-o": ["squares", str(image), "--no-score", "-o", str(out / "r.json")],
            "holes": ["holes", str(image), "--compat", "ptolemy"],
            "doctor": ["doctor"] + (["--json"] if rng.random() < 0.5 else []),
            "models": ["models"],
            "leginon": ["leginon-script", _pick(rng, ["squares", "holes"])],
            "help": [_pick(rng, ["squares", "holes", "batch", "demo"]), "--help"],
            "version": ["--version"],
            "demo": ["demo", "-o", str(out / "demo"), "--threads", "1"],
            "usage": ["squares", "--no-such-option"]}[command]
    if command == "squares-o":
        prints = False
    expect = [4] if prints else [0]
    if command == "usage":
        expect = [2]  # the usage error goes to stderr
    if where == "pipe":
        expect = sorted(set(expect) | {0})  # a small result may fit the pipe's buffer before it is closed
    return {"kind": "cli", "argv": argv, "expect": expect, "outdir": str(out), "stdout": where,
            "stdout_line": prints and command != "usage"}


# ---------------------------------------------------------------------------------------------- environment

_NAMES = ["\u00e9t\u00e9 atlas.mrc", "\u00fc\u00f1\u00ee \u0441\u0435\u0442\u043a\u0430.mrc",
          "\U0001f600 grid.mrc", "caf\u00e9\u0301.mrc", "plain.mrc"]


def environment(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """squares on the atlas under a hostile environment; the result must be the reference's bytes."""
    out = d / "out"
    out.mkdir()
    env: dict[str, str] = {}
    for var in ("HOME", "TMPDIR", "XDG_CACHE_HOME"):
        if rng.random() < 0.5:
            env[var] = _pick(rng, ["/nonexistent/x", str(image), "/dev/null", "", "/proc/self"])
    if rng.random() < 0.5:
        env.update({"LANG": "C", "LC_ALL": "C"})
    if rng.random() < 0.3:
        env["PYTHONIOENCODING"] = _pick(rng, ["ascii", "ascii:strict", "latin-1"])
    if rng.random() < 0.2:
        env["PYTHONUTF8"] = "0"
    name = _pick(rng, _NAMES)
    img = d / name
    img.write_bytes(image.read_bytes())
    if rng.random() < 0.25:  # a session folder whose names are not all UTF-8 (a byte 0xff)
        import os

        session = d / "session"
        session.mkdir()
        for raw in (name.encode(), b"\xff" + name.encode()):
            with open(os.path.join(os.fsencode(session), raw), "wb") as fh:
                fh.write(image.read_bytes())
        argv = ["batch", str(session), "-o", str(out / "b"), "--kind", "squares", "--workers",
                _pick(rng, ["1", "2"]), "--threads", "1", "--no-progress"]
        return {"kind": "cli", "argv": argv, "expect": [0], "outdir": str(out), "env": env,
                "batch_out": str(out / "b")}
    target = out / (Path(name).stem + ".json")
    if rng.random() < 0.15:  # a missing image: one error line, whatever the encoding
        return {"kind": "cli", "argv": ["squares", str(d / ("missing " + name)), "--no-score", "-o", str(target)],
                "expect": [2], "outdir": str(out), "env": env, "absent": [str(target)], "one_error_line": True}
    argv = ["squares", str(img), "--no-score", "-o", str(target)]
    # the reference run writes the image's path into the JSON: compare with the same path
    return {"kind": "cli", "argv": argv, "expect": [0], "outdir": str(out), "env": env, "golden": str(target),
            "golden_image": str(img)}


# ---------------------------------------------------------------------------------------------- raster bombs

def _ifd(entries: list[tuple[int, int, int, int]]) -> bytes:
    body = struct.pack("<H", len(entries))
    for tag, typ, count, value in sorted(entries):
        if typ == 3 and count == 1:
            body += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            body += struct.pack("<HHII", tag, typ, count, value)
    return body


def _tiff(rng: np.random.Generator) -> tuple[bytes, int]:
    """A little-endian TIFF of zeros whose pages claim large sizes: (bytes, pages)."""
    pages = int(_pick(rng, [1, 1, 2, 5, 300]))
    width, height = (int(_pick(rng, [64, 1000, 12000, 16384, 65535, 100000])) for _ in range(2))
    bits = int(_pick(rng, [1, 8, 16, 32, 64]))
    spp = int(_pick(rng, [1, 1, 3, 4]))
    compression = int(_pick(rng, [1, 8, 8, 5, 32773]))
    tiled = rng.random() < 0.4
    tile = int(_pick(rng, [16, 256, 4096]))
    out = bytearray(b"II*\x00\0\0\0\0")
    link = 4
    # one strip or tile of zeros, compressed once, which every page and tile points at (at most 16 MB of zeros)
    raw_len = min((tile * tile if tiled else width * height) * max(1, bits // 8) * spp, 16 << 20)
    blob = zlib.compress(bytes(raw_len), 9) if compression == 8 else bytes(min(raw_len, 1 << 16))
    for _ in range(pages):
        offset = len(out)
        out += blob
        entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
                   (262, 3, 1, 2 if spp >= 3 else 1), (277, 3, 1, spp), (339, 3, 1, 3 if bits >= 32 else 1)]
        if tiled:
            n = min(((width + tile - 1) // tile) * ((height + tile - 1) // tile), 4096)
            offs = len(out)
            out += struct.pack(f"<{n}I", *([offset] * n))
            counts = len(out)
            out += struct.pack(f"<{n}I", *([len(blob)] * n))
            entries += [(322, 4, 1, tile), (323, 4, 1, tile), (324, 4, n, offs), (325, 4, n, counts)]
        else:
            entries += [(273, 4, 1, offset), (278, 4, 1, height), (279, 4, 1, len(blob))]
        if len(out) % 2:
            out += b"\0"
        struct.pack_into("<I", out, link, len(out))
        out += _ifd(entries)
        link = len(out)
        out += b"\0\0\0\0"
    return bytes(out), pages


def _png_bomb(rng: np.random.Generator) -> bytes:
    width, height = (int(_pick(rng, [100, 8000, 16384, 30000, 2**31 - 1])) for _ in range(2))
    depth, colour = _pick(rng, [(8, 0), (16, 0), (8, 2), (16, 6), (1, 0)])
    row = (width * depth * {0: 1, 2: 3, 6: 4}[colour] + 7) // 8
    line = b"\0" * min(row + 1, 1 << 20)  # at most 8 MB of zeros in all: a claim, not the pixels
    rows = min(height, max(1, (8 << 20) // len(line)))
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(line) for _ in range(rows)) + packer.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _jpeg_bomb(rng: np.random.Generator) -> bytes:
    import cv2

    _, buf = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    raw = bytearray(buf.tobytes())
    sof = next(i for i in range(2, len(raw) - 9) if raw[i] == 0xFF and raw[i + 1] in (0xC0, 0xC2))
    raw[sof + 5:sof + 9] = struct.pack(">HH", *(int(_pick(rng, [16, 8192, 30000, 65500, 65535])) for _ in range(2)))
    return bytes(raw)


def raster_bombs(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """read_image (and find_squares when it reads) on a raster that claims far more than its bytes."""
    kind = _pick(rng, ["tif", "tif", "tif", "png", "jpg"])
    pages = 1
    if kind == "tif":
        raw, pages = _tiff(rng)
    elif kind == "png":
        raw = _png_bomb(rng)
    else:
        raw = _jpeg_bomb(rng)
    path = d / f"bomb.{kind}"
    path.write_bytes(raw)
    section = None if rng.random() < 0.5 else int(_pick(rng, [0, 1, pages - 1, pages, 150, -1]))
    case = {"kind": "api", "call": "read_segment", "path": str(path), "expect": [0, 2], "named": True}
    if section is not None:
        case["section"] = section
    return case
