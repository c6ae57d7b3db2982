"""A few steps of each training recipe (export.train), end to end: data, fit, ONNX, manifest entry, runtime.

Slow (torch, synthetic data): run by .ci/run, not by the default `pytest`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptolemy_rt.manifest import read_manifest, validate_model_set
from ptolemy_rt.models import ModelSet

from .conftest import need_torch

pytestmark = pytest.mark.slow

TINY = {
    "unet": ("UNET", {"pool_images": 3, "steps": 3, "batch": 2, "patch": 64}, "hole_unet"),
    "square": ("SQUARE", {"atlases": 2, "epochs": 1, "batch": 8}, "square_cnn"),
    "hole": ("HOLE", {"images": 3, "max_per_image": 12, "epochs": 1, "batch": 8}, "hole_cnn"),
}


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_each_recipe_trains_exports_and_loads(recipe, tmp_path, monkeypatch):
    need_torch()
    from export import train

    name, changes, task = TINY[recipe]
    for key, value in changes.items():
        monkeypatch.setitem(getattr(train, name), key, value)
    out = tmp_path / "set"
    assert train.main([recipe, "--out", str(out), "--seed", "3", "--threads", "1"]) == 0
    # The written set is one the runtime accepts as it is.
    assert validate_model_set(out) == []
    spec = read_manifest(out).models[task]
    assert spec.bn == "none" and spec.provenance is not None and spec.provenance["seed"] == 3
    recorded = json.loads((out / "manifest.json").read_text())["models"][task]["provenance"]["recipe"]
    assert all(recorded[k] == v for k, v in changes.items())
    models = ModelSet(out, provider="cpu", threads=1)
    side = spec.crop_size
    shape = {"hole_unet": (1, 1, 64, 96), "square_cnn": (2, 1, side, side), "hole_cnn": (3, 1, 40, 40)}[task]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    p = models.predict(task, x)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    assert p.shape[0] == shape[0]
    # Same seed, same bytes: a second run rewrites the identical graph.
    again = tmp_path / "again"
    assert train.main([recipe, "--out", str(again), "--seed", "3", "--threads", "1"]) == 0
    assert (again / spec.file).read_bytes() == (out / spec.file).read_bytes()


def test_the_square_architecture_string_rebuilds_the_shipped_network():
    """The manifest's `architecture` names what rebuilds the square CNN (widths, crop, pool), and the shipped
    manifest's string is the one export.train writes for its recipe."""
    need_torch()
    from pathlib import Path

    from export import edge_nets, train

    root = Path(__file__).resolve().parents[1] / "models"
    provenance = json.loads((root / "manifest.json").read_text())["models"]["square_cnn"]["provenance"]
    recipe = provenance["recipe"]
    model = edge_nets.EdgeSquareCNN(recipe["widths"], crop=recipe["crop_size"], pool=1)
    assert provenance["architecture"] == train.architecture(model, recipe)
    name, args = provenance["architecture"].split(" ", 1)
    rebuilt = getattr(edge_nets, name)(**json.loads(args))
    assert (rebuilt.crop, rebuilt.pool, rebuilt.widths) == (model.crop, model.pool, model.widths)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    unet = edge_nets.EdgeUNet((4, 8))
    assert train.architecture(unet, {"widths": [4, 8]}) == 'EdgeUNet {"widths": [4, 8]}'
