"""Pixel size from every source: --pixel-size, EPU .xml (the real one in ../shared/real-epu), .mdoc, MRC header."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from ptolemy_rt import smallfiles
from ptolemy_rt.cli import main
from ptolemy_rt.errors import InputError
from ptolemy_rt.io import read_image
from ptolemy_rt.metadata import (
    PixelSize,
    epu_pixel_size,
    mdoc_pixel_size,
    mrc_pixel_size,
    pixel_size_for,
    read_xml_safely,
)

from .conftest import REPO, need, synthetic_atlas

REAL_EPU = REPO.parent / "shared" / "real-epu"
# What the real file says: 4.1562760344504568e-08 m per pixel of a 2880 px wide readout, JPEG 512 px wide.
REAL_EPU_A = 4.1562760344504568e-08 * 1e10 * 2880 / 512


def _epu_xml(path: Path, metres: float = 2e-9, readout: tuple[int, int] | None = (4096, 4096)) -> Path:
    """A minimal EPU-style .xml: namespaces as EPU writes them, pixelSize in metres, the camera readout."""
    area = "" if readout is None else (
        '<ReadoutArea xmlns:a="http://schemas.datacontract.org/2004/07/System.Drawing">'
        f"<a:height>{readout[1]}</a:height><a:width>{readout[0]}</a:width><a:x>0</a:x><a:y>0</a:y></ReadoutArea>")
    path.write_text(
        '<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><SpatialScale><pixelSize>'
        f"<x><numericValue>{metres!r}</numericValue></x><y><numericValue>{metres!r}</numericValue></y>"
        f"</pixelSize></SpatialScale><microscopeData><acquisition><camera>{area}</camera></acquisition>"
        "</microscopeData></MicroscopeImage>")
    return path


def _mrc(path: Path, shape=(256, 256), voxel: float | None = None) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros(shape, np.float32))
        if voxel is not None:
            m.voxel_size = voxel
    return path


def test_real_epu_xml_gives_the_jpeg_pixel_size():
    jpg = REAL_EPU / "smartem_gs8999138.jpg"
    need(jpg.is_file() and jpg.with_suffix(".xml").is_file(), f"real EPU example not found in {REAL_EPU}")
    image = read_image(jpg)
    assert image.shape == (364, 512)
    px = pixel_size_for(jpg, image)
    assert px == PixelSize(pytest.approx(REAL_EPU_A), "epu-xml")
    assert px.angstrom / 10 == pytest.approx(233.79, abs=0.01)  # nm, as the README of the example says
    assert epu_pixel_size(jpg.with_suffix(".xml"), (2046, 2880)) == pytest.approx(415.62760344504568)  # readout size


def test_real_epu_through_the_cli(capsys):
    jpg = REAL_EPU / "smartem_gs8999138.jpg"
    need(jpg.is_file(), f"real EPU example not found in {REAL_EPU}")
    assert main(["holes", str(jpg)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one-line JSON by default
    image = json.loads(out)["image"]
    assert image["pixel_size_nm"] == pytest.approx(REAL_EPU_A / 10) and image["pixel_size_source"] == "epu-xml"


def test_epu_scaling_and_refusals(tmp_path):
    xml = _epu_xml(tmp_path / "a.xml", metres=2e-9, readout=(4096, 4096))
    assert epu_pixel_size(xml, (4096, 4096)) == pytest.approx(20.0)
    assert epu_pixel_size(xml, (1024, 1024)) == pytest.approx(80.0)  # a 4x downscaled JPEG
    with pytest.warns(UserWarning, match="does not scale"):
        assert epu_pixel_size(xml, (1024, 512)) is None  # not a uniform scaling of the readout: do not guess
    assert epu_pixel_size(_epu_xml(tmp_path / "b.xml", readout=None), (512, 512)) == pytest.approx(20.0)
    assert epu_pixel_size(_epu_xml(tmp_path / "c.xml", metres=0.0), (512, 512)) is None


def test_xml_with_dtd_or_entities_is_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                    "<MicroscopeImage>&lol2;</MicroscopeImage>")
    with pytest.raises(InputError, match="DTD"):
        read_xml_safely(bomb)
    external = tmp_path / "ext.xml"
    external.write_text('<!DOCTYPE x SYSTEM "http://example.invalid/x.dtd"><x/>')
    with pytest.raises(InputError, match="DTD"):
        read_xml_safely(external)
    broken = tmp_path / "broken.xml"
    broken.write_text("<a><b></a>")
    with pytest.raises(InputError, match="not well-formed"):
        read_xml_safely(broken)


def test_oversized_sidecar_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(smallfiles, "MAX_SIDECAR_BYTES", 100)
    xml = _epu_xml(tmp_path / "big.xml")
    with pytest.raises(InputError, match="too large"):
        read_xml_safely(xml)


def test_every_sidecar_reader_has_the_one_limit(tmp_path, monkeypatch):
    """EPU's .xml, a montage's .mdoc and the .mdoc's pixel size are all bounded by smallfiles.MAX_SIDECAR_BYTES
    (io.MAX_MDOC_BYTES and metadata.MAX_SIDECAR_BYTES were two 8 MB constants)."""
    from ptolemy_rt.errors import CorruptFileError
    from ptolemy_rt.io import montage_mdoc
    from ptolemy_rt.montage import read_mdoc
    from ptolemy_rt.sessions import mdoc_metadata

    image = _mrc(tmp_path / "map.mrc", voxel=7.5)
    mdoc = tmp_path / "map.mrc.mdoc"
    mdoc.write_text("PixelSpacing = 12.5\n\n[ZValue = 0]\nPieceCoordinates = 0 0 0\nPixelSpacing = 12.5\n")
    xml = _epu_xml(tmp_path / "map.xml")
    size = min(mdoc.stat().st_size, xml.stat().st_size)
    assert mdoc_metadata(mdoc) == {"PixelSpacing": 12.5} and read_mdoc(mdoc).sections
    monkeypatch.setattr(smallfiles, "MAX_SIDECAR_BYTES", size - 1)
    with pytest.raises(InputError, match="too large"):
        read_xml_safely(xml)
    with pytest.raises(CorruptFileError, match="too large for a .mdoc"):
        read_mdoc(mdoc)
    with pytest.raises(CorruptFileError, match="too large for a .mdoc"):
        montage_mdoc(image)
    assert mdoc_metadata(mdoc) == {}


def test_a_bad_sidecar_warns_and_the_next_source_wins(tmp_path):
    image = _mrc(tmp_path / "m.mrc", voxel=7.5)
    (tmp_path / "m.xml").write_text('<!DOCTYPE x [<!ENTITY e "e">]><x>&e;</x>')
    with pytest.warns(UserWarning, match="DTD"):
        px = pixel_size_for(image, read_image(image))
    assert px == PixelSize(7.5, "mrc-header")


def test_mdoc(tmp_path):
    mdoc = tmp_path / "map.mrc.mdoc"
    mdoc.write_text("PixelSpacing = 45.2\nImageFile = map.mrc\nImageSize = 256 256\n\n"
                    "[T = SerialEM: Digitized on EMBL Krios]\n\n[ZValue = 0]\nPixelSpacing = 45.2\nTiltAngle = 0\n\n"
                    "[ZValue = 1]\nPixelSpacing = 90.4\n")
    assert mdoc_pixel_size(mdoc) == pytest.approx(45.2)
    assert mdoc_pixel_size(mdoc, section=1) == pytest.approx(90.4)
    assert mdoc_pixel_size(mdoc, section=7) == pytest.approx(45.2)  # no such section: the file-level value
    image = _mrc(tmp_path / "map.mrc", voxel=1.0)
    assert pixel_size_for(image, read_image(image)) == PixelSize(pytest.approx(45.2), "mdoc")
    # NAME.mdoc (without the image suffix) is found too
    other = _mrc(tmp_path / "other.mrc")
    (tmp_path / "other.mdoc").write_text("[ZValue = 0]\nPixelSpacing = 12\n")
    assert pixel_size_for(other, read_image(other)) == PixelSize(12.0, "mdoc")
    (tmp_path / "zero.mdoc").write_text("PixelSpacing = 0\n")
    assert mdoc_pixel_size(tmp_path / "zero.mdoc") is None


@pytest.mark.parametrize("voxel, expected", [(12.5, 12.5), (1.0, None), (0.0, None), (None, None)])
def test_mrc_header_placeholders_are_unknown(tmp_path, voxel, expected):
    path = _mrc(tmp_path / "h.mrc", voxel=voxel)
    assert mrc_pixel_size(path) == expected
    px = pixel_size_for(path, read_image(path))
    assert px.angstrom == expected and px.source == ("mrc-header" if expected else None)


def test_order_option_xml_mdoc_header(tmp_path):
    image_path = _mrc(tmp_path / "s.mrc", shape=(512, 512), voxel=3.0)
    image = read_image(image_path)
    assert pixel_size_for(image_path, image).source == "mrc-header"
    (tmp_path / "s.mrc.mdoc").write_text("PixelSpacing = 4\n")
    assert pixel_size_for(image_path, image) == PixelSize(4.0, "mdoc")
    _epu_xml(tmp_path / "s.xml", metres=5e-10, readout=(512, 512))
    assert pixel_size_for(image_path, image) == PixelSize(pytest.approx(5.0), "epu-xml")
    assert pixel_size_for(image_path, image, 6.0) == PixelSize(6.0, "option")
    with pytest.raises(InputError, match="--pixel-size"):
        pixel_size_for(image_path, image, -2.0)
    assert pixel_size_for(None, None) == PixelSize(None, None)
    png = tmp_path / "p.png"
    png.write_bytes(b"")  # no sidecar, not an MRC: unknown without reading it
    assert pixel_size_for(png, None) == PixelSize(None, None)


def test_cli_reports_pixel_size_and_option(tmp_path, capsys):
    data, _ = synthetic_atlas(3)
    path = tmp_path / "atlas.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 1.0  # a placeholder: reported as unknown
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["squares", str(path), "--no-score", "--top", "3"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["image"]["pixel_size_A"] is None and d["image"]["pixel_size_nm"] is None
    assert all(t["x_um"] is None and t["area_um2"] is None for t in d["targets"])
    assert main(["squares", str(path), "--no-score", "--top", "3", "--pixel-size", "500"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["image"]["pixel_size_nm"] == 50.0 and d["image"]["pixel_size_source"] == "option"
    t = d["targets"][0]
    assert t["x_um"] == pytest.approx((t["x"] - 511.5) * 0.05) and t["area_um2"] == pytest.approx(t["area"] * 0.0025)
    for bad in ("-1", "0", "inf", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["squares", str(path), "--no-score", "--pixel-size", bad])
        assert exc.value.code == 2 and "--pixel-size" in capsys.readouterr().err


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be-bom", "utf-32"])
def test_mdoc_saved_with_a_byte_order_mark_keeps_its_pixel_size(tmp_path, encoding):
    """An .mdoc saved by a Windows editor begins with a byte-order mark (UTF-8's, or UTF-16 as "Unicode"): read as
    plain UTF-8, the mark stuck to the first key ('\\ufeffPixelSpacing') and the pixel size was silently lost
    (null in the JSON); a montage's .mdoc lost it the same way. The mark names the encoding and is dropped."""
    from ptolemy_rt.montage import read_mdoc
    from ptolemy_rt.sessions import mdoc_metadata

    text = "PixelSpacing = 45.2\nImageFile = map.mrc\nMagnification = 135\n\n[ZValue = 0]\nTiltAngle = 0\n"
    raw = ("\ufeff" + text).encode("utf-16-be") if encoding == "utf-16-be-bom" else text.encode(encoding)
    mdoc = tmp_path / "map.mrc.mdoc"
    mdoc.write_bytes(raw)
    assert mdoc_pixel_size(mdoc) == pytest.approx(45.2)
    assert mdoc_metadata(mdoc) == {"PixelSpacing": pytest.approx(45.2), "Magnification": 135.0}
    assert read_mdoc(mdoc).pixel_size_A == pytest.approx(45.2)
    image = _mrc(tmp_path / "map.mrc", voxel=1.0)
    assert pixel_size_for(image, read_image(image)) == PixelSize(pytest.approx(45.2), "mdoc")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_xml_in_utf16_with_a_dtd_is_refused_too(tmp_path, encoding):
    """The DTD check looked for '<!DOCTYPE' in the file's bytes: in UTF-16 (with a byte-order mark, or told by the
    declaration alone) they hold none, and ElementTree expanded the entities (a mild one was read; a billion-laughs
    file stopped only at expat's amplification limit, 0.5 s and 80 MB later). The parser now refuses the DTD it
    sees, in any encoding; a UTF-16 EPU file without one is still read."""
    bomb = ('<?xml version="1.0" encoding="utf-16"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;">]>'
            "<MicroscopeImage>&y;</MicroscopeImage>")
    path = tmp_path / "img.xml"
    path.write_bytes(bomb.encode(encoding))
    with pytest.raises(InputError, match="img.xml: XML with a DTD"):
        read_xml_safely(path)
    _epu_xml(path, metres=2e-9)
    path.write_bytes(path.read_text().encode(encoding))
    assert epu_pixel_size(path, (4096, 4096)) == pytest.approx(20.0)


@pytest.mark.parametrize("variant", ["plain", "utf8-bom", "utf8-declared", "utf16-bom", "utf16le-declared",
                                     "utf16-declared-utf8-bytes", "utf16-declared-utf8-bom",
                                     "unicode-declared-ascii-bytes", "latin1-declared", "crlf"])
def test_epu_xml_encodings_and_declarations(tmp_path, variant):
    """The same EPU .xml as different writers save it. The real files (EPU 3.9) have no declaration; .NET
    documents serialised through a string declare encoding="utf-16" and are saved as UTF-8: that one word made
    expat refuse the file ('encoding specified in XML declaration is incorrect'), and the pixel size was lost."""
    text = _epu_xml(tmp_path / "x.xml", metres=2e-9, readout=(4096, 4096)).read_text()
    decl = '<?xml version="1.0" encoding="{}"?>\r\n'
    raw = {
        "plain": text.encode(),
        "utf8-bom": b"\xef\xbb\xbf" + text.encode(),
        "utf8-declared": (decl.format("utf-8") + text).encode(),
        "utf16-bom": (decl.format("utf-16") + text).encode("utf-16"),
        "utf16le-declared": (decl.format("utf-16") + text).encode("utf-16-le"),
        "utf16-declared-utf8-bytes": (decl.format("utf-16") + text).encode(),
        # .NET's StreamWriter(Encoding.UTF8) puts a UTF-8 mark before that declaration
        "utf16-declared-utf8-bom": b"\xef\xbb\xbf" + (decl.format("utf-16") + text).encode(),
        "unicode-declared-ascii-bytes": (decl.format("Unicode") + text).encode(),
        "latin1-declared": (decl.format("iso-8859-1") + text).encode("latin-1"),
        "crlf": text.replace("><", ">\r\n<").encode(),
    }[variant]
    xml = tmp_path / "y.xml"
    xml.write_bytes(raw)
    assert epu_pixel_size(xml, (1024, 1024)) == pytest.approx(80.0)


def test_a_preview_without_its_readout_size_has_no_pixel_size(tmp_path):
    """An EPU .xml without ReadoutArea (absent, or nil as EPU writes an empty value) beside a JPEG: the JPEG is a
    downscaled preview of a readout of unknown size, so the readout's pixel size is not its own (the real
    grid-square JPEG is 5.6 times coarser than its readout). It was reported as the JPEG's, silently; now the
    pixel size is unknown, with a warning. An MRC (or TIFF) is the readout itself: its pixel size stands."""
    import cv2

    xml_text = _epu_xml(tmp_path / "x.xml", metres=2e-9, readout=None).read_text()
    nil = xml_text.replace("<camera></camera>", '<camera><ReadoutArea i:nil="true"/></camera>')
    for i, text in enumerate((xml_text, nil)):
        jpg = tmp_path / f"GridSquare_{i}.jpg"
        cv2.imwrite(str(jpg), np.full((64, 96), 128, np.uint8))
        jpg.with_suffix(".xml").write_text(text)
        with pytest.warns(UserWarning, match="no camera ReadoutArea"):
            assert pixel_size_for(jpg, read_image(jpg)) == PixelSize(None, None)
        mrc = _mrc(tmp_path / f"GridSquare_{i}.mrc", shape=(64, 96))
        mrc.with_suffix(".xml").write_text(text)
        assert pixel_size_for(mrc, read_image(mrc)) == PixelSize(pytest.approx(20.0), "epu-xml")


@pytest.mark.parametrize("encoding", ["x-nothing", "rot13", "shift_jis", "utf-32", "idna"])
def test_xml_declaring_an_encoding_expat_cannot_read_is_a_bad_sidecar(tmp_path, capsys, encoding):
    """An .xml whose declaration names an encoding expat cannot read: its LookupError or ValueError left the
    reader, exit 70 for `squares` and for a whole batch (its session scan reads the stage position) instead of a
    warning naming the file (found by hand, fuzz13)."""
    from ptolemy_rt.sessions import epu_pixel_axes, epu_stage_position

    image = _mrc(tmp_path / "map.mrc", voxel=7.5)
    xml = _epu_xml(tmp_path / "map.xml")
    xml.write_text(xml.read_text().replace("<MicroscopeImage", f'<?xml version="1.0" encoding="{encoding}"?>'
                                           "<MicroscopeImage", 1))
    with pytest.raises(InputError, match="map.xml: unreadable XML"):
        read_xml_safely(xml)
    assert epu_stage_position(xml) is None and epu_pixel_axes(xml) is None
    with pytest.warns(UserWarning, match="map.xml: unreadable XML"):
        assert pixel_size_for(image, read_image(image)) == PixelSize(7.5, "mrc-header")
    assert main(["squares", str(image), "--no-score", "-o", str(tmp_path / "out.json")]) == 0
    assert "map.xml: unreadable XML" in capsys.readouterr().err


@pytest.mark.parametrize("metres,said", [("nan", "pixelSize 'nan' is not a pixel size"),
                                         ("-2e-09", "pixelSize '-2e-09' is not a pixel size"),
                                         ("inf", "pixelSize 'inf' is not a pixel size"),
                                         ("2e-9m", "pixelSize '2e-9m' is not a pixel size"),
                                         ("1e308", "pixelSize 1e[+]308 m gives inf Å per pixel of this 96x64"),
                                         ("1e-300", "pixelSize 1e-300 m gives 1e-290 Å")])
def test_an_epu_pixel_size_that_is_none_is_said_and_the_next_source_wins(tmp_path, metres, said):
    """Leftover of fuzz15, found again by hand (fuzz16): an EPU .xml whose pixelSize is NaN, negative, infinite, no
    number, or one giving a pixel size outside the plausible range (1e308 m) was dropped without a word, the pixel
    size then unknown or the header's. A warning names the file and the value; 0 (not set) is dropped quietly."""
    image = _mrc(tmp_path / "m.mrc", shape=(64, 96), voxel=7.5)
    xml = _epu_xml(tmp_path / "m.xml", readout=(96, 64))
    xml.write_text(xml.read_text().replace("2e-09", metres))
    with pytest.warns(UserWarning, match=rf"m\.xml: {said}.*; ignoring it$"):
        assert pixel_size_for(image, read_image(image)) == PixelSize(7.5, "mrc-header")
    xml.write_text(xml.read_text().replace(metres, "0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pixel_size_for(image, read_image(image)) == PixelSize(7.5, "mrc-header")


@pytest.mark.parametrize("spacing", ["nan", "-3", "1e308", "inf", "abc"])
def test_an_mdoc_pixel_spacing_that_is_none_is_said_once_and_the_next_source_wins(tmp_path, spacing):
    """As an EPU pixelSize (fuzz16): a .mdoc's PixelSpacing of NaN, -3, 1e308 or no number was dropped without a
    word. A warning names the file and the value, once a file (the section's and the file's); a good file-level
    value still wins over a bad section's; the placeholders 0 and 1 are dropped quietly."""
    image = _mrc(tmp_path / "m.mrc", voxel=7.5)
    mdoc = tmp_path / "m.mrc.mdoc"
    mdoc.write_text(f"PixelSpacing = {spacing}\n\n[ZValue = 0]\nPixelSpacing = {spacing}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pixel_size_for(image, read_image(image)) == PixelSize(7.5, "mrc-header")
    assert [str(w.message) for w in caught] == [f"{mdoc}: PixelSpacing {spacing!r} is not a pixel size (Å per "
                                                "pixel, 0.01 to 1e+07); ignoring it"]
    mdoc.write_text(f"PixelSpacing = 12\n\n[ZValue = 0]\nPixelSpacing = {spacing}\n")
    with pytest.warns(UserWarning, match="ignoring it"):
        assert pixel_size_for(image, read_image(image)) == PixelSize(12.0, "mdoc")
    for placeholder in ("0", "1"):
        mdoc.write_text(f"[ZValue = 0]\nPixelSpacing = {placeholder}\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert pixel_size_for(image, read_image(image)) == PixelSize(7.5, "mrc-header")
