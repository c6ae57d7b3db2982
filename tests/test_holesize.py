"""Hole diameter from the mean radial profile, against the truth of synthetic med-mag images."""

from __future__ import annotations

import numpy as np
import pytest

from ptolemy_rt.holesize import hole_diameter_px, with_hole_diameter
from ptolemy_rt.results import Hole, HoleResult, ImageInfo
from ptolemy_rt.synthetic import make_medmag


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
    data, truth = make_medmag(0)
    holes = tuple(Hole(x=float(x), y=float(y), vertices=((0, 0),) * 4, area=1.0, score=0.5)
                  for x, y in truth.centers[truth.visible])
    result = HoleResult(holes=holes, angle_deg=0.0, spacing_px=truth.spacing_px, basis=None, origin=None,
                        image=ImageInfo(None, data.shape), models={})
    out = with_hole_diameter(result, data)
    diameters = {h.diameter_px for h in out.holes}
    assert len(diameters) == 1 and diameters.pop() == pytest.approx(2 * truth.radius_px, rel=0.03)
    assert out.holes[0].x == holes[0].x and result.holes[0].diameter_px is None  # a new result
    assert with_hole_diameter(HoleResult(**{**result.__dict__, "holes": ()}), data).holes == ()
