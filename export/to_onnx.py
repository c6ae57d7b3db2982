"""Export a PyTorch module to one self-contained, checked ONNX file, written atomically."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "logit"
MIN_OPSET = 17


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to path via a temporary file in the same directory and os.replace, so readers never see a
    partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; a model set is ordinary readable data.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _uses_external_data(model: onnx.ModelProto) -> bool:
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or len(init.external_data) > 0:
            return True
    return False


def to_onnx_bytes(
    module: nn.Module,
    example: torch.Tensor,
    *,
    input_axes: Mapping[int, str],
    output_axes: Mapping[int, str],
    opset: int = MIN_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Trace module (in eval mode) on example and return a checker-clean, single-file ONNX model as bytes.

    The graph has one input "image" and one output "logit"; input_axes/output_axes name the dynamic dimensions.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript (not a dev
        # dependency here) and handles shape-dependent Resize less predictably; the warnings are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dict(input_axes), OUTPUT_NAME: dict(output_axes)},
            do_constant_folding=True,
            export_params=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    if _uses_external_data(model):
        raise RuntimeError("exported graph refers to external data; expected a single file")
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    # Re-check the serialised form: that is what the runtime will read.
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    input_axes: Mapping[int, str],
    output_axes: Mapping[int, str],
    opset: int = MIN_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Export module to path (atomically, single file, checker-clean) and return the file's sha256."""
    data = to_onnx_bytes(
        module, example, input_axes=input_axes, output_axes=output_axes, opset=opset, metadata=metadata
    )
    write_atomic(path, data)
    return sha256_bytes(data)


def graph_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset a model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("model imports no default-domain opset")


def io_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input's and output's dimensions: int when fixed, the symbol's name when dynamic."""
    dims: dict[str, list[int | str]] = {}
    for value in list(model.graph.input) + list(model.graph.output):
        shape = value.type.tensor_type.shape
        dims[value.name] = [d.dim_param if d.dim_param else int(d.dim_value) for d in shape.dim]
    return dims
