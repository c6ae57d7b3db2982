"""How the command line says warnings (cli, and batch's pool workers): one line each, numpy's numeric ones quiet."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import NoReturn, TextIO


def plain_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """warnings.showwarning for the command line: 'warning: MESSAGE', one line on stderr."""
    # Python's own form adds the file, line and source of the code that warned: noise beside a message naming its
    # file. A stderr that cannot be written drops it, as Python's own does.
    with contextlib.suppress(OSError, ValueError):
        print(f"warning: {message}", file=sys.stderr)


def quiet_numerics() -> None:
    """Silence numpy's numeric RuntimeWarnings (overflow, invalid value, empty slice) for the whole process."""
    # Not the user's business: results say what went wrong, and stderr keeps to one line per problem.
    import numpy as np

    np.seterr(all="ignore")
    warnings.filterwarnings("ignore", category=RuntimeWarning, message=r".*(encountered in|empty slice|"
                            r"Degrees of freedom)")


def command_line_warnings(debug: bool = False, numerics: bool = True) -> None:
    """Say warnings as the command line does: numpy's numeric ones quiet, the rest as plain_warning (with `debug`,
    in Python's own form). numerics=False leaves numpy unloaded (a process that runs no numerics: `batch`'s own,
    whose workers quiet theirs, batch.init_worker)."""
    if numerics:
        quiet_numerics()
    if not debug:
        warnings.showwarning = plain_warning


def exit_at_once(code: int, unflushed: int | None = None) -> NoReturn:
    """End the process now: stdout and stderr flushed, logging shut down, then os._exit(code) without the
    interpreter's finalisation (C-level buffers and atexit handlers not yet run are dropped; coverage's
    process_startup save among them). `unflushed`: the code instead of 0 when stdout cannot be flushed."""
    import logging
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # a closed descriptor: Python's stream is None
                stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout and code == 0 and unflushed is not None:
                code = unflushed
    logging.shutdown()
    os._exit(code)
