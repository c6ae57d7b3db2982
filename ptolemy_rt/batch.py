"""`ptolemy-rt batch`: whole sessions through both pipelines, with worker processes or Dask, progress and resume.

Per image it writes `OUTDIR/results/<id>.json` (the pipeline's JSON), `OUTDIR/images/<id>.jpg` (a preview for
the report) and `OUTDIR/.state/<id>.json` (the summary row with the input's sha256, written last: an image
counts as done only when all three are on disk). At the end: `summary.csv`, `summary.json` and `index.html`.
`<id>` is the input's path relative to the folder that holds all inputs, suffix kept.

Every file is written by the main process (workers return bytes), so a pool, a Dask cluster without a shared
output disk and a single process all leave the same bytes. A failing image is recorded and the batch goes on;
the exit code is the worst of all images.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import HANGUP, InputError, MissingFileError, PtolemyError, clean_text, one_line
from .metadata import PLAUSIBLE_A
from .report import finite_number, sound_result
from .sessions import Item, discover, stage_to_pixel
from .smallfiles import is_regular, open_regular

__all__ = ["SUMMARY_FIELDS", "BatchConfig", "add_arguments", "keep_large_arrays_on_heap", "preview_factor",
           "preview_levels", "process_one", "run", "run_batch", "worst_exit_code"]

KINDS = ("squares", "holes")
EXIT_OK, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
PREVIEW_SIDE = 1024
SUMMARY_FIELDS = ("id", "input", "kind", "status", "exit_code", "count", "best_score", "spacing_px", "spacing_A",
                  "pixel_size_A", "angle_deg", "rows", "cols", "atlas_square", "seconds", "reason", "error", "sha256")
_STATE_VERSION = 1
# The most bytes of hole marks the batch process keeps for its report (2M holes); the results of images whose
# marks no longer fit under it are read from their files.
_MAX_MARKS_BYTES = 64 << 20


def _exit_internal() -> int:
    # The CLI owns the exit-code table; read it there so a renumbering stays in one place.
    from . import cli

    return int(getattr(cli, "EXIT_INTERNAL", 70))


def worst_exit_code(codes: Iterable[int]) -> int:
    """The worst of several exit codes: interrupted > internal > output > model > input > ok."""
    internal = _exit_internal()
    order = {EXIT_OK: 0, EXIT_INPUT: 1, EXIT_MODEL: 2, EXIT_OUTPUT: 3, internal: 4, 70: 4, 1: 4,
             EXIT_INTERRUPTED: 5}
    worst = EXIT_OK
    for code in codes:
        if order.get(code, 4) > order.get(worst, 4):
            worst = code
    return worst


class UsageError(InputError):
    """A batch command line that cannot be carried out (exit code 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `ptolemy-rt batch`."""
    from .cli import _nonempty  # the CLI declares these options (and imports this module) only when `batch` runs
    p.add_argument("paths", nargs="+", metavar="PATH", type=_nonempty(),
                   help="image files, globs (quoted), session folders (EPU, "
                   "Leginon rawdata, SerialEM with .nav/.mdoc) or .nav files")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", type=_nonempty(),
                   help="output folder (results/, images/, "
                   "summary.csv, summary.json, index.html)")
    p.add_argument("--kind", choices=["auto", *KINDS], default="auto", help="squares (atlases) or holes "
                   "(grid-square images) for every input; auto: from the session layout (default)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: the core count; 1: "
                   "in this process)")
    p.add_argument("--dask", metavar="ADDRESS", type=_nonempty("address"),
                   help="run on an existing Dask distributed scheduler "
                   "(tcp://host:8786); needs the dask extra")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs exist and whose input "
                   "sha256 and options match the earlier run")
    p.add_argument("--no-report", action="store_true", help="do not write index.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr "
                   "is not a terminal)")
    p.add_argument("--models", metavar="DIR", type=_nonempty(),
                   help="model set directory (default: the set shipped with ptolemy-rt)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per worker (default: cores / workers; "
                   "1 with --dask)")
    p.add_argument("--section", type=int, metavar="N", help="section of MRC/TIFF stacks (default 0, with a warning)")
    p.add_argument("--calibration", action="append", metavar="CAL", type=_nonempty(),
                   help="map scores onto another tool's scale "
                   "with a file from `ptolemy-rt calibrate` (one per kind: give it twice for squares and holes); "
                   "checked against the model set before any work (exit 2 when it does not fit)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per image on stderr")
    p.add_argument("--debug", action="store_true", help="tracebacks of failing images")
    p.set_defaults(func=run)


def _kinds(kinds: Iterable[str | None]) -> tuple[str, ...]:
    """The distinct kinds among `kinds` that a pipeline runs, sorted (None and unknown ones left out)."""
    return tuple(sorted({k for k in kinds if k in KINDS}))


class BatchConfig:
    """What every task needs (picklable, sent to each worker once per task; --dask hosts run the client's
    ptolemy-rt: README, "same environment")."""

    def __init__(self, models: str | None, provider: str, threads: int | None, section: int | None,
                 debug: bool = False, calibrations: dict[str, Any] | None = None,
                 kinds: Iterable[str | None] | None = None, marks: bool = False):
        self.models = str(Path(models).resolve()) if models else None
        self.provider = provider
        self.threads = threads
        self.section = section
        self.debug = debug
        self.calibrations = dict(calibrations or {})  # kind -> calibration.Calibration
        # The kinds of image the batch holds (None: any): a worker starts the sessions of those only.
        self.kinds = None if kinds is None else _kinds(kinds)
        # compute each holes image's report.hole_marks in the workers (_process), for the report run_batch writes
        self.marks = marks

    def tasks(self) -> tuple[str, ...]:
        """The model tasks this batch's images run (a holes-only batch never runs the square CNN)."""
        from .manifest import TASKS, TASKS_OF_KIND

        kinds = KINDS if self.kinds is None else self.kinds
        return tuple(t for t in TASKS if any(t in TASKS_OF_KIND[k] for k in kinds))

    def key(self, kind: str | None) -> str:
        """What makes two runs' results interchangeable for --resume (threads only change timings)."""
        parts: list[Any] = [_STATE_VERSION, kind, self.models, self.provider, self.section]
        cal = self.calibrations.get(kind) if kind else None
        if cal is not None:  # a calibration changes the written scores: a run with another one is not resumable
            parts.append(cal.sha256())
        return json.dumps(parts, allow_nan=False)


# ----------------------------------------------------------------------------------------------- workers


def _sha256(path: Path) -> str:
    """The file's sha256; MissingFileError/CorruptFileError naming it when it is gone, not a regular file (a FIFO
    would block the open) or unreadable (a .nav's MapFile pointing nowhere was an internal error, exit 70)."""
    from .errors import CorruptFileError

    fd, _ = open_regular(path, error=MissingFileError)  # checked on the descriptor: no stat-then-open race
    try:
        with os.fdopen(fd, "rb") as fh:
            if hasattr(hashlib, "file_digest"):  # Python 3.11+: the read loop in C (4.1 -> 3.4 ms for 6 MB)
                return hashlib.file_digest(fh, "sha256").hexdigest()
            h = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


# Thread pools a worker's libraries may start besides onnxruntime's and OpenCV's (set via their calls):
# OpenBLAS (numpy's and scipy's, one pool each), OpenMP, MKL. They read these before their first import.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def limit_threads(threads: int, environment: bool = True) -> None:
    """Cap this process's native thread pools at `threads`, so that workers x threads = cores.

    environment=False leaves os.environ alone (the batch running in the caller's own process).
    Environment variables work only before numpy/scipy load (a spawned worker: its initializer runs first);
    where they are loaded already (a Dask worker), threadpoolctl does it when installed, else BLAS keeps its
    default (the pipelines' BLAS calls are 2x2 solves, so its pool then idles rather than competes).
    """
    import importlib.util

    if environment:
        for name in _THREAD_VARIABLES:
            os.environ[name] = str(threads)
    if environment and "numpy" in sys.modules and importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    import cv2

    cv2.setNumThreads(threads)


# A worker's malloc limits (glibc): image-sized arrays, and onnxruntime's activations (its arena is off: see
# models.py), kept on the heap and reused from one image to the next. The mmap threshold is glibc's ceiling on
# 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX: larger blocks are always mapped, so a huge image costs no more
# memory than before); freed memory is handed back only above 256 MiB at the heap's top, and the heap grows by
# 64 MiB at a time (address space: pages are taken only when touched).
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 256 << 20
# A Dask worker is the user's long-lived process, shared with their other tasks, whose memory monitor counts
# kept free heap as "unmanaged" memory: it keeps at most 64 MiB of freed heap.
_SHARED_TRIM_THRESHOLD = 64 << 20
_TOP_PAD = 64 << 20


def keep_large_arrays_on_heap(trim_threshold: int = _TRIM_THRESHOLD) -> bool:
    """Give this worker process's malloc (glibc) the limits of a long-lived image worker; True if done.

    By default glibc raises its mmap threshold only after an array over it is freed and trims the heap's top
    at twice that, so every image's pipeline still took some 9000 fresh pages from the kernel (36 MiB zeroed,
    0.6 s of 12 s CPU in system time for 50 1024x1440 images), mostly onnxruntime's activations; with these
    limits 2500-5000, 2-3 % less CPU per image. Dask's nanny starts each worker with
    MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back at once), which also freezes the mmap threshold at
    128 KiB: 14x the page faults and 0.32 instead of 0.21 CPU s per image before this. A worker then keeps up
    to 256 MiB of freed heap for its next image. Left alone: a threshold the user chose
    (MALLOC_MMAP_THRESHOLD_), other C libraries and systems.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
        # -3: M_MMAP_THRESHOLD, -1: M_TRIM_THRESHOLD, -2: M_TOP_PAD (malloc.h)
        return bool(mallopt(ctypes.c_int(-3), ctypes.c_int(_MMAP_THRESHOLD))
                    and mallopt(ctypes.c_int(-1), ctypes.c_int(trim_threshold))
                    and mallopt(ctypes.c_int(-2), ctypes.c_int(_TOP_PAD)))
    except (OSError, AttributeError):
        return False


def init_worker(config: BatchConfig, ignore_sigint: bool = True, own_process: bool = True,
                shared: bool = False) -> None:
    """Per worker process: thread counts, Ctrl-C and a hangup left to the main process, and the model set loaded
    once.

    own_process=False: the batch runs in the caller's process (--workers 1), whose environment and allocator
    are left alone. shared=True: a process that runs other work too (a Dask worker), which keeps less freed
    memory (keep_large_arrays_on_heap).
    """
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if HANGUP is not None:  # a terminal's hangup reaches the whole group: the main process stops it
            signal.signal(HANGUP, signal.SIG_IGN)
    if own_process:
        keep_large_arrays_on_heap(_SHARED_TRIM_THRESHOLD if shared else _TRIM_THRESHOLD)
    if config.threads:
        limit_threads(int(config.threads), environment=own_process)
    if own_process and not shared:  # a pool worker of the command line (not a Dask worker): as the command line
        from .warning_lines import command_line_warnings  # after limit_threads, which loads numpy: quiet too

        command_line_warnings(config.debug)
    try:
        from .models import load_models

        models = load_models(config.models, provider=config.provider, threads=config.threads)
        # onnxruntime sessions now, so no image's timing carries them; only those the batch's kinds run (the
        # square CNN's session cost each worker of a holes batch ~7 ms of CPU for nothing)
        for task in config.tasks():
            if models.has(task):
                models.session(task)
    except PtolemyError:
        pass  # each image then records the model error itself


# The signals held while the batch's pool starts a worker (and, inherited, in the worker until its initializer).
_HELD_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, HANGUP) if s is not None)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """_HELD_SIGNALS blocked in this thread for the block (delivered once the mask is restored); nothing where
    signals cannot be blocked (Windows).

    The mask is read before it is changed, and restored whatever is raised: pthread_sigmask runs the Python handler
    of a signal that came just before, after it has changed the mask, and its KeyboardInterrupt (raised before the
    old mask was returned) left the batch with Ctrl-C, SIGTERM and hangups blocked for good."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # nothing changed yet: an interrupt here leaves it so
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def init_pool_worker(config: BatchConfig) -> None:
    """init_worker for a worker process of the batch's own pool, which ends without the interpreter's teardown."""
    import atexit

    from .warning_lines import exit_at_once

    # The pool starts a worker with the batch's signals held (_pool_round), a mask the worker inherits: Ctrl-C and
    # a hangup are ignored here before they are released (one held since the start is then dropped), SIGTERM acts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if HANGUP is not None:
        signal.signal(HANGUP, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
    init_worker(config)
    # A pool worker's end, as the command's own (cli.run): streams flushed, then os._exit, without the interpreter's
    # finalisation (registered last, this atexit handler runs first). The pool's shutdown waits for its workers to
    # exit, and the summaries and the report wait for the shutdown: a worker's teardown (onnxruntime's sessions,
    # every module) took 60-90 ms of CPU and 0.6-1 s of wall clock at the end of every batch. Its exit code, 0, is
    # read by nothing: the pool judges a worker by its death, not its code (a worker ends with 1 only when its
    # work loop raised, which the pool sees as that death). Coverage's process_startup save does not run here
    # (coverage's concurrency = multiprocessing saves before atexit, in the process's bootstrap).
    atexit.register(exit_at_once, 0)


_PREVIEW_PERCENTILES = (0.5, 99.5)  # the preview's black and white levels


def _order_statistic(values, ranks: tuple[int, int], low: bool, sample):
    """values[ranks] of the sorted float array `values`, from the few values below (or above) a sampled bound.

    None when the sample's bound did not take in enough of them (the caller then sorts everything).
    """
    import numpy as np

    n = values.size
    # A bound with a margin of 1/64 of the image's values on the far side of the ranks wanted.
    pos = (max(ranks) + n // 64) if low else (min(ranks) - n // 64)
    at = min(len(sample) - 1, max(0, pos * len(sample) // n))
    bound = sample[at]
    part = values[values <= bound] if low else values[values >= bound]
    first = 0 if low else n - part.size  # the rank of part's smallest value among all values
    if (low and part.size <= max(ranks)) or (not low and first > min(ranks)):
        return None
    local = [r - first for r in ranks]
    part = np.partition(part, local)
    return part[local]


def preview_levels(data) -> tuple:
    """np.percentile(data, (0.5, 99.5)), bit for bit, without sorting the whole image (1/3 of the time).

    The values at the four ranks the two percentiles interpolate between are taken from the values below
    and above bounds read off a strided sample; the interpolation is numpy's own (linear method).
    """
    import numpy as np

    values = np.asarray(data).ravel()
    n = values.size
    # NaN (which np.percentile returns where present, and no comparison selects): np.min propagates it.
    if n < 1 << 14 or values.dtype.kind != "f" or np.isnan(values.min()):
        lo, hi = np.percentile(data, _PREVIEW_PERCENTILES)
        return lo, hi
    q = np.true_divide(np.asarray(_PREVIEW_PERCENTILES, np.float64), 100)
    virtual = (n - 1) * q  # numpy's 'linear' method: the virtual index, its floor and the next index
    previous = np.floor(virtual)
    ranks = np.minimum(np.stack([previous, previous + 1]), n - 1).astype(np.intp)
    sample = np.sort(values[:: max(1, n >> 14)])
    got_lo = _order_statistic(values, (int(ranks[0, 0]), int(ranks[1, 0])), True, sample)
    got_hi = _order_statistic(values, (int(ranks[0, 1]), int(ranks[1, 1])), False, sample)
    if got_lo is None or got_hi is None:
        lo, hi = np.percentile(data, _PREVIEW_PERCENTILES)
        return lo, hi
    a = np.array([got_lo[0], got_hi[0]], values.dtype)
    b = np.array([got_lo[1], got_hi[1]], values.dtype)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    # numpy's _lerp, as np.percentile runs it on these values.
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return out[0], out[1]


def preview_factor(shape: tuple[int, ...], max_side: int = PREVIEW_SIDE) -> int:
    """The smallest whole factor that brings the image's longer side to `max_side` or less."""
    return max(1, -(-max(shape) // max_side))


def _preview_jpeg(data, max_side: int = PREVIEW_SIDE) -> bytes:
    """An 8-bit JPEG of the image, shrunk by a whole factor to `max_side` or less and contrast-stretched, for the
    HTML report.

    A whole factor: each preview pixel is the mean of a k x k block (OpenCV's fast area path, a fifteenth of
    the time of an area resampling to exactly `max_side`: a 1024x1440 image's preview is 720x512, 2.9 instead
    of 8.6 ms in all, half the bytes; the report shows it at most 720 px wide). JPEG, not PNG: a tenth of the
    encoding time and half the bytes; it is a preview.
    """
    import cv2
    import numpy as np

    k = preview_factor(data.shape, max_side)
    if k > 1:
        data = cv2.resize(data, None, fx=1.0 / k, fy=1.0 / k, interpolation=cv2.INTER_AREA)
    lo, hi = preview_levels(data)
    # In place: the same float64 arithmetic as np.clip((data - lo) * k, 0, 255), one temporary instead of three.
    scaled = np.subtract(data, lo)
    scaled *= 255.0 / max(float(hi - lo), 1e-6)
    np.clip(scaled, 0, 255, out=scaled)
    ok, buf = cv2.imencode(".jpg", scaled.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("could not encode the preview JPEG")
    return buf.tobytes()


def _num(value: Any) -> Any:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _base_row(item: Item) -> dict[str, Any]:
    return {"id": item.id, "input": str(item.path), "kind": item.kind, "status": "error", "exit_code": None,
            "count": None, "best_score": None, "spacing_px": None, "spacing_A": None, "pixel_size_A": None,
            "angle_deg": None, "rows": None, "cols": None, "atlas_square": None, "reason": None, "error": None,
            "sha256": None, "stage_xy_m": list(item.stage_xy_m) if item.stage_xy_m else None, "seconds": None}


def process_one(item: Item, config: BatchConfig) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run one image through its pipeline; return its summary row and the files to write (never raises)."""
    row, files, _ = _process(item, config)
    return row, files


Done = tuple[dict[str, Any], dict[str, bytes], bytes | None]  # an image's row, files and hole marks


def _process(item: Item, config: BatchConfig) -> Done:
    """process_one's row and files, and with config.marks a holes image's report.hole_marks (else None): what a
    batch's workers send back, the marks for its report (not a file)."""
    import ptolemy_rt

    from .holesize import with_hole_diameter
    from .io import read_image
    from .metadata import pixel_size_for
    from .models import load_models
    from .results import json_text, with_pixel_size

    start = time.perf_counter()
    row = _base_row(item)
    files: dict[str, bytes] = {}
    marks: bytes | None = None
    try:
        if item.kind not in KINDS:
            if not is_regular(item.path):  # a .nav map whose file is not here: that is said, not that its kind is not
                os.close(open_regular(item.path, error=MissingFileError)[0])  # raises naming it (no such file, ...)
            raise UsageError(f"{item.path}: cannot tell an atlas from a grid-square image here; "
                             "pass --kind squares or --kind holes")
        row["sha256"] = _sha256(item.path)
        # one map of a stack of SerialEM maps reads its own section (the .nav's MapSection), whatever --section says;
        # a montage map's section is its frame, assembled from its own pieces
        if item.section is not None and item.montage:
            from .io import read_montage_frame

            image = read_montage_frame(item.path, item.section)
        else:
            image = read_image(item.path, section=config.section if item.section is None else item.section)
        models = load_models(config.models, provider=config.provider, threads=config.threads)
        finder = ptolemy_rt.find_squares if item.kind == "squares" else ptolemy_rt.find_holes
        result = finder(image, models=models)
        # The same result as `ptolemy-rt squares|holes` writes: hole diameters, the pixel size from the session.
        result = with_hole_diameter(result, image.data)
        # a montage frame of several in one file: its own [ZValue] block, not the first (the pixels are not copied)
        pixel = pixel_size_for(item.path, image if item.block is None else replace(image, section=item.block))
        result = with_pixel_size(result, pixel.angstrom, pixel.source)
        calibration = config.calibrations.get(item.kind)
        if calibration is not None:
            from .calibration import apply_calibration

            result = apply_calibration(result, calibration, calibration.score)
        record = result.to_dict()
        text = json_text(record)  # format_result(result, "json"), the record kept for hole_marks
        preview = _preview_jpeg(image.data)
        if item.kind == "holes" and config.marks:
            from .report import hole_marks

            marks = hole_marks(record)
        # the row and the files last: a step above that raises (the preview, the marks: a MemoryError) leaves an
        # error row and no file to write, not an "ok" row with an error beside a result and its preview
        scores = [t.score for t in result.targets if t.score is not None]
        spacing = getattr(result, "spacing_px", None)
        pixel = result.image.pixel_size_A
        row.update(status="ok" if result.targets else "empty", exit_code=EXIT_OK, count=len(result.targets),
                   best_score=_num(max(scores)) if scores else None, spacing_px=_num(spacing),
                   spacing_A=_num(spacing * pixel) if spacing is not None and pixel else None,
                   pixel_size_A=_num(pixel), angle_deg=_num(result.angle_deg), rows=image.shape[0],
                   cols=image.shape[1], reason=result.reason)
        files = {f"results/{item.id}.json": text.encode("utf-8"), f"images/{item.id}.jpg": preview}
    except PtolemyError as exc:
        row.update(exit_code=exc.exit_code, error=str(exc))
    except MemoryError:
        row.update(exit_code=EXIT_INPUT, error=one_line(f"{item.path}: not enough memory for this image"))
    except Exception as exc:  # noqa: BLE001 - one image's internal error must not stop the batch
        detail = traceback.format_exc() if config.debug else ""
        row.update(exit_code=_exit_internal(), error=one_line(f"{item.path}: internal error: {type(exc).__name__}: "
                                                              f"{exc}") + (f"\n{detail}" if detail else ""))
    row["seconds"] = round(time.perf_counter() - start, 4)
    return row, files, marks if files else None  # none beside an error row (a step after the marks raised)


# ----------------------------------------------------------------------------------------------- executors


def _failed(item: Item, exc: BaseException) -> Done:
    row = _base_row(item)
    row.update(exit_code=_exit_internal(), error=f"{item.path}: worker failed: {type(exc).__name__}: {exc} "
               "(crash or out of memory; rerun with --resume)")
    return row, {}, None


def _in_process(items: list[Item], config: BatchConfig) -> Iterator[Done]:
    import numpy  # noqa: F401 -- before init_worker's cv2 and onnxruntime (cli._main says why)

    init_worker(config, ignore_sigint=False, own_process=False)
    for item in items:
        yield _process(item, config)


def _pool(items: list[Item], config: BatchConfig, workers: int) -> Iterator[Done]:
    """The images' results from a pool of `workers` processes.

    A worker that dies (killed for memory, a crash) breaks the pool and every image not yet done with it: one
    worker killed failed 67 of 80 images (exit 70). The images then in flight are run again one at a time, each in
    a pool of its own, so that only an image that kills its worker again fails; the rest go on in a new pool.
    Where a round ends with neither a result nor a suspect (the pool broke before anything ran) the rest fail as
    before; otherwise every round takes at least one image off the list, so the loop ends.
    """
    _start_resource_tracker()
    waiting = list(items)
    while waiting:
        outcome = yield from _pool_round(waiting, config, workers)
        if outcome is None:
            return
        suspects, waiting, completed, _ = outcome
        for item in suspects:
            alone = yield from _pool_round([item], config, 1)
            if alone is None:
                completed += 1
            else:
                yield _failed(item, alone[3])
        if not completed and not suspects:  # a suspect run alone is progress too: each round then shrinks
            for item in waiting:
                yield _failed(item, RuntimeError("the worker pool broke again before any image was done"))
            return


def _pool_round(items: list[Item], config: BatchConfig, workers: int):
    """Run `items` in a new pool, `workers` + 1 in flight (what the pool queues anyway), yielding each result.
    Returns None when all are done, else, once a worker died, (the images in flight then, those never submitted,
    images done in this round, the exception)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn: a fresh interpreter per worker, never a fork of a process holding onnxruntime or OpenMP threads.
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_pool_worker, initargs=(config,))
    todo = list(reversed(items))
    flight: dict = {}
    completed = 0
    broken: BaseException | None = None
    try:
        while todo or flight:
            while todo and len(flight) <= workers and broken is None:
                # submit starts a worker when one is due: a Ctrl-C or SIGTERM between its start and the data sent
                # to it left the worker reading a closed pipe ("EOFError: Ran out of input", its traceback under
                # the batch's one-line 'interrupted', fuzz16 seed 241000015); held, the signal comes right after
                try:
                    with _signals_held():
                        flight[executor.submit(_process, todo[-1], config)] = todo[-1]
                except BrokenProcessPool as exc:
                    broken = exc
                    break
                todo.pop()
            if broken is not None:
                break
            done, _ = wait(flight, return_when=FIRST_COMPLETED)
            results = []
            for future in done:
                item = flight.pop(future)
                try:
                    results.append(future.result())
                except BrokenProcessPool as exc:
                    broken = exc
                    flight[future] = item
                except Exception as exc:  # noqa: BLE001 - the worker's own failure: this image's, exit 70
                    results.append(_failed(item, exc))
            for result in results:
                completed += 1
                yield result
            if broken is not None:
                break
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if broken is None:
        return None
    suspects = []
    for future, item in flight.items():  # some in flight may have finished before the pool broke
        if future.done() and not future.cancelled() and future.exception() is None:
            completed += 1
            yield future.result()
        else:
            suspects.append(item)
    return suspects, list(reversed(todo)), completed, broken


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker started with SIGHUP ignored (the disposition survives its exec).

    It ignores SIGINT and SIGTERM itself, not SIGHUP: a terminal's hangup, sent to the whole process group, killed
    it, and the pool's shutdown then printed its tracebacks under the batch's one-line 'interrupted'."""
    import signal
    from multiprocessing import resource_tracker

    if HANGUP is None:  # Windows: no hangups, no tracker
        return
    try:
        previous = signal.signal(HANGUP, signal.SIG_IGN)
    except ValueError:  # run_batch called from another thread than the main one: signals are not its to set
        return
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(HANGUP, previous)


def _dask(items: list[Item], config: BatchConfig, address: str) -> Iterator[Done]:
    try:
        from ._dask import dask_results
    except ImportError as exc:
        raise UsageError(f"--dask needs the dask extra ({exc}): pip install 'ptolemy-rt[dask]'") from None
    yield from dask_results(items, config, address, failed=_failed)


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """Images done, images/s and ETA on stderr: tqdm when installed, else one plain line; silent when off."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.done, self.enabled = total, initial, enabled
        self._bar = None
        self._start = time.perf_counter()
        self._last = 0.0
        self._fresh = 0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="img", file=sys.stderr, dynamic_ncols=True,
                             smoothing=0.1, desc="ptolemy-rt batch")
        except ImportError:
            self._bar = None

    def update(self, failed: bool = False) -> None:
        """One more image done."""
        self.done += 1
        self._fresh += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            return
        now = time.perf_counter()
        if now - self._last < 0.25 and self.done < self.total:
            return
        self._last = now
        rate = self._fresh / max(now - self._start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f} s" if math.isfinite(eta) else "?"
        sys.stderr.write(f"\rptolemy-rt batch: {self.done}/{self.total} images, {rate:.2f} img/s, ETA {eta_text}  ")
        sys.stderr.flush()

    def write(self, message: str) -> None:
        """Print a line on stderr without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
            return
        sys.stderr.write(("\n" if self.enabled and self.done else "") + message + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Finish the line."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ----------------------------------------------------------------------------------------------- outputs


def _check_writable(outdir: Path) -> None:
    """Create `outdir` and make (and drop) a file in it; OSError when it cannot be written.

    The probe is a nameless file of this process's own (tempfile falls back to a unique name where the file
    system has no O_TMPFILE): a fixed name was removed by the other of two batches sharing an output folder
    (FileNotFoundError: "cannot write here", exit 4), and a folder of that name failed every batch."""
    import tempfile

    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=outdir, prefix=".ptolemy-rt-write-test.", suffix=".tmp"):
        pass


def _state_path(outdir: Path, item_id: str) -> Path:
    return outdir / ".state" / f"{item_id}.json"


def _number_or_none(value: Any) -> bool:
    return value is None or finite_number(value)  # an int past float's range too: an unsound row (no exit 70)


def _sound_row(row: dict[str, Any], item: Item) -> bool:
    """Whether an earlier run's row has the fields and types process_one writes: a damaged or edited .state file
    (a count of "x", an exit code of [1], Infinity anywhere) made the summary an internal error (exit 70)."""
    if row.get("id") != item.id or row.get("exit_code") != 0 or set(row) - set(_base_row(item)):
        return False
    count = row.get("count")
    # past float's range too: totals of such counts (two of 4300 digits) could not be printed (exit 70)
    if not isinstance(count, int) or not finite_number(count) or count < 0:
        return False
    numbers = ("best_score", "spacing_px", "spacing_A", "pixel_size_A", "angle_deg", "rows", "cols", "seconds")
    texts = ("input", "kind", "status", "reason", "error", "sha256")
    stage, square = row.get("stage_xy_m"), row.get("atlas_square")  # atlas_square: [atlas id, square rank]
    return (all(_number_or_none(row.get(k)) for k in numbers)
            and all(row.get(k) is None or isinstance(row.get(k), str) for k in texts)
            and (square is None or (isinstance(square, list) and len(square) == 2 and isinstance(square[0], str)
                                    and isinstance(square[1], int) and not isinstance(square[1], bool)))
            and (stage is None or (isinstance(stage, list) and all(_number_or_none(v) for v in stage)))
            # a pixel size no run writes (metadata's plausible range): 1e-300 Å made the square linking's
            # determinant underflow to 0 (ZeroDivisionError: exit 70 on --resume of an EPU session)
            and (row.get("pixel_size_A") is None or PLAUSIBLE_A[0] <= row["pixel_size_A"] <= PLAUSIBLE_A[1])
            # an image's shape, as process_one writes it: rows or cols of 0 divided by zero in a .nav map's frame
            and all(row.get(k) is None or (type(row[k]) is int and row[k] >= 1) for k in ("rows", "cols")))


# An earlier run's files (a .state row of a kilobyte, a result of up to a few megabytes) are read only when they
# are regular files of at most this size.
_MAX_EARLIER_BYTES = 256 << 20


def _earlier_json(path: Path) -> Any:
    """An earlier run's JSON file (smallfiles.read_small: an InputError, a ValueError, when it is missing, no
    regular file or too large). Path.read_text waited for ever on a FIFO in place of a .state row (batch --resume
    hung) and read /dev/zero behind a link until memory ran out."""
    from .smallfiles import read_small

    return json.loads(read_small(path, _MAX_EARLIER_BYTES, "batch output file").decode("utf-8"))


def _resumable(outdir: Path, item: Item, config: BatchConfig) -> dict[str, Any] | None:
    """The earlier run's row when the image need not run again: outputs there, same input bytes and options."""
    try:
        state = _earlier_json(_state_path(outdir, item.id))
    except (OSError, ValueError, RecursionError):
        return None
    row = state.get("row") if isinstance(state, dict) else None
    if not isinstance(row, dict) or state.get("key") != config.key(item.kind):
        return None
    if row.get("status") not in ("ok", "empty") or not _sound_row(row, item):
        return None
    for rel in (f"results/{item.id}.json", f"images/{item.id}.jpg"):
        if not (outdir / rel).is_file():
            return None
    try:  # a damaged result is not an output there: the image runs again
        if not sound_result(_earlier_json(outdir / "results" / f"{item.id}.json")):
            return None
    except (OSError, ValueError, RecursionError):
        return None
    try:
        if _sha256(item.path) != row.get("sha256"):
            return None
    except (OSError, PtolemyError):
        return None
    return row


def _write_outputs(outdir: Path, item: Item, config: BatchConfig, row: dict, files: dict[str, bytes]) -> None:
    """Write an image's files as one set, then its state (last, so a kill in between leaves it to be redone)."""
    from .outputs import atomic_write, write_set

    try:
        # one set: a result beside no preview (the disk full at the preview) was left for a row marked failed
        write_set([(outdir / rel, data) for rel, data in files.items()])
        atomic_write(_state_path(outdir, item.id), json.dumps({"key": config.key(item.kind), "row": row},
                                                                 allow_nan=False) + "\n")
    except OSError as exc:
        row.update(status="error", exit_code=EXIT_OUTPUT, error=f"{outdir}: cannot write the outputs of "
                   f"{item.path} ({exc})")


def _point_in(vertices: list, x: float, y: float) -> bool:
    """Whether (x, y) lies inside a convex polygon (either winding)."""
    sign = 0
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        cross = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)
        if cross != 0:
            s = 1 if cross > 0 else -1
            if sign and s != sign:
                return False
            sign = s
    return True


def _atlas_pixel(atlas: Item, pixel_m: float, shape: tuple[int, int], stage_xy_m: tuple[float, float]
                 ) -> tuple[float, float] | None:
    """Where a stage position falls in an atlas image (x, y pixels), from the atlas's own pixel-to-stage mapping."""
    if atlas.nav_frame is not None:
        try:  # SerialEM: the navigator's MapScaleMat, in micrometres; the image may be a binned or stitched copy
            return atlas.nav_frame.pixel(stage_xy_m[0] * 1e6, stage_xy_m[1] * 1e6, shape)
        except PtolemyError:
            return None  # the image read is not that map (another aspect ratio): no link rather than a wrong one
    if atlas.stage_xy_m is None:
        return None
    return stage_to_pixel(stage_xy_m, atlas.stage_xy_m, pixel_m, shape, axes=atlas.pixel_axes)


def link_squares(outdir: Path, items: list[Item], rows: dict[str, dict]) -> dict[str, dict]:
    """Set each grid-square image's `atlas_square` ([atlas id, square rank]) from stage positions, where known;
    return the atlas results it read, those the report finds sound (report.sound_result), by image id: the report
    need not read and parse them again (render_report's `records`).

    The atlas's orientation on the stage comes from its session metadata (sessions.py: EPU's
    ReferenceTransformation, SerialEM's MapScaleMat); the grid-square image only gives its centre's position.
    """
    atlases = []
    records: dict[str, dict] = {}
    for item in items:
        row = rows.get(item.id)
        if item.kind != "squares" or row is None or row["status"] != "ok" or not item.stage_xy_m \
                or not (row["pixel_size_A"] or item.nav_frame is not None):
            continue
        try:
            result = _earlier_json(outdir / "results" / f"{item.id}.json")
        except (OSError, ValueError, RecursionError):
            continue
        if not sound_result(result, centres=False) or "targets" not in result:
            continue
        if sound_result(result):  # x and y too
            records[item.id] = result
        atlases.append((item, (row["pixel_size_A"] or 0.0) * 1e-10, (row["rows"], row["cols"]), result["targets"]))
    for item in items:
        row = rows.get(item.id)
        if item.kind != "holes" or row is None or not item.stage_xy_m:
            continue
        row["atlas_square"] = None
        for atlas, pixel_m, shape, targets in atlases:
            xy = _atlas_pixel(atlas, pixel_m, shape, item.stage_xy_m)
            if xy is None:
                continue
            hit = next((k for k, t in enumerate(targets) if _point_in(t["vertices"], *xy)), None)
            if hit is not None:
                row["atlas_square"] = [atlas.id, hit]
                break
    return records


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_FIELDS)
    for row in rows:
        values = []
        for key in SUMMARY_FIELDS:
            v = row.get(key)
            if key == "atlas_square" and v is not None:
                v = f"{v[0]}#{v[1]}"
            values.append("" if v is None else v)
        writer.writerow(values)
    return buf.getvalue()


def summary_dict(rows: list[dict], notes: list[str], interrupted: bool = False) -> dict[str, Any]:
    """summary.json: totals and one row per image (no timings: the same inputs give the same bytes)."""
    from . import __version__

    def count(kind: str | None = None, status: Iterable[str] = ("ok", "empty")) -> int:
        return sum(1 for r in rows if (kind is None or r["kind"] == kind) and r["status"] in status)

    totals = {
        "images": len(rows),
        "ok": count(status=("ok",)),
        "empty": count(status=("empty",)),
        "failed": count(status=("error",)),
        "atlases": count("squares"),
        "grid_square_images": count("holes"),
        # targets of images whose outputs were written: a row whose files could not be (exit 4) keeps the count
        # found, but its targets are nowhere in the output folder
        "squares": sum(r["count"] or 0 for r in rows if r["kind"] == "squares" and r["status"] != "error"),
        "holes": sum(r["count"] or 0 for r in rows if r["kind"] == "holes" and r["status"] != "error"),
        "exit_code": worst_exit_code(r["exit_code"] if r["exit_code"] is not None else EXIT_OK for r in rows),
    }
    images = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    return {"version": __version__, "complete": not interrupted, "totals": totals, "notes": notes,
            "images": images}


def _text(value: Any) -> Any:
    """A row's value with its texts (and the atlas id in atlas_square) made valid Unicode (errors.clean_text)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def write_summaries(outdir: Path, rows: list[dict], notes: list[str], interrupted: bool = False) -> dict:
    """Write summary.csv and summary.json (atomically); return the summary dict."""
    from .outputs import atomic_write

    # file names Python could not decode (LANG=C, non-UTF-8 bytes) as text: json.dumps wrote lone surrogates
    rows = [{k: _text(v) for k, v in r.items()} for r in sorted(rows, key=lambda r: r["id"])]
    summary = summary_dict(rows, [clean_text(n) for n in notes], interrupted)
    atomic_write(outdir / "summary.csv", _csv_text(rows))
    atomic_write(outdir / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------- driver


def run_batch(paths: list[str], outdir: str | os.PathLike, *, kind: str | None = None, workers: int | None = None,
              dask: str | None = None, resume: bool = False, models: str | None = None, provider: str = "auto",
              threads: int | None = None, section: int | None = None, report: bool = True,
              progress: bool = True, verbose: bool = False, debug: bool = False,
              calibrations: Sequence[str] = ()) -> int:
    """Process every image of `paths` into `outdir`; return the worst exit code (see the module docstring).

    `calibrations`: calibration files (at most one per kind), applied to that kind's scores as
    `ptolemy-rt squares|holes --calibration` does."""
    from .models import load_models, physical_cores

    out = Path(outdir)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: give at least 1")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: give at least 1")
    from .options import max_threads

    if threads is not None and threads > max_threads():
        # As `squares --threads`: onnxruntime starts every thread it is given (--threads 100000: 32,000 threads
        # and 16 GB before the kernel stopped it).
        raise UsageError(f"--threads {threads}: give at most {max_threads()} (four per CPU)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder")
    from .outputs import folder_name_max

    # ids are cut to the output file system's names, as `-o DIR/` cuts its files' (eCryptfs: 143 bytes)
    items, notes = discover(paths, kind=kind, exclude=out, name_max=folder_name_max(out))
    try:
        _check_writable(out)
    except OSError as exc:
        # a dangling symlink in the folder's place said "File exists", of a name that seemed free
        why = "a symbolic link to nothing" if os.path.islink(out) and not out.exists() else exc
        print(f"error: -o {one_line(str(out))}: cannot write here ({why})", file=sys.stderr)
        return EXIT_OUTPUT
    # a missing or tampered set fails here, once (exit 3; manifest.check_model_directory for a --models that is
    # no directory, a symlink loop included)
    model_set = load_models(models, provider=provider)
    calibration_by_kind = _read_calibrations(calibrations, model_set)
    cores = physical_cores()
    n_workers = workers or cores
    if dask:
        threads = threads or 1
    elif threads is None:
        threads = max(1, cores // n_workers)
    # kinds: set below from the images still to run (key(), which --resume compares, does not depend on them)
    config = BatchConfig(models, provider, threads, section, debug, calibration_by_kind, marks=report)
    for note in notes:
        print(f"ptolemy-rt batch: {note}", file=sys.stderr)

    rows: dict[str, dict] = {}
    todo: list[Item] = []
    for item in items:
        earlier = _resumable(out, item, config) if resume else None
        if earlier is not None:
            rows[item.id] = earlier
        else:
            todo.append(item)
    # the sessions a worker starts: a --resume with holes only left starts no square CNN
    config.kinds = _kinds(item.kind for item in todo)
    by_id = {item.id: item for item in items}
    bar = Progress(len(items), len(rows), enabled=progress and sys.stderr.isatty())
    interrupted = False
    # SIGTERM (a scheduler's kill) and SIGHUP (the terminal or ssh session gone) stop like Ctrl-C: finished images
    # stay recorded for --resume. cli.main() has installed its own handlers; a library caller may have none.
    caught = [sig for sig in (signal.SIGTERM, HANGUP) if sig is not None
              and signal.getsignal(sig) in (signal.SIG_DFL, None)] \
        if threading.current_thread() is threading.main_thread() else []
    for sig in caught:
        signal.signal(sig, _raise_interrupt)
    started = time.perf_counter()
    results: Iterator[Done] = iter(())
    marks: dict[str, bytes] = {}  # report.hole_marks of this run's holes images
    marks_bytes = 0
    try:
        if dask:
            results = _dask(todo, config, dask)
        elif n_workers == 1 or len(todo) <= 1:
            results = _in_process(todo, config)
        else:
            results = _pool(todo, config, min(n_workers, len(todo)))
        for row, files, packed in results:
            item = by_id[row["id"]]
            _write_outputs(out, item, config, row, files)
            # marks of an image whose files could not be written (an error row) would only use up the cap
            if packed is not None and row["status"] != "error" and marks_bytes + len(packed) <= _MAX_MARKS_BYTES:
                marks[item.id] = packed
                marks_bytes += len(packed)
            rows[item.id] = row
            bar.update(failed=row["status"] == "error")
            if verbose or row["status"] == "error":
                message = row["error"] or f"{row['count']} {item.kind}" + (f" ({row['reason']})" if row["reason"]
                                                                           else "")
                took = f" [{row['seconds']:.2f} s]" if row["seconds"] is not None else ""  # None: the worker died
                bar.write(f"{one_line(item.id)}: {message}{took}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if hasattr(results, "close"):
            results.close()  # stop the pool or the Dask client now, not when the generator is collected
        bar.close()
        for sig in caught:
            signal.signal(sig, signal.SIG_DFL)
    elapsed = time.perf_counter() - started

    atlas_records = link_squares(out, items, rows)
    done = [rows[i.id] for i in items if i.id in rows]
    try:
        summary = write_summaries(out, done, notes, interrupted)
        if report and not interrupted:
            from .report import write_report

            write_report(out, marks, atlas_records)
    except OSError as exc:
        print(f"error: {one_line(str(out))}: cannot write the summary ({exc})", file=sys.stderr)
        return EXIT_OUTPUT
    t = summary["totals"]
    fresh = len(done) - (len(items) - len(todo))
    rate = f", {fresh / elapsed:.2f} images/s" if fresh and elapsed > 0 else ""
    print(f"ptolemy-rt batch: {t['ok']} ok, {t['empty']} empty, {t['failed']} failed of {len(items)} image(s) "
          f"({len(items) - len(todo)} resumed{rate}); {t['squares']} squares, {t['holes']} holes; "
          f"{one_line(str(out))}/",  # a newline in the folder's name made this line two
          file=sys.stderr)
    if interrupted:
        print(f"interrupted: {len(done)} of {len(items)} done; rerun with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    return worst_exit_code(r["exit_code"] if r["exit_code"] is not None else EXIT_OK for r in done)


def _raise_interrupt(signum, frame):  # pragma: no cover - signal handler
    raise KeyboardInterrupt


def _read_calibrations(paths: Sequence[str], model_set: Any) -> dict[str, Any]:
    """Read --calibration files, one per kind, each checked against the model set and its hole score (exit 2)."""
    if not paths:
        return {}  # no imports: the pipelines (scipy and all) are the workers' to load, not this process's
    from .calibration import read_calibration
    from .holes import default_score

    by_kind: dict[str, Any] = {}
    for path in paths:
        cal = read_calibration(path)
        if cal.kind in by_kind:
            raise UsageError(f"--calibration {path}: a second calibration for {cal.kind} (give one per kind)")
        cal.check_models(model_set.ids, f"--calibration {path}")
        if cal.kind == "holes" and cal.score != default_score(model_set):
            raise UsageError(f"--calibration {path}: maps the '{cal.score}' hole score, a batch ranks holes by "
                             f"'{default_score(model_set)}' (the model set's default)")
        by_kind[cal.kind] = cal
    return by_kind


def run(args: argparse.Namespace) -> int:
    """Entry point of `ptolemy-rt batch` (argparse namespace from add_arguments)."""
    # The command's own process (it runs the images itself with --workers 1): a worker's malloc limits too.
    keep_large_arrays_on_heap()
    return run_batch(args.paths, args.output, kind=None if args.kind == "auto" else args.kind,
                     workers=args.workers, dask=args.dask, resume=args.resume, models=args.models,
                     provider=args.provider, threads=args.threads, section=args.section,
                     report=not args.no_report, progress=not args.no_progress, verbose=args.verbose,
                     debug=args.debug, calibrations=args.calibration or ())
