"""Export toolchain: published checkpoints load strictly, convert to clean ONNX, and ORT matches torch.

Needs torch/onnx (dev only) and the reference material in ../shared; without them the tests skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

# --- optional dependencies (the reference data and converted sets come from conftest's session fixtures) ---

REPO = Path(__file__).resolve().parents[1]


def _absent(reason: str) -> NoReturn:
    """Skip the module when a dev dependency is missing, but fail under CI, where it must be present."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _require_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _absent(f"{name} not importable ({exc}); pip install -e '.[dev,cpu]'")


torch = _require_module("torch")
onnx = _require_module("onnx")
ort = _require_module("onnxruntime")
mrcfile = _require_module("mrcfile")

from export import convert_ptolemy, nets  # noqa: E402  (needs torch, checked above)
from export.to_onnx import graph_opset, io_dims, sha256_file  # noqa: E402

TASKS = ("square_cnn", "hole_unet", "hole_cnn")
TOL = 1e-4


@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> Path:
    """The Ptolemy reference material (conftest skips, or fails under CI, where it is absent)."""
    torch.set_num_threads(2)
    return reference_dir


@pytest.fixture(scope="module")
def converted(converted_models: Path, converted_models_running: Path) -> dict[str, Path]:
    """Both BN modes, converted once per session by conftest into temporary directories (never the repo)."""
    return {"batch": converted_models, "running": converted_models_running}


def _session(path: Path) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_logits(model_set: Path, task: str, x: np.ndarray) -> np.ndarray:
    return _session(model_set / f"{task}.onnx").run(["logit"], {"image": x})[0]


def _torch_logits(ref: Path, task: str, bn: str, x: np.ndarray) -> np.ndarray:
    model = convert_ptolemy.load_published(task, ref / "weights", bn)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _normalise(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return ((a - a.mean()) / a.std()).astype(np.float32)


def _read(ref: Path, name: str) -> np.ndarray:
    return np.asarray(mrcfile.read(ref / "images" / name), dtype=np.float32)


# --- modules ---------------------------------------------------------------------------------------------


def test_batch_stat_norm_equals_torch_batchnorm_in_train_mode() -> None:
    torch.manual_seed(0)
    ours, theirs = nets.BatchStatNorm2d(8), torch.nn.BatchNorm2d(8)
    theirs.weight.data.uniform_(0.5, 2.0)
    theirs.bias.data.normal_()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 8, 9, 7) * 3 + 1
    theirs.train()
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=1e-5)
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_hole_cnn_min_size_is_the_smallest_accepted() -> None:
    model = nets.HoleCNN(channels=4, bn="none").eval()
    assert model.min_size == nets.hole_cnn_min_size() == 63
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 63, 63)).shape == (1, 1)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 1, 62, 80))


def test_variants_build_with_other_depths_and_widths() -> None:
    x = torch.randn(2, 1, 64, 96)
    unet = nets.UNet(depth=4, width=(8, 16, 32, 32), blocks_per_level=2).eval()
    square = nets.SquareCNN(channels=8, kernels=(5, 3, 3), crop=96, bn="none").eval()
    with torch.no_grad():
        assert unet(x).shape == (2, 1, 64, 96)
        assert square(torch.randn(2, 1, 96, 96)).shape == (2, 1)
    assert unet.multiple == 8
    assert "down_path.0.extra.0.weight" in unet.state_dict()


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_published_checkpoints_load_strict(ref: Path, bn: str) -> None:
    for task, spec in convert_ptolemy.PUBLISHED.items():
        state = torch.load(ref / "weights" / spec.file, map_location="cpu", weights_only=True)
        model = convert_ptolemy.load_published(task, ref / "weights", bn)
        assert set(model.state_dict()) == set(state), task


# --- converted graphs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_converted_set_is_complete_clean_and_recorded(ref: Path, converted: dict[str, Path], bn: str) -> None:
    out = converted[bn]
    assert sorted(p.name for p in out.iterdir()) == [
        "hole_cnn.onnx", "hole_unet.onnx", "manifest.json", "square_cnn.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["licence"] == "CC BY-NC 4.0"
    assert manifest["provenance"]["bn"] == bn
    assert set(manifest["models"]) == set(TASKS)
    expected_dims = {
        "square_cnn": {"image": ["N", 1, 240, 240], "logit": ["N", 1]},
        "hole_unet": {"image": ["N", 1, "H", "W"], "logit": ["N", 1, "H", "W"]},
        "hole_cnn": {"image": ["N", 1, "H", "W"], "logit": ["N", 1]},
    }
    for task in TASKS:
        entry = manifest["models"][task]
        spec = convert_ptolemy.PUBLISHED[task]
        path = out / entry["file"]
        assert entry["task"] == task and entry["input"] == "image" and entry["output"] == "logit"
        assert entry["sha256"] == sha256_file(path)
        assert entry["provenance"]["source_sha256"] == sha256_file(ref / "weights" / spec.file)
        assert entry["licence"] == "CC BY-NC 4.0"
        assert entry["bn"] == ("none" if task == "hole_unet" else bn)
        model = onnx.load(str(path))  # fails if it needed external data: there is none beside it
        onnx.checker.check_model(model, full_check=True)
        assert graph_opset(model) >= 17 and entry["opset"] == graph_opset(model)
        assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
        assert io_dims(model) == expected_dims[task]
        ops = {node.op_type for node in model.graph.node}
        if bn == "batch" and task != "hole_unet":
            # Batch statistics must be reduce ops: ORT's inference build rejects training-mode BatchNormalization.
            assert "BatchNormalization" not in ops and "ReduceMean" in ops
        for node in model.graph.node:
            if node.op_type == "BatchNormalization":
                assert all(a.i == 0 for a in node.attribute if a.name == "training_mode")
    assert manifest["models"]["square_cnn"]["crop_size"] == 240
    unet = manifest["models"]["hole_unet"]
    assert unet["multiple"] == 256 and unet["threshold"] == 1e-4 and unet["scale"] is None
    assert manifest["models"]["hole_cnn"]["min_size"] == 63


def test_unet_graph_does_not_depend_on_bn_mode(converted: dict[str, Path]) -> None:
    assert sha256_file(converted["batch"] / "hole_unet.onnx") == sha256_file(converted["running"] / "hole_unet.onnx")


def test_converter_refuses_to_write_inside_the_repository(ref: Path) -> None:
    target = REPO / "models" / "ptolemy-published-test"
    assert convert_ptolemy.main([str(ref / "weights"), str(target)]) == 2
    assert not target.exists()
    with pytest.raises(ValueError):
        convert_ptolemy.convert(ref / "weights", target)


# --- parity: onnxruntime vs torch on real inputs ---------------------------------------------------------


def _square_crops(ref: Path) -> np.ndarray:
    image = _read(ref, "20may08a_16760340.mrc")
    # Whole-image statistics stand in for the square-class statistics: any realistic input will do here.
    image = (image - image.mean()) / image.std()
    centres = [(r, c) for r in (150, 500, 870) for c in (150, 500, 870)]
    crops = [image[r - 120 : r + 120, c - 120 : c + 120] for r, c in centres]
    return np.ascontiguousarray(np.stack(crops)[:, None], dtype=np.float32)


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_square_cnn_parity(ref: Path, converted: dict[str, Path], bn: str) -> None:
    x = _square_crops(ref)
    got = _ort_logits(converted[bn], "square_cnn", x)
    assert got.shape == (len(x), 1)
    np.testing.assert_allclose(got, _torch_logits(ref, "square_cnn", bn, x), rtol=0, atol=TOL)
    # bn=batch: a crop's score depends on the rest of its batch (as in the original); bn=running: it does not.
    alone = _ort_logits(converted[bn], "square_cnn", x[:3])
    differs = np.abs(alone - got[:3]).max() > 1e-3
    assert differs == (bn == "batch")


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_hole_cnn_parity(ref: Path, converted: dict[str, Path], bn: str) -> None:
    image = _read(ref, "medmag_readme_1024x1440.mrc")
    session = _session(converted[bn] / "hole_cnn.onnx")
    model = convert_ptolemy.load_published("hole_cnn", ref / "weights", bn)
    for r, c, h, w in [(150, 300, 270, 270), (601, 917, 97, 131), (40, 1300, 63, 63)]:
        x = _normalise(image[r : r + h, c : c + w])[None, None]
        got = session.run(["logit"], {"image": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (1, 1)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"crop {h}x{w}")


def test_hole_cnn_batch_mode_reproduces_reference_scores(ref: Path, converted: dict[str, Path]) -> None:
    """The original's hole crops (image rotated by the lattice angle, box sliced with int() bounds, per-crop
    normalisation), scored one at a time with batch statistics, give the scores it printed."""
    from scipy.ndimage import rotate

    image = np.clip(_read(ref, "medmag_readme_1024x1440.mrc"), 0, None)
    holes = json.loads((ref / "reference-outputs" / "medmag_readme.json").read_text())
    vertices = np.array([h["vertices"] for h in holes])  # (n, 4, [x, y])
    edge = vertices[0, 1] - vertices[0, 0]
    angle_deg = math.degrees(math.atan2(edge[1], edge[0]))
    rotated = rotate(image, angle_deg)
    # The original rotates box corners about shape // 2 of each image; invert its mapping back to rotated pixels.
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre_in = np.array([image.shape[0] // 2, image.shape[1] // 2], float)
    centre_out = np.array([rotated.shape[0] // 2, rotated.shape[1] // 2], float)
    session = _session(converted["batch"] / "hole_cnn.onnx")
    for i in (0, len(holes) // 2, len(holes) - 1):
        box = (vertices[i][:, ::-1] - centre_in) @ rot.T + centre_out  # (row, col)
        r0, r1 = int(max(box[:, 0].min(), 0)), int(min(box[:, 0].max(), rotated.shape[0]))
        c0, c1 = int(max(box[:, 1].min(), 0)), int(min(box[:, 1].max(), rotated.shape[1]))
        x = _normalise(rotated[r0:r1, c0:c1])[None, None]
        logit = float(session.run(["logit"], {"image": x})[0][0, 0])
        assert abs(1 / (1 + math.exp(-logit)) - holes[i]["score"]) < TOL, f"hole {i}"


def test_unet_parity_full_size_and_reference(ref: Path, converted: dict[str, Path]) -> None:
    image = _read(ref, "medmag_readme_1024x1440.mrc")
    x = np.zeros((1, 1, 1024, 1536), np.float32)  # padding with the mean = 0 after normalising
    x[0, 0, :, :1440] = _normalise(image)
    got = _ort_logits(converted["batch"], "hole_unet", x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, _torch_logits(ref, "hole_unet", "none", x), rtol=0, atol=TOL)
    prob = 1 / (1 + np.exp(-got[0, 0, :, :1440].astype(np.float64)))
    reference = np.load(ref / "reference-outputs" / "medmag_readme_unet.npz")["prob"]
    np.testing.assert_allclose(prob, reference, rtol=0, atol=TOL)
    assert np.array_equal(prob > 1e-4, reference > 1e-4)


def test_unet_parity_odd_size(ref: Path, converted: dict[str, Path]) -> None:
    # 300x397 is no multiple of anything: every upsampling goes to an odd or uneven skip size.
    image = _read(ref, "medmag_readme_1024x1440.mrc")
    x = _normalise(image[100:400, 200:597])[None, None]
    got = _ort_logits(converted["running"], "hole_unet", x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, _torch_logits(ref, "hole_unet", "none", x), rtol=0, atol=TOL)
