"""The Smart-Leginon external-finder script: written only after its options and model set are checked.

Leginon runs ``source SCRIPT JOB_BASENAME INPUT.mrc OUTDIR`` (bash, or csh for a ``.csh`` script) in its
own working directory, ignores the exit status, has no timeout, and reads the first line of
``OUTDIR/JOB_BASENAME.json``. A script that fails inside Leginon fails silently, so everything that can be
checked is checked here, when the script is written: the extra options are parsed by the finder's own
parser, and the model set is loaded and its graphs opened on the chosen provider.

The script is one command line that bash and csh read alike: absolute paths, every word single-quoted
(shlex.quote), positional parameters as "$1" "$2" "$3", no redirection (their syntax differs). It runs the
interpreter and the ptolemy_rt that wrote it, isolated from Leginon's PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
from pathlib import Path

from . import __version__
from .errors import InputError

__all__ = ["FORBIDDEN_IN_EXTRA", "leginon_script", "validate_extra", "validate_models"]

# Options the script sets itself: Leginon needs this exact output (one-line JSON at OUTDIR/JOB.json).
FORBIDDEN_IN_EXTRA = {
    "output": "-o/--output",
    "format": "-f/--format",
    "compat": "--compat",
    "pretty": "--pretty",
    "models": "--models (use leginon-script --models)",
    "provider": "--provider (use leginon-script --provider)",
    "calibration": "--calibration (use leginon-script --calibration: it is checked and its path made absolute)",
}
_IMAGE = "INPUT.mrc"


class LeginonOptionError(InputError):
    """An option for the Leginon script that would fail inside Leginon (exit code 2)."""


def validate_extra(finder: str, extra: str):
    """Parse `extra` as the finder's options with the real CLI parser; return the parsed namespace.

    Refuses (LeginonOptionError) what does not parse, image paths, and options the script sets itself.
    """
    from .argv import join_negative_numbers
    from .cli import build_parser

    try:
        tokens = shlex.split(extra)
    except ValueError as exc:
        raise LeginonOptionError(f"--extra {extra!r}: cannot split into words ({exc})") from None
    for token in tokens:
        if any(c in token for c in "\n\r\0"):
            raise LeginonOptionError(f"--extra: option {token!r} holds a line break or NUL")
    parser = build_parser()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            # As the script runs it: the options, then `--` and the image Leginon passes.
            base = parser.parse_args([finder, "--", _IMAGE])
            # as main() reads the script's words: `--min-score -0.5` is the option and its value
            args = parser.parse_args(join_negative_numbers([finder, *tokens, "--", _IMAGE]))
    except SystemExit as exc:
        text = captured.getvalue().strip().splitlines()
        detail = text[-1] if text and exc.code else "it asks for help or the version, not a run"
        raise LeginonOptionError(f"--extra {extra!r} is not valid for '{finder}': {detail}") from None
    if args.images != [_IMAGE]:
        others = [i for i in args.images if i != _IMAGE]
        raise LeginonOptionError(f"--extra {extra!r}: names input files ({' '.join(others)}); Leginon passes the "
                                 "image itself")
    for dest, name in FORBIDDEN_IN_EXTRA.items():
        if getattr(args, dest, None) != getattr(base, dest, None):
            raise LeginonOptionError(f"--extra {extra!r}: {name} is set by the script (Leginon reads one-line "
                                     "JSON at OUTDIR/JOB.json)")
    return args


def validate_models(finder: str, models: str | None, provider: str, args=None, calibration: str | None = None) -> None:
    """Load the model set and open every graph the finder will run (ModelError, exit 3, when one fails); check
    the calibration file against it (CalibrationError, exit 2)."""
    from .errors import ModelError
    from .manifest import TASKS_OF_KIND
    from .models import load_models

    model_set = load_models(models, provider=provider)  # manifest.check_model_directory: exit 3 for no directory
    tasks = list(TASKS_OF_KIND[finder])
    if finder == "squares":
        tasks = [] if args is not None and getattr(args, "no_score", False) else tasks
    elif (getattr(args, "score", None) if args is not None else None) == "unet":
        # The script runs with --compat ptolemy, which ranks holes by the hole CNN unless --score unet.
        tasks.remove("hole_cnn")
    for task in tasks:
        if not model_set.has(task):
            raise ModelError(f"{model_set.directory}: the model set has no '{task}' model, which "
                             f"'{finder}' needs with these options")
        model_set.session(task)
    if calibration is not None:
        from .calibration import read_calibration

        cal = read_calibration(calibration)
        # The script runs with --compat ptolemy: holes are ranked by the hole CNN unless --score says otherwise.
        score = "score" if finder == "squares" else getattr(args, "score", None) or "cnn"
        if cal.kind != finder or cal.score != score:
            raise LeginonOptionError(f"--calibration {calibration}: maps the {cal.kind} '{cal.score}' score, the "
                                     f"script's {finder} finder ranks by '{score}'")
        cal.check_models(model_set.ids, f"--calibration {calibration}")


def leginon_script(finder: str, models: str | None = None, provider: str = "auto", extra: str = "",
                   validate: bool = True, calibration: str | None = None) -> str:
    """A script for Smart-Leginon (bash or csh): `source SCRIPT JOB INPUT OUTDIR` writes OUTDIR/JOB.json (one line).

    With `validate` (the default) the options and the model set are checked first (exit 2 / 3 on failure).
    """
    if finder not in ("squares", "holes"):
        raise LeginonOptionError(f"unknown finder '{finder}' (squares or holes)")
    args = validate_extra(finder, extra) if validate else None
    if validate:
        validate_models(finder, models, provider, args, calibration)
    opts = ["--compat", "ptolemy", "-f", "json", "--provider", provider]
    if models:
        opts += ["--models", str(Path(models).resolve())]
    if calibration:
        opts += ["--calibration", str(Path(calibration).resolve())]  # Leginon runs it in its own directory
    opts += shlex.split(extra)
    # Leginon's environment often sets PYTHONPATH for its own packages, which could shadow this venv's
    # numpy or ptolemy_rt: run isolated (-I ignores PYTHONPATH and user site-packages) and import the
    # ptolemy_rt that wrote the script, as the interpreter is the one that wrote it.
    package_parent = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {json.dumps(package_parent, allow_nan=False)}); "
            "from ptolemy_rt.cli import main; sys.exit(main())")
    words = [sys.executable, "-I", "-c", code, finder, *opts]
    command = " ".join(shlex.quote(w) for w in words)
    return (
        f"# Smart-Leginon external {finder} finder, written by ptolemy-rt {__version__} (bash or csh).\n"
        "# Leginon runs: source THIS_SCRIPT JOB_BASENAME INPUT.mrc OUTDIR, then reads the first line\n"
        "# of OUTDIR/JOB_BASENAME.json. Sourced, so it must not exit the caller's shell.\n"
        f'{command} -o "$3/$1.json" -- "$2"\n'
    )
