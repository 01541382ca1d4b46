"""Path checks and messages for the files and directories kdistill reads and writes:
over-long paths refused before the operating system does (``ENAMETOOLONG``), and
``OSError`` turned into a sentence with advice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from kdistill.errors import ConfigError

# Linux limits (limits.h); os.pathconf gives the ones of the filesystem when it can
_NAME_MAX, _PATH_MAX = 255, 4096


def _limits(path: str) -> tuple[int, int]:
    probe = Path(path).absolute()
    while True:  # the nearest existing ancestor decides the filesystem
        try:
            if probe.exists():
                break
        except OSError:
            pass
        if probe.parent == probe:
            break
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return _NAME_MAX, _PATH_MAX


def short_path(path: str | os.PathLike, keep: int = 200) -> str:
    """``path`` quoted, its middle elided when longer than ``keep`` characters."""
    text = os.fspath(path)
    if len(text) > keep:
        return f"{text[: keep // 2] + '...' + text[-keep // 2:]!r} ({len(text)} characters)"
    return repr(text)


def check_path_length(path: str | os.PathLike, what: str, directory: bool = False) -> None:
    """Refuse a path the operating system would reject as too long (``ENAMETOOLONG``).

    Args:
        what: how the message names it (``--out``, ``data_dir``, ``config file``).
        directory: the path is a directory whose files are opened too, so it must leave
            room for one more file name.
    Raises:
        ConfigError: a path component is longer than the filesystem's name limit
            (usually 255 bytes), or the whole path longer than its path limit (4096).
    """
    text = os.fspath(path)
    name_max, path_max = _limits(text)
    for part in Path(text).parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise ConfigError(
                f"{what} {short_path(text)} has a name of {n} bytes ({short_path(part, 40)}); file and "
                f"directory names may have at most {name_max} bytes here: use a shorter path"
            )
    limit = path_max - 1 - (name_max + 1 if directory else 0)
    n = len(os.fsencode(os.path.abspath(text)))
    if n > limit:
        raise ConfigError(
            f"{what} {short_path(text)} is {n} bytes long as an absolute path; at most {limit} bytes "
            f"fit here{' (room is left for the file names inside it)' if directory else ''}: use a shorter path"
        )


def path_error_message(exc: OSError, path: str | os.PathLike, action: str) -> str:
    """``"cannot <action> '<path>': <reason> (errno N)"`` for an OSError, with advice for
    the usual causes (too long a name, read-only, not a directory, no space)."""
    advice = {
        errno.ENAMETOOLONG: "use a shorter path",
        errno.EROFS: "the filesystem is read-only: choose a writable location",
        errno.EACCES: "no permission: choose a location you may write to",
        errno.EPERM: "no permission: choose a location you may write to",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.ENOSPC: "the disk is full: free space or choose another location",
        errno.EDQUOT: "the disk quota is exhausted: free space or choose another location",
    }.get(exc.errno, "check the path")
    reason = exc.strerror or str(exc)
    return f"cannot {action} {short_path(path)}: {reason} (errno {exc.errno}); {advice}"
