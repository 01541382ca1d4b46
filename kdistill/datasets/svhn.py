"""SVHN (cropped digits) from the standard ``train_32x32.mat`` / ``test_32x32.mat``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from kdistill.errors import DataFileError, KdistillError
from kdistill.core.contracts import Dataset
from kdistill.datasets.base import resolve_dir

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
SVHN_NAMES = tuple(str(d) for d in range(10))
SVHN_SOURCE = "http://ufldl.stanford.edu/housenumbers/ (format 2: cropped digits)"
#: The official number of images in each file: the most a file may declare.
KNOWN_MAX_IMAGES = {"train_32x32.mat": 73257, "test_32x32.mat": 26032}


def _check_declared(path: Path, scipy_io) -> None:
    """Read the variables' declared shapes (headers only, no data) and refuse, before
    anything is allocated, an ``X`` larger than the official split or a ``y`` that
    does not match it (a compressed .mat variable can expand ~1000x)."""
    try:
        declared = {name: (tuple(shape), cls) for name, shape, cls in scipy_io.whosmat(path)}
    except Exception as exc:  # scipy raises many types on corrupt input
        raise DataFileError(f"{path}: cannot read MATLAB file: {exc!r}") from exc
    limit = KNOWN_MAX_IMAGES.get(path.name, max(KNOWN_MAX_IMAGES.values()))
    x_shape, _ = declared.get("X", ((), ""))
    if "X" in declared and (len(x_shape) != 4 or x_shape[:3] != (32, 32, 3) or x_shape[3] > limit):
        raise DataFileError(
            f"{path}: 'X' declares shape {x_shape}; SVHN images are [32, 32, 3, N] with N at most "
            f"{limit} in this file; refusing to allocate it"
        )
    y_shape, _ = declared.get("y", ((), ""))
    if "y" in declared and math.prod(y_shape) > limit:
        raise DataFileError(f"{path}: 'y' declares shape {y_shape}, more than the {limit} labels this "
                            "file can hold; refusing to allocate it")


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 32, 32, 3]`` and labels int64 ``[N]`` (0..9) of one file."""
    try:
        import scipy.io
    except ImportError as exc:
        raise KdistillError(
            "reading SVHN .mat files needs scipy: pip install scipy"
        ) from exc
    _check_declared(path, scipy.io)
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises many types on corrupt input
        raise DataFileError(f"{path}: cannot read MATLAB file: {exc!r}") from exc
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DataFileError(f"{path}: missing variable(s) {missing}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataFileError(f"{path}: 'X' must be uint8 [32, 32, 3, N], got {x.dtype} {x.shape}")
    y = y.reshape(-1)  # stored as [N, 1]; digit 0 is stored as label 10
    valid = y.dtype.kind in "iuf" and y.shape[0] == x.shape[3]
    if not (valid and np.isin(y, np.arange(1, 11)).all()):
        raise DataFileError(
            f"{path}: 'y' must hold {x.shape[3]} labels in 1..10 (10 = digit 0), "
            f"got {y.dtype} {y.shape}"
        )
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y.astype(np.int64) % 10


def load_svhn(data_dir: str | os.PathLike | None) -> Dataset:
    """Load SVHN cropped digits from ``train_32x32.mat`` and ``test_32x32.mat``.

    Each file holds ``X`` uint8 ``[32, 32, 3, N]`` and ``y`` ``[N, 1]`` in 1..10, where
    10 stands for digit 0. Needs scipy (imported only here).

    Returns:
        Dataset ``"svhn"``: x uint8 ``[N, 32, 32, 3]`` (NHWC), y int64 digit in 0..9
        (label 10 mapped to 0), class names "0".."9".

    Raises:
        DataFileError: ``data_dir`` is None, a file is missing (all expected names are
            listed) or malformed, or declares more images than the official split
            (73257 train / 26032 test; checked from the headers before loading).
        KdistillError: scipy is not installed.
    """
    root = resolve_dir(data_dir, "svhn", SVHN_FILES, source=SVHN_SOURCE)
    x_train, y_train = _read_mat(root / SVHN_FILES[0])
    x_test, y_test = _read_mat(root / SVHN_FILES[1])
    return Dataset("svhn", x_train, y_train, x_test, y_test, 10, SVHN_NAMES)
