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


def test_pixel_level_pattern_gives_no_holes_and_bounded_unet_inputs(monkeypatch):
    import ptolemy_rt.unet as unet

    models = _default_models()
    if models.spec("hole_unet").scale is None:
        pytest.skip("the shipped U-Net runs at native scale")
    sizes = []
    real = unet.probability_map
    monkeypatch.setattr(unet, "probability_map", lambda z, *a, **k: sizes.append(z.size) or real(z, *a, **k))
    yy, xx = np.mgrid[:512, :512]
    checker = (((xx + yy) % 2) * 200).astype(np.int16)
    result = find_holes(checker, models=models)
    assert result.holes == () and result.reason
    # No period is measured, so the U-Net tries the ladder of periods; a 1.4 px "period" taken at its word
    # would have made its input ~2000x the image.
    assert sizes and max(sizes) <= 1.3**2 * checker.size + 16 * 1024


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


@pytest.mark.parametrize("kind", ["poisson", "gauss", "gradient"])
def test_noise_gives_no_holes_with_the_shipped_set(kind):
    # With no measurable period the shipped U-Net is tried at every period of the ladder; it fires on pure
    # noise (probabilities ~0.99), and a lattice through 26 such blobs once passed for 12 holes.
    models = _default_models()
    rng = np.random.default_rng(0)
    image = {
        "poisson": lambda: rng.poisson(50, (1024, 1440)),
        "gauss": lambda: rng.normal(0, 1, (1024, 1440)),
        "gradient": lambda: np.add.outer(np.arange(1024), np.arange(1440)),
    }[kind]().astype(np.float32)
    result = find_holes(image, models=models)
    assert result.holes == () and "no hole lattice" in result.reason


def test_huge_values_do_not_overflow_the_histogram_index():
    # Issue 13: a count past 2**63 wrapped to a negative bin index and wrote outside the histogram (a segfault).
    # Run in a child process: before the fix this killed the interpreter.
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from ptolemy_rt.mixture import segment, histogram, count_scale\n"
        "rng = np.random.default_rng(1)\n"
        "for v in (1e18, 9.3e18, 1.8e19, 3e38):\n"
        "    d = (rng.random((256, 256)) * 100).astype(np.float32)\n"
        "    d.ravel()[rng.integers(0, d.size, 40)] = v\n"
        "    s = count_scale(d)\n"
        "    h = histogram(d, s)\n"
        "    assert h.sum() == d.size and h[-1] >= 40, (v, h[-1])\n"
        "    segment(d)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
