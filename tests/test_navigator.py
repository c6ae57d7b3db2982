"""SerialEM navigator: parse, append points drawn on a map, round trip through the parser, CLI --nav."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mrcfile
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ptolemy_rt.cli import main
from ptolemy_rt.errors import InputError
from ptolemy_rt.models import default_models_dir
from ptolemy_rt.navigator import (
    EXTERNAL_ID_LIMIT,
    add_points,
    default_nav_output,
    find_map,
    map_frame,
    parse_nav,
    read_nav,
    write_targets_to_nav,
)
from ptolemy_rt.results import Hole, HoleResult, ImageInfo

from .conftest import examples, synthetic_medmag

# Map item 17-1-A of pyserialem's test navigator, as quoted in shared/serialem-nav.md.
MAP_17 = """[Item = 17-1-A]
Color = 2
StageXYZ = -495.956 436.348 -73.1237
NumPts = 5
Regis = 1
Type = 2
Note = Sec 0 - 17-1.mrc
MapFile = X:\\Data\\grid1\\17-1.mrc
MapID = 1234567
MapMontage = 0
MapSection = 0
MapBinning = 1
MapMagInd = 17
MapScaleMat = 0.638997 -26.616 -26.5862 -1.01529
MapWidthHeight = 4096 4096
PtsX = -421.93 -570.89 -569.982 -421.022 -421.93
PtsY = 515.071 511.495 357.625 361.201 515.071
"""


def _nav(*items: str, newline: str = "\n") -> str:
    text = "AdocVersion = 2.00\nLastSavedAs = X:\\Data\\grid1\\nav.nav\n\n" + "\n".join(items)
    return text.replace("\n", newline)


def _map(label="1", map_id=100001, file="map.mrc", stage=(10.0, -20.0, 3.0), mat=(0.5, 0.1, 0.05, -0.5),
         wh=(1000, 800), montage=0, section=0) -> str:
    return (f"[Item = {label}]\nColor = 2\nStageXYZ = {stage[0]} {stage[1]} {stage[2]}\nNumPts = 5\nRegis = 2\n"
            f"Type = 2\nMapFile = C:\\maps\\{file}\nMapID = {map_id}\nMapMontage = {montage}\n"
            f"MapSection = {section}\nMapScaleMat = {' '.join(map(str, mat))}\nMapWidthHeight = {wh[0]} {wh[1]}\n")


def test_known_map_corner_and_point():
    """The numbers checked against SerialEM's own drawing of item 17-1-A (shared/serialem-nav.md)."""
    frame = map_frame(parse_nav(_nav(MAP_17)).item("17-1-A"))
    # file (col 0, row 4096) is the displayed map's top-left corner: the map's own first outline point
    assert frame.stage_xy(0, 4096) == pytest.approx((-421.93, 515.071), abs=2e-3)
    assert frame.stage_xy(1000, 3000) == pytest.approx((-461.683, 476.546), abs=2e-3)


def test_y_is_flipped_as_serialem_writes_mrc_files():
    frame = map_frame(parse_nav(_nav(_map(mat=(1.0, 0.0, 0.0, 1.0), wh=(100, 60), stage=(0.0, 0.0, 0.0)))).item("1"))
    # display y runs down with stage Y here (d = 1), and file row 0 is the display's bottom row
    assert frame.stage_xy(50, 0) == pytest.approx((0.0, 30.0))
    assert frame.stage_xy(50, 60) == pytest.approx((0.0, -30.0))
    assert frame.stage_xy(0, 30) == pytest.approx((-50.0, 0.0))


def test_binned_copy_of_the_map_scales_onto_it():
    frame = map_frame(parse_nav(_nav(_map(wh=(1000, 800)))).item("1"))
    # pixel centres of a 2x binned copy sit between two map pixels
    assert frame.stage_xy(10, 20, (400, 500)) == pytest.approx(frame.stage_xy(20.5, 40.5))
    with pytest.raises(InputError, match="scaled copy"):
        frame.stage_xy(1, 1, (400, 400))


# A map's frame as SerialEM can store it: an invertible MapScaleMat, a stage position, a map size in pixels.
_MAT = st.tuples(*[st.floats(-30, 30, allow_nan=False)] * 4).filter(lambda m: abs(m[0] * m[3] - m[1] * m[2]) > 1e-2)
_STAGE = st.tuples(st.floats(-900, 900), st.floats(-900, 900), st.floats(-200, 200))
_WH = st.tuples(st.integers(64, 8192), st.integers(64, 8192))


@examples(20, settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
          given(
              mat=_MAT,
              stage=_STAGE,
              wh=_WH,
              fractions=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=12),
              crlf=st.booleans(),
          ))
def test_round_trip_through_the_parser(mat, stage, wh, fractions, crlf):
    newline = "\r\n" if crlf else "\n"
    other_point = "[Item = 7]\nColor = 0\nStageXYZ = 1 2 3\nNumPts = 1\nRegis = 1\nType = 0\nMapID = 42\n"
    text = _nav(_map(label="5", stage=stage, mat=mat, wh=wh), other_point, newline=newline)
    nav = parse_nav(text)
    points = [(fx * (wh[0] - 1), fy * (wh[1] - 1)) for fx, fy in fractions]
    new_text, items = add_points(nav, text, nav.item("5"), points, (wh[1], wh[0]),
                                 notes=[f"rank {i}" for i in range(len(points))])
    assert new_text.startswith(text)  # the original is copied byte for byte
    assert ("\r\n" in new_text[len(text):]) == crlf and ("\n" not in new_text.replace("\r\n", "")) == crlf
    again = parse_nav(new_text)
    assert again.items[: len(nav.items)] == nav.items
    added = again.items[len(nav.items):]
    assert added == tuple(items) and len(added) == len(points)
    frame = map_frame(nav.item("5"))
    labels = [int(it.label) for it in added]
    assert labels == list(range(8, 8 + len(points)))  # numeric, after the largest label (7)
    ids = [int(it.get("MapID")) for it in added]
    assert len(set(ids)) == len(ids) and 42 not in ids and max(ids) < EXTERNAL_ID_LIMIT
    assert {it.get("GroupID") for it in added} == {added[0].get("GroupID")}
    assert int(added[0].get("GroupID")) not in ids
    for (col, row), it in zip(points, added):
        assert it.get("Type") == "0" and it.get("NumPts") == "1" and it.get("DrawnID") == "100001"
        assert it.get("Regis") == "2" and it.get("Color") == "0"
        x, y, z = it.numbers("StageXYZ")
        assert it.numbers("PtsX") == [x] and it.numbers("PtsY") == [y] and z == pytest.approx(stage[2])
        # the stage position maps back to the pixel through the forward formula of the map's matrix
        back = frame.pixel(x, y, (wh[1], wh[0]))
        scale = max(wh) * (1 + max(map(abs, mat)))
        assert back == pytest.approx((col, row), abs=1e-5 * scale)
        assert it.numbers("CoordsInMap") == pytest.approx([col, row, stage[2]], abs=1e-6 * max(wh))


def test_parser_refuses_what_is_not_a_navigator():
    with pytest.raises(InputError, match="AdocVersion"):
        parse_nav("Item\t1\t2\n")
    with pytest.raises(InputError, match="empty"):
        parse_nav("\n\n")
    with pytest.raises(InputError, match="Key = value"):
        parse_nav("AdocVersion = 2.00\n[Item = 1]\nthis is not a key\n", "x.nav")
    nav = parse_nav(_nav(_map(label="A"), _map(label="B", file="other.mrc", map_id=100002)))
    with pytest.raises(InputError, match="A, B"):
        nav.item("C")
    assert find_map(nav, image_path="/data/OTHER.mrc").label == "B"  # MapFile's Windows name, any case
    with pytest.raises(InputError, match="--map-label"):
        find_map(nav, image_path="/data/none.mrc")
    with pytest.raises(InputError, match="not a map"):
        map_frame(parse_nav(_nav("[Item = 3]\nType = 0\nStageXYZ = 1 2 3\n")).item("3"))
    with pytest.raises(InputError, match="cannot be inverted"):
        map_frame(parse_nav(_nav(_map(mat=(1, 2, 2, 4)))).item("1"))


@pytest.mark.parametrize("key,value", [("MapID", "inf"), ("MapID", "nan"), ("MapID", "x"), ("Regis", "1e309"),
                                       ("MapSection", "-inf"), ("MapWidthHeight", "nan 800"),
                                       ("MapWidthHeight", "inf inf"), ("MapWidthHeight", "0.5 0.5"),
                                       ("StageXYZ", "nan 1 2")])
def test_map_keys_that_are_not_numbers_are_input_errors(key, value):
    """Fuzz (navs, seed 3): MapID = inf was an OverflowError (exit 70); a NaN size a ValueError; a NaN stage NaN
    points."""
    text = "\n".join(f"{key} = {value}" if line.startswith(key + " =") else line for line in _map().splitlines())
    nav = parse_nav(_nav(text))
    with pytest.raises(InputError, match="navigator (item|map) 1"):
        add_points(nav, "", nav.item("1"), [(1.0, 2.0)], (800, 1000))


def test_unicode_digit_labels_and_ids_are_not_numbers():
    """'²'.isdigit() is True but int('²') a ValueError: such labels and ids are left out of the numbering."""
    nav = parse_nav(_nav(_map(), "[Item = \u00b2]\nType = 0\nMapID = \u00b2\nGroupID = \u0663\n"))
    _, items = add_points(nav, "", nav.item("1"), [(1.0, 2.0)], (800, 1000))
    assert items[0].label == "2"
    two = parse_nav(_nav(_map(section="x"), _map(label="2", section="0")))
    with pytest.raises(InputError, match="MapSection"):
        find_map(two, image_path="/data/map.mrc")


def test_montage_file_itself_is_refused():
    nav = parse_nav(_nav(_map(montage=1)))
    with pytest.raises(InputError, match="stitched"):
        add_points(nav, "", nav.item("1"), [(1.0, 2.0)], (800, 1000), image_is_map_file=True)
    _, items = add_points(nav, "", nav.item("1"), [(1.0, 2.0)], (400, 500))
    assert items[0].get("CoordsInMap") is None  # montage: stage position only


def _holes_result(path: Path, shape=(800, 1000)) -> HoleResult:
    holes = tuple(Hole(x=100.0 * i, y=50.0 * i, vertices=((0, 0),) * 4, area=1.0, score=1 - i / 10) for i in range(4))
    return HoleResult(holes=holes, angle_deg=0.0, spacing_px=100.0, basis=((100.0, 0.0), (0.0, 100.0)),
                      origin=(0.0, 0.0), image=ImageInfo(str(path), shape), models={})


def test_write_targets_to_nav_writes_a_copy(tmp_path):
    nav_path = tmp_path / "grid.nav"
    nav_path.write_bytes(_nav(_map(file="map.mrc")).encode("latin-1") + "Note = caf\xe9\n".encode("latin-1"))
    before = nav_path.read_bytes()
    out, n = write_targets_to_nav(nav_path, _holes_result(tmp_path / "map.mrc"), image_path=tmp_path / "map.mrc")
    assert out == default_nav_output(nav_path) == tmp_path / "grid_ptolemy.nav" and n == 4
    assert nav_path.read_bytes() == before and out.read_bytes().startswith(before)
    nav, _ = read_nav(out)
    notes = [it.get("Note") for it in nav.items[1:]]
    assert notes[0] == "ptolemy-rt holes rank 1 score 1" and len(notes) == 4
    with pytest.raises(InputError, match="must not replace"):
        write_targets_to_nav(nav_path, _holes_result(tmp_path / "map.mrc"), "1", nav_out=nav_path)


@pytest.fixture(scope="module")
def medmag(tmp_path_factory) -> Path:
    data, _ = synthetic_medmag(1)
    path = tmp_path_factory.mktemp("nav") / "square 1.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
    return path


def test_cli_holes_to_navigator(tmp_path, medmag, capsys):
    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("the shipped model set is not present")
    nav_path = tmp_path / "session.nav"
    nav_path.write_text(_nav(_map(label="12", file="square 1.mrc", wh=(1440, 1024), map_id=100005)))
    out_nav = tmp_path / "out" / "with targets.nav"
    code = main(["holes", str(medmag), "--nav", str(nav_path), "--nav-out", str(out_nav), "--top", "5",
                 "--edge-tolerance", "100", "-o", str(tmp_path / "h.json")])
    assert code == 0, capsys.readouterr().err
    targets = json.loads((tmp_path / "h.json").read_text())["targets"]
    nav, _ = read_nav(out_nav)
    points = nav.items[1:]
    assert len(points) == len(targets) == 5
    frame = map_frame(nav.item("12"))
    for t, it in zip(targets, points):
        assert it.get("DrawnID") == "100005"
        assert frame.pixel(*it.numbers("StageXYZ")[:2], (1024, 1440)) == pytest.approx((t["x"], t["y"]), abs=1e-4)
    # the map label, explicitly; and a label that is not there
    assert main(["holes", str(medmag), "--nav", str(nav_path), "--map-label", "12", "--nav-out",
                 str(tmp_path / "b.nav"), "--top", "1"]) == 0
    capsys.readouterr()
    none = tmp_path / "none.json"
    assert main(["holes", str(medmag), "--nav", str(nav_path), "--map-label", "99", "--top", "1", "-o", str(none)]) == 2
    err = capsys.readouterr().err
    assert "no item labelled '99'" in err and "12" in err
    assert not none.exists()  # checked before anything is written: all outputs or none


def test_a_navigator_over_64_mb_is_refused_unread(tmp_path):
    """A 256 MB limit let a navigator of short lines take ~5 GB once parsed (40 MB took 830 MB)."""
    path = tmp_path / "big.nav"
    with open(path, "wb") as fh:
        fh.write(b"AdocVersion = 2.00\n")
        fh.truncate(65 * 1024 * 1024)
    with pytest.raises(InputError, match="too large for a navigator file"):
        read_nav(path)


def test_a_navigator_saved_with_a_utf8_byte_order_mark_is_read_and_copied_byte_for_byte(tmp_path):
    """A .nav saved by a Windows editor as UTF-8 begins with EF BB BF: its first line was no 'AdocVersion' line
    and the navigator was refused ("not an autodoc navigator"), in `squares --nav` and in a batch's session
    discovery. The mark is read past (and kept in the copy, as every other byte); a UTF-16 navigator is refused
    naming its encoding."""
    from ptolemy_rt.sessions import nav_maps

    plain = tmp_path / "plain.nav"
    plain.write_text(_nav(_map(file="map.mrc")))
    marked = tmp_path / "marked.nav"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_nav(marked)[0] == read_nav(plain)[0]
    assert parse_nav("\ufeff" + plain.read_text()) == read_nav(plain)[0]
    assert [p.name for p in nav_maps(marked)] == ["map.mrc"]
    result = _holes_result(tmp_path / "map.mrc")
    out_plain, _ = write_targets_to_nav(plain, result, image_path=tmp_path / "map.mrc")
    out_marked, _ = write_targets_to_nav(marked, result, image_path=tmp_path / "map.mrc")
    assert out_marked.read_bytes() == b"\xef\xbb\xbf" + out_plain.read_bytes()
    wide = tmp_path / "wide.nav"
    wide.write_bytes(plain.read_text().encode("utf-16"))
    with pytest.raises(InputError, match="wide.nav: UTF-16-LE text"):
        read_nav(wide)


@pytest.mark.parametrize("separator, what", [("\u2028", r"U\+2028 \(LINE SEPARATOR\)"),
                                             ("\u2029", r"U\+2029 \(PARAGRAPH SEPARATOR\)"),
                                             ("\x85", r"U\+0085 \(NEXT LINE\)")])
def test_a_navigator_whose_lines_end_in_unicode_separators_is_refused_saying_so(tmp_path, separator, what):
    """Leftover of robust14: a .nav whose lines are separated by U+2028 (an editor's or a script's 'line
    separator') was one line to the parser, an AdocVersion value holding the whole file: `batch` said "no images
    found in s.nav" and nothing of why. SerialEM ends lines at LF alone, so it is refused naming the file, the line
    and the separator, in `--nav` and in a batch's discovery alike; a note holding one (not before a key or a
    section) is read as before, and so is an XML navigator with one between its elements."""
    from ptolemy_rt.sessions import discover, nav_maps

    (tmp_path / "map.mrc").write_bytes(b"")
    whole = tmp_path / "whole.nav"
    whole.write_text(_nav(_map(file="map.mrc")).replace("\n", separator), encoding="utf-8")
    half = tmp_path / "half.nav"
    half.write_text(_nav(_map(file="map.mrc")).replace("\nColor", separator + "Color"), encoding="utf-8")
    for path, line in ((whole, 1), (half, 4)):
        message = rf"^{path.name}:{line}: lines separated by {what}, which SerialEM does not read as a line end"
        with pytest.raises(InputError, match=message.replace(path.name, rf"{tmp_path}/{path.name}")):
            read_nav(path)
        with pytest.raises(InputError, match=rf"{path.name}:{line}: lines separated by {what}"):
            discover([str(path)])
    noted = tmp_path / "noted.nav"
    noted.write_text(_nav(_map(file="map.mrc") + f"Note = a{separator}b\n"), encoding="utf-8")
    assert read_nav(noted)[0].items[0].get("Note") == f"a{separator}b".encode().decode("latin-1")
    assert [p.name for p in nav_maps(noted)] == ["map.mrc"]
    xml = tmp_path / "xml.nav"
    xml.write_text(f"<?xml version=\"1.0\"?>\n<navigator>{separator}<PreData>{separator}<AdocVersion>2.00"
                   "</AdocVersion></PreData></navigator>\n", encoding="utf-8")
    assert read_nav(xml)[0].xml


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
@pytest.mark.parametrize("note", ["Grid A{}Ice = thin", "Grid A{}[box 3]", "Grid A{} [Item = 7]"])
def test_a_unicode_separator_inside_a_value_is_read_as_serialem_reads_it(tmp_path, separator, note):
    """Review of robust15 (R2): the separator check matched anywhere, so a Note holding U+2028 (Mac text apps put it
    into pasted text) before key-like text ('Ice = thin', '[box 3]') refused the whole navigator, which SerialEM
    reads (it ends lines at LF alone). Only a file whose sections the separators hide (no [Item = ...] line of its
    own) is refused; these notes read as before, by --nav and by a batch's discovery."""
    from ptolemy_rt.sessions import nav_maps

    (tmp_path / "map.mrc").write_bytes(b"")
    value = note.format(separator)
    path = tmp_path / "noted.nav"
    path.write_text(_nav(_map(file="map.mrc") + f"Note = {value}\n" + "[Item = 2]\nType = 0\n"), encoding="utf-8")
    nav = read_nav(path)[0]
    assert nav.items[0].get("Note") == value.encode().decode("latin-1")
    assert [it.label for it in nav.items] == ["1", "2"]
    assert [p.name for p in nav_maps(path)] == ["map.mrc"]
    # the same separators hiding the whole file's lines are still refused
    path.write_text(_nav(_map(file="map.mrc") + f"Note = {value}\n").replace("\n", separator), encoding="utf-8")
    with pytest.raises(InputError, match=r"noted\.nav:1: lines separated by U\+"):
        read_nav(path)


def test_a_navigator_naming_no_map_file_says_so_when_a_batch_finds_no_images(tmp_path):
    """Found by hand (robust15): a batch of a .nav that names no map file (no item with a MapFile) said "no images
    found in s.nav" and nothing of why; the navigator is named with what it lacks."""
    from ptolemy_rt.sessions import discover

    empty = tmp_path / "s.nav"
    empty.write_text(_nav("[Item = 1]\nType = 0\nStageXYZ = 0 0 0\n"))
    with pytest.raises(InputError, match=rf"^no images found in {empty} \({empty}: a navigator naming no map file"):
        discover([str(empty)])


# (Cyrillic has no cp1252 form: that name is written in UTF-8 only.)
@pytest.mark.parametrize("name, encoding", [(name, encoding) for name in ("carte_é.mrc", "Åtlas.mrc", "сетка_х.mrc")
                                            for encoding in ("utf-8", "cp1252")
                                            if name != "сетка_х.mrc" or encoding == "utf-8"])
def test_a_map_file_name_with_accents_is_found_in_either_encoding(tmp_path, name, encoding):
    """SerialEM writes a MapFile name with accents in UTF-8 or in the Windows code page. `--nav` read the navigator
    byte for byte (latin-1) and missed a UTF-8 name ('no navigator map's MapFile is carte_é.mrc'); batch discovery
    read it as UTF-8 and lost a cp1252 one ('carte_\\ufffd.mrc: no such file'); a UTF-8 name holding the byte 0x85
    ('Å', 'х') was cut in two by str.splitlines. Both now find the map and its stage frame, either way."""
    from ptolemy_rt.sessions import nav_frames, nav_maps

    raw = _nav(_map(file=name)).encode(encoding)
    (tmp_path / name).write_bytes(b"")
    nav_path = tmp_path / "s.nav"
    nav_path.write_bytes(raw)
    nav, _ = read_nav(nav_path)
    assert find_map(nav, image_path=tmp_path / name).label == "1"
    assert nav_maps(nav_path) == [tmp_path / name]
    assert list(nav_frames(nav_path)) == [tmp_path / name]


# SerialEM's XML navigator form (Navigator saved as XML): <navigator>, <PreData> with AdocVersion and LastSavedAs,
# then one <Item name="LABEL"> per item with one element per key. Our own text, modelled on the structure of a
# public XML navigator (martinschorb/pyem, test/test_files/sort_xml.nav); before, every such file was refused
# ("first line must be 'AdocVersion = 2.00'") by --nav and by batch discovery.
def _as_xml(nav_text: str, newline: str = "\n") -> str:
    """The XML form of an autodoc navigator text (as SerialEM writes it: two-space indentation)."""
    from xml.sax.saxutils import escape, quoteattr

    nav = parse_nav(nav_text)
    out = ['<?xml version="1.0" encoding="utf-8"?>', "<navigator>", "  <PreData>"]
    out += [f"    <{k}>{escape(v)}</{k}>" for k, v in nav.header]
    out.append("  </PreData>")
    for it in nav.items:
        out.append(f"  <Item name={quoteattr(it.label)}>")
        out += [f"    <{k}>{escape(v)}</{k}>" for k, v in it.fields]
        out.append("  </Item>")
    out.append("</navigator>")
    return newline.join(out) + newline


_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(str.strip).filter(
    lambda v: "=" not in v)


@examples(10, settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
          given(
              mat=_MAT,
              stage=_STAGE,
              wh=_WH,
              note=_VALUE,
              fractions=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=0, max_size=6),
              crlf=st.booleans(),
          ))
def test_xml_navigator_reads_and_extends_as_the_autodoc_form(mat, stage, wh, note, fractions, crlf):
    newline = "\r\n" if crlf else "\n"
    other = f"[Item = 7]\nColor = 0\nStageXYZ = 1 2 3\nNumPts = 1\nRegis = 1\nType = 0\nMapID = 42\nNote = {note}\n"
    adoc = _nav(_map(label="5", stage=stage, mat=mat, wh=wh), other)
    xml = _as_xml(adoc, newline)
    a, x = parse_nav(adoc), parse_nav(xml, "x.nav")
    assert x.xml and not a.xml
    assert x.items == a.items and x.header == a.header  # the same items, keys and values (XML entities decoded)
    points = [(fx * (wh[0] - 1), fy * (wh[1] - 1)) for fx, fy in fractions]
    notes = [f"rank {i} <&>" for i in range(len(points))]
    a_text, a_items = add_points(a, adoc, a.item("5"), points, (wh[1], wh[0]), notes=notes)
    x_text, x_items = add_points(x, xml, x.item("5"), points, (wh[1], wh[0]), notes=notes)
    assert x_items == a_items  # the same new points, written in the file's own form
    assert x_text.startswith(xml[: xml.rindex("</navigator>")]) and x_text.endswith("</navigator>" + newline)
    assert ("\n" not in x_text.replace("\r\n", "")) == crlf
    again = parse_nav(x_text, "x.nav")
    assert again.xml and again.items == x.items + tuple(x_items)


def test_xml_navigator_refusals_name_the_file():
    with pytest.raises(InputError, match=r"x\.nav.*<svg>.*not a SerialEM navigator"):
        parse_nav("<svg></svg>", "x.nav")
    with pytest.raises(InputError, match=r"x\.nav.*AdocVersion"):
        parse_nav("<navigator><Item name='1'><Type>2</Type></Item></navigator>", "x.nav")
    with pytest.raises(InputError, match=r"x\.nav.*name="):
        parse_nav("<navigator><PreData><AdocVersion>2.00</AdocVersion></PreData><Item><Type>2</Type></Item>"
                  "</navigator>", "x.nav")
    with pytest.raises(InputError, match=r"x\.nav.*well-formed"):
        parse_nav("<navigator><PreData>", "x.nav")
    with pytest.raises(InputError, match=r"x\.nav.*DTD"):
        parse_nav('<!DOCTYPE n [<!ENTITY a "b">]><navigator/>', "x.nav")
    # new points for a text that lost its closing tag (only the message told no file)
    text = _as_xml(_nav(_map(label="5")))
    nav = parse_nav(text, "x.nav")
    with pytest.raises(InputError, match=r"^x\.nav: the XML navigator has no closing </navigator>"):
        add_points(nav, text.replace("</navigator>", ""), nav.item("5"), [(1.0, 2.0)], name="x.nav")


def test_cli_holes_to_an_xml_navigator(tmp_path, medmag, capsys):
    """--nav with SerialEM's XML form: the copy is XML too (SerialEM reads it back), with the points on the map."""
    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("the shipped model set is not present")
    nav_path = tmp_path / "session.nav"
    nav_path.write_text(_as_xml(_nav(_map(label="12", file="square 1.mrc", wh=(1440, 1024), map_id=100005))))
    out_nav = tmp_path / "with targets.nav"
    code = main(["holes", str(medmag), "--nav", str(nav_path), "--nav-out", str(out_nav), "--top", "3",
                 "--edge-tolerance", "100", "-o", str(tmp_path / "h.json")])
    assert code == 0, capsys.readouterr().err
    targets = json.loads((tmp_path / "h.json").read_text())["targets"]
    text = out_nav.read_text()
    assert text.startswith('<?xml version="1.0"') and text.rstrip().endswith("</navigator>")
    nav, _ = read_nav(out_nav)
    assert nav.xml and len(nav.items) == 1 + len(targets) == 4
    frame = map_frame(nav.item("12"))
    for t, it in zip(targets, nav.items[1:]):
        assert it.get("DrawnID") == "100005"
        assert frame.pixel(*it.numbers("StageXYZ")[:2], (1024, 1440)) == pytest.approx((t["x"], t["y"]), abs=1e-4)


_XML_PIECES = ['<?xml version="1.0" encoding="utf-8"?>', '<?xml version="1.0" encoding="utf-16"?>', "<navigator>",
               "</navigator>", "<PreData>", "</PreData>", "<AdocVersion>2.00</AdocVersion>", '<Item name="1">',
               "<Item>", '<Item name="">', "</Item>", "<Type>2</Type>", "<MapFile>C:\\x\\map.mrc</MapFile>",
               "<MapID>7</MapID>", "<StageXYZ>1 2 3</StageXYZ>", "<MapScaleMat>1 0 0 -1</MapScaleMat>",
               "<MapWidthHeight>8 8</MapWidthHeight>", "<a:Type xmlns:a='x'>2</a:Type>", "&amp;", "&bogus;", "<",
               "\x00", "\r\n", "\ufeff", "<!-- </navigator> -->", "<![CDATA[</Item>]]>", "<svg/>", "caf\u00e9",
               '<!DOCTYPE n [<!ENTITY a "b">]>']


_GOOD = ["<navigator>", "<PreData>", "<AdocVersion>2.00</AdocVersion>", "</PreData>", '<Item name="1">',
         "<Type>2</Type>", "<MapID>7</MapID>", "<StageXYZ>1 2 3</StageXYZ>", "<MapScaleMat>1 0 0 -1</MapScaleMat>",
         "<MapWidthHeight>8 8</MapWidthHeight>", "</Item>", "</navigator>"]


@settings(max_examples=150, deadline=None)
@example(pieces=_GOOD + ["<!-- </navigator> -->"])
@example(pieces=_GOOD[:-1] + ["<![CDATA[</Item>]]>", "<!-- </navigator> -->", "</navigator>", "<?pi </navigator>?>"])
@given(pieces=st.lists(st.sampled_from(_XML_PIECES), max_size=25))
def test_any_xml_navigator_text_parses_or_is_refused_by_name(pieces):
    """Whatever an XML navigator holds, parse_nav returns a Navigator or raises InputError naming the file; a
    parsed one takes new points (in XML, parsed back with them) or refuses its map by name."""
    text = "".join(pieces)
    if not text.lstrip().startswith("<"):
        text = "<" + text
    try:
        nav = parse_nav(text, "x.nav")
    except InputError as exc:
        assert str(exc).startswith("x.nav"), exc
        return
    assert nav.xml
    maps = [it for it in nav.items if it.get("Type") == "2"]
    if not maps:
        return
    try:
        new_text, items = add_points(nav, text, maps[0], [(1.0, 2.0)], (8, 8), name="x.nav")
    except InputError as exc:  # the file by name, or its map by its label (map_frame: the keys a map needs)
        assert str(exc).startswith(("x.nav", f"navigator map {maps[0].label}")), exc
        return
    again = parse_nav(new_text, "x.nav")
    assert again.items == nav.items + tuple(items)


def test_an_xml_navigator_over_32_mb_is_refused_unparsed(tmp_path):
    """The XML form takes twice the autodoc form's memory once parsed (16 MB of short elements: 700 MB): it is
    refused over half the autodoc limit, before any parsing."""
    from ptolemy_rt.navigator import MAX_XML_NAV_BYTES

    path = tmp_path / "big.nav"
    head = b"<navigator><PreData><AdocVersion>2.00</AdocVersion></PreData><Item name='1'>"
    with open(path, "wb") as fh:
        fh.write(head + b"<a/>" * ((MAX_XML_NAV_BYTES - len(head)) // 4 + 1) + b"</Item></navigator>")
    with pytest.raises(InputError, match="too large for an XML navigator"):
        read_nav(path)


@pytest.mark.parametrize("mat", [(1, 1e308, 0, 1), (1, 0, 1e308, 1)])
def test_a_map_frame_that_puts_targets_at_infinity_is_refused(tmp_path, mat):
    """Found by hand (fuzz13): finite map keys whose product overflows (MapScaleMat = 1 1e308 0 1 has determinant 1)
    put targets at stage -inf: "StageXYZ = -inf ..." and "PtsX = -inf" were written into the copy for SerialEM,
    exit 0. Nothing is written, an InputError names the .nav and the map."""
    nav_path = tmp_path / "grid.nav"
    nav_path.write_text(_nav(_map(file="map.mrc", mat=mat)))
    with pytest.raises(InputError, match=r"grid\.nav: navigator map 1: .* no stage position"):
        write_targets_to_nav(nav_path, _holes_result(tmp_path / "map.mrc"), image_path=tmp_path / "map.mrc")
    assert not default_nav_output(nav_path).exists()


@pytest.mark.parametrize("edit,said", [
    (("MapScaleMat = 0.5 0.1 0.05 -0.5", "MapScaleMat = 0 0 0 0"), r"navigator map 1: MapScaleMat \[0.0, 0.0, 0.0, "
                                                                   r"0.0\] cannot be inverted"),
    (("MapWidthHeight = 1000 800", "MapWidthHeight = -1000 -800"), "navigator map 1: malformed StageXYZ"),
    (("StageXYZ = 10.0 -20.0 3.0\n", ""), "navigator map 1 has no StageXYZ"),
    (("MapSection = 0", "MapSection = 99999999999999999999999"), "navigator item 1: MapSection = "),
    (("MapFile = C:\\maps\\map.mrc", "MapFile = C:\\maps\\other.mrc"), "no navigator map's MapFile is map.mrc"),
    (("Type = 2", "Type = map"), r"no navigator map's MapFile is map.mrc: .*\(the file has no maps\)"),
    (None, r"several navigator maps labelled alike use map.mrc \(1, 1\): --map-label cannot choose between them")])
def test_a_navigator_map_s_problem_names_the_navigator(tmp_path, edit, said):
    """Found by hand (fuzz16): `--nav` with a map whose MapScaleMat cannot be inverted, whose MapWidthHeight or
    StageXYZ is malformed or missing, whose MapSection is no integer, or no map for the image said 'navigator map
    1: ...' naming no file (the rule: the file and the problem); an item written twice said 'choose one with
    --map-label (1, 1)', which cannot. The .nav is named, once, and the copy is not written."""
    nav_path = tmp_path / "grid.nav"
    text = _nav(_map(file="map.mrc"))
    text = text + "\n" + text.split("\n\n", 1)[1] if edit is None else text.replace(*edit)
    nav_path.write_text(text)
    out = tmp_path / "copy.nav"
    with pytest.raises(InputError, match=rf"^{re.escape(str(nav_path))}: {said}") as info:
        write_targets_to_nav(nav_path, _holes_result(tmp_path / "map.mrc"), nav_out=out,
                             image_path=tmp_path / "map.mrc")
    assert str(info.value).count(str(nav_path)) == 1 and not out.exists()


def test_maps_some_labelled_alike_say_which_labels_choose(tmp_path):
    """Review of fuzz16: with maps labelled 2, 2 and 5 for the image, the refusal said --map-label could not choose
    between them, though --map-label 5 chooses map 5. The labels that choose are offered, the repeated one named."""
    nav_path = tmp_path / "grid.nav"
    nav_path.write_text(_nav(_map("2", file="map.mrc"), _map("2", file="map.mrc"), _map("5", file="map.mrc")))
    with pytest.raises(InputError, match=r"several navigator maps use map.mrc: choose one with --map-label \(5\); "
                       r"those labelled 2 it cannot choose between"):
        write_targets_to_nav(nav_path, _holes_result(tmp_path / "map.mrc"), nav_out=tmp_path / "copy.nav",
                             image_path=tmp_path / "map.mrc")
