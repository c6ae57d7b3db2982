"""Import numba with a writable cache directory, so `cache=True` works on read-only installs.

Numba writes its cache beside the source file, or under NUMBA_CACHE_DIR. On a system-wide
(read-only) install with no writable HOME, `cache=True` makes the first decorated function
fail with "no locator available". We choose a writable directory before numba is imported.
Import numba only through this module: ``from ._numba import numba``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["numba", "cache_dir"]


def _writable(path: Path) -> bool:
    """Whether `path` exists (or can be created) and accepts a new file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


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


def _choose_cache_dir() -> str:
    """Pick the numba cache directory: the user's setting, else a user cache, else a temp dir."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return explicit
    candidates = []
    root = _user_cache_root()
    if root is not None:
        candidates.append(root / "ptolemy-rt" / "numba")
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "user"
    candidates.append(Path(tempfile.gettempdir()) / f"ptolemy-rt-numba-{user}")
    for candidate in candidates:
        if _writable(candidate):
            return str(candidate)
    # Last resort: numba then compiles without caching rather than failing at import.
    return str(candidates[-1])


cache_dir = _choose_cache_dir()
os.environ["NUMBA_CACHE_DIR"] = cache_dir

import numba  # noqa: E402  (must follow the environment set-up above)
