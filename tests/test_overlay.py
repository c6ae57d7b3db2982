"""Overlays (ptolemy_rt.overlay): boxes drawn where the targets are, coloured by score, the image kept elsewhere."""

from __future__ import annotations

import cv2
import numpy as np

from ptolemy_rt.overlay import render_overlay, write_overlay
from ptolemy_rt.results import HoleResult, ImageInfo, Square, SquareResult


def _square(x0: float, y0: float, side: float, score: float | None) -> Square:
    verts = ((x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side))
    return Square(x=x0 + side / 2, y=y0 + side / 2, vertices=verts, area=side * side, brightness=1.0, score=score)


def _result(targets, shape) -> SquareResult:
    info = ImageInfo(path=None, shape=shape, pixel_size_A=None, section=None)
    return SquareResult(tuple(targets), 0.0, info, {})


def test_boxes_are_drawn_at_their_vertices_in_score_colours():
    data = np.full((200, 300), 50.0, np.float32)
    data[0, 0] = 0.0
    data[-1, -1] = 100.0  # the stretch maps 50 to mid-grey
    best, worst = _square(20, 30, 60, 0.9), _square(180, 100, 60, 0.1)
    picture = render_overlay(data, _result([best, worst], data.shape))
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
    # Centre dots in the target's colour: the top score pure red, the bottom pure blue (BGR).
    assert tuple(picture[60, 50]) == (0, 80, 255) and tuple(picture[130, 210]) == (255, 80, 0)


def test_unscored_targets_are_grey_and_large_images_are_shrunk():
    data = np.random.default_rng(0).normal(100, 10, (4096, 1024)).astype(np.float32)
    unscored = _square(200, 2000, 600, None)
    picture = render_overlay(data, _result([unscored], data.shape), max_side=2048)
    assert picture.shape == (2048, 512, 3)
    assert tuple(picture[1000, 250]) == (160, 160, 160)  # top edge at y=2000 -> 1000, x=500 -> 250


def test_empty_result_is_the_image_alone(tmp_path):
    data = np.random.default_rng(1).normal(100, 10, (64, 80)).astype(np.float32)
    info = ImageInfo(path=None, shape=data.shape, pixel_size_A=None, section=None)
    empty = HoleResult((), None, None, None, None, info, {}, reason="none")
    picture = render_overlay(data, empty)
    assert np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 1], picture[..., 2])
    path = tmp_path / "o.png"
    write_overlay(path, data, empty)
    assert np.array_equal(cv2.imread(str(path)), picture)
