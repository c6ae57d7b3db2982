"""The `ptolemy-rt` command line: squares (lowmag), holes (medmag), demo, leginon-script, models."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUTPUT,
    HANGUP,
    InputError,
    ModelError,
    OutputError,
    PtolemyError,
    one_line,
)
from .options import max_threads

__all__ = ["build_parser", "main", "run"]

log = logging.getLogger("ptolemy_rt")

# A batch exits with the worst code: internal (70), then model set (3), output (4), input (2).
SEVERITY = (EXIT_INTERNAL, EXIT_MODEL, EXIT_OUTPUT, EXIT_INPUT)
# SIGTERM (a scheduler's kill) and SIGHUP are interruptions like Ctrl-C: the same code as `batch` and the contract.
EXIT_TERMINATED = EXIT_INTERRUPTED
SUFFIX = {"json": ".json", "txt": ".txt", "csv": ".csv"}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line and exit code 2; a subcommand may declare its options when it is
    first used (`deferred`), so that `holes` does not import the modules `batch` needs to declare its own."""

    deferred: Callable[[argparse.ArgumentParser], None] | None = None

    def _declare(self) -> None:
        declare, self.deferred = self.deferred, None
        if declare is not None:
            declare(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._declare()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._declare()
        return super().format_usage()

    def format_help(self) -> str:
        self._declare()
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, option: str, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite int or float within [lo, hi] (or open ends); the refusal names the range."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
    what = "an integer" if kind is int else "a finite number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{option} {text!r}: expected {what} in {span}") from None
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"{option} {text}: expected {what} in {span}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _nonempty(what: str = "path") -> Callable[[str], str]:
    """An argparse type for paths (and --dask's address): anything but an empty or blank string (a shell variable
    not set: `batch ""` ran on the current folder, `--nav ""` was ignored, `--models ""` read the current folder).
    argparse names the option in the refusal."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty {what} was given")
        return text

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _count(text: str) -> int:
    """An argparse type for --top: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--top {text!r}: expected a count >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--top: expected a count >= 0, got {value}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    from .results import FORMATS

    p.add_argument("images", nargs="+", metavar="IMAGE", type=_nonempty(), help="MRC, TIFF, PNG or JPEG files")
    p.add_argument("-f", "--format", choices=FORMATS, default="json", help="output format: json (one line), csv "
                   "or txt (tab-separated), each with the same fields (default json)")
    p.add_argument("-o", "--output", metavar="OUT", type=_nonempty(), help="output file, or a directory "
                   "when several images are given (default: standard output)")
    p.add_argument("--compat", choices=["ptolemy"], help="behave as the original Ptolemy CLI: its JSON (one line, "
                   "its field names, order and int() centres) and, for holes, its lattice search, crop windows, "
                   "U-Net padding and CNN scores (HoleOptions.ptolemy()); CSV/TXT: the original's fields "
                   "(default: our own)")
    p.add_argument("--pretty", action="store_true", help="indent JSON over several lines (default: one line; "
                   "never with --compat)")
    p.add_argument("--top", type=_count, metavar="N", help="keep the N best-scoring targets "
                   "(default: all)")
    p.add_argument("--min-score", type=_number(float, "--min-score"), metavar="S", help="keep targets whose score "
                   "is >= S; unscored ones are dropped (default: all)")
    p.add_argument("--pixel-size", type=_number(float, "--pixel-size", 0.0, 1e6, lo_open=True), metavar="A",
                   help="pixel size in Å per pixel of the input image "
                   "(default: from the EPU .xml or SerialEM .mdoc beside the image, else the MRC header; "
                   "0 and 1 Å there mean unknown)")
    p.add_argument("--nav", metavar="NAV", type=_nonempty(),
                   help="SerialEM navigator: write a copy with one point per target, "
                   "drawn on the map of this image (see --map-label, --nav-out)")
    p.add_argument("--map-label", metavar="L", help="label of the navigator map the image shows (default: the "
                   "map whose MapFile is the image)")
    p.add_argument("--nav-out", metavar="NAV", type=_nonempty(), help="where the navigator copy goes "
                   "(default: NAME_ptolemy.nav beside --nav)")
    p.add_argument("--overlay", metavar="IMG", type=_nonempty(), help="draw the result on the image: a "
                   ".png, .jpg or .tif file (the extension picks the format), or a directory of PNGs for several "
                   "images (default: none)")
    p.add_argument("--models", metavar="DIR", type=_nonempty(),
                   help="model set directory (default: the set shipped with ptolemy-rt)")
    p.add_argument("--calibration", metavar="CAL", type=_nonempty(),
                   help="map scores onto another tool's scale with a calibration "
                   "file from `ptolemy-rt calibrate` (fitted for this model set); --min-score then applies to the "
                   "mapped scores (default: none, the model's own scores)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                   "(default auto: CUDA when available, else CPU)")
    p.add_argument("--threads", type=_number(int, "--threads", 1, max_threads()), metavar="N",
                   help=f"CPU threads for inference, 1..{max_threads()} (default: physical cores)")
    p.add_argument("--section", type=_number(int, "--section", 0), metavar="N",
                   help="section of an MRC/TIFF stack, from 0 (default 0, with a warning)")
    p.add_argument("--max-pixels", type=_number(int, "--max-pixels", 1, 1 << 40), metavar="N",
                   help="refuse images claiming more pixels, all sections together (default 2**28)")
    p.add_argument("--permissive", action="store_true", help="read MRC files that mrcfile's validator flags "
                   "(its warning is printed) instead of refusing them")
    p.add_argument("--follow-symlinks", action="store_true", help="write through a symbolic link at an output "
                   "path (by default a symlink is refused)")
    p.add_argument("-v", "--verbose", action="store_true", help="one summary line per image on stderr: targets, "
                   "time per stage (ms), provider, pixel size")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ptolemy-rt` command."""
    parser = _Parser(prog="ptolemy-rt", description="Targeting for cryo-EM data collection: grid squares at low "
                     "magnification, holes at medium magnification (the Ptolemy method).")
    parser.add_argument("--version", action="version", version=f"ptolemy-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sq = sub.add_parser("squares", aliases=["lowmag"], help="find and score grid squares in low-mag atlases")
    _common(sq)
    sq.add_argument("--min-area", type=_number(float, "--min-area", 0.0, 1e12), default=None, metavar="PX2",
                    help="drop squares whose hull is smaller (px², >= 0; default: a tenth of a square of the "
                    "measured mesh, 100 with --compat ptolemy)")
    sq.add_argument("--window", type=_number(int, "--window", 1, 1024), default=None, metavar="PX",
                    help="pixels within this window join one square (px, 1..1024; default: from the measured "
                    "mesh's bar width, 6 with --compat ptolemy)")
    sq.add_argument("--no-score", action="store_true", help="geometry only: skip the square CNN")
    sq.set_defaults(func=_cmd_squares)

    ho = sub.add_parser("holes", aliases=["medmag"], help="find and score holes in medium-mag images")
    _common(ho)
    ho.add_argument("--score", choices=["unet", "cnn"], help="which score ranks the holes (default: cnn with "
                    "--compat ptolemy, else the model set's choice: cnn for the shipped set, unet "
                    "for the published weights)")
    # Bounded above: every lattice point within the tolerance is cropped and scored.
    ho.add_argument("--edge-tolerance", type=_number(float, "--edge-tolerance", -1e6, 1000.0), default=-10.0,
                    metavar="PX", help="how far outside the image a hole centre may lie, px, up to 1000 "
                    "(default -10: at least 10 px inside)")
    ho.add_argument("--threshold", type=_number(float, "--threshold", 0.0, 1.0, lo_open=True, hi_open=True),
                    metavar="P", help="U-Net probability threshold, in (0, 1) (default: the model's)")
    ho.add_argument("--no-refine", action="store_true", help="keep the anchor-pair lattice (as the original does)")
    ho.add_argument("--keep-off-film", action="store_true", help="also lattice points off the holey film (grid bars, "
                    "outside the square, broken film); each hole's on_film says which")
    ho.add_argument("--original", action="store_true", help="deprecated: the original's behaviour in our JSON "
                    "(use --compat ptolemy)")
    ho.set_defaults(func=_cmd_holes)

    demo = sub.add_parser("demo", help="make a synthetic atlas and med-mag image, run both pipelines, write results")
    demo.add_argument("-o", "--output", type=_nonempty(), default="ptolemy-demo",
                      help="output directory (default ./ptolemy-demo)")
    demo.add_argument("--models", metavar="DIR", type=_nonempty(),
                      help="model set directory (default: the shipped set)")
    demo.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                      "(default auto)")
    demo.add_argument("--threads", type=_number(int, "--threads", 1, max_threads()), metavar="N",
                      help="CPU threads for inference (default: physical cores)")
    demo.add_argument("--seed", type=_number(int, "--seed", 0, 2**32 - 1), default=0,
                      help="seed of the synthetic images (default 0)")
    demo.add_argument("-v", "--verbose", action="store_true", help="timings on stderr")
    demo.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    demo.set_defaults(func=_cmd_demo)

    ls = sub.add_parser("leginon-script", help="print a script for Smart-Leginon's external finder "
                        "(source SCRIPT JOB INPUT.mrc OUTDIR)")
    ls.add_argument("finder", choices=["squares", "holes"], help="which finder the script runs")
    ls.add_argument("--models", metavar="DIR", type=_nonempty(),
                    help="model set to put in the script (default: the shipped set)")
    ls.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                    "in the script (default auto)")
    ls.add_argument("--calibration", metavar="CAL", type=_nonempty(),
                    help="calibration file for the script's finder (checked "
                    "against the model set; its absolute path goes into the script; default: none)")
    ls.add_argument("--extra", default="", metavar="OPTIONS",
                    help="extra options for the finder, quoted as one string, checked "
                    "with the finder's parser (default: none)")
    ls.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    ls.set_defaults(func=_cmd_leginon_script)

    ca = sub.add_parser("calibrate", help="fit a map from this model set's scores to the original Ptolemy's, "
                        "from its output on your own images (then: squares/holes --calibration CAL)")
    ca.add_argument("kind", choices=["squares", "holes"], help="which finder's scores to calibrate")
    ca.add_argument("images", nargs="+", metavar="IMAGE", type=_nonempty(),
                    help="images the original Ptolemy was run on")
    ca.add_argument("--against", action="append", required=True, metavar="ORIGINAL", type=_nonempty(),
                    help="the original Ptolemy's -f json output for an image; once per IMAGE, in the same order")
    ca.add_argument("-o", "--output", required=True, type=_nonempty(), metavar="CAL",
                    help="the calibration file to write (JSON)")
    ca.add_argument("--score", choices=["cnn", "unet"], default="cnn", help="holes: which score to calibrate "
                    "(default cnn, the original's)")
    ca.add_argument("--tolerance", type=_number(float, "--tolerance", 0.0, 1e6, lo_open=True), default=20.0,
                    metavar="PX", help="pair targets whose centres are at most this far apart, px (default 20)")
    ca.add_argument("--edge-tolerance", type=_number(float, "--edge-tolerance", -1e6, 1000.0), default=100.0,
                    metavar="PX", help="holes: how far outside the image our lattice points may lie, px (default "
                    "100, so that the original's targets at any edge tolerance up to it find a partner)")
    ca.add_argument("--models", metavar="DIR", type=_nonempty(),
                    help="model set to calibrate (default: the shipped set)")
    ca.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                    "(default auto)")
    ca.add_argument("--section", type=_number(int, "--section", 0), metavar="N",
                    help="section of an MRC/TIFF stack, from 0 (default 0)")
    ca.add_argument("--permissive", action="store_true", help="read MRC files that mrcfile's validator flags")
    ca.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    ca.set_defaults(func=_cmd_calibrate)

    mo = sub.add_parser("models", help="show and verify a model set and the providers onnxruntime offers")
    mo.add_argument("--models", metavar="DIR", type=_nonempty(), help="model set directory (default: the shipped set)")
    mo.add_argument("--validate", metavar="DIR", type=_nonempty(),
                    help="check the model set in DIR without running an image: list "
                    "every problem (manifest fields, files, hashes, graphs); exit 0 only if there is none")
    mo.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                    "(default auto)")
    mo.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    mo.set_defaults(func=_cmd_models)

    ba = sub.add_parser("batch", help="whole sessions (EPU, Leginon, SerialEM) or many files: worker processes "
                        "or Dask, progress, --resume, summary and HTML report")
    ba.deferred = _batch_arguments  # batch.py (and the session readers it imports) only when `batch` runs

    dr = sub.add_parser("doctor", help="check the installation: providers that really run, CUDA/cuDNN libraries, "
                        "versions")
    dr.add_argument("--warm", action="store_true", help="also run both finders once on small synthetic images and "
                    "report first and second call times (sessions created, files cached by the OS)")
    dr.add_argument("--models", metavar="DIR", type=_nonempty(),
                    help="model set to try the providers with (default: the shipped set)")
    dr.add_argument("--json", action="store_true", help="print the report as JSON")
    dr.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    dr.set_defaults(func=lambda args: __import__("ptolemy_rt.doctor", fromlist=["run_doctor"]).run_doctor(args))
    return parser


def _batch_arguments(p: argparse.ArgumentParser) -> None:
    from .batch import add_arguments

    add_arguments(p)


def _is_dir_target(value: str) -> bool:
    """A destination meant as a directory: an existing one, or a path ending in a separator."""
    return Path(value).is_dir() or value.endswith(("/", os.sep))


def _per_image_paths(images: list, value: str | None, suffix: str) -> list[Path | None]:
    """Where each image's file of an option given `value` goes: none (None, not given), the one file named, or
    IMAGE-STEM + `suffix` in the folder named (cut to the bytes a name takes there)."""
    from .outputs import fitting_name, folder_name_max

    n = len(images)
    if not value:
        return [None] * n
    out = Path(value)
    if n == 1 and not _is_dir_target(value):
        return [out]
    limit = folder_name_max(value)
    return [out / fitting_name(Path(img).stem, suffix, limit) for img in images]


def _output_paths(args: argparse.Namespace) -> list[Path | None]:
    """Where each image's result goes: stdout (None), the -o file, or a file in the -o directory."""
    return _per_image_paths(args.images, args.output, SUFFIX[args.format])


def _overlay_paths(args: argparse.Namespace) -> list[Path | None]:
    """Where each image's --overlay goes: none, the file named, or a .png in the folder named."""
    return _per_image_paths(args.images, args.overlay, ".png")


def _check_destinations(args: argparse.Namespace, outputs: list, overlays: list) -> None:
    """Refuse, before any work, destinations that would collide, are not what several images need, or
    name an overlay format we cannot write (usage errors, exit 2)."""
    from .outputs import OVERLAY_FORMATS

    several = len(args.images) > 1
    for option, value in (("-o", args.output), ("--overlay", args.overlay)):
        if value is None or not several or _is_dir_target(value):
            continue
        if Path(value).exists():
            raise UsageError(f"{option} {value}: several images need a directory, and this is a file")
        if Path(value).suffix:
            raise UsageError(f"{option} {value}: several images need a directory (one result per image); "
                             f"name one ending in '/' ({value.rstrip('/')}_dir/) or run the images one by one")
    for path in overlays:
        if path is not None and path.suffix.lower() not in OVERLAY_FORMATS:
            raise UsageError(f"--overlay {path}: the extension picks the format; use .png, .jpg, .jpeg, .tif "
                             "or .tiff")
    inputs = _input_files(args)
    seen: dict[object, tuple[str, int, str]] = {}  # an output's key: the option, image index and image
    nav_outs: list[Path | None] = [None] * len(args.images)
    if getattr(args, "nav", None):
        from .navigator import default_nav_output

        nav_outs[0] = Path(args.nav_out) if args.nav_out else default_nav_output(args.nav)
    for option, paths in (("-o", outputs), ("--overlay", overlays), ("--nav-out", nav_outs)):
        for index, (image, path) in enumerate(zip(args.images, paths)):
            if path is None:
                continue
            key = _same_file_key(path)
            if key in inputs:
                raise UsageError(f"{option} {path}: would overwrite {inputs[key]}")
            if key in seen:
                before, other_index, other = seen[key]
                if other_index == index:  # one image's -o r.png --overlay r.png
                    raise UsageError(f"{option} {path}: {before} writes it too; give each its own path")
                if other == image:
                    raise UsageError(f"{option}: {image} is given twice and would write {path} twice; give it once")
                raise UsageError(f"{option}: {other} and {image} would both write {path}; "
                                 "run them separately or rename one")
            seen[key] = (option, index, image)


def _input_files(args: argparse.Namespace) -> dict[object, str]:
    """What the command reads (images, --nav, --calibration, --against, the model set's files), by
    _same_file_key: no output may replace one of them (`--nav-out IMAGE.mrc` wrote the navigator over the image)."""
    found: dict[object, str] = {}
    for image in getattr(args, "images", None) or []:
        found.setdefault(_same_file_key(Path(image)), "an input image")
    for option in ("nav", "calibration", "against"):
        value = getattr(args, option, None)
        for path in value if isinstance(value, list) else [value] if value else []:
            found.setdefault(_same_file_key(Path(path)), f"the --{option} file {path}")
    models = getattr(args, "models", None)
    if models and Path(models).is_dir():
        # The manifest and the graphs it names, not every file there: a run's own earlier output beside them
        # (`--models . -o m.json`) is no file of the set.
        for path in _model_set_files(Path(models)):
            found.setdefault(_same_file_key(path), f"a file of the model set {models}")
    return found


def _model_set_files(directory: Path) -> list[Path]:
    """manifest.json and the graph files it lists (as far as it can be read: a set that cannot be read is
    refused later, with its own error)."""
    import json

    from .manifest import MAX_MANIFEST_BYTES
    from .smallfiles import read_small, text_of

    files = [directory / "manifest.json"]
    try:
        raw = json.loads(text_of(read_small(files[0], MAX_MANIFEST_BYTES, "model-set manifest"), "strict"))
        entries = raw.get("models", {}).values() if isinstance(raw, dict) and isinstance(raw.get("models"), dict) \
            else []
        # (a name holding a NUL byte names no file: os.stat's ValueError was an internal error, exit 70)
        files += [directory / e["file"] for e in entries
                  if isinstance(e, dict) and isinstance(e.get("file"), str) and "\0" not in e["file"]]
    except (PtolemyError, OSError, ValueError, RecursionError):
        pass
    return files


def _same_file_key(path: Path) -> object:
    """A key equal for two paths naming one file (resolved; inode where the file exists)."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path)  # not Path.resolve: it raises RuntimeError on a symlink loop


class UsageError(InputError):
    """A command line that cannot be carried out as given (exit code 2)."""


def _worst(codes: set[int]) -> int:
    """The code a batch exits with: the most severe of its failures."""
    for code in SEVERITY:
        if code in codes:
            return code
    return max(codes)


def _write_stdout(text: str) -> None:
    """Print a result; a closed standard output is an output error (exit 4), not a crash."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OutputError:
        raise
    except BrokenPipeError:
        _silence_stdout()
        raise OutputError("standard output: closed before the result was written (broken pipe)") from None
    except OSError as exc:
        raise OutputError(f"standard output: cannot be written ({exc.strerror or exc})") from None


def _flush_stdout() -> None:
    """Write out what is left in stdout's buffer: a result that cannot be written is an output error (exit 4,
    with its line), not a silent loss at exit."""
    if sys.stdout is not None:
        sys.stdout.flush()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _run_batch(args: argparse.Namespace, finder: Callable, options: dict) -> int:
    """Run `finder` on every image; keep going past failures, report them all, return the worst code."""
    from .holesize import with_hole_diameter
    from .io import read_image
    from .metadata import pixel_size_for
    from .models import load_models
    from .outputs import write_set
    from .results import format_result, select, summary_line, with_pixel_size

    outputs = _output_paths(args)
    overlays = _overlay_paths(args)
    _check_destinations(args, outputs, overlays)
    if args.nav and len(args.images) > 1:
        raise UsageError("--nav takes one image (one map) per run; pass the copy as --nav of the next run")
    follow = getattr(args, "follow_symlinks", False)
    models = None
    calibration = _read_calibration(args)
    if options.pop("_use_models", True):
        try:
            models = load_models(args.models, provider=args.provider, threads=args.threads)
        except PtolemyError:
            raise
        except MemoryError:
            # onnxruntime's sessions reserve over 2 GB of address space: under `ulimit -v 2000000` the set was
            # "unusable (MemoryError: )", blaming a sound set
            raise ModelError(f"{args.models or 'the shipped model set'}: not enough memory to load the models "
                             "(is this process's memory limited? ulimit -v)") from None
        except Exception as exc:  # noqa: BLE001 -- whatever a malformed set makes the loader trip on
            raise ModelError(f"{args.models or 'the shipped model set'}: unusable model set "
                             f"({type(exc).__name__}: {exc})") from None
        _check_calibration(args, calibration, models)
    elif calibration is not None:
        raise UsageError(f"--calibration {args.calibration}: there are no scores to map (--no-score)")
    failures: list[tuple[str, int, str]] = []
    for image_path, out, overlay in zip(args.images, outputs, overlays):
        if _SIGNALLED:
            break  # an interrupt turned into an ordinary error by a library: stop, main() reports it
        try:
            start = time.perf_counter()
            image = read_image(image_path, section=args.section, max_pixels=getattr(args, "max_pixels", None),
                               permissive=getattr(args, "permissive", False))
            result = finder(image, models=models if models is not None else False, **options)
            result = with_hole_diameter(result, image.data)
            pixel = pixel_size_for(image_path, image, args.pixel_size)
            found = len(result.targets)
            if calibration is not None:
                from .calibration import apply_calibration

                result = apply_calibration(result, calibration, calibration.score)
            result = select(with_pixel_size(result, pixel.angstrom, pixel.source), args.top, args.min_score)
            # Everything is rendered before anything is written, and the files are committed as one set:
            # a failure leaves neither a half-set of files nor a temporary file.
            text = format_result(result, fmt=args.format, compat=args.compat == "ptolemy", pretty=args.pretty)
            files: list[tuple[Path, bytes | str]] = []
            if overlay is not None:
                from .outputs import overlay_format
                from .overlay import render_overlay

                files.append((overlay, _encode_image(render_overlay(image.data, result), overlay_format(overlay))))
            if out is not None:
                files.append((out, text))
            if args.nav:
                from .navigator import targets_nav_text

                nav = targets_nav_text(args.nav, result, args.map_label, args.nav_out, image_path)
                files.append((nav[0], nav[1].encode("latin-1")))
            if files:
                write_set(files, follow_symlinks=follow)
            if out is None:
                _write_stdout(text)
            if args.verbose:
                provider = models.provider if models is not None else "none"
                print(summary_line(image_path, result, time.perf_counter() - start, provider, found),
                      file=sys.stderr)
            elif result.reason:
                print(f"{image_path}: no {result.kind}: {result.reason}", file=sys.stderr)
        except PtolemyError as exc:
            message = str(exc) if isinstance(exc, InputError) or image_path in str(exc) else f"{image_path}: {exc}"
            failures.append((image_path, exc.exit_code, message))
            if exc.exit_code == EXIT_MODEL or "standard output" in str(exc):
                break  # shared by every image: later ones would fail the same way
        except MemoryError:
            failures.append((image_path, EXIT_INPUT, f"{image_path}: not enough memory for this image"))
        except Exception as exc:  # noqa: BLE001 -- an internal error on one file must not stop the batch
            if args.debug:
                traceback.print_exc()
            failures.append((image_path, EXIT_INTERNAL, f"{image_path}: {_internal_message(exc, args.debug)}"))
    if failures:
        if len(args.images) > 1:
            print(f"ptolemy-rt: {len(failures)} of {len(args.images)} image(s) failed:", file=sys.stderr)
        for _, _, message in failures:
            print(one_line(f"error: {message}"), file=sys.stderr)
        return _worst({code for _, code, _ in failures})
    return EXIT_OK


def _read_calibration(args: argparse.Namespace):
    """The --calibration file, read and checked against the command (exit 2 when it does not fit)."""
    if not getattr(args, "calibration", None):
        return None
    from .calibration import read_calibration

    cal = read_calibration(args.calibration)
    kind = "squares" if args.func is _cmd_squares else "holes"
    if cal.kind != kind:
        raise UsageError(f"--calibration {args.calibration}: fitted for {cal.kind}, not {kind}")
    return cal


def _check_calibration(args: argparse.Namespace, cal, models) -> None:
    """Refuse a calibration fitted for another model set or score; warn once when --compat ptolemy runs the
    shipped set without one (its scores are on the shipped models' scale, not the original's)."""
    if cal is not None:
        from .options import HoleOptions

        cal.check_models(models.ids, f"--calibration {args.calibration}")
        if cal.kind == "holes":
            from .holes import default_score

            ptolemy = args.compat == "ptolemy" or getattr(args, "original", False)
            score = args.score or (HoleOptions.ptolemy().score if ptolemy else None) or default_score(models)
            if score != cal.score:
                raise UsageError(f"--calibration {args.calibration}: maps the '{cal.score}' hole score, this run "
                                 f"ranks by '{score}' (--score {cal.score})")
        return
    from .models import default_models_dir

    if args.compat == "ptolemy" and models.directory.resolve() == default_models_dir().resolve():
        print("warning: --compat ptolemy with the shipped models: scores are on the shipped models' scale, not "
              "the original Ptolemy's; fit a map with `ptolemy-rt calibrate` and pass --calibration CAL.json",
              file=sys.stderr)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibrate_images
    from .models import load_models
    from .outputs import atomic_write

    inputs = _input_files(args)
    key = _same_file_key(Path(args.output))
    if key in inputs:
        raise UsageError(f"-o {args.output}: would overwrite {inputs[key]}")
    models = load_models(args.models, provider=args.provider)
    fitted = calibrate_images(args.kind, args.images, args.against, models, tolerance=args.tolerance,
                              score=args.score, edge_tolerance=args.edge_tolerance, section=args.section,
                              permissive=args.permissive)
    atomic_write(args.output, json.dumps(fitted.calibration.to_dict(), indent=1, allow_nan=False) + "\n")
    for image, found, listed, paired in fitted.per_image:
        print(f"{image}: {paired} paired of {found} ours, {listed} original's", file=sys.stderr)
    before, after = fitted.mean_abs_error()
    # over the pairs the fit used; a mean past the float range (scores near 1e308) is no number to print
    shown = [f"{v:.3f}" if math.isfinite(v) else "not finite" for v in (before, after)]
    left_out = (f"; {fitted.left_out} pair(s) left out: a score that is not a finite number" if fitted.left_out
                else "")
    print(f"{args.output}: {fitted.calibration.pairs} pairs, {len(fitted.calibration.ours)} knots; mean |ours - "
          f"original| {shown[0]} before, {shown[1]} after{left_out}", file=sys.stderr)
    return EXIT_OK


# Options naming files or folders (argparse dests), checked for names the system cannot hold. (Each IMAGE of
# squares/holes fails alone, as an unreadable file, and the others still run.)
_PATH_OPTIONS = {"paths": "PATH", "output": "-o", "overlay": "--overlay", "nav": "--nav",
                 "nav_out": "--nav-out", "models": "--models", "calibration": "--calibration",
                 "against": "--against", "validate": "--validate"}


def _check_path_lengths(args: argparse.Namespace) -> None:
    """UsageError (exit 2) for a path with a name longer than its file system takes (outputs.name_limits): pathlib's
    is_dir() and exists() raise OSError (ENAMETOOLONG) on one, an internal error (exit 70). (An empty one is refused
    by argparse: _nonempty.)"""
    from .outputs import existing_folder, name_limits, unnormalised

    limits: dict[str, tuple[int, int]] = {}  # per folder: a batch's thousands of images ask once
    for dest, option in _PATH_OPTIONS.items():
        value = getattr(args, dest, None)
        for text in value if isinstance(value, list) else [value] if isinstance(value, str) else []:
            raw = os.fsencode(text)
            folder = existing_folder(text)
            if folder not in limits:
                limits[folder] = name_limits(folder)
            name_max, path_max = limits[folder]
            # the names below the nearest existing folder: those above it exist, so their file systems took them
            tail = os.fsencode(unnormalised(text))[len(os.fsencode(folder)):]
            if len(raw) > path_max or any(len(part) > name_max for part in tail.split(os.fsencode(os.sep))):
                raise UsageError(f"{option} {text[:60]}...: the name is longer than file systems take "
                                 f"({name_max} bytes a name, {path_max} a path)")


def _internal_message(exc: BaseException, debug: bool) -> str:
    """One line for a bug: what failed, and how to report it."""
    text = " ".join(str(exc).split())[:300]
    hint = "please report it to the ptolemy-rt developers" + ("" if debug else " with the output of --debug")
    return f"internal error (a bug in ptolemy-rt): {type(exc).__name__}: {text}; {hint}"


def _encode_image(picture, ext: str) -> bytes:
    """Encode an overlay picture as PNG, JPEG or TIFF (`ext` is '.png', '.jpg' or '.tif')."""
    import cv2

    ok, buf = cv2.imencode(ext, picture)
    if not ok:
        raise OutputError(f"could not encode the overlay as {ext[1:].upper()}")
    return buf.tobytes()


def _cmd_squares(args: argparse.Namespace) -> int:
    from .options import SquareOptions
    from .squares import find_squares

    # Explicit --window / --min-area win over the mesh's values (and over the original's with --compat).
    given = {k: v for k, v in (("window", args.window), ("min_area", args.min_area)) if v is not None}
    options = SquareOptions.ptolemy(**given) if args.compat == "ptolemy" else SquareOptions(**given)
    return _run_batch(args, find_squares, {"options": options, "_use_models": not args.no_score})


def _cmd_holes(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .holes import find_holes
    from .options import HoleOptions

    if args.original:
        # Kept as it was (the original's behaviour in our JSON) so that existing pipelines see no change.
        print("warning: --original is deprecated; use --compat ptolemy (the original's behaviour and its JSON)",
              file=sys.stderr)
    ptolemy = args.original or args.compat == "ptolemy"
    options = HoleOptions.ptolemy() if ptolemy else HoleOptions(refine=not args.no_refine)
    # score None: the model set's choice (holes.default_score)
    options = replace(options, score=args.score or options.score, edge_tolerance=args.edge_tolerance,
                      threshold=args.threshold, keep_off_film=options.keep_off_film or args.keep_off_film)
    return _run_batch(args, find_holes, {"options": options})


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.output), models=args.models, provider=args.provider, threads=args.threads,
                    seed=args.seed, verbose=args.verbose)


def _cmd_leginon_script(args: argparse.Namespace) -> int:
    print(leginon_script(args.finder, models=args.models, provider=args.provider, extra=args.extra,
                         calibration=args.calibration), end="")
    return EXIT_OK


def leginon_script(finder: str, models: str | None = None, provider: str = "auto", extra: str = "",
                   calibration: str | None = None) -> str:
    """The Smart-Leginon script (see leginon.leginon_script: options and models are checked first)."""
    from .leginon import leginon_script as write

    return write(finder, models=models, provider=provider, extra=extra, calibration=calibration)


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import available_providers, load_models

    if args.validate is not None:
        from .manifest import validate_model_set

        problems = validate_model_set(args.validate)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            print(f"ptolemy-rt: {args.validate}: {len(problems)} problem(s)", file=sys.stderr)
            return EXIT_MODEL
        print(f"{args.validate}: model set OK")
        return EXIT_OK
    models = load_models(args.models, provider=args.provider)
    for task in ("square_cnn", "hole_unet", "hole_cnn"):
        if models.has(task):
            models.session(task)
    info = {
        "directory": str(models.directory),
        "ids": models.ids,
        "licence": models.manifest.licence,
        "available_providers": available_providers(),
        "running_on": models.provider,
        "threads": models.threads,
    }
    print(json.dumps(info, indent=1, allow_nan=False))
    return EXIT_OK


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised as an exception so that every `finally` (temporary files) runs on the way out."""


# What stops a run: Ctrl-C, a scheduler's kill, and the hangup of the terminal or ssh session it runs in (SIGHUP
# killed the process where it stood: no summary, a temporary file left). A SIGHUP ignored when we start (nohup)
# stays ignored.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((HANGUP,) if HANGUP is not None else ())


# Signals received during this run: a library may turn the KeyboardInterrupt they raise into its own error
# (an import interrupted half-way reads as "not installed"), so main() checks this list, not the exception.
_SIGNALLED: list[int] = []


def _on_sigterm(signum, frame) -> None:
    _SIGNALLED.append(signum)
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt()


def _interrupted_code() -> int | None:
    """130 when SIGINT, SIGTERM or SIGHUP arrived during this run, whatever exception it turned into."""
    if not _SIGNALLED:
        return None
    return EXIT_TERMINATED if signal.SIGTERM in _SIGNALLED else EXIT_INTERRUPTED


def _failed(message: str, code: int, debug: bool) -> int:
    """main()'s report of the exception being handled: its traceback with --debug, then "interrupted" and 130
    when a signal caused it, else `message` (one line) and `code`."""
    if debug:
        traceback.print_exc()
    interrupted = _report_interrupted()
    if interrupted is not None:
        return interrupted
    _print_error(message)
    return code


def _report_interrupted() -> int | None:
    """When a signal turned into an error: say "interrupted", ignore further signals, return 130; else None."""
    code = _interrupted_code()
    if code is not None:
        _ignore_further_signals()
        _print_error("interrupted")
    return code


def _install_signal_handlers(previous: dict | None = None) -> dict:
    """SIGTERM and SIGHUP unwind like Ctrl-C; only possible from the main thread (not when main() runs in a
    thread). Returns the handlers it replaced, which main() puts back when it returns (it may run in-process).

    They are recorded in `previous` (main()'s own dict) before anything is replaced: an interrupt during this
    call then leaves main() what to put back, the unraisable hook included."""
    import threading

    if previous is None:
        previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    previous.update({sig: signal.getsignal(sig) for sig in _STOP_SIGNALS})
    if sys.unraisablehook is not _unraisable:
        _UNRAISABLE_HOOKS.append(sys.unraisablehook)
        sys.unraisablehook = _unraisable
    signal.signal(signal.SIGINT, _on_sigint)  # package import may have set a quick exit
    signal.signal(signal.SIGTERM, _on_sigterm)
    if HANGUP is not None and previous[HANGUP] is not signal.SIG_IGN:  # nohup: the user wants it ignored
        signal.signal(HANGUP, _on_sigterm)
    return previous


def _block_signals() -> bool:
    """Block SIGINT, SIGTERM and SIGHUP (True when it could), whatever signal comes in meanwhile.

    A signal that arrives just before the mask takes hold has its Python handler run as soon as the interpreter
    next checks, here: its Terminated / KeyboardInterrupt escaped main()'s clean-up as a traceback (fuzz
    batch_signals, seed 20000138). The handler has recorded it in _SIGNALLED; the clean-up goes on."""
    if not hasattr(signal, "pthread_sigmask"):
        return False
    while True:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOP_SIGNALS))
            return True
        except KeyboardInterrupt:
            continue  # the mask holds after this pass at the latest: no further handler runs until the unblock


def _unblock_signals(blocked: bool) -> None:
    if blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOP_SIGNALS))


def _restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        if handler is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)
    if previous and sys.unraisablehook is _unraisable and _UNRAISABLE_HOOKS:
        sys.unraisablehook = _UNRAISABLE_HOOKS.pop()


# sys.unraisablehook as it was before main() set _unraisable (main() may run in-process, more than once).
_UNRAISABLE_HOOKS: list = []


def _unraisable(unraisable) -> None:
    """An interrupt whose handler ran inside a finalizer (a weakref callback, a __del__) cannot be raised there:
    Python printed "Exception ignored in ..." with its traceback and dropped it, and the run went on (fuzz
    batch_races 80000032, a hangup during the clean-up of an import lock). It is delivered again from a thread,
    once the finalizer has returned (delivered from here, its handler would run here, in the hook)."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _SIGNALLED:
        import threading

        threading.Thread(target=_deliver_again, args=(_SIGNALLED[-1],), daemon=True).start()
        return
    (_UNRAISABLE_HOOKS[-1] if _UNRAISABLE_HOOKS else sys.__unraisablehook__)(unraisable)


def _deliver_again(signum: int) -> None:
    import threading

    # Not before the hook has returned: sent while the main thread still starts this thread (a loaded machine:
    # Thread.start() waits for it to run), the handler ran inside the hook and Python printed "Exception ignored
    # in sys.unraisablehook" (a CI flake of test_a_signal_whose_handler_runs_in_a_finalizer_still_interrupts).
    time.sleep(0.01)
    while _in_unraisable_hook(threading.main_thread().ident):
        time.sleep(0.005)
    with _REDELIVERY:
        if sys.unraisablehook is not _unraisable or _REDELIVERY.finishing:  # main() has reported it already
            return
        # A signal sent to the main thread, not _thread.interrupt_main (which runs the handler whatever the mask):
        # blocked during main()'s clean-up, it waits there, and its KeyboardInterrupt no longer skipped putting
        # the caller's handlers and hook back (review of fuzz12: "interrupted" twice, the hook left replaced).
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(threading.main_thread().ident, signum)
            _REDELIVERY.sent.append(signum)
        else:
            import _thread

            _thread.interrupt_main(signum)


def _in_unraisable_hook(ident: int | None) -> bool:
    """Whether that thread runs _unraisable now (its stack holds the hook's frame; False where the interpreter
    cannot tell, which the hook's own brevity then covers)."""
    frame = sys._current_frames().get(ident) if hasattr(sys, "_current_frames") else None
    while frame is not None:
        if frame.f_code is _unraisable.__code__:
            return True
        frame = frame.f_back
    return False


class _Redelivery:
    """The lock between _deliver_again and main()'s clean-up: once main() finishes, nothing is sent again, and
    what was sent but waits blocked is taken back (main() has reported the interrupt it stands for)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.finishing = False
        self.sent: list[int] = []

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def start(self) -> None:
        self.finishing = False
        self.sent.clear()

    def finish(self, blocked: bool) -> None:
        """Called with the signals blocked: stop sending, and take back a signal sent that is still pending."""
        with self:
            self.finishing = True
            sent, self.sent = set(self.sent), []
        if blocked and sent and hasattr(signal, "sigpending"):
            for signum in sent & signal.sigpending():
                signal.sigwait({signum})


_REDELIVERY = _Redelivery()


def _ignore_further_signals() -> None:
    """A second Ctrl-C while we clean up must not end in a traceback."""
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


class _SafeStderr:
    """sys.stderr whose write failures (a full disk under a log file, a closed pipe) are dropped: a message that
    cannot be shown must not turn the command's exit code into 70 (an OSError out of a print). No stream at all
    (stderr closed: Python's sys.stderr is None) drops every message, where print(file=None) wrote the error
    lines to stdout."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text) if self._stream is not None else len(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            if self._stream is not None:
                self._stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _CheckedStdout:
    """sys.stdout whose write failures (a full disk, a closed pipe, an I/O error) are the contract's output error
    (OutputError: exit 4, one line), whatever printed: doctor, models, leginon-script and demo print with
    print(), whose bare OSError was an internal error (exit 70)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._error: str | None = None  # the first failure, raised again by flush (argparse drops its own)

    def _failed(self, exc: OSError | None) -> OutputError:
        if self._error is None:
            if exc is None:
                self._error = "standard output: closed before the result was written (not open)"
            elif isinstance(exc, BrokenPipeError):
                _silence_stdout()
                self._error = "standard output: closed before the result was written (broken pipe)"
            else:
                self._error = f"standard output: cannot be written ({exc.strerror or exc})"
        return OutputError(self._error)

    def write(self, text: str) -> int:
        if self._stream is None:  # started with descriptor 1 closed: Python's sys.stdout is None
            raise self._failed(None)
        try:
            return self._stream.write(text)
        except OutputError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        if self._error is not None:
            raise OutputError(self._error)
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except OutputError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, map errors to exit codes: 0 ok, 2 input/option, 3 model set, 4 output,
    130 interrupted (SIGINT, SIGTERM or SIGHUP), 70 internal error (one line; a traceback only with --debug).

    Without argv (the process's own command line: the Leginon script calls main() so), closed descriptors 0-2
    are first opened on /dev/null, as the ptolemy-rt script does (run)."""
    if argv is None:
        _open_standard_descriptors()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # A signal whose handler ran while an error was being reported (in an `except` branch, where the
        # other branches do not catch it): the clean-up has run; the run was interrupted.
        if sys.stderr is not None:
            _print_error("interrupted")
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    from .outputs import remove_temporaries

    debug = False
    previous: dict = {}
    _SIGNALLED.clear()
    _REDELIVERY.start()
    stderr = sys.stderr
    if not isinstance(stderr, _SafeStderr):
        sys.stderr = _SafeStderr(stderr)
    stdout = sys.stdout
    if not isinstance(stdout, _CheckedStdout):
        sys.stdout = _CheckedStdout(stdout)
    try:
        _install_signal_handlers(previous)
        from .argv import join_negative_numbers

        parser = build_parser()
        args = parser.parse_args(join_negative_numbers(sys.argv[1:] if argv is None else argv))
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_INPUT
        debug = getattr(args, "debug", False)
        _check_path_lengths(args)
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")

        if args.command != "batch":  # `batch`'s own process loads none beside its workers (60-100 ms of CPU)
            # numpy loaded from Python, not first by a C extension (onnxruntime, cv2): their import of it,
            # interrupted by Ctrl-C, prints a traceback
            import numpy  # noqa: F401
        from .warning_lines import command_line_warnings

        command_line_warnings(debug)
        code = int(args.func(args))
        if code == EXIT_OK:  # else its failure, stdout's included, has had its line
            _flush_stdout()
        interrupted = _interrupted_code()
        if interrupted is not None:
            _print_error("interrupted")
            return interrupted
        return code
    except PtolemyError as exc:
        return _failed(f"error: {exc}", exc.exit_code, debug)
    except Terminated:
        _ignore_further_signals()
        _print_error("terminated")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _ignore_further_signals()
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        _print_error("error: standard output: closed before the result was written (broken pipe)")
        return EXIT_OUTPUT
    except MemoryError:
        _print_error("error: not enough memory (lower --max-pixels or use a smaller image)")
        return EXIT_INPUT
    except SystemExit as exc:
        if exc.code in (0, None):  # --help, --version: their text must reach stdout too
            try:
                _flush_stdout()
            except OutputError as err:
                _print_error(f"error: {err}")
                return EXIT_OUTPUT
        raise
    except Exception as exc:  # noqa: BLE001 -- the contract: any other exception is a bug, exit 70
        return _failed(f"error: {_internal_message(exc, debug)}", EXIT_INTERNAL, debug)
    finally:
        # A signal arriving now waits until the handlers main() replaced are back (it then ends the process
        # quietly, or reaches the caller), instead of interrupting the clean-up.
        while True:  # a handler may also run before _block_signals is entered
            try:
                blocked = _block_signals()
                break
            except KeyboardInterrupt:
                continue
        try:
            _REDELIVERY.finish(blocked)
            remove_temporaries()
        finally:
            try:
                _restore_signal_handlers(previous)
            finally:
                try:
                    _unblock_signals(blocked)
                finally:
                    if isinstance(sys.stderr, _SafeStderr) and sys.stderr is not stderr:
                        sys.stderr = stderr
                    if isinstance(sys.stdout, _CheckedStdout) and sys.stdout is not stdout:
                        sys.stdout = stdout


def run() -> None:
    """The `ptolemy-rt` script: main(), then exit at once with its code.

    os._exit skips the interpreter's finalisation, during which Python has already put the default signal
    handlers back (a Ctrl-C there would kill the process by signal) and onnxruntime tears down slowly."""
    _one_blas_thread()
    code = main()  # which opens closed standard descriptors on /dev/null first
    from .warning_lines import exit_at_once

    exit_at_once(code, EXIT_OUTPUT)


def _open_standard_descriptors() -> None:
    """Open descriptors 0, 1 and 2 on /dev/null where the caller closed them (`2>&-`): else the next file opened
    takes the number, and what a library writes to "stderr" or "stdout" (OpenCV, onnxruntime) lands in it.
    Python's own sys.stdout / sys.stderr stay None: a result for stdout is then an output error (exit 4)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if null != fd:  # the lowest free number is taken: only when a lower one was closed since
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # as a standard descriptor is: worker processes get it too


def _one_blas_thread() -> None:
    """Start numpy's OpenBLAS with one thread in this process and its children, unless the user chose a count.

    The command line's products are of 2x2 and Nx2 matrices, which OpenBLAS computes on one thread anyway (the
    same bits), but on loading it starts a thread per core that spins on the other core while the pipelines'
    own threads want it: a `ptolemy-rt holes` process took 0.29 s and 0.47 CPU s with it, 0.26 s and 0.29 CPU
    s without. Only before numpy loads does the setting count (batch workers set their own: batch.limit_threads)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _print_error(line: str) -> None:
    """One line on stderr, even when stderr itself is gone."""
    try:
        print(one_line(line), file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
