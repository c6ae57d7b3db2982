"""ptolemy-rt batch: discovery of sessions, kinds, resume, failures, exit codes, the pool and Dask end to end."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt.batch import (
    BatchConfig,
    Progress,
    _preview_jpeg,
    link_squares,
    preview_factor,
    preview_levels,
    process_one,
    run_batch,
    worst_exit_code,
)
from ptolemy_rt.errors import InputError
from ptolemy_rt.sessions import (
    discover,
    epu_pixel_axes,
    epu_stage_position,
    kind_of,
    nav_maps,
    pixel_to_stage,
    stage_to_pixel,
)
from ptolemy_rt.synthetic_session import ATLAS_CENTRE_M, epu_xml, make_epu_session

REPO = Path(__file__).resolve().parents[1]
REAL_EPU = REPO.parent / "shared" / "real-epu"


def _env() -> dict:
    env = dict(os.environ)
    deps = REPO / ".deps"  # a developer's private install of the optional extras (never in CI's venv)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([str(deps)] if deps.is_dir() else []),
                                         env.get("PYTHONPATH", "")])
    return env


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptolemy_rt", "batch", *args], check=False, capture_output=True,
                          text=True, env=_env(), timeout=900, **kw)


def _main(capsys, *args: str) -> subprocess.CompletedProcess:
    """`ptolemy-rt batch ARGS` in this process (exit code, stdout, stderr): the checks that need no process of
    their own (a process: test_cli_batch_small_session_resume_and_failures' first run, the signal tests)."""
    from ptolemy_rt.cli import main

    capsys.readouterr()
    code = main(["batch", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------- discovery


def test_epu_layout_kinds_ids_and_left_out(tmp_path):
    root = tmp_path / "session"
    _touch(root / "Atlas" / "Atlas_1.mrc")
    _touch(root / "Atlas" / "Tile_1_2.mrc")
    gs = root / "Images-Disc1" / "GridSquare_17"
    _touch(gs / "GridSquare_20250101_1200.jpg")
    _touch(gs / "GridSquare_20250101_1200.mrc")  # the same image twice: the MRC is used
    (gs / "GridSquare_20250101_1200.xml").write_text(epu_xml((1e-4, -2e-4), 5e-9, (2048, 2880)))
    _touch(gs / "FoilHoles" / "FoilHole_1_20250101.jpg")
    _touch(gs / "Data" / "FoilHole_1_Data_2_3.mrc")
    items, notes = discover([str(root)])
    assert [(i.id, i.kind, i.source) for i in items] == [
        ("Atlas/Atlas_1.mrc", "squares", "epu"),
        ("Images-Disc1/GridSquare_17/GridSquare_20250101_1200.mrc", "holes", "epu"),
    ]
    assert items[1].stage_xy_m == (1e-4, -2e-4)
    assert len(notes) == 2 and any("atlas tile" in n for n in notes) and any("exposure" in n for n in notes)
    # A batch's output folder inside the session (its previews mirror the session's names) is never an input.
    _touch(root / "out" / "images" / "Images-Disc1" / "GridSquare_17" / "GridSquare_20250101_1200.mrc.jpg")
    assert [i.id for i in discover([str(root)], exclude=root / "out")[0]] == [i.id for i in items]
    # Every image below the output folder (`batch . -o .`): said, not "no images found in ." alone (robust15).
    with pytest.raises(InputError, match=r"no images found in .*session \(left out \d+: below the output folder "
                                         r".*session, which holds no inputs\)") as once:
        discover([str(root)], exclude=root)
    # A file named twice is counted once (review whole15: "left out 2N" for N files)
    with pytest.raises(InputError, match=r"\(left out \d+: below") as twice:
        discover([str(root), str(root)], exclude=root)
    count = re.compile(r"left out (\d+): below")
    assert count.search(str(twice.value))[1] == count.search(str(once.value))[1] != "0"
    # --kind overrides the detected kind but does not turn tiles or exposures into targets.
    forced, _ = discover([str(root)], kind="holes", exclude=root / "out")
    assert [i.kind for i in forced] == ["holes", "holes"]


def test_files_named_alike_but_for_the_case_of_their_suffix_are_two_images(tmp_path):
    """Found by hand (fuzz16): `atlas_a.mrc` beside `atlas_a.MRC` (or `x.tif` beside `x.TIF`) are two files, but
    the .mrc-and-.jpg rule (one image saved twice: the preferred format is used) kept one of them and left the other
    out without a word. Only a file of a format less preferred than another of its name is left out."""
    root = tmp_path / "session"
    for name in ("atlas_a.mrc", "atlas_a.MRC", "atlas_b.tif", "atlas_b.TIF", "atlas_c.mrc", "atlas_c.jpg"):
        _touch(root / name)
    items, notes = discover([str(root)])
    assert [i.id for i in items] == ["atlas_a.MRC", "atlas_a.mrc", "atlas_b.TIF", "atlas_b.tif", "atlas_c.mrc"]
    assert notes == []


@pytest.mark.parametrize("magnification", ["nan", "inf", "-135", "0"])
def test_a_magnification_that_is_none_leaves_a_serialem_map_s_kind_to_the_next_rule(tmp_path, magnification):
    """Found by hand (fuzz16): a .mdoc's Magnification of NaN or infinity made its map a grid-square image
    (NaN <= 500 is false), -135 or 0 an atlas: targets found by the wrong pipeline, exit 0. Such a value is no
    magnification: the kind is the next rule's (here none: --kind is asked for), a good value of a later block
    is used, and a real one still decides."""
    _touch(tmp_path / "map.mrc")
    mdoc = tmp_path / "map.mrc.mdoc"
    mdoc.write_text(f"[ZValue = 0]\nMagnification = {magnification}\n")
    assert kind_of(tmp_path / "map.mrc") == (None, "file", None)
    mdoc.write_text(f"[ZValue = 0]\nMagnification = {magnification}\n\n[ZValue = 1]\nMagnification = 135\n")
    assert kind_of(tmp_path / "map.mrc")[0] == "squares"
    mdoc.write_text("[ZValue = 0]\nMagnification = 4800\n")
    assert kind_of(tmp_path / "map.mrc") == ("holes", "serialem", None)


def test_leginon_rawdata_presets(tmp_path):
    raw = tmp_path / "22jan01a" / "rawdata"
    names = ["22jan01a_00004gr.mrc", "22jan01a_00004gr_00012sq.mrc", "22jan01a_00004gr_00012sq_v01.mrc",
             "22jan01a_00004gr_00012sq_00003hl.mrc", "22jan01a_00004gr_00012sq_00003hl_00002ex.mrc"]
    for n in names:
        _touch(raw / n)
    items, notes = discover([str(raw)])
    assert {i.path.name: i.kind for i in items} == {names[0]: "squares", names[1]: "holes", names[2]: "holes"}
    assert all(i.source == "leginon" for i in items)
    assert sum(int(n.split()[2]) for n in notes) == 2


_PRESETS = ["gr", "sq", "hl", "en", "ex", "esn", "fc", "fa", "em", "exa"]


@settings(max_examples=60, deadline=None)
@given(session=st.from_regex(r"\A[0-9]{2}[a-z]{3}[0-9]{2}[a-z](_[a-z][a-z0-9]{0,5})?\Z"),
       chain=st.lists(st.tuples(st.integers(1, 99999), st.sampled_from(_PRESETS), st.sampled_from(["", "_v01", "_v02"]),
                                st.sampled_from(["", "", "_00", "_01"])), min_size=1, max_size=5),
       processed=st.sampled_from(["", "", "-a", "-a-DW", "-e-DW"]))
def test_leginon_names_take_the_last_preset(tmp_path_factory, session, chain, processed):
    """Leginon's names as found in real sessions (10sep19a_a_00006gr_00017sq_v01_00021hl_v02_00004em,
    07jan05b_00012gr_00001sq_v01_00002sq_00_00002en_00, 22feb18a_b_00047gr_00036sq_v01_00006hl_00014ex-e-DW):
    the kind is the last preset's, a re-acquisition (_vNN), one of a tilt pair (_00, _01) or a processed copy
    (-a, -DW) included. Before, a tilt pair's square was not recognised (no kind: failed asking for --kind)."""
    name = session + "".join(f"_{n:05d}{p}{v}{t}" for n, p, v, t in chain) + processed + ".mrc"
    last = chain[-1][1]
    kind, source, note = kind_of(tmp_path_factory.getbasetemp() / "22jan01a" / "rawdata" / name)
    assert source == "leginon", name
    assert kind == {"gr": "squares", "sq": "holes"}.get(last), name
    assert (note is None) == (last in ("gr", "sq")) and (note is None or f"'{last}'" in note), name


def test_a_facility_visit_with_screening_atlases_and_an_epu_collection(tmp_path):
    """The layout of a real visit (the tree listed in DiamondLightSource/smartem-decisions,
    tests/testdata/bi37708-28_tree.txt; our own empty files): atlases of several cassette slots under
    atlas/Supervisor_*_atlas/Sample*/Atlas/ (Atlas_<id>.jpg, two in one slot, with Tile_<id>_<n>_<atlas id>.jpg
    pieces), Atlas.dm/Sample.dm, and EPU sessions beside them (Images-Disc1/GridSquare_<id>/GridSquare_<date>.jpg,
    FoilHoles/, Data/, Metadata/GridSquare_<id>.dm). Kept under a folder named 'atlas' (the visit's own
    'atlas' folder holding both), every grid-square image and every hole and exposure image was taken for an atlas."""
    for visit in (tmp_path / "visit", tmp_path / "atlas" / "visit"):
        screening = visit / "atlas" / "Supervisor_20250129_111544_x_atlas"
        _touch(screening / "Sample6" / "Atlas" / "Atlas.dm")
        _touch(screening / "Sample6" / "Sample.dm")
        for atlas_id in ("29263071", "30309559"):
            _touch(screening / "Sample6" / "Atlas" / f"Atlas_{atlas_id}.jpg")
            _touch(screening / "Sample6" / "Atlas" / f"Atlas_{atlas_id}.xml", b"<MicroscopeImage/>")
            for n in range(2):
                _touch(screening / "Sample6" / "Atlas" / f"Tile_2926308{n}_{n}_{atlas_id}.jpg")
        epu = visit / "Supervisor_20250129_134723_36_x_grid7_EPU"
        _touch(epu / "EpuSession.dm")
        _touch(epu / "Metadata" / "GridSquare_29272952.dm")
        gs = epu / "Images-Disc1" / "GridSquare_29272952"
        _touch(gs / "GridSquare_20250129_185944.jpg")
        _touch(gs / "FoilHoles" / "FoilHole_29279958_20250129_185801.jpg")
        _touch(gs / "Data" / "FoilHole_29279958_Data_29274665_13_20250129_185944.jpg")
        items, notes = discover([str(visit)])
        assert [(i.id.split("/")[-1], i.kind, i.source) for i in items] == [
            ("GridSquare_20250129_185944.jpg", "holes", "epu"),
            ("Atlas_29263071.jpg", "squares", "epu"),
            ("Atlas_30309559.jpg", "squares", "epu"),
        ], visit
        assert notes == ["left out 4 image(s): an EPU atlas tile (the stitched Atlas image is used)",
                         "left out 2 image(s): an EPU hole or exposure image (not targeted)"]


@settings(max_examples=80, deadline=None)
@given(above=st.lists(st.sampled_from(["atlas", "Atlas", "data", "Data", "rawdata", "FoilHoles", "grid1", "EPU",
                                       "Sample3", "Supervisor_20250129_111544_x_atlas", "Images-Disc1", "screening"]),
                      max_size=4),
       suffix=st.sampled_from([".jpg", ".mrc", ".tiff"]))
def test_epu_kinds_hold_whatever_folders_are_above(above, suffix):
    """EPU's layout decides, whatever a facility's folders above the session are called ('atlas', 'data',
    'rawdata', ... as real visits name them): a grid-square image is a grid-square image, a hole or exposure image
    and an atlas tile are left out, an atlas is an atlas."""
    base = Path("/facility", *above, "Supervisor_20250129_134723_36_x_EPU")
    gs = base / "Images-Disc1" / "GridSquare_29272952"
    atlas = Path("/facility", *above, "Sample6", "Atlas")
    assert kind_of(gs / f"GridSquare_20250129_185944{suffix}")[:2] == ("holes", "epu")
    for sub in ("FoilHoles/FoilHole_29279958_20250129_185801", "Data/FoilHole_29279958_Data_29274665_13_20250129"):
        kind, source, note = kind_of(gs / f"{sub}{suffix}")
        assert (kind, source) == (None, "epu") and "hole or exposure" in note
    assert kind_of(atlas / f"Atlas_29263071{suffix}")[:2] == ("squares", "epu")
    assert kind_of(atlas / f"Tile_29263087_0_29263071{suffix}")[0] is None


def test_serialem_and_leginon_sessions_kept_in_a_folder_named_atlas(tmp_path):
    """A SerialEM or Leginon session kept below a folder named 'atlas' (a visit's atlas/ folder holding the
    screening session): its grid-square maps (magnification in the .mdoc) and Leginon's sq/hl images were all taken
    for atlases by the folder's name. What the session wrote decides; a plain image there is still an atlas."""
    root = tmp_path / "visit" / "atlas" / "screening"
    _touch(root / "MMM.mrc")
    (root / "MMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 4800\n")
    _touch(root / "LMM.mrc")
    (root / "LMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 135\n")
    raw = root / "22jan01a" / "rawdata"
    for name in ("22jan01a_00004gr.mrc", "22jan01a_00004gr_00012sq.mrc", "22jan01a_00004gr_00012sq_00003hl.mrc"):
        _touch(raw / name)
    _touch(root / "overview.png")
    got = {p.name: kind_of(p)[:2] for p in [root / "MMM.mrc", root / "LMM.mrc", root / "overview.png",
                                            *sorted(raw.iterdir())]}
    assert got == {"MMM.mrc": ("holes", "serialem"), "LMM.mrc": ("squares", "serialem"),
                   "overview.png": ("squares", "epu"), "22jan01a_00004gr.mrc": ("squares", "leginon"),
                   "22jan01a_00004gr_00012sq.mrc": ("holes", "leginon"),
                   "22jan01a_00004gr_00012sq_00003hl.mrc": (None, "leginon")}


def test_a_serialem_map_with_name_dot_mdoc(tmp_path):
    """NAME.mdoc beside NAME.mrc (a map copied or converted elsewhere; metadata.py reads its pixel size too): the
    magnification in it gives the kind, as NAME.mrc.mdoc's does; before, the map failed asking for --kind."""
    _touch(tmp_path / "LMM.mrc")
    (tmp_path / "LMM.mdoc").write_text("PixelSpacing = 1234.5\n[ZValue = 0]\nMagnification = 135\n")
    _touch(tmp_path / "MMM.mrc")
    (tmp_path / "MMM.mdoc").write_text("[ZValue = 0]\nMagnification = 4800\n")
    assert kind_of(tmp_path / "LMM.mrc") == ("squares", "serialem", None)
    assert kind_of(tmp_path / "MMM.mrc") == ("holes", "serialem", None)
    (tmp_path / "MMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 135\n")  # SerialEM's own name first
    assert kind_of(tmp_path / "MMM.mrc")[0] == "squares"


def test_serialem_nav_and_mdoc(tmp_path):
    _touch(tmp_path / "LMM.mrc")
    (tmp_path / "LMM.mrc.mdoc").write_text("PixelSpacing = 1234.5\n[ZValue = 0]\nMagnification = 135\n")
    _touch(tmp_path / "MMM.mrc")
    (tmp_path / "MMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 4800\nPixelSpacing = 80\n")
    _touch(tmp_path / "stray.mrc")  # not in the navigator: not taken
    nav = tmp_path / "nav.nav"
    # A navigator moved from the acquisition PC: the stored Windows paths are gone, the names are beside it.
    nav.write_text("AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapFile = X:\\data\\LMM.mrc\n\n"
                   "[Item = 2]\nType = 2\nMapFile = X:\\data\\MMM.mrc\n[Item = 3]\nType = 0\n")
    assert [p.name for p in nav_maps(nav)] == ["LMM.mrc", "MMM.mrc"]
    for arg in (str(nav), str(tmp_path)):
        items, _ = discover([arg])
        assert [(i.id, i.kind, i.source) for i in items] == [("LMM.mrc", "squares", "serialem"),
                                                            ("MMM.mrc", "holes", "serialem")]
    bad = _touch(tmp_path / "other" / "x.nav", b"not a navigator")
    with pytest.raises(InputError, match="x.nav"):
        discover([str(bad)])


def test_serialem_xml_navigator_in_a_session(tmp_path):
    """SerialEM saves its navigator as XML too (<navigator><Item name=...><MapFile>; structure as in the public
    martinschorb/pyem test/test_files/sort_xml.nav): discovery refused the whole session ("no 'AdocVersion' line").
    Its maps are found as an autodoc navigator's are, with their stage frames."""
    _touch(tmp_path / "LMM.mrc")
    (tmp_path / "LMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 135\n")
    _touch(tmp_path / "MMM.mrc")
    (tmp_path / "MMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 4800\n")
    _touch(tmp_path / "stray.mrc")
    nav = tmp_path / "nav.nav"
    nav.write_text('<?xml version="1.0" encoding="utf-8"?>\r\n<navigator>\r\n  <PreData>\r\n'
                   "    <AdocVersion>2.00</AdocVersion>\r\n  </PreData>\r\n"
                   '  <Item name="1">\r\n    <StageXYZ>100 -50 0</StageXYZ>\r\n    <Type>2</Type>\r\n'
                   "    <MapFile>X:\\data\\LMM.mrc</MapFile>\r\n    <MapID>7</MapID>\r\n"
                   "    <MapScaleMat>1 0 0 -1</MapScaleMat>\r\n    <MapWidthHeight>8 8</MapWidthHeight>\r\n"
                   '  </Item>\r\n  <Item name="2">\r\n    <Type>2</Type>\r\n    <MapFile>MMM.mrc</MapFile>\r\n'
                   '  </Item>\r\n  <Item name="3">\r\n    <Type>0</Type>\r\n  </Item>\r\n</navigator>\r\n')
    assert [p.name for p in nav_maps(nav)] == ["LMM.mrc", "MMM.mrc"]
    items, _ = discover([str(tmp_path)])
    assert [(i.id, i.kind, i.source) for i in items] == [("LMM.mrc", "squares", "serialem"),
                                                        ("MMM.mrc", "holes", "serialem")]
    assert items[0].stage_xy_m == pytest.approx((100e-6, -50e-6)) and items[1].stage_xy_m is None
    bad = _touch(tmp_path / "other" / "x.nav", b"<?xml version='1.0'?><svg/>")
    with pytest.raises(InputError, match=r"x\.nav.*not a SerialEM navigator"):
        discover([str(bad)])


_FOLDER = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_ .-]{0,8}\Z").filter(lambda f: f.strip(" .") == f)


@settings(max_examples=40, deadline=None)
@given(above=st.lists(_FOLDER, max_size=3), below=st.lists(_FOLDER, max_size=3), windows=st.booleans(),
       xml=st.booleans())
def test_a_copied_session_keeps_its_map_subfolders(tmp_path_factory, above, below, windows, xml):
    """A SerialEM session copied off the acquisition PC whole: the .nav stores D:\\...\\session\\grid1\\LMM.mrc,
    and the copy has grid1/LMM.mrc beside nav.nav. Only the file name beside the .nav was tried: the map was
    'no such file' in the batch (and had no stage frame)."""
    root = tmp_path_factory.mktemp("copied")
    _touch(root.joinpath(*below, "LMM.mrc"))
    sep = "\\" if windows else "/"
    stored = ("D:" if windows else "") + sep + sep.join([*above, "session", *below, "LMM.mrc"])
    nav = root / "nav.nav"
    if xml:
        nav.write_text("<navigator><PreData><AdocVersion>2.00</AdocVersion></PreData><Item name='1'><Type>2</Type>"
                       f"<MapFile>{stored}</MapFile></Item></navigator>")
    else:
        nav.write_text(f"AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapFile = {stored}\n")
    assert nav_maps(nav) == [root.joinpath(*below, "LMM.mrc")]


def test_the_longest_stored_tail_that_exists_is_taken_and_dotdot_is_resolved(tmp_path):
    """Several files a stored MapFile could be, at different depths below the .nav: the longest tail of the stored
    path that exists is the map (the session copied whole), then shorter ones, down to the name beside the .nav.
    '..' is resolved as the acquisition PC resolved it (D:\\s\\grid1\\..\\LMM.mrc is D:\\s\\LMM.mrc: grid1/LMM.mrc
    was taken, the '..' dropped), and no tail climbs out of the .nav's folder."""
    root = tmp_path / "copy" / "session"
    deep, mid, beside = (_touch(root.joinpath(*f, "LMM.mrc")) for f in (("s", "grid1"), ("grid1",), ()))
    above = _touch(tmp_path / "copy" / "LMM.mrc")
    nav = root / "nav.nav"

    def found(stored: str) -> Path:
        nav.write_text(f"AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapFile = {stored}\n")
        (got,) = nav_maps(nav)
        return got

    assert found("D:\\data\\s\\grid1\\LMM.mrc") == deep
    assert found("/data/s/grid1/LMM.mrc") == deep
    assert found("D:\\data\\x\\grid1\\LMM.mrc") == mid
    assert found("D:\\data\\s\\grid1\\..\\LMM.mrc") == beside  # D:\data\s\LMM.mrc: no s/LMM.mrc here
    assert found("D:\\data\\s\\grid1\\sub\\..\\LMM.mrc") == deep
    assert found("/data/s/grid1/./sub/../LMM.mrc") == deep
    assert found("..\\..\\LMM.mrc") == beside and found("..\\grid1\\LMM.mrc") == mid  # never copy/LMM.mrc
    assert above.is_file()
    deep.unlink()
    assert found("D:\\data\\s\\grid1\\LMM.mrc") == mid


def test_a_stored_path_of_thousands_of_folders_is_looked_up_in_few_places(tmp_path, monkeypatch):
    """A MapFile of thousands of folders (8000 in a 160 kB .nav of 10 such maps): every tail of the stored path was
    built and looked up, longest first, each item three times: discovery took 257 s. At most the last _TAIL_FOLDERS
    folders are tried, from the longest of those down to the name beside the .nav."""
    import ptolemy_rt.sessions as sessions

    looked: list[str] = []
    real_is_regular = sessions.is_regular

    def counting(path):
        looked.append(str(path))
        return real_is_regular(path)

    monkeypatch.setattr(sessions, "is_regular", counting)
    _touch(tmp_path / "x.mrc")
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {k}]\nType = 2\nMapFile = {'a' + chr(92)}{('a' + chr(92)) * 3000}x.mrc\n\n" for k in range(10)))
    assert nav_maps(nav) == [tmp_path / "x.mrc"]
    assert len(looked) <= 2 + 8 + 1  # the stored path, beside the .nav, its last 8 folders' tails, the name
    looked.clear()
    items, notes = discover([str(nav)])
    assert [i.id for i in items] == ["x.mrc"] and notes == []
    assert len(looked) <= 2 * (2 + 8 + 1)  # the .nav's one name, and the file's .xml and .mdoc


def test_discovery_reads_a_nav_and_an_mdoc_once(tmp_path, monkeypatch):
    """A .nav was read and parsed three times in discovery (its maps, their frames, their stacks) and a stack's
    .mdoc once for each of its maps (400 maps of one file with an 8 MB .mdoc: 121 s)."""
    import mrcfile

    from ptolemy_rt import smallfiles

    with mrcfile.new(tmp_path / "MMM.mrc") as m:
        m.set_data(np.zeros((40, 8, 8), np.float32))
    (tmp_path / "MMM.mrc.mdoc").write_text("".join(f"[ZValue = {z}]\nMagnification = {135 if z % 2 else 4800}\n\n"
                                                   for z in range(40)))
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(f"[Item = {z}]\nType = 2\nMapFile = MMM.mrc\nMapSection = {z}\n\n"
                                                      for z in range(40)))
    reads: list[str] = []
    real_read_small = smallfiles.read_small

    def counting(path, *args, **kw):
        reads.append(Path(path).name)
        return real_read_small(path, *args, **kw)

    monkeypatch.setattr(smallfiles, "read_small", counting)
    items, notes = discover([str(nav)])
    assert sorted(reads) == ["MMM.mrc.mdoc", "s.nav"]
    assert {(i.section, i.kind) for i in items} == {(z, "squares" if z % 2 else "holes") for z in range(40)}


def test_a_stack_whose_header_claims_more_sections_than_the_file_holds(tmp_path):
    """An MRC header's nz was trusted: a 3-section file whose header claims 1000 made 1000 items of a .nav naming
    them. The sections the file's size holds are items; the others go to the left-out note."""
    import mrcfile

    path = tmp_path / "MMM.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((3, 16, 16), np.float32))
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.int32(1000).tobytes()  # nz
    path.write_bytes(bytes(raw))
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {z}]\nType = 2\nMapFile = MMM.mrc\nMapSection = {z}\n\n" for z in range(1000)))
    items, notes = discover([str(nav)])
    assert [i.id for i in items] == ["MMM.mrc@0", "MMM.mrc@1", "MMM.mrc@2"]
    assert notes == ["left out 997 image(s): a .nav map at a section its file does not have"]


def test_a_stacks_maps_sort_by_section_number(tmp_path):
    """Ids sorted as text put MMM.mrc@10 before MMM.mrc@2: a stack's maps come in section order."""
    import mrcfile

    with mrcfile.new(tmp_path / "MMM.mrc") as m:
        m.set_data(np.zeros((12, 8, 8), np.float32))
    _touch(tmp_path / "MMM.mrc.x.mrc")
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {z}]\nType = 2\nMapFile = MMM.mrc\nMapSection = {z}\n\n" for z in range(12))
        + "[Item = 99]\nType = 2\nMapFile = MMM.mrc.x.mrc\n")
    items, _ = discover([str(nav)], kind="holes")
    assert [i.id for i in items] == [f"MMM.mrc@{z}" for z in range(12)] + ["MMM.mrc.x.mrc"]


def test_an_empty_map_file_is_left_out_and_a_missing_one_is_said_missing(tmp_path, capsys):
    """Found by hand (fuzz16): a .nav map whose MapFile is empty named the .nav's own folder, an input that failed
    as 'cannot tell an atlas from a grid-square image here'; one whose file is not there failed with those words
    too, though --kind would not help. The empty one is left out with a note; the missing one fails as 'no such
    file' (exit 2), the other maps are processed."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    with mrcfile.new(tmp_path / "LMM.mrc") as m:
        m.set_data(make_atlas(3, shape=(320, 320))[0])
    (tmp_path / "LMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 135\n")  # an atlas, without --kind
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapFile =\n\n"
                   "[Item = 2]\nType = 2\nMapFile = D:\\s\\LMM.mrc\n")
    items, notes = discover([str(nav)])
    assert [(i.id, i.kind) for i in items] == [("LMM.mrc", "squares")]
    assert notes == ["left out 1 image(s): a .nav map whose MapFile is empty"]
    nav.write_text(nav.read_text() + "\n[Item = 3]\nType = 2\nMapFile = D:\\s\\gone.mrc\n")
    result = _main(capsys, str(nav), "-o", str(tmp_path / "out"), "--workers", "1", "--no-report")
    assert result.returncode == 2, result.stderr
    rows = {row["id"]: row for row in json.loads((tmp_path / "out" / "summary.json").read_text())["images"]}
    assert rows["gone.mrc"]["error"] == f"{tmp_path / 'gone.mrc'}: no such file"
    assert rows["LMM.mrc"]["status"] == "ok"


def test_an_image_of_no_kind_is_not_hashed_to_say_it_is_missing(tmp_path, monkeypatch):
    """Review of fuzz16: a .nav map of no kind whose file is not there was refused by hashing it for the error
    (_sha256 called to raise): a file appearing meanwhile was hashed whole, then refused anyway. The check is an
    open, nothing read."""
    import ptolemy_rt.batch as batch
    from ptolemy_rt.sessions import Item

    def no_hash(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(batch, "_sha256", no_hash)
    row, _ = process_one(Item(tmp_path / "gone.mrc", "gone.mrc", None, "nav"), BatchConfig(None, "cpu", 1, None))
    assert row["error"] == f"{tmp_path / 'gone.mrc'}: no such file", row
    (tmp_path / "here.mrc").write_bytes(b"x")
    monkeypatch.setattr(batch, "is_regular", lambda path: False)  # the file appears after the check
    row, _ = process_one(Item(tmp_path / "here.mrc", "here.mrc", None, "nav"), BatchConfig(None, "cpu", 1, None))
    assert "cannot tell an atlas from a grid-square image" in row["error"], row


def test_a_nul_byte_in_a_stored_map_file_leaves_that_map_out(tmp_path, capsys):
    """A NUL byte in a .nav's MapFile made discovery raise ValueError (embedded null byte): exit 70 for the whole
    batch. That map names no file: it is left out with a note, the others are found; alone, the batch refuses the
    .nav by name (exit 2)."""
    _touch(tmp_path / "LMM.mrc")
    nav = tmp_path / "s.nav"
    nav.write_bytes(b"AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapFile = D:\\s\\a\x00b.mrc\nMapSection = 1\n\n"
                    b"[Item = 2]\nType = 2\nMapFile = D:\\s\\LMM.mrc\n")
    items, notes = discover([str(nav)], kind="squares")
    assert [i.id for i in items] == ["LMM.mrc"]
    assert notes == ["left out 1 image(s): a .nav map whose MapFile can name no file (a NUL byte in it)"]
    nav.write_bytes(b"AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapFile = D:\\s\\a\x00b.mrc\n")
    with pytest.raises(InputError, match=r"s\.nav.*NUL byte"):
        discover([str(nav)])
    result = _main(capsys, str(nav), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "NUL byte" in result.stderr and "Traceback" not in result.stderr


def test_a_symlink_loop_in_a_session_fails_alone(tmp_path):
    """Fuzz (sessions, seed 3000087): a .nav's MapFile that is a symlink loop made Path.resolve raise RuntimeError
    in discover, an internal error (exit 70) for the whole batch; now that image fails alone (exit 2)."""
    _touch(tmp_path / "LMM.mrc")
    (tmp_path / "LMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 135\n")
    (tmp_path / "loop.mrc").symlink_to(tmp_path / "loop.mrc")
    (tmp_path / "nav.nav").write_text("AdocVersion = 2.00\n[Item = 1]\nType = 2\nMapFile = LMM.mrc\nMapID = 1\n"
                                      "StageXYZ = 0 0 0\nMapScaleMat = 1 0 0 -1\nMapWidthHeight = 8 8\n"
                                      "[Item = 2]\nType = 2\nMapFile = loop.mrc\n")
    items, _ = discover([str(tmp_path)], kind="squares")
    assert sorted(i.id for i in items) == ["LMM.mrc", "loop.mrc"]
    row, _ = process_one(next(i for i in items if i.id == "loop.mrc"), BatchConfig(None, "cpu", 1, None))
    assert row["exit_code"] == 2 and "loop.mrc" in row["error"]


def _square(cx: float, cy: float, half: float = 6.0) -> dict:
    return {"vertices": [[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half],
                         [cx - half, cy + half]]}


def _link(tmp_path: Path, items: list, atlas_pixel_A: float | None, shape: tuple[int, int], targets: list) -> dict:
    """link_squares over one atlas (its result JSON written) and grid-square items; return the rows."""
    atlas = next(i for i in items if i.kind == "squares")
    (tmp_path / "out" / "results").mkdir(parents=True, exist_ok=True)
    (tmp_path / "out" / "results" / f"{atlas.id}.json").write_text(json.dumps({"targets": targets}))
    rows = {i.id: {"status": "ok", "pixel_size_A": atlas_pixel_A if i is atlas else 100.0, "rows": shape[0],
                   "cols": shape[1], "atlas_square": None} for i in items}
    link_squares(tmp_path / "out", items, rows)
    return rows


def test_serialem_map_frames_link_a_turned_atlas(tmp_path):
    # An atlas map turned 90 degrees on the stage (MapScaleMat), 200x100 px; its file is a 2x binned copy.
    (tmp_path / "LMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 135\n")
    (tmp_path / "MMM.mrc.mdoc").write_text("[ZValue = 0]\nMagnification = 4800\n")
    _touch(tmp_path / "LMM.mrc")
    _touch(tmp_path / "MMM.mrc")
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapID = 101\nMapFile = X:\\d\\LMM.mrc\n"
                   "StageXYZ = 10 20 0\nMapScaleMat = 0 2 2 0\nMapWidthHeight = 200 100\n\n"
                   "[Item = 2]\nType = 2\nMapID = 102\nMapFile = MMM.mrc\nStageXYZ = 15 12 0\n"
                   "MapScaleMat = 10 0 0 -10\nMapWidthHeight = 50 50\n")
    items, _ = discover([str(nav)])
    assert [i.id for i in items] == ["LMM.mrc", "MMM.mrc"] and all(i.nav_frame is not None for i in items)
    assert items[1].stage_xy_m == pytest.approx((15e-6, 12e-6))
    # Stage (15, 12): display x = 2 (12 - 20) + 100 = 84, y_down = 2 (15 - 10) + 50 = 60, file row 100 - 60 = 40;
    # in the 100x50 binned file: (84.5 / 2 - 0.5, 40.5 / 2 - 0.5) = (41.75, 19.75).
    shape = (50, 100)
    unturned = stage_to_pixel(items[1].stage_xy_m, items[0].stage_xy_m, 2e-6, shape)
    rows = _link(tmp_path, items, None, shape, [_square(*unturned), _square(41.75, 19.75)])
    assert rows["MMM.mrc"]["atlas_square"] == ["LMM.mrc", 1]
    # A file that is not that map (another aspect ratio) gets no link rather than a wrong one.
    rows = _link(tmp_path, items, None, (50, 50), [_square(41.75, 19.75)])
    assert rows["MMM.mrc"]["atlas_square"] is None


def test_serialem_montage_map_is_processed_whole(tmp_path):
    # A .nav's montage map goes through io.read_image like any input, which assembles a stack with a montage
    # .mdoc (issue #12): the batch sees the whole 600x600 atlas, not its first 340x340 piece.
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    atlas, _ = make_atlas(5, (600, 600))
    tiles, pos = [], []
    for y in (0, 260):
        for x in (0, 260):
            tiles.append(atlas[y:y + 340, x:x + 340].astype(np.float32))
            pos.append((x, y))
    with mrcfile.new(tmp_path / "LMM.mrc") as m:
        m.set_data(np.stack(tiles))
    lines = ["PixelSpacing = 1500", "Montage = 1", ""]
    for z, (x, y) in enumerate(pos):
        lines += [f"[ZValue = {z}]", "Magnification = 135", f"PieceCoordinates = {x} {y} 0", ""]
    (tmp_path / "LMM.mrc.mdoc").write_text("\n".join(lines))
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapID = 101\nMapFile = LMM.mrc\nMapMontage = 1\n"
                   "StageXYZ = 0 0 0\nMapScaleMat = 1 0 0 -1\nMapWidthHeight = 600 600\n")
    out = tmp_path / "out"
    run_batch([str(nav)], out, workers=1, threads=1, report=False, progress=False)
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert row["kind"] == "squares" and (row["rows"], row["cols"]) == (600, 600)


def test_a_stack_of_serialem_maps_is_one_item_per_map(tmp_path):
    """SerialEM appends each new map to the open file: a session's MMM.mrc holds its grid-square maps as sections
    (MapSection 0, 1, 2 in the .nav, one [ZValue] block each in its .mdoc). The batch took the file once and read
    section 0 with a warning: every other map of the session was silently missed. Now each map is an item of
    its own (id MMM.mrc@k), read from its section, with its own magnification, pixel size and stage frame."""
    import mrcfile

    from .conftest import synthetic_medmag

    maps = [np.asarray(synthetic_medmag(seed)[0], np.float32)[:512, :720] for seed in (1, 2, 3)]
    with mrcfile.new(tmp_path / "MMM.mrc") as m:
        m.set_data(np.stack(maps))
    # section 1 was taken at a low magnification (an atlas-like overview kept in the same file)
    mags, spacings = (4800, 135, 4800), (80.0, 1500.0, 81.0)
    (tmp_path / "MMM.mrc.mdoc").write_text("ImageSize = 720 512\n\n" + "".join(
        f"[ZValue = {z}]\nMagnification = {mag}\nPixelSpacing = {px}\n\n"
        for z, (mag, px) in enumerate(zip(mags, spacings))))
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {z + 1}]\nType = 2\nMapID = {101 + z}\nMapFile = X:\\grid\\MMM.mrc\nMapSection = {z}\n"
        f"MapMontage = 0\nStageXYZ = {10 * z} {-5 * z} 0\nMapScaleMat = 1 0 0 -1\nMapWidthHeight = 720 512\n\n"
        for z in range(3)))
    items, _ = discover([str(nav)])
    assert [(i.id, i.kind, i.section) for i in items] == [("MMM.mrc@0", "holes", 0), ("MMM.mrc@1", "squares", 1),
                                                          ("MMM.mrc@2", "holes", 2)]
    assert np.allclose([i.stage_xy_m for i in items], [(0.0, 0.0), (10e-6, -5e-6), (20e-6, -10e-6)], atol=1e-12)
    assert items[1].to_dict()["section"] == 1
    out = tmp_path / "out"
    run_batch([str(nav)], out, kind="holes", workers=1, threads=1, report=False, progress=False)
    rows = {r["id"]: r for r in json.loads((out / "summary.json").read_text())["images"]}
    assert sorted(rows) == ["MMM.mrc@0", "MMM.mrc@1", "MMM.mrc@2"]
    assert [rows[f"MMM.mrc@{z}"]["pixel_size_A"] for z in range(3)] == list(spacings)
    for z in range(3):
        result = json.loads((out / "results" / f"MMM.mrc@{z}.json").read_text())
        assert result["image"]["section"] == z and (out / "images" / f"MMM.mrc@{z}.jpg").is_file()
    # sections the file does not have are left out with a note (a .nav of 3000 map items naming one 3-section
    # file made 3000 items, each failing)
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {z + 1}]\nType = 2\nMapID = {101 + z}\nMapFile = MMM.mrc\nMapSection = {z}\n\n"
        for z in range(3000)))
    items, notes = discover([str(nav)])
    assert [i.id for i in items] == ["MMM.mrc@0", "MMM.mrc@1", "MMM.mrc@2"]
    assert notes == ["left out 2997 image(s): a .nav map at a section its file does not have"]
    # a file of one map at section 0 (or of montages) stays one item named for the file, as before
    nav.write_text("AdocVersion = 2.00\n\n[Item = 1]\nType = 2\nMapID = 101\nMapFile = MMM.mrc\nMapSection = 0\n")
    assert [(i.id, i.section) for i in discover([str(nav)])[0]] == [("MMM.mrc", None)]


def test_a_stack_of_serialem_montage_maps_is_one_item_per_montage(tmp_path):
    """Montage maps appended to one file: the pieces of montage k have PieceCoordinates z = k (the .nav's
    MapSection). The batch assembled the first montage only; now each montage map is an item, assembled from its
    own pieces (a 2x2 montage of 340 px pieces at a 260 px step: 600x600)."""
    import mrcfile

    from ptolemy_rt.io import read_montage_frame
    from ptolemy_rt.synthetic import make_atlas

    tiles, lines = [], ["PixelSpacing = 1500", "ImageSize = 340 340", "Montage = 1", ""]
    # the second montage was taken at a grid-square magnification: its kind and pixel size are its own pieces'
    # (frame 0's were taken for every montage of the file)
    for frame, seed, mag, spacing in ((0, 5, 135, 1500), (1, 6, 4800, 80)):
        atlas, _ = make_atlas(seed, (600, 600))
        for y in (0, 260):
            for x in (0, 260):
                lines += [f"[ZValue = {len(tiles)}]", f"Magnification = {mag}", f"PixelSpacing = {spacing}",
                          f"PieceCoordinates = {x} {y} {frame}", ""]
                tiles.append(atlas[y:y + 340, x:x + 340].astype(np.float32) + 10.0 * frame)
    with mrcfile.new(tmp_path / "LMM.mrc") as m:
        m.set_data(np.stack(tiles))
    (tmp_path / "LMM.mrc.mdoc").write_text("\n".join(lines))
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {k + 1}]\nType = 2\nMapID = {101 + k}\nMapFile = LMM.mrc\nMapMontage = 1\nMapSection = {k}\n"
        f"StageXYZ = {500 * k} 0 0\nMapScaleMat = 1 0 0 -1\nMapWidthHeight = 600 600\n\n" for k in range(2)))
    items, _ = discover([str(nav)])
    assert [(i.id, i.kind, i.section, i.montage) for i in items] == [("LMM.mrc@0", "squares", 0, True),
                                                                     ("LMM.mrc@1", "holes", 1, True)]
    first, second = (read_montage_frame(tmp_path / "LMM.mrc", k) for k in (0, 1))
    assert first.shape == second.shape == (600, 600) and first.pieces == second.pieces == 4
    assert not np.array_equal(first.data, second.data)
    out = tmp_path / "out"
    run_batch([str(nav)], out, workers=1, threads=1, report=False, progress=False)
    rows = {r["id"]: r for r in json.loads((out / "summary.json").read_text())["images"]}
    assert {k: (r["kind"], r["status"] != "error", r["rows"], r["cols"], r["pixel_size_A"])
            for k, r in rows.items()} == {"LMM.mrc@0": ("squares", True, 600, 600, 1500.0),
                                          "LMM.mrc@1": ("holes", True, 600, 600, 80.0)}
    with pytest.raises(InputError, match=r"no pieces in montage frame 2 \(frames: \[0, 1\]\)"):
        read_montage_frame(tmp_path / "LMM.mrc", 2)
    (tmp_path / "LMM.mrc.mdoc").unlink()
    with pytest.raises(InputError, match=r"LMM\.mrc: no montage \.mdoc \(PieceCoordinates\) beside it for montage 1"):
        read_montage_frame(tmp_path / "LMM.mrc", 1)


def test_globs_plain_files_and_bad_arguments(tmp_path):
    _touch(tmp_path / "a" / "one.png")
    _touch(tmp_path / "b" / "two.tif")
    _touch(tmp_path / "b" / "notes.txt")
    items, _ = discover([str(tmp_path / "*" / "*.*")])
    assert [(i.id, i.kind) for i in items] == [("a/one.png", None), ("b/two.tif", None)]
    assert kind_of(tmp_path / "atlas_3.mrc")[0] == "squares"
    with pytest.raises(InputError, match="no file matches"):
        discover([str(tmp_path / "*.mrc")])
    with pytest.raises(InputError, match="no such file"):
        discover([str(tmp_path / "missing.mrc")])


def test_unknown_kind_is_a_recorded_failure_with_exit_2(tmp_path):
    path = _touch(tmp_path / "image.png")
    items, _ = discover([str(path)])
    row, files = process_one(items[0], BatchConfig(None, "cpu", 1, None))
    assert row["status"] == "error" and row["exit_code"] == 2 and "--kind" in row["error"]
    assert str(path) in row["error"] and files == {}


@pytest.mark.parametrize("what", ["missing", "fifo", "folder", "loop"])
def test_a_map_file_that_is_not_a_file_is_an_input_error(tmp_path, what):
    """Fuzz (sessions, seed 13): a .nav's MapFile naming no file was an internal error (exit 70) from the sha256;
    a FIFO there would have blocked the batch."""
    target = _touch(tmp_path / "map.mrc")
    items, _ = discover([str(target)], kind="squares")
    target.unlink()  # gone between discovery and work, or replaced by something that is not a file
    if what == "fifo":
        os.mkfifo(target)
    elif what == "folder":
        target.mkdir()
    elif what == "loop":
        target.symlink_to(target)
    row, files = process_one(items[0], BatchConfig(None, "cpu", 1, None))
    assert row["exit_code"] == 2 and str(target) in row["error"] and "internal" not in row["error"], row
    assert files == {}


def _released(call, fifo: Path, timeout: float = 20.0):
    """call()'s outcome (its value or exception) from a thread; a call still blocked after `timeout` (in the open
    of `fifo`) is released by opening the FIFO for writing, and the test fails."""
    import threading

    out: dict = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 -- handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        thread.join(5)
        pytest.fail(f"blocked for over {timeout} s on {fifo}")
    return out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("swap", ["before", "after_stat", "before_open"])
def test_sha256_never_blocks_on_a_fifo_swapped_in(tmp_path, monkeypatch, swap):
    """The input's sha256 opens first and checks the descriptor: a FIFO at the path, also one swapped in for the
    file at the worst moment (right after a stat of it, right before the open), is a one-line error naming it or
    the file that was there, never an open that waits for a writer (the stat-then-open version blocked)."""
    import hashlib

    from ptolemy_rt.batch import _sha256
    from ptolemy_rt.errors import MissingFileError

    path = tmp_path / "map.mrc"
    path.write_bytes(b"x" * 100)
    swapped = []

    def to_fifo():
        swapped.append(True)
        path.unlink()
        os.mkfifo(path)

    if swap == "before":
        to_fifo()
    elif swap == "after_stat":
        real_stat = os.stat

        def stat_then_swap(p, *args, **kwargs):
            st_ = real_stat(p, *args, **kwargs)
            if not swapped and os.fspath(p) == os.fspath(path):
                to_fifo()
            return st_
        monkeypatch.setattr(os, "stat", stat_then_swap)
    else:
        real_open = os.open

        def swap_then_open(p, *args, **kwargs):
            if not swapped and os.fspath(p) == os.fspath(path):
                to_fifo()
            return real_open(p, *args, **kwargs)
        monkeypatch.setattr(os, "open", swap_then_open)
    out = _released(lambda: _sha256(path), path)
    monkeypatch.undo()
    if "value" in out:  # the file was read before the swap: its bytes' digest
        assert swap == "after_stat" and out["value"] == hashlib.sha256(b"x" * 100).hexdigest()
    else:
        exc = out["error"]
        assert isinstance(exc, MissingFileError) and str(exc) == f"{path}: not a regular file", exc


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null here")
def test_open_regular_opens_no_device_and_names_a_bad_path(tmp_path, monkeypatch):
    """smallfiles.open_regular (the sha256's and read_small's) refuses a device without opening it (opening one
    can act: a tape rewinds, a watchdog arms), and a name with a NUL with its one line (os.open raised
    ValueError)."""
    from ptolemy_rt.errors import MissingFileError
    from ptolemy_rt.smallfiles import open_regular

    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    with pytest.raises(MissingFileError, match=r"^/dev/null: not a regular file \(a \.nav is expected\)$"):
        open_regular("/dev/null", ".nav", MissingFileError)
    with pytest.raises(MissingFileError, match="no such file"):
        open_regular(str(tmp_path / "a\0b"), error=MissingFileError)
    assert opened == []


@pytest.mark.skipif(not (REAL_EPU / "smartem_gs8999138.xml").is_file(), reason="../shared/real-epu not present")
def test_real_epu_xml_stage_position():
    stage = epu_stage_position(REAL_EPU / "smartem_gs8999138.xml")
    assert stage == pytest.approx((-9.8805664700000079e-05, -0.00016471620799999985))
    # ReferenceTransformation: 2.0724e-8 / -1.5451e-9 per readout pixel, a mirror (stage y up, image y down)
    # turned by 4.26 degrees.
    axes = epu_pixel_axes(REAL_EPU / "smartem_gs8999138.xml")
    assert axes == pytest.approx((0.997233, -0.074350, -0.074350, -0.997233), abs=1e-5)


def _reference_transformation(m11: float, m12: float, m21: float, m22: float) -> str:
    """The ReferenceTransformation element of an EPU .xml (System.Windows.Media.Matrix fields)."""
    return ('<ReferenceTransformation><matrix xmlns:a="http://schemas.datacontract.org/2004/07/'
            f'System.Windows.Media"><a:_m11>{m11!r}</a:_m11><a:_m12>{m12!r}</a:_m12><a:_m21>{m21!r}</a:_m21>'
            f'<a:_m22>{m22!r}</a:_m22><a:_offsetX>0</a:_offsetX><a:_offsetY>0</a:_offsetY></matrix>'
            '</ReferenceTransformation>')


def _epu_xml_turned(stage, pixel_m, readout, axes) -> str:
    """epu_xml with a ReferenceTransformation whose steps right/down are `axes` x the pixel size."""
    xx, xy, yx, yy = axes
    text = epu_xml(stage, pixel_m, readout)
    return text.replace("</MicroscopeImage>", _reference_transformation(xx * pixel_m, xy * pixel_m, yx * pixel_m,
                                                                        yy * pixel_m) + "\n</MicroscopeImage>")


def test_epu_pixel_axes_read_and_refused(tmp_path):
    xml = _touch(tmp_path / "a.xml", _epu_xml_turned((0.0, 0.0), 5e-9, (64, 64), (0.6, 0.8, 0.8, -0.6)).encode())
    assert epu_pixel_axes(xml) == pytest.approx((0.6, 0.8, 0.8, -0.6))
    assert epu_pixel_axes(_touch(tmp_path / "none.xml", epu_xml((0.0, 0.0), 5e-9, (64, 64)).encode())) is None
    degenerate = _epu_xml_turned((0.0, 0.0), 5e-9, (64, 64), (1.0, 0.0, 1.0, 0.0))  # both steps the same way
    assert epu_pixel_axes(_touch(tmp_path / "same.xml", degenerate.encode())) is None
    garbled = epu_xml((0.0, 0.0), 5e-9, (64, 64)).replace("</MicroscopeImage>", _reference_transformation(
        1.0, 0.0, 0.0, -1.0).replace("<a:_m22>-1.0", "<a:_m22>nope") + "</MicroscopeImage>")
    assert epu_pixel_axes(_touch(tmp_path / "bad.xml", garbled.encode())) is None


@settings(max_examples=50, deadline=None)
@given(st.floats(-5e-4, 5e-4), st.floats(-5e-4, 5e-4), st.floats(1e-9, 1e-5), st.integers(1, 9000),
       st.integers(1, 9000), st.floats(-1e4, 1e4), st.floats(-1e4, 1e4))
def test_stage_pixel_round_trip(cx, cy, pixel, rows, cols, x, y):
    stage = pixel_to_stage((x, y), (cx, cy), pixel, (rows, cols))
    back = stage_to_pixel(stage, (cx, cy), pixel, (rows, cols))
    assert back == pytest.approx((x, y), abs=1e-6 * max(1.0, abs(x), abs(y)))
    # Stage y points up, image rows down.
    below = pixel_to_stage((x, y + 1), (cx, cy), pixel, (rows, cols))
    assert below[1] < stage[1]


@settings(max_examples=80, deadline=None)
@given(st.floats(-180, 180), st.booleans(), st.floats(1e-9, 1e-5), st.integers(1, 9000), st.integers(1, 9000),
       st.floats(-1e4, 1e4), st.floats(-1e4, 1e4))
def test_stage_pixel_round_trip_turned(angle, mirror, pixel, rows, cols, x, y):
    import math

    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # A step right goes along (c, s) on the stage; a step down 90 degrees from it, one way or the other.
    axes = (c, s, s, -c) if mirror else (c, s, -s, c)
    centre = (1e-4, -2e-4)
    stage = pixel_to_stage((x, y), centre, pixel, (rows, cols), axes=axes)
    assert stage_to_pixel(stage, centre, pixel, (rows, cols), axes=axes) == \
        pytest.approx((x, y), abs=1e-6 * max(1.0, abs(x), abs(y)))
    # Distances are kept (pixel size times pixels) and a step right moves the stage along the first axis.
    right = pixel_to_stage((x + 1, y), centre, pixel, (rows, cols), axes=axes)
    assert ((right[0] - stage[0]) / pixel, (right[1] - stage[1]) / pixel) == pytest.approx((c, s), abs=1e-6)
    # The image centre is the stage position.
    assert pixel_to_stage(((cols - 1) / 2, (rows - 1) / 2), centre, pixel, (rows, cols), axes=axes) == \
        pytest.approx(centre, abs=1e-15)


def test_xml_written_by_the_generator_reads_back(tmp_path):
    from ptolemy_rt.metadata import epu_pixel_size

    xml = tmp_path / "g.xml"
    xml.write_text(epu_xml((1.5e-5, -3.25e-6), 2.5e-9, (2048, 2880)))
    assert epu_stage_position(xml) == (1.5e-5, -3.25e-6)
    assert epu_pixel_size(xml, (1024, 1440)) == pytest.approx(50.0)  # Å per JPEG pixel: readout 2x the JPEG
    assert epu_stage_position(_touch(tmp_path / "bad.xml", b"<a><b>")) is None
    dtd = _touch(tmp_path / "dtd.xml", b'<!DOCTYPE a [<!ENTITY x "y">]><a><stage><Position><X>1</X><Y>2</Y>'
                 b"</Position></stage></a>")
    assert epu_stage_position(dtd) is None  # metadata.read_xml_safely refuses DTDs


def test_progress_line_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the progress extra were not installed
    bar = Progress(total=3, initial=1, enabled=True)
    bar.update()
    bar.write("one message")
    bar.update()
    bar.close()
    err = capsys.readouterr().err
    assert "3/3 images" in err and "img/s" in err and "ETA" in err and "one message\n" in err
    quiet = Progress(total=3, initial=0, enabled=False)
    quiet.update()
    quiet.close()
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux /proc")
def test_worker_with_one_thread_starts_no_thread_pools():
    # A spawned worker (fresh interpreter) with --threads 1: no idle BLAS/OpenMP/OpenCV pools beside its own
    # thread, so that 2 workers x 1 thread use 2 cores and no more. Its sessions are created (init_worker).
    # Its onnxruntime sessions run on --threads threads that sleep, not spin, between runs (a spinning pool
    # would burn the core of the other worker).
    code = ("import os; from ptolemy_rt.batch import BatchConfig, init_worker; "
            "init_worker(BatchConfig(None, 'cpu', 1, None)); import scipy.ndimage, scipy.fft; "
            "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS']); "
            "from ptolemy_rt.models import TASKS, load_models; m = load_models(None, provider='cpu', threads=1); "
            "opts = [m.session(t).get_session_options() for t in TASKS if m.has(t)]; "
            "print(len(opts), *{(o.intra_op_num_threads, o.get_session_config_entry('session.intra_op.allow_spinning'))"
            " for o in opts})")
    env = {k: v for k, v in _env().items() if not k.endswith("_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    threads, sessions = r.stdout.splitlines()
    assert threads.split() == ["1", "1"]
    assert int(sessions.split()[0]) >= 2 and sessions.split(maxsplit=1)[1] == "(1, '0')"



_PAGE_FAULTS = """
import resource, sys
import numpy as np
from ptolemy_rt.batch import keep_large_arrays_on_heap
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        a = np.ones((1024, 1440), np.float32)  # an image-sized temporary, freed each time
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
frozen = faults()
done = keep_large_arrays_on_heap(int(sys.argv[1]) if len(sys.argv) > 1 else 256 << 20)
faults()  # the heap grows to hold the array once (as faults() did above): not what is measured
print(done, frozen, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mmap threshold")
def test_worker_keeps_image_sized_arrays_on_the_heap_under_dask_malloc_settings():
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold at 128 KiB: each image-sized
    # temporary then faults in fresh pages (1.5x CPU per image). init_worker raises the threshold there.
    env = {k: v for k, v in _env().items() if not k.startswith("MALLOC_")}
    r = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, timeout=120,
                       check=False, env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"})
    assert r.returncode == 0, r.stderr
    done, frozen, raised = r.stdout.split()
    assert done == "True"
    assert int(frozen) > 20 * 100 and int(raised) < int(frozen) / 10
    # The Dask plugin's smaller trim threshold (shared=True) keeps an image's arrays on the heap too.
    r = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, str(64 << 20)], capture_output=True, text=True,
                       timeout=120, check=False, env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"})
    assert r.returncode == 0, r.stderr
    done, frozen, raised = r.stdout.split()
    assert done == "True" and int(raised) < int(frozen) / 10
    # Without such a variable a worker gets the same limits (glibc's own adapt only after a first large free).
    r = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, timeout=120,
                       check=False, env=env)
    assert r.returncode == 0, r.stderr
    done, adaptive, kept = r.stdout.split()
    assert done == "True" and int(adaptive) < 20 * 100 and int(kept) < 20 * 100
    # A threshold the user chose is left alone.
    r = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, timeout=120,
                       check=False, env={**env, "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert r.returncode == 0, r.stderr
    done, chosen, left = r.stdout.split()
    assert done == "False" and int(left) > 20 * 100


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 200_000), levels=st.sampled_from([0, 1, 3, 256, 0]),
       dtype=st.sampled_from([np.float32, np.float64]), shape=st.sampled_from(["flat", "image", "outliers"]))
def test_preview_levels_are_numpys_percentiles_bit_for_bit(seed, size, levels, dtype, shape):
    # The preview's black and white levels come from a partial selection: they must be np.percentile's own
    # values (the preview JPEG's bytes stay those of earlier versions). levels: ties (0 = continuous values).
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, size) if not levels else rng.integers(0, levels, size).astype(float)
    if shape == "outliers":
        data[rng.integers(0, size, max(1, size // 50))] = rng.choice([-1e30, 1e30, 0.0, np.inf, np.nan])
    data = data.astype(dtype)
    if shape == "image" and size >= 64:
        data = data[: size - size % 64].reshape(-1, 64)
    with np.errstate(invalid="ignore"):  # inf - inf where both levels are infinite: NaN, as numpy has it
        want = np.percentile(data, [0.5, 99.5])
        got = preview_levels(data)
    assert np.asarray(got, dtype=want.dtype).tobytes() == want.tobytes()
    assert all(type(g) is type(w) for g, w in zip(got, want))

@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 20_000), cols=st.integers(1, 20_000), max_side=st.integers(16, 2048))
def test_preview_factor_is_the_smallest_whole_factor(rows, cols, max_side):
    k = preview_factor((rows, cols), max_side)
    assert max(rows, cols) / k <= max_side and (k == 1 or max(rows, cols) / (k - 1) > max_side)


@pytest.mark.parametrize("shape,k", [((1024, 1440), 2), ((1023, 1441), 2), ((96, 96), 1), ((300, 2100), 3)])
def test_preview_is_the_block_mean_contrast_stretched(shape, k):
    """Each preview pixel is the mean of a k x k block (a whole factor), stretched between the 0.5 and 99.5th
    percentiles of the shrunk image: a smooth image's JPEG stays within a few grey levels of that."""
    import cv2

    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    data = (100 + 40 * np.sin(x / 97.0) * np.cos(y / 61.0) + 0.01 * x).astype(np.float32)
    got = cv2.imdecode(np.frombuffer(_preview_jpeg(data, max_side=1024 if k < 3 else 700), np.uint8),
                       cv2.IMREAD_GRAYSCALE)
    assert got.shape == (round(rows / k), round(cols / k))
    r, c = rows // k, cols // k  # whole blocks
    means = data[: r * k, : c * k].reshape(r, k, c, k).mean(axis=(1, 3))
    lo, hi = np.percentile(means, [0.5, 99.5])
    want = np.clip((means - lo) * (255.0 / (hi - lo)), 0, 255)
    assert np.abs(got[:r, :c].astype(float) - want).mean() < 1.5


def test_worst_exit_code_order():
    assert worst_exit_code([]) == 0
    assert worst_exit_code([0, 2, 0]) == 2
    assert worst_exit_code([2, 3]) == 3
    assert worst_exit_code([3, 4, 2]) == 4
    assert worst_exit_code([2, 70, 3]) == 70
    assert worst_exit_code([1, 3]) == 1
    assert worst_exit_code([1, 130, 2]) == 130


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def small_session(tmp_path_factory) -> Path:
    """An EPU-like session small enough for the default test run: 1 atlas, 3 squares, 1 image each (512x720)."""
    root = tmp_path_factory.mktemp("epu_small")
    make_epu_session(root, n_squares=3, per_square=1, seed=3, medmag_shape=(512, 720))
    return root


def _mtimes(outdir: Path) -> dict[str, int]:
    return {str(p.relative_to(outdir)): p.stat().st_mtime_ns for p in sorted((outdir / "results").rglob("*.json"))}


def _turn_atlas(root: Path, angle_deg: float, side: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Turn the session's atlas by `angle_deg` (anticlockwise on screen) onto a side x side canvas, as a grid
    loaded at another angle; write it with an .xml whose ReferenceTransformation says so. Returns the 2x3 map
    from old to new atlas pixels and the new image's pixel axes."""
    import math

    import cv2
    import mrcfile

    from ptolemy_rt.synthetic_session import _write_mrc

    path = root / "Atlas" / "Atlas_1.mrc"
    with mrcfile.open(path) as mrc:
        atlas = np.asarray(mrc.data, dtype=np.float32)
        pixel_A = float(mrc.voxel_size.x)
    rows, cols = atlas.shape
    m = cv2.getRotationMatrix2D(((cols - 1) / 2, (rows - 1) / 2), angle_deg, 1.0)
    m[:, 2] += [(side - cols) / 2, (side - rows) / 2]
    turned = cv2.warpAffine(atlas, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=float(np.percentile(atlas, 2)))
    _write_mrc(path, turned, pixel_A)
    # A step right/down in the new image is the old image's step R^-1 e_x / R^-1 e_y, which was unrotated.
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    inv = np.array([[c, -s], [s, c]])  # R = [[c, s], [-s, c]] (cv2, y down); its inverse
    old_right, old_down = inv[:, 0], inv[:, 1]
    # The old image's x ran along stage X, its y against stage Y.
    axes = (float(old_right[0]), -float(old_right[1]), float(old_down[0]), -float(old_down[1]))
    (root / "Atlas" / "Atlas_1.xml").write_text(_epu_xml_turned(ATLAS_CENTRE_M, pixel_A * 1e-10, (side, side),
                                                                axes))
    return m, axes


def test_turned_atlas_links_squares_by_its_reference_transformation(tmp_path):
    """A synthetic EPU session whose atlas is turned by 30 degrees: each grid-square image links to the square
    it was taken on (truth.json), which the unrotated reading would miss."""
    from ptolemy_rt.batch import _point_in

    root = tmp_path / "session"
    truth = make_epu_session(root, n_squares=4, per_square=1, seed=3, medmag_shape=(256, 360),
                             atlas_shape=(640, 640))
    m, axes = _turn_atlas(root, 30.0, 880)
    assert discover([str(root)])[0][0].pixel_axes == pytest.approx(axes)
    out = tmp_path / "out"
    assert run_batch([str(root)], out, workers=1, threads=1, report=False, progress=False) in (0, 2)
    summary = json.loads((out / "summary.json").read_text())
    atlas_row = next(r for r in summary["images"] if r["kind"] == "squares")
    assert atlas_row["status"] == "ok" and (atlas_row["rows"], atlas_row["cols"]) == (880, 880)
    targets = json.loads((out / "results" / "Atlas" / "Atlas_1.mrc.json").read_text())["targets"]
    pixel_m = atlas_row["pixel_size_A"] * 1e-10
    by_folder = {r["id"].split("/")[1]: r for r in summary["images"] if r["kind"] == "holes"}
    missed_unrotated = 0
    for square in truth["squares"]:
        x, y = m @ np.array([*square["atlas_xy"], 1.0])  # where the square now is
        row = by_folder[square["folder"]]
        assert row["atlas_square"] is not None, square["folder"]
        atlas_id, rank = row["atlas_square"]
        assert atlas_id == "Atlas/Atlas_1.mrc" and _point_in(targets[rank]["vertices"], x, y), square["folder"]
        # Read as unrotated, the same stage position falls elsewhere, mostly off that square.
        ux, uy = stage_to_pixel(tuple(row["stage_xy_m"]), ATLAS_CENTRE_M, pixel_m, (880, 880))
        missed_unrotated += not _point_in(targets[rank]["vertices"], ux, uy)
    assert missed_unrotated >= 2


def test_cli_batch_small_session_resume_and_failures(small_session, tmp_path, capsys):
    out = tmp_path / "out"
    r = _cli(str(small_session), "-o", str(out), "--workers", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["images"] == 4 and summary["totals"]["failed"] == 0
    assert summary["totals"]["atlases"] == 1 and summary["totals"]["grid_square_images"] == 3
    rows = {row["id"]: row for row in summary["images"]}
    for row in rows.values():
        assert (out / "results" / f"{row['id']}.json").is_file() and (out / "images" / f"{row['id']}.jpg").is_file()
        assert row["status"] in ("ok", "empty") and len(row["sha256"]) == 64
    holes = [row for row in rows.values() if row["kind"] == "holes"]
    # The grid-square images sit on atlas squares (stage positions in their .xml): each one is linked.
    truth = json.loads((small_session / "truth.json").read_text())
    assert all(row["atlas_square"] is not None for row in holes) and len(truth["squares"]) == 3
    # Pixel size from the .xml (readout pixel x readout/JPEG width), so spacing in Å is known.
    assert all(row["pixel_size_A"] and row["spacing_A"] for row in holes if row["status"] == "ok")
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("id,input,kind,status,exit_code,count,best_score")
    assert (out / "index.html").is_file()
    assert "ETA" not in r.stderr and "img/s" not in r.stderr  # no progress bar when stderr is not a terminal

    # Resume: nothing recomputed, same summaries byte for byte.
    before = _mtimes(out)
    first_json, first_csv = (out / "summary.json").read_bytes(), (out / "summary.csv").read_bytes()
    r = _main(capsys, str(small_session), "-o", str(out), "--resume", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "(4 resumed" in r.stderr
    assert _mtimes(out) == before
    assert (out / "summary.json").read_bytes() == first_json and (out / "summary.csv").read_bytes() == first_csv

    # A changed input is redone; a corrupt one is recorded, the batch goes on, and the exit code says so.
    image = small_session / holes[0]["id"]
    original = image.read_bytes()
    try:
        image.write_bytes(b"\xff\xd8 not a jpeg")
        r = _main(capsys, str(small_session), "-o", str(out), "--resume", "--workers", "1")
    finally:
        image.write_bytes(original)
    assert r.returncode == 2, r.stderr
    assert "(3 resumed" in r.stderr and holes[0]["id"] in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    bad = next(row for row in summary["images"] if row["id"] == holes[0]["id"])
    assert bad["status"] == "error" and bad["exit_code"] == 2 and str(image) in bad["error"]
    assert summary["totals"]["failed"] == 1 and summary["totals"]["ok"] + summary["totals"]["empty"] == 3
    # Restored: the failed image runs again and the summary is the first one again.
    r = _main(capsys, str(small_session), "-o", str(out), "--resume", "--workers", "1")
    assert r.returncode == 0 and "(3 resumed" in r.stderr
    assert (out / "summary.json").read_bytes() == first_json


def test_a_resume_starts_the_sessions_of_the_images_left_only(small_session, tmp_path, monkeypatch):
    """Review whole15 (6): the sessions a worker starts came from every image found, so a --resume whose images
    left were holes only still started the square CNN; they come from the images still to run."""
    from ptolemy_rt import batch

    out = tmp_path / "o"
    assert run_batch([str(small_session)], out, workers=1, threads=1, report=False, progress=False) == 0
    rows = json.loads((out / "summary.json").read_text())["images"]
    hole = next(row["id"] for row in rows if row["kind"] == "holes")
    (out / "results" / f"{hole}.json").unlink()
    started = []
    run = batch._in_process

    def recording(todo, config, *args):
        started.append(([item.id for item in todo], config.tasks()))
        return run(todo, config, *args)

    monkeypatch.setattr(batch, "_in_process", recording)
    assert run_batch([str(small_session)], out, workers=1, threads=1, report=False, progress=False,
                     resume=True) == 0
    assert started == [([hole], ("hole_unet", "hole_cnn"))]
    again = json.loads((out / "summary.json").read_text())["images"]
    assert [(r["id"], r["count"]) for r in again] == [(r["id"], r["count"]) for r in rows]


@pytest.mark.slow  # seconds each; CI runs the slow suite
@pytest.mark.parametrize("signum", [signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)])
def test_sigterm_stops_with_130_and_resume_finishes(small_session, tmp_path, signum):
    """SIGTERM (a scheduler) and SIGHUP (the terminal or ssh session gone; it killed the batch where it stood:
    no summary, a temporary file left) stop the batch alike: 130, a summary marked incomplete, --resume."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ptolemy_rt", "batch", str(small_session), "-o", str(out),
                             "--workers", "2", "--threads", "1", "--no-report"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a hangup reaches the whole group, the workers too
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / ".state").is_dir() and any((out / ".state").rglob("*.json")):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the batch finished before it could be stopped (a very fast machine)")
    os.killpg(proc.pid, signum) if signum != signal.SIGTERM else proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    if proc.returncode == 0:
        pytest.skip("the last image finished as the signal arrived")
    assert proc.returncode == 130 and "rerun with --resume" in err
    assert "Traceback" not in err and "resource_tracker" not in err  # a hangup killed the pool's tracker
    assert summary["complete"] is False and 1 <= summary["totals"]["images"] < 4
    r = _cli(str(small_session), "-o", str(out), "--resume", "--workers", "1", "--no-report")
    assert r.returncode == 0 and f"({summary['totals']['images']} resumed" in r.stderr
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_usage_errors(small_session, tmp_path, capsys):
    a_file = _touch(tmp_path / "file")
    r = _main(capsys, str(small_session), "-o", str(a_file))
    assert r.returncode == 2 and "not a folder" in r.stderr
    r = _main(capsys, str(tmp_path / "nothing-*.mrc"), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "no file matches" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _main(capsys, str(small_session), "-o", str(tmp_path / "o"), "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr
    r = _main(capsys, str(small_session), "-o", str(tmp_path / "o"), "--models", str(tmp_path))
    assert r.returncode == 3 and "manifest" in r.stderr


def test_model_set_loaded_once_per_worker(small_session, tmp_path, monkeypatch):
    """In one process (--workers 1) every image reuses the same ModelSet (models.load_models caches it)."""
    from ptolemy_rt import models

    created = []
    real = models.ModelSet.__init__

    def counting(self, *a, **kw):
        created.append(1)
        real(self, *a, **kw)

    monkeypatch.setattr(models.ModelSet, "__init__", counting)
    monkeypatch.setattr(models, "_CACHE", {})
    code = run_batch([str(small_session)], tmp_path / "o", workers=1, threads=1, report=False, progress=False)
    assert code == 0
    assert len(created) == 2  # one in the up-front check (default threads), one for the worker's thread count


@pytest.mark.slow  # seconds each; CI runs the slow suite
def test_calibration_maps_each_kind_and_is_checked_first(small_session, tmp_path):
    """--calibration in a batch maps that kind's scores as `ptolemy-rt holes --calibration` does, enters the resume
    key, and a file that does not fit (another model set, a second one for a kind) is refused before any work."""
    from ptolemy_rt.calibration import fit
    from ptolemy_rt.models import load_models

    ids = load_models(None).ids
    halve = fit([0.0, 1.0], [0.0, 0.5], "squares", "score", models=ids)  # squares' scores halved, holes untouched
    cal = tmp_path / "squares_cal.json"
    cal.write_text(json.dumps(halve.to_dict()))
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    assert run_batch([str(small_session)], plain, workers=1, threads=1, report=False, progress=False) == 0
    assert run_batch([str(small_session)], mapped, workers=1, threads=1, report=False, progress=False,
                     calibrations=[str(cal)]) == 0
    kinds = {}
    for path in sorted((plain / "results").rglob("*.json")):
        before = json.loads(path.read_text())
        after = json.loads((mapped / path.relative_to(plain)).read_text())
        kinds[before["kind"]] = True
        if before["kind"] == "holes":
            assert after == before
            continue
        assert after["models"]["calibration"]["pairs"] == 2
        assert len(after["targets"]) == len(before["targets"]) > 0
        for b, a in zip(before["targets"], after["targets"]):
            assert a["scores"] == b["scores"] and a["score"] == pytest.approx(b["score"] / 2, abs=1e-12)
    assert kinds == {"squares": True, "holes": True}
    # a calibration changes the written scores: --resume with another calibration redoes those images
    assert run_batch([str(small_session)], plain, workers=1, threads=1, report=False, progress=False, resume=True,
                     calibrations=[str(cal)]) == 0
    redone = [json.loads(p.read_text()) for p in sorted((plain / "results").rglob("*.json"))]
    assert all("calibration" in r["models"] for r in redone if r["kind"] == "squares")

    other = json.loads(cal.read_text())
    other["models"]["square_cnn"] = {**other["models"]["square_cnn"], "sha256": "0" * 64}
    (tmp_path / "other.json").write_text(json.dumps(other))
    r = _cli(str(small_session), "-o", str(tmp_path / "o1"), "--calibration", str(tmp_path / "other.json"))
    assert r.returncode == 2 and "fitted for model set" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli(str(small_session), "-o", str(tmp_path / "o2"), "--calibration", str(cal), "--calibration", str(cal))
    assert r.returncode == 2 and "second calibration for squares" in r.stderr
    assert not (tmp_path / "o1" / "results").exists() and not (tmp_path / "o2" / "results").exists()


# ----------------------------------------------------------------------------------------------- slow: the issue


@pytest.fixture(scope="module")
def full_session(tmp_path_factory) -> Path:
    """The issue's synthetic EPU session: 1 atlas, 20 grid squares, 40 grid-square images (1024x1440)."""
    root = tmp_path_factory.mktemp("epu_full")
    info = make_epu_session(root, n_squares=20, per_square=2, seed=0)
    assert len(info["squares"]) == 20 and sum(len(s["images"]) for s in info["squares"]) == 40
    return root


def _kill_midway(cmd_args: list[str], outdir: Path, after: int) -> int:
    """Start a batch, SIGKILL its whole process group once `after` images are recorded; return how many were."""
    proc = subprocess.Popen([sys.executable, "-m", "ptolemy_rt", "batch", *cmd_args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state = outdir / ".state"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            done = len(list(state.rglob("*.json"))) if state.is_dir() else 0
            if done >= after or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the batch ended before it could be killed: {proc.stderr.read()}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return len(list(state.rglob("*.json")))


def _state_snapshot(outdir: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every finished image's files (results and state)."""
    snap = {}
    for sub in (".state", "results"):
        for p in (outdir / sub).rglob("*.json"):
            snap[str(p.relative_to(outdir))] = (p.stat().st_mtime_ns, p.read_bytes())
    return snap


def _check_resumed(outdir: Path, before: dict, stderr: str, n_done: int) -> None:
    after = _state_snapshot(outdir)
    # Nothing recomputed: every file of an image finished before the kill is untouched.
    finished = {k: v for k, v in before.items() if k.startswith(".state")}
    assert len(finished) >= n_done
    for key, value in before.items():
        if key.startswith(".state") or key.replace("results/", ".state/", 1) in finished:
            assert after[key] == value, key
    assert f"({len(finished)} resumed" in stderr


@pytest.mark.slow
def test_full_session_pool_kill_resume_and_dask(full_session, tmp_path):
    """The issue's done-means: the session end to end, killed midway and resumed, and the same on Dask."""
    args = ["--threads", "1", "--no-report"]
    plain = tmp_path / "plain"
    r = _cli(str(full_session), "-o", str(plain), "--workers", "2", *args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((plain / "summary.json").read_text())
    t = summary["totals"]
    assert (t["images"], t["atlases"], t["grid_square_images"], t["failed"]) == (41, 1, 40, 0)
    assert t["squares"] > 20 and t["holes"] > 40
    linked = {tuple(r["atlas_square"]) for r in summary["images"] if r["kind"] == "holes" and r["atlas_square"]}
    assert len(linked) == 20  # each grid-square folder sits on its own atlas square

    def without_seconds(path: Path) -> list[list[str]]:
        lines = [line.split(",") for line in path.read_text().splitlines()]
        col = lines[0].index("seconds")
        return [line[:col] + line[col + 1:] for line in lines]

    # Killed in the middle, then resumed: nothing recomputed, nothing lost, the same summary.
    killed = tmp_path / "killed"
    n = _kill_midway([str(full_session), "-o", str(killed), "--workers", "2", *args], killed, after=12)
    assert 12 <= n < 41
    before = _state_snapshot(killed)
    r = _cli(str(full_session), "-o", str(killed), "--workers", "2", "--resume", *args)
    assert r.returncode == 0, r.stderr
    _check_resumed(killed, before, r.stderr, n)
    assert (killed / "summary.json").read_bytes() == (plain / "summary.json").read_bytes()
    assert without_seconds(killed / "summary.csv") == without_seconds(plain / "summary.csv")

    # The same on a Dask LocalCluster of 2 worker processes, killed midway and resumed there too.
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed "
                                      "(pip install 'ptolemy-rt[dask]')")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        address = cluster.scheduler_address
        on_dask = tmp_path / "dask"
        n = _kill_midway([str(full_session), "-o", str(on_dask), "--dask", address, *args], on_dask, after=12)
        before = _state_snapshot(on_dask)
        r = _cli(str(full_session), "-o", str(on_dask), "--dask", address, "--resume", *args)
        assert r.returncode == 0, r.stderr
        _check_resumed(on_dask, before, r.stderr, n)

        def loaded():
            from ptolemy_rt import models

            return [len(m._sessions) for m in models._CACHE.values()]

        # One model set per worker, loaded by the worker plugin and kept for every task (two runs here).
        with distributed.Client(address) as client:
            per_worker = client.run(loaded)
        assert len(per_worker) == 2 and all(v == [3] for v in per_worker.values()), per_worker
    assert (on_dask / "summary.json").read_bytes() == (plain / "summary.json").read_bytes()
    assert without_seconds(on_dask / "summary.csv") == without_seconds(plain / "summary.csv")
    for row in summary["images"]:
        a = (plain / "results" / f"{row['id']}.json").read_bytes()
        assert a == (on_dask / "results" / f"{row['id']}.json").read_bytes() == \
            (killed / "results" / f"{row['id']}.json").read_bytes()


@pytest.mark.slow
def test_dask_unreachable_scheduler_is_a_usage_error(small_session, tmp_path):
    pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'ptolemy-rt[dask]')")
    r = _cli(str(small_session), "-o", str(tmp_path / "o"), "--dask", "tcp://127.0.0.1:9", "--no-report")
    assert r.returncode == 2 and "cannot reach the scheduler" in r.stderr


@pytest.mark.parametrize("field,value", [("count", "x"), ("count", float("inf")), ("exit_code", [1]),
                                         ("id", {"a": 1}), ("best_score", float("inf")), ("atlas_square", [1]),
                                         ("rows", "320"), ("extra", 1), pytest.param("rows", 10**400, id="rows-huge"),
                                         pytest.param("best_score", -10**400, id="best_score-huge"),
                                         pytest.param("count", 10**400, id="count-huge"),
                                         pytest.param("pixel_size_A", 1e-300, id="pixel-size-tiny"),
                                         pytest.param("cols", 0, id="cols-zero"), ("rows", 320.5)])
def test_resume_reruns_an_image_whose_state_row_is_damaged(tmp_path, field, value):
    """An edited or damaged .state row (a count of "x", an exit code of [1], Infinity) was taken as the earlier
    result, and the summary then failed with an internal error (exit 70): such an image runs again. A count past
    float's range was taken (hand check: two rows' counts of 4300 digits made totals str() cannot print: exit 70),
    and a pixel size or a shape no run writes (the square linking divided by zero, exit 70: a pixel size of 1e-300 Å
    in an EPU session, an atlas map of 0 columns in a SerialEM one)."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    image = tmp_path / "atlas_1.mrc"
    with mrcfile.new(image) as m:
        m.set_data(make_atlas(3, shape=(320, 320))[0])
    out = tmp_path / "out"
    assert run_batch([str(image)], out, kind="squares", workers=1, threads=1, progress=False, report=False) == 0
    state = next((out / ".state").glob("*.json"))
    saved = json.loads(state.read_text())
    saved["row"][field] = value
    state.write_text(json.dumps(saved))
    assert run_batch([str(image)], out, kind="squares", workers=1, threads=1, progress=False, resume=True) == 0
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert row["count"] == 10 and row["exit_code"] == 0 and "extra" not in row and row.get(field) != value


_SQUARE = '[[1, 1], [9, 1], [9, 9]]'


@pytest.mark.parametrize("text", ["[]", '{"targets": "x"}', '{"targets": [{"x": "a", "y": 1}]}',
                                  '{"targets": [{"x": 1, "y": 2, "score": "high", "vertices": %s}]}' % _SQUARE,
                                  '{"targets": [1]}', '{"targets": [{"x": 1, "y": 2}]}',
                                  '{"targets": [{"x": 1, "y": 2, "vertices": null}]}',
                                  '{"targets": [{"x": 1, "y": 2, "vertices": []}]}',
                                  '{"targets": [{"x": 1, "y": 2, "vertices": [[1, 1], [2, 2]]}]}',
                                  pytest.param('{"targets": [{"x": 1, "y": 2, "area": 1%s, "vertices": %s}]}'
                                               % ("0" * 400, _SQUARE), id="huge-area"),
                                  pytest.param('{"targets": [{"x": 1%s, "y": 2, "vertices": %s}]}'
                                               % ("0" * 400, _SQUARE), id="huge-x")])
def test_resume_reruns_an_image_whose_result_file_is_damaged(tmp_path, text):
    """Fuzz (resume, seed 3): a results/*.json that parsed but was not a result (a list) was resumed, and the
    report then failed with an internal error (exit 70); review: targets without a polygon (vertices absent:
    KeyError in the square linking; [] linked every hole to the square), and an int past float's range
    (math.isfinite's OverflowError: exit 70 on main)."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    image = tmp_path / "atlas_1.mrc"
    with mrcfile.new(image) as m:
        m.set_data(make_atlas(3, shape=(320, 320))[0])
    out = tmp_path / "out"
    assert run_batch([str(image)], out, kind="squares", workers=1, threads=1, progress=False) == 0
    result = next((out / "results").glob("*.json"))
    result.write_text(text)
    assert run_batch([str(image)], out, kind="squares", workers=1, threads=1, progress=False, resume=True) == 0
    assert len(json.loads(result.read_text())["targets"]) == 10 and (out / "index.html").is_file()


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_file_names_python_cannot_decode_are_text_in_every_output(tmp_path, locale):
    """Fuzz (environment): a name with a non-UTF-8 byte (anywhere) or any non-ASCII byte (under LANG=C) is kept
    by Python as lone surrogates: summary.csv's UTF-8 raised UnicodeEncodeError (the whole batch exit 70) and the
    JSON held unpaired surrogates. Now the names are text (decodable bytes decoded, others \\xNN), the same bytes
    in every locale."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    session = tmp_path / "session"
    session.mkdir()
    data, _ = make_atlas(3, (320, 320))
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(data)
    for name in (b"\xffatlas.mrc", "été atlas.mrc".encode()):
        with open(os.path.join(os.fsencode(session), name), "wb") as fh:
            fh.write((tmp_path / "a.mrc").read_bytes())
    out = tmp_path / "out"
    env = {**_env(), "LANG": locale, "LC_ALL": locale, "PYTHONUTF8": "0"}
    r = subprocess.run([sys.executable, "-m", "ptolemy_rt", "batch", str(session), "-o", str(out), "--kind",
                        "squares", "--workers", "1", "--threads", "1", "--no-progress"], capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    csv_text = (out / "summary.csv").read_bytes().decode("utf-8")  # strict: valid UTF-8
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    inputs = sorted(Path(row["input"]).name for row in summary["images"])
    assert inputs == ["\\xffatlas.mrc", "été atlas.mrc"] and "été atlas.mrc" in csv_text
    for result in (out / "results").iterdir():
        path = json.loads(result.read_text(encoding="utf-8"))["image"]["path"]
        assert path.endswith(("/\\xffatlas.mrc", "/été atlas.mrc")) and path.encode("utf-8")


def test_two_batches_sharing_an_output_folder_do_not_fail_each_others_write_check(tmp_path):
    """The write check made and removed one fixed file name in OUTDIR: two batches started together on one
    output folder removed each other's probe (FileNotFoundError: "cannot write here", exit 4), and a folder of
    that name failed every batch. Each check now uses a file of its own, and leaves nothing."""
    import threading

    import mrcfile

    from ptolemy_rt.batch import _check_writable
    from ptolemy_rt.synthetic import make_atlas

    out = tmp_path / "out"
    errors: list[OSError] = []

    def probe() -> None:
        for _ in range(2000):
            try:
                _check_writable(out)
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=probe) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and list(out.iterdir()) == []
    (out / ".ptolemy-rt-write-test").mkdir()
    image = tmp_path / "atlas_1.mrc"
    with mrcfile.new(image) as m:
        m.set_data(make_atlas(3, shape=(320, 320))[0])
    assert run_batch([str(image)], out, kind="squares", workers=1, threads=1, progress=False, report=False) == 0


def test_resume_never_reads_a_special_file_in_place_of_an_earlier_output(tmp_path):
    """--resume read the earlier run's .state rows and results with Path.read_text: a FIFO in place of a row
    waited for ever (the batch hung), /dev/zero behind a link read until memory ran out. They are read only when
    regular files of bounded size: the image runs again, and its outputs are not written through the FIFO or the
    link (exit 4, naming it)."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    session = tmp_path / "session"
    session.mkdir()
    for k in range(3):
        with mrcfile.new(session / f"atlas_{k}.mrc") as m:
            m.set_data(make_atlas(3, shape=(320, 320))[0])
    out = tmp_path / "out"
    assert run_batch([str(session)], out, kind="squares", workers=1, threads=1, progress=False, report=False) == 0
    (out / ".state" / "atlas_0.mrc.json").unlink()
    os.mkfifo(out / ".state" / "atlas_0.mrc.json")
    (out / ".state" / "atlas_1.mrc.json").unlink()
    (out / ".state" / "atlas_1.mrc.json").symlink_to("/dev/zero")
    (out / "results" / "atlas_2.mrc.json").unlink()
    os.mkfifo(out / "results" / "atlas_2.mrc.json")
    r = subprocess.run([sys.executable, "-m", "ptolemy_rt", "batch", str(session), "-o", str(out), "--kind", "squares",
                        "--workers", "1", "--threads", "1", "--resume", "--no-report"], capture_output=True, text=True,
                       env=_env(), timeout=120, check=False)
    assert r.returncode == 4, r.stderr
    rows = {row["id"]: row for row in json.loads((out / "summary.json").read_text())["images"]}
    assert all(rows[f"atlas_{k}.mrc"]["exit_code"] == 4 for k in range(3))
    assert "atlas_0.mrc.json: is a FIFO" in rows["atlas_0.mrc"]["error"]
    assert "atlas_1.mrc.json: is a symbolic link" in rows["atlas_1.mrc"]["error"]


def test_an_images_result_and_preview_are_written_as_one_set(tmp_path, capsys):
    """Fuzz campaign 12 (a disk filling up, on a 2 MB tmpfs): each of an image's files was written alone, so a
    result JSON with its targets was left beside no preview for a row marked failed (exit 4). They are now one
    set: both, or neither (an earlier run's result stays as it was)."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    data, _ = make_atlas(3, shape=(320, 320))
    with mrcfile.new(tmp_path / "atlas_1.mrc") as m:
        m.set_data(data)
    out = tmp_path / "out"
    (out / "images" / "atlas_1.mrc.jpg").mkdir(parents=True)  # the preview cannot be written
    done = _main(capsys, str(tmp_path / "atlas_1.mrc"), "-o", str(out), "--workers", "1", "--no-report")
    assert done.returncode == 4 and "atlas_1.mrc.jpg: is a directory" in done.stderr, done.stderr
    assert not (out / "results" / "atlas_1.mrc.json").exists()
    assert [p.name for p in out.rglob(".*")] == []


def test_the_targets_of_an_image_whose_outputs_were_not_written_are_not_in_the_totals(tmp_path, capsys):
    """Leftover of fuzz15, checked by hand (fuzz16): a row whose outputs could not be written (exit 4, status error)
    kept its count of squares in the summary's totals, which then counted targets written nowhere. The row keeps
    what was found (its error says the files are missing); the totals count the written images' targets alone."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    for k in (1, 2):
        with mrcfile.new(tmp_path / f"atlas_{k}.mrc") as m:
            m.set_data(make_atlas(3, shape=(320, 320))[0])
    out = tmp_path / "out"
    (out / "images" / "atlas_1.mrc.jpg").mkdir(parents=True)  # the preview cannot be written
    done = _main(capsys, str(tmp_path / "atlas_1.mrc"), str(tmp_path / "atlas_2.mrc"), "-o", str(out), "--workers",
                 "1", "--no-report")
    assert done.returncode == 4, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["id"]: row for row in summary["images"]}
    assert rows["atlas_1.mrc"]["status"] == "error" and rows["atlas_1.mrc"]["count"] > 0
    assert rows["atlas_2.mrc"]["status"] == "ok" and rows["atlas_2.mrc"]["count"] > 0
    assert summary["totals"]["squares"] == rows["atlas_2.mrc"]["count"]
    assert summary["totals"]["failed"] == 1


def test_the_output_folder_s_name_is_said_on_one_line_and_a_dangling_link_there_is_named(tmp_path, capsys):
    """Found by hand (fuzz16): `batch -o 'x<newline>y'` ended with a summary line split in two (the folder's name
    printed raw); `-o LINK` where LINK is a symbolic link to nothing failed as 'cannot write here ([Errno 17] File
    exists: ...)', of a name that seemed free. The name is escaped (x\\ny), the link said (exit 4 as before)."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    with mrcfile.new(tmp_path / "atlas_1.mrc") as m:
        m.set_data(make_atlas(3, shape=(320, 320))[0])
    odd = tmp_path / "x\ny"
    done = _main(capsys, str(tmp_path / "atlas_1.mrc"), "-o", str(odd), "--workers", "1", "--no-report")
    assert done.returncode == 0 and done.stderr.count("\n") == 1 and done.stderr.rstrip().endswith("x\\ny/")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    done = _main(capsys, str(tmp_path / "atlas_1.mrc"), "-o", str(link), "--workers", "1", "--no-report")
    assert done.returncode == 4 and done.stderr == f"error: -o {link}: cannot write here (a symbolic link to nothing)\n"

_CRASHING_WORKER = """
import multiprocessing
import os
import signal

import ptolemy_rt.batch as batch

_real = batch._process


def _process(item, config):  # a worker killed (for memory, a crash) on this one image (what the pool runs)
    if "crash" in item.id and multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(item, config)


batch._process = _process
"""


def test_a_pool_whose_workers_all_die_on_their_images_still_runs_the_good_ones(monkeypatch):
    """Review of fuzz12: when every image in flight killed its worker, a round had no result (only suspects, each
    failed alone), and all the good images still waiting failed with 'broke again before any image was done'."""
    from concurrent.futures.process import BrokenProcessPool

    import ptolemy_rt.batch as batch
    from ptolemy_rt.sessions import Item

    items = [Item(Path(f"/in/{name}.mrc"), f"{name}.mrc", "atlas", "files")
             for name in ["a_crash", "b_crash", "c_crash", "d", "e", "f", "g_crash", "h"]]
    rounds = []

    def fake_round(todo, config, workers):  # a pool of `workers`: the first workers + 1 are in flight
        rounds.append([i.id for i in todo])
        flight = todo[:workers + 1]
        if any("crash" in i.id for i in flight):  # a worker killed: the whole pool breaks, nothing done
            return flight, todo[workers + 1:], 0, BrokenProcessPool("killed")
        for item in flight:
            yield {"id": item.id, "status": "ok"}, {}, None
        if todo[workers + 1:]:
            return (yield from fake_round(todo[workers + 1:], config, workers))
        return None

    monkeypatch.setattr(batch, "_pool_round", fake_round)
    monkeypatch.setattr(batch, "_start_resource_tracker", lambda: None)
    rows = [row for row, _, _ in batch._pool(items, None, 2)]
    assert sorted(r["id"] for r in rows) == sorted(i.id for i in items)
    assert sorted(r["id"] for r in rows if r["status"] == "ok") == ["d.mrc", "e.mrc", "f.mrc", "h.mrc"]
    assert all("worker failed: BrokenProcessPool" in r["error"] for r in rows if r["status"] != "ok")
    assert len(rounds) < 20


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_own_image_only(tmp_path):
    """Fuzz campaign 12: one worker killed (the OOM killer, a crash in a decoder) broke the process pool, and every
    image not yet done failed with it: 67 of 80 images, exit 70. The images in flight are now retried one at a
    time in a pool of their own: only the image that kills its worker again fails."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    data, _ = make_atlas(3, shape=(320, 320))
    images = tmp_path / "in"
    images.mkdir()
    for name in ["atlas_0_crash", *(f"atlas_{k}" for k in range(1, 7))]:
        with mrcfile.new(images / f"{name}.mrc") as m:
            m.set_data(data)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_CRASHING_WORKER)  # imported by every process, the pool's included
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-m", "ptolemy_rt", "batch", str(images), "-o", str(tmp_path / "out"),
                           "--workers", "2", "--no-report"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 70, done.stderr
    rows = {r["id"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["images"]}
    assert rows["atlas_0_crash.mrc"]["exit_code"] == 70 and "BrokenProcessPool" in rows["atlas_0_crash.mrc"]["error"]
    assert sorted(i for i, r in rows.items() if r["status"] == "ok") == [f"atlas_{k}.mrc" for k in range(1, 7)]
    assert [line for line in done.stderr.splitlines() if "Traceback" in line] == []


def test_a_nav_map_file_name_too_long_to_look_up_fails_that_map_alone(tmp_path, capsys):
    """Fuzz campaign 12: a navigator's MapFile was looked up with Path.is_file, which raises for a name over the
    255-byte limit (ENAMETOOLONG): exit 70 for the whole batch. That map now fails alone; the other is read."""
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    data, _ = make_atlas(3, shape=(320, 320))
    with mrcfile.new(tmp_path / "atlas.mrc") as m:
        m.set_data(data)
    items = [("C:\\data\\" + "x" * 300 + ".mrc", 5), ("C:\\data\\atlas.mrc", 6)]
    (tmp_path / "s.nav").write_text("AdocVersion = 2.00\n" + "".join(
        f"\n[Item = {k}]\nType = 2\nMapFile = {name}\nMapID = {ident}\nMapSection = 0\nStageXYZ = 0 0 0\n"
        for k, (name, ident) in enumerate(items, 1)))
    done = _main(capsys, str(tmp_path / "s.nav"), "-o", str(tmp_path / "out"), "--workers", "1", "--no-report")
    assert done.returncode in (2, 4) and "internal error" not in done.stderr, done.stderr
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]
    assert [r["status"] for r in rows if r["id"].endswith("atlas.mrc")] == ["ok"]


@pytest.mark.slow  # a pool of two spawned workers: seconds
def test_pool_workers_say_warnings_as_the_command_line_does(tmp_path):
    """Found by hand (fuzz13): a batch's spawned workers printed Python's own two-line warnings ("/.../io.py:295:
    UserWarning: NAME: a stack of 3 sections ..." and the source line that warned), and numpy's RuntimeWarning from
    mrcfile's voxel size of an MRC header with mx = 0, naming no file; --workers 1 said "warning: ..." lines."""
    import cv2
    import mrcfile

    session = tmp_path / "in"
    session.mkdir()
    page = np.random.default_rng(0).integers(0, 200, (300, 300)).astype(np.uint8)
    assert cv2.imwritemulti(str(session / "atlas_a.tif"), [page, page, page])
    with mrcfile.new(session / "atlas_b.mrc") as m:
        m.set_data(page.astype(np.int16))
        m.header.mx = 0  # its voxel size divides by zero
    r = _cli(str(session), "-o", str(tmp_path / "out"), "--workers", "2", "--threads", "1", "--kind", "squares",
             "--no-report")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert f"warning: {session / 'atlas_a.tif'}: a stack of 3 sections; using section 0 (choose with --section)" \
        in lines
    assert all(line.startswith(("warning: ", "ptolemy-rt batch: ")) for line in lines), r.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_a_pool_worker_says_warnings_as_the_command_line_does(debug):
    """Review of fuzz13: a pool worker under --debug skipped quieting numpy's numeric warnings, which the command
    line quiets whatever --debug says; both now do (warning_lines.command_line_warnings), and both say warnings
    in Python's own form under --debug only."""
    code = ("import warnings, numpy as np; from ptolemy_rt.batch import BatchConfig, init_worker; "
            f"init_worker(BatchConfig('/nonexistent-models', 'cpu', 1, None, debug={debug}), ignore_sigint=False); "
            "print(np.geterr()['over'], warnings.showwarning.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ignore", "warnings" if debug else "ptolemy_rt.warning_lines"]


def _glob_tree(root: Path) -> None:
    for folder in ("a/b/c", "a/.h/d", "a/b/.snapshot/b", "xx/y", ".top/b"):
        (root / folder).mkdir(parents=True)
    for name in ("a/1.mrc", "a/b/2.mrc", "a/b/c/3.mrc", "a/.h/4.mrc", "a/.h/d/8.mrc", "a/.5.mrc", "xx/y/6.mrc",
                 "a/b/c/c7.txt", "a/b/.snapshot/b/2.mrc", ".top/b/9.mrc", ".top/.10.mrc", "a/b/c/.11.mrc"):
        (root / name).write_bytes(b"")
    (root / "a" / "ext").symlink_to(root / "xx")  # the raw data elsewhere: followed


_GLOB_PATTERNS = (
    "**", "**/", "**/*.mrc", "**/*", "**/b", "**/b/", "**/.h", "**/.h/", "**/.h/*.mrc", "**/.h/**", "**/.h/**/",
    "**/.*", "**/.*/", "**/.snapshot/**/*.mrc", ".top/**", ".top/**/", ".top/**/*.mrc", ".top/**/.*",
    "a/**", "a/**/", "a/**/*.mrc", "a/**/b/*.mrc", "a/**/.*", "a/**/.*/", "a/**/.*/**/*.mrc", "a/**/c", "a/**/c/",
    "a/b/**/", "a/b/c/**/", "a/b/c/**", "a/ext/**/", "*/**/*.mrc", "*/**/", "x*/**/*.mrc", "a/b/*", "a/b/*/",
    "./a/**/*.mrc", "./a/**/", "{root}/a/**/*.mrc", "{root}/a/**/", "{root}/**/.h/", "a/**/**/*.mrc", "**/b/**/",
)


@pytest.mark.skipif(platform.system() == "Windows", reason="symbolic links")
@pytest.mark.parametrize("pattern", _GLOB_PATTERNS)
def test_a_pattern_s_matches_are_glob_s(tmp_path, monkeypatch, pattern):
    """sessions._glob (fuzz 14: walks below a `**` without going round link loops) matches what glob.glob matches on a
    tree without loops: hidden folders and files (`**` matches none), a trailing separator (folders only: `g/s/**/`
    gave nothing), `**` first, in the middle and last, several `**`, magic before the `**`, a link to a folder
    elsewhere. (glob gives a path once for each way several `**` match it; _glob once.)"""
    import glob

    from ptolemy_rt.sessions import _glob

    _glob_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    pattern = pattern.format(root=tmp_path)
    ours, theirs = _glob(pattern), glob.glob(pattern, recursive=True)
    assert len(ours) == len(set(ours))
    if pattern.count("**") == 1:
        assert sorted(ours) == sorted(theirs)
    else:  # glob may give a folder with and without a trailing separator (the last `**` matching it or not)
        assert set(ours) <= set(theirs) and {p.rstrip("/") for p in ours} == {p.rstrip("/") for p in theirs}


@pytest.mark.skipif(platform.system() == "Windows", reason="symbolic links")
@pytest.mark.parametrize("pattern, walked", [
    ("**/*.mrc", []), ("a/**/*.mrc", []), ("**/.h/*.mrc", ["a/.h"]), ("a/**/.*/*.mrc", ["a/.h", "a/b/.snapshot"]),
    (".top/**/*.mrc", []),
])
def test_a_pattern_walks_no_hidden_folder_it_cannot_match(tmp_path, monkeypatch, pattern, walked):
    """`**` matches no hidden name (as in glob), so _glob does not walk a hidden folder unless a component starting
    with '.' may match it: a NetApp `.snapshot` folder (hourly copies of the whole tree) was walked as many times
    over, to match nothing."""
    from ptolemy_rt import sessions

    _glob_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    seen: list[str] = []
    walk = os.walk

    def recording(top, **kwargs):
        for folder, dirs, files in walk(top, **kwargs):
            seen.append(os.path.normpath(folder))
            yield folder, dirs, files

    monkeypatch.setattr(sessions.os, "walk", recording)
    sessions._glob(pattern)
    base = os.path.normpath(pattern.split("**")[0] or os.curdir)
    hidden = sorted({os.path.relpath(f) for f in seen if any(part.startswith(".") and part not in (".", "..")
                                                               for part in os.path.relpath(f, base).split(os.sep))})
    assert hidden == sorted(os.path.normpath(w) for w in walked + [f"{w}/d" for w in walked if w == "a/.h"]
                            + [f"{w}/b" for w in walked if w.endswith(".snapshot")])


def test_a_folder_and_a_pattern_over_it_take_the_same_files_hidden_ones_left_out(tmp_path, monkeypatch):
    """Leftover of robust14: a folder given to batch was walked by Path.rglob, hidden folders and files included (a
    NetApp .snapshot copy of the whole session, macOS's ._NAME resource forks, refused as corrupt images), while
    `FOLDER/**/*` (sessions._glob, as glob) leaves out every hidden name. A folder now takes what the pattern takes,
    and walks no hidden folder; a hidden folder given as such is walked (only the names below it count), and so is
    a .nav inside a hidden folder left out."""
    from ptolemy_rt import sessions
    from ptolemy_rt.sessions import discover

    session = tmp_path / "s"
    for folder in ("grid1/sub", "grid1/.snapshot/hourly", ".Trash", "grid2"):
        (session / folder).mkdir(parents=True)
    for name in ("grid1/a_atlas.mrc", "grid1/sub/b.tif", "grid1/._a_atlas.mrc", "grid1/.snapshot/hourly/a_atlas.mrc",
                 ".Trash/old.mrc", "grid2/c.png", ".d.mrc"):
        (session / name).write_bytes(b"")

    def paths(arg: str) -> list[str]:
        return sorted(str(i.path.relative_to(session)) for i in discover([arg], kind="squares")[0])

    want = ["grid1/a_atlas.mrc", "grid1/sub/b.tif", "grid2/c.png"]
    assert paths(str(session)) == paths(f"{session}/**/*") == want
    walked: list[str] = []
    walk = os.walk

    def recording(top, **kwargs):
        for folder, dirs, files in walk(top, **kwargs):
            walked.append(os.path.relpath(folder, session))
            yield folder, dirs, files

    monkeypatch.setattr(sessions.os, "walk", recording)
    paths(str(session))
    assert sorted(walked) == [".", "grid1", "grid1/sub", "grid2"]
    assert paths(str(session / ".Trash")) == [".Trash/old.mrc"]
    (session / ".Trash" / "old.nav").write_text("AdocVersion = 2.00\n")
    assert paths(str(session)) == want


@pytest.mark.skipif(not hasattr(signal, "alarm"), reason="no SIGALRM")
def test_a_pattern_below_link_loops_ends(tmp_path):
    """Hand-made fuzz 14: two links to '.' in a session folder made `batch "SESSION/**/*.mrc"` run for good (glob
    follows links to folders below a `**` round and round: 2**40 paths). The loop is not followed round."""
    from ptolemy_rt.sessions import discover

    session = tmp_path / "session"
    session.mkdir()
    (session / "a_atlas.mrc").write_bytes(b"")
    (session / "current").symlink_to(".")
    (session / "again").symlink_to("..")

    def late(signum, frame):
        raise TimeoutError("the pattern's expansion did not end")

    previous = signal.signal(signal.SIGALRM, late)
    signal.alarm(30)
    try:
        items, _ = discover([f"{session}/**/*.mrc"], kind="squares")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [Path(i.path).name for i in items] == ["a_atlas.mrc"]


_NAMES = st.sampled_from(["a", "b", ".h", "x.mrc", ".y.mrc"])


@pytest.mark.skipif(platform.system() == "Windows", reason="separators")
@settings(max_examples=60, deadline=None)
@given(tree=st.lists(st.lists(_NAMES, min_size=1, max_size=4), max_size=6),
       before=st.lists(st.sampled_from(["a", "*", ".h", ".*"]), max_size=2),
       after=st.lists(st.sampled_from(["a", "b", "*", ".h", ".*", "*.mrc", "x.mrc"]), max_size=2),
       trailing=st.booleans())
def test_a_pattern_s_matches_are_glob_s_on_small_trees(tree, before, after, trailing):
    """_glob equals glob.glob(recursive=True) on small trees without links: hidden folders and files, a trailing
    separator, `**` first, in the middle or last."""
    import glob
    import tempfile

    from ptolemy_rt.sessions import _glob

    pattern = "/".join([*before, "**", *after]) + ("/" if trailing else "")
    with tempfile.TemporaryDirectory() as root:
        for names in tree:  # the last name a file, the others folders; a name taken as both is left out
            folder = Path(root, *names[:-1])
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / names[-1]).touch()
            except OSError:
                pass
        cwd = os.getcwd()
        os.chdir(root)
        try:
            # glob gives `a/` for `a/**` where no folder `a` is (3.11); _glob nothing
            theirs = [p for p in glob.glob(pattern, recursive=True) if os.path.lexists(p)]
            assert sorted(_glob(pattern)) == sorted(theirs), pattern
        finally:
            os.chdir(cwd)


@pytest.mark.parametrize("layout", ["epu", "nav-stack", "nav-montage"])
def test_the_batch_process_loads_no_numpy(tmp_path, layout):
    """The batch process runs no image beside its workers: parsing, discovery (a SerialEM stack's MRC header
    included, and a montage stack's search for its .mdoc: review whole15), the model set's check, the kinds'
    tasks, its writing and the report load no numpy (60-100 ms of CPU it took from the workers)."""
    if layout == "epu":
        make_epu_session(tmp_path / "in", n_squares=1, per_square=1, seed=3, medmag_shape=(512, 720))
        target = tmp_path / "in"
    else:  # a .nav naming three maps of one stack (sessions._sections_in reads its header)
        import mrcfile

        (tmp_path / "in").mkdir()
        with mrcfile.new(tmp_path / "in" / "MMM.mrc") as m:
            m.set_data(np.random.default_rng(0).normal(100, 10, (3, 256, 256)).astype(np.float32))
        target = tmp_path / "in" / "s.nav"
        target.write_text("AdocVersion = 2.00\n\n" + "".join(
            f"[Item = {z}]\nType = 2\nMapFile = MMM.mrc\nMapSection = {z}\n"
            + ("MapMontage = 1\n" if layout == "nav-montage" else "") + "\n" for z in range(3)))
        if layout == "nav-montage":  # no .mdoc beside it: one image; and a second map, to run a pool
            with mrcfile.new(tmp_path / "in" / "LMM.mrc") as m:
                m.set_data(np.random.default_rng(1).normal(100, 10, (256, 256)).astype(np.float32))
            with open(target, "a") as fh:
                fh.write("[Item = 9]\nType = 2\nMapFile = LMM.mrc\nMapSection = 0\n\n")
    code = ("import json, sys; from ptolemy_rt.cli import main; "
            f"code = main(['batch', {str(target)!r}, '-o', {str(tmp_path / 'out')!r}, '--kind', 'holes', "
            "'--workers', '2', '--threads', '1', '--no-progress']); "
            "print(json.dumps([code, 'numpy' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    code, numpy_loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert code in (0, 2) and numpy_loaded is False, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["images"]) == (3 if layout == "nav-stack" else len(summary["images"])) > 0


def test_a_worker_starts_the_sessions_of_its_batchs_kinds():
    from ptolemy_rt.models import TASKS

    assert BatchConfig(None, "cpu", 1, None).tasks() == TASKS  # kinds not named: any
    assert BatchConfig(None, "cpu", 1, None, kinds=["holes", "holes", None]).tasks() == ("hole_unet", "hole_cnn")
    assert BatchConfig(None, "cpu", 1, None, kinds=["squares"]).tasks() == ("square_cnn",)
    assert BatchConfig(None, "cpu", 1, None, kinds=[None]).tasks() == ()
    # Which sessions a worker starts changes no result: not part of what --resume compares.
    assert BatchConfig(None, "cpu", 1, None, kinds=["holes"]).key("holes") == BatchConfig(None, "cpu", 1, None).key(
        "holes")


def test_a_batch_run_in_its_own_process_quiets_numpys_warnings(tmp_path):
    """`batch --workers 1` runs its images in the command's process, whose numpy the command line does not load:
    the command line's warnings filter (warning_lines.quiet_numerics) quiets what numpy says once loaded (mrcfile's
    voxel size of a header with mx = 0 divides by zero; no RuntimeWarning naming no file)."""
    import mrcfile

    session = tmp_path / "in"
    session.mkdir()
    page = np.random.default_rng(0).integers(0, 200, (300, 300)).astype(np.int16)
    with mrcfile.new(session / "atlas_b.mrc") as m:
        m.set_data(page)
        m.header.mx = 0
    r = _cli(str(session), "-o", str(tmp_path / "out"), "--workers", "1", "--threads", "1", "--kind", "squares",
             "--no-report")
    assert r.returncode == 0, r.stderr
    assert "encountered" not in r.stderr and all(line.startswith(("warning: ", "ptolemy-rt batch: "))
                                                 for line in r.stderr.strip().splitlines()), r.stderr


def test_a_holes_images_marks_go_to_the_report_not_to_disk(small_session, tmp_path):
    """A batch's workers send a holes image's report.hole_marks beside its files when asked (run_batch writing a
    report: batch._process); run_batch writes the files only. process_one's `files` hold files only, whatever the
    config (a caller writing every entry met a name with a NUL byte: review of batch15; review whole15 took the
    marks out of `files`)."""
    from ptolemy_rt.batch import _process
    from ptolemy_rt.report import hole_marks

    items, _ = discover([str(small_session)])
    item = next(i for i in items if i.kind == "holes")
    row, files, marks = _process(item, BatchConfig(None, "cpu", 1, None, marks=True))
    assert row["status"] in ("ok", "empty")
    assert marks is not None and marks == hole_marks(json.loads(files[f"results/{item.id}.json"]))
    assert _process(item, BatchConfig(None, "cpu", 1, None))[2] is None
    for config in (BatchConfig(None, "cpu", 1, None), BatchConfig(None, "cpu", 1, None, marks=True)):
        row_quiet, files_quiet = process_one(item, config)
        assert files_quiet == files and all("\0" not in name for name in files_quiet)
    out = tmp_path / "out"
    assert run_batch([str(item.path)], out, kind="holes", workers=1, threads=1, progress=False) == 0
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.parent.name != ".state") == sorted(
        [f"{item.path.name}.json", f"{item.path.name}.jpg", "index.html", "summary.csv", "summary.json"])


def test_marks_that_fail_leave_no_files_beside_the_error_row(small_session, monkeypatch):
    """Review of batch15: the marks were computed after both files were in `files`, so a failure there (a
    MemoryError on a huge result) left a result and a preview to be written beside an error row."""
    from ptolemy_rt import report

    def failing(record):
        raise MemoryError

    monkeypatch.setattr(report, "hole_marks", failing)
    items, _ = discover([str(small_session)])
    item = next(i for i in items if i.kind == "holes")
    row, files = process_one(item, BatchConfig(None, "cpu", 1, None, marks=True))
    assert row["status"] == "error" and row["exit_code"] == 2 and files == {}


def test_a_pool_worker_ends_without_the_interpreters_teardown():
    """The batch's pool waits for its workers to exit before the summaries and the report: a worker ends with
    os._exit after flushing its streams (onnxruntime's and every module's teardown took 0.6-1 s of wall clock at
    the end of each batch), so exit handlers registered before it do not run; what it printed is kept."""
    code = ("import atexit, sys; from ptolemy_rt.batch import BatchConfig, init_pool_worker; "
            "atexit.register(print, 'teardown'); "
            "init_pool_worker(BatchConfig('/nonexistent-models', 'cpu', 1, None)); "
            "print('printed'); sys.stderr.write('said')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
                       check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "printed\n", "said")


def test_link_squares_hands_the_report_the_atlas_results_it_read(small_session, tmp_path):
    """Review whole15 item 12: the square linking and the report each read and parsed every atlas result at a
    batch's end. link_squares returns those it read that the report finds sound, and the page drawn from them is
    the page drawn from the files; one whose targets lack centres still links but is not handed over."""
    from ptolemy_rt.report import render_report

    out = tmp_path / "out"
    assert run_batch([str(small_session)], out, workers=1, threads=1, progress=False) == 0
    items, _ = discover([str(small_session)])
    rows = {r["id"]: r for r in json.loads((out / "summary.json").read_text())["images"]}
    records = link_squares(out, items, rows)
    atlases = [i.id for i in items if i.kind == "squares"]
    assert sorted(records) == atlases and all(
        records[a] == json.loads((out / "results" / f"{a}.json").read_text()) for a in atlases)
    assert render_report(out, records=records) == render_report(out) == (out / "index.html").read_text("utf-8")
    result = out / "results" / f"{atlases[0]}.json"
    centreless = json.loads(result.read_text())
    for t in centreless["targets"]:
        del t["x"], t["y"]
    result.write_text(json.dumps(centreless))
    linked = {i: r["atlas_square"] for i, r in rows.items()}
    assert link_squares(out, items, rows) == {} and {i: r["atlas_square"] for i, r in rows.items()} == linked
    assert any(linked.values())


def test_a_worker_is_started_with_the_batch_s_signals_held_and_releases_them_itself(tmp_path, monkeypatch):
    """Fuzz16 (seed 241000015, batch_signals): a SIGTERM or Ctrl-C reaching the batch while its pool started a
    worker, between the worker's start and the data sent to it, left the worker reading a closed pipe: 'EOFError: Ran
    out of input', its traceback under the batch's one-line 'interrupted'. Each submit (which starts a worker when
    one is due) runs with SIGINT, SIGTERM and SIGHUP held, delivered right after; the worker, which inherits the
    mask, ignores Ctrl-C and hangups before it releases them."""
    import concurrent.futures
    import signal

    import ptolemy_rt.batch as batch

    seen = []

    class Executor:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, fn, item, config):
            seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
            future = concurrent.futures.Future()
            future.set_result(({"id": item.id}, {}, None))
            return future

        def shutdown(self, **kwargs):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Executor)
    items = [batch.Item(path=tmp_path / f"{k}.mrc", id=f"{k}.mrc", kind="squares", source="file") for k in range(3)]
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert sorted(r[0]["id"] for r in batch._pool_round(items, BatchConfig(None, "cpu", 1, None), 2)) == \
        ["0.mrc", "1.mrc", "2.mrc"]
    assert len(seen) == 3 and all({signal.SIGINT, signal.SIGTERM} <= mask for mask in seen)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    child = ("import signal, sys\n"
             "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})\n"
             "import ptolemy_rt.batch as b\n"
             "b.init_pool_worker(b.BatchConfig('/nonexistent', 'cpu', 1, None))\n"
             "mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
             "print(sorted(int(s) for s in mask), signal.getsignal(signal.SIGINT) is signal.SIG_IGN, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)
    assert done.stdout.strip() == "[] True", done.stderr


@pytest.mark.parametrize("raised_at", ["hold", "submit"])
def test_an_interrupt_while_the_pool_starts_a_worker_leaves_no_signal_blocked(tmp_path, monkeypatch, raised_at):
    """Review of fuzz16 (377be66): pthread_sigmask runs the handler of a signal that came just before, after it has
    changed the mask: the KeyboardInterrupt it raised while the signals were being held escaped before the old mask
    was returned, and the batch went on with Ctrl-C, SIGTERM and hangups blocked for good. Whatever is raised while
    they are held (here the handler's interrupt, or the submit's own failure), the mask is restored."""
    import concurrent.futures
    import signal

    import ptolemy_rt.batch as batch

    real = signal.pthread_sigmask

    def mask_then_interrupt(how, signals):  # the mask changed, then a pending Ctrl-C's handler run
        old = real(how, signals)
        if how == signal.SIG_BLOCK and signal.SIGINT in set(signals):
            raise KeyboardInterrupt
        return old

    class Executor:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, fn, item, config):
            raise RuntimeError("the pool could not start a worker")

        def shutdown(self, **kwargs):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Executor)
    if raised_at == "hold":
        monkeypatch.setattr(signal, "pthread_sigmask", mask_then_interrupt)
    items = [batch.Item(path=tmp_path / "0.mrc", id="0.mrc", kind="squares", source="file")]
    before = real(signal.SIG_BLOCK, [])
    with pytest.raises(KeyboardInterrupt if raised_at == "hold" else RuntimeError):
        list(batch._pool_round(items, BatchConfig(None, "cpu", 1, None), 1))
    assert real(signal.SIG_BLOCK, []) == before
