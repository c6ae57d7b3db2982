"""What a model set declares: manifest.json parsed once into typed, validated ModelSpec / Manifest values.

Every field, its type, its range and its default is written down here and nowhere else. Unknown,
ill-typed or out-of-range fields are refused with the field's name; `validate_model_set` lists every
problem of a set (manifest, files, hashes, graphs) without running an image, as mrcfile's validator
does for a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Mapping

from .errors import ModelError

__all__ = [
    "TASKS",
    "TASKS_OF_KIND",
    "BN_MODES",
    "HOLE_SCORES",
    "FORMAT",
    "UnetScale",
    "ModelSpec",
    "Manifest",
    "check_model_directory",
    "parse_manifest",
    "read_manifest",
    "model_path",
    "read_verified",
    "validate_model_set",
]

TASKS = ("square_cnn", "hole_unet", "hole_cnn")
# The tasks each kind of image's pipeline may run, in TASKS' order: the sessions a batch worker starts for its
# images, the graphs `leginon`'s finders need, the graphs a kind's calibrations may be bound to.
TASKS_OF_KIND = {"squares": ("square_cnn",), "holes": ("hole_unet", "hole_cnn")}
# How a graph's BatchNorm layers normalise. "batch": with the statistics of the batch it is given (the
# original never called eval()), so crops must be batched as the original batched them. A manifest that
# does not say is taken as "batch": wrong for a batch-independent graph costs speed, the reverse costs scores.
BN_MODES = ("batch", "running", "none")
HOLE_SCORES = ("unet", "cnn")
FORMAT = 1
# A manifest lists a few models (kilobytes); a larger file is not one, and is refused before it is read.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The largest sizes a graph's crops, padding and resampling may ask for: far above any trained graph's (square crops
# of 60 to 240 px, hole crops enlarged to 8 to 16, padding to 16, a 64 px period enlarged 1.3x at most), far below
# what exhausts memory on one image: a crop_size or min_size of 1e9, a multiple of 1e6, or a spacing_px of 1e300
# failed each image as 'not enough memory for this image' (exit 2) or an internal error (exit 70), the model set
# unnamed.
MAX_CROP_PX = 1024
MAX_UNET_MULTIPLE = 256
MAX_UNET_SPACING_PX = 256.0
MAX_UNET_UPSCALE = 4.0


@dataclass(frozen=True)
class UnetScale:
    """A scale-normalised U-Net: resample the image so the lattice period is spacing_px, enlarging <= max_upscale."""

    spacing_px: float
    max_upscale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As in the manifest."""
        return {"spacing_px": self.spacing_px, "max_upscale": self.max_upscale}


@dataclass(frozen=True)
class ModelSpec:
    """One graph of a model set, as its manifest entry declares it (defaults: the values used when absent)."""

    task: str
    file: str
    sha256: str
    input: str | None = None  # graph input name (None: the graph's first input)
    output: str | None = None  # graph output name (None: its first output); every graph outputs logits
    bn: str = "batch"
    opset: int | None = None
    normalisation: str | None = None  # what the runtime does before the graph, in words
    licence: str | None = None
    provenance: Mapping[str, Any] | None = field(default=None, compare=False)
    input_shape: tuple[int | str, ...] | None = None
    output_shape: tuple[int | str, ...] | None = None
    # Pixel size (Å) of the images the graph was trained on, where one was assumed; informational.
    pixel_size_A: float | None = None
    # square_cnn: side of the square crop the graph takes, and input pixels per crop pixel (crops are cut from
    # the image averaged over crop_scale x crop_scale blocks: ptolemy_rt.crops.square_crops).
    crop_size: int = 240
    crop_scale: int = 1
    # square_cnn: with this, crop_scale is the largest factor, lowered per image so that the median square
    # keeps at least this many crop pixels across (ptolemy_rt.crops.square_crop_scale); at most crop_size, and
    # only with crop_scale > 1 (parse_manifest refuses it otherwise).
    crop_min_side: int | None = None
    # hole_unet: pad to multiples of this; probability threshold; resampling; tile above this many pixels.
    multiple: int = 1
    threshold: float = 0.5
    scale: UnetScale | None = None
    max_pixels: int | None = None
    # hole_cnn: crops smaller than this are enlarged to it.
    min_size: int = 1

    @property
    def batch_statistics(self) -> bool:
        """Whether the graph normalises with its batch's statistics (so scores depend on batch composition)."""
        return self.bn == "batch"


@dataclass(frozen=True)
class Manifest:
    """A model set's manifest.json: set-level fields and one ModelSpec per task."""

    name: str
    models: Mapping[str, ModelSpec]
    format: int = FORMAT
    version: str | None = None
    licence: str | None = None
    provenance: Mapping[str, Any] | None = field(default=None, compare=False)
    hole_score: str = "unet"  # the score that ranks holes when none is asked for


# ---------------------------------------------------------------------------------------------------
# Field checks: each returns the parsed value or raises _Bad with what is wrong.


class _Bad(ValueError):
    pass


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad("must be a non-empty string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _Bad(f"must be an integer >= {lo}" if hi is None else f"must be an integer from {lo} to {hi}")
        return int(v)

    return check


def _opt(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _number(v: Any, lo: float, hi: float, what: str, closed: bool = False) -> float:
    """`v` as a float within (lo, hi), or (lo, hi] when `closed`; _Bad saying `what` otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v <= hi \
            or (v == hi and not closed):
        raise _Bad(f"must be a number {what}")
    return float(v)


def _positive(v: Any) -> float:
    return _number(v, 0.0, math.inf, "> 0")


def _threshold(v: Any) -> float:
    return _number(v, 0.0, 1.0, "in (0, 1)")


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise _Bad(f"must be one of {', '.join(options)}")
        return str(v)

    return check


def _sha(v: Any) -> str:
    if not isinstance(v, str) or not _SHA256.match(v):
        raise _Bad("must be 64 lower-case hex digits")
    return str(v)


def _relative_file(v: Any) -> str:
    path = _str(v)
    if "\0" in path:  # os.stat's ValueError (embedded null byte) was an internal error, exit 70
        raise _Bad("must be a file name (it holds a NUL byte)")
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise _Bad("must be a path inside the model set's directory (no absolute path, no '..')")
    return path


def _dict(v: Any) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _Bad("must be an object")
    return v


def _shape(v: Any) -> tuple[int | str, ...]:
    if not isinstance(v, list) or not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                                          for d in v):
        raise _Bad("must be a list of integers and axis names")
    return tuple(v)


def _scale(v: Any) -> UnetScale | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _Bad("must be null or an object {spacing_px, max_upscale}")
    unknown = sorted(set(v) - {"spacing_px", "max_upscale"})
    if unknown:
        raise _Bad(f"unknown key(s) {', '.join(unknown)}")
    if "spacing_px" not in v:
        raise _Bad("has no spacing_px")
    try:
        spacing = _number(v["spacing_px"], 0.0, MAX_UNET_SPACING_PX, f"in (0, {MAX_UNET_SPACING_PX:g}]", closed=True)
    except _Bad as exc:
        raise _Bad(f"spacing_px {exc}") from None
    try:
        cap = _opt(lambda u: _number(u, 0.0, MAX_UNET_UPSCALE, f"in (0, {MAX_UNET_UPSCALE:g}]", closed=True))(
            v.get("max_upscale"))
    except _Bad as exc:
        raise _Bad(f"max_upscale {exc}") from None
    return UnetScale(spacing, cap)


# Fields every entry may have, then those of one task only: name -> check.
_COMMON: dict[str, Callable[[Any], Any]] = {
    "task": _choice(TASKS),
    "file": _relative_file,
    "sha256": _sha,
    "input": _opt_str,
    "output": _opt_str,
    "bn": _choice(BN_MODES),
    "opset": _opt(_int(1)),
    "normalisation": _opt_str,
    "licence": _opt_str,
    "provenance": _opt(_dict),
    "input_shape": _opt(_shape),
    "output_shape": _opt(_shape),
    "pixel_size_A": _opt(_positive),
}
_PER_TASK: dict[str, dict[str, Callable[[Any], Any]]] = {
    "square_cnn": {"crop_size": _int(1, MAX_CROP_PX), "crop_scale": _int(1), "crop_min_side": _opt(_int(1))},
    "hole_unet": {"multiple": _int(1, MAX_UNET_MULTIPLE), "threshold": _threshold, "scale": _scale,
                  "max_pixels": _opt(_int(1))},
    "hole_cnn": {"min_size": _int(1, MAX_CROP_PX)},
}
_REQUIRED = ("file", "sha256")


def _format(v: Any) -> int:
    if v != FORMAT or isinstance(v, bool):
        raise _Bad(f"must be {FORMAT} (the only manifest format this version reads)")
    return FORMAT


_TOP: dict[str, Callable[[Any], Any]] = {
    "format": _format,
    "name": _str,
    "version": _opt_str,
    "licence": _opt_str,
    "provenance": _opt(_dict),
    "hole_score": _choice(HOLE_SCORES),
    "models": _dict,
}


def _check_fields(raw: dict, checks: Mapping[str, Callable[[Any], Any]], values: dict[str, Any],
                  problems: list[str], where: str = "", hint: Callable[[str], str] | None = None) -> None:
    """Each field of `raw` through its check into `values`; a problem naming it (`where` + key) when it is
    unknown (with `hint`'s words) or its value is refused."""
    for key, value in raw.items():
        check = checks.get(key)
        if check is None:
            problems.append(f"{where}{key}: unknown field{hint(key) if hint else ''}")
            continue
        try:
            values[key] = check(value)
        except _Bad as exc:
            problems.append(f"{where}{key}: {exc}, got {json.dumps(value)[:60]}")


def _other_task(key: str) -> str:
    """The hint for a model entry's unknown field that is another task's."""
    other = [t for t, keys in _PER_TASK.items() if key in keys]
    return f" (a {other[0]} field)" if other else ""


def _entry(task: str, raw: Any, problems: list[str]) -> ModelSpec | None:
    where = f"models.{task}"
    if task not in TASKS:
        problems.append(f"{where}: unknown task '{task}' (known: {', '.join(TASKS)})")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be an object")
        return None
    checks = {**_COMMON, **_PER_TASK[task]}
    values: dict[str, Any] = {"task": task}
    n_before = len(problems)  # the list holds the problems of earlier entries too
    for key in _REQUIRED:
        if key not in raw:
            problems.append(f"{where}.{key}: missing (required)")
    _check_fields(raw, checks, values, problems, f"{where}.", _other_task)
    if values.get("task", task) != task:
        problems.append(f"{where}.task: '{values['task']}' differs from its key '{task}'")
    if len(problems) == n_before and values.get("crop_min_side") is not None:
        min_side, size = values["crop_min_side"], values.get("crop_size", ModelSpec.crop_size)
        if min_side > size:
            problems.append(f"{where}.crop_min_side: must be at most crop_size ({size}), got {min_side}")
        elif values.get("crop_scale", ModelSpec.crop_scale) == 1:
            # At crop_scale 1 there is no factor to lower; refused rather than silently switching the crops to
            # the one-warp reduced path (ptolemy_rt.crops.square_crop_source), which differs in the last bits.
            problems.append(f"{where}.crop_min_side: needs crop_scale > 1 (it lowers crop_scale per image)")
    declared = values.get("input_shape")
    if len(problems) == n_before and task == "square_cnn" and declared is not None and len(declared) == 4:
        size = values.get("crop_size", ModelSpec.crop_size)
        if not _fits_crop(declared, size):
            # the crops fed are crop_size x crop_size: every image failed at inference, the set unnamed
            problems.append(f"{where}.crop_size: {size} does not fit input_shape {list(declared)}")
    if len(problems) > n_before:
        return None
    return ModelSpec(**values)


def parse_manifest(raw: Any, problems: list[str] | None = None) -> Manifest | None:
    """Parse a decoded manifest.json. Each problem is appended to `problems`, and None returned; without a
    list, ModelError names them all."""
    collect: list[str] = []
    manifest, _ = _parse(raw, collect)
    if problems is not None:
        problems.extend(collect)
    elif collect:
        raise ModelError("; ".join(collect))
    return manifest


def _parse(raw: Any, collect: list[str]) -> tuple[Manifest | None, dict[str, ModelSpec]]:
    """The manifest (None when anything is wrong) and the entries that parsed (for checking their files)."""
    if not isinstance(raw, dict):
        collect.append("the manifest must be a JSON object")
        return None, {}
    values: dict[str, Any] = {}
    _check_fields(raw, _TOP, values, collect)
    for key in ("format", "name", "models"):
        if key not in raw:
            collect.append(f"{key}: missing (required)")
    models: dict[str, ModelSpec] = {}
    if isinstance(values.get("models"), dict):
        if not values["models"]:
            collect.append("models: lists no models")
        for task, entry in values["models"].items():
            spec = _entry(str(task), entry, collect)
            if spec is not None:
                models[str(task)] = spec
    if collect:
        return None, models
    values["models"] = models
    return Manifest(**values), models


def check_model_directory(path: str | os.PathLike[str]) -> Path:
    """Path(path) when it is a directory; else ModelError (exit 3) naming it as given: missing, a file, a symlink
    loop or a name no file system holds (Path.is_dir raised OSError on that one). Every way in to a model
    set (load_models, ModelSet, validate_model_set, so every command's --models) goes through here."""
    # "" is the current folder, as Path("") is (os.path.isdir("") is False).
    if not os.path.isdir(os.fspath(path) or "."):  # False for every OSError and ValueError (a NUL in the name)
        raise ModelError(f"{os.fspath(path)}: model set directory not found")
    return Path(path)


def _manifest_problems(directory: Path) -> tuple[Manifest | None, dict[str, ModelSpec], list[str]]:
    """The parsed manifest of `directory` (None if unusable), the entries that parsed, and the problems,
    each naming the file."""
    path = directory / "manifest.json"
    try:
        check_model_directory(directory)
    except ModelError as exc:
        return None, {}, [str(exc)]
    if not path.is_file():
        return None, {}, [f"{directory}: no manifest.json (not a model set)"]
    from .smallfiles import read_small, text_of

    try:  # a manifest edited in a Windows editor may begin with a byte-order mark
        raw = json.loads(text_of(read_small(path, MAX_MANIFEST_BYTES, "model-set manifest", ModelError), "strict"))
    except ModelError as exc:
        return None, {}, [str(exc)]
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        return None, {}, [f"{path}: unreadable manifest ({exc})"]
    problems: list[str] = []
    manifest, specs = _parse(raw, problems)
    return manifest, specs, [f"{path}: {p}" for p in problems]


def read_manifest(directory: Path) -> Manifest:
    """Read and parse DIRECTORY/manifest.json; ModelError (exit 3) naming the file and each bad field."""
    manifest, _, problems = _manifest_problems(directory)
    if manifest is None:
        path = directory / "manifest.json"
        raise ModelError(problems[0] if len(problems) == 1 else f"{path}: " + "; ".join(
            p[len(str(path)) + 2:] for p in problems))
    return manifest


def model_path(directory: Path, spec: ModelSpec) -> Path:
    """The graph file of `spec`, refused (ModelError) when it resolves outside the set's directory."""
    # realpath, not Path.resolve: a symlink loop there raised RuntimeError (an internal error in batch)
    root = Path(os.path.realpath(directory))
    path = Path(os.path.realpath(root / spec.file))
    if not path.is_relative_to(root):
        raise ModelError(f"{root / spec.file}: model file for '{spec.task}' leads outside the model set "
                         f"directory {root} (symlink?)")
    return path


def read_verified(directory: Path, spec: ModelSpec) -> bytes:
    """The graph's bytes, read once and checked against the manifest's sha256: what onnxruntime is given."""
    from .smallfiles import open_regular

    path = model_path(directory, spec)
    if not path.is_file():
        raise ModelError(f"{path}: model file for '{spec.task}' is missing")
    # read from the descriptor checked: a FIFO swapped in after is_file() blocked the read until a writer came
    fd, st = open_regular(path, "model file", ModelError)
    try:
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > MAX_GRAPH_BYTES:
                raise ModelError(f"{path}: {st.st_size} bytes, more than a graph holds (protobuf's 2 GiB)")
            if st.st_size > _HASH_FIRST_BYTES:
                # A large file is hashed in passes before it is held whole: a sparse or foreign file of gigabytes
                # costs a read, not its size in memory. One that matches is read and hashed again below, so
                # that onnxruntime still gets the very bytes that were hashed.
                digest = hashlib.file_digest(fh, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                    else _streamed_sha256(fh)
                if digest != spec.sha256:
                    raise ModelError(_mismatch(path, digest, spec))
                fh.seek(0)
            # what the stat said, and a byte more (a file grown since fails the hash): read(2 GiB) reserved 2 GiB
            # of address space for a 10 MB graph, a MemoryError under `ulimit -v 2000000`
            blob = fh.read(min(st.st_size, MAX_GRAPH_BYTES) + 1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc})") from None
    if len(blob) > MAX_GRAPH_BYTES:  # grew since the stat
        raise ModelError(f"{path}: more than a graph holds (protobuf's 2 GiB)")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != spec.sha256:
        raise ModelError(_mismatch(path, digest, spec))
    return blob


# An ONNX graph is one protobuf message, at most 2 GiB (larger models keep external data, which model sets
# do not use) ...
MAX_GRAPH_BYTES = (1 << 31) - 1
# ... and a file over this size is hashed before it is held in memory (read_verified).
_HASH_FIRST_BYTES = 64 << 20


def _mismatch(path: Path, digest: str, spec: ModelSpec) -> str:
    return (f"{path}: sha256 {digest[:12]}... does not match the manifest ({spec.sha256[:12]}...); "
            "the model set was modified or is incomplete")


def _streamed_sha256(fh) -> str:
    """sha256 of the rest of a binary file, a megabyte at a time (Python < 3.11 has no hashlib.file_digest)."""
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def validate_model_set(directory: str | Path, *, sessions: bool = True) -> list[str]:
    """Every problem of the model set in `directory` (empty: clean): manifest fields, files, hashes, graphs.

    With `sessions`, each graph that passes its hash check is opened with onnxruntime (CPU) and its
    declared input and output names are looked up in it.
    """
    directory = Path(directory)
    _, specs, problems = _manifest_problems(directory)
    for spec in specs.values():
        try:
            blob = read_verified(directory, spec)
        except ModelError as exc:
            problems.append(str(exc))
            continue
        if sessions:
            problems.extend(_graph_problems(directory, spec, blob))
    return problems


def _graph_problems(directory: Path, spec: ModelSpec, blob: bytes) -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    where = Path(os.path.realpath(directory)) / spec.file
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        sess = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        return [f"{where}: onnxruntime cannot load the graph ({str(exc).splitlines()[0][:200]})"]
    out = []
    inputs = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    if spec.input is not None and spec.input not in inputs:
        out.append(f"{where}: models.{spec.task}.input '{spec.input}' is not an input of the graph ({inputs})")
    if spec.output is not None and spec.output not in outputs:
        out.append(f"{where}: models.{spec.task}.output '{spec.output}' is not an output of the graph ({outputs})")
    graph_in = next((i for i in sess.get_inputs() if i.name == (spec.input or inputs[0])), None) if inputs else None
    graph_out = next((o for o in sess.get_outputs() if o.name == (spec.output or outputs[0])), None) \
        if outputs else None
    out.extend(_shape_problems(where, spec.task, graph_in, graph_out, spec.crop_size))
    return out


def _static(dim: Any) -> int | None:
    """A graph dimension as an int, None when symbolic or unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


def _fits_crop(shape: Any, crop_size: int) -> bool:
    """Whether an [N, 1, H, W] shape takes crop_size x crop_size crops: H and W dynamic (a name, -1, 0, None, as
    in ONNX) or crop_size."""
    return all(_static(d) in (None, crop_size) for d in list(shape)[2:])


def _shape_problems(where: Path, task: str, graph_in: Any, graph_out: Any, crop_size: int | None = None) -> list[str]:
    """What the graph declares against what the task feeds and reads: an NCHW float one-channel input (for the
    square CNN, crop_size x crop_size); one logit per image for the classifiers, a one-channel map the input's size
    for the U-Net. (A graph declaring [N, 1, 240, 240] logits for square_cnn passed --validate and failed every
    run.)"""
    problems = []
    if graph_in is not None:
        shape = list(graph_in.shape or [])
        if graph_in.type != "tensor(float)" or len(shape) != 4 or _static(shape[1]) not in (None, 1):
            problems.append(f"{where}: models.{task}: the graph's input is {graph_in.type} {shape}; "
                            "a float [N, 1, H, W] batch is fed")
        elif task == "square_cnn" and crop_size is not None and not _fits_crop(shape, crop_size):
            # the manifest's input_shape is informational: a set without one, its graph 60x60, passed --validate
            problems.append(f"{where}: models.{task}: the graph's input is {shape}; crops of crop_size {crop_size} "
                            f"x {crop_size} are fed")
    if graph_out is not None:
        shape = list(graph_out.shape or [])
        if graph_out.type != "tensor(float)":
            problems.append(f"{where}: models.{task}: the graph's output is {graph_out.type}; float logits are read")
        elif task == "hole_unet" and (len(shape) != 4 or _static(shape[1]) not in (None, 1)):
            problems.append(f"{where}: models.{task}: the graph's output is {shape}; a [N, 1, H, W] map is read")
        elif task != "hole_unet" and (len(shape) not in (1, 2) or any(_static(d) not in (None, 1)
                                                                      for d in shape[1:])):
            problems.append(f"{where}: models.{task}: the graph's output is {shape}; one logit per image "
                            "([N] or [N, 1]) is read")
    return problems
