"""MNIST and Fashion-MNIST from the four canonical IDX files."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from kdistill.errors import DataFileError
from kdistill.core.contracts import Dataset, check_labels
from kdistill.datasets.base import resolve_dir

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


#: Without known shapes, a gzip'ed IDX file may expand to at most this many times its
#: size (real MNIST files expand about 5x; deflate's physical limit is about 1032x).
MAX_GZIP_RATIO = 256
#: The largest shapes of each canonical file (the official split sizes).
KNOWN_MAX_SHAPES = {
    TRAIN_IMAGES: (60000, 28, 28), TRAIN_LABELS: (60000,),
    TEST_IMAGES: (10000, 28, 28), TEST_LABELS: (10000,),
}


def _read_exact(stream, n: int) -> bytes:
    """Up to ``n`` bytes from ``stream`` (fewer only at the end of the stream)."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(min(n - got, 1 << 24))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike, max_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed or plain; detected from the content).

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions and then each
    dimension as a big-endian uint32. The payload must hold exactly the product of the
    dimensions in items.

    The header is checked before anything is allocated or decompressed beyond it: the
    declared shape must fit ``max_shape`` (same rank, each dimension at most the
    bound), a plain file must be as long as declared, and a gzip'ed file is
    decompressed only up to the declared size plus one byte (without ``max_shape``,
    the declared size may be at most :data:`MAX_GZIP_RATIO` times the file's size).

    Args:
        max_shape: the largest shape this file may declare, e.g. ``(60000, 28, 28)``.
    Returns:
        A writable array of that shape, in native byte order (uint8 for MNIST files).

    Raises:
        DataFileError: the file is missing, not valid gzip, truncated, too long, has a
            bad magic number / type / dimension count, or declares a shape larger than
            ``max_shape`` or than its size can hold; the message names the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == _GZIP_MAGIC
            fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
            stream = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
            return _parse_idx(path, stream, gz, size, max_shape)
    except DataFileError:  # a FileNotFoundError subclass: pass it on unchanged
        raise
    except FileNotFoundError as exc:
        raise DataFileError(f"{path}: no such IDX file") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataFileError(f"{path}: cannot read/decompress IDX file: {exc}") from exc


def _parse_idx(path: Path, stream, gz: bool, size: int, max_shape) -> np.ndarray:
    raw = _read_exact(stream, 4)
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
    dims = _read_exact(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataFileError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    if max_shape is not None:
        if len(shape) != len(max_shape):
            raise DataFileError(f"{path}: IDX header declares a {len(shape)}-D shape {shape}, expected "
                                f"{len(max_shape)}-D (at most {tuple(max_shape)})")
        if any(d > m for d, m in zip(shape, max_shape)):
            raise DataFileError(
                f"{path}: IDX header declares shape {shape}, larger than this file can be: at most "
                f"{tuple(max_shape)} (the dataset's known size); refusing to allocate it"
            )
    payload = math.prod(shape) * dtype.itemsize
    expected = header + payload
    if not gz and size != expected:
        kind = "truncated" if size < expected else "has trailing bytes"
        raise DataFileError(
            f"{path}: IDX file {kind}: {size} bytes, expected {expected} for shape {shape} of {dtype.name}"
        )
    if gz and max_shape is None and expected > MAX_GZIP_RATIO * size + 4096:
        raise DataFileError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) in a {size}-byte gzip file, "
            f"more than {MAX_GZIP_RATIO}x (a decompression bomb?); refusing to allocate it"
        )
    data = _read_exact(stream, payload)
    extra = stream.read(1)
    if len(data) != payload or extra:
        kind = "truncated" if len(data) < payload else "has trailing bytes"
        got = f"{header + len(data)}" if len(data) < payload else f"more than {expected}"
        raise DataFileError(
            f"{path}: IDX file {kind}: {got} bytes, expected {expected} for shape "
            f"{shape} of {dtype.name}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, H, W, 1]`` and labels int64 ``[N]`` (0..9) of one split."""
    x = read_idx(images_path, KNOWN_MAX_SHAPES.get(images_path.name))
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataFileError(
            f"{images_path}: expected uint8 images [N, H, W], got {x.dtype} {x.shape}"
        )
    y = read_idx(labels_path, KNOWN_MAX_SHAPES.get(labels_path.name))
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
        y int64 in 0..9, class names "0".."9". Smaller files (fewer or smaller
        images) are accepted.

    Raises:
        DataFileError: ``data_dir`` is None, a file is missing (all expected names are
            listed) or malformed, or a header declares more than the official split
            (60000 / 10000 images of 28x28), checked before anything is allocated.
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
