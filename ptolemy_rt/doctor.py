"""`ptolemy-rt doctor`: what this installation really runs on, and `--warm` to pay every first-run cost now.

It reports versions, the CPU cores used, each onnxruntime provider the build offers tried on a real session
(a provider can be offered and still fail to start: CUDA without its libraries), the CUDA and cuDNN
libraries the `gpu` extra needs and whether each loads. Nothing is compiled at run time (the lattice search is
numpy; there is no Numba cache). `--warm` runs both finders once on small synthetic images, so that sessions
are tried and the OS file cache holds the libraries before the first real image.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import __version__

__all__ = ["Report", "diagnose", "run_doctor", "cuda_libraries", "CUDA_LIBRARIES"]

# What onnxruntime-gpu loads when its CUDA provider starts (onnxruntime.ai, "CUDA Execution Provider",
# requirements): the CUDA runtime, cuBLAS(Lt), cuFFT and cuRAND of the CUDA major version it was built for, and
# cuDNN 9. PyPI builds are CUDA 12 from 1.19 on (CUDA 13 in the newest); the build says which, where it can.
# (what, Linux soname, Windows DLL) for a CUDA major version; cuFFT's soname major is CUDA's minus one.
def cuda_libraries(cuda_major: int = 12) -> tuple[tuple[str, str, str], ...]:
    """The CUDA/cuDNN libraries an onnxruntime-gpu build for CUDA `cuda_major` needs."""
    m, fft = int(cuda_major), int(cuda_major) - 1
    return (
        (f"CUDA runtime {m}", f"libcudart.so.{m}", f"cudart64_{m}.dll"),
        (f"cuBLAS {m}", f"libcublas.so.{m}", f"cublas64_{m}.dll"),
        (f"cuBLASLt {m}", f"libcublasLt.so.{m}", f"cublasLt64_{m}.dll"),
        (f"cuFFT {fft} (CUDA {m})", f"libcufft.so.{fft}", f"cufft64_{fft}.dll"),
        (f"cuRAND 10 (CUDA {m})", "libcurand.so.10", "curand64_10.dll"),
        ("cuDNN 9", "libcudnn.so.9", "cudnn64_9.dll"),
    )


CUDA_LIBRARIES = cuda_libraries(12)


def _cuda_major() -> tuple[int, str]:
    """The CUDA major version the installed onnxruntime was built for (12 when it does not say), and where from."""
    try:
        info = importlib.import_module("onnxruntime.capi.build_and_package_info")
        version = getattr(info, "cuda_version", None)
        if version:
            return int(str(version).split(".")[0]), f"onnxruntime build: CUDA {version}"
    except (ImportError, ValueError):
        pass
    return 12, "assumed CUDA 12 (the PyPI default since onnxruntime-gpu 1.19)"


_PACKAGES = ("numpy", "scipy", "opencv-python-headless", "mrcfile", "onnxruntime",
             "onnxruntime-gpu")


@dataclass
class Report:
    """What doctor found; `problems` lists what stops ptolemy-rt from running as configured."""

    versions: dict[str, str | None] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    providers: list[dict[str, Any]] = field(default_factory=list)
    cuda_libraries: list[dict[str, Any]] = field(default_factory=list)
    warm: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"ptolemy-rt": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _probe_input(models: Any) -> tuple[str, tuple[int, ...]]:
    """The smallest graph of the set and an input shape it accepts."""
    if models.has("hole_cnn"):
        side = max(32, int(models.spec("hole_cnn").min_size or 32))
        return "hole_cnn", (1, 1, side, side)
    if models.has("square_cnn"):
        side = int(models.spec("square_cnn").crop_size or 240)
        return "square_cnn", (1, 1, side, side)
    m = max(1, int(models.spec("hole_unet").multiple or 1))
    return "hole_unet", (1, 1, max(m, 64), max(m, 64))


def _providers(models_dir: str | None, report: Report) -> None:
    """Create and run a real session on every provider the build offers."""
    import numpy as np

    from .errors import PtolemyError
    from .models import _CPU, _CUDA, ModelSet, available_providers, default_models_dir

    try:
        offered = available_providers()
    except PtolemyError as exc:
        report.problems.append(str(exc))
        return
    directory = models_dir or default_models_dir()
    for name, provider in ((_CPU, "cpu"), (_CUDA, "cuda")):
        row: dict[str, Any] = {"provider": name, "offered": name in offered, "runs": False}
        report.providers.append(row)
        if name not in offered:
            continue
        try:
            models = ModelSet(directory, provider=provider)
            task, shape = _probe_input(models)
            t = time.perf_counter()
            models.session(task)
            row["session_ms"] = round((time.perf_counter() - t) * 1e3, 1)
            t = time.perf_counter()
            models.run(task, np.zeros(shape, dtype=np.float32))
            row["run_ms"] = round((time.perf_counter() - t) * 1e3, 1)
            row["graph"] = task
            row["runs"] = models.provider == provider
            if not row["runs"]:
                row["error"] = "offered, but onnxruntime fell back to the CPU (libraries missing?)"
        except PtolemyError as exc:
            row["error"] = str(exc)
        if name == _CPU and not row["runs"]:
            report.problems.append(f"the CPU provider cannot run the model set: {row.get('error')}")
        elif name == _CUDA and not row["runs"]:
            report.notes.append("CUDA is offered but does not run: see the CUDA/cuDNN libraries below, or use "
                                "--provider cpu")


def _cuda_libraries(report: Report) -> None:
    """Try to load each library the CUDA provider needs (after onnxruntime's own preload, when it has one)."""
    gpu_build = report.versions.get("onnxruntime-gpu") is not None
    if gpu_build:
        try:
            ort = importlib.import_module("onnxruntime")
            if hasattr(ort, "preload_dlls"):
                # Loads CUDA/cuDNN from the nvidia-* pip packages where they are installed (onnxruntime >= 1.21).
                ort.preload_dlls()
        except Exception as exc:  # diagnostics: report, never fail here
            report.notes.append(f"onnxruntime.preload_dlls() failed: {exc}")
    windows = sys.platform.startswith("win")
    major, source = _cuda_major()
    report.system["cuda_build"] = source
    for what, soname, dll in cuda_libraries(major):
        name = dll if windows else soname
        row: dict[str, Any] = {"library": what, "file": name, "loads": False}
        try:
            ctypes.CDLL(name)
            row["loads"] = True
        except OSError as exc:
            row["error"] = str(exc).splitlines()[0][:160]
        report.cuda_libraries.append(row)
    missing = [r["file"] for r in report.cuda_libraries if not r["loads"]]
    if gpu_build and missing:
        report.problems.append("the gpu extra is installed but these CUDA/cuDNN libraries do not load: "
                               + ", ".join(missing))


def _warm(models_dir: str | None, report: Report) -> None:
    """Run both finders on small synthetic images: tries the sessions, times a first and a second run."""
    from .errors import PtolemyError
    from .holes import find_holes
    from .models import load_models
    from .squares import find_squares
    from .synthetic import make_atlas, make_medmag

    try:
        models = load_models(models_dir)
    except PtolemyError as exc:  # a model set the table above reported unusable (a symlink loop, say)
        report.problems.append(f"{models_dir}: unusable model set ({exc})")
        return
    out: dict[str, Any] = {}
    medmag = make_medmag(0, shape=(512, 720), spacing_px=120.0)[0]
    atlas = make_atlas(0, shape=(512, 512))[0]
    for name, fn in (("holes", lambda: find_holes(medmag, models)), ("squares", lambda: find_squares(atlas, models))):
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        t = time.perf_counter()
        fn()
        out[name] = {"first_s": round(first, 3), "again_s": round(time.perf_counter() - t, 3)}
    report.warm = out


def diagnose(models_dir: str | None = None, warm: bool = False) -> Report:
    """Everything `ptolemy-rt doctor` reports, as a Report."""
    from .models import physical_cores

    report = Report()
    report.versions = _versions()
    report.system = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores_used": physical_cores(),
        "ORT_DISABLE_TELEMETRY": os.environ.get("ORT_DISABLE_TELEMETRY", "1 (set by ptolemy-rt)"),
    }
    if report.versions.get("onnxruntime") and report.versions.get("onnxruntime-gpu"):
        report.problems.append("both onnxruntime and onnxruntime-gpu are installed; they share one module and "
                               "break each other: pip uninstall onnxruntime onnxruntime-gpu, then install one extra")
    _providers(models_dir, report)
    _cuda_libraries(report)
    if warm:
        _warm(models_dir, report)
    return report


def _print(report: Report) -> None:
    print("versions:  " + ", ".join(f"{k} {v}" for k, v in report.versions.items() if v is not None))
    s = report.system
    print(f"system:    {s['platform']}; {s['physical_cores_used']} physical core(s) used of {s['logical_cpus']} "
          f"logical; onnxruntime telemetry {'off' if s['ORT_DISABLE_TELEMETRY'].startswith('1') else 'on'}")
    for p in report.providers:
        if not p["offered"]:
            state = "not in this onnxruntime build"
        elif p["runs"]:
            state = f"runs (session {p['session_ms']} ms, {p['graph']} {p['run_ms']} ms)"
        else:
            state = f"offered but does not run: {p.get('error')}"
        print(f"provider:  {p['provider']}: {state}")
    print(f"CUDA/cuDNN libraries the gpu extra needs ({report.system.get('cuda_build')}, cuDNN 9):")
    for lib in report.cuda_libraries:
        print(f"  {lib['library']:<20} {lib['file']:<20} {'loads' if lib['loads'] else 'not found'}")
    if report.warm is not None:
        w = report.warm
        print(f"warm:      holes {w['holes']['first_s']} s first, {w['holes']['again_s']} s again; squares "
              f"{w['squares']['first_s']} s first, {w['squares']['again_s']} s again")
    for note in report.notes:
        print(f"note:      {note}")
    for problem in report.problems:
        print(f"problem:   {problem}")
    print("ok" if not report.problems else f"{len(report.problems)} problem(s)")


def run_doctor(args: Any) -> int:
    """The `doctor` subcommand: print the report (or JSON); exit 3 when there is a problem."""
    report = diagnose(getattr(args, "models", None), warm=bool(getattr(args, "warm", False)))
    if getattr(args, "json", False):
        print(json.dumps(report.to_dict(), indent=1, default=str, allow_nan=False))
    else:
        _print(report)
    return 3 if report.problems else 0
