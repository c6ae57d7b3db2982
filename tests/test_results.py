"""Result objects and writers: our JSON, the original's JSON, CSV and TXT."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt.results import (
    Hole,
    HoleResult,
    ImageInfo,
    Square,
    SquareResult,
    format_result,
    select,
    sort_targets,
    summary_line,
    table,
    with_pixel_size,
    write_result,
)

from .conftest import synthetic_atlas

INFO = ImageInfo(path="a.mrc", shape=(100, 200), pixel_size_A=None, section=None)
VERTS = ((10.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 10.0))


def _square(x, y, score, **kw):
    verts = tuple((vx + x - 10, vy + y - 10) for vx, vy in VERTS)
    return Square(x=x, y=y, vertices=verts, area=50.0, brightness=kw.get("b", 100.0), score=score,
                  scores={"cnn": score})


def _result(squares):
    return SquareResult(squares=sort_targets(squares), angle_deg=45.0, image=INFO,
                        models={"name": "m"}, reason=None, timings={"cnn": 0.1})


def test_sort_by_score_then_y_then_x():
    a, b, c, d = _square(1, 5, 0.5), _square(0, 5, 0.5), _square(9, 1, 0.5), _square(3, 3, 0.9)
    none = _square(0, 0, None)
    assert sort_targets([a, none, b, c, d]) == (d, c, b, a, none)


def test_json_has_no_timings_and_is_deterministic():
    r = _result([_square(20, 30, 0.3), _square(40, 50, 0.7)])
    text = format_result(r)
    again = format_result(SquareResult(**{**r.__dict__, "timings": {"cnn": 99.0}}))
    assert text == again
    d = json.loads(text)
    assert list(d) == ["version", "kind", "models", "image", "angle_deg", "mesh", "reason", "targets"]
    assert [t["score"] for t in d["targets"]] == [0.7, 0.3]
    assert "timings" not in text


def test_compat_json_matches_original_layout():
    r = _result([_square(20.7, 30.2, 0.3)])
    text = format_result(r, compat=True)
    assert text.count("\n") == 1  # Leginon reads only the first line
    rec = json.loads(text)[0]
    assert list(rec) == ["vertices", "center", "area", "brightness", "score"]
    # centre: int() truncation of the vertex mean, not rounding
    assert rec["center"] == [21, 30]  # +0.5: the original's origin is the pixel corner
    hole = Hole(x=-0.5, y=3.0, vertices=((-1.0, 2.0), (-1.0, 4.0), (0.0, 4.0), (0.0, 2.0)), area=4.0, score=0.2,
                scores={"unet": 0.2, "cnn": None})
    hr = HoleResult(holes=(hole,), angle_deg=10.0, spacing_px=20.0, basis=((20.0, 0.0), (0.0, 20.0)),
                    origin=(0.0, 0.0), image=INFO, models={}, reason=None)
    rec = json.loads(format_result(hr, compat=True))[0]
    assert list(rec) == ["vertices", "center", "area", "score"] and rec["center"] == [0, 3]  # int(-0.5 + 0.5)


def test_nan_and_numpy_become_plain_json():
    sq = Square(x=np.float32(1.5), y=np.float64(2.0), vertices=VERTS, area=np.int64(7), brightness=float("nan"),
                score=None, scores={"cnn": float("inf")})
    d = json.loads(format_result(_result([sq])))
    t = d["targets"][0]
    assert t["brightness"] is None and t["score"] is None and t["scores"]["cnn"] is None
    assert t["area"] == 7 and t["x"] == 1.5


def test_txt_and_csv():
    r = _result([_square(20, 30, 0.3), _square(40, 50, 0.7)])
    rows = [line.split("\t") for line in format_result(r, "txt").splitlines()]
    csv_rows = list(csv.reader(io.StringIO(format_result(r, "csv"))))
    assert rows == csv_rows  # one table, two separators
    assert rows[0][:6] == ["x", "y", "score", "area", "brightness", "score_cnn"]
    assert rows[0][6:14] == ["x_um", "y_um", "area_um2", "class", "found_by", "row", "col", "edge"]
    assert rows[0][14:] == [f"vertex{i}_{a}" for i in range(1, 5) for a in "xy"]
    assert rows[1][:3] == ["40", "50", "0.7"] and rows[2][:3] == ["20", "30", "0.3"]
    assert rows[1][6:9] == ["", "", ""]  # pixel size unknown: empty, never a guess
    assert rows[1][9:14] == ["", "", "", "", ""]  # no mesh lattice: empty


def test_csv_has_the_square_class_and_lattice_place():
    on = replace(_square(20, 30, 0.3), row=2, col=5, found_by="lattice", square_class="thick", edge=False)
    r = _result([on, _square(40, 50, 0.7)])
    rows = list(csv.reader(io.StringIO(format_result(r, "csv"))))
    d = dict(zip(rows[0], rows[2]))
    assert (d["class"], d["found_by"], d["row"], d["col"], d["edge"]) == ("thick", "lattice", "2", "5", "false")
    assert json.loads(format_result(r, "json"))["targets"][1]["class"] == "thick"
    with pytest.raises(ValueError):
        format_result(r, "xml")


def test_empty_result_with_reason(tmp_path):
    r = SquareResult(squares=(), angle_deg=None, image=INFO, models={}, reason="constant image")
    d = json.loads(write_result(r, tmp_path / "o.json"))
    assert d["targets"] == [] and d["reason"] == "constant image"
    assert json.loads((tmp_path / "o.json").read_text()) == d
    assert format_result(r, compat=True) == "[]\n"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4),
                          st.one_of(st.none(), st.floats(0, 1))), max_size=20))
def test_sorted_output_round_trips(items):
    squares = [_square(x, y, s) for x, y, s in items]
    r = _result(squares)
    d = json.loads(format_result(r))
    scores = [t["score"] for t in d["targets"]]
    present = [s for s in scores if s is not None]
    assert present == sorted(present, reverse=True)
    assert all(s is None for s in scores[len(present):])
    for t in d["targets"]:
        assert all(math.isfinite(v) for p in t["vertices"] for v in p)


# ---- physical units, selection, formats (issue 14) ----

def _holes(diameter=None, scores=(0.9, 0.4, None), on_film=None):
    on_film = on_film or (None,) * len(scores)
    holes = [Hole(x=10.0 * (i + 1), y=20.0, vertices=((0.0, 0.0), (0.0, 4.0), (4.0, 4.0), (4.0, 0.0)), area=16.0,
                  score=s, scores={"cnn": s}, diameter_px=diameter, on_film=f)
             for i, (s, f) in enumerate(zip(scores, on_film))]
    return HoleResult(holes=sort_targets(holes), angle_deg=10.0, spacing_px=20.0,
                      basis=((20.0, 0.0), (0.0, 20.0)), origin=(0.0, 0.0), image=INFO, models={}, reason=None)


def test_physical_units_when_the_pixel_size_is_known():
    sq = _result([_square(99.5, 49.5, 0.5), _square(0.0, 0.0, 0.4)])  # INFO: 100 rows x 200 cols
    d = json.loads(format_result(with_pixel_size(sq, 12.5, "option")))
    assert d["image"]["pixel_size_A"] == 12.5 and d["image"]["pixel_size_nm"] == 1.25
    assert d["image"]["pixel_size_source"] == "option"
    centre, corner = d["targets"]
    assert centre["x_um"] == 0.0 and centre["y_um"] == 0.0  # (199/2, 99/2) is the image centre
    assert corner["x_um"] == pytest.approx(-99.5 * 1.25e-3) and corner["y_um"] == pytest.approx(-49.5 * 1.25e-3)
    assert corner["area_um2"] == pytest.approx(50.0 * 1.25e-3 ** 2)
    assert corner["x"] == 0.0 and corner["area"] == 50.0  # pixel fields stay
    h = json.loads(format_result(with_pixel_size(_holes(diameter=8.0), 40.0, "mdoc")))
    assert h["lattice"]["spacing_um"] == pytest.approx(20.0 * 4e-3)
    assert all(t["diameter_px"] == 8.0 and t["diameter_um"] == pytest.approx(8.0 * 4e-3) for t in h["targets"])


def test_unknown_pixel_size_is_null_never_a_placeholder():
    for r in (_result([_square(5, 5, 0.5)]), _holes(diameter=None)):
        placeholder = SquareResult(**{**r.__dict__, "image": ImageInfo("a.mrc", (100, 200), pixel_size_A=1.0)}) \
            if r.kind == "squares" else r
        d = json.loads(format_result(with_pixel_size(placeholder, None, "mrc-header")))
        assert d["image"]["pixel_size_A"] is None and d["image"]["pixel_size_nm"] is None
        assert d["image"]["pixel_size_source"] is None
        for t in d["targets"]:
            assert t["x_um"] is None and t["y_um"] is None
            assert t.get("area_um2", t.get("diameter_um")) is None
    assert json.loads(format_result(with_pixel_size(_holes(), 0.0)))["image"]["pixel_size_A"] is None
    # the Python API path: an image reader's 1 Å placeholder in ImageInfo is reported as unknown too
    raw = SquareResult(squares=(_square(5, 5, 0.5),), angle_deg=None, image=ImageInfo("a.mrc", (100, 200), 1.0),
                       models={})
    assert json.loads(format_result(raw))["image"]["pixel_size_A"] is None
    assert json.loads(format_result(raw))["targets"][0]["x_um"] is None
    given = json.loads(format_result(with_pixel_size(raw, 1.0, "option")))  # a real 1 Å, said so explicitly
    assert given["image"]["pixel_size_A"] == 1.0 and given["targets"][0]["x_um"] is not None


def test_compat_output_is_unchanged_by_units_selection_and_pretty():
    """`--compat ptolemy` is the original's bytes: pixel size, diameters and --pretty change nothing in it."""
    sq = _result([_square(20.5, 30.25, 0.3)])
    expected = ('[{"vertices": [[21.0, 25.75], [16.0, 30.75], [21.0, 35.75], [26.0, 30.75]], "center": [21, 30], '
                '"area": 50.0, "brightness": 100.0, "score": 0.3}]\n')
    assert format_result(sq, compat=True) == expected
    assert format_result(with_pixel_size(sq, 30.0, "option"), compat=True, pretty=True) == expected
    holes = _holes(diameter=7.0)
    assert format_result(with_pixel_size(holes, 30.0), compat=True) == format_result(_holes(), compat=True)


def test_json_is_one_line_unless_pretty():
    for r in (_result([_square(1, 2, 0.5)]), _holes()):
        one = format_result(r)
        assert one.count("\n") == 1 and one.endswith("\n")
        pretty = format_result(r, pretty=True)
        assert pretty.count("\n") > 5 and json.loads(pretty) == json.loads(one)


@pytest.mark.parametrize("kind", ["squares", "holes"])
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("fmt", ["json", "csv", "txt"])
def test_every_format_has_the_fields_of_its_json(kind, compat, fmt):
    r = (_result([_square(20.25, 30.5, 0.3), _square(40, 50, None)]) if kind == "squares"
         else _holes(6.0, on_film=(True, False, None)))
    r = with_pixel_size(r, 20.0, "option")
    text = format_result(r, fmt=fmt, compat=compat)
    if compat:
        records = json.loads(format_result(r, compat=True))
        expected = [[v for p in rec["vertices"] for v in p] + rec["center"] + [rec["area"]]
                    + ([rec["brightness"]] if kind == "squares" else []) + [rec["score"]] for rec in records]
        fields = ["center_x", "center_y", "area", "score"] + (["brightness"] if kind == "squares" else [])
    else:
        targets = json.loads(format_result(r))["targets"]
        fields = ["x", "y", "x_um", "y_um", "area", "score", "vertex1_x", "vertex4_y"]
        fields += ["area_um2", "brightness"] if kind == "squares" else ["diameter_px", "diameter_um", "on_film"]
        expected = None
    if fmt == "json":
        assert text.count("\n") == 1
        return
    rows = [line.split("\t") for line in text.splitlines()] if fmt == "txt" else list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert set(fields) <= set(header) and len(body) == len(r.targets)
    if not compat:  # every field of the JSON's targets is a column (vertices and scores flattened)
        assert {k for t in targets for k in t} - {"vertices", "scores"} <= set(header)
    booleans = {"true": True, "false": False}  # as the JSON writes them
    parse = [[None if v == "" else booleans[v] if v in booleans else float(v) for v in row] for row in body]
    if compat:
        assert parse == [[None if v is None else float(v) for v in row] for row in expected]
    else:
        for row, t in zip(parse, targets):
            for name, value in zip(header, row):
                if name.startswith("vertex"):
                    i, axis = int(name[6]) - 1, "xy".index(name[-1])
                    want = t["vertices"][i][axis]
                elif name.startswith("score_"):
                    want = t["scores"][name[6:]]
                else:
                    want = t[name]
                assert value == (None if want is None else pytest.approx(want)), name


def test_table_header_even_when_empty():
    r = SquareResult(squares=(), angle_deg=None, image=INFO, models={}, reason="constant image")
    header, rows = table(r)
    assert rows == [] and header[:2] == ["x", "y"]
    assert format_result(r, "csv").splitlines() == [",".join(header)]
    assert format_result(r, "txt", compat=True).splitlines()[0].startswith("vertex1_x\t")


def test_select_top_and_min_score():
    r = _holes(scores=(0.9, 0.4, None, 0.7))
    assert [h.score for h in select(r, top=2).holes] == [0.9, 0.7]
    assert [h.score for h in select(r, min_score=0.5).holes] == [0.9, 0.7]
    assert [h.score for h in select(r, top=1, min_score=0.5).holes] == [0.9]
    assert select(r) is r and select(r, top=10) is r
    empty = select(r, min_score=0.95)
    assert empty.holes == () and "0.95" in empty.reason and "--min-score" in empty.reason
    assert select(r, top=0).reason == "--top 0"
    with pytest.raises(ValueError):
        select(r, top=-1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=15), st.one_of(st.none(), st.integers(0, 20)),
       st.one_of(st.none(), st.floats(0, 1)))
def test_select_keeps_the_best_in_order(scores, top, min_score):
    r = _holes(scores=tuple(scores))
    kept = select(r, top=top, min_score=min_score).holes
    eligible = [h for h in r.holes if min_score is None or (h.score is not None and h.score >= min_score)]
    assert list(kept) == eligible[: top if top is not None else None]


def test_summary_line_adds_up():
    r = SquareResult(squares=(_square(1, 1, 0.5),), angle_deg=None, image=INFO, models={},
                     timings={"read": 0.010, "mixture": 0.020, "total": 0.031})
    line = summary_line("a.mrc", r, 0.050, "cpu", found=3)
    assert line.startswith("a.mrc: 1 squares (of 3 found); 50.0 ms total = read 10.0 + mixture 20.0 + other 20.0 ms")
    assert "total" not in line.split("total")[1]  # one total: the stages and `other` add up to it
    assert "pixel size unknown" in line
    assert "1.25 nm/px (option)" in summary_line("a.mrc", with_pixel_size(r, 12.5, "option"), 0.05, "cpu")


def test_cli_every_format_with_and_without_compat(tmp_path, capsys):
    """End to end: -f json|csv|txt x --compat, --pretty, --top, --min-score (squares, geometry only)."""
    import mrcfile

    from ptolemy_rt.cli import main

    data, _ = synthetic_atlas(3)
    path = tmp_path / "atlas.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 380.0
    base = ["squares", str(path), "--no-score", "--top", "4"]
    assert main(base) == 0
    ours = json.loads(capsys.readouterr().out)
    assert len(ours["targets"]) == 4 and ours["image"]["pixel_size_nm"] == 38.0
    assert main([*base, "--compat", "ptolemy"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    for fmt in ("csv", "txt"):
        for compat, records in ((False, ours["targets"]), (True, theirs)):
            assert main([*base, "-f", fmt] + (["--compat", "ptolemy"] if compat else [])) == 0
            lines = capsys.readouterr().out.splitlines()
            header = lines[0].split("," if fmt == "csv" else "\t")
            assert len(lines) == 1 + len(records)
            if compat:
                assert header[-5:] == ["center_x", "center_y", "area", "brightness", "score"]
                assert [int(v) for v in lines[1].split("," if fmt == "csv" else "\t")[8:10]] == records[0]["center"]
            else:
                assert header[:5] == ["x", "y", "score", "area", "brightness"] and "area_um2" in header
    assert main([*base, "--pretty"]) == 0
    pretty = capsys.readouterr().out
    assert pretty.count("\n") > 10 and json.loads(pretty) == ours
    assert main(["squares", str(path), "--no-score", "--min-score", "0.5"]) == 0  # unscored: none kept, with a reason
    out, err = capsys.readouterr()
    assert json.loads(out)["targets"] == [] and "--min-score" in json.loads(out)["reason"] and "no squares" in err


@pytest.mark.parametrize("pixel", [1e300, 1e8, float("inf"), float("nan"), -1.0, "x"])
def test_an_absurd_pixel_size_of_an_image_is_unknown_not_an_overflow(pixel):
    """Fuzz (api_options): find_squares(Image(data, pixel_size_A=1e300)) raised OverflowError out of to_dict
    (its µm² squared the pixel size); a pixel size beyond 1 mm (metadata.PLAUSIBLE_A) is unknown, as NaN was."""
    from ptolemy_rt import Image, find_squares
    from ptolemy_rt.synthetic import make_atlas

    data, _ = make_atlas(3, shape=(320, 320))
    result = find_squares(Image(data=data.astype(np.float32), pixel_size_A=pixel), models=False)
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["image"]["pixel_size_A"] is None and all(t["area_um2"] is None for t in d["targets"]) and d["targets"]
    known = find_squares(Image(data=data.astype(np.float32), pixel_size_A=1e7), models=False).to_dict()
    assert known["image"]["pixel_size_A"] == 1e7 and all(math.isfinite(t["area_um2"]) for t in known["targets"])
