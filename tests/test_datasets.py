"""Training sees what inference sees: export.datasets builds network inputs with the runtime's own stages."""

from __future__ import annotations

import numpy as np
import pytest

from ptolemy_rt.holes import find_holes
from ptolemy_rt.models import ModelSet, default_models_dir
from ptolemy_rt.squares import find_squares
from ptolemy_rt.synthetic import make_atlas, make_medmag

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
    image, _ = make_medmag(1)
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

    image, _ = make_medmag(1)
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
    image, _ = make_atlas(3)
    recording.inputs.clear()
    # Training crops follow the original's segmentation (compat); the default adds lattice squares.
    result = find_squares(image, recording, compat=True)
    seen = np.concatenate(recording.inputs["square_cnn"])
    found = datasets.atlas_squares(image)
    assert len(result.squares) == len(seen) == len(found.crops) > 10
    assert np.array_equal(found.crops, seen)
