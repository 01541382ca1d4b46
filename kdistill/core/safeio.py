"""Crash-safe files: atomic writes and checksummed ``.npz`` containers (never pickle).

Artifacts and checkpoints share this layer. A container is an ``.npz`` archive of
plain numpy arrays plus one ``meta`` entry, a 0-d unicode array holding JSON with at
least ``format`` and ``format_version``, and ``checksums``: the SHA-256 of every
other entry (dtype, shape and bytes), so that a tampered or bit-rotted array is
detected on load. Reading uses ``allow_pickle=False``; object arrays are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from kdistill.core.errors import KdistillError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` so that it is either the complete new file or left untouched.

    ``write(fh)`` writes the bytes to ``<path>.tmp`` in the same directory; the file
    is flushed and fsync'ed, renamed over ``path`` (``os.replace``, atomic on POSIX)
    and the directory is fsync'ed so that the rename survives a power loss. On any
    error (including KeyboardInterrupt) the temp file is removed and the error
    re-raised; ``path`` still holds its previous content, if any.

    Raises:
        OSError: from the write, fsync or rename (e.g. ``ENOSPC``, disk full).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` with :func:`atomic_write`. Raises OSError."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: not every OS/filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def array_digest(a: np.ndarray) -> str:
    """SHA-256 (hex) of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data if a.size else b"")
    return h.hexdigest()


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Atomically write ``arrays`` plus JSON ``meta`` (with ``checksums`` added).

    Args:
        arrays: name -> numeric numpy array (no object arrays); names may hold ``/``.
        meta: JSON-serializable dict; must include ``format`` and ``format_version``.
    Raises:
        OSError: the write failed; ``path`` is unchanged (see :func:`atomic_write`).
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = {**meta, "checksums": {k: array_digest(v) for k, v in arrays.items()}}
    entries = {**arrays, "meta": np.array(json.dumps(meta))}
    return atomic_write(path, lambda fh: np.savez(fh, **entries))


def read_npz(
    path: str | os.PathLike,
    *,
    fmt: str,
    max_version: int,
    required: tuple[str, ...],
    error: type[KdistillError],
    what: str,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a container written by :func:`write_npz`; never unpickles.

    Checks, in order: the file exists and is a readable ``.npz`` (not truncated or
    corrupt, no object arrays), it has every entry in ``required`` (``meta`` is always
    required), ``meta`` is a JSON object with ``format == fmt`` and an integer
    ``format_version <= max_version``. Checksums are verified separately by
    :func:`verify_checksums` so that callers can first report structural problems.

    Args:
        what: the kind of file for messages, e.g. ``"artifact"``.
    Returns:
        ``(arrays without meta, meta dict)``.
    Raises:
        ``error``: with a message naming the file and the problem.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise error(f"{what} {name!r} does not exist")
    unreadable = f"{name!r} is not a readable kdistill {what} (truncated or corrupt?)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise error(f"{name!r} cannot be read: {exc}") from exc
    if head.startswith(b"\x93NUMPY"):
        raise error(f"{name!r} is a single array, not a kdistill {what} (.npz)")
    if head.startswith(b"\x80") and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise error(f"{unreadable}: it is a Python pickle, which kdistill never loads (a pickle can "
                    "run arbitrary code)")
    if not head.startswith(b"PK"):  # refuse before numpy guesses (it would try pickle)
        raise error(f"{unreadable}: not an .npz (zip) archive; the file starts with {head[:4]!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile, zlib, numpy header and OS errors on bad bytes
        raise error(f"{unreadable}: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise error(f"{name!r} is a single array, not a kdistill {what} (.npz)")
    try:
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise error(f"{unreadable}: {exc}") from exc
    missing = [k for k in (*required, "meta") if k not in arrays]
    if missing:
        raise error(f"{name!r} lacks entries {', '.join(dict.fromkeys(missing))}; not a kdistill {what}")
    raw = arrays.pop("meta")
    try:
        meta = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.shape == () else None
    except json.JSONDecodeError as exc:
        raise error(f"{name!r} has malformed metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise error(f"{name!r} is not a kdistill {what} (metadata lacks format {fmt!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise error(f"{name!r} has an invalid format_version {version!r}")
    if version > max_version:
        raise error(
            f"{name!r} has format version {version}, newer than this kdistill reads "
            f"({max_version}); upgrade kdistill"
        )
    return arrays, meta


def verify_checksums(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any],
    error: type[KdistillError], required: bool = True,
) -> None:
    """Compare every array with ``meta["checksums"]``.

    Args:
        required: if False, a file without ``checksums`` (written before they were
            introduced) is accepted unchecked.
    Raises:
        ``error``: an entry is missing, unexpected, or its checksum differs (tampered
            or corrupted file).
    """
    sums = meta.get("checksums")
    if sums is None and not required:
        return
    if not isinstance(sums, dict):
        raise error(f"{str(path)!r} has no valid checksums in its metadata; tampered or corrupt")
    bad = sorted(set(sums) ^ set(arrays)) + sorted(
        k for k in set(sums) & set(arrays) if sums[k] != array_digest(arrays[k])
    )
    if bad:
        raise error(
            f"{str(path)!r} failed its checksum for entries {', '.join(bad)}: the file was "
            "modified or corrupted after it was written"
        )
