"""Overlays (ptolemy_rt.overlay): outlines where the targets are, coloured by score on a fixed 0-1 scale, the
image kept elsewhere, and a legend strip (colour bar, counts, line styles, scale bar) below the image."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt.errors import OutputError
from ptolemy_rt.overlay import COLOUR_MAP, UNSCORED, layout, render_overlay, scale_bar, score_colour, write_overlay
from ptolemy_rt.results import Hole, HoleResult, ImageInfo, Square, SquareResult


def _square(x0: float, y0: float, side: float, score: float | None, **kw) -> Square:
    verts = ((x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side))
    return Square(x=x0 + side / 2, y=y0 + side / 2, vertices=verts, area=side * side, brightness=1.0, score=score,
                  **kw)


def _result(targets, shape, pixel_size_A=None) -> SquareResult:
    info = ImageInfo(path=None, shape=shape, pixel_size_A=pixel_size_A, section=None,
                     pixel_size_source="option" if pixel_size_A else None)
    return SquareResult(tuple(targets), 0.0, info, {})


def _grey_image(shape=(200, 300)) -> np.ndarray:
    data = np.full(shape, 50.0, np.float32)
    data[0, 0] = 0.0
    data[-1, -1] = 100.0  # the stretch maps 50 to mid-grey
    return data


def test_outlines_are_drawn_at_their_vertices_in_score_colours():
    data = _grey_image()
    best, worst = _square(20, 30, 60, 1.0), _square(180, 100, 60, 0.0)
    picture = render_overlay(data, _result([best, worst], data.shape), legend=False)
    assert picture.shape == (200, 300, 3) and picture.dtype == np.uint8
    grey = picture[150, 120]
    assert grey[0] == grey[1] == grey[2]  # untouched pixels stay grey
    # Edge midpoints: the top edge of the best box is red (BGR), the bottom edge of the worst is blue.
    top_best = picture[30, 50].astype(int)
    bottom_worst = picture[160, 210].astype(int)
    assert top_best[2] > 200 and top_best[0] < 60, top_best
    assert bottom_worst[0] > 200 and bottom_worst[2] < 60, bottom_worst
    # Inside a box (away from the centre dot and rank label) the image shows through.
    assert np.array_equal(picture[75, 30], grey)
    # Centre dots in the colour map's ends: score 1 and score 0.
    assert tuple(picture[60, 50]) == tuple(COLOUR_MAP[255]) and tuple(picture[130, 210]) == tuple(COLOUR_MAP[0])


def test_colours_are_absolute_scores_not_stretched_to_the_image():
    # Two middling scores keep middling colours (a min-max stretch would paint them blue and red).
    assert score_colour(0.5) == tuple(int(v) for v in COLOUR_MAP[128])
    assert score_colour(-3.0) == tuple(int(v) for v in COLOUR_MAP[0]) and score_colour(7.0) == score_colour(1.0)
    assert score_colour(None) == UNSCORED and score_colour(math.nan) == UNSCORED
    # the map runs from blue to red without going back
    assert np.all(np.diff(COLOUR_MAP[:, 2].astype(int)) >= 0) and np.all(np.diff(COLOUR_MAP[:, 0].astype(int)) <= 0)


def test_unscored_targets_are_grey_and_large_images_are_shrunk():
    data = np.random.default_rng(0).normal(100, 10, (4096, 1024)).astype(np.float32)
    unscored = _square(200, 2000, 600, None)
    picture = render_overlay(data, _result([unscored], data.shape), max_side=2048)
    lay = layout(data.shape, _result([unscored], data.shape), max_side=2048)
    assert lay.image_rows == 2048 and picture.shape == (2048 + lay.strip_rows, 512, 3) and lay.strip_rows > 0
    assert tuple(picture[1000, 250]) == UNSCORED  # top edge at y=2000 -> 1000, x=500 -> 250


def test_legend_strip_only_with_targets_and_colour_bar_ends_are_the_maps_ends():
    data = _grey_image((400, 600))
    result = _result([_square(20, 30, 60, 0.7)], data.shape)
    picture = render_overlay(data, result)
    lay = layout(data.shape, result)
    assert picture.shape == (400 + lay.strip_rows, 600, 3)
    # the image part is what the legend-free picture shows
    assert np.array_equal(picture[:400], render_overlay(data, result, legend=False))
    x0, y0, x1, y1 = lay.colour_bar
    assert 400 <= y0 < y1 < picture.shape[0] and x1 - x0 > 50
    for y in (y0, (y0 + y1) // 2, y1):
        assert tuple(picture[y, x0]) == tuple(COLOUR_MAP[0]) and tuple(picture[y, x1]) == tuple(COLOUR_MAP[255])
    # mid-bar is the map's middle, and the bar increases in red along x
    assert tuple(picture[y0, (x0 + x1) // 2]) == tuple(COLOUR_MAP[int(round(255 * ((x1 - x0) // 2) / (x1 - x0)))])
    assert np.all(np.diff(picture[y0, x0:x1 + 1, 2].astype(int)) >= 0)
    # "score 0" left of the bar and "1" right of it: white text pixels on both sides, the strip black elsewhere
    strip = picture[400:]
    assert strip[:, :x0].max() > 200 and strip[y0 - 400:y1 - 400 + 1, x1 + 1:x1 + 40].max() > 200
    # no scale bar without a pixel size; none of the legend without targets or with legend=False
    assert lay.scale_bar is None
    empty = _result([], data.shape, pixel_size_A=10.0)
    assert render_overlay(data, empty).shape == (400, 600, 3) and layout(data.shape, empty).colour_bar is None
    assert layout(data.shape, result, legend=False).strip_rows == 0


@pytest.mark.parametrize("pixel_size_A, shape, max_side", [
    (12.0, (1024, 1440), 2048), (500.0, (900, 1000), 2048), (3.3, (2048, 1500), 1024),
    pytest.param(3.3, (4096, 3000), 1024, marks=pytest.mark.slow),  # 12 Mpixel: 1.2 s; the case above scales too
])
def test_scale_bar_is_its_round_length_over_the_pixel_size(pixel_size_A, shape, max_side):
    data = np.random.default_rng(1).normal(100, 10, shape).astype(np.float32)
    result = _result([_square(100, 100, 200, 0.5)], shape, pixel_size_A=pixel_size_A)
    lay = layout(shape, result, max_side=max_side)
    picture = render_overlay(data, result, max_side=max_side)
    nm, label = lay.scale_bar_nm, lay.scale_bar_label
    mantissa = nm / 10 ** math.floor(math.log10(nm))
    assert round(mantissa, 9) in (1.0, 2.0, 5.0)
    assert label == (f"{nm / 1000:g} um" if nm >= 1000 else f"{nm:g} nm")
    bx0, by0, bx1, by1 = lay.scale_bar
    expected_px = nm / (pixel_size_A / 10.0) * lay.scale
    assert bx1 - bx0 + 1 == round(expected_px)
    # drawn: white from bx0 to bx1 on its rows, and not beyond
    row = picture[(by0 + by1) // 2]
    assert np.all(row[bx0:bx1 + 1] == 255) and not np.all(row[bx0 - 1] == 255) and bx1 < picture.shape[1] - 1
    assert by0 >= lay.image_rows  # in the strip: nothing of the image is hidden


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-3, 1e5), st.integers(64, 8192))
def test_scale_bar_length_is_round_and_at_most_a_fifth_of_the_width(nm_per_px, width):
    nm, label = scale_bar(nm_per_px, width)
    bar_px = nm / nm_per_px
    assert bar_px <= width / 5 * (1 + 1e-9)
    assert bar_px > width / 5 / 2.5 * (1 - 1e-9)  # the next round length down is at most 2.5x shorter
    k = math.floor(math.log10(nm) + 1e-12)
    assert round(nm / 10 ** k, 6) in (1.0, 2.0, 5.0) and label.endswith(("nm", "um"))


def _coloured(pixels: np.ndarray) -> np.ndarray:
    p = pixels.astype(int)
    return (np.abs(p[..., 0] - p[..., 1]) + np.abs(p[..., 1] - p[..., 2])) > 40


def test_lattice_squares_are_dashed_and_classes_are_written_with_a_legend_entry():
    data = _grey_image((400, 600))
    found = _square(50, 50, 150, 0.9, found_by="mixture", square_class="ok")
    filled = _square(300, 50, 150, 0.9, found_by="lattice", square_class="ok")
    picture = render_overlay(data, _result([found, filled], data.shape), legend=False)
    # along the bottom edge (away from labels): solid is coloured throughout, dashed has gaps
    solid = _coloured(picture[200, 60:190])
    dashed = _coloured(picture[450 - 250, 310:440])
    assert solid.all() and 0.3 < dashed.mean() < 0.8
    # a class other than ok is written beside the rank (more coloured text to the right of the centre)
    thin = replace(found, square_class="thin")
    a = render_overlay(data, _result([thin], data.shape), legend=False)
    b = render_overlay(data, _result([found], data.shape), legend=False)
    assert _coloured(a[100:130, 140:200]).sum() > _coloured(b[100:130, 140:200]).sum() + 20
    # legend: the second row says what the dashes and class labels mean only when such squares are drawn
    with_lattice = render_overlay(data, _result([found, filled], data.shape))
    plain = render_overlay(data, _result([found, replace(filled, found_by="mixture")], data.shape))
    lay = layout(data.shape, _result([found], data.shape))
    row2 = slice(lay.colour_bar[3] + 6, 400 + lay.strip_rows)  # below the first row of the strip
    assert with_lattice[row2].max() > 200 and plain[row2].max() == 0
    assert render_overlay(data, _result([thin], data.shape))[row2].max() > 200


def test_off_film_holes_are_grey_dashed_and_counted():
    data = _grey_image((400, 600))
    verts = ((100.0, 100.0), (200.0, 100.0), (200.0, 200.0), (100.0, 200.0))
    on = Hole(x=150, y=150, vertices=verts, area=1e4, score=0.9, on_film=True)
    off = Hole(x=400, y=150, vertices=tuple((x + 250, y) for x, y in verts), area=1e4, score=0.9, on_film=False)
    info = ImageInfo(path=None, shape=data.shape)
    res = HoleResult((on, off), 0.0, 100.0, None, None, info, {})
    picture = render_overlay(data, res)
    edge = picture[200, 360:440].astype(int)
    assert not _coloured(picture[200, 360:440]).any()  # grey, not a score colour
    assert (edge[:, 0] != picture[300, 300, 0]).mean() > 0.2 and (edge[:, 0] == picture[300, 300, 0]).any()
    only_on = render_overlay(data, replace(res, holes=(on,)))
    lay = layout(data.shape, res)
    row2 = slice(lay.colour_bar[3] + 6, 400 + lay.strip_rows)
    assert picture[row2].max() > 100 and only_on[row2].max() == 0


def test_empty_result_is_the_image_alone_and_drawing_is_deterministic(tmp_path):
    data = np.random.default_rng(1).normal(100, 10, (64, 80)).astype(np.float32)
    info = ImageInfo(path=None, shape=data.shape, pixel_size_A=None, section=None)
    empty = HoleResult((), None, None, None, None, info, {}, reason="none")
    picture = render_overlay(data, empty)
    assert np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 1], picture[..., 2])
    path = tmp_path / "o.png"
    write_overlay(path, data, empty)
    assert np.array_equal(cv2.imread(str(path)), picture)
    full = _result([_square(10, 10, 30, 0.4, found_by="lattice")], data.shape, pixel_size_A=20.0)
    write_overlay(tmp_path / "a.png", data, full)
    write_overlay(tmp_path / "b.png", data, full)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("name, magic", [("o.png", b"\x89PNG"), ("o.JPG", b"\xff\xd8"), ("o.jpeg", b"\xff\xd8"),
                                         ("o.tif", b"II*\x00"), ("o.tiff", b"II*\x00")])
def test_format_follows_the_extension(tmp_path, name, magic):
    data = _grey_image()
    write_overlay(tmp_path / name, data, _result([_square(20, 30, 60, 0.5)], data.shape))
    assert (tmp_path / name).read_bytes()[:4].startswith(magic)


def test_unknown_extension_is_refused(tmp_path, capsys):
    from ptolemy_rt.cli import main
    from ptolemy_rt.demo import write_mrc
    from ptolemy_rt.synthetic import make_atlas

    data = _grey_image()
    with pytest.raises(OutputError, match="o.bmp"):
        write_overlay(tmp_path / "o.bmp", data, _result([], data.shape))
    image = tmp_path / "a.mrc"
    write_mrc(image, make_atlas(0, (256, 256))[0])
    assert main(["squares", str(image), "--no-score", "--overlay", str(tmp_path / "x.bmp")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.bmp" in err and ".png" in err
    assert not (tmp_path / "x.bmp").exists()
