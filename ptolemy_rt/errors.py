"""Exceptions raised by ptolemy-rt; the CLI maps each family to an exit code.

The public API (read_image, find_squares, find_holes, load_models) raises only these, plus TypeError for an
argument of the wrong type. Exit codes: 2 bad input or option, 3 bad model set or provider, 4 output cannot be
written; anything else is a bug (exit 70).
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "CorruptFileError",
    "InputError",
    "InternalError",
    "MissingFileError",
    "ModelError",
    "NonFiniteError",
    "OptionError",
    "OutputError",
    "PtolemyError",
    "ShapeError",
    "TooLargeError",
    "TooSmallError",
    "UnsupportedFormatError",
]

# The exit-code contract of the command line (README, "Exit codes").
EXIT_OK, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 2, 3, 4, 70, 130
# The hangup of the terminal or ssh session a run is in, one of the signals that stop it (EXIT_INTERRUPTED);
# None where the platform has none (Windows).
HANGUP = getattr(signal, "SIGHUP", None)


def clean_text(text: str) -> str:
    """`text` as valid Unicode, the same in every locale: the bytes of a file name Python could not decode (kept
    as lone surrogates U+DC80-U+DCFF: every non-ASCII byte under LANG=C, a non-UTF-8 byte anywhere) decoded as
    UTF-8 where they form it, else shown as \\xNN; other lone surrogates as \\uNNNN. Written as it was, such a
    name made UTF-8 output raise UnicodeEncodeError (a batch's exit 70) and JSON hold unpaired surrogates."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from a JSON \ud800, say)
        return "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def one_line(text: str) -> str:
    """`text` with its control and bidirectional-format characters escaped (a newline as \\n, ESC as \\x1b):
    an error stays one line naming the file, whatever the file's name holds (newlines, terminal escapes). Other
    format characters that names legitimately hold (the zero-width joiners of Persian, Indic and emoji
    names, the soft hyphen) are kept."""
    if text.isprintable():
        return text
    text = clean_text(text)
    import unicodedata

    return "".join(c if c == " " or (unicodedata.category(c) not in ("Cc", "Zl", "Zp") and c not in _BIDI)
                   else repr(c)[1:-1] for c in text)


def size_text(n_bytes: float) -> str:
    """A size in a message, in the binary unit that shows its number (1.0 to 1023.9): "5.9 KiB", "1.5 GiB",
    "512 bytes". One unit for every size printed "0.0 GiB" for a budget of kilobytes."""
    if n_bytes < 1024:
        return f"{int(n_bytes)} bytes"
    value = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if round(value, 1) < 1024:  # 1023.96 KiB is shown as 1.0 MiB, not 1024.0 KiB
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} EiB"


# The bidirectional controls (marks, embeddings, overrides, isolates): they reorder what a terminal shows.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class PtolemyError(Exception):
    """Base class of every error ptolemy-rt raises on purpose; its message is one line (one_line)."""

    exit_code = 70

    def __str__(self) -> str:
        return one_line(super().__str__())


class InputError(PtolemyError, ValueError):
    """The input image cannot be used; the message names the file and the problem (exit code 2)."""

    exit_code = 2


class MissingFileError(InputError, FileNotFoundError):
    """The input path does not exist or is not a file."""


class CorruptFileError(InputError):
    """The file exists but cannot be decoded (truncated data block, bad header, not an image)."""


class UnsupportedFormatError(InputError):
    """The file is of a kind or MRC mode we do not read."""


class NonFiniteError(InputError):
    """The image holds NaN or infinite pixels."""


class ShapeError(InputError):
    """The data is not a 2-D image (1-D, empty, or a stack without a usable section)."""


class TooSmallError(InputError):
    """The image is smaller than the pipeline can use."""


class TooLargeError(InputError):
    """The file claims more pixels than the budget (default 2**28, `--max-pixels`) or than memory allows."""


class ModelError(PtolemyError, RuntimeError):
    """A model set is missing, tampered with, or cannot run on the chosen provider (exit code 3)."""

    exit_code = 3


class OutputError(PtolemyError, OSError):
    """A result cannot be written: a special file, a symlink, a directory, no permission, a full disk (exit 4)."""

    exit_code = 4


class OptionError(InputError):
    """An argument of a public function is out of its range or not one of its choices (exit code 2)."""


class InternalError(PtolemyError, RuntimeError):
    """A bug in ptolemy-rt: an exception nobody meant to raise (exit code 70); the original is its __cause__."""

    exit_code = 70


F = TypeVar("F", bound=Callable)


def public_api(fn: F, fallback: type[PtolemyError] = InternalError) -> F:
    """Wrap a public function so that only PtolemyError subclasses (and TypeError) leave it.

    A ValueError means a bad argument (OptionError, exit 2), a MemoryError an image too large for this machine
    (TooLargeError); anything else becomes `fallback` with the original chained as its cause.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PtolemyError, TypeError):
            raise
        except MemoryError as exc:
            raise TooLargeError(f"{fn.__name__}: not enough memory for this image") from exc
        except ValueError as exc:
            if fallback is not InternalError:
                raise fallback(f"{fn.__name__}: {exc}") from exc
            raise OptionError(str(exc)) from exc
        except Exception as exc:
            raise fallback(f"{fn.__name__}: {type(exc).__name__}: {exc}") from exc

    wrapper.__wrapped__ = fn
    return wrapper  # type: ignore[return-value]
