"""Data-only readers for other tools' files: ``.npz`` archives and flax msgpack checkpoints.

Nothing a file holds is imported, called or unpickled:

- ``.npz``: every member's ``.npy`` header is read and its declared shape and dtype are
  checked against the member's stored size before anything is allocated; object
  (pickled) arrays, structured dtypes, encrypted or oddly compressed members and
  decompression bombs are refused (:func:`kdistill.io.safeio` does the member checks).
- flax msgpack (``flax.serialization.to_bytes`` / ``flax.training.checkpoints``): the
  file is parsed with ``msgpack.unpackb`` with no ``ext_hook`` and no ``object_hook``,
  so an extension value stays an inert :class:`msgpack.ExtType`; flax's documented
  layout for a numpy array is extension type 1 (scalar: type 3) whose payload is a
  msgpack array ``[shape (list of ints), dtype name (str), C-order bytes]``; the dtype
  name must be a plain numeric dtype and ``prod(shape) * itemsize`` must equal the
  payload size before an array is made (:func:`numpy.frombuffer`, no copy). flax's
  chunked layout for arrays over 2 GiB (a map with ``__msgpack_chunked_array__``) is
  refused with a message.

Errors are :class:`ForeignFormatError` (an :class:`kdistill.errors.ArtifactError`),
naming the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.errors import ArtifactError

#: Largest file an importer reads (distilled sets are small; a checkpoint with
#: optimizer state is a few times the set).
MAX_FILE_BYTES = 4 * 2**30
#: msgpack nesting accepted in a checkpoint (flax trees are shallow).
MAX_DEPTH = 64
_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"}


class ForeignFormatError(ArtifactError):
    """A file to import is unreadable, not of the declared format, or malformed."""


def _check_file(path: Path) -> bytes:
    """The first bytes of ``path`` after existence and size checks."""
    if not path.is_file():
        raise ForeignFormatError(f"file to import {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ForeignFormatError(f"{str(path)!r} is {size} bytes, more than the {MAX_FILE_BYTES} an importer reads")
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError as exc:
        raise ForeignFormatError(f"{str(path)!r} cannot be read: {exc}") from exc


def read_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path`` (name without ``.npy`` -> array), size-checked,
    never unpickled.

    Raises:
        ForeignFormatError: missing, too large, a pickle, a single ``.npy`` array, not a
            zip archive, or a member that is an object array, of an unsupported dtype or
            whose header declares more bytes than it holds.
    """
    from kdistill.io.safeio import _read_archive

    path = Path(path)
    head = _check_file(path)
    if head.startswith(b"\x93NUMPY"):
        raise ForeignFormatError(f"{str(path)!r} is a single .npy array; expected an .npz archive")
    if head[:1] == b"\x80":
        raise ForeignFormatError(f"{str(path)!r} is a Python pickle, which kdistill never loads (a pickle can run "
                                 "arbitrary code); save the arrays with numpy.savez instead")
    if not head.startswith(b"PK"):
        raise ForeignFormatError(f"{str(path)!r} is not an .npz (zip) archive; it starts with {head[:4]!r}")
    return _read_archive(path, ForeignFormatError, "distilled set (.npz) to import")


def _ndarray(payload: bytes, where: str, name: str) -> np.ndarray:
    import msgpack

    try:
        tpl = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated classes on bad bytes
        raise ForeignFormatError(f"{where}: array {name!r} has a malformed payload: {exc}") from exc
    if not (isinstance(tpl, list) and len(tpl) == 3 and isinstance(tpl[0], list) and isinstance(tpl[1], str)
            and isinstance(tpl[2], bytes)):
        raise ForeignFormatError(f"{where}: array {name!r} is not flax's [shape, dtype, bytes] layout")
    shape, dtype, buf = tpl
    if dtype not in _DTYPES:
        raise ForeignFormatError(f"{where}: array {name!r} has unsupported dtype {dtype[:40]!r} "
                                 f"(supported: {', '.join(sorted(_DTYPES))})")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape) or len(shape) > 8:
        raise ForeignFormatError(f"{where}: array {name!r} has an invalid shape {str(shape)[:80]}")
    dt = np.dtype(dtype).newbyteorder("<")  # numpy's tobytes on little-endian machines
    declared = int(np.prod(shape, dtype=object)) * dt.itemsize
    if declared != len(buf):
        raise ForeignFormatError(f"{where}: array {name!r} declares shape {tuple(shape)} of {dtype} "
                                 f"({declared} bytes) but holds {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def _decode(obj: Any, where: str, name: str, depth: int = 0) -> Any:
    import msgpack

    if depth > MAX_DEPTH:
        raise ForeignFormatError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, msgpack.ExtType):
        if obj.code in (1, 3):  # flax: ndarray, numpy scalar
            return _ndarray(obj.data, where, name)
        raise ForeignFormatError(f"{where}: entry {name!r} is a msgpack extension of type {obj.code}, which "
                                 "kdistill does not read (only flax's numpy arrays, types 1 and 3)")
    if isinstance(obj, dict):
        if "__msgpack_chunked_array__" in obj:
            raise ForeignFormatError(f"{where}: entry {name!r} is a chunked array (flax's layout for arrays over "
                                     "2 GiB), which kdistill does not read")
        return {str(k): _decode(v, where, f"{name}/{k}" if name else str(k), depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, where, f"{name}/{i}", depth + 1) for i, v in enumerate(obj)]
    return obj


def read_flax_msgpack(path: str | os.PathLike) -> dict[str, Any]:
    """A flax msgpack checkpoint as a nested dict of numpy arrays and plain values.

    Raises:
        ForeignFormatError: missing, too large, not msgpack, not a map at the top, an
            extension other than flax's arrays, a malformed or inconsistent array.
        ImportError: the ``msgpack`` package is missing (``pip install 'kdistill[interop]'``).
    """
    try:
        import msgpack
    except ImportError as exc:
        raise ImportError("reading RCIG/flax checkpoints needs msgpack: pip install 'kdistill[interop]'") from exc
    path = Path(path)
    _check_file(path)
    data = path.read_bytes()
    where = repr(str(path))
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ForeignFormatError(f"{where} is not a readable flax msgpack checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise ForeignFormatError(f"{where} is not a flax msgpack checkpoint (its top level is a "
                                 f"{type(obj).__name__}, not a map)")
    return _decode(obj, where, "")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (for messages listing what a file holds)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out
