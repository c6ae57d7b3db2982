"""Writing results: whole files or nothing, only to regular files or new paths, a set of files as one.

Each file goes to a temporary file in its destination's directory and is renamed over the destination, so a
reader never sees a partial file. A FIFO, a device, a directory or a symlink at the destination is refused
(a symlink is followed only when asked), and an existing file keeps its permission bits. A set of outputs
(result + overlay) is committed together: if one rename fails, the files already replaced are restored.
Temporary files are removed on every exit path; `remove_temporaries()` is what a signal handler calls.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from .errors import OutputError, clean_text

__all__ = [
    "OVERLAY_FORMATS",
    "atomic_write",
    "check_destination",
    "fitting_name",
    "overlay_format",
    "remove_temporaries",
    "write_set",
]

# Overlay formats by file extension (what cv2.imencode is asked for).
OVERLAY_FORMATS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".tif": ".tif", ".tiff": ".tif"}

_live: set[str] = set()  # temporary files not yet renamed or removed
_lock = threading.Lock()


def overlay_format(path: str | os.PathLike) -> str:
    """The image format an overlay path asks for by its extension (.png, .jpg or .tif); OutputError if none."""
    suffix = Path(path).suffix.lower()
    if suffix not in OVERLAY_FORMATS:
        raise OutputError(f"{path}: an overlay must end in .png, .jpg, .jpeg, .tif or .tiff (got "
                          f"'{suffix or 'no extension'}')")
    return OVERLAY_FORMATS[suffix]


def _stat_or_none(target: Path, follow: bool) -> os.stat_result | None:
    """The stat of `target` (of the link itself unless `follow`), None where nothing is; OutputError naming it
    when it cannot be looked at (no permission on a folder, a name too long, a loop)."""
    try:
        return os.stat(target, follow_symlinks=follow)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from None


def check_destination(path: str | os.PathLike, *, follow_symlinks: bool = False) -> Path:
    """Return the file to replace for `path`, refusing anything but a regular file or a new path."""
    if str(path) == "":
        raise OutputError("an empty output path was given")
    target = Path(path)
    st = _stat_or_none(target, follow=False)
    if st is not None and stat.S_ISLNK(st.st_mode):
        if not follow_symlinks:
            raise OutputError(f"{target}: is a symbolic link; refusing to write through it "
                              "(--follow-symlinks replaces the file it points to)")
        target = Path(os.path.realpath(target))
        st = _stat_or_none(target, follow=True)
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise OutputError(f"{target}: is {kind}; results are written only to regular files or new paths")
    if target.name in ("", ".", ".."):
        raise OutputError(f"{path}: not a file name")
    return target


def _mode_for(target: Path) -> int:
    """The permission bits the written file gets: the existing file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# The bytes of a file name on the file systems outputs go to (NAME_MAX of ext4, XFS, Btrfs, ZFS).
NAME_MAX = 255


def unnormalised(text: str) -> str:
    """`text` made absolute without folding `..` away: the kernel still looks up the name before a `..`, so
    an over-long one there fails the call (os.path.abspath would hide it from the length check)."""
    return os.path.join(os.getcwd(), text)


def existing_folder(text: str) -> str:
    """The nearest existing folder above the path `text` (absolute, `..` kept: unnormalised)."""
    folder = os.path.dirname(unnormalised(text))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:  # isdir: False on ENAMETOOLONG too
        folder = os.path.dirname(folder)
    return folder


def name_limits(folder: str) -> tuple[int, int]:
    """(bytes a name, bytes a path) that the file system of `folder` takes: os.pathconf's NAME_MAX and
    PATH_MAX (less its NUL) where it answers, else Linux's 255 and 4095 (Windows has no pathconf; macOS says
    255 and 1024; a network file system may have less)."""
    def ask(name: str, fallback: int) -> int:
        try:
            value = os.pathconf(folder, name)  # type: ignore[attr-defined]  # absent on Windows
        except (AttributeError, OSError, ValueError):
            return fallback
        return value if isinstance(value, int) and value > 0 else fallback

    return ask("PC_NAME_MAX", NAME_MAX), ask("PC_PATH_MAX", 4096) - 1


def folder_name_max(folder: str | os.PathLike) -> int:
    """The bytes a name may take in `folder` (made if missing): its file system's NAME_MAX (name_limits), asked of
    the nearest existing folder; the one limit the names written there (-o DIR/, a batch's ids) are cut to."""
    return name_limits(existing_folder(os.path.join(folder, "x")))[0]


def fitting_name(stem: str, suffix: str, limit: int = NAME_MAX) -> str:
    """`stem + suffix` as a file name of at most `limit` bytes: an output named after an input whose name is near
    the limit (a 251-byte stem of NAME.mrc, NAME.json 256 bytes) failed with ENAMETOOLONG, exit 4 for a valid input.
    A stem too long is cut (never half a character) and told apart by a hash of the whole: `PREFIX~HASH16.json`."""
    name = stem + suffix
    if len(os.fsencode(name)) <= limit:
        return name
    import hashlib

    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:16]
    return f"{_name_prefix(stem, max(limit - len(os.fsencode(suffix)) - 1 - len(digest), 0))}~{digest}{suffix}"


def _name_prefix(name: str, limit: int) -> str:
    """`name`'s longest prefix of at most `limit` bytes as the file system encodes it, never half a character.

    The limit on a name is in bytes: 200 characters of 'é' are 400 (review of fuzz12: exit 4 again)."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    cut = limit
    while cut > 0 and raw[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back to its character's start
        cut -= 1
    return os.fsdecode(raw[:cut])


# What _write_temp and write_set add to a target's name: '.' before, '.XXXXXXXX.tmp' after, and '.old' for a backup.
_TEMP_ADDED = len(".") + len(".XXXXXXXX.tmp") + len(".old")
_temp_limits: dict[str, int] = {}  # folder -> the bytes of a target's name its temporary names keep


def _temp_prefix_limit(folder: Path) -> int:
    """The bytes of a target's name kept in its temporary names in `folder`: 200 at most, less where the folder's
    NAME_MAX (folder_name_max) leaves less room beside the added parts (asked once a folder)."""
    key = str(folder)
    limit = _temp_limits.get(key)
    if limit is None:
        limit = _temp_limits[key] = max(min(200, folder_name_max(folder) - _TEMP_ADDED), 1)
    return limit


def _write_temp(target: Path, payload: bytes) -> str:
    """Write `payload` to a new temporary file beside `target`; return its path (registered as live)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create its directory ({exc.strerror or exc})") from None
    mode = _mode_for(target)
    # as tempfile.mkstemp opens: binary (Windows would otherwise write \r\n for \n) and not inherited
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0))
    while True:
        # The name is registered before the file exists: a signal whose handler raised just after tempfile.mkstemp
        # created the file, before its name came back, left it behind (fuzz batch_signals seed 70000009, a
        # preview's '.atlas_7.mrc.jpg.5a81brl5.tmp'). remove_temporaries() passes over a name never created.
        # The name's first 200 bytes only: a legal 242-255 byte name made one over the 255-byte limit
        # (ENAMETOOLONG: exit 4 for an output that could be written), with room for write_set's '.old' beside it.
        # Fewer where the folder takes shorter names (eCryptfs: 143), which the outputs are cut to fit.
        prefix = _name_prefix(target.name, _temp_prefix_limit(target.parent))
        tmp = os.path.abspath(os.path.join(target.parent, f".{prefix}.{os.urandom(4).hex()}.tmp"))
        with _lock:
            _live.add(tmp)
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:  # another file of that name: not ours, never to be removed
            with _lock:
                _live.discard(tmp)
        except OSError as exc:
            with _lock:
                _live.discard(tmp)
            raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
    except BaseException as exc:
        _discard(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from None
        raise
    return tmp


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass
    with _lock:
        _live.discard(tmp)


def remove_temporaries() -> None:
    """Remove every temporary file this process has not yet renamed (called on SIGTERM and at exit)."""
    with _lock:
        pending = list(_live)
        _live.clear()
    for tmp in pending:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_set(items: Sequence[tuple[str | os.PathLike, bytes | str]], *, follow_symlinks: bool = False) -> None:
    """Write several files as one: all of them appear, or none changes (OutputError says which failed)."""
    targets = [check_destination(path, follow_symlinks=follow_symlinks) for path, _ in items]
    if len(set(targets)) != len(targets):
        raise OutputError("two outputs of one set name the same file: " + ", ".join(map(str, targets)))
    temps: list[str] = []
    backups: list[tuple[Path, str | None]] = []  # (target, backup of what it held, or None if it was new)
    try:
        for target, (_, data) in zip(targets, items):
            payload = _utf8(data) if isinstance(data, str) else bytes(data)
            temps.append(_write_temp(target, payload))
        for target, tmp in zip(targets, temps):
            backup = None
            if len(targets) > 1 and target.exists():
                # A hard link keeps the old bytes reachable until the whole set is in place.
                backup = tmp + ".old"
                try:
                    os.link(target, backup)
                except OSError:
                    backup = None
                else:
                    with _lock:
                        _live.add(backup)
            try:
                os.replace(tmp, target)
            except OSError as exc:
                if backup:
                    _discard(backup)
                raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from None
            with _lock:
                _live.discard(tmp)
            backups.append((target, backup))
    except BaseException:
        for target, backup in reversed(backups):
            try:
                if backup:
                    os.replace(backup, target)
                else:
                    os.unlink(target)
            except OSError:
                pass
            if backup:
                with _lock:
                    _live.discard(backup)
        for tmp in temps:
            _discard(tmp)
        raise
    for _, backup in backups:
        if backup:
            _discard(backup)


def _utf8(text: str) -> bytes:
    """UTF-8 of a text output; a file name's undecodable bytes in it are made text first (errors.clean_text)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return clean_text(text).encode("utf-8")


def atomic_write(path: str | os.PathLike, data: bytes | str, *, follow_symlinks: bool = False) -> None:
    """Write `data` to `path` through a temporary file and a rename, so no partial file is ever seen."""
    write_set([(path, data)], follow_symlinks=follow_symlinks)
