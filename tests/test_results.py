"""Result objects and writers: our JSON, the original's JSON, CSV and TXT."""

from __future__ import annotations

import csv
import io
import json
import math

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
    sort_targets,
    write_result,
)

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
    assert list(d) == ["version", "kind", "models", "image", "angle_deg", "reason", "targets"]
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
    assert format_result(r, "txt") == "40\t50\n20\t30\n"
    rows = list(csv.reader(io.StringIO(format_result(r, "csv"))))
    assert rows[0] == ["x", "y", "score", "area", "brightness", "score_cnn"]
    assert rows[1][:3] == ["40", "50", "0.7"]
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
