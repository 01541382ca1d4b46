"""MNIST and Fashion-MNIST from the four canonical IDX files."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from kdistill.core.errors import DataFileError
from kdistill.datasets.base import Dataset, check_labels, resolve_dir

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

MNIST_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_SOURCE = "https://yann.lecun.com/exdb/mnist/ (the four *-ubyte.gz files)"
FASHION_MNIST_SOURCE = "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)"

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped if it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise DataFileError(f"{path}: no such IDX file") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataFileError(f"{path}: cannot read/decompress IDX file: {exc}") from exc
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed or plain; detected from the content).

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions and then each
    dimension as a big-endian uint32. The payload must hold exactly the product of the
    dimensions in items.

    Returns:
        A writable array of that shape, in native byte order (uint8 for MNIST files).

    Raises:
        DataFileError: the file is missing, not valid gzip, truncated, too long or has a
            bad magic number / type / dimension count; the message names the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataFileError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFileError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTNN with "
            f"type TT in {sorted(hex(t) for t in _IDX_DTYPES)})"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if ndim == 0:
        raise DataFileError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataFileError(
            f"{path}: IDX file {kind}: {len(raw)} bytes, expected {expected} for shape "
            f"{shape} of {dtype.name}"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, H, W, 1]`` and labels int64 ``[N]`` (0..9) of one split."""
    x = read_idx(images_path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataFileError(
            f"{images_path}: expected uint8 images [N, H, W], got {x.dtype} {x.shape}"
        )
    y = read_idx(labels_path)
    if y.ndim != 1 or y.dtype != np.uint8:
        raise DataFileError(f"{labels_path}: expected uint8 labels [N], got {y.dtype} {y.shape}")
    check_labels(y, 10, str(labels_path), count=x.shape[0], error=DataFileError)
    return x[..., None], y.astype(np.int64)


def _load_idx_dataset(data_dir, name: str, class_names: tuple[str, ...], source: str) -> Dataset:
    root = resolve_dir(data_dir, name, IDX_FILES, source=source)
    x_train, y_train = _read_split(root / TRAIN_IMAGES, root / TRAIN_LABELS)
    x_test, y_test = _read_split(root / TEST_IMAGES, root / TEST_LABELS)
    return Dataset(name, x_train, y_train, x_test, y_test, 10, class_names)


def load_mnist(data_dir: str | os.PathLike | None) -> Dataset:
    """Load MNIST from ``data_dir`` holding the four canonical ``*-ubyte.gz`` IDX files.

    Returns:
        Dataset ``"mnist"``: x uint8 ``[60000, 28, 28, 1]`` / ``[10000, 28, 28, 1]``,
        y int64 in 0..9, class names "0".."9".

    Raises:
        DataFileError: ``data_dir`` is None, a file is missing (all expected names are
            listed) or malformed.
    """
    return _load_idx_dataset(data_dir, "mnist", MNIST_NAMES, MNIST_SOURCE)


def load_fashion_mnist(data_dir: str | os.PathLike | None) -> Dataset:
    """Load Fashion-MNIST from ``data_dir`` holding its four IDX files, which have the
    same names and format as MNIST's.

    Returns:
        Dataset ``"fashion-mnist"``: x uint8 ``[60000, 28, 28, 1]`` /
        ``[10000, 28, 28, 1]``, y int64 in 0..9, Fashion-MNIST class names.

    Raises:
        DataFileError: as :func:`load_mnist`.
    """
    return _load_idx_dataset(data_dir, "fashion-mnist", FASHION_MNIST_NAMES, FASHION_MNIST_SOURCE)
