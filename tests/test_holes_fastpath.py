"""The fast paths of the hole finder give the targets the slower ones gave (issue 17).

The period search's autocorrelation runs as a float32 cv2 DFT (was a float64 FFT) and the general lattice
search anchors on at most MAX_ANCHORS = 48 centroids (was 160). Here the previous paths are put back (a
float64 numpy FFT of the same definition, 160 anchors) and the results compared: the same holes in the same
order, positions within 1e-6 px, U-Net scores within 1e-6 relative (they scale with the resampling factor,
which follows the period to ~1e-8), CNN scores within 1e-6. Measured: 1e-12 px, 1e-8, identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptolemy_rt import lattice, spacing
from ptolemy_rt.holes import find_holes
from ptolemy_rt.io import read_image
from ptolemy_rt.models import load_models
from ptolemy_rt.synthetic import make_medmag

from .conftest import synthetic_medmag


def _float64_autocorrelation(x, max_period, valid, max_lag=None):
    """spacing._autocorrelation as it was: a float64 FFT, the band-pass sampled on the full grid."""
    import cv2

    x = np.asarray(x, dtype=np.float64)
    valid = np.asarray(valid, dtype=np.float64)
    rows, cols = x.shape
    lr, lc = (rows - 1, cols - 1) if max_lag is None else (min(max_lag[0], rows - 1), min(max_lag[1], cols - 1))
    shape = (cv2.getOptimalDFTSize(2 * rows - 1), cv2.getOptimalDFTSize(2 * cols - 1))
    f2 = np.fft.fftfreq(shape[0])[:, None] ** 2 + np.fft.rfftfreq(shape[1])[None, :] ** 2
    keep = (1.0 - np.exp(-f2 * (1.5 * max_period) ** 2)) * np.exp(-2.0 * (math.pi * spacing._NOISE_SIGMA) ** 2 * f2)
    f = np.fft.rfft2(x, s=shape)
    ac = spacing._lags(np.fft.irfft2((f.real**2 + f.imag**2) * keep * keep, s=shape), rows, cols, (lr, lc))
    if valid.all():
        count_r = rows - np.abs(np.arange(-lr, lr + 1, dtype=np.float64))
        count_c = cols - np.abs(np.arange(-lc, lc + 1, dtype=np.float64))
        rho = ac / np.outer(count_r, count_c)
    else:
        fw = np.fft.rfft2(valid, s=shape)
        count = spacing._lags(np.fft.irfft2(fw.real**2 + fw.imag**2, s=shape), rows, cols, (lr, lc))
        rho = np.where(count > 0.2 * float(valid.sum()), ac / np.maximum(count, 1.0), 0.0)
    return rho / rho[lr, lc]


def _compare(image, monkeypatch):
    models = load_models(None)
    fast = find_holes(image, models)
    with monkeypatch.context() as m:
        m.setattr(spacing, "_autocorrelation", _float64_autocorrelation)
        m.setattr(lattice, "MAX_ANCHORS", 160)
        slow = find_holes(image, models)
    assert fast.reason == slow.reason
    assert len(fast.holes) == len(slow.holes) > 0
    assert fast.lattice.kind == slow.lattice.kind
    assert fast.spacing_px == pytest.approx(slow.spacing_px, rel=1e-9)
    for a, b in zip(fast.holes, slow.holes):  # same order too
        assert abs(a.x - b.x) < 1e-6 and abs(a.y - b.y) < 1e-6
        assert a.scores["unet"] == pytest.approx(b.scores["unet"], rel=1e-6)
        if b.scores["cnn"] is not None:
            assert a.scores["cnn"] == pytest.approx(b.scores["cnn"], abs=1e-6)


def test_fast_paths_give_the_same_targets_synthetic(monkeypatch):
    _compare(synthetic_medmag(1)[0], monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_fast_paths_give_the_same_targets_more_synthetic(seed, monkeypatch):
    _compare(make_medmag(seed)[0], monkeypatch)


@pytest.mark.slow
def test_fast_paths_give_the_same_targets_reference(medmag_path, monkeypatch):
    _compare(read_image(medmag_path), monkeypatch)


# ---------------------------------------------------------------------------------------------------
# This session's fast paths (issue 17): each put back to its plain form, the result must be the same to the bit.


def _plain_running_median(x, half):
    return np.array([np.median(x[max(1, k - half) : k + half + 1]) for k in range(len(x))])


def _plain_sigmoid(x):
    from .test_fastpath_bits import plain_sigmoid

    return plain_sigmoid(np.ascontiguousarray(x))


def _plain_centred_hole_crops(points, angle_deg, half, ec, er, corners):
    """crops.hole_crops' "centred" geometry point by point, as it was."""
    from ptolemy_rt.crops import HoleCrops, crop_matrix

    side = 2 * half
    matrices, vertices = [], []
    for p in points:
        matrices.append(crop_matrix((p[0], p[1]), angle_deg, side, side))
        vertices.append(tuple((float(p[0] + dc * ec[0] + dr * er[0]), float(p[1] + dc * ec[1] + dr * er[1]))
                              for dc, dr in corners))
    return HoleCrops(tuple(matrices), ((side, side),) * len(points), tuple(vertices), float(side * side))


def _everything(result):
    """Every field of a result that reaches an output (timings aside), floats as their exact repr."""
    out = result.to_dict()
    out.pop("timings", None)
    return repr(out)


def _compare_plain(image, monkeypatch):
    from ptolemy_rt import crops, film, scoring, unet

    models = load_models(None)
    fast = find_holes(image, models)
    with monkeypatch.context() as m:
        m.setattr(unet, "sigmoid", _plain_sigmoid)
        m.setattr(spacing, "_running_median", _plain_running_median)
        m.setattr(crops, "_BATCH_STANDARDISE_PIXELS", 0)  # every crop standardised on its own
        m.setattr(scoring, "_SCORE_STACK_PIXELS", 1)  # one crop per warp stack
        m.setattr(film, "_DIRECT_BOXES", -1)  # the summed-area table for every point
        m.setattr(crops, "_centred_hole_crops", _plain_centred_hole_crops)
        plain = find_holes(image, models)
    assert _everything(fast) == _everything(plain)
    return fast


def test_this_sessions_fast_paths_change_no_bit_synthetic(monkeypatch):
    assert len(_compare_plain(synthetic_medmag(1)[0], monkeypatch).holes) > 0


def test_fast_paths_keep_early_ends(monkeypatch):
    from benchmarks.holes_sets import make_sample

    for category in ("single_hole", "no_lattice"):
        _compare_plain(make_sample(category, 0).image, monkeypatch)
    constant = find_holes(np.full((300, 400), 5.0, dtype=np.float32), load_models(None))
    assert constant.reason == "constant image: nothing to find" and not constant.holes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 8])  # 600 holes at 1.3x upscale; a lattice of quality < 0.7 (more estimators)
def test_this_sessions_fast_paths_change_no_bit_more_synthetic(seed, monkeypatch):
    _compare_plain(make_medmag(seed)[0], monkeypatch)


@pytest.mark.slow
def test_this_sessions_fast_paths_change_no_bit_reference(medmag_path, monkeypatch):
    assert len(_compare_plain(read_image(medmag_path), monkeypatch).holes) == 17


def test_fast_paths_with_points_off_film(monkeypatch):
    from benchmarks.holes_sets import make_sample

    image = make_sample("whole_square", 1).image  # a whole grid square: bars and the outside are off film
    result = _compare_plain(image, monkeypatch)
    kept = find_holes(image, load_models(None), keep_off_film=True)
    assert 0 < len(result.holes) < len(kept.holes)
