"""Hole diameter from the mean radial profile, against the truth of synthetic med-mag images."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt import holesize
from ptolemy_rt.holesize import hole_diameter_px, with_hole_diameter
from ptolemy_rt.results import Hole, HoleResult, ImageInfo
from ptolemy_rt.synthetic import make_medmag

from .conftest import examples, synthetic_medmag


@pytest.mark.slow  # seconds each; CI runs the slow suite
def test_measured_diameter_is_close_or_none():
    gold_measured = []
    for seed in range(8, 20):
        data, truth = make_medmag(seed)
        centres = [tuple(c) for c in truth.centers[truth.visible]]
        measured = hole_diameter_px(data, centres, truth.spacing_px)
        if truth.film == "gold":
            gold_measured.append(measured is not None)
        if measured is None:
            continue  # a soft edge gives no diameter, never a wrong one
        # gold films within 3 %; carbon films' soft rims put the edge up to 17 % inside (seeds 8-39)
        tolerance = 0.03 if truth.film == "gold" else 0.2
        assert measured == pytest.approx(2 * truth.radius_px, rel=tolerance), seed
    assert gold_measured and sum(gold_measured) >= 0.75 * len(gold_measured)


def test_no_edge_no_diameter():
    rng = np.random.default_rng(0)
    noise = rng.normal(100, 10, (512, 512)).astype(np.float32)
    centres = [(x, y) for x in range(64, 512, 96) for y in range(64, 512, 96)]
    assert hole_diameter_px(noise, centres, 96.0) is None
    assert hole_diameter_px(np.zeros((512, 512), np.float32), centres, 96.0) is None
    assert hole_diameter_px(noise, centres[:2], 96.0) is None  # too few holes
    assert hole_diameter_px(noise, centres, None) is None


def test_with_hole_diameter_sets_every_hole():
    data, truth = synthetic_medmag(0)
    holes = tuple(Hole(x=float(x), y=float(y), vertices=((0, 0),) * 4, area=1.0, score=0.5)
                  for x, y in truth.centers[truth.visible])
    result = HoleResult(holes=holes, angle_deg=0.0, spacing_px=truth.spacing_px, basis=None, origin=None,
                        image=ImageInfo(None, data.shape), models={})
    out = with_hole_diameter(result, data)
    diameters = {h.diameter_px for h in out.holes}
    assert len(diameters) == 1 and diameters.pop() == pytest.approx(2 * truth.radius_px, rel=0.03)
    assert out.holes[0].x == holes[0].x and result.holes[0].diameter_px is None  # a new result
    assert with_hole_diameter(HoleResult(**{**result.__dict__, "holes": ()}), data).holes == ()


def _profiles_hole_by_hole(data, centres, radii):
    """The former _profiles, one cv2.remap per hole: the reference the batched one must equal to the bit."""
    import math

    import cv2

    angles = np.linspace(0.0, 2.0 * math.pi, holesize.N_ANGLES, endpoint=False)
    dx = np.outer(radii, np.cos(angles)).astype(np.float32)
    dy = np.outer(radii, np.sin(angles)).astype(np.float32)
    rows, cols = data.shape
    out = np.empty((len(centres), len(radii)), np.float64)
    src = np.ascontiguousarray(data, dtype=np.float32)
    for i, (x, y) in enumerate(centres):
        mx, my = dx + np.float32(x), dy + np.float32(y)
        inside = (mx >= 0) & (mx <= cols - 1) & (my >= 0) & (my <= rows - 1)
        sampled = cv2.remap(src, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        count = inside.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(count > 0, (sampled * inside).sum(axis=1) / count, np.nan)
    return out


@examples(10, settings(max_examples=40, deadline=None),
          given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 64), half=st.sampled_from([4.0, 37.5, 120.25, 700.0]),
                rows=st.integers(40, 300), cols=st.integers(40, 300)))
def test_profiles_equal_the_hole_by_hole_loop(seed, n, half, rows, cols):
    """One remap for all holes (in chunks of whole holes past remap's row limit; half=700 makes several) and
    the mask only near the border give the same profiles, NaN where a hole is wholly outside, to the bit."""
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 20, (rows, cols)).astype(np.float32)
    centres = np.column_stack([rng.uniform(-60, cols + 60, n), rng.uniform(-60, rows + 60, n)])
    centres[: n // 2] = np.round(centres[: n // 2])  # integer centres: samples exactly on the border
    radii = np.arange(0.0, half + holesize.STEP_PX, holesize.STEP_PX)
    got = holesize._profiles(data, centres, radii)
    want = _profiles_hole_by_hole(data, centres, radii)
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
