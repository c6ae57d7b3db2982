"""The `ptolemy-rt` command line: squares (lowmag), holes (medmag), demo, leginon-script, models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import InputError, ModelError, PtolemyError
from .results import FORMATS

__all__ = ["main", "build_parser"]

log = logging.getLogger("ptolemy_rt")

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_MODEL = 0, 1, 2, 3
SUFFIX = {"json": ".json", "txt": ".txt", "csv": ".csv"}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="MRC, TIFF, PNG or JPEG files")
    p.add_argument("-f", "--format", choices=FORMATS, default="json", help="output format: json (one line), csv "
                   "or txt (tab-separated), each with the same fields (default json)")
    p.add_argument("-o", "--output", metavar="OUT", help="output file, or a directory when several images are given "
                   "(default: standard output)")
    p.add_argument("--compat", choices=["ptolemy"], help="behave as the original Ptolemy CLI: its JSON (one line, "
                   "its field names, order and int() centres) and, for holes, its lattice search, crop windows, "
                   "U-Net padding and CNN scores (HoleOptions.ptolemy()); CSV/TXT: the original's fields "
                   "(default: our own)")
    p.add_argument("--pretty", action="store_true", help="indent JSON over several lines (default: one line; "
                   "never with --compat)")
    p.add_argument("--top", type=_non_negative_int, metavar="N", help="keep the N best-scoring targets "
                   "(default: all)")
    p.add_argument("--min-score", type=float, metavar="S", help="keep targets whose score is >= S; unscored ones "
                   "are dropped (default: all)")
    p.add_argument("--pixel-size", type=_positive_float, metavar="A",
                   help="pixel size in Å per pixel of the input image "
                   "(default: from the EPU .xml or SerialEM .mdoc beside the image, else the MRC header; "
                   "0 and 1 Å there mean unknown)")
    p.add_argument("--nav", metavar="NAV", help="SerialEM navigator: write a copy with one point per target, "
                   "drawn on the map of this image (see --map-label, --nav-out)")
    p.add_argument("--map-label", metavar="L", help="label of the navigator map the image shows (default: the "
                   "map whose MapFile is the image)")
    p.add_argument("--nav-out", metavar="NAV", help="where the navigator copy goes (default: NAME_ptolemy.nav "
                   "beside --nav)")
    p.add_argument("--overlay", metavar="PNG", help="draw the result on the image (a file, or a directory for "
                   "several images) (default: none)")
    p.add_argument("--models", metavar="DIR", help="model set directory (default: the set shipped with ptolemy-rt)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                   "(default auto: CUDA when available, else CPU)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for inference (default: physical cores)")
    p.add_argument("--section", type=int, metavar="N", help="section of an MRC/TIFF stack (default 0, with a warning)")
    p.add_argument("-v", "--verbose", action="store_true", help="one summary line per image on stderr: targets, "
                   "time per stage (ms), provider, pixel size")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ptolemy-rt` command."""
    parser = _Parser(prog="ptolemy-rt", description="Targeting for cryo-EM data collection: grid squares at low "
                     "magnification, holes at medium magnification (the Ptolemy method).")
    parser.add_argument("--version", action="version", version=f"ptolemy-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sq = sub.add_parser("squares", aliases=["lowmag"], help="find and score grid squares in low-mag atlases")
    _common(sq)
    sq.add_argument("--min-area", type=float, default=100.0, metavar="PX2",
                    help="drop squares whose hull is smaller (px², default 100)")
    sq.add_argument("--window", type=int, default=6, metavar="PX",
                    help="pixels within this window join one square (px, "
                    "default 6)")
    sq.add_argument("--no-score", action="store_true", help="geometry only: skip the square CNN")
    sq.set_defaults(func=_cmd_squares)

    ho = sub.add_parser("holes", aliases=["medmag"], help="find and score holes in medium-mag images")
    _common(ho)
    ho.add_argument("--score", choices=["unet", "cnn"], help="which score ranks the holes (default: cnn with "
                    "--compat ptolemy, else the model set's choice: cnn for the shipped set, unet "
                    "for the published weights)")
    ho.add_argument("--edge-tolerance", type=float, default=-10.0, metavar="PX",
                    help="how far outside the image a hole centre "
                    "may lie, px (default -10: at least 10 px inside)")
    ho.add_argument("--threshold", type=float, metavar="P",
                    help="U-Net probability threshold, 0-1 (default: the model's)")
    ho.add_argument("--no-refine", action="store_true", help="keep the anchor-pair lattice (as the original does)")
    ho.add_argument("--keep-off-film", action="store_true", help="also lattice points off the holey film (grid bars, "
                    "outside the square, broken film); each hole's on_film says which")
    ho.add_argument("--original", action="store_true", help="deprecated: the original's behaviour in our JSON "
                    "(use --compat ptolemy)")
    ho.set_defaults(func=_cmd_holes)

    demo = sub.add_parser("demo", help="make a synthetic atlas and med-mag image, run both pipelines, write results")
    demo.add_argument("-o", "--output", default="ptolemy-demo", help="output directory (default ./ptolemy-demo)")
    demo.add_argument("--models", metavar="DIR", help="model set directory (default: the shipped set)")
    demo.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                      "(default auto)")
    demo.add_argument("--threads", type=int, metavar="N", help="CPU threads for inference (default: physical cores)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic images (default 0)")
    demo.add_argument("-v", "--verbose", action="store_true", help="timings on stderr")
    demo.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    demo.set_defaults(func=_cmd_demo)

    ls = sub.add_parser("leginon-script", help="print a script for Smart-Leginon's external finder "
                        "(source SCRIPT JOB INPUT.mrc OUTDIR)")
    ls.add_argument("finder", choices=["squares", "holes"], help="which finder the script runs")
    ls.add_argument("--models", metavar="DIR", help="model set to put in the script (default: the shipped set)")
    ls.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                    "in the script (default auto)")
    ls.add_argument("--extra", default="", metavar="OPTIONS",
                    help="extra options for the finder, quoted as one string, checked "
                    "with the finder's parser (default: none)")
    ls.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    ls.set_defaults(func=_cmd_leginon_script)

    mo = sub.add_parser("models", help="show and verify a model set and the providers onnxruntime offers")
    mo.add_argument("--models", metavar="DIR", help="model set directory (default: the shipped set)")
    mo.add_argument("--validate", metavar="DIR", help="check the model set in DIR without running an image: list "
                    "every problem (manifest fields, files, hashes, graphs); exit 0 only if there is none")
    mo.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider "
                    "(default auto)")
    mo.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    mo.set_defaults(func=_cmd_models)

    from . import batch

    batch.add_arguments(sub.add_parser("batch", help="whole sessions (EPU, Leginon, SerialEM) or many files: "
                                       "worker processes or Dask, progress, --resume, summary and HTML report"))

    dr = sub.add_parser("doctor", help="check the installation: providers that really run, CUDA/cuDNN libraries, "
                        "Numba cache, versions")
    dr.add_argument("--warm", action="store_true", help="also run both finders once on small synthetic images, so "
                    "that kernels are compiled and cached now rather than on the first real image")
    dr.add_argument("--models", metavar="DIR", help="model set to try the providers with (default: the shipped set)")
    dr.add_argument("--json", action="store_true", help="print the report as JSON")
    dr.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    dr.set_defaults(func=lambda args: __import__("ptolemy_rt.doctor", fromlist=["run_doctor"]).run_doctor(args))
    return parser


def _output_paths(args: argparse.Namespace) -> list[Path | None]:
    """Where each image's result goes: stdout (None), the -o file, or a file in the -o directory."""
    n = len(args.images)
    if args.output is None:
        return [None] * n
    out = Path(args.output)
    if n == 1 and not (out.is_dir() or args.output.endswith(("/", os.sep))):
        return [out]
    return [out / (Path(img).stem + SUFFIX[args.format]) for img in args.images]


def _overlay_paths(args: argparse.Namespace) -> list[Path | None]:
    n = len(args.images)
    if not args.overlay:
        return [None] * n
    out = Path(args.overlay)
    if n == 1 and not (out.is_dir() or args.overlay.endswith(("/", os.sep))):
        return [out]
    return [out / (Path(img).stem + ".png") for img in args.images]


def _check_destinations(args: argparse.Namespace, outputs: list, overlays: list) -> None:
    """Refuse, before any work, destinations that would collide or cannot be directories."""
    several = len(args.images) > 1
    for option, value, paths in (("-o", args.output, outputs), ("--overlay", args.overlay, overlays)):
        if value is None:
            continue
        if several and Path(value).exists() and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: several images need a directory, and this is a file")
        seen: dict[Path, str] = {}
        for image, path in zip(args.images, paths):
            if path in seen:
                raise UsageError(f"{option}: {seen[path]} and {image} would both write {path}; "
                                 "run them separately or rename one")
            seen[path] = image


class UsageError(InputError):
    """A command line that cannot be carried out as given (exit code 2)."""


def _run_batch(args: argparse.Namespace, finder: Callable, options: dict) -> int:
    """Run `finder` on every image; keep going past failures, report them all, return the worst code."""
    from .holesize import with_hole_diameter
    from .io import atomic_write, read_image
    from .metadata import pixel_size_for
    from .models import load_models
    from .navigator import targets_nav_text, write_nav_text
    from .overlay import render_overlay
    from .results import format_result, select, summary_line, with_pixel_size

    outputs = _output_paths(args)
    overlays = _overlay_paths(args)
    _check_destinations(args, outputs, overlays)
    if args.nav and len(args.images) > 1:
        raise UsageError("--nav takes one image (one map) per run; pass the copy as --nav of the next run")
    models = None
    if options.pop("_use_models", True):
        models = load_models(args.models, provider=args.provider, threads=args.threads)
    failures: list[tuple[str, int, str]] = []
    for image_path, out, overlay in zip(args.images, outputs, overlays):
        try:
            start = time.perf_counter()
            image = read_image(image_path, section=args.section)
            result = finder(image, models=models if models is not None else False, **options)
            result = with_hole_diameter(result, image.data)
            pixel = pixel_size_for(image_path, image, args.pixel_size)
            found = len(result.targets)
            result = select(with_pixel_size(result, pixel.angstrom, pixel.source), args.top, args.min_score)
            # Everything is rendered before anything is written, so a failure leaves no half-set of files.
            text = format_result(result, fmt=args.format, compat=args.compat == "ptolemy", pretty=args.pretty)
            png = _encode_png(render_overlay(image.data, result)) if overlay is not None else None
            nav = targets_nav_text(args.nav, result, args.map_label, args.nav_out, image_path) if args.nav else None
            try:
                if png is not None:
                    atomic_write(overlay, png)
                if out is not None:
                    atomic_write(out, text)
                if nav is not None:
                    write_nav_text(nav[0], nav[1])
            except OSError as exc:
                raise UsageError(f"{image_path}: cannot write the result ({exc})") from None
            if out is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            if args.verbose:
                provider = models.provider if models is not None else "none"
                print(summary_line(image_path, result, time.perf_counter() - start, provider, found),
                      file=sys.stderr)
            elif result.reason:
                print(f"{image_path}: no {result.kind}: {result.reason}", file=sys.stderr)
        except PtolemyError as exc:
            failures.append((image_path, exc.exit_code, str(exc)))
            if exc.exit_code == EXIT_MODEL:
                break  # the model set is shared by every image: later ones would fail the same way
        except Exception as exc:  # an internal error on one file must not stop the batch
            if args.debug:
                traceback.print_exc()
            failures.append((image_path, EXIT_INTERNAL, f"{image_path}: internal error: {type(exc).__name__}: {exc}"))
    if failures:
        if len(args.images) > 1:
            print(f"ptolemy-rt: {len(failures)} of {len(args.images)} image(s) failed:", file=sys.stderr)
        for _, _, message in failures:
            print(f"error: {message}", file=sys.stderr)
        # Exit with the worst code: internal (1) is worse than model (3), which is worse than input (2).
        codes = {code for _, code, _ in failures}
        return EXIT_INTERNAL if EXIT_INTERNAL in codes else (EXIT_MODEL if EXIT_MODEL in codes else EXIT_INPUT)
    return EXIT_OK


def _encode_png(picture) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("could not encode the overlay PNG")
    return buf.tobytes()


def _cmd_squares(args: argparse.Namespace) -> int:
    from .squares import find_squares

    options = {"window": args.window, "min_area": args.min_area, "_use_models": not args.no_score}
    return _run_batch(args, find_squares, options)


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
    print(leginon_script(args.finder, models=args.models, provider=args.provider, extra=args.extra), end="")
    return EXIT_OK


def leginon_script(finder: str, models: str | None = None, provider: str = "auto", extra: str = "") -> str:
    """The Smart-Leginon script (see leginon.leginon_script: options and models are checked first)."""
    from .leginon import leginon_script as write

    return write(finder, models=models, provider=provider, extra=extra)


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
    print(json.dumps(info, indent=1))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and map errors to exit codes (0 ok, 1 internal, 2 input/usage, 3 model)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")

    def _warn(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    if not debug:
        warnings.showwarning = _warn
    try:
        return int(args.func(args))
    except InputError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ModelError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            print(f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                  file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
