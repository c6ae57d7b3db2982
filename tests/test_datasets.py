"""Training sees what inference sees: export.datasets builds network inputs with the runtime's own stages."""

from __future__ import annotations

import numpy as np
import pytest

from ptolemy_rt.holes import find_holes
from ptolemy_rt.models import ModelSet, default_models_dir
from ptolemy_rt.squares import find_squares

from .conftest import synthetic_atlas, synthetic_medmag

datasets = pytest.importorskip("export.datasets")


class Recording(ModelSet):
    """A model set that keeps every network input it is given."""

    def __init__(self, directory) -> None:
        super().__init__(directory, provider="cpu")
        self.inputs: dict[str, list[np.ndarray]] = {}

    def run(self, task: str, x: np.ndarray) -> np.ndarray:
        self.inputs.setdefault(task, []).append(np.array(x, copy=True))
        return super().run(task, x)


@pytest.fixture(scope="module")
def recording() -> Recording:
    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("no shipped model set")
    return Recording(default_models_dir())


def test_hole_training_crops_are_the_hole_cnn_inputs(recording):
    image, _ = synthetic_medmag(1)
    recording.inputs.clear()
    result = find_holes(image, recording, score="cnn")
    assert len(result.holes) > 10
    seen = np.concatenate([x[:, 0] for x in recording.inputs["hole_cnn"]])
    min_size = recording.spec("hole_cnn").min_size
    for hole in result.holes:
        crop = datasets.hole_crop(image, (hole.x, hole.y), result.spacing_px, result.angle_deg, min_size)
        assert crop.shape == seen.shape[1:]
        assert any(np.array_equal(crop, s) for s in seen), (hole.x, hole.y)


def test_unet_training_input_is_the_unet_input(recording):
    from ptolemy_rt.spacing import estimate_spacing
    from ptolemy_rt.unet import unet_factor

    image, _ = synthetic_medmag(1)
    scale = recording.spec("hole_unet").scale
    if scale is None:
        pytest.skip("the shipped U-Net runs at native scale")
    recording.inputs.clear()
    find_holes(image, recording, cnn=False)
    first = recording.inputs["hole_unet"][0][0, 0]  # the try at the measured period
    want = datasets.unet_input(image, unet_factor(estimate_spacing(image), scale))
    rows, cols = want.shape
    assert np.array_equal(first[:rows, :cols], want)
    assert not first[rows:].any() and not first[:, cols:].any()  # padded with the normalised mean


def test_square_training_crops_are_the_square_cnn_inputs(recording):
    image, _ = synthetic_atlas(3)
    recording.inputs.clear()
    # Training crops follow the original's segmentation (compat); the default adds lattice squares.
    result = find_squares(image, recording, compat=True)
    seen = np.concatenate(recording.inputs["square_cnn"])
    found = datasets.atlas_squares(image)
    assert len(result.squares) == len(seen) == len(found.crops) > 10
    assert np.array_equal(found.crops, seen)


def test_scaled_centres_follow_the_resize():
    """Targets move with the image: a blob's centroid after cv2 resizing lands where _scaled_centres puts it."""
    import cv2

    yy, xx = np.mgrid[0:60, 0:80]
    x0, y0 = 31.3, 22.7
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 18.0).astype(np.float32)
    for size in ((160, 120), (37, 28), (320, 240)):
        resized = cv2.resize(blob, size, interpolation=cv2.INTER_CUBIC if size[0] > 80 else cv2.INTER_AREA)
        ry, rx = np.mgrid[0:resized.shape[0], 0:resized.shape[1]]
        w = np.maximum(resized, 0)
        got = np.array([(rx * w).sum() / w.sum(), (ry * w).sum() / w.sum()])
        want = datasets._scaled_centres(np.array([[x0, y0]]), blob.shape, resized.shape)[0]
        np.testing.assert_allclose(got, want, atol=0.05 * size[0] / 80 + 0.05)


@pytest.mark.slow
def test_unet_pool_covers_the_periods_inference_gives():
    """The U-Net is shown every period the runtime resamples to (ptolemy_rt.unet.unet_factor): the canonical one,
    and down to MIN_UNET_PERIOD_FRACTION of it for whole grid-square views; targets sit on a lattice."""
    from ptolemy_rt.unet import MIN_UNET_PERIOD_FRACTION

    periods = []
    for seed in datasets.train_seeds(0, 40, stream=0):
        item = datasets.unet_image(int(seed))
        assert item.image.dtype == np.float32 and abs(float(item.image.mean())) < 1e-3
        c = item.centres
        if len(c) < 4:
            continue
        d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
        d[d == 0] = np.inf
        periods.append(float(np.median(d.min(axis=1))))
    periods = np.array(periods)
    low = MIN_UNET_PERIOD_FRACTION * datasets.CANONICAL_SPACING / 1.12
    assert periods.min() >= 0.85 * low and periods.max() <= 1.13 * datasets.CANONICAL_SPACING
    assert np.sum(periods < 0.6 * datasets.CANONICAL_SPACING) >= 3  # short periods of grid-square views
    assert np.sum(periods > 0.88 * datasets.CANONICAL_SPACING) >= 10


@pytest.mark.slow
def test_hole_examples_mix_grid_square_views():
    """Hole CNN examples come from med-mag and grid-square views, both classes, each crop normalised."""
    crops, labels, groups = datasets.hole_examples(0, 10, max_per_image=30, min_size=16)
    assert len(crops) == len(labels) == len(groups) > 100
    assert 0.2 < labels.mean() < 0.9
    assert min(min(c.shape) for c in crops) >= 16
    for c in crops[::17]:
        assert abs(float(c.mean())) < 1e-3 and abs(float(c.std()) - 1) < 1e-2
