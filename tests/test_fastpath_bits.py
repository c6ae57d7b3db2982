"""Fast paths that must give the same bits as the plain numpy they replace (issue 17): the U-Net input's
normalisation and the hole CNN's inputs. Each is compared with the straightforward definition."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptolemy_rt.crops import crop_matrix, hole_crop_input, hole_crop_inputs, hole_crops, sample_affine
from ptolemy_rt.unet import normalise_image

from .conftest import synthetic_medmag


def _plain_normalise(data):
    x = np.asarray(data, dtype=np.float32)
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    if not (std > 0.0 and np.isfinite(std)) or std < 1e-7 * abs(mean):
        return None
    return (x - np.float32(mean)) * np.float32(1.0 / std)


def _plain_crop_input(image, matrix, shape, min_size):
    crop = sample_affine(image, matrix, shape)
    rows, cols = crop.shape
    if rows < min_size or cols < min_size:
        crop = cv2.resize(crop, (max(cols, min_size), max(rows, min_size)), interpolation=cv2.INTER_CUBIC)
    x = crop.astype(np.float64)
    std = x.std()
    if not std > 0:
        return np.zeros(crop.shape, dtype=np.float32)
    return ((x - x.mean()) / std).astype(np.float32)


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("seed", range(6))
def test_normalise_image_is_numpys_mean_and_std_to_the_bit(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(2, 700)), int(rng.integers(2, 900)))
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-20, 20) + rng.uniform(-5, 5) * 10.0 ** rng.uniform(-3, 8)
    for data in (x.astype(np.float32), x, x.astype(np.float32)[::2, 1::3], np.abs(x).astype(np.uint16)):
        fast, plain = normalise_image(data), _plain_normalise(data)
        assert (fast is None) == (plain is None)
        if fast is not None:
            assert _same_bits(fast, plain)
    assert normalise_image(np.full((40, 50), 3.0, dtype=np.float32)) is None
    assert normalise_image(np.zeros((0, 5), dtype=np.float32)) is None


@pytest.mark.parametrize("shape", [(1024, 1440), (1337, 1863), (257, 256), (1, 70001)])
def test_normalise_image_in_runs_is_numpys_to_the_bit(shape):
    # Above normalise_image's run length the squared deviations are summed run by run along numpy's pairwise
    # split (unet._pairwise_squares): the same sum as numpy's over the whole array, on large odd sizes too.
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 300.0 + 1e4).astype(np.float32)
    assert _same_bits(normalise_image(x), _plain_normalise(x))
    d = x.astype(np.float64) - x.mean(dtype=np.float64)
    from ptolemy_rt.unet import _pairwise_squares

    assert _pairwise_squares(x.reshape(-1), np.float64(x.mean(dtype=np.float64)), np.empty(1 << 16)) == float(
        np.add.reduce(d * d, axis=None))


def _plain_zero_outside(out, m, xmax, ymax):
    rows, cols = out.shape
    jj, ii = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    x = (m[0, 1] * ii + m[0, 0] * jj) + m[0, 2]
    y = (m[1, 1] * ii + m[1, 0] * jj) + m[1, 2]
    out[(x < 0.0) | (x > xmax) | (y < 0.0) | (y > ymax)] = 0.0


@pytest.mark.parametrize("seed", range(4))
def test_zero_outside_tests_only_the_edges_a_crop_reaches(seed):
    # crops._zero_outside skips the limits the crop's corners stay clear of: the same pixels zeroed as testing
    # all four everywhere, for crops across one edge, two, none, and with a corner exactly on an edge.
    from ptolemy_rt.crops import _zero_outside

    rng = np.random.default_rng(seed)
    for _ in range(60):
        side = int(rng.integers(1, 90))
        angle = float(rng.choice([0.0, 90.0, rng.uniform(0, 360)]))
        centre = (float(rng.uniform(-40, 240)), float(rng.uniform(-40, 180)))
        if rng.random() < 0.3:  # the corner pixel's source exactly on the left or top edge
            centre = (float((side - 1) / 2.0), float((side - 1) / 2.0))
        m = crop_matrix(centre, angle, side, side)
        fast = np.ones((side, side), dtype=np.float32)
        plain = fast.copy()
        _zero_outside(fast, m, 199.0, 139.0)
        _plain_zero_outside(plain, m, 199.0, 139.0)
        assert _same_bits(fast, plain)


@pytest.mark.parametrize("mode", ["centred", "ptolemy"])
@pytest.mark.parametrize("min_size", [16, 200])
def test_hole_crop_inputs_are_the_plain_crops_to_the_bit(mode, min_size):
    rng = np.random.default_rng(3)
    image = (rng.random((300, 420)) * 500.0 + 20.0).astype(np.float32)
    image[100:110] = 0.0  # a dark band: crops with and without contrast
    points = np.array([[40.0, 40.0], [210.3, 150.7], [400.0, 290.0], [-30.0, 150.0], [205.0, 105.0]])
    geometry = hole_crops(points, 17.0, 120.0, image.shape, mode)
    shapes = geometry.shapes
    for i, (m, s) in enumerate(zip(geometry.matrices, shapes)):
        if min(s) < 1:
            continue
        assert _same_bits(hole_crop_input(image, m, s, min_size), _plain_crop_input(image, m, s, min_size)), i
    same = [i for i in range(len(shapes)) if shapes[i] == shapes[1]]
    batch = hole_crop_inputs(image, [geometry.matrices[i] for i in same], [shapes[i] for i in same], min_size)
    for k, i in enumerate(same):
        assert _same_bits(batch[k, 0], _plain_crop_input(image, geometry.matrices[i], shapes[i], min_size))
    with pytest.raises(ValueError, match="one shape"):
        hole_crop_inputs(image, geometry.matrices[:2], [(10, 10), (12, 10)], min_size)


def test_many_small_hole_crop_inputs_are_the_plain_crops_to_the_bit():
    # hundreds of small crops (a fine lattice): standardised in several groups of rows, some crops off the image
    rng = np.random.default_rng(4)
    image = (rng.random((200, 260)) * 900.0 + 5.0).astype(np.float32)
    image[:, 120:124] = 0.0
    points = np.stack([rng.uniform(-20, 280, 180), rng.uniform(-20, 220, 180)], axis=1)
    geometry = hole_crops(points, 33.0, 40.0, image.shape)
    batch = hole_crop_inputs(image, geometry.matrices, geometry.shapes, 16)
    assert geometry.shapes[0][0] * geometry.shapes[0][1] * len(points) > 3 * (1 << 16)
    for k, (m, shape) in enumerate(zip(geometry.matrices, geometry.shapes)):
        assert _same_bits(batch[k, 0], _plain_crop_input(image, m, shape, 16)), k


def _plain_peaks(rho, max_lag):
    # spacing._peaks's definition, one local maximum at a time
    from ptolemy_rt import spacing

    rows, cols = (rho.shape[0] + 1) // 2, (rho.shape[1] + 1) // 2
    lr, lc = max_lag
    sub = rho[rows - 1 - lr : rows + lr, cols - 1 - lc : cols + lc]
    out = []
    for i in range(1, sub.shape[0] - 1):
        for j in range(1, sub.shape[1] - 1):
            ctr = sub[i, j]
            around = sub[i - 1 : i + 2, j - 1 : j + 2].ravel()
            if not (ctr >= spacing._MIN_PEAK and (ctr > np.delete(around, 4)).all()):
                continue
            dy, dx = i - lr, j - lc
            if dy < 0 or (dy == 0 and dx <= 0) or math.hypot(dx, dy) < spacing._MIN_PERIOD:
                continue
            up, dn, lf, rt = sub[i - 1, j], sub[i + 1, j], sub[i, j - 1], sub[i, j + 1]
            den_y, den_x = up - 2 * ctr + dn, lf - 2 * ctr + rt
            oy = 0.5 * (up - dn) / den_y if den_y < 0 else 0.0
            ox = 0.5 * (lf - rt) / den_x if den_x < 0 else 0.0
            out.append((np.int64(dx) + ox, np.int64(dy) + oy, float(ctr)))
    return np.array(out, dtype=np.float64).reshape(-1, 3)


@pytest.mark.parametrize("seed", range(3))
def test_autocorrelation_peaks_are_the_plain_ones_to_the_bit(seed):
    # spacing._peaks finds the maxima and their sub-pixel offsets for all of them at once
    from ptolemy_rt import spacing

    rng = np.random.default_rng(seed)
    for k in range(20):
        lags = (int(rng.integers(3, 40)), int(rng.integers(3, 40)))
        pad = (int(rng.integers(0, 5)), int(rng.integers(0, 5)))
        rho = (rng.standard_normal((2 * (lags[0] + pad[0]) + 1, 2 * (lags[1] + pad[1]) + 1)) * 0.3).astype(np.float32)
        if k % 3 == 0:
            rho = (np.round(rho * 8) / 8).astype(np.float32)  # plateaus: ties are no maxima
        fast, plain = spacing._peaks(rho, lags), _plain_peaks(rho, lags)
        assert fast.shape == plain.shape and np.array_equal(fast.view(np.uint64), plain.view(np.uint64))


def test_ring_mean_is_the_ring_means_entry_to_the_bit():
    from ptolemy_rt import spacing

    rng = np.random.default_rng(5)
    for lags in ((7, 9), (30, 41), (50, 20)):
        rho = rng.standard_normal((2 * lags[0] + 1 + 6, 2 * lags[1] + 1 + 4)).astype(np.float32)
        ring = spacing._ring_means(rho, lags)
        for r in list(range(len(ring))) + [len(ring), len(ring) + 10]:
            assert spacing._ring_mean(rho, lags, r) == ring[min(r, len(ring) - 1)]


@pytest.mark.parametrize("seed", range(4))
def test_sorted_percentile_and_median_are_numpys(seed):
    from ptolemy_rt.views import median, percentile

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((int(rng.integers(1, 300)), int(rng.integers(1, 400)))) * 100).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0.0  # ties
    for q in (90, (0.5, 99.5), [1.0, 99.0], 0, 100):
        assert np.array_equal(percentile(x, q), np.percentile(x, q))
    assert median(x) == np.median(x) and median(x.ravel()[1:]) == np.median(x.ravel()[1:])
    x.ravel()[0] = np.nan
    assert np.isnan(percentile(x, 50)) and np.isnan(median(x))


def test_spacing_finite_check():
    from ptolemy_rt import spacing

    x = np.ones((40, 40), dtype=np.float32)
    assert spacing._finite(x)
    x[3, 4] = 3e38
    x[5, 6] = 3e38  # the float32 sum overflows, the values are finite
    assert spacing._finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[7, 8] = bad
        assert not spacing._finite(y)


def _plain_prepare_tail(x, w, robust):
    """spacing._prepare after the mask, as written before its unmasked fast path."""
    from ptolemy_rt import spacing

    sigma = max(x.shape) / 8.0
    ws = np.maximum(spacing._smooth(w, sigma), 1e-3)
    mean = spacing._smooth(x * w, sigma) / ws
    var = spacing._smooth(x * x * w, sigma) / ws - mean * mean
    level = float(np.median(var[w > 0]))
    z = (x - mean) / np.sqrt(np.maximum(var, 1e-4 * level))
    clip = spacing._ROBUST_CLIP if robust else 3.0
    z = np.clip(z, -clip, clip) * w
    z[w > 0] -= z[w > 0].mean()
    return z


@pytest.mark.parametrize("bar", [False, True])
def test_prepare_is_the_plain_normalised_convolution(bar):
    from ptolemy_rt import spacing

    image = synthetic_medmag(0)[0].astype(np.float32)
    if bar:
        image[:, 100:400] = 0.0  # a grid bar: the robust preparation masks it
    masked = []
    for robust in (True, False):
        prepared = spacing._prepare(image, robust)
        assert prepared is not None
        z, w, factor = prepared
        masked.append(not w.all())
        assert _same_bits(z, _plain_prepare_tail(spacing._bin(image, factor), w, robust))
    assert masked == [bar, False]  # both paths are compared


def plain_sigmoid(x):
    """models.sigmoid as it was: the two branches through boolean gathers and scatters."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


@pytest.mark.parametrize("scale", [0.5, 8.0, 100.0])
def test_sigmoid_is_the_gathered_two_branch_one_to_the_bit(scale):
    from ptolemy_rt.models import sigmoid

    rng = np.random.default_rng(int(scale))
    x = (rng.standard_normal((137, 211)) * scale).astype(np.float32)
    x[0, :6] = [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45]
    for data in (x, x[3:90, 5:150], x[0], x.astype(np.float64)):  # strided views and other dtypes too
        fast, plain = sigmoid(data), plain_sigmoid(np.ascontiguousarray(data))
        assert _same_bits(fast, plain) and fast.flags.c_contiguous
    assert np.isnan(sigmoid(np.array([np.nan], dtype=np.float32))[0])


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40),
                  elements=st.floats(width=32, allow_nan=False)))
def test_sigmoid_of_any_finite_or_infinite_values_is_the_two_branch_one(x):
    # mixed signs, zeros of both signs, subnormals, infinities: the numerator max(x >= 0, e) is np.where's
    from ptolemy_rt.models import sigmoid

    assert _same_bits(sigmoid(x), plain_sigmoid(x))


def test_normalise_image_into_a_view_is_the_same():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((61, 77)) * 30 + 1000).astype(np.float32)
    padded = np.full((64, 80), 7.0, dtype=np.float32)
    out = normalise_image(x, out=padded[:61, :77])
    assert _same_bits(np.ascontiguousarray(out), normalise_image(x))
    assert _same_bits(padded[:61, :77], normalise_image(x)) and (padded[61:] == 7.0).all()


@pytest.mark.parametrize("seed", range(3))
def test_batched_standardise_is_the_per_crop_one_to_the_bit(seed):
    from ptolemy_rt.crops import _standardise, _standardise_rows

    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 70)), int(rng.integers(2, 70))
    n = int(rng.integers(3, 40))
    batch = (rng.standard_normal((n, rows, cols)) * 10.0 ** rng.uniform(-3, 5) + rng.uniform(-1e4, 1e4))
    batch = batch.astype(np.float32)
    batch[0] = 7.0  # no contrast: zeros
    batch[1, : rows // 2] = 0.0
    plain = np.empty_like(batch)
    for k in range(n):
        _standardise(batch[k], plain[k], np.empty((rows, cols)), np.empty((rows, cols)))
    fast = batch.copy()
    _standardise_rows(fast.reshape(n, -1))
    assert _same_bits(fast, plain) and not fast[0].any()


def test_small_hole_crops_take_the_batched_path_with_the_same_bits():
    from ptolemy_rt import crops

    rng = np.random.default_rng(4)
    image = (rng.random((300, 420)) * 500.0 + 20.0).astype(np.float32)
    points = rng.random((40, 2)) * [440.0, 320.0] - 10.0  # some off the edge (zeroed outside)
    geometry = hole_crops(points, 31.0, 50.0, image.shape, "centred")
    assert geometry.shapes[0][0] * geometry.shapes[0][1] <= crops._BATCH_STANDARDISE_PIXELS
    batch = hole_crop_inputs(image, geometry.matrices, geometry.shapes, 16)
    for k, (m, s) in enumerate(zip(geometry.matrices, geometry.shapes)):
        assert _same_bits(batch[k, 0], _plain_crop_input(image, m, s, 16)), k


def test_running_median_is_the_loop_of_medians():
    from ptolemy_rt.spacing import _running_median

    rng = np.random.default_rng(2)
    for n in list(range(2, 30)) + [255, 360]:
        x = rng.standard_normal(n) * 5
        if n % 3 == 0:
            x = np.round(x)  # ties
        plain = np.array([np.median(x[max(1, k - 8) : k + 9]) for k in range(n)])
        assert np.array_equal(_running_median(x, 8), plain)


def _plain_unet_scores(prob, geometry):
    """scoring.unet_scores one crop at a time: one warp and one sum per crop (on OpenCV's one thread)."""
    from ptolemy_rt.scoring import _opencv_threads

    out = np.zeros(len(geometry.matrices))
    for i, (m, (rows, cols)) in enumerate(zip(geometry.matrices, geometry.shapes)):
        if rows < 1 or cols < 1:
            continue
        with _opencv_threads(1):
            s = cv2.warpAffine(prob, m, (cols, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        out[i] = float(s.sum(dtype=np.float64)) / max(geometry.area, float(rows * cols))
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("mode", ["centred", "ptolemy"])
@pytest.mark.parametrize("spacing", [12.0, 53.8, 300.0])
def test_stacked_unet_scores_are_the_per_crop_ones_to_the_bit(mode, spacing, monkeypatch):
    from ptolemy_rt import scoring

    rng = np.random.default_rng(int(spacing))
    prob = rng.random((400, 560), dtype=np.float32)
    points = rng.random((90, 2)) * [620.0, 460.0] - 30.0  # some off the edge, some windows cut (ptolemy)
    geometry = hole_crops(points, 23.0, spacing, prob.shape, mode)
    plain = _plain_unet_scores(prob, geometry)
    assert np.array_equal(scoring.unet_scores(prob, geometry), plain)
    monkeypatch.setattr(scoring, "_SCORE_STACK_PIXELS", 1)  # one crop per stack
    assert np.array_equal(scoring.unet_scores(prob, geometry), plain)


@pytest.mark.parametrize("spacing", [53.8, 351.0])
def test_unet_scores_do_not_depend_on_opencvs_thread_count(spacing):
    """cv2.warpAffine's bilinear rows round with OpenCV's thread count (a one-thread batch worker and a
    two-thread CLI gave other last bits): the scores must be the same bits at any count, which is kept."""
    from ptolemy_rt import scoring

    rng = np.random.default_rng(7)
    prob = cv2.GaussianBlur(rng.random((1024, 1440), dtype=np.float32), (0, 0), 3)
    geometry = hole_crops(rng.random((40, 2)) * [1440.0, 1024.0], 17.0, spacing, prob.shape, "centred")
    before = cv2.getNumThreads()
    try:
        scores = []
        for threads in (1, 2, 4):
            cv2.setNumThreads(threads)
            scores.append(scoring.unet_scores(prob, geometry))
            assert cv2.getNumThreads() == threads
    finally:
        cv2.setNumThreads(before)
    assert all(np.array_equal(scores[0], s) for s in scores[1:])


@pytest.mark.parametrize("seed", range(3))
def test_centred_hole_crops_are_the_per_point_geometry_to_the_bit(seed):
    from ptolemy_rt.crops import crop_half_side, crop_matrix

    rng = np.random.default_rng(seed)
    points = rng.random((int(rng.integers(0, 200)), 2)) * 2000.0 - 300.0
    angle, spacing = float(rng.uniform(-90, 180)), float(rng.uniform(9, 400))
    geometry = hole_crops(points, angle, spacing, (1024, 1440), "centred")
    half = crop_half_side(spacing)
    a = math.radians(angle)
    ec, er = np.array([math.cos(a), -math.sin(a)]), np.array([math.sin(a), math.cos(a)])
    assert len(geometry.matrices) == len(points) and set(geometry.shapes) <= {(2 * half, 2 * half)}
    for i, p in enumerate(points):
        m = crop_matrix((p[0], p[1]), angle, 2 * half, 2 * half)
        assert np.array_equal(geometry.matrices[i], m)
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
        assert geometry.vertices[i] == tuple(
            (float(p[0] + dc * ec[0] + dr * er[0]), float(p[1] + dc * ec[1] + dr * er[1])) for dc, dr in corners)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_views_and_film_mask_told_the_image_is_finite_are_the_same(dtype):
    # find_holes tells them (its normalise_image summed the image as float32 to a finite mean): the finiteness
    # check they skip would have returned the image as it is
    from ptolemy_rt import film, views

    image = (synthetic_medmag(2)[0] * 3000.0).astype(dtype)
    assert normalise_image(image) is not None
    assert views.large_holes(image, finite=True) == views.large_holes(image)
    assert views.atlas_reason(image, finite=True) == views.atlas_reason(image)
    for spacing in (None, 90.0):
        assert np.array_equal(film.film_mask(image, spacing, finite=True), film.film_mask(image, spacing))


@pytest.mark.parametrize("spacing, n", [(290.0, 17), (45.0, 300)])  # 3 batches of large crops, 10 of small ones
def test_hole_cnn_inputs_built_at_once_give_the_batch_by_batch_scores(spacing, n, monkeypatch):
    from ptolemy_rt import scoring
    from ptolemy_rt.models import load_models

    models = load_models(None)
    rng = np.random.default_rng(n)
    image = (rng.random((700, 900)) * 800.0 + 10.0).astype(np.float32)
    geometry = hole_crops(rng.random((n, 2)) * [960.0, 760.0] - 30.0, 31.0, spacing, image.shape, "centred")
    spec = models.spec("hole_cnn")
    assert len(scoring.plan_batches(geometry.shapes, scoring.HOLE_BATCHES, spec.batch_statistics, spec.min_size)) > 2
    at_once = scoring.cnn_scores(image, geometry, models)
    monkeypatch.setattr(scoring, "_BUILD_AT_ONCE_PIXELS", 0)
    assert np.array_equal(scoring.cnn_scores(image, geometry, models), at_once)


def _blob_mask(rng, shape, n, rings):
    """Discs of random sizes at random places (some touching, some within a few pixels of another), a few rings
    (blobs with a hole) with or without a blob inside, single pixels, blobs cut by the edge."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        cy, cx = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5)
        r = rng.choice([0.5, rng.uniform(1, 4), rng.uniform(4, 12)])
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask |= d2 <= r * r
        if rings and rng.random() < 0.3:
            mask |= (d2 >= (r + 3) ** 2) & (d2 <= (r + 6) ** 2)  # a ring around it: a blob with a hole
    return mask


# 0.4 s a seed: three in the default run, all eight in the slow run (CI)
@pytest.mark.parametrize("seed", [*range(3), *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(3, 8))])
def test_hole_centroids_without_labels_are_find_regions_to_the_bit(seed):
    # holes._separate_blob_centroids counts regions instead of labelling them where each holds one blob; the
    # centroids (and their order) must be find_regions' in every case, the fallback's included
    from ptolemy_rt import holes
    from ptolemy_rt.regions import find_regions

    rng = np.random.default_rng(seed)
    used = 0
    for trial in range(40):
        shape = (int(rng.integers(20, 160)), int(rng.integers(20, 200)))
        mask = _blob_mask(rng, shape, int(rng.integers(0, 40)), rings=trial % 3 == 0)
        for window in (1, 2, 5, 6):
            plain = np.asarray(find_regions(mask, window=window, min_area=-math.inf, keep_labels=False).centroids,
                               dtype=np.float64).reshape(-1, 2)
            fast = holes.hole_centroids(mask, window)
            assert fast.shape == plain.shape and np.array_equal(fast, plain), (trial, window)
            for other in (mask.astype(np.uint8) * 3, mask.astype(np.float32)):  # find_regions' other dtypes
                assert np.array_equal(holes.hole_centroids(other, window), plain)
            used += holes._separate_blob_centroids(mask, window) is not None
    assert 0 < used < 40 * 4  # both paths taken


def _plain_robust_mask(x):
    """spacing._prepare's bar mask as written before it skipped the percentile."""
    import cv2

    from ptolemy_rt import spacing

    bright = float(np.percentile(x, 90))
    dark = cv2.GaussianBlur(x, (0, 0), 2.0) < spacing._BAR_LEVEL * bright
    return cv2.erode((~dark).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32)


@pytest.mark.parametrize("case", ["bright", "bar", "flat", "bright-flat"])
def test_prepare_without_percentile_or_median_sorts_is_the_same(case):
    # spacing._prepare skips the 90th percentile where no pixel can be dark against it, and the variance's
    # median where its floor cannot bind: z and the mask must be the plain computation's in every case
    from ptolemy_rt import spacing

    image = synthetic_medmag(0)[0].astype(np.float32)
    if "bright" in case:
        image = image + 3.0 * float(image.max())  # nothing dark: the percentile is skipped
    if case == "bar":
        image[:, 100:400] = 0.0
    if "flat" in case:
        image[:, :1100] = float(np.median(image))  # flat but for a band: variance ~0 far from it, the floor binds
    x = spacing._bin(image, max(1, math.ceil(max(image.shape) / spacing._WORK_SIDE)))
    sigma = max(x.shape) / 8.0
    ws = spacing._unmasked_weight(x.shape, sigma)
    mean = spacing._smooth(x, sigma) / ws
    var = spacing._smooth(x * x, sigma) / ws - mean * mean
    floor_binds = not float(var.min()) >= 1e-4 * float(var.max())
    assert floor_binds == (case == "flat") or case == "bright-flat"  # both paths are compared
    for robust in (True, False):
        prepared = spacing._prepare(image, robust)
        assert prepared is not None
        z, w, factor = prepared
        plain_w = _plain_robust_mask(x) if robust else np.ones_like(x)
        assert _same_bits(w, plain_w)
        assert _same_bits(z, _plain_prepare_tail(x, plain_w, robust))


@pytest.mark.parametrize("scale", [1.0, 1e-39, 1e-30, 1e20, -3e38])
@pytest.mark.parametrize("hot", [None, 3e38, -1e16])
def test_tame_extremes_told_the_image_is_finite_is_the_same(scale, hot):
    # find_holes passes finite=True (as_image checked): one cv2.minMaxLoc pass instead of numpy's max and min
    from ptolemy_rt.unet import tame_extremes

    image = (np.random.default_rng(3).random((300, 420)) * scale).astype(np.float32)
    image[5, 7] = -0.0
    if hot is not None:
        image[100, 200] = hot
    assert np.isfinite(image).all()
    told, plain = tame_extremes(image, finite=True), tame_extremes(image)
    assert (told is image) == (plain is image)
    assert told.dtype == plain.dtype and np.array_equal(told.view(np.uint32), plain.view(np.uint32))
