"""Import numba with a writable cache directory, so compiled kernels are cached even on read-only installs.

Numba writes its cache beside the source file, or under NUMBA_CACHE_DIR. On a system-wide
(read-only) install with no writable HOME, `cache=True` makes the first decorated function
fail with "no locator available". We choose a writable directory before numba is imported and,
when none exists, compile without a cache (CACHE is False) rather than fail.
Import numba only through this module: ``from ._numba import numba, CACHE`` and decorate with
``@numba.njit(cache=CACHE)``.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

__all__ = ["numba", "cache_dir", "CACHE"]


def _writable(path: Path) -> bool:
    """Whether `path` exists (or can be created) and accepts a new file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def _private(path: Path) -> bool:
    """Create `path` as 0700 and check that only we can write it (numba unpickles what it finds there)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError:
        return False
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return False
    return _writable(path)


def _user_cache_root() -> Path | None:
    """The platform's per-user cache directory, or None when there is no home."""
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA")
        return Path(base) if base else None
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return Path(base)
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if not home or home == "~":
        return None
    return Path(home) / ("Library/Caches" if sys.platform == "darwin" else ".cache")


def _choose_cache_dir() -> str | None:
    """The numba cache directory: the user's setting, else a user cache, else a private temp dir, else None."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return explicit
    root = _user_cache_root()
    if root is not None and _writable(root / "ptolemy-rt" / "numba"):
        return str(root / "ptolemy-rt" / "numba")
    # A shared temp dir: the name is keyed by uid and the folder must be ours alone, or another local user
    # could plant a cache index that numba would unpickle.
    uid = os.getuid() if hasattr(os, "getuid") else (os.environ.get("USERNAME") or "user")
    temp = Path(tempfile.gettempdir()) / f"ptolemy-rt-numba-{uid}"
    if _private(temp):
        return str(temp)
    return None


cache_dir = _choose_cache_dir()
CACHE = cache_dir is not None
if cache_dir is not None:
    os.environ["NUMBA_CACHE_DIR"] = cache_dir

import numba  # noqa: E402  (must follow the environment set-up above)
