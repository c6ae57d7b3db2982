"""Odd inputs found in review: each must give a clear error or an empty result, quickly and without a crash."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ptolemy_rt import find_holes, find_squares
from ptolemy_rt.errors import NonFiniteError, ShapeError
from ptolemy_rt.io import Image, as_image, read_image
from ptolemy_rt.models import default_models_dir, load_models


def _default_models():
    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("no shipped model set")
    models = load_models()
    if not models.has("hole_unet"):
        pytest.skip("shipped set has no hole_unet")
    return models


def test_user_built_image_is_validated():
    bad = np.ones((300, 300), np.float32)
    bad[5, 5] = np.nan
    with pytest.raises(NonFiniteError):
        find_squares(Image(data=bad, source="mine.mrc"), models=False)
    with pytest.raises(ShapeError):
        as_image(Image(data=np.ones((2, 300, 300), np.float32)))
    fixed = as_image(Image(data=np.ones((300, 300), np.int16)))
    assert fixed.data.dtype == np.float32


def test_rgb_array_is_grey_not_a_stack():
    rgb = np.zeros((300, 320, 3), np.uint8)
    rgb[..., 1] = 90
    img = as_image(rgb)
    assert img.shape == (300, 320) and float(img.data[0, 0]) == pytest.approx(30.0)


def test_multipage_tiff_pages_of_different_sizes(tmp_path):
    p = tmp_path / "mixed.tif"
    assert cv2.imwritemulti(str(p), [np.zeros((40, 50), np.uint16), np.ones((60, 70), np.uint16)])
    assert read_image(p, section=1).shape == (60, 70)
    with pytest.warns(UserWarning):
        assert read_image(p).shape == (40, 50)


def test_pixel_level_pattern_is_refused_before_the_unet():
    models = _default_models()
    if not models.spec("hole_unet").get("scale"):
        pytest.skip("the shipped U-Net runs at native scale")
    yy, xx = np.mgrid[:512, :512]
    checker = (((xx + yy) % 2) * 200).astype(np.int16)
    result = find_holes(checker, models=models)
    assert result.holes == () and result.reason
    assert "unet" not in result.timings  # refused before the network ran


def test_huge_integer_values_are_rescaled():
    from ptolemy_rt.mixture import count_scale

    rng = np.random.default_rng(0)
    data = rng.integers(0, 16_000_000, size=(256, 256)).astype(np.float32)
    assert not count_scale(data, "int32").integer
    small = rng.integers(0, 60_000, size=(256, 256)).astype(np.float32)
    assert count_scale(small, "uint16").integer


def test_find_holes_without_models_is_a_clear_error():
    with pytest.raises(ValueError, match="hole_unet"):
        find_holes(np.ones((300, 300), np.float32), models=False)
