"""atlas_classes' fast paths give cv2's bytes (issue 17): the disc's closing by the ellipse's rows, its nearest
upscale by a broadcast copy, and disc_mask as a whole against the code they replaced."""

from __future__ import annotations

import math

import cv2
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptolemy_rt import atlas_classes as ac
from tests.test_mesh import render_mesh

from .conftest import examples, synthetic_atlas


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), k=st.integers(1, 20).map(lambda i: 2 * i + 1),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1), blobs=st.booleans())
@example(h=1, w=1, k=3, density=1.0, seed=0, blobs=False)
@example(h=3, w=70, k=41, density=0.5, seed=1, blobs=False)  # fewer rows than the kernel's reach
def test_close_ellipse_is_cv2s_closing(h, w, k, density, seed, blobs):
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w)) < density).astype(np.uint8)
    if blobs:  # large holes and bays, as a disc's bright mesh has
        img = cv2.dilate(img, np.ones((3, 3), np.uint8)) if density < 0.3 else img
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    want = cv2.morphologyEx(img, cv2.MORPH_CLOSE, kernel)
    got = ac._close_ellipse(img, k)
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


@examples(30, settings(max_examples=150, deadline=None),  # up to 140 MB a comparison
          given(h=st.integers(1, 60), w=st.integers(1, 60),
                f=st.one_of(st.integers(1, 70), st.sampled_from([49, 98, 103, 107, 161, 187, 196, 197])),
                seed=st.integers(0, 2**32 - 1)))
@example(h=3, w=4, f=49, seed=0)  # 49 x (1 / 49) < 1: cv2 takes pixel 0 for output 49, no plain repeat
def test_upscale_nearest_is_cv2s_resize(h, w, f, seed):
    small = np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)
    want = cv2.resize(small, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    got = ac._upscale_nearest(small, f)
    assert got.shape == want.shape and np.array_equal(got, want)


def _plain_disc_mask(image, *, scale_px=None, level=0.25):
    """disc_mask as it was: cv2's closing and nearest resize."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    full = np.ones((h, w), dtype=bool)
    scale = float(scale_px) if scale_px else max(h, w) / 6.0
    f = max(1, math.ceil(max(h, w) / ac._DISC_SIDE), math.ceil(scale / ac._DISC_KERNEL))
    small = cv2.resize(img[: h - h % f, : w - w % f], (w // f, h // f), interpolation=cv2.INTER_AREA) if f > 1 else img
    hi = float(np.percentile(small, 95))
    if not np.isfinite(hi) or hi <= 0:
        return full
    bright = (small > level * hi).astype(np.uint8)
    k = int(max(3, round(scale / f)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    padded = cv2.copyMakeBorder(bright, k, k, k, k, cv2.BORDER_REPLICATE)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[k:-k, k:-k]
    if closed.all():
        return full
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    if n <= 1:
        return full
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == biggest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    small_mask = np.zeros(closed.shape, np.uint8)
    cv2.fillConvexPoly(small_mask, hull, 1)
    if f == 1:
        return small_mask.astype(bool)
    big = cv2.resize(small_mask, (small_mask.shape[1] * f, small_mask.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    out = np.empty((h, w), np.uint8)
    out[: big.shape[0], : big.shape[1]] = big
    if big.shape[0] < h:
        out[big.shape[0]:, : big.shape[1]] = big[-1:, :]
    if big.shape[1] < w:
        out[:, big.shape[1]:] = out[:, big.shape[1] - 1 : big.shape[1]]
    return out.view(bool)


def test_disc_mask_is_the_plain_code_to_the_bit():
    scenes = [
        (render_mesh(600, 30.0, 5.0, 20.0, seed=4, disc=220.0), [None, 90.0, 400.0]),
        (render_mesh(1030, 160.0, 60.0, 44.0, seed=4, disc=430.0), [None, 480.0, 1500.0]),  # f = 49 at 1500
        (render_mesh(700, 40.0, 8.0, 12.0, seed=6, disc=500.0), [None, 120.0]),  # the disc past the edges
        (synthetic_atlas(2)[0], [None, 300.0]),
        (np.zeros((300, 300), np.float32), [None]),
    ]
    for image, scales in scenes:
        for scale in scales:
            want = _plain_disc_mask(image, scale_px=scale)
            got = ac.disc_mask(image, scale_px=scale)
            assert got.dtype == bool and got.shape == want.shape and np.array_equal(got, want), scale
