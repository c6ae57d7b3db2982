"""A tiny, fast model set built with onnx.helper, for tests of the model-set machinery."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def _graph(task: str):
    import onnx
    from onnx import TensorProto, helper

    if task == "hole_unet":
        # logit = 4 * (x - 1): a monotone map, so thresholds behave predictably.
        nodes = [
            helper.make_node("Sub", ["image", "one"], ["d"]),
            helper.make_node("Mul", ["d", "four"], ["logit"]),
        ]
        inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
                 helper.make_tensor("four", TensorProto.FLOAT, [], [4.0])]
        out_shape = ["N", 1, "H", "W"]
    else:
        # logit = mean of the crop: the score follows the crop's brightness.
        nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=1),
                 helper.make_node("Reshape", ["m", "shape"], ["logit"])]
        inits = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
                 helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])]
        out_shape = ["N", 1]
    in_shape = ["N", 1, 240, 240] if task == "square_cnn" else ["N", 1, "H", "W"]
    graph = helper.make_graph(
        nodes, task,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_tiny_set(directory: Path) -> Path:
    """Write a three-graph model set with a valid manifest into `directory` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    models = {}
    extra = {
        "square_cnn": {"crop_size": 240},
        "hole_unet": {"multiple": 16, "threshold": 0.5, "scale": None, "max_pixels": None},
        "hole_cnn": {"min_size": 8},
    }
    for task in ("square_cnn", "hole_unet", "hole_cnn"):
        blob = _graph(task)
        (directory / f"{task}.onnx").write_bytes(blob)
        models[task] = {
            "file": f"{task}.onnx", "sha256": hashlib.sha256(blob).hexdigest(), "task": task,
            "input": "image", "output": "logit", "bn": "none", "opset": 18,
            "normalisation": "test graph", "provenance": {"made_by": "tests/tiny_models.py"},
            "licence": "BSD-3-Clause", **extra[task],
        }
    manifest = {"format": 1, "name": "tiny-test-set", "version": "0", "licence": "BSD-3-Clause",
                "provenance": {"made_by": "tests"}, "models": models}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return directory
