"""Crash-safe files: atomic writes and integrity-checked ``.npz`` and JSON files (never pickle).

Artifacts and checkpoints share this layer. A container is an ``.npz`` archive of
plain numpy arrays plus one ``meta`` entry, a 0-d unicode array holding JSON with at
least ``format``, ``format_version`` and ``integrity``, the integrity record (see
:func:`integrity_record`): one SHA-256 digest over a canonical serialization of every
other metadata field and every array, with a per-field and per-array breakdown so that
a mismatch names what differs. A file without the record, or whose content does not
match it, is refused: nothing a file holds (config, metrics, history, provenance,
arrays) escapes the check, and no file can switch it off.

The check detects accidents (bit rot, truncation, a half-copied file) and edits made
with ordinary tools. It is not a signature: someone who recomputes the digests after
an edit (the algorithm is public) produces a file that passes; the loaders then still
validate every field's structure and never import or run anything a file names.

Reading never unpickles, and never allocates more than the file justifies: each
archive member's ``.npy`` header (shape, dtype) is read and checked against the
member's size in the archive before any array is allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from kdistill.errors import KdistillError


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


#: Name of the metadata field (npz) or top-level key (JSON) that holds the integrity record.
INTEGRITY_KEY = "integrity"
#: Version of the integrity record's layout.
INTEGRITY_VERSION = 1
#: A compressed archive member may expand to at most this many times its stored size
#: (kdistill writes uncompressed members, so real files never come near it).
MAX_DEFLATE_RATIO = 32
#: Largest JSON side file (``nn_*.json`` ...) read, in bytes.
MAX_JSON_BYTES = 64 * 2**20
_CHUNK = 16 * 2**20
_ARRAY_KINDS = "biufcU"  # bool, ints, floats, complex, unicode (the meta entry)


def canonical_json(value: Any) -> bytes:
    """The canonical serialization the digests are computed over: JSON with sorted keys,
    no whitespace, ASCII only. ``NaN``/``Infinity`` are kept (as Python writes them).

    Raises:
        TypeError, ValueError, RecursionError: ``value`` is not JSON-serializable.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def integrity_record(fields: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The integrity record of a file's metadata ``fields`` and ``arrays``.

    Returns:
        ``{"algorithm": "sha256", "version": 1, "fields": {name: digest},
        "arrays": {name: digest}, "digest": hex}`` where each field digest is the
        SHA-256 of :func:`canonical_json` of its value, each array digest is
        :func:`array_digest`, and ``digest`` is the SHA-256 of the canonical JSON of
        ``{"fields": ..., "arrays": ...}``: one digest that covers every byte of
        metadata and every array. ``fields`` must not contain the record itself.
    """
    parts = {
        "fields": {k: _sha256(canonical_json(v)) for k, v in fields.items()},
        "arrays": {k: array_digest(v) for k, v in (arrays or {}).items()},
    }
    return {"algorithm": "sha256", "version": INTEGRITY_VERSION, **parts, "digest": _sha256(canonical_json(parts))}


def verify_integrity(
    name: str, fields: dict[str, Any], arrays: dict[str, np.ndarray] | None,
    error: type[KdistillError], what: str, *, legacy_hint: str,
) -> None:
    """Check ``fields`` (which still hold the record under :data:`INTEGRITY_KEY`) and
    ``arrays`` against that record.

    Args:
        name: the file, for messages; what: the kind of file, e.g. ``"artifact"``.
        legacy_hint: what to do with a file that has no record (re-run, re-save ...).
    Raises:
        ``error``: the record is missing ("has no integrity record"), malformed, or the
            content does not match it; the message names each differing metadata field
            and array ("failed its checksum for metadata fields metrics; entries images").
    """
    record = fields.get(INTEGRITY_KEY)
    if record is None:
        raise error(
            f"{name!r} has no integrity record: it predates integrity records, or the record "
            f"was deleted. kdistill refuses unverified {what}s; {legacy_hint}"
        )
    if (
        not isinstance(record, dict) or record.get("algorithm") != "sha256"
        or record.get("version") != INTEGRITY_VERSION
        or not all(isinstance(record.get(k), dict) for k in ("fields", "arrays"))
        or not isinstance(record.get("digest"), str)
    ):
        raise error(
            f"{name!r} has a malformed integrity record (expected algorithm 'sha256', version "
            f"{INTEGRITY_VERSION}, 'fields', 'arrays' and 'digest'); the file was edited or is corrupt"
        )
    content = {k: v for k, v in fields.items() if k != INTEGRITY_KEY}
    try:
        actual = integrity_record(content, arrays)
    except (TypeError, ValueError, RecursionError) as exc:
        raise error(f"{name!r} holds metadata that cannot be checked: {exc}") from exc
    try:
        own = _sha256(canonical_json({"fields": record["fields"], "arrays": record["arrays"]}))
    except (TypeError, ValueError, RecursionError):
        own = None
    if actual["digest"] == record["digest"] and own == record["digest"]:
        return

    def differing(kind: str) -> list[str]:
        want, got = record[kind], actual[kind]
        return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))

    bad_fields, bad_arrays = differing("fields"), differing("arrays")
    noun = "metadata fields" if arrays is not None else "fields"
    parts = ([f"{noun} {', '.join(bad_fields)}"] if bad_fields else []) + (
        [f"entries {', '.join(bad_arrays)}"] if bad_arrays else [])
    detail = "; ".join(parts) if parts else "its integrity record (the record itself was edited)"
    raise error(
        f"{name!r} failed its checksum for {detail}: the file was modified or corrupted after "
        f"it was written. kdistill refuses it; use an unmodified copy or re-create the {what}"
    )


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Atomically write ``arrays`` plus JSON ``meta`` with its integrity record added.

    Members are stored uncompressed (``np.savez``). The record is computed over the
    metadata as it will read back (after a JSON round trip), so a file verifies
    exactly when its content is what was written.

    Args:
        arrays: name -> numeric numpy array (no object arrays); names may hold ``/``.
        meta: JSON-serializable dict; must include ``format`` and ``format_version``
            and must not include :data:`INTEGRITY_KEY`.
    Raises:
        OSError: the write failed; ``path`` is unchanged (see :func:`atomic_write`).
        ValueError: ``meta`` is not JSON-serializable or already holds a record.
    """
    if INTEGRITY_KEY in meta:
        raise ValueError(f"meta must not hold {INTEGRITY_KEY!r}; write_npz computes it")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    fields = json.loads(json.dumps(meta))
    text = json.dumps({**fields, INTEGRITY_KEY: integrity_record(fields, arrays)})
    entries = {**arrays, "meta": np.array(text)}
    return atomic_write(path, lambda fh: np.savez(fh, **entries))


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, error, unreadable: str) -> np.ndarray:
    """One ``.npy`` member, its declared size checked before anything is allocated."""
    member = info.filename[:-4]  # the entry's name, without ".npy"
    if info.flag_bits & 0x1:
        raise error(f"{unreadable}: entry {member!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise error(f"{unreadable}: entry {member!r} uses an unsupported compression method")
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise error(f"{unreadable}: entry {member!r} has unsupported .npy version {version}")
        if dtype.hasobject:
            raise error(
                f"{unreadable}: entry {member!r} is an object array (pickled Python objects). "
                "Object arrays cannot be loaded when allow_pickle=False; kdistill never unpickles"
            )
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None \
                or dtype.itemsize == 0:
            raise error(f"{unreadable}: entry {member!r} has unsupported dtype {dtype.str}")
        declared = math.prod(shape) * dtype.itemsize
        stored = info.file_size - fp.tell()
        if declared != stored:
            raise error(
                f"{unreadable}: entry {member!r} declares shape {tuple(shape)} of {dtype.str} "
                f"({declared} bytes) but holds {stored} bytes; refusing to allocate it"
            )
        if info.compress_type == zipfile.ZIP_DEFLATED and declared > MAX_DEFLATE_RATIO * info.compress_size + 2**16:
            raise error(
                f"{unreadable}: entry {member!r} declares {declared} bytes from {info.compress_size} compressed "
                f"bytes (more than {MAX_DEFLATE_RATIO}x, a decompression bomb?); refusing to allocate it"
            )
        buf = bytearray(declared)
        got = 0
        while got < declared:
            chunk = fp.read(min(_CHUNK, declared - got))
            if not chunk:
                break
            buf[got:got + len(chunk)] = chunk
            got += len(chunk)
        if got != declared or fp.read(1):  # reading to the end also checks the CRC
            raise error(f"{unreadable}: entry {member!r} holds {got} bytes, expected {declared}")
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def _read_archive(path: Path, error, what: str) -> dict[str, np.ndarray]:
    """Every member of the ``.npz`` at ``path``, name without ``.npy``, sizes checked."""
    name = str(path)
    unreadable = f"{name!r} is not a readable kdistill {what} (truncated or corrupt?)"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                raise error(f"{unreadable}: duplicate entries {', '.join(dups)}")
            odd = [n for n in names if not n.endswith(".npy")]
            if odd:
                raise error(f"{unreadable}: entries {', '.join(map(repr, odd))} are not .npy arrays")
            if sum(i.compress_size for i in infos) > path.stat().st_size:
                raise error(f"{unreadable}: its entries overlap or declare more bytes than the file holds")
            return {i.filename[:-4]: _read_member(zf, i, error, unreadable) for i in infos}
    except KdistillError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy header and OS errors on bad bytes
        raise error(f"{unreadable}: {exc}") from exc


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
    corrupt, no object arrays, every member's declared shape and dtype matching its
    size, compressed members within :data:`MAX_DEFLATE_RATIO`), it has every entry in
    ``required`` (``meta`` is always required), ``meta`` is a JSON object with
    ``format == fmt`` and an integer ``format_version <= max_version``. The integrity
    record is verified separately by :func:`verify_checksums`, so that callers can
    first tell an old-format file from an edited one.

    Args:
        what: the kind of file for messages, e.g. ``"artifact"``.
    Returns:
        ``(arrays without meta, meta dict)``; the meta dict still holds the record.
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
    if not head.startswith(b"PK"):  # refuse before anything guesses (numpy would try pickle)
        raise error(f"{unreadable}: not an .npz (zip) archive; the file starts with {head[:4]!r}")
    arrays = _read_archive(path, error, what)
    missing = [k for k in (*required, "meta") if k not in arrays]
    if missing:
        raise error(f"{name!r} lacks entries {', '.join(dict.fromkeys(missing))}; not a kdistill {what}")
    raw = arrays.pop("meta")
    try:
        meta = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.shape == () else None
    except (json.JSONDecodeError, RecursionError) as exc:
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
    error: type[KdistillError], *, what: str, legacy_hint: str,
) -> None:
    """Verify a container's integrity record (see :func:`verify_integrity`).

    Raises:
        ``error``: no record, a malformed record, or content that differs from it.
    """
    verify_integrity(str(path), meta, arrays, error, what, legacy_hint=legacy_hint)


def verify_legacy_checksums(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any],
    error: type[KdistillError], required: bool,
) -> None:
    """Check a format-version-1 file's per-array ``checksums`` (its metadata was never
    covered). Only for an explicit, caller-requested legacy load.

    Raises:
        ``error``: checksums missing (when ``required``), malformed, or differing.
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


def write_json_sealed(path: str | os.PathLike, obj: dict[str, Any], indent: int | None = 1) -> Path:
    """Atomically write the JSON object ``obj`` with an integrity record under
    :data:`INTEGRITY_KEY` (the same record as in ``.npz`` files, with no arrays).

    For side files that carry results (``nn_<model>.json``, ``metrics.json``); read
    them back with :func:`read_json_sealed`.

    Raises:
        ValueError: ``obj`` is not a JSON-serializable dict or already holds the key.
        OSError: the write failed; ``path`` is unchanged.
    """
    if not isinstance(obj, dict) or INTEGRITY_KEY in obj:
        raise ValueError(f"write_json_sealed needs a dict without {INTEGRITY_KEY!r}")
    fields = json.loads(json.dumps(obj))
    return write_text_atomic(path, json.dumps({**fields, INTEGRITY_KEY: integrity_record(fields)}, indent=indent))


def read_json_sealed(
    path: str | os.PathLike, error: type[KdistillError] = KdistillError, what: str = "result file",
) -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json_sealed` and verify its record.

    Args:
        error: the exception class to raise (a :class:`KdistillError` subclass).
        what: the kind of file for messages, e.g. ``"NN result"``.
    Returns:
        The object without the integrity record.
    Raises:
        ``error``: the file is missing, larger than :data:`MAX_JSON_BYTES`, not UTF-8
            JSON, not an object, has no integrity record (written before records were
            added, or deleted: re-run the command that wrote it), or its content
            differs from the record (the message names the differing keys).
    """
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{what} {name!r} is {size} bytes, more than the {MAX_JSON_BYTES} a kdistill "
                        f"{what} can hold; not a kdistill {what}")
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except KdistillError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"cannot read {what} {name!r}: {exc}") from exc
    if not isinstance(obj, dict):
        raise error(f"{what} {name!r} is not a JSON object")
    verify_integrity(name, obj, None, error, what,
                     legacy_hint=f"re-run the command that wrote it to get a verifiable {what}")
    return {k: v for k, v in obj.items() if k != INTEGRITY_KEY}
