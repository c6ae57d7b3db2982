"""Generator classes for the Python API: odd keyword values (api_options) and odd arrays (api_arrays).

Both run in the fuzz worker (`call: "api_kwargs"` / `"api_array"`, see run_case). The oracle:
- api_options: a keyword value out of its range or of the wrong type is refused before any work, by a TypeError
  or an OptionError / ShapeError (exit 2) whose message names the argument; valid values give a result (0) with
  no NaN in its JSON. Never another exception (InternalError, exit 70, included), never a hang.
- api_arrays: an array in any layout (Fortran order, negative or zero strides, big-endian, read-only, a memmap, a
  masked array, float16 ... uint64) gives byte for byte the result of the same values as a C-contiguous float32
  array; 1-D, 4-D, empty, non-finite, complex, object, string, datetime and structured data are refused with
  exit 2 (a TypeError for what is no array at all); thin strips (256 x 140000 px) give a result, the same twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

API_CLASSES = ("api_options", "api_arrays")


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


# ---------------------------------------------------------------------------------------------- api_options

# Values that are no number at all (TypeError) or numbers no option takes (ValueError -> OptionError).
_WRONG_TYPES = ["5", "", "0.5", None, [1], {"a": 1}, True, False, b"5"]
_BAD_NUMBERS = [math.nan, math.inf, -math.inf, -1, -1e308, 1e308, 10**30, 2**63, -(2**63), 1e-320]

# (function, argument, lo, hi, integer, open ends, values inside): the ranges the API promises (options.py,
# io.read_image, lattice.fit_lattice); None for an end without a bound.
NUMERIC = [
    ("find_squares", "window", 1, 1024, True, False, [1, 6, 1024]),
    ("find_squares", "min_area", 0.0, 1e12, False, False, [0, 100.0, 1e12]),
    ("find_squares", "batch_size", 1, None, True, False, [1, 7, 10**6]),
    ("find_holes", "threshold", 0.0, 1.0, False, True, [1e-300, 0.5, 0.999999]),
    ("find_holes", "edge_tolerance", -1e6, 1000.0, False, False, [-1e6, -10, 0, 100.0]),
    ("find_holes", "k", 1, 100, True, False, [1, 6, 100]),
    ("read_image", "max_pixels", 1, 1 << 40, True, False, [320 * 320, 1 << 28, 1 << 40]),
    ("fit_lattice", "k", 1, None, True, False, [1, 5, 10**6]),
    ("fit_lattice", "lambda_fn", 0.0, None, False, False, [0, 10.0, 1e30]),
    ("fit_lattice", "lambda_fp", 0.0, None, False, False, [0, 1.0, 1e30]),
    ("fit_lattice", "min_spacing_px", 0.0, None, False, False, [0, 8.0, 1e6]),
    ("fit_lattice", "min_inliers", 0.0, 1.0, False, False, [0, 0.3, 1]),
    ("fit_lattice", "min_occupancy", 0.0, 1.0, False, False, [0, 0.3, 1]),
]
# None is these arguments' default ("from the image's mesh", "the model's threshold", "2**28 pixels").
OPTIONAL = {("find_squares", "window"), ("find_squares", "min_area"), ("find_holes", "threshold"),
            ("read_image", "max_pixels")}
FLAGS = [("find_squares", "compat"), ("find_squares", "seams"), ("find_squares", "lattice"),
         ("find_holes", "refine"), ("find_holes", "cnn"), ("find_holes", "keep_off_film"),
         ("read_image", "permissive"), ("fit_lattice", "refine"), ("fit_lattice", "hidden_fallback")]
CHOICES = [("find_holes", "score", ("unet", "cnn", None)), ("find_holes", "crop_mode", ("centred", "ptolemy")),
           ("find_holes", "unet_padding", ("minimal", "ptolemy")),
           ("find_holes", "lattice_model", ("general", "square")), ("fit_lattice", "model", ("general", "square"))]
# Arguments whose type alone is checked: an options object of the other class, a model set that is no path.
OBJECTS = [("find_squares", "options"), ("find_holes", "options"), ("find_squares", "models"),
           ("find_holes", "models"), ("find_squares", "section"), ("find_holes", "section")]


def _in_range(value, lo, hi, integer: bool, open_ends: bool) -> bool:
    """Whether the API must take `value` for an argument with this range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    if not math.isfinite(number) or (integer and not number.is_integer()):
        return False
    if lo is not None and (number <= lo if open_ends else number < lo):
        return False
    return not (hi is not None and (number >= hi if open_ends else number > hi))


def _encode(value):
    """JSON for the worker: numpy scalars and bytes as tagged objects."""
    if isinstance(value, np.generic):
        return {"$np": value.dtype.str, "v": value.item()}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value


def _decode(value):
    if isinstance(value, dict) and "$np" in value:
        return np.array(value["v"], dtype=value["$np"])[()]
    if isinstance(value, dict) and "$bytes" in value:
        return bytes.fromhex(value["$bytes"])
    return value


def api_options(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """One public function called with one argument made odd (a number out of range, NaN, a string for a number,
    "no" for a switch, an options object of the other class, a model set that is an int) and, a third of the time,
    nothing odd at all: a result, or a refusal naming the argument."""
    kind = _pick(rng, ["numeric", "numeric", "numeric", "flag", "choice", "object", "valid"])
    if kind == "numeric" or kind == "valid":
        function, name, lo, hi, integer, open_ends, inside = _pick(rng, NUMERIC)
        if kind == "valid" or rng.random() < 0.3:  # a value inside, as a numpy scalar or a whole float at times
            value = _pick(rng, inside)
            if rng.random() < 0.3 and abs(value) < 2**31:
                value = (np.int64 if integer else np.float32)(value)
            elif rng.random() < 0.3 and integer:
                value = float(value)
        elif rng.random() < 0.4:
            value = _pick(rng, _WRONG_TYPES)
        else:
            value = _pick(rng, _BAD_NUMBERS + ([0.5, 2.5] if integer else []) + [lo - 1 if lo is not None else -1,
                                                                                     (hi or 1e15) * 2])
        plain = value.item() if isinstance(value, np.generic) else value
        good = _in_range(plain, lo, hi, integer, open_ends) or (value is None and (function, name) in OPTIONAL)
    elif kind == "flag":
        function, name = _pick(rng, FLAGS)
        value = _pick(rng, [True, False, np.bool_(True), "no", "", 0, 1, None, "False"])
        good = isinstance(value, (bool, np.bool_))
    elif kind == "choice":
        function, name, choices = _pick(rng, CHOICES)
        value = _pick(rng, [*choices, "x", "", None, 5, "UNET", "cnn "])
        good = value in choices and not (value is None and name != "score")
        if value == 5:
            good = False
    else:
        function, name = _pick(rng, OBJECTS)
        value = _pick(rng, ["square_options", "hole_options", 123, True, 1.5, [0], b"x"])
        if name == "section":
            value = _pick(rng, [0, True, 1.5, "0", None, np.int64(0), -1, 2**70])
            good = value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                                     and value == 0)
        else:
            mine = "square_options" if function == "find_squares" else "hole_options"
            good = value == mine if name == "options" else False
        if name == "models" and value in ("square_options", "hole_options"):
            value = 123
        if name == "options" and value not in ("square_options", "hole_options"):
            value = "hole_options" if function == "find_squares" else "square_options"
            good = False
    return {"kind": "api", "call": "api_kwargs", "function": function, "name": name, "value": _encode(value),
            "good": bool(good), "image": str(image), "expect": [0] if good else [2]}


def _call(function: str, name: str, value, image: str):
    """Call `function` with `name=value` on a small valid input; return its result."""
    import ptolemy_rt

    if function == "read_image":
        return ptolemy_rt.read_image(image, **{name: value})
    if function == "fit_lattice":
        c = np.array([[x, y] for y in (20.0, 60.0, 100.0) for x in (20.0, 60.0, 100.0)])
        mask = np.zeros((128, 128), bool)
        for x, y in c:
            mask[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7] = True
        return ptolemy_rt.fit_lattice(c, mask, **{name: value})
    data = ptolemy_rt.read_image(image).data
    if name == "options" and isinstance(value, str):
        value = ptolemy_rt.SquareOptions() if value == "square_options" else ptolemy_rt.HoleOptions()
    if function == "find_squares":
        kwargs = {"models": False, name: value}
        if name == "batch_size":
            kwargs["models"] = None
        return ptolemy_rt.find_squares(data, **kwargs)
    from tests.tiny_models import make_tiny_set

    models = make_tiny_set(Path(image).parent / "tiny-set")
    kwargs = {"models": str(models), name: value}
    return ptolemy_rt.find_holes(data[:300, :300], **kwargs)


def run_kwargs_case(case: dict) -> tuple[int | None, str]:
    """Worker side of api_options: (exit code it maps to, or None for a foreign exception; detail)."""
    from ptolemy_rt.errors import PtolemyError

    name, value, good = case["name"], _decode(case["value"]), case["good"]
    try:
        result = _call(case["function"], name, value, case["image"])
        if hasattr(result, "to_dict"):
            json.dumps(result.to_dict(), allow_nan=False)
    except TypeError as exc:
        if good:
            return None, f"TypeError for a valid {name}={value!r}: {exc}"
        if name not in str(exc) or "\n" in str(exc):
            return 2, f"!bad_message: TypeError not naming {name}: {str(exc)[:200]!r}"
        return 2, str(exc)[:200]
    except PtolemyError as exc:
        if good or exc.exit_code != 2:
            return exc.exit_code, f"{type(exc).__name__} for {name}={value!r}: {str(exc)[:200]}"
        if name not in str(exc) or "\n" in str(exc) or len(str(exc)) > 300:
            return 2, f"!bad_message: {type(exc).__name__} not naming {name}: {str(exc)[:200]!r}"
        return 2, str(exc)[:200]
    if not good:
        return 0, f"{name}={value!r} taken"
    return 0, ""


# ---------------------------------------------------------------------------------------------- api_arrays

LAYOUTS = ["c", "fortran", "reversed", "strided", "bigendian", "readonly", "memmap", "masked", "matrix",
           "zero_stride", "transposed_copy", "rgb", "rgba", "stack", "stack1"]
DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
          "uint64", "bool"]
REFUSED = ["complex64", "object", "str", "datetime", "structured", "1d", "4d", "empty", "nan", "inf", "list",
           "scalar"]


def api_arrays(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """find_squares (geometry only) or find_holes (the tiny model set) on the atlas's or a med-mag image's values
    in an odd layout or pixel type, or on data that is no image."""
    finder = _pick(rng, ["find_squares", "find_squares", "find_holes"])
    if rng.random() < 0.1:  # a strip: the pipelines' working copies bin the long side to a few hundred px
        shape = [int(rng.integers(256, 420)), int(_pick(rng, [3000, 50000, 140000]))]
        if finder == "find_holes":
            # holes over the whole strip: 11,000 of them in 140,000 x 276 px took 1.8 GB (as a 6000 x 6400 image
            # of them does, 2.1 GB: memory follows pixels and holes), past a case's 1.5 GB (seed 60000211)
            shape[1] = min(shape[1], 50000)
        if rng.random() < 0.5:
            shape.reverse()
        return {"kind": "api", "call": "api_array", "finder": finder, "strip": shape, "image": str(image),
                "expect": [0], "seed": int(rng.integers(1 << 30))}
    if rng.random() < 0.2:
        what = _pick(rng, REFUSED)
        return {"kind": "api", "call": "api_array", "finder": finder, "refused": what, "image": str(image),
                "expect": [2], "seed": int(rng.integers(1 << 30))}
    return {"kind": "api", "call": "api_array", "finder": finder, "layout": _pick(rng, LAYOUTS),
            "dtype": _pick(rng, DTYPES), "image": str(image), "expect": [0], "seed": int(rng.integers(1 << 30)),
            "section": _pick(rng, [None, None, 0])}


def _values(case: dict) -> np.ndarray:
    """The case's pixel values (float64), from the fuzz atlas or a synthetic med-mag image."""
    from ptolemy_rt import read_image

    if case["finder"] == "find_holes":
        from ptolemy_rt.synthetic import make_medmag

        data, _ = make_medmag(case["seed"] % 50)
        return np.asarray(data[:300, :300], np.float64)
    return np.asarray(read_image(case["image"]).data, np.float64)


def _typed(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return values > np.median(values)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return np.clip(np.round(values), max(info.min, -1e15), min(info.max, 1e15)).astype(dtype)
    return values.astype(dtype)


def _layout(a: np.ndarray, layout: str, folder: Path):
    """`a` (2-D) in the layout asked for, and the 2-D values find_* must see."""
    if layout == "fortran":
        return np.asfortranarray(a), a
    if layout == "reversed":
        return a[::-1, ::-1], a[::-1, ::-1]
    if layout == "strided":
        wide = np.repeat(a, 2, axis=1)
        return wide[:, ::2], a
    if layout == "bigendian":
        return a.astype(a.dtype.newbyteorder(">")) if a.dtype.itemsize > 1 else a, a
    if layout == "readonly":
        b = a.copy()
        b.setflags(write=False)
        return b, a
    if layout == "memmap":
        path = folder / "m.npy"
        np.save(path, a)
        return np.load(path, mmap_mode="r"), a
    if layout == "masked":
        return np.ma.masked_array(a, mask=np.zeros(a.shape, bool)), a
    if layout == "matrix":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return np.asmatrix(a), a
    if layout == "zero_stride":
        row = np.ascontiguousarray(a[:1])
        return np.broadcast_to(row, a.shape), np.broadcast_to(row, a.shape)
    if layout == "transposed_copy":
        return np.ascontiguousarray(a.T).T, a
    if layout in ("rgb", "rgba"):
        planes = [a] * (3 if layout == "rgb" else 4)
        stacked = np.stack(planes, axis=2)
        return stacked, stacked[:, :, :3].astype(np.float32).mean(axis=2)
    if layout == "stack":
        return np.stack([a, a[::-1]]), a
    if layout == "stack1":
        return a[None], a
    return np.ascontiguousarray(a), a


def _refused(what: str, values: np.ndarray):
    a = values.astype(np.float32)
    return {"complex64": lambda: a.astype(np.complex64), "object": lambda: a.astype(object),
            "str": lambda: a.astype(str), "datetime": lambda: np.zeros(a.shape, "M8[s]"),
            "structured": lambda: np.zeros(a.shape, [("a", "f4")]), "1d": lambda: a.ravel(),
            "4d": lambda: a[None, None], "empty": lambda: a[:0], "list": lambda: a.tolist(),
            "scalar": lambda: np.float32(1.0),
            "nan": lambda: np.where(np.arange(a.size).reshape(a.shape) % 997 == 5, np.nan, a),
            "inf": lambda: np.where(np.arange(a.size).reshape(a.shape) % 991 == 7, -np.inf, a)}[what]()


def run_array_case(case: dict) -> tuple[int | None, str]:
    """Worker side of api_arrays: (exit code, detail; '!nondeterministic: ...' when layouts disagree)."""
    import warnings

    import ptolemy_rt
    from ptolemy_rt.errors import PtolemyError

    folder = Path(case["image"]).parent
    values = _values(case)
    if case["finder"] == "find_squares":
        def run(x, **kw):
            return ptolemy_rt.find_squares(x, models=False, **kw)
    else:
        from tests.tiny_models import make_tiny_set

        models = str(make_tiny_set(folder / "tiny-set"))

        def run(x, **kw):
            return ptolemy_rt.find_holes(x, models=models, **kw)
    if "strip" in case:
        rows, cols = case["strip"]
        tiles = (rows // values.shape[0] + 1, cols // values.shape[1] + 1)
        strip = np.tile(values.astype(np.float32), tiles)[:rows, :cols]
        if case["seed"] % 3 == 0:
            strip = np.random.default_rng(case["seed"]).poisson(40, (rows, cols)).astype(np.float32)
        if case["finder"] == "find_holes":  # the shipped set: the tiny set's U-Net fires everywhere (30 s)
            def run(x, **kw):
                return ptolemy_rt.find_holes(x, models=None, **kw)
        first = json.dumps(run(strip).to_dict(), allow_nan=False)
        return (0, "") if first == json.dumps(run(strip.copy()).to_dict(), allow_nan=False) else (
            0, "!nondeterministic: a strip's result differs on a rerun")
    if "refused" in case:
        try:
            run(_refused(case["refused"], values))
        except PtolemyError as exc:
            return exc.exit_code, str(exc)[:200]
        except TypeError as exc:
            return (2, str(exc)[:200]) if case["refused"] in ("list", "scalar") else (None, f"TypeError: {exc}")
        return 0, f"{case['refused']} taken"
    typed = _typed(values, case["dtype"])
    odd, seen = _layout(typed, case["layout"], folder)
    kwargs = {} if case["section"] is None or case["layout"] not in ("stack", "stack1") else {
        "section": case["section"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(odd, **kwargs)
        plain = run(np.ascontiguousarray(np.asarray(seen), dtype=np.float32))
    first, second = result.to_dict(), plain.to_dict()
    if case["layout"] == "stack":  # the stack's result says which section it read
        first["image"]["section"] = None
    if json.dumps(first, allow_nan=False) != json.dumps(second, allow_nan=False):
        return 0, f"!nondeterministic: {case['layout']} {case['dtype']} differs from its C-contiguous float32 copy"
    return 0, ""
