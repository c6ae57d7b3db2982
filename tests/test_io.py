"""Image reading: formats, stacks, metadata, and every kind of bad input."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import cv2
import mrcfile
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptolemy_rt import io
from ptolemy_rt.errors import (
    CorruptFileError,
    InputError,
    MissingFileError,
    NonFiniteError,
    ShapeError,
    TooLargeError,
    TooSmallError,
    UnsupportedFormatError,
)

from .conftest import examples
from .fuzz.surfaces_decoders import apng_file, tiff_file


def _mrc(path: Path, data: np.ndarray, voxel: float | None = None) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        if voxel is not None:
            m.voxel_size = voxel
    return path


@pytest.mark.parametrize("dtype,mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6), (np.float16, 12)])
def test_mrc_modes_round_trip(tmp_path, dtype, mode):
    data = (np.arange(40 * 30).reshape(40, 30) % 100).astype(dtype)
    path = _mrc(tmp_path / "a.mrc", data, voxel=3.5)
    with mrcfile.open(path) as m:
        assert int(m.header.mode) == mode
    img = io.read_image(path)
    assert img.data.dtype == np.float32 and img.data.flags.c_contiguous
    np.testing.assert_array_equal(img.data, data.astype(np.float32))
    assert img.pixel_size_A == pytest.approx(3.5)
    assert img.dtype == np.dtype(dtype).name
    assert img.shape == (40, 30)


def test_no_pixel_size_is_none(tmp_path):
    img = io.read_image(_mrc(tmp_path / "a.mrc", np.zeros((8, 9), np.int16)))
    assert img.pixel_size_A is None


def test_stack_section_zero_warns_and_section_picks(tmp_path):
    stack = np.stack([np.full((10, 12), i, np.float32) for i in range(3)])
    path = _mrc(tmp_path / "s.mrc", stack)
    with pytest.warns(UserWarning, match="section 0"):
        img = io.read_image(path)
    assert img.data[0, 0] == 0 and img.section == 0
    img2 = io.read_image(path, section=2)
    assert img2.data[0, 0] == 2 and img2.section == 2
    with pytest.raises(ShapeError, match="section 5"):
        io.read_image(path, section=5)


def test_single_image_with_section_is_an_error(tmp_path):
    path = _mrc(tmp_path / "a.mrc", np.zeros((8, 9), np.int16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.read_image(path, section=0).shape == (8, 9)
    with pytest.raises(ShapeError):
        io.read_image(path, section=1)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.mrc"):
        io.read_image(tmp_path / "nope.mrc")
    with pytest.raises(MissingFileError, match="not a regular file"):
        io.read_image(tmp_path)


def test_truncated_mrc(tmp_path):
    path = _mrc(tmp_path / "t.mrc", np.ones((64, 64), np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(CorruptFileError, match="t.mrc"):
        io.read_image(path)


def test_unknown_mrc_mode(tmp_path):
    path = _mrc(tmp_path / "m.mrc", np.ones((16, 16), np.float32))
    raw = bytearray(path.read_bytes())
    raw[12:16] = np.int32(42).tobytes()  # MODE word
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="m.mrc") as info:
        io.read_image(path)
    assert isinstance(info.value, (UnsupportedFormatError, CorruptFileError))
    assert "mode" in str(info.value).lower()


def test_complex_mode_unsupported(tmp_path):
    path = _mrc(tmp_path / "c.mrc", np.ones((16, 16), np.complex64))
    with pytest.raises(UnsupportedFormatError, match="mode 4"):
        io.read_image(path)


def test_nan_and_inf(tmp_path):
    data = np.ones((16, 16), np.float32)
    data[3, 4] = np.nan
    data[5, 6] = np.inf
    with pytest.raises(NonFiniteError, match="2 pixel"):
        io.read_image(_mrc(tmp_path / "n.mrc", data))


def test_garbage_files(tmp_path):
    for name in ("x.mrc", "x.png", "x.tif", "x.jpg"):
        p = tmp_path / name
        p.write_bytes(b"this is not an image at all" * 50)
        with pytest.raises(InputError, match=name):
            io.read_image(p)
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        io.read_image(empty)
    unknown = tmp_path / "x.xyz"
    unknown.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="unknown file type"):
        io.read_image(unknown)


def test_arrays_not_2d():
    with pytest.raises(ShapeError):
        io.as_image(np.zeros(10, np.float32))
    with pytest.raises(ShapeError):
        io.as_image(np.zeros((0, 5), np.float32))
    with pytest.raises(ShapeError):
        io.as_image(np.zeros((2, 3, 4, 5), np.float32))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_raster_grey_and_colour(tmp_path, ext):
    grey = (np.arange(50 * 60).reshape(50, 60) % 251).astype(np.uint8)
    p = tmp_path / f"g{ext}"
    assert cv2.imwrite(str(p), grey)
    np.testing.assert_array_equal(io.read_image(p).data, grey.astype(np.float32))
    rgb = np.dstack([grey, grey, grey])
    p2 = tmp_path / f"c{ext}"
    assert cv2.imwrite(str(p2), rgb)
    np.testing.assert_allclose(io.read_image(p2).data, grey.astype(np.float32), atol=1)


def test_tiff_uint16_and_stack(tmp_path):
    data = (np.arange(32 * 40).reshape(32, 40) * 7).astype(np.uint16)
    p = tmp_path / "u.tif"
    assert cv2.imwrite(str(p), data)
    img = io.read_image(p)
    assert img.dtype == "uint16"
    np.testing.assert_array_equal(img.data, data.astype(np.float32))
    p2 = tmp_path / "stack.tif"
    assert cv2.imwritemulti(str(p2), [data, data + 1])
    with pytest.warns(UserWarning):
        assert io.read_image(p2).data[0, 0] == 0
    assert io.read_image(p2, section=1).data[0, 0] == 1


def test_check_min_size():
    img = io.as_image(np.zeros((300, 200), np.float32), name="small.mrc")
    io.check_min_size(img, 200)
    with pytest.raises(TooSmallError, match="small.mrc.*300x200"):
        io.check_min_size(img, 256)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    io.atomic_write(target, "first")
    assert target.read_text() == "first"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        io.atomic_write(target, "second")
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@settings(max_examples=30, deadline=None)
@given(
    data=hnp.arrays(
        dtype=st.sampled_from([np.int8, np.int16, np.uint16, np.float32]),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20),
        elements={"allow_nan": False, "allow_infinity": False},
    )
)
def test_mrc_round_trip_property(tmp_path_factory, data):
    path = _mrc(tmp_path_factory.mktemp("h") / "p.mrc", data)
    img = io.read_image(path)
    np.testing.assert_array_equal(img.data, data.astype(np.float32))


# --- issue 13: hostile files are refused before any allocation, with exit-2 errors only ---------------------


def _header_word(path: Path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset,value", [(0, 2_000_000_000), (4, 2_000_000_000), (8, 2_000_000_000),
                                          (0, 1 << 16), (92, 2_000_000_000), (92, -5), (0, -3), (8, 0)])
def test_lying_mrc_header_is_refused_without_allocating(tmp_path, offset, value):
    import tracemalloc

    path = _mrc(tmp_path / "lie.mrc", np.ones((16, 16), np.float32))
    _header_word(path, offset, value)  # nx, ny, nz or nsymbt (byte 92)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="lie.mrc"):
            io.read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_an_mrc_extended_header_larger_than_any_writer_puts_there_is_refused(tmp_path):
    """Review of fuzz12: the extended header's size (nsymbt) was bounded by the file's size only, and mrcfile reads
    it whole: a file with a 1 GB extended header took 3 GB of memory. One over 16 MiB + 4 KiB a section is
    refused from the header; one of 128 kB (FEI1's size) reads as before."""
    import struct

    data = np.random.default_rng(5).normal(size=(16, 16)).astype(np.float32)
    for nsymbt, refused in ((131072, False), (40 << 20, True)):
        path = tmp_path / f"ext{nsymbt}.mrc"
        head = bytearray(_mrc(tmp_path / "plain.mrc", data).read_bytes()[:1024])
        head[92:96] = struct.pack("<i", nsymbt)
        head[104:108] = b"SERI"  # a SerialEM extended header (of zeros)
        with open(path, "wb") as fh:
            fh.write(head)
            fh.seek(1024 + nsymbt)  # sparse: the extended header's zeros, then the data
            fh.write(data.tobytes())
        if refused:
            with pytest.raises(CorruptFileError, match=r"extended header of 40.0 MiB for 1 section\(s\)"):
                io.read_image(path)
        else:
            np.testing.assert_array_equal(io.read_image(path).data, data)


def test_pixel_budget(tmp_path):
    path = _mrc(tmp_path / "big.mrc", np.zeros((64, 64), np.int8))
    with pytest.raises(TooLargeError, match="max-pixels"):
        io.read_image(path, max_pixels=1000)
    assert io.read_image(path, max_pixels=4096).shape == (64, 64)


def test_volume_stack_with_mz_zero_is_an_input_error(tmp_path):
    path = _mrc(tmp_path / "vs.mrc", np.ones((4, 16, 16), np.float32))
    _header_word(path, 88, 401)  # ispg: a volume stack
    _header_word(path, 36, 0)  # mz
    with pytest.raises(CorruptFileError, match="divisible by mz"):
        io.read_image(path)


@pytest.mark.parametrize("kind", ["gzip", "bz2"])
def test_compressed_mrc_read_truncated_and_bomb(tmp_path, kind):
    import bz2
    import gzip

    pack = gzip.compress if kind == "gzip" else bz2.compress
    data = (np.arange(32 * 24).reshape(32, 24) % 50).astype(np.int16)
    plain = _mrc(tmp_path / "p.mrc", data).read_bytes()
    good = tmp_path / f"g.mrc.{'gz' if kind == 'gzip' else 'bz2'}"
    good.write_bytes(pack(plain))
    np.testing.assert_array_equal(io.read_image(good).data, data)
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(pack(plain)[: len(pack(plain)) // 2])
    with pytest.raises(CorruptFileError, match="cut.mrc"):
        io.read_image(cut)
    # A small header followed by 64 MB of zeros: stops at what the header claims, never inflates it all.
    bomb = tmp_path / "bomb.mrc"
    bomb.write_bytes(pack(plain + bytes(64 << 20)))
    with pytest.raises(CorruptFileError, match="larger than its header"):
        io.read_image(bomb)
    assert io.read_image(bomb, permissive=True).shape == (32, 24)


def test_compressed_header_claiming_a_huge_image(tmp_path):
    import gzip

    plain = bytearray(_mrc(tmp_path / "p.mrc", np.zeros((16, 16), np.float32)).read_bytes())
    plain[0:8] = np.array([16384, 16384], np.int32).tobytes()
    bomb = tmp_path / "claim.mrc"
    bomb.write_bytes(gzip.compress(bytes(plain)))
    with pytest.raises(InputError, match="claim.mrc"):
        io.read_image(bomb)


def test_mode_disagreeing_with_size_is_refused_unless_permissive(tmp_path):
    path = _mrc(tmp_path / "mode.mrc", np.ones((16, 16), np.float32))
    _header_word(path, 12, 0)  # mode 0 (int8): the file is four times larger than the header says
    with pytest.raises(CorruptFileError, match="larger than expected"):
        io.read_image(path)
    with pytest.warns(UserWarning, match="larger than expected"):
        assert io.read_image(path, permissive=True).shape == (16, 16)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_huge_declared_raster_is_refused_from_its_header(tmp_path, ext):
    import struct
    import zlib

    path = tmp_path / f"huge{ext}"
    if ext == ".png":
        def chunk(tag, body):
            return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    else:
        assert cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))
        raw = bytearray(path.read_bytes())
        ifd = struct.unpack("<I", raw[4:8])[0]
        n = struct.unpack("<H", raw[ifd:ifd + 2])[0]
        for k in range(n):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack("<HH", raw[e:e + 4])
            if tag in (256, 257):
                raw[e + 8:e + 12] = (struct.pack("<HH", 60000, 0) if typ == 3 else struct.pack("<I", 60000))
        path.write_bytes(bytes(raw))
    with pytest.raises(TooLargeError, match=f"huge{ext}"):
        io.read_image(path)


def test_decoder_exceptions_become_input_errors(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))

    def boom(*a, **k):
        raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) size.width>0")

    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(CorruptFileError, match="x.png"):
        io.read_image(path)


def _validator_reference(mrc) -> list[str]:
    """mrcfile's own validator on the whole file: what io._validator_lines must print."""
    import io as pyio

    report = pyio.StringIO()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mrc.validate(print_file=report)
    return [line.strip() for line in report.getvalue().splitlines() if line.strip()]


# The header statistics as written, scaled by these: inside, near and beyond the validator's 1 % tolerance.
_STAT_FACTORS = st.sampled_from([1.0, 1.0, 1.005, 0.995, 1.0089, 0.9911, 1.0095, 1.0103, 0.9898, 1.0101, 1.02, 0.5,
                                 -1.0, 0.0, np.nan, np.inf, -np.inf])


@examples(30, settings(max_examples=120, deadline=None),
          given(dtype=st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.float32, np.float16]),
                shape=st.sampled_from([(24, 40), (3, 16, 20), (1, 30, 30)]),
                offset=st.sampled_from([0.0, 50.0, 3e4, 1e-3]),
                spread=st.sampled_from([0.0, 0.5, 20.0, 1e18]), nan=st.booleans(), big_endian=st.booleans(),
                rms=_STAT_FACTORS, dmin=_STAT_FACTORS, dmax=_STAT_FACTORS, dmean=_STAT_FACTORS,
                nversion=st.sampled_from([20140, 20141, 0]), nlabl=st.sampled_from([None, 0, 3]),
                extended=st.sampled_from([b"", b"x" * 64]), exttyp=st.sampled_from([b"", b"FEI1"]),
                mapc=st.sampled_from([1, 4]), trailing=st.sampled_from([b"", b"\0" * 10]), seed=st.integers(0, 99)))
def test_validator_lines_are_mrcfiles_own(tmp_path_factory, dtype, shape, offset, spread, nan, big_endian, rms,
                                          dmin, dmax, dmean, nversion, nlabl, extended, exttyp, mapc, trailing,
                                          seed):
    """io._validator_lines prints what mrcfile's validator prints on the whole file, line for line."""
    rng = np.random.default_rng(seed)
    values = offset + spread * rng.standard_normal(shape)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    data = values.astype(dtype)
    if nan and data.dtype.kind == "f":
        data.reshape(-1)[rng.integers(0, data.size)] = np.nan
    path = tmp_path_factory.mktemp("validate") / "v.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(data.astype(data.dtype.newbyteorder(">")) if big_endian else data)
            if extended:
                m.set_extended_header(np.frombuffer(extended, dtype="V1"))
            h = m.header
            h.exttyp = exttyp
            h.nversion = nversion
            h.mapc = mapc
            if nlabl is not None:
                h.nlabl = nlabl
            h.rms, h.dmin, h.dmax, h.dmean = (float(h.rms) * rms, float(h.dmin) * dmin, float(h.dmax) * dmax,
                                              float(h.dmean) * dmean)
    if trailing:
        with open(path, "ab") as fh:
            fh.write(trailing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            assert io._validator_lines(mrc, path.stat().st_size) == _validator_reference(mrc)


def _cancelling(rng):
    data = np.full((128, 160), 1e-3, dtype=np.float32)
    data[5, 7], data[90, 100] = 1e13, -1e13
    return data


@pytest.mark.parametrize("case", ["rms_inf", "mean_inf", "float32_overflow", "mean_cancels"])
def test_validator_lines_where_a_relative_margin_cannot_decide(tmp_path, case):
    """The cases a float64 figure within 0.9 % cannot settle go to mrcfile's validator: its warning stays."""
    import cv2

    rng = np.random.default_rng(3)
    if case == "float32_overflow":
        data = (1e20 * rng.standard_normal((256, 256))).astype(np.float32)
    elif case == "mean_cancels":
        data = _cancelling(rng)
    else:
        data = (100 + 10 * rng.standard_normal((64, 80))).astype(np.float32)
    path = tmp_path / f"{case}.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(data)
            h = m.header
            if case == "rms_inf":
                h.rms = np.inf
            elif case == "mean_inf":
                h.dmean = np.inf
            elif case == "float32_overflow":  # the true figures, which numpy's float32 std cannot reach
                d = data.astype(np.float64)
                h.rms, h.dmin, h.dmax, h.dmean = d.std(), d.min(), d.max(), d.mean()
            else:  # OpenCV's sequential mean, 6 % from numpy's pairwise one
                h.rms, h.dmin, h.dmax, h.dmean = -1, 0, 0, float(cv2.meanStdDev(data)[0][0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            expected = _validator_reference(mrc)
            assert any("inaccurate" in line for line in expected), expected
            assert io._validator_lines(mrc, path.stat().st_size) == expected


def test_validator_lines_take_the_fast_way_on_a_written_file(tmp_path):
    """A file whose header statistics mrcfile wrote itself is checked without the validator's data passes."""
    data = (100 + 10 * np.random.default_rng(0).standard_normal((64, 80))).astype(np.float32)
    path = _mrc(tmp_path / "ok.mrc", data)
    with mrcfile.mmap(path, mode="r") as mrc:
        assert io._statistics_hold(mrc.header, mrc.data)
        assert io._validator_lines(mrc, path.stat().st_size) == _validator_reference(mrc) == []


@pytest.mark.parametrize("dtype", ["int16", "int32", "float64", "int8"])
@pytest.mark.parametrize("channels", [3, 4])
def test_colour_tiff_of_any_pixel_type_reads_as_grey(tmp_path, dtype, channels):
    """Fuzz (rasters, seed 31): a colour int16 TIFF made cvtColor raise, and the error ran over several lines."""
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 100, (27, 60, channels)).astype(dtype)
    path = tmp_path / "c.tif"
    assert cv2.imwrite(str(path), bgr)
    image = io.read_image(path)
    expected = bgr[:, :, :3].astype(np.float64) @ np.array([0.114, 0.587, 0.299])
    assert image.shape == (27, 60)
    np.testing.assert_allclose(image.data, expected, rtol=1e-6, atol=1e-4)


def test_a_decoder_error_is_one_line(tmp_path, monkeypatch):
    """OpenCV's exceptions run over several lines; the error names the file on one."""
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))

    def fail(*args, **kwargs):
        raise RuntimeError("OpenCV(5.1.0) file.cpp:1: error: (-2)\nin function 'x'\n> Unsupported depth: 'CV_16S'\n")

    monkeypatch.setattr(io, "_decode_raster", fail)
    with pytest.raises(CorruptFileError) as info:
        io.read_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "Unsupported depth" in message


@pytest.mark.parametrize("kwargs,error,named", [
    ({"max_pixels": float("nan")}, "OptionError", "max_pixels"),
    ({"max_pixels": "x"}, "TypeError", "max_pixels"),
    ({"max_pixels": True}, "TypeError", "max_pixels"),
    ({"max_pixels": 1.5}, "OptionError", "max_pixels"),
    ({"max_pixels": 0}, "OptionError", "max_pixels"),
    ({"max_pixels": 10**400}, "OptionError", "max_pixels"),
    ({"permissive": "yes"}, "TypeError", "permissive"),
    ({"path": 123}, "TypeError", "path"),
])
def test_read_image_names_a_bad_argument(tmp_path, kwargs, error, named):
    """Fuzz (api_options): max_pixels=NaN or "x" raised a bare ValueError out of read_image (no PtolemyError),
    True and 1.5 were a budget of 1 px, permissive="yes" read a flagged file. Now named, before the file is read."""
    path = tmp_path / "a.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.ones((8, 8), np.float32))
    kwargs = {"path": path, **kwargs}
    with pytest.raises(Exception) as info:
        io.read_image(**kwargs)
    assert type(info.value).__name__ == error and named in str(info.value), info.value
    assert len(str(info.value)) < 200
    assert io.read_image(path, max_pixels=64, permissive=np.bool_(False)).shape == (8, 8)


@pytest.mark.parametrize("ext,pages,section,message", [
    (".png", 1, 1, "holds a single image"), (".jpg", 1, -1, "holds a single image"),
    (".tif", 1, 150, "holds a single image"), (".tif", 3, 3, "does not exist (the stack has 3)"),
    (".tif", 3, -4, "does not exist (the stack has 3)"),
])
def test_a_section_the_raster_cannot_hold_is_refused_before_decoding(tmp_path, monkeypatch, ext, pages, section,
                                                                     message):
    """Fuzz (raster_bombs): a 12000x12000 colour TIFF was decoded (1.7 GB, 3 s) before `--section 150` was
    refused; the page count is in the header (the TIFF's IFD chain)."""
    path = tmp_path / f"r{ext}"
    imgs = [np.full((16, 16), 10 * k, np.uint8) for k in range(pages)]
    assert cv2.imwritemulti(str(path), imgs) if pages > 1 else cv2.imwrite(str(path), imgs[0])

    def refuse(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(cv2, "imdecodemulti", refuse)
    with pytest.raises(ShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        io.read_image(path, section=section)
    monkeypatch.undo()
    assert io.read_image(path, section=pages - 1).data[0, 0] == 10 * (pages - 1)


def _tiff_header(width: int, height: int, bits: int, samples: int, pad: int) -> bytes:
    """A little-endian TIFF whose one page claims width x height pixels of `samples` x `bits`, with `pad`
    bytes of zeros as its (lying) strip."""
    import struct

    bps_at = 8
    head = bytearray(b"II*\x00" + struct.pack("<I", 8 + 2 * samples + pad))
    head += struct.pack(f"<{samples}H", *([bits] * samples)) + bytes(pad)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, bits if samples <= 2 else bps_at),
               (259, 3, 1, 8), (262, 3, 1, 2 if samples >= 3 else 1), (273, 4, 1, 8 + 2 * samples),
               (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, pad)]
    head += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        head += (struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3 and count <= 2 else
                 struct.pack("<HHII", tag, typ, count, value))
    return bytes(head + b"\0\0\0\0")


def test_a_raster_that_needs_more_bytes_to_decode_than_the_budget_allows_is_refused(tmp_path):
    """Fuzz (raster_bombs): a 16384x16384 16-bit RGB TIFF of zeros (1.6 MB, padded past the compression-ratio
    test; its per-sample bit counts, stored apart, were read as 8) needed 3.2 GB and 31 s to decode; the
    pixels were within the 2**28 budget. Decoded bytes are capped at 4 a pixel of the budget."""
    path = tmp_path / "b.tif"
    path.write_bytes(_tiff_header(16384, 16384, 16, 3, 1_700_000))
    with pytest.raises(TooLargeError, match=r"16384x16384 pixels of 6 bytes \(1.5 GiB to decode\)"):
        io.read_image(path)
    assert io._raster_claims(path.read_bytes(), "b") == [(16384, 16384, 6)]
    # the same claim is what --max-pixels 2**29 allows (refused later by the decoder, not by the budget)
    with pytest.raises(CorruptFileError):
        io.read_image(path, max_pixels=1 << 29)


def _bigtiff(width: int, height: int, tile_pixels: np.ndarray, samples: int = 1) -> bytes:
    """A little-endian BigTIFF of deflated tiles, every one of them `tile_pixels` (square, one sample's type)."""
    import struct
    import zlib

    tile = tile_pixels.shape[0]
    bits = tile_pixels.dtype.itemsize * 8
    blob = zlib.compress(np.repeat(tile_pixels[..., None], samples, axis=2).tobytes(), 9)
    out = bytearray(b"II+\x00" + struct.pack("<HHQ", 8, 0, 0))
    at = len(out)
    out += blob
    n = -(-width // tile) * -(-height // tile)
    offsets = len(out)
    out += struct.pack(f"<{n}Q", *([at] * n))
    counts = len(out)
    out += struct.pack(f"<{n}Q", *([len(blob)] * n))
    fmt = 3 if tile_pixels.dtype.kind == "f" else 1
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 8),
               (262, 3, 1, 2 if samples >= 3 else 1), (277, 3, 1, samples), (284, 3, 1, 1), (322, 4, 1, tile),
               (323, 4, 1, tile), (324, 16, n, offsets), (325, 16, n, counts), (339, 3, 1, fmt)]
    struct.pack_into("<Q", out, 8, len(out))
    out += struct.pack("<Q", len(entries))
    for tag, typ, count, value in entries:
        out += struct.pack("<HHQ", tag, typ, count) + struct.pack({3: "<H6x", 4: "<I4x", 16: "<Q"}[typ], value)
    return bytes(out + bytes(8))


def test_a_bigtiff_is_checked_against_the_budget_before_it_is_decoded(tmp_path):
    """Fuzz campaign 12: BigTIFF headers were not read, so a 68 kB BigTIFF claiming 16384x16384 float64 RGBA
    went to OpenCV, which allocated 8 GiB for it (within its own pixel limit). Its claims are now those of a
    classic TIFF: the decode budget, the compression ratio and the pixel budget, before any decoding."""
    zeros = np.zeros((256, 256), np.float64)
    path = tmp_path / "big.tif"
    path.write_bytes(_bigtiff(16384, 16384, zeros, samples=4))
    assert io._raster_claims(path.read_bytes(), "big") == [(16384, 16384, 32)]
    with pytest.raises(TooLargeError, match=r"16384x16384 pixels of 32 bytes \(8.0 GiB to decode\)"):
        io.read_image(path)
    path.write_bytes(_bigtiff(16384, 16384, zeros.astype(np.uint8)))
    with pytest.raises(CorruptFileError, match="compression bomb"):
        io.read_image(path)
    path.write_bytes(_bigtiff(70000, 70000, zeros.astype(np.uint8)))
    with pytest.raises(TooLargeError, match="70000x70000 pixels, over the budget"):
        io.read_image(path)
    # a BigTIFF within the budget reads as it did
    tile = np.random.default_rng(0).integers(0, 60000, (16, 16)).astype(np.uint16)
    path.write_bytes(_bigtiff(64, 48, tile))
    image = io.read_image(path)
    assert image.dtype == "uint16"
    np.testing.assert_array_equal(image.data, np.tile(tile, (3, 4)).astype(np.float32))


def test_a_tiff_of_few_pixels_but_many_bytes_each_is_ratio_tested(tmp_path):
    """Fuzz campaign robust15 (facility_files 190500012): images of up to 2**24 pixels skipped the compression-ratio
    test whatever their samples took, so a 6 kB BigTIFF claiming 4096x4096 float64 RGBA (512 MiB of samples) was
    decoded: 1.1 GB to read, over the campaign's 1.5 GB with the pipeline. Past the bytes of a float32 image of
    2**24 pixels it is tested; a blank 4096x4096 8-bit or float32 one (as many bytes) still reads.
    Review of robust15 (R1): the bound was a float32 image's bytes (64 MiB), so blank 4096x4096 float64 grey and
    16-bit RGB files (main read them) were refused as bombs; it is now 256 MiB of decoded samples: they read, and
    float64 RGB (384 MiB) and RGBA (512 MiB) are ratio-tested, said to be a bomb or a blank or near-blank image."""
    zeros = np.zeros((256, 256), np.float64)
    path = tmp_path / "big.tif"
    for samples, size in ((4, "512.0 MiB"), (3, "384.0 MiB")):
        path.write_bytes(_bigtiff(4096, 4096, zeros, samples=samples))
        with pytest.raises(CorruptFileError, match=r"big\.tif: the header claims 4096x4096 pixels from \d+ bytes "
                                                   r"\(a ratio over 1000: refused as a compression bomb, or a blank or "
                                                   rf"near-blank image of {size} decoded\)$"):
            io.read_image(path)
    for blank, samples in ((zeros.astype(np.uint8), 1), (zeros.astype(np.float32), 1), (zeros, 1),
                           (zeros.astype(np.uint16), 3)):
        path.write_bytes(_bigtiff(4096, 4096, blank, samples))
        assert 4096 * 4096 * blank.itemsize * samples > 1000 * path.stat().st_size
        assert io.read_image(path).shape == (4096, 4096)


@pytest.mark.parametrize("big", [False, True])
def test_a_tiff_whose_ifds_claim_huge_entry_counts_is_walked_in_bounded_reads(tmp_path, big):
    """Review of fuzz12: every entry an IFD's count claimed was read, through the file in blocks: a small sparse
    BigTIFF whose chained IFDs each claimed millions of entries ran for hours (2.3 s an IFD). The entries read
    are now bounded (a few thousand an IFD, a budget for the chain, none past the tags needed)."""
    import io as stdio
    import struct

    order, count_fmt, entry, link = ("<", "Q", 20, "Q") if big else ("<", "H", 12, "I")
    count = 5000  # over the entries read from one IFD; zeros: tag 0 entries, none of them past the tags needed
    step = struct.calcsize(count_fmt) + entry * count + struct.calcsize(link)
    pages = 40
    raw = bytearray(16 + pages * step)
    raw[:16] = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00" + struct.pack("<I", 16) + bytes(8)
    for k in range(pages):
        at = 16 + k * step
        struct.pack_into(order + count_fmt, raw, at, count)
        struct.pack_into(order + link, raw, at + step - struct.calcsize(link), at + step if k + 1 < pages else 0)

    class Counting(io._FileView):
        reads = 0

        def __getitem__(self, key):
            Counting.reads += 1
            return super().__getitem__(key)

    claims = io._raster_claims(Counting(stdio.BytesIO(bytes(raw)), len(raw)), "x")
    assert claims == [(0, 0, 1)] * pages  # every page found, none with a size
    assert Counting.reads <= (1 << 16) + 4 * pages, Counting.reads
    # a real TIFF's claims are unchanged: the entries past SamplesPerPixel are never needed
    path = tmp_path / "t.tif"
    cv2.imwrite(str(path), np.zeros((48, 64, 3), np.uint16))
    assert io._raster_claims(path.read_bytes(), "t") == [(64, 48, 6)]


def test_a_multipage_tiff_decodes_only_the_page_asked_for(tmp_path, monkeypatch):
    """Fuzz (raster_bombs): every page was decoded to read one (300 pages of 12000x64 float64: 3.6 GB, 37 s)."""
    path = tmp_path / "m.tif"
    assert cv2.imwritemulti(str(path), [np.full((20, 30), 10 * k, np.uint8) for k in range(5)])
    calls = []
    decode = cv2.imdecodemulti

    def spy(*args):
        calls.append(args[-1])
        return decode(*args)

    monkeypatch.setattr(cv2, "imdecodemulti", spy)
    with pytest.warns(UserWarning, match="a stack of 5 sections; using section 0"):
        first = io.read_image(path)
    last = io.read_image(path, section=-1)
    assert (first.section, first.data[0, 0], last.section, last.data[0, 0]) == (0, 0, 4, 40)
    assert calls == [(0, 1), (4, 5)]


def test_a_decoder_s_own_stderr_line_becomes_a_warning_naming_the_file(tmp_path, capfd):
    """Probe (this session): libjpeg printed "Corrupt JPEG data: bad Huffman code" straight to descriptor 2, a
    stray line naming no file beside the result (or a batch's lines). It is a warning naming the file now."""
    _, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (400, 400)).astype(np.uint8),
                          [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    raw = bytearray(buf.tobytes())
    raw[len(raw) // 2: len(raw) // 2 + 50] = b"\xff\x00" * 25
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(raw))
    capfd.readouterr()
    with pytest.warns(UserWarning, match=r"damaged\.jpg: Corrupt JPEG data"):
        image = io.read_image(path)
    assert image.shape == (400, 400)
    out, err = capfd.readouterr()
    assert "Corrupt JPEG" not in err + out


def test_decoder_messages_are_collected_only_in_the_main_thread(tmp_path):
    """Descriptor 2 belongs to the process: threads reading images at once (a Dask worker's, a library user's
    pool) must not swap it, or it ends on a closed pipe. They read as before, and stderr still works after."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.full((300, 300), 7, np.uint8))
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda _: io.read_image(path).shape, range(16)))
    assert shapes == [(300, 300)] * 16
    assert os.write(2, b"") == 0 and os.fstat(2)  # descriptor 2 is still open and writable


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_path_that_is_no_regular_file_is_worded_once(tmp_path):
    """Closing note 10: for the same FIFO or folder, read_image said "not a file" and a batch (its sha256, through
    smallfiles.open_regular) "not a regular file". One function words it now; both stay MissingFileError (exit 2)."""
    from ptolemy_rt.batch import _sha256
    from ptolemy_rt.smallfiles import not_regular

    fifo = tmp_path / "fifo.mrc"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(MissingFileError) as read:
            io.read_image(path)
        with pytest.raises(MissingFileError) as hashed:
            _sha256(path)
        assert str(read.value) == str(hashed.value) == not_regular(path) == f"{path}: not a regular file"
        assert read.value.exit_code == hashed.value.exit_code == 2


def test_the_decode_budget_message_shows_small_sizes_in_their_unit(tmp_path):
    """Closing note 10: at small budgets the decode-cost refusal said "(0.0 GiB to decode), over the budget of
    0.0 GiB". Sizes are shown in the unit that shows the number (errors.size_text)."""
    path = tmp_path / "b.tif"
    path.write_bytes(_tiff_header(40, 25, 16, 3, 4096))  # 1000 px of 6 bytes: 6000 bytes, within 1000 px
    with pytest.raises(TooLargeError, match=r"40x25 pixels of 6 bytes \(5\.9 KiB to decode\), over the budget of "
                                            r"3\.9 KiB \(4 bytes a pixel"):
        io.read_image(path, max_pixels=1000)


@given(st.integers(0, 2**63))
@example(1023)
@example(1024)
@example(1024 * 1024 - 1)  # rounds up to the next unit: 1.0 MiB, not 1024.0 KiB
@example(2**63)
@example(19712)  # 19.25 KiB shown as 19.2: 0.05 KiB off, exactly the rounding's half step
def test_size_text_shows_a_number_of_one_to_1024_units_near_the_size(n):
    from ptolemy_rt.errors import size_text

    number, unit = size_text(n).split(" ")
    scale = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50, "EiB": 2**60}[unit]
    value = float(number)
    assert (value == n if unit == "bytes" else 1.0 <= value < 1024.0 or unit == "EiB")
    assert abs(value * scale - n) <= 0.05 * scale * (1 + 1e-9)  # the printed tenth is itself a float: 19.2 * 1024


def test_the_header_check_reads_the_files_bytes_without_a_copy(tmp_path, monkeypatch):
    """Closing note 10: _read_raster copied the file's bytes (tobytes()) only to parse the header: twice a large
    uncompressed TIFF's size held at once. The check now reads the bytes read from the file (a memoryview)."""
    import tracemalloc

    size = 16 << 20
    path = tmp_path / "big.tif"
    path.write_bytes(_tiff_header(4096, 4096, 8, 1, size))  # the page's IFD after its 16 MiB strip
    monkeypatch.setattr(io, "_decode_raster", lambda *args, **kwargs: (np.zeros((64, 64), np.uint8), None))
    tracemalloc.start()
    try:
        io.read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size <= peak < 1.25 * size, peak / size


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"BM", b"\xff\xd8", b"II*\x00", b"MM\x00*", b"II+\x00",
                        b"MM\x00+", b""]),
       st.binary(max_size=400))
def test_header_claims_from_a_buffer_are_those_from_bytes(magic, rest):
    """The header parser reads a memoryview of the file's bytes as it read a bytes copy: the same claims, or
    the same error (a short TIFF's struct.error included: read_image words it as an unreadable image)."""
    raw = magic + rest

    def claims(data):
        try:
            return io._raster_claims(data, "x")
        except Exception as exc:  # noqa: BLE001 -- whatever it raises, the same for both
            return type(exc).__name__, str(exc)

    assert claims(memoryview(np.frombuffer(raw, np.uint8)).toreadonly()) == claims(raw)
    import io as stdio

    assert claims(io._FileView(stdio.BytesIO(raw), len(raw))) == claims(raw)  # read in blocks, not whole


@pytest.mark.parametrize("kind", ["png", "tif_without_pages", "garbage"])
def test_a_raster_file_far_larger_than_its_header_claims_is_refused_unread(tmp_path, kind):
    """Fuzz campaign 12: a raster was read whole into memory before its header was checked, so a 3 GB sparse file
    named .tif (a header, then zeros) took 3 GB and 56 s to be refused. The header is now read from the file, and
    a file far larger than what its header claims (or, unread, than any image within the budget) is refused."""
    import tracemalloc

    path = tmp_path / ("x.png" if kind == "png" else "x.tif")
    head = {"png": cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes(),
            "tif_without_pages": b"II*\x00\x08\x00\x00\x00\x00\x00", "garbage": b"II*\x00" + bytes(60)}[kind]
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(40 << 20)  # sparse: 40 MB of zeros after the header
    tracemalloc.start()
    try:
        with pytest.raises((CorruptFileError, TooLargeError), match=r"x\.(png|tif): the file holds 40.0 MiB"):
            io.read_image(path, max_pixels=1 << 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def _one_ifd_tiff(width: int, height: int, pixels: bytes, private: bytes = b"") -> bytes:
    """An uncompressed 16-bit TIFF with one IFD, an optional private tag (ImageJ's 50839) and `pixels` after it:
    more than one page's worth makes the stack ImageJ writes over 4 GB (and tifffile with truncate=True)."""
    import struct

    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height * 2)]
    if private:
        entries.append((50839, 7, len(private), 0))
    extra_at = 8 + 2 + 12 * len(entries) + 4
    data_at = extra_at + len(private)
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, typ, count, value in entries:
        value = data_at if tag == 273 else extra_at if tag == 50839 else value
        out += (struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3 else
                struct.pack("<HHII", tag, typ, count, value))
    return bytes(out + bytes(4) + private + pixels)


def test_a_jpeg_header_walk_stops_where_no_marker_is(tmp_path):
    """Review of fuzz12: the JPEG marker walk went on byte by byte where a marker should have been, through the
    file in blocks (a 100 MB sparse .jpg: 35 s). It now stops there, and at the scan's start (SOS); the frame
    header found before either is claimed as before."""
    import io as stdio

    jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    assert io._raster_claims(jpeg, "j") == [(64, 48, 3)]

    class Counting(io._FileView):
        reads: list = []

        def __getitem__(self, key):
            self.reads.append(key)
            return super().__getitem__(key)

    for raw in (jpeg[:20] + bytes(1 << 20), b"\xff\xd8\xff\xda\x00\x08" + bytes(1 << 20)):
        Counting.reads.clear()
        if raw[3] == 0xDA:  # a scan before any frame header: refused saying so (fuzz16)
            with pytest.raises(CorruptFileError, match="without a frame header"):
                io._raster_claims(Counting(stdio.BytesIO(raw), len(raw)), "j")
        else:
            assert io._raster_claims(Counting(stdio.BytesIO(raw), len(raw)), "j") == []
        assert len(Counting.reads) < 100, len(Counting.reads)


def test_a_tiff_dimension_of_an_ifd_type_is_left_unread():
    """Review of fuzz16: an ImageWidth or BitsPerSample of type IFD (13) or IFD8 (18) was claimed as its value,
    though libtiff's TIFFReadDirEntryShort and TIFFReadDirEntryLong refuse both types: left unread, as libtiff
    leaves it."""
    import struct

    for typ in (13, 18):
        raw = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 3)
        raw += struct.pack("<HHII", 256, typ, 1, 500) + struct.pack("<HHII", 257, 3, 1, 30)
        raw += struct.pack("<HHII", 258, typ, 1, 16) + struct.pack("<I", 0)
        assert io._raster_claims(raw, "t.tif") == [(0, 30, 1)]


def test_a_jpeg_ls_or_hierarchical_jpeg_is_refused_as_such(tmp_path):
    """Review of fuzz16: a JPEG-LS file (imagecodecs' jpegls_encode) was refused as 'a JPEG without a frame header
    (SOF) before its first scan': it has one, SOF55 (0xFFF7), which libjpeg does not read. Hierarchical JPEG's DHP
    (0xFFDE) likewise."""
    frame = b"\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"  # 8 bits, 16x16, one component
    scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + bytes(64) + b"\xff\xd9"
    for marker, said in ((b"\xff\xf7", r"a JPEG-LS file \(SOF55\) is not read"),
                         (b"\xff\xde", r"a hierarchical JPEG \(DHP\) is not read")):
        path = tmp_path / "ls.jpg"
        path.write_bytes(b"\xff\xd8" + marker + frame + scan)
        with pytest.raises(UnsupportedFormatError, match=r"^" + re.escape(str(path)) + ": " + said):
            io.read_image(path)
    # a baseline file, whose frame header is SOF0, is still read
    path.write_bytes(cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1].tobytes())
    assert io.read_image(path).data.shape == (16, 16)


def test_a_tiff_header_walk_reads_no_value_it_does_not_use():
    """Review of fuzz16: the TIFF walk followed every out-of-line value (StripOffsets too), each read throwing
    away the block holding the IFD: 4096 IFDs of 16 such entries, 920 kB, took 131 074 reads (8 GB copied).
    Only the tags read are followed, each IFD's entries read once, a small value without evicting them."""
    import io as stdio
    import struct

    count, entries, start = 4096, 16, 1 << 17  # IFDs 128 kB in: each pointer (to 8) is in another block
    size = 2 + 12 * entries + 4
    raw = bytearray(b"II*\x00" + struct.pack("<I", start) + bytes(start - 8))
    for k in range(count):
        raw += struct.pack("<H", entries) + struct.pack("<HHII", 273, 4, 2, 8) * entries
        raw += struct.pack("<I", start + (k + 1) * size if k < count - 1 else 0)

    class Counting(stdio.BytesIO):
        reads = 0

        def read(self, n=-1):
            Counting.reads += 1
            return super().read(n)

    claims = io._raster_claims(io._FileView(Counting(bytes(raw)), len(raw)), "bomb.tif")
    assert len(claims) == count
    assert Counting.reads < 20, Counting.reads
    # a width out of line (LONG8 in a classic TIFF) is still followed, and the IFD still read after it
    tiff = bytearray(b"II*\x00" + struct.pack("<I", start) + bytes(start - 8))
    tiff[100:108] = struct.pack("<Q", 20000)
    tiff += struct.pack("<H", 2) + struct.pack("<HHII", 256, 16, 1, 100) + struct.pack("<HHII", 257, 3, 1, 30)
    tiff += struct.pack("<I", 0)
    Counting.reads = 0
    assert io._raster_claims(io._FileView(Counting(bytes(tiff)), len(tiff)), "w.tif") == [(20000, 30, 1)]
    assert io._raster_claims(bytes(tiff), "w.tif") == [(20000, 30, 1)]
    assert Counting.reads < 6, Counting.reads


def test_a_valid_raster_holding_more_than_its_header_lists_is_read(tmp_path):
    """Review of fuzz12: a file far larger than what its header claims was refused, and so were valid files main
    read: an ImageJ stack with one IFD and 40 pages of data after it, a TIFF with 20 MB of ImageJ metadata in a
    private tag. Only the budget's cap on the file's size holds now, whatever the header says."""
    tile = np.random.default_rng(0).integers(0, 60000, (40, 512, 512)).astype(np.uint16)
    stack = tmp_path / "imagej_stack.tif"
    stack.write_bytes(_one_ifd_tiff(512, 512, tile.tobytes()))  # 20 MiB, one page listed
    np.testing.assert_array_equal(io.read_image(stack).data, tile[0].astype(np.float32))
    meta = tmp_path / "imagej_metadata.tif"
    meta.write_bytes(_one_ifd_tiff(512, 512, tile[1].tobytes(), private=b"x" * (20 << 20)))
    np.testing.assert_array_equal(io.read_image(meta).data, tile[1].astype(np.float32))
    with pytest.raises(TooLargeError, match=r"holds 20.5 MiB, more than an image within the budget of 262144 "
                       r"pixels takes \(18.0 MiB"):
        io.read_image(meta, max_pixels=512 * 512)  # the budget's cap still holds: 2 x 4 B x 1 MiB + 16 MiB


_CUT_WHILE_OPEN = """
import os, sys
import mrcfile
from ptolemy_rt import read_image
from ptolemy_rt.montage import read_montage

path = sys.argv[1]
for opener in ("open", "mmap"):
    real = getattr(mrcfile, opener)

    def cut(p, *args, _real=real, **kwargs):  # another program rewrites the file in place meanwhile
        handle = _real(p, *args, **kwargs)
        os.truncate(p, 1024 + 4096)
        return handle

    setattr(mrcfile, opener, cut)
from ptolemy_rt.errors import PtolemyError
try:
    if sys.argv[2] == "montage":
        print(read_montage(path, path + ".mdoc").image.shape)
    else:
        print(read_image(path, section=1).shape)
except PtolemyError as exc:
    print(exc.exit_code, exc)
"""


@pytest.mark.parametrize("what", ["section", "montage"])
def test_an_mrc_file_cut_short_while_it_is_read_does_not_kill_the_process(tmp_path, what):
    """Fuzz campaign 12 (files that change during a read): the data block was memory-mapped, and a file cut
    short meanwhile (rewritten in place) killed the process with SIGBUS at the first page past its new end: no
    error line, and a batch lost every image after it. The data is now read: what was read is used, or the
    validator's size check refuses the file as it now is (exit 2, naming it)."""
    import subprocess
    import sys

    path = _mrc(tmp_path / "s.mrc", np.ones((4, 512, 512), np.float32))
    (tmp_path / "s.mrc.mdoc").write_text("PixelSpacing = 10\n\n" + "".join(
        f"[ZValue = {z}]\nPieceCoordinates = {400 * (z % 2)} {400 * (z // 2)} 0\n\n" for z in range(4)))
    done = subprocess.run([sys.executable, "-c", _CUT_WHILE_OPEN, str(path), what], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    shape = "(512, 512)" if what == "section" else "(912, 912)"
    assert done.stdout.strip() == shape or done.stdout.startswith(f"2 {path}: "), done.stdout


def test_an_mrc_file_cut_short_during_its_read_is_a_corrupt_file(tmp_path, monkeypatch):
    """The data block's read itself coming up short (the file cut just before it) is one error naming the file."""
    import mrcfile.mrcinterpreter

    path = _mrc(tmp_path / "s.mrc", np.ones((4, 64, 64), np.float32))
    real = mrcfile.mrcinterpreter.MrcInterpreter._read_data

    def cut(self, *args, **kwargs):
        os.truncate(path, 1024 + 100)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mrcfile.mrcinterpreter.MrcInterpreter, "_read_data", cut)
    with pytest.raises(CorruptFileError, match=r"s\.mrc: .*could only read"):
        io.read_image(path, section=1)


@pytest.mark.parametrize("opener", ["gzip", "bz2"])
def test_a_full_temporary_folder_is_not_blamed_on_the_compressed_file(tmp_path, opener):
    """Fuzz campaign 12 (TMPDIR on a full 2 MB tmpfs): a .mrc.gz decompressed into a full temporary folder was
    "truncated or corrupt gzip data (No space left on device)", or "cannot read" it: the file blamed for the disk.
    A header's refusal inside the stream was worded as corrupt data around its own message, too."""
    import bz2
    import gzip
    import resource
    import signal

    raw = _mrc(tmp_path / "x.mrc", np.ones((256, 256), np.float32)).read_bytes()
    packed = tmp_path / f"x.mrc.{'gz' if opener == 'gzip' else 'bz2'}"
    packed.write_bytes(gzip.compress(raw, mtime=0) if opener == "gzip" else bz2.compress(raw))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as Python starts: EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the temporary file stops at 64 kB
    try:
        with pytest.raises(TooLargeError, match=r"x\.mrc\.(gz|bz2): cannot be decompressed into the temporary "
                                                 r"folder .*\(File too large; TMPDIR chooses it\)$"):
            io.read_image(packed)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert io.read_image(packed).shape == (256, 256)
    lie = bytearray(raw)
    lie[0:4] = np.int32(1 << 21).tobytes()
    packed.write_bytes(gzip.compress(bytes(lie), mtime=0) if opener == "gzip" else bz2.compress(bytes(lie)))
    with pytest.raises(TooLargeError, match=r"x\.mrc\.(gz|bz2): the MRC header claims 2097152x256x1 pixels"):
        io.read_image(packed)


@pytest.mark.parametrize("flags,signed", [(None, True), (1, True), (0, False), (2, False), (3, True)])
def test_imod_unsigned_bytes_are_read_unsigned(tmp_path, flags, signed):
    """Fuzz campaign 12 (mode/dtype combinations of real files): IMOD and SerialEM write mode 0 as unsigned bytes,
    saying so by IMOD's stamp with bit 0 of its flags clear; mrcfile reads mode 0 as signed (MRC2014), so every
    pixel over 127 was wrapped to a negative value. Without the stamp mode 0 stays signed, as MRC2014 has it."""
    import struct

    pixels = np.random.default_rng(3).integers(0, 256, (40, 50)).astype(np.uint8)
    path = _mrc(tmp_path / "u.mrc", pixels.view(np.int8))
    if flags is not None:
        raw = bytearray(path.read_bytes())
        raw[152:160] = struct.pack("<ii", io.IMOD_STAMP, flags)
        path.write_bytes(bytes(raw))
    image = io.read_image(path)
    want = pixels.view(np.int8) if signed else pixels
    assert image.dtype == want.dtype.name
    np.testing.assert_array_equal(image.data, want.astype(np.float32))


def test_imod_unsigned_bytes_with_their_own_statistics_read_without_a_warning(tmp_path):
    """Review of fuzz12: mrcfile checks a mode 0 file's statistics against its bytes read signed, so an IMOD
    unsigned-byte file whose header statistics are right warned 'Data statistics appear to be inaccurate'."""
    import struct

    pixels = np.random.default_rng(4).integers(0, 256, (40, 50)).astype(np.uint8)
    path = _mrc(tmp_path / "u.mrc", pixels.view(np.int8))
    raw = bytearray(path.read_bytes())
    raw[76:88] = struct.pack("<3f", pixels.min(), pixels.max(), pixels.mean())  # dmin, dmax, dmean as IMOD has
    raw[216:220] = struct.pack("<f", pixels.std())
    raw[152:160] = struct.pack("<ii", io.IMOD_STAMP, 0)
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = io.read_image(path)
    np.testing.assert_array_equal(image.data, pixels.astype(np.float32))


def test_an_imod_unsigned_montage_is_assembled_from_unsigned_pieces(tmp_path):
    import struct

    from ptolemy_rt.montage import read_montage

    pieces = np.random.default_rng(4).integers(128, 256, (2, 32, 32)).astype(np.uint8)
    path = _mrc(tmp_path / "m.mrc", pieces.view(np.int8))
    raw = bytearray(path.read_bytes())
    raw[152:160] = struct.pack("<ii", io.IMOD_STAMP, 0)
    path.write_bytes(bytes(raw))
    (tmp_path / "m.mrc.mdoc").write_text("PixelSpacing = 10\n\n[ZValue = 0]\nPieceCoordinates = 0 0 0\n\n"
                                         "[ZValue = 1]\nPieceCoordinates = 32 0 0\n")
    image = read_montage(path, tmp_path / "m.mrc.mdoc", flatten=False).image
    assert image.shape == (32, 64) and image.min() >= 128


@pytest.mark.parametrize("compression", [8, 5, 34712, 65535])
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_a_tiff_whose_pixels_libtiff_cannot_decode_is_refused_not_read_as_blank(tmp_path, compression, suffix,
                                                                                  capsys):
    """Found by hand (fuzz13): where libtiff cannot decode a strip (a compression it lacks: JPEG 2000, an unknown
    number; corrupt deflate or LZW data), OpenCV logged the error to its silenced log and handed back a canvas of
    zeros: exit 0, "blank image", for a file that holds no image. It is a CorruptFileError with libtiff's words,
    whatever the file is named (the content decides: review of fuzz13)."""
    import struct

    from ptolemy_rt.cli import main

    raw = _tiff_header(300, 300, 8, 1, 300 * 300)  # its strip: zeros, which no decoder reads as its stream
    path = tmp_path / f"lost{suffix}"
    path.write_bytes(raw.replace(struct.pack("<HHIHH", 259, 3, 1, 8, 0),
                                 struct.pack("<HHIHH", 259, 3, 1, compression, 0)))
    with pytest.raises(CorruptFileError, match=rf"lost\{suffix}: not a readable TIFF image \(libtiff: "):
        io.read_image(path)
    capsys.readouterr()
    assert main(["squares", str(path), "--no-score"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: not a readable TIFF image (libtiff: ")


def test_a_tiff_of_zeros_libtiff_reads_is_still_a_blank_image_and_a_partly_corrupt_one_warns(tmp_path):
    """The refusal above needs libtiff's error: a whole TIFF of zeros is read (a blank image, no error), and one
    whose deflate stream breaks part-way is read with libtiff's error as a warning naming the file."""
    zeros = tmp_path / "zeros.tif"
    assert cv2.imwrite(str(zeros), np.zeros((300, 300), np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not io.read_image(zeros).data.any()
    data = np.random.default_rng(0).integers(1, 255, (300, 300)).astype(np.uint8)
    good = tmp_path / "good.tif"
    assert cv2.imwrite(str(good), data, [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"broken\.tif: libtiff: "):
        image = io.read_image(broken)
    assert image.shape == (300, 300) and image.data.any()


def test_a_library_caller_sees_a_tiff_stack_s_warning_once_and_whole(tmp_path):
    """Found by hand (fuzz13): Python's default filter prints a warning when it is issued; the "a stack of 3
    sections" warning was issued while descriptor 2 was redirected to collect the decoders' lines, so it was
    collected too and came out as two mangled warnings ("NAME: /.../io.py:816: UserWarning: NAME: a stack..." and
    "NAME: return _read_any(...)"). It is held until descriptor 2 is back, and printed once."""
    import subprocess
    import sys

    path = tmp_path / "stack.tif"
    assert cv2.imwritemulti(str(path), [np.full((40, 50), k, np.uint8) for k in range(3)])
    code = f"from ptolemy_rt import read_image; print(read_image({str(path)!r}).shape)"
    env = {**os.environ, "PYTHONPATH": str(Path(io.__file__).parents[1]), "PYTHONWARNINGS": "default"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                       check=True)
    assert r.stdout.strip() == "(40, 50)"
    warned = [line for line in r.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 1 and warned[0].endswith(f"UserWarning: {path}: a stack of 3 sections; using section 0 "
                                                   "(choose with --section)"), r.stderr


def test_a_raster_growing_while_it_is_read_is_read_as_checked(tmp_path, monkeypatch):
    """Found by hand (fuzz13): the header and size checks looked at the file's size, then np.fromfile read to its
    end: a file still being written (or grown by another program meanwhile) was read whole, however large it had
    become (here 256 MiB of zeros more). Only the bytes checked are read."""
    import tracemalloc

    path = tmp_path / "growing.png"
    assert cv2.imwrite(str(path), np.full((300, 300), 9, np.uint8))
    checked = io._check_raster_section

    def grow(p, *args):
        checked(p, *args)
        os.truncate(p, p.stat().st_size + (256 << 20))  # sparse: no disk used

    monkeypatch.setattr(io, "_check_raster_section", grow)
    tracemalloc.start()
    try:
        image = io.read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (300, 300) and peak < (64 << 20)


def _planar_tiff(planes: np.ndarray, fmt: int, planar: int) -> bytes:
    """A TIFF of `planes` (samples, rows, cols): one strip per plane with `planar` 2, else one strip of interleaved
    samples; SampleFormat `fmt`."""
    return tiff_file([_tiff_page(planes, fmt, planar)])


def _tiff_page(planes: np.ndarray, fmt: int, planar: int) -> dict:
    samples, rows, cols = planes.shape
    blobs = [p.tobytes() for p in planes] if planar == 2 else [np.moveaxis(planes, 0, -1).tobytes()]
    return {"width": cols, "height": rows, "blobs": blobs, "bits": planes.dtype.itemsize * 8, "samples": samples,
            "fmt": fmt, "compression": 1, "planar": planar}


@pytest.mark.parametrize("dtype,fmt,samples", [(np.uint16, 1, 3), (np.int16, 2, 3), (np.float32, 3, 3),
                                               (np.uint16, 1, 4), (np.uint8, 1, 2), (np.uint16, 1, 2),
                                               (np.int16, 2, 2)])
def test_a_tiff_of_separate_planes_opencv_misreads_is_refused(tmp_path, dtype, fmt, samples):
    """Found by hand (fuzz13): OpenCV decodes a TIFF of separate sample planes (PlanarConfiguration 2) right only
    for 8-bit RGB(A), through libtiff's RGBA reader; a 16-bit or float RGB one, or a grey-and-alpha one, came out
    scrambled (pixel 0 wrong by up to 6e4), exit 0 with targets found in noise. They are refused from the header;
    the same pixels interleaved, and 8-bit RGB planes, are read right, but for grey and alpha of 16 bits, which
    OpenCV cuts to their top 8 bits (unsigned) or to zeros (signed) interleaved too: refused as well."""
    rng = np.random.default_rng(0)
    planes = (rng.random((samples, 40, 48)) * 200).astype(dtype)
    path = tmp_path / "planes.tif"
    path.write_bytes(_planar_tiff(planes, fmt, planar=2))
    with pytest.raises(UnsupportedFormatError, match=r"planes\.tif: a TIFF of separate sample planes"):
        io.read_image(path)
    a = planes.astype(np.float64)
    want = a[0] if samples < 3 else 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    path.write_bytes(_planar_tiff(planes, fmt, planar=1))
    if samples == 2 and planes.itemsize > 1:
        with pytest.raises(UnsupportedFormatError, match=r"planes\.tif: a TIFF of grey and alpha samples"):
            io.read_image(path)
    else:
        assert np.abs(io.read_image(path).data - want).max() <= 1.0
    rgb = (rng.random((3, 40, 48)) * 200).astype(np.uint8)
    path.write_bytes(_planar_tiff(rgb, 1, planar=2))
    a = rgb.astype(np.float64)
    assert np.abs(io.read_image(path).data - (0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2])).max() <= 1.0


def _bad_page(name: str, page: int, what: str, section: int) -> str:
    """The refusal's words (a regex) for reading `section` of TIFF `name` whose first undecodable page is `page`."""
    before = "" if section == page else (rf" \(nor then page {section}, as OpenCV reads the pages up to the one "
                                         r"after it\)")
    return rf"{re.escape(name)}: page {page} is a TIFF of {what} is not read correctly by OpenCV{before}; save"


@pytest.mark.parametrize("dtype,fmt,samples,what", [
    (np.float16, 3, 1, r"16-bit floating-point samples \(SampleFormat 3\)"),
    (np.float16, 3, 3, r"16-bit floating-point samples \(SampleFormat 3\)"),
    (np.complex64, 6, 1, r"complex samples \(SampleFormat 6\)")])
def test_a_tiff_of_samples_opencv_cannot_decode_is_refused_saying_why(tmp_path, dtype, fmt, samples, what):
    """Leftover of robust14: a float16 TIFF (tifffile's, ImageJ's) was refused as 'not a readable TIFF image', without
    saying why (OpenCV decodes float32 and float64, not float16; nor complex samples). The header's SampleFormat says
    it, before the file is decoded. OpenCV's header check fails every page of a file holding such a page (page 0 of
    a float32 stack with a float16 page 1 raised the check's words), so such a page anywhere is said; float32 and
    float64 are read as before."""
    planes = (np.arange(samples * 40 * 48).reshape(samples, 40, 48) % 50).astype(dtype)
    path = tmp_path / "half.tif"
    path.write_bytes(_planar_tiff(planes, fmt, planar=1))
    with pytest.raises(UnsupportedFormatError, match=rf"^{tmp_path}/half\.tif: a TIFF of {what} is not read "
                                                     r"correctly by OpenCV; save"):
        io.read_image(path)
    good = (np.arange(40 * 48).reshape(1, 40, 48) % 50).astype(np.float32)
    path.write_bytes(tiff_file([_tiff_page(good, 3, 1), _tiff_page(planes, fmt, 1)]))
    for section in (0, 1):
        with pytest.raises(UnsupportedFormatError, match=_bad_page("half.tif", 1, what, section)):
            io.read_image(path, section=section)
    for wide in (np.float32, np.float64):
        path.write_bytes(_planar_tiff(good.astype(wide), 3, planar=1))
        assert np.array_equal(io.read_image(path).data, good[0])


def test_a_float16_page_refuses_only_the_pages_opencv_fails_on(tmp_path):
    """Review of robust15 (B1): a float16 page b was said to fail every page of the file, but OpenCV fails page p
    only when b <= p + 1 (it reads the header of the page after the one it decodes): sections 0 and 1 of a float32
    stack whose page 3 is float16 were read on main, and are read again (a read without section is page 0's, with
    the stack's warning); pages 2 and 3 are refused saying why."""
    pages = [(np.arange(40 * 48).reshape(1, 40, 48) % (50 + k)).astype(np.float32) for k in range(3)]
    path = tmp_path / "tail.tif"
    half = pages[0].astype(np.float16)
    path.write_bytes(tiff_file([_tiff_page(p, 3, 1) for p in pages] + [_tiff_page(half, 3, 1)]))
    for section in (0, 1):
        assert np.array_equal(io.read_image(path, section=section).data, pages[section][0])
    with pytest.warns(UserWarning, match="section 0"):
        assert np.array_equal(io.read_image(path).data, pages[0][0])
    half_words = r"16-bit floating-point samples \(SampleFormat 3\)"
    for section in (2, 3):
        with pytest.raises(UnsupportedFormatError, match=_bad_page("tail.tif", 3, half_words, section)):
            io.read_image(path, section=section)


def _png_of(width: int, height: int, rows: bytes) -> bytes:
    """A grey 8-bit PNG whose header claims width x height, its pixel data `rows` (filter bytes included)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_raster_of_no_pixels_or_a_tiff_cut_in_its_header_is_refused_saying_so(tmp_path):
    """Found by hand (robust15): a PNG or JPEG whose header claims a width or height of 0 was refused as 'not a
    readable image', nothing of why, and a TIFF of its 4-byte magic alone as 'not a readable image (error: unpack
    requires a buffer of 4 bytes)', struct's words. Both now say what the file lacks; the same files whole are
    read."""
    import struct

    path = tmp_path / "a.png"
    for width, height in ((0, 0), (0, 40), (40, 0)):
        path.write_bytes(_png_of(width, height, b"\0" * 41 * 40))
        with pytest.raises(CorruptFileError, match=rf"a\.png: the header claims a {width}x{height} image: no pixels"):
            io.read_image(path)
    path.write_bytes(_png_of(40, 40, (b"\0" + bytes(range(40))) * 40))
    assert io.read_image(path).shape == (40, 40)
    ok, buf = cv2.imencode(".jpg", np.tile(np.arange(48, dtype=np.uint8), (40, 1)))
    good = buf.tobytes()
    path = tmp_path / "a.jpg"
    path.write_bytes(good.replace(struct.pack(">HH", 40, 48), struct.pack(">HH", 0, 48), 1))
    with pytest.raises(CorruptFileError, match=r"a\.jpg: the header claims a 48x0 image: no pixels"):
        io.read_image(path)
    path.write_bytes(good)
    assert io.read_image(path).shape == (40, 48)
    path = tmp_path / "a.tif"
    for magic in (b"II*\x00", b"MM\x00*", b"II*\x00\x08\x00"):
        path.write_bytes(magic)
        with pytest.raises(CorruptFileError, match=rf"a\.tif: too short for a TIFF header \({len(magic)} of 8 bytes"):
            io.read_image(path)


def test_an_extended_header_type_of_non_ascii_bytes_is_said_and_read_with_permissive(tmp_path):
    """Found by hand (fuzz13): mrcfile's validator words an unknown extended header type by decoding it as ASCII;
    a byte over 127 raised UnicodeDecodeError, and the file was refused even with --permissive ("not a readable
    image (UnicodeDecodeError: ...)") although its data block is whole. The validator's line is said instead."""
    data = np.arange(64 * 80, dtype=np.int16).reshape(64, 80)
    path = tmp_path / "odd.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.set_extended_header(np.zeros(64, np.uint8))
        m.header.exttyp = b"\xff\xfeZ\x80"
    with pytest.raises(CorruptFileError, match=r"odd\.mrc: invalid MRC file: Extended header type is undefined or "
                                               r"unrecognised: exttyp = '\\xff\\xfeZ\\x80' \(--permissive"):
        io.read_image(path)
    with pytest.warns(UserWarning, match="Extended header type is undefined"):
        image = io.read_image(path, permissive=True)
    assert np.array_equal(image.data, data)


def _progressive_jpeg(side: int, extra_scans: int) -> bytes:
    """A grey progressive JPEG of a constant side x side image, its last (AC refinement) scan repeated."""
    _, buf = cv2.imencode(".jpg", np.full((side, side), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    raw = buf.tobytes()
    last = raw.rfind(b"\xff\xda")
    return raw[:-2] + raw[last:-2] * extra_scans + b"\xff\xd9"


def test_a_progressive_jpeg_of_too_many_scans_is_refused_before_decoding(tmp_path):
    """Found by hand (fuzz13): every scan of a progressive JPEG is a pass over the whole image; 1,000 copies of a
    31-byte refinement scan over 4000x4000 pixels (a 94 kB file) took 44 s to decode, 30,000 (under 1 MB) would
    take 22 minutes. At most MAX_JPEG_SCANS scans, and JPEG_SCAN_PASSES passes over the pixel budget; libjpeg's own
    progressive files (6 scans for grey) read as before."""
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(_progressive_jpeg(512, 0))
    assert io.read_image(plain).shape == (512, 512)
    many = tmp_path / "many.jpg"
    many.write_bytes(_progressive_jpeg(512, io.MAX_JPEG_SCANS))
    with pytest.raises(CorruptFileError, match=r"many\.jpg: a JPEG of 1006 scans .* decoding-time bomb"):
        io.read_image(many)
    costly = tmp_path / "costly.jpg"  # 70 scans of a megapixel: more than 16 passes over a budget of 2**22
    costly.write_bytes(_progressive_jpeg(1024, 64))
    with pytest.raises(CorruptFileError, match=r"costly\.jpg: a JPEG of 70 scans over 1048576 pixels"):
        io.read_image(costly, max_pixels=1 << 22)
    assert io.read_image(costly).shape == (1024, 1024)


@pytest.mark.parametrize("block", [2, 3, 7, 64, 4099])
def test_jpeg_scans_are_counted_across_the_block_edges(tmp_path, monkeypatch, block):
    """Review of fuzz13: the scans are counted a block at a time; a scan header (0xFF 0xDA) across two blocks
    counts once, whatever the block size (a count that missed such pairs passed every other test)."""
    many = tmp_path / "many.jpg"
    many.write_bytes(_progressive_jpeg(512, io.MAX_JPEG_SCANS))
    monkeypatch.setattr(io, "_SCAN_BLOCK", block)
    with pytest.raises(CorruptFileError, match=r"many\.jpg: a JPEG of 1006 scans "):
        io.read_image(many)


_FORK_BESIDE_A_READER = """
import os, signal, sys, threading
import numpy as np, mrcfile
from ptolemy_rt import io

path = sys.argv[1]
with mrcfile.new(path, overwrite=True) as m:
    m.set_data(np.arange(64 * 64, dtype=np.float32).reshape(64, 64))
held, release = threading.Event(), threading.Event()


def reader():  # a thread inside a read's warning section when the process forks
    with io._WARNINGS_LOCK:
        held.set()
        release.wait()


threading.Thread(target=reader, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(20)
    io.read_image(path)
    os._exit(0)
release.set()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_beside_a_reading_thread_can_read(tmp_path):
    """Review of fuzz13: the lock of the readers' warning sections, held by another thread at a fork, stayed held
    in the child (where that thread does not exist): its every read blocked for good. The child gets a fresh one."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _FORK_BESIDE_A_READER, str(tmp_path / "x.mrc")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "child 0", (done.stdout, done.stderr)


def test_a_small_pixel_budget_reads_an_ordinary_progressive_jpeg(tmp_path):
    """Review of fuzz13: the scan check counted a small image as a megapixel but a small budget as itself, so a
    256x256 colour progressive JPEG (libjpeg's 10 scans) under --max-pixels 500000 was refused as a decoding-time
    bomb; main read it. The budget side is floored the same way, and the refusal names --max-pixels."""
    image = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    path = tmp_path / "p.jpg"
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert io.read_image(path, max_pixels=500_000).shape == (256, 256)
    many = tmp_path / "many.jpg"  # 22 scans over a (floored) megapixel: over 16 passes, whatever the budget
    many.write_bytes(_progressive_jpeg(256, 16))
    with pytest.raises(CorruptFileError, match=r"many\.jpg: a JPEG of 22 scans .*--max-pixels.* decoding-time bomb"):
        io.read_image(many, max_pixels=500_000)


def test_the_jpeg_checks_of_a_file_of_fill_bytes_take_little_memory_and_few_reads(tmp_path, monkeypatch):
    """Review of fuzz13: the scan count built int64 offsets of every 0xFF byte and the bytes after them, 16 bytes a
    byte of the file (a 64 MB file of 0xFF fill: 1088 MB in the check alone), and the header walk stepped through
    fill bytes one at a time (45 s of CPU for 64 MB) twice. Scans are counted in booleans, in blocks; fill is
    skipped in blocks; the claims are walked once."""
    import io as stdio
    import tracemalloc

    raw = b"\xff\xd8" + b"\xff" * (16 << 20)
    array = np.frombuffer(raw, np.uint8)
    tracemalloc.start()
    try:
        io._check_jpeg_scans(array, "fill.jpg", 1 << 28, [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (48 << 20), peak

    class Counting(io._FileView):
        reads = 0

        def __getitem__(self, key):
            Counting.reads += 1
            return super().__getitem__(key)

    with pytest.raises(CorruptFileError, match="ends before its frame header"):  # (fuzz16: it said so)
        io._raster_claims(Counting(stdio.BytesIO(raw), len(raw)), "fill.jpg")
    assert Counting.reads < 1000, Counting.reads
    # a frame header after fill is found as before, and fill running to the end of the file is no frame
    jpeg = cv2.imencode(".jpg", np.zeros((48, 64), np.uint8))[1].tobytes()
    padded = jpeg[:2] + b"\xff" * 200_000 + jpeg[2:]
    Counting.reads = 0
    assert io._raster_claims(Counting(stdio.BytesIO(padded), len(padded)), "j") == [(64, 48, 1)]
    assert Counting.reads < 100, Counting.reads
    for cut in (2, 5, 9, 10, 11, 12):
        short = jpeg[:2] + b"\xff" * 70_000 + jpeg[2:2 + cut]
        with pytest.raises(CorruptFileError, match="ends before its frame header"):
            io._raster_claims(short, "j")
    calls = []
    claims = io._raster_claims

    def counting(*args):
        calls.append(args[1])
        return claims(*args)

    path = tmp_path / "one.jpg"
    path.write_bytes(jpeg)
    monkeypatch.setattr(io, "_raster_claims", counting)
    assert io.read_image(path).shape == (48, 64)
    assert len(calls) == 1, calls


# (the header's byte order, the stamp written over it, what the refusal says of the stamp)
_STAMPS = [("<", b"\x11\x11\x00\x00", r"the machine stamp \(11 11 00 00\) says big-endian, the header reads "
                                         r"little-endian"),
           (">", b"\x44\x44\x00\x00", r"the machine stamp \(44 44 00 00\) says little-endian, the header reads "
                                         r"big-endian")] + [
    (order, stamp, rf"its machine stamp \({stamp.hex(' ')}\) names no byte order")
    for order in "<>" for stamp in (b"\x00\x00\x00\x00", b"\x11\x00\x00\x00", b"\xde\xad\xbe\xef")]


@pytest.mark.parametrize("order, stamp, said", _STAMPS)
def test_a_machine_stamp_at_odds_with_the_header_is_named_and_read_with_permissive(tmp_path, order, stamp, said):
    """Found by hand (fuzz13): a header whose machine stamp names the other byte order (some writers get it wrong;
    _mrc_header reads such a header by its mode) was refused as "not a valid MRC file (Unrecognised mode
    '16777216')", mrcfile's reading of it in the stamp's order: a problem the file does not have, and no word of
    --permissive, which reads it. The stamp is named; one mrcfile does not know (zeros, garbage from older
    writers) is said to name no order (review of fuzz13: any stamp but 11 11 was said to say little-endian)."""
    data = np.arange(30 * 20, dtype=np.int16).reshape(30, 20)
    path = tmp_path / "stamp.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data.astype(order + "i2"))
    raw = bytearray(path.read_bytes())
    raw[212:216] = stamp
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=rf"stamp\.mrc: invalid MRC file: {said} \(--permissive reads it "
                                               r"anyway\)$"):
        io.read_image(path)
    with pytest.warns(UserWarning, match="[Mm]achine stamp"):
        assert np.array_equal(io.read_image(path, permissive=True).data, data)


def test_an_animated_png_named_tif_is_read_as_its_first_image_not_every_frame(tmp_path, monkeypatch):
    """Found by hand (fuzz13): a .tif name sent the file to OpenCV's imdecodemulti, which decodes every frame of
    anything: an animated PNG of 3000 frames of 1000x1000 zeros (3 MB; its header lists one image, within every
    budget) took 6 GB. Pages are a TIFF's only: other content gives its first image, as its own name would."""
    import zlib

    side, frames = 64, 40
    path = tmp_path / "frames.tif"
    path.write_bytes(apng_file(side, frames, zlib.compress((b"\0" + bytes(range(side))) * side)))
    decoded = []
    multi = cv2.imdecodemulti

    def counting(*args, **kwargs):
        ok, pages = multi(*args, **kwargs)
        decoded.append(len(pages))
        return ok, pages

    monkeypatch.setattr(cv2, "imdecodemulti", counting)
    image = io.read_image(path)
    assert image.shape == (side, side) and image.data[0, 5] == 5 and sum(decoded) <= 1
    with pytest.raises(ShapeError, match="holds a single image"):
        io.read_image(path, section=3)


@pytest.mark.parametrize("ext", [".jp2", ".webp"])
def test_a_format_not_read_is_refused_before_opencv_decodes_it(tmp_path, ext):
    """Found by hand (fuzz13): OpenCV decodes whatever it recognises, whatever the file's name; no header of JPEG
    2000, AVIF, WebP, GIF or Radiance is checked here, so an 829-byte JPEG 2000 named .png decoded to 8000x8000 RGB
    (1 GB, 14 s), a compression bomb no ratio test saw. A file that is no TIFF, PNG, JPEG or BMP is refused; a PNG
    named .jpg is read as before."""
    ok, buf = cv2.imencode(ext, np.zeros((512, 512, 3), np.uint8))
    if not ok:
        pytest.skip(f"this OpenCV writes no {ext}")
    path = tmp_path / "other.png"
    path.write_bytes(buf.tobytes())
    with pytest.raises(UnsupportedFormatError, match=r"other\.png: not a TIFF, PNG, JPEG or BMP file"):
        io.read_image(path)
    png = tmp_path / "png.jpg"
    png.write_bytes(cv2.imencode(".png", np.full((30, 40), 9, np.uint8))[1].tobytes())
    assert io.read_image(png).shape == (30, 40)


def test_reading_in_threads_loses_no_warning_and_refuses_no_valid_file(tmp_path):
    """Review of fuzz13: catch_warnings(record=True) around a raster's decoding and an MRC's opening swapped the
    process's warning state: two threads reading lost warnings (12 of 400 seen) and left warnings.showwarning
    replaced for good, and another thread's warning recorded while a valid MRC stack opened refused it as an
    invalid MRC file. Each read now takes its own thread's warnings only, one swap at a time (descriptor 2, and so
    the raster's swap, is the main thread's alone)."""
    import threading

    mrc_path, tif_path = tmp_path / "stk.mrc", tmp_path / "stk.tif"
    sections = np.random.default_rng(0).integers(0, 255, (3, 60, 80))
    with mrcfile.new(mrc_path) as m:
        m.set_data(sections.astype(np.int16))
    assert cv2.imwritemulti(str(tif_path), list(sections.astype(np.uint8)))
    reads, readers = 25, 3
    seen: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()
    emitted = [0]

    def read(paths) -> None:
        try:
            for _ in range(reads):
                for path in paths:
                    assert io.read_image(path).shape == (60, 80)
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)

    def warn() -> None:
        while not done.is_set():
            warnings.warn("another thread's warning", RuntimeWarning, stacklevel=1)
            emitted[0] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        filters = list(warnings.filters)

        def collect(message, category, filename, lineno, file=None, line=None):
            seen.append(str(message))

        warnings.showwarning = collect
        warner = threading.Thread(target=warn)
        threads = [threading.Thread(target=read, args=((mrc_path, tif_path),)) for _ in range(readers)]
        warner.start()
        for t in threads:
            t.start()
        read((tif_path, mrc_path))  # the main thread too: it collects descriptor 2 while a raster decodes
        for t in threads:
            t.join()
        done.set()
        warner.join()
        assert warnings.showwarning is collect and warnings.filters == filters
    assert not errors, errors[0]
    assert sum("a stack of 3 sections; using section 0" in m for m in seen) == 2 * reads * (readers + 1)
    assert seen.count("another thread's warning") == emitted[0] > 0


def test_a_tiff_stack_is_refused_for_a_page_opencv_misreads_only_when_that_page_is_read(tmp_path):
    """Review of fuzz13: the refusals of separate sample planes and of 16-bit grey and alpha ran on every page, so
    a stack whose other page (a thumbnail) is such was refused even for --section 0. Only the page read counts."""
    rng = np.random.default_rng(1)
    grey = (rng.random((1, 40, 48)) * 200).astype(np.uint16)
    odd = (rng.random((3, 10, 12)) * 200).astype(np.uint16)
    path = tmp_path / "stack.tif"
    path.write_bytes(tiff_file([_tiff_page(grey, 1, 1), _tiff_page(odd, 1, 2)]))
    assert np.array_equal(io.read_image(path, section=0).data, grey[0])
    with pytest.warns(UserWarning, match="using section 0"):
        assert io.read_image(path).shape == (40, 48)
    for section in (1, -1):
        with pytest.raises(UnsupportedFormatError, match=r"stack\.tif: page 1 is a TIFF of separate sample planes "
                                                         r"\(PlanarConfiguration 2\) with 3 samples of 16 bits"):
            io.read_image(path, section=section)
    alpha = (rng.random((2, 10, 12)) * 200).astype(np.uint16)
    path.write_bytes(tiff_file([_tiff_page(alpha, 1, 1), _tiff_page(grey, 1, 1)]))
    assert np.array_equal(io.read_image(path, section=1).data, grey[0])
    with pytest.raises(UnsupportedFormatError, match=r"stack\.tif: page 0 is a TIFF of grey and alpha samples of 16"):
        io.read_image(path)


def test_an_mrc_is_judged_by_mrcfile_s_warnings_alone(tmp_path, monkeypatch):
    """Review of fuzz13: every warning raised while an MRC opened was taken for the validator's word on the file;
    only those raised in mrcfile's own files are now, and any other goes on where it was going."""
    path = tmp_path / "ok.mrc"
    _mrc(path, np.arange(30 * 40, dtype=np.int16).reshape(30, 40))
    opening = mrcfile.open

    def open_warning(*args, **kwargs):
        warnings.warn("someone else's warning", UserWarning, stacklevel=1)
        return opening(*args, **kwargs)

    monkeypatch.setattr(mrcfile, "open", open_warning)
    with pytest.warns(UserWarning, match="someone else's warning"):
        assert io.read_image(path).shape == (30, 40)


def test_a_reader_s_warning_hook_left_in_place_takes_nothing(tmp_path):
    """Review of fuzz13: another section's catch_warnings (outside io's lock) entered during a reader's and left
    after it restores the reader's hook for good; the hook then took that thread's later warnings into a list
    nobody reads. A hook whose section has ended passes every warning on."""
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: seen.append(str(message))
        ours = io._own_warnings(io._OUR_MODULES)
        caught = ours.__enter__()
        theirs = warnings.catch_warnings()
        theirs.__enter__()  # another thread's section, as the interleaving has it
        warnings.warn("during", UserWarning, stacklevel=1)
        ours.__exit__(None, None, None)
        theirs.__exit__(None, None, None)  # puts the reader's hook back
        warnings.warn("after", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["during"] and seen == ["after"]


@settings(max_examples=300, deadline=None)
@given(head=st.binary(min_size=1024, max_size=1024), stamp=st.sampled_from([None, b"\x11\x11", b"\x44\x44"]),
       mode=st.sampled_from([None, 0, 1, 2, 3, 4, 6, 12, 1 << 24, 2 << 24]), big=st.booleans())
def test_mrc_dims_reads_what_the_header_record_does(head, stamp, mode, big):
    """mrcdims.mrc_dims (struct, no numpy: the batch process's SerialEM stacks) gives io._mrc_header's nx, ny, nz,
    mode and nsymbt, byte order included (the machine stamp's, else the one whose mode is known)."""
    import struct

    from ptolemy_rt.io import _mrc_header
    from ptolemy_rt.mrcdims import mrc_dims

    raw = bytearray(head)
    if stamp is not None:
        raw[212:214] = stamp
    if mode is not None:
        struct.pack_into(">i" if big else "<i", raw, 12, mode)
    record = _mrc_header(bytes(raw), "x.mrc")
    assert mrc_dims(bytes(raw)) == (int(record.nx), int(record.ny), int(record.nz), int(record.mode),
                                    int(record.nsymbt))
    assert mrc_dims(bytes(raw[:1023])) is None


def _packed_page(bits: int, samples: int, fmt: int, width: int = 40, height: int = 24) -> dict:
    """tiff_file's page of `samples` x `bits` (packed, MSB first) per pixel of SampleFormat `fmt`, pixels of noise."""
    rows = (width * bits * samples + 7) // 8
    blob = np.random.default_rng(bits * 10 + samples).integers(0, 256, rows * height, dtype=np.uint8).tobytes()
    return {"width": width, "height": height, "blobs": [blob], "bits": bits, "samples": samples, "fmt": fmt,
            "compression": 1, "planar": 1}


@pytest.mark.parametrize("bits,samples,fmt,what,whole", [
    (24, 1, 1, "24-bit samples", True), (4, 1, 1, "4-bit samples", True), (2, 3, 2, "2-bit samples", True),
    (8, 5, 1, "5 samples a pixel", True), (16, 6, 2, "6 samples a pixel", True),
    (8, 1, 4, r"samples of SampleFormat 4 \(neither integer nor floating point\)", True),
    (1, 3, 1, "3 samples of 1 bit", False)])
def test_a_tiff_of_bits_or_samples_opencv_cannot_read_is_refused_saying_what_it_is(tmp_path, bits, samples, fmt,
                                                                                    what, whole):
    """Leftover of fuzz15, found again by hand (fuzz16): a 24-, 4- or 2-bit TIFF, one of 5 or more samples a pixel,
    of SampleFormat 4 (void), or of several 1-bit samples was refused as 'not a readable TIFF image', saying nothing
    of what it is (OpenCV's header check takes 1, 8, 10, 12, 14, 16, 32 or 64 bits and 1 to 4 channels). The header
    says it, before the file is decoded; as a page of a stack, the pages OpenCV then fails too (its header check
    reads the page after the one decoded) are refused, the others read."""
    path = tmp_path / "odd.tif"
    path.write_bytes(tiff_file([_packed_page(bits, samples, fmt)]))
    with pytest.raises(UnsupportedFormatError, match=rf"^{re.escape(str(path))}: a TIFF of {what} is not read "
                                                     "correctly by OpenCV; save"):
        io.read_image(path)
    good = _packed_page(8, 1, 1)
    path.write_bytes(tiff_file([good, good, _packed_page(bits, samples, fmt)]))
    assert io.read_image(path, section=0).shape == (24, 40)
    for section in (1, 2):
        if section == 1 and not whole:
            assert io.read_image(path, section=section).shape == (24, 40)
            continue
        with pytest.raises(UnsupportedFormatError, match=_bad_page("odd.tif", 2, what, section)):
            io.read_image(path, section=section)


@pytest.mark.parametrize("bits,samples,fmt", [(1, 1, 1), (8, 4, 2), (10, 3, 1), (12, 1, 1), (14, 1, 2),
                                              (32, 3, 1), (64, 1, 2)])
def test_tiff_bits_and_samples_opencv_reads_are_still_read(tmp_path, bits, samples, fmt):
    """The kinds of page OpenCV reads (1 to 4 channels of 1, 8, 10, 12, 14, 16, 32 or 64 bits) are not refused."""
    path = tmp_path / "fine.tif"
    path.write_bytes(tiff_file([_packed_page(bits, samples, fmt)]))
    assert io.read_image(path).shape == (24, 40)


def _jpeg_of_components(n: int) -> bytes:
    """A baseline JPEG whose frame and scan headers list `n` components, all using grey's tables; the scan data is a
    grey image's (a decoder that takes the header says the data ends early)."""
    import struct

    _, buf = cv2.imencode(".jpg", (np.arange(48 * 64).reshape(48, 64) % 200).astype(np.uint8))
    raw = buf.tobytes()
    sof = raw.find(b"\xff\xc0")
    end = sof + 2 + struct.unpack(">H", raw[sof + 2:sof + 4])[0]
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * n, 8, 48, 64, n) + b"".join(bytes([k + 1, 0x11, 0])
                                                                                for k in range(n))
    raw = raw[:sof] + frame + raw[end:]
    sos = raw.find(b"\xff\xda")
    end = sos + 2 + struct.unpack(">H", raw[sos + 2:sos + 4])[0]
    scan = b"\xff\xda" + struct.pack(">HB", 6 + 2 * n, n) + b"".join(bytes([k + 1, 0]) for k in range(n))
    return raw[:sos] + scan + b"\x00\x3f\x00" + raw[end:]


@pytest.mark.parametrize("components", [0, 2, 5])
def test_a_jpeg_of_components_libjpeg_cannot_convert_is_refused_saying_how_many(tmp_path, components):
    """Leftover of fuzz15, found again by hand (fuzz16): a JPEG of 2 or 5 colour components (or none) was refused as
    'not a readable image' (libjpeg converts 1, 3 or 4 only). The frame header says how many, before decoding; 1, 3
    and 4 are read."""
    path = tmp_path / "odd.jpg"
    path.write_bytes(_jpeg_of_components(components))
    with pytest.raises(UnsupportedFormatError, match=rf"^{re.escape(str(path))}: a JPEG of {components} colour "
                                                     r"components is not read \(1, 3 or 4 are\); save it as grey"):
        io.read_image(path)
    for fine in (1, 3, 4):
        path.write_bytes(_jpeg_of_components(fine))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scan data of 3 or 4 components ends early
            assert io.read_image(path).shape == (48, 64)


def test_an_mrc_header_of_sampling_zero_reads_without_numpy_s_bare_warning(tmp_path):
    """Found by hand (fuzz16): an MRC header whose sampling mx is 0 gave the library caller numpy's 'divide by zero
    encountered in divide' (twice, from mrcfile's voxel size), naming no file. The voxel size is then unknown,
    quietly, in the reader, the pixel size lookup and the montage reader alike."""
    from ptolemy_rt.metadata import mrc_pixel_size

    path = _mrc(tmp_path / "mx0.mrc", (np.arange(64 * 80).reshape(64, 80) % 7).astype(np.float32), voxel=5.0)
    _header_word(path, 28, 0)  # mx
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = io.read_image(path)
        assert mrc_pixel_size(path) is None
    assert image.pixel_size_A is None and image.shape == (64, 80)


@pytest.mark.parametrize("kind,said", [
    # libtiff's own words (this wheel's: "TIFFFillStrip: Read error at scanline 0; got 214 bytes, expected 3000",
    # "ZSTD compression support is not configured", ...): one stable word of each, so that another libtiff passes
    ("short", r"libtiff: [^\n]*\b[Rr]ead error\b"),
    ("zstd", r"libtiff: [^\n]*\bZSTD\b"),
    ("predictor", r"libtiff: [^\n]*\bPredictor\b"),
    ("tiles", r"libtiff: [^\n]*\btiles\b")])
def test_a_tiff_opencv_decodes_nothing_of_is_refused_with_libtiff_s_reason(tmp_path, kind, said):
    """Found by hand (fuzz16): a TIFF whose strip the file ends inside, of a compression libtiff lacks (ZSTD),
    a predictor it does not know, or tiles of width 0 was refused as 'not a readable TIFF image', nothing of why:
    libtiff had said it, to OpenCV's silenced log. Its first error line now ends the message; the same file whole
    is read."""
    import struct

    pixels = (np.arange(60 * 50) % 200).astype(np.uint8).reshape(50, 60)
    page = {"width": 60, "height": 50, "blobs": [pixels.tobytes()], "bits": 8, "samples": 1, "fmt": 1,
            "compression": 1, "planar": 1}
    raw = bytearray(tiff_file([page]))
    path = tmp_path / "odd.tif"
    path.write_bytes(bytes(raw))
    assert np.array_equal(io.read_image(path).data, pixels)
    ifd = struct.unpack_from("<I", raw, 4)[0]

    def entry(tag: int) -> int:  # where the tag's entry begins
        return next(ifd + 2 + 12 * k for k in range(struct.unpack_from("<H", raw, ifd)[0])
                    if struct.unpack_from("<H", raw, ifd + 2 + 12 * k)[0] == tag)

    if kind == "short":
        struct.pack_into("<I", raw, entry(279) + 8, 214)  # StripByteCounts: the strip's last 214 bytes, the file's
        struct.pack_into("<I", raw, entry(273) + 8, len(raw) - 214)
    elif kind == "zstd":
        struct.pack_into("<H", raw, entry(259) + 8, 50000)
    elif kind == "predictor":
        struct.pack_into("<H", raw, entry(259) + 8, 8)  # deflate: a predictor is read with one
        struct.pack_into("<HHIHH", raw, entry(339), 317, 3, 1, 9, 0)  # SampleFormat's place: Predictor 9
    else:  # the strips as tiles of width 0
        struct.pack_into("<HHII", raw, entry(278), 322, 4, 1, 0)
        struct.pack_into("<HHII", raw, entry(339), 323, 4, 1, 16)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: not a readable TIFF image \({said}"):
        io.read_image(path)


def _tiff_typed_dims(width: int, height: int, typ: int, order: str) -> bytes:
    """A grey 8-bit TIFF of zeros (deflate) whose ImageWidth and ImageLength are of TIFF type `typ` (16, LONG8: 8
    bytes, stored before the IFD; 8, SSHORT: in place), in byte order `order`."""
    import struct
    import zlib

    strip = zlib.compress(bytes(width * height))
    out = bytearray((b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 24))
    out += struct.pack(order + "QQ", width, height)
    entries = [(256, typ, 8 if typ == 16 else width), (257, typ, 16 if typ == 16 else height), (258, 3, 8),
               (259, 3, 8), (262, 3, 1), (273, 4, 24 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height),
               (279, 4, len(strip))]
    out += struct.pack(order + "H", len(entries))
    for tag, kind, value in entries:
        out += struct.pack(order + "HHI", tag, kind, 1)
        out += struct.pack(order + "HH", value, 0) if kind in (3, 8) else struct.pack(order + "I", value)
    return bytes(out + bytes(4) + strip)


def test_a_tiff_s_dimensions_of_any_integer_type_are_claimed_as_libtiff_reads_them(tmp_path):
    """Found by hand (fuzz16): an ImageWidth of type LONG8 in a classic TIFF (8 bytes: libtiff reads it where the
    entry points) was claimed as the pointer, 1000x1000 pixels as 8x16, past the pixel budget unchecked (OpenCV's
    own limit stopped 20000x20000); one of type SSHORT in a big-endian file as 300 << 16, refused as too large
    though libtiff reads it. Both are claimed as libtiff reads them; a float width, which libtiff refuses, is no
    claim (libtiff's own line says why)."""
    path = tmp_path / "typed.tif"
    path.write_bytes(_tiff_typed_dims(1000, 1000, 16, "<"))
    with pytest.raises(TooLargeError, match=r"typed\.tif: the header claims 1000x1000 pixels, over the budget of "
                                            "10000"):
        io.read_image(path, max_pixels=10_000)
    assert io.read_image(path).shape == (1000, 1000)
    path.write_bytes(_tiff_typed_dims(300, 260, 8, ">"))
    assert io.read_image(path).shape == (260, 300)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_libpng_refuses_is_refused_with_libpng_s_reason(tmp_path):
    """Found by hand (fuzz16): a PNG of a bit depth PNG lacks (3), a palette image without its PLTE, rows of an
    unknown filter, or image data cut short was refused as 'not a readable image', nothing of why: libpng had
    said it on descriptor 2, which the reader collects. Its error line now ends the message."""
    import struct

    rows = b"".join(b"\0" + bytes(range(40)) for _ in range(30))
    path = tmp_path / "odd.png"
    path.write_bytes(_png_of(40, 30, rows))
    assert io.read_image(path).shape == (30, 40)
    good = path.read_bytes()
    header = good[8:33]
    # libpng's own words ("Invalid IHDR data", "IDAT: Missing PLTE before IDAT", "bad adaptive filter value", "Not
    # enough image data" in this wheel): one stable word of each, so that another libpng passes
    for variant, said in [(struct.pack(">IIBBBBB", 40, 30, 3, 0, 0, 0, 0), r"[^\n]*\bIHDR\b[^\n]*"),
                          (struct.pack(">IIBBBBB", 40, 30, 8, 3, 0, 0, 0), r"[^\n]*\bPLTE\b[^\n]*"),
                          (b"filter", r"[^\n]*\bfilter\b[^\n]*"), (b"short", r"[^\n]*\b(image data|IDAT)\b[^\n]*")]:
        if variant == b"filter":
            raw = _png_of(40, 30, rows.replace(b"\0", b"\x09", 1))
        elif variant == b"short":
            raw = _png_of(40, 30, rows[:300])
        else:
            raw = good.replace(header, _png_chunk(b"IHDR", variant))
        path.write_bytes(raw)
        with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: not a readable image \(libpng "
                                                   rf"error: {said}\)$"):
            io.read_image(path)


def test_a_png_chunk_walk_reads_each_chunk_s_header_alone():
    """Review of fuzz16 (2fe38d8): the walk to a PNG's first IDAT read each chunk's 8-byte header as a 64 kB block:
    100 text chunks of 70 kB before it, 6.4 MB read of a header check (256 chunks: 16 MB). Each is read alone."""
    import io as stdio
    import struct

    raw = _png_of(4, 4, b"\0" * 20)
    text = _png_chunk(b"tEXt", b"k\0" + bytes(70_000)) * 100
    raw = raw[:33] + text + raw[33:]

    class Counting(stdio.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    assert io._raster_claims(io._FileView(Counting(raw), len(raw)), "t.png") == [(4, 4, 1)]
    assert Counting.read_bytes < 200_000, Counting.read_bytes
    assert struct.unpack(">I", raw[33:37])[0] == 70_002


def test_a_png_cut_in_its_header_or_of_another_first_chunk_is_refused_saying_so(tmp_path):
    """Found by hand (fuzz16): a PNG of its signature alone, or cut inside its IHDR, was 'not a readable image';
    one whose IHDR is 4 bytes long was read for its size from the CRC and the next chunk ('the header claims
    256x3944077345 pixels'). libpng takes a 13-byte IHDR first, or nothing: that is said, before decoding."""
    rows = b"".join(b"\0" + bytes(range(40)) for _ in range(30))
    good = _png_of(40, 30, rows)
    path = tmp_path / "cut.png"
    for n in (8, 20, 32):
        path.write_bytes(good[:n])
        with pytest.raises(CorruptFileError, match=rf"cut\.png: too short for a PNG header \({n} of 33 bytes\)$"):
            io.read_image(path)
    for first in (_png_chunk(b"IHDR", good[16:20]), _png_chunk(b"tEXt", b"a\0b") + good[8:33]):
        path.write_bytes(good[:8] + first + good[33:])
        with pytest.raises(CorruptFileError, match=r"cut\.png: a PNG whose first chunk is not its 13-byte header "
                                                   r"\(IHDR\)"):
            io.read_image(path)
    path.write_bytes(good)
    assert io.read_image(path).shape == (30, 40)


def _os2_bmp(pixels: np.ndarray) -> bytes:
    """An OS/2 BMP (12-byte info header, 16-bit sides) of 24-bit colour `pixels` (rows, cols, BGR)."""
    import struct

    rows, cols = pixels.shape[:2]
    stride = (cols * 3 + 3) // 4 * 4
    data = b"".join(pixels[rows - 1 - r].tobytes().ljust(stride, b"\0") for r in range(rows))
    return b"BM" + struct.pack("<IHHI", 26 + len(data), 0, 0, 26) + struct.pack("<IHHHH", 12, cols, rows, 1, 24) + data


def test_an_os2_bmp_is_claimed_by_its_16_bit_sides_and_read(tmp_path):
    """Found by hand (fuzz16): an OS/2 BMP (12-byte info header, 16-bit width and height), which OpenCV reads, was
    claimed as one 32-bit width and refused ('the header claims 17039660x1572865 pixels'). It is read, as grey."""
    colour = np.random.default_rng(0).integers(0, 256, (26, 30, 3), dtype=np.uint8)
    path = tmp_path / "os2.bmp"
    path.write_bytes(_os2_bmp(colour))
    grey = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY).astype(np.float32)
    assert np.abs(io.read_image(path).data - grey).max() <= 1


@pytest.mark.parametrize("offset,fmt,value,error,said", [
    (28, "<H", 7, UnsupportedFormatError, "a BMP of 7 bits a pixel with compression none is not read by OpenCV"),
    (30, "<I", 2, UnsupportedFormatError, "a BMP of 8 bits a pixel with compression RLE4 is not read by OpenCV"),
    (30, "<I", 4, UnsupportedFormatError, "a BMP of 8 bits a pixel with compression JPEG is not read by OpenCV"),
    (46, "<I", 1 << 20, CorruptFileError, "a BMP whose palette claims 1048576 colours"),
    (18, "<i", -30, CorruptFileError, "a BMP of width -30; it must be above 0"),
    (14, "<I", 20, UnsupportedFormatError, "a BMP of a 20-byte info header is not read"),
    (None, None, None, CorruptFileError, r"truncated: the BMP header claims \d+ bytes \(30x26, 8 bits a pixel\), "
                                         r"the file holds \d+")])
def test_a_bmp_opencv_reads_nothing_of_is_refused_saying_why(tmp_path, offset, fmt, value, error, said):
    """Found by hand (fuzz16): a BMP of bits a pixel or a compression OpenCV does not read, a palette of over 256
    colours, a width not above 0, an unknown info header size, or pixels the file ends before (one byte short is
    enough) was 'not a readable image', nothing of why. The header says it, before decoding."""
    import struct

    ok, buf = cv2.imencode(".bmp", (np.arange(26 * 30) % 251).astype(np.uint8).reshape(26, 30))
    raw = bytearray(buf.tobytes())
    path = tmp_path / "odd.bmp"
    path.write_bytes(bytes(raw))
    assert io.read_image(path).shape == (26, 30)
    if offset is None:
        raw = raw[:-1]
    else:
        struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(bytes(raw))
    with pytest.raises(error, match=rf"^{re.escape(str(path))}: {said}"):
        io.read_image(path)


@pytest.mark.parametrize("cut,said", [(2, r"a JPEG that ends before its frame header \(SOF\) \(2 bytes\)"),
                                      (None, r"a JPEG without a frame header \(SOF\) before its end \(EOI\)"),
                                      ("sos", r"a JPEG without a frame header \(SOF\) before its first scan")])
def test_a_jpeg_without_a_frame_header_is_refused_saying_so(tmp_path, cut, said):
    """Found by hand (fuzz16): a JPEG of its start marker alone, one that ends (EOI) or starts its scan (SOS)
    before any frame header (SOF) was 'not a readable image', nothing of why; libjpeg reads neither without one.
    The header walk says it, before decoding; the file whole is read."""
    jpeg = cv2.imencode(".jpg", np.zeros((48, 64), np.uint8))[1].tobytes()
    sof = jpeg.find(b"\xff\xc0")
    path = tmp_path / "no_frame.jpg"
    scan = jpeg[jpeg.find(b"\xff\xda"):]
    raw = {2: jpeg[:2], None: jpeg[:sof] + b"\xff\xd9" + bytes(16), "sos": jpeg[:sof] + scan}[cut]
    path.write_bytes(raw)
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: {said}"):
        io.read_image(path)
    path.write_bytes(jpeg)
    assert io.read_image(path).shape == (48, 64)


@pytest.mark.parametrize("path,said", [("", r"^read_image: an empty path names no file$"),
                                       ("/tmp/a\0b.mrc", r"^/tmp/a\\x00b\.mrc: no such file \(a path holding a NUL "
                                                         r"byte names none\)$")])
def test_an_empty_path_or_one_of_a_nul_byte_is_said_to_name_no_file(path, said):
    """Found by hand (fuzz16): read_image('') said '.: not a regular file' (Path('') is '.'), a folder nobody gave;
    a path holding a NUL byte 'not a readable image (ValueError: embedded null byte)'. Both name no file."""
    with pytest.raises(MissingFileError, match=said):
        io.read_image(path)


def test_a_png_without_image_data_or_ending_before_it_is_refused_saying_so(tmp_path):
    """Found by hand (fuzz16): a PNG of its header and end alone (no IDAT), or whose chunks run past the file's end
    before its image data, was 'not a readable image', nothing of why. The chunk walk (bounded) says it, before
    decoding; a PNG with text chunks before its IDAT is read."""
    rows = b"".join(b"\0" + bytes(range(40)) for _ in range(30))
    good = _png_of(40, 30, rows)
    path = tmp_path / "odd.png"
    path.write_bytes(good[:33] + _png_chunk(b"IEND", b""))
    with pytest.raises(CorruptFileError, match=r"odd\.png: a PNG without image data \(IDAT\) before its end"):
        io.read_image(path)
    path.write_bytes(good[:33] + _png_chunk(b"tEXt", b"k\0" + bytes(100))[:50])
    with pytest.raises(CorruptFileError, match=r"odd\.png: a PNG that ends before its image data \(IDAT\)"):
        io.read_image(path)
    path.write_bytes(good[:33] + _png_chunk(b"tEXt", b"k\0v") * 300 + good[33:])
    assert io.read_image(path).shape == (30, 40)
