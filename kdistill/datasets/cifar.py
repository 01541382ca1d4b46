"""CIFAR-10 and CIFAR-100 from the "python version" pickles, read with a restricted
unpickler so that a tampered file cannot run code."""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np

from kdistill.errors import DataFileError
from kdistill.core.contracts import Dataset, check_labels
from kdistill.datasets.base import resolve_dir

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (the python version)"

_PIXELS = 32 * 32 * 3


def _latin1_encode(text, encoding="utf-8"):
    """What Python 3 protocol-2 pickles call to rebuild ``bytes``; only latin-1 allowed."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin-1")


# Every global a CIFAR pickle may reference: numpy arrays (old and new numpy module
# paths, protocol 2-4 and protocol 5 forms) and latin-1 bytes (Python 3 protocol 2).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("_codecs", "encode"): _latin1_encode,
    ("codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals listed in ``_ALLOWED_GLOBALS``.

    Any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`DataFileError` naming it, before it can be called.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataFileError(
                f"forbidden global {module}.{name} in pickle: CIFAR files only reference "
                "numpy arrays; refusing to load a possibly malicious file"
            ) from None

    def persistent_load(self, pid):
        raise DataFileError("persistent ids are not allowed in CIFAR pickles")


def load_pickle(path: Path) -> dict[str, object]:
    """Unpickle a CIFAR file safely; returns its dict with keys decoded to ``str``.

    Raises:
        DataFileError: the file is unreadable, not a valid pickle, references a
            forbidden global, or does not hold a dict. The message names the file.
    """
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except DataFileError as exc:
        raise DataFileError(f"{path}: {exc}") from None
    except Exception as exc:  # pickle raises many types on corrupt input
        raise DataFileError(f"{path}: not a valid CIFAR pickle: {exc!r}") from exc
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel-planar rows ``[N, 3072]`` uint8 and labels int64 ``[N]`` of one file."""
    batch = load_pickle(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise DataFileError(f"{path}: missing key(s) {missing}; found {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFileError(f"{path}: 'data' must be uint8 [N, {_PIXELS}], got {desc}")
    labels = np.asarray(batch[label_key])
    check_labels(labels, num_classes, f"{path}: '{label_key}'", count=data.shape[0],
                 error=DataFileError)
    return data, labels.astype(np.int64)


def _read_split(paths: list[Path], label_key: str, num_classes: int):
    """Images uint8 ``[N, 32, 32, 3]`` (NHWC) and labels int64 ``[N]`` of the files."""
    parts = [_read_batch(p, label_key, num_classes) for p in paths]
    # rows are 1024 R, 1024 G, 1024 B values, each a row-major 32x32 plane; copy the
    # NCHW -> NHWC views once, straight into a C-contiguous result
    x = np.empty((sum(len(y) for _, y in parts), 32, 32, 3), np.uint8)
    np.concatenate([d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) for d, _ in parts], out=x)
    return x, np.concatenate([y for _, y in parts])


def _read_names(path: Path, key: str, num_classes: int) -> tuple[str, ...]:
    names = load_pickle(path).get(key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise DataFileError(f"{path}: '{key}' must be a list of {num_classes} class names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(data_dir: str | os.PathLike | None) -> Dataset:
    """Load CIFAR-10 from the python-version batches.

    ``data_dir`` is either the ``cifar-10-batches-py`` directory or its parent; it must
    hold ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (``batches.meta`` is
    optional and supplies the class names). Checksums are not verified; the format,
    keys, dtypes and shapes are.

    Returns:
        Dataset ``"cifar10"``: x uint8 ``[50000, 32, 32, 3]`` / ``[10000, 32, 32, 3]``
        (NHWC, RGB), y int64 in 0..9, 10 class names.

    Raises:
        DataFileError: ``data_dir`` is None, files are missing (all expected names are
            listed), malformed, or a pickle references a forbidden global.
    """
    root = resolve_dir(data_dir, "cifar10", CIFAR10_TRAIN + (CIFAR10_TEST,), (CIFAR10_DIR,),
                       source=CIFAR_SOURCE)
    meta = root / CIFAR10_META
    names = _read_names(meta, "label_names", 10) if meta.is_file() else CIFAR10_NAMES
    x_train, y_train = _read_split([root / f for f in CIFAR10_TRAIN], "labels", 10)
    x_test, y_test = _read_split([root / CIFAR10_TEST], "labels", 10)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, 10, names)


def load_cifar100(data_dir: str | os.PathLike | None) -> Dataset:
    """Load CIFAR-100 (fine labels) from the python-version files.

    ``data_dir`` is either the ``cifar-100-python`` directory or its parent; it must
    hold ``train``, ``test`` and ``meta``.

    Returns:
        Dataset ``"cifar100"``: x uint8 ``[50000, 32, 32, 3]`` / ``[10000, 32, 32, 3]``
        (NHWC, RGB), y int64 fine labels in 0..99, the 100 fine class names from ``meta``.

    Raises:
        DataFileError: as :func:`load_cifar10`.
    """
    root = resolve_dir(data_dir, "cifar100", CIFAR100_FILES, (CIFAR100_DIR,),
                       source=CIFAR_SOURCE)
    names = _read_names(root / "meta", "fine_label_names", 100)
    x_train, y_train = _read_split([root / "train"], "fine_labels", 100)
    x_test, y_test = _read_split([root / "test"], "fine_labels", 100)
    return Dataset("cifar100", x_train, y_train, x_test, y_test, 100, names)
