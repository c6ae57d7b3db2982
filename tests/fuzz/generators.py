"""Hostile inputs, one generator per class: each makes one deterministic case from a seeded generator.

A case is a plain dict: `kind` ("api" or "cli"), what to run, the exit codes that are right for it, and what
must hold afterwards (`outdir` free of temporary files, `special` paths still what they were, `golden` bytes).
API cases map their outcome to the CLI's codes: success 0, a PtolemyError its exit_code, anything else foreign.
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .surfaces import (
    NEW_CLASSES,
    batch_signals,
    edge_options,
    full_disk,
    model_graphs,
    mrc_stacks,
    navs,
    path_names,
    pipelines,
    rasters,
    resume,
    sessions,
    sidecars,
    small_files,
)
from .surfaces_api import API_CLASSES, api_arrays, api_options
from .surfaces_decoders import DECODER_CLASSES, decoder_lies
from .surfaces_facility import FACILITY_CLASSES, facility_files
from .surfaces_files import FILE_CLASSES, batch_races, text_encodings
from .surfaces_process import PROCESS_CLASSES, environment, raster_bombs, stdout_commands

# New classes go at the end: a class's index seeds its cases.
CLASSES = ("header_lies", "truncation", "bombs", "extreme_values", "special_paths", "manifests", "options",
           "signals", "concurrency", *NEW_CLASSES, *API_CLASSES, *PROCESS_CLASSES, *FILE_CLASSES,
           *FACILITY_CLASSES, *DECODER_CLASSES)
_OWN = {"rasters": rasters, "mrc_stacks": mrc_stacks}
_WITH_IMAGE = {"sidecars": sidecars, "navs": navs, "sessions": sessions, "edge_options": edge_options,
               "full_disk": full_disk, "small_files": small_files,
               "pipelines": pipelines, "batch_signals": batch_signals, "model_graphs": model_graphs,
               "resume": resume, "path_names": path_names, "api_options": api_options, "api_arrays": api_arrays,
               "stdout_commands": stdout_commands, "environment": environment, "raster_bombs": raster_bombs,
               "text_encodings": text_encodings, "batch_races": batch_races,
               "facility_files": facility_files, "decoder_lies": decoder_lies}

# Header words an MRC writer fills in (byte offset, name).
WORDS = [(0, "nx"), (4, "ny"), (8, "nz"), (12, "mode"), (28, "mx"), (32, "my"), (36, "mz"), (64, "mapc"),
         (88, "ispg"), (92, "nsymbt"), (208, "map"), (212, "machst"), (220, "nlabl")]
LIES = [0, -1, 1, 2, 3, 4, 5, 13, 101, 401, 630, 1 << 15, 1 << 20, 1 << 30, 2**31 - 1, -(2**31)]
EXTREMES = [1e18, -1e18, 9.3e18, 1.8e19, 3.4e38, -3.4e38, 1e-40, -1e-45, 1e30, 2.0**63, 65535.0, 65536.0,
            np.nan, np.inf, -np.inf, 0.0]


def _mrc_bytes(data: np.ndarray) -> bytes:
    """A valid MRC file holding `data`, as mrcfile writes it."""
    import tempfile

    import mrcfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
        return path.read_bytes()


def _image(rng: np.random.Generator, lo: int = 16, hi: int = 96) -> np.ndarray:
    shape = tuple(int(v) for v in rng.integers(lo, hi, 2))
    dtype = rng.choice(["int8", "int16", "uint16", "float32", "float16"])
    data = rng.poisson(rng.uniform(1, 200), shape)
    return data.astype(dtype)


def _raster(rng: np.random.Generator, ext: str) -> bytes:
    import cv2

    data = rng.integers(0, 255, tuple(int(v) for v in rng.integers(16, 96, 2))).astype(np.uint8)
    _, buf = cv2.imencode(ext, data)
    return buf.tobytes()


def _api(call: str, path: str, expect: set[int], **extra) -> dict:
    return {"kind": "api", "call": call, "path": path, "expect": sorted(expect), **extra}


def header_lies(rng: np.random.Generator, d: Path) -> dict:
    raw = bytearray(_mrc_bytes(_image(rng)))
    for _ in range(int(rng.integers(1, 4))):
        offset, name = WORDS[int(rng.integers(len(WORDS)))]
        if name in ("map", "machst"):
            raw[offset:offset + 4] = rng.integers(0, 256, 4).astype(np.uint8).tobytes()
        else:
            value = int(rng.choice(LIES)) if rng.random() < 0.7 else int(rng.integers(-(2**31), 2**31 - 1))
            raw[offset:offset + 4] = np.int32(value).tobytes()
    if rng.random() < 0.2:  # a few compressed liars
        packed = gzip.compress(bytes(raw), mtime=0) if rng.random() < 0.5 else bz2.compress(bytes(raw))
        raw = bytearray(packed)
    path = d / "lie.mrc"
    path.write_bytes(bytes(raw))
    return _api("read_segment", str(path), {0, 2})


def truncation(rng: np.random.Generator, d: Path) -> dict:
    kind = rng.choice(["mrc", "mrc.gz", "mrc.bz2", "png", "tif", "jpg"])
    if kind.startswith("mrc"):
        raw = _mrc_bytes(_image(rng))
        if kind == "mrc.gz":
            raw = gzip.compress(raw, mtime=0)
        elif kind == "mrc.bz2":
            raw = bz2.compress(raw)
        expect = {2}  # a whole MRC data block is required, compressed or not
    else:
        raw = _raster(rng, "." + kind)
        expect = {0, 2}  # decoders may accept a cut tail (JPEG, PNG without IEND)
    cut = int(rng.integers(0, len(raw)))
    path = d / f"cut.{kind}"
    path.write_bytes(raw[:cut])
    return _api("read_segment", str(path), expect)


def _png(width: int, height: int, payload: bytes, colour: int = 0) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload, 9)) + chunk(b"IEND", b"")


def bombs(rng: np.random.Generator, d: Path) -> dict:
    kind = int(rng.integers(0, 5))
    if kind == 0:  # a valid small MRC followed by megabytes of zeros, compressed: stops at the claim
        raw = _mrc_bytes(_image(rng)) + bytes(int(rng.integers(8, 65)) << 20)
        path = d / "bomb.mrc"
        path.write_bytes(gzip.compress(raw, mtime=0) if rng.random() < 0.5 else bz2.compress(raw))
        return _api("read_segment", str(path), {2})
    if kind == 1:  # a compressed header claiming a huge image
        raw = bytearray(_mrc_bytes(np.zeros((16, 16), np.float32)))
        side = int(rng.choice([1 << 14, 1 << 15, 1 << 17, 2**31 - 1]))
        raw[0:8] = np.array([side, side], np.int32).tobytes()
        raw += bytes(int(rng.integers(1, 9)) << 20)
        path = d / "claim.mrc"
        path.write_bytes(gzip.compress(bytes(raw), mtime=0))
        return _api("read_segment", str(path), {2})
    if kind == 2:  # a PNG whose header claims a huge size
        side = int(rng.choice([20000, 50000, 100000, 2**31 - 1]))
        path = d / "huge.png"
        path.write_bytes(_png(side, side, b"\0" * 4096))
        return _api("read_segment", str(path), {2})
    if kind == 3:  # a TIFF whose IFD claims a huge size
        import cv2

        _, buf = cv2.imencode(".tif", np.zeros((8, 8), np.uint8))
        raw = bytearray(buf.tobytes())
        ifd = struct.unpack("<I", raw[4:8])[0]
        side = int(rng.choice([40000, 65535]))
        for k in range(struct.unpack("<H", raw[ifd:ifd + 2])[0]):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack("<HH", raw[e:e + 4])
            if tag in (256, 257):
                raw[e + 8:e + 12] = struct.pack("<HH", side, 0) if typ == 3 else struct.pack("<I", side)
        path = d / "huge.tif"
        path.write_bytes(bytes(raw))
        return _api("read_segment", str(path), {2})
    # an uncompressed MRC claiming a huge extended header or data block
    raw = bytearray(_mrc_bytes(_image(rng)))
    raw[92:96] = np.int32(int(rng.choice([1 << 30, 2**31 - 1, 1 << 20]))).tobytes()
    path = d / "ext.mrc"
    path.write_bytes(bytes(raw))
    return _api("read_segment", str(path), {2})


def extreme_values(rng: np.random.Generator, d: Path) -> dict:
    shape = tuple(int(v) for v in rng.integers(256, 320, 2))
    base = rng.poisson(rng.uniform(1, 100), shape).astype(np.float32)
    if rng.random() < 0.5:
        base[: shape[0] // 2] *= float(rng.uniform(2, 10))  # some structure for the mixture
    n = int(rng.integers(1, 200))
    values = rng.choice(np.array(EXTREMES, dtype=np.float64), n)
    if rng.random() < 0.15:
        values = values[np.isfinite(values)]
    if rng.random() < 0.1:
        base[:] = float(rng.choice([1e-40, 3.4e38, 0.0, 1e18]))  # constant, denormal or huge everywhere
    with np.errstate(over="ignore"):
        base.ravel()[rng.integers(0, base.size, values.size)] = values.astype(np.float32)
    finite = bool(np.isfinite(base).all())
    path = d / "extreme.npy"
    np.save(path, base)
    return _api("array_squares", str(path), {0} if finite else {2}, deterministic=True)


def manifests(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """Malformed manifests: broken JSON through the API (ModelError), wrong structure through the CLI (exit 3).

    The deeper checks (field types and ranges, file confinement, hashes) belong to the model-set tests."""
    broken = [b"{not json", b"", b"\xff\xfe{", b"[1, 2", b'{"models": [', b"\x00" * 16]
    shapes = [b"[1, 2]", b'"x"', b"null", b"{}", b'{"models": 5}', b'{"models": [1]}', b'{"models": [{"file": 3}]}',
              b"1e999", b'{"models": {"a": null}}']
    models = d / "set"
    models.mkdir()
    if rng.random() < 0.5:
        (models / "manifest.json").write_bytes(broken[int(rng.integers(len(broken)))])
        return _api("load_models", str(models), {3})
    (models / "manifest.json").write_bytes(shapes[int(rng.integers(len(shapes)))])
    out = d / "out"
    out.mkdir()
    return _cli(["squares", str(image), "--models", str(models), "-o", str(out / "r.json")], {3}, out,
                absent=[str(out / "r.json")])


# Numeric options and what they accept (lo, hi, lo_open, hi_open, integer).
OPTIONS = {
    "--threshold": ("holes", 0.0, 1.0, True, True, False),
    "--edge-tolerance": ("holes", -1e6, 1000.0, False, False, False),
    "--min-area": ("squares", 0.0, 1e12, False, False, False),
    "--window": ("squares", 1, 1024, False, False, True),
    "--threads": ("squares", 1, max(1, min(256, 4 * (os.cpu_count() or 1))), False, False, True),
    "--section": ("squares", 0, None, False, False, True),
    "--max-pixels": ("squares", 1, 1 << 40, False, False, True),
}
VALUES = ["nan", "-nan", "inf", "-inf", "1e9", "1e400", "-1", "-10", "-1e3", "0", "0.5", "1", "2", "abc", "",
          "0x10", "1_000", "3.0", "-0", "1e-320", "100000", "256", " 5", "7\x00"]


def _accepts(option: str, text: str) -> bool:
    _, lo, hi, lo_open, hi_open, integer = OPTIONS[option]
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        return False
    if not math.isfinite(value):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    return not (hi is not None and (value >= hi if hi_open else value > hi))


def options(rng: np.random.Generator, d: Path) -> dict:
    option = list(OPTIONS)[int(rng.integers(len(OPTIONS)))]
    text = VALUES[int(rng.integers(len(VALUES)))] if rng.random() < 0.8 else repr(float(rng.normal(0, 1e3)))
    command = OPTIONS[option][0]
    if "\x00" in text:
        text = text.replace("\x00", "")
    argv = [command, "x.mrc", option, text]
    return {"kind": "api", "call": "parse", "argv": argv, "expect": [0] if _accepts(option, text) else [2]}


def _cli(argv: list[str], expect: set[int], outdir: Path, **extra) -> dict:
    return {"kind": "cli", "argv": argv, "expect": sorted(expect), "outdir": str(outdir), **extra}


def special_paths(rng: np.random.Generator, d: Path, image: Path) -> dict:
    out = d / "out"
    out.mkdir()
    kind = int(rng.integers(0, 11))
    base = ["squares", str(image), "--no-score"]
    if kind == 0:
        fifo = out / "r.json"
        os.mkfifo(fifo)
        return _cli([*base, "-o", str(fifo)], {4}, out, special=[str(fifo)])
    if kind == 1:
        return _cli([*base, "-o", "/dev/null"], {4}, out)
    if kind == 2:
        (out / "atlas.json").mkdir()
        return _cli([*base, "-o", str(out) + "/"], {4}, out)
    if kind == 3:
        real = out / "real.json"
        real.write_text("keep")
        link = out / "link.json"
        link.symlink_to(real)
        return _cli([*base, "-o", str(link)], {4}, out, unchanged={str(real): "keep"}, links=[str(link)])
    if kind == 4:
        target = out / "mode.json"
        target.write_text("old")
        os.chmod(target, 0o600)
        return _cli([*base, "-o", str(target)], {0}, out, modes={str(target): 0o600}, golden=str(target))
    if kind == 5:
        return _cli([*base, "-o", ""], {2}, out)
    if kind == 6:
        return _cli([*base[:2], str(image), "--no-score", "-o", str(out / "result.json")], {2}, out,
                    absent=[str(out / "result.json")])
    if kind == 7:
        ext = str(rng.choice([".gif", ".bmp", ".json", ""]))
        return _cli([*base, "--overlay", str(out / f"o{ext}")], {2}, out, absent=[str(out / f"o{ext}")])
    if kind == 8:
        ext = str(rng.choice([".jpg", ".jpeg", ".tif", ".tiff", ".png"]))
        magic = {".jpg": "ffd8", ".jpeg": "ffd8", ".tif": "49492a00", ".tiff": "49492a00", ".png": "89504e47"}[ext]
        return _cli([*base, "--overlay", str(out / f"o{ext}"), "-o", str(out / "r.json")], {0}, out,
                    magic={str(out / f"o{ext}"): magic}, golden=str(out / "r.json"))
    if kind == 9:  # an input that is not a regular file must not be opened (a FIFO would block)
        fifo = d / "in.mrc"
        os.mkfifo(fifo)
        return _cli(["squares", str(fifo), "--no-score", "-o", str(out / "r.json")], {2}, out)
    # the overlay is written, the JSON cannot be: neither appears
    fifo = out / "r.json"
    os.mkfifo(fifo)
    return _cli([*base, "--overlay", str(out / "o.png"), "-o", str(fifo)], {4}, out, special=[str(fifo)],
                absent=[str(out / "o.png")])


def signals(rng: np.random.Generator, d: Path, image: Path) -> dict:
    out = d / "out"
    out.mkdir()
    sig = "SIGINT" if rng.random() < 0.5 else "SIGTERM"
    delay = float(rng.uniform(0.05, 2.5))
    argv = ["squares", str(image), str(image), str(image), "--no-score", "-o", str(out) + "/",
            "--overlay", str(out) + "/"]
    # -2/-15: the signal came before Python started the package (its own start-up, no program's code)
    return _cli(argv, {0, 2, 130, -2, -15}, out, signal=sig, delay=delay)


def concurrency(rng: np.random.Generator, d: Path, image: Path) -> dict:
    out = d / "out"
    out.mkdir()
    n = int(rng.integers(3, 7))
    return _cli(["squares", str(image), "--no-score", "-o", str(out / "same.json")], {0}, out, writers=n,
                golden=str(out / "same.json"))


def special_inputs(rng: np.random.Generator, d: Path) -> dict:
    """Input paths that are not files: directories, FIFOs, devices, dangling links (API, exit 2)."""
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return _api("read_segment", str(d), {2})
    if kind == 1:
        fifo = d / "f.mrc"
        os.mkfifo(fifo)
        return _api("read_segment", str(fifo), {2})
    if kind == 2:
        return _api("read_segment", "/dev/zero", {2})
    link = d / "dangling.mrc"
    link.symlink_to(d / "nowhere.mrc")
    return _api("read_segment", str(link), {2})


def make_case(cls: str, seed: int, d: Path, image: Path) -> dict:
    """The case number `seed` of class `cls`, its files written under `d`."""
    rng = np.random.default_rng([CLASSES.index(cls), seed])
    if cls == "special_paths" and rng.random() < 0.3:
        case = special_inputs(rng, d)
    elif cls in _OWN:
        case = _OWN[cls](rng, d)
    elif cls in _WITH_IMAGE:
        case = _WITH_IMAGE[cls](rng, d, image)
    elif cls in ("special_paths", "signals", "concurrency", "manifests"):
        case = globals()[cls](rng, d, image)
    else:
        case = globals()[cls](rng, d)
    case["cls"] = cls
    case["seed"] = seed
    return case


# The later classes' weights: their cases come on top of the first nine's, whose (class, seed) pairs stay
# those CI has always run.
NEW_WEIGHTS = {"rasters": 60, "mrc_stacks": 60, "sidecars": 30, "navs": 30, "sessions": 12, "edge_options": 30,
               "full_disk": 6, "small_files": 24, "pipelines": 30,
               "batch_signals": 4, "model_graphs": 12, "resume": 12,
               "path_names": 20, "api_options": 24, "api_arrays": 16, "stdout_commands": 6, "environment": 6,
               "raster_bombs": 16, "text_encodings": 12, "batch_races": 1, "facility_files": 8,
               "decoder_lies": 8}
# Classes run only with --only (none at present: a class that finds defects not yet fixed waits here, so that
# CI's slice stays green).
OPT_IN: set[str] = set()


def schedule(total: int, seed_base: int = 0, only: set[str] | None = None) -> list[tuple[str, int]]:
    """(class, seed) pairs for a run of `total` cases: mostly in-process cases, a few command lines.

    The first nine classes share `total` as they always have; the later ones add their share of it on top
    (500 -> 500 + 427). `seed_base` shifts every seed (0: the CI schedule; another base gives cases never run
    before); `only` spreads exactly `total` cases over these classes alone."""
    weights = {"header_lies": 90, "truncation": 80, "bombs": 30, "extreme_values": 110, "special_paths": 24,
               "manifests": 20, "options": 136, "signals": 6, "concurrency": 4}
    if only:
        weights.update(NEW_WEIGHTS)
        weights = {c: w for c, w in weights.items() if c in only}
    scale = total / sum(weights.values())
    counts = {c: max(1, round(w * scale)) for c, w in weights.items()}
    last = "options" if "options" in counts else max(counts, key=counts.__getitem__)
    counts[last] += total - sum(counts.values())
    if not only:
        counts.update({c: max(1, round(w * scale)) for c, w in NEW_WEIGHTS.items() if c not in OPT_IN})
    return [(c, seed_base + s) for c in CLASSES if c in counts for s in range(counts[c])]


def dump(case: dict) -> str:
    return json.dumps(case, sort_keys=True)
