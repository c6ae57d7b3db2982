"""ptolemy-rt: fast, dependable targeting for cryo-EM data collection (the Ptolemy method, on onnxruntime)."""

from __future__ import annotations

import sys as _sys


def _quiet_start() -> None:
    """At the command line, Ctrl-C, SIGTERM or SIGHUP while the package loads ends the process at once, without a
    traceback (exit 130, the contract's 'interrupted'); cli.main() puts Python's own handling back when it starts.
    A SIGHUP ignored from the start (nohup) stays ignored.

    The interpreter's own `_signal` and `os`, loaded before any program runs: `signal` builds its enums on import
    (2 ms), and a Ctrl-C then printed a KeyboardInterrupt traceback from enum.py (fuzz batch_signals 90000026)."""
    import _signal
    import os

    def _quit(signum, frame):
        os._exit(130)

    _signal.signal(_signal.SIGINT, _quit)
    _signal.signal(_signal.SIGTERM, _quit)
    if hasattr(_signal, "SIGHUP") and _signal.getsignal(_signal.SIGHUP) != _signal.SIG_IGN:
        _signal.signal(_signal.SIGHUP, _quit)


# `python -m ptolemy_rt` imports this package while sys.argv[0] is still "-m"; the installed script is named
# ptolemy-rt. Anything else (a library user, pytest) keeps its own signal handling.
if _sys.argv[:1] == ["-m"] or _sys.argv[0].endswith(("ptolemy-rt", "ptolemy-rt.exe", "ptolemy-rt-script.py")):
    _quiet_start()

import importlib.util as _util  # noqa: E402

__version__ = "0.1.0"

if _util.find_spec("onnxruntime") is None:
    raise ImportError(
        "ptolemy-rt needs onnxruntime: pip install 'ptolemy-rt[cpu]' (CPU) or pip install 'ptolemy-rt[gpu]' (CUDA)"
    )

from .errors import (  # noqa: E402
    CorruptFileError,
    InputError,
    InternalError,
    MissingFileError,
    ModelError,
    NonFiniteError,
    OptionError,
    OutputError,
    PtolemyError,
    ShapeError,
    TooLargeError,
    TooSmallError,
    UnsupportedFormatError,
    public_api,
)

# numpy and the readers load on first use (below), so that `import ptolemy_rt` is nearly instant: the command
# line installs its Ctrl-C handling straight after, and an interrupt during a slow import ends quietly.
_LAZY = {"Image": "io", "read_image": "io", "ModelSet": "models", "ModelSpec": "models", "load_models": "models",
         "HoleOptions": "options", "SquareOptions": "options", "find_squares": "squares", "find_holes": "holes",
         "fit_lattice": "lattice"}

__all__ = [
    "__version__",
    "find_squares",
    "find_holes",
    "fit_lattice",
    "load_models",
    "read_image",
    "Image",
    "ModelSet",
    "ModelSpec",
    "HoleOptions",
    "SquareOptions",
    "PtolemyError",
    "InputError",
    "MissingFileError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "NonFiniteError",
    "ShapeError",
    "TooSmallError",
    "TooLargeError",
    "ModelError",
    "OutputError",
    "OptionError",
    "InternalError",
]


def __getattr__(name: str):
    # The pipelines pull in scipy, cv2 and onnxruntime: import them on first use, keeping `import ptolemy_rt` fast.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptolemy_rt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if name in ("find_squares", "find_holes", "fit_lattice"):
        value = public_api(value)  # only PtolemyError subclasses (and TypeError) leave the public API
    elif name == "load_models":
        value = public_api(value, ModelError)
    globals()[name] = value
    return value
