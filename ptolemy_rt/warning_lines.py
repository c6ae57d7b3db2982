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
    """Silence numpy's numeric RuntimeWarnings (overflow, invalid value, empty slice) for the whole process,
    loading no numpy: a warnings filter, and numpy's own error state where numpy is already loaded."""
    # Not the user's business: results say what went wrong, and stderr keeps to one line per problem. The filter
    # matches every message numpy's error state would hold back ("... encountered in ..."), so a process that loads
    # numpy later (`batch`'s own, whose workers run the images) says the same; np.seterr spares numpy the warning.
    warnings.filterwarnings("ignore", category=RuntimeWarning, message=r".*(encountered in|empty slice|"
                            r"Degrees of freedom)")
    if "numpy" in sys.modules:
        import numpy as np

        np.seterr(all="ignore")


def command_line_warnings(debug: bool = False) -> None:
    """Say warnings as the command line does: numpy's numeric ones quiet, the rest as plain_warning (with `debug`,
    in Python's own form)."""
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
