"""Exceptions raised by ptolemy-rt; the CLI maps each family to an exit code."""

from __future__ import annotations

__all__ = [
    "PtolemyError",
    "InputError",
    "MissingFileError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "NonFiniteError",
    "ShapeError",
    "TooSmallError",
    "ModelError",
]


class PtolemyError(Exception):
    """Base class of every error ptolemy-rt raises on purpose."""

    exit_code = 1


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


class ModelError(PtolemyError, RuntimeError):
    """A model set is missing, tampered with, or cannot run on the chosen provider (exit code 3)."""

    exit_code = 3
