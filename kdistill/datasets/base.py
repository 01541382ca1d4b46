"""The :class:`Dataset` container and the helpers shared by every dataset loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import attrs
import numpy as np

from kdistill.errors import DataError, DataFileError

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


def check_images(x: np.ndarray, what: str, error: type[DataError] = DataError) -> None:
    """Check that ``x`` is a 4-D NHWC image array of dtype uint8 or float32.

    Float images must be finite. ``what`` names the array (or file) in the message.

    Raises:
        error (default :class:`DataError`): wrong type, rank, dtype or non-finite values.
    """
    if not isinstance(x, np.ndarray):
        raise error(f"{what}: expected a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise error(f"{what}: expected 4-D images [N, H, W, C], got shape {x.shape}")
    if min(x.shape[1:]) < 1:
        raise error(f"{what}: images need H, W, C >= 1, got shape {x.shape}")
    if x.dtype not in IMAGE_DTYPES:
        raise error(f"{what}: expected images of dtype uint8 or float32, got {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise error(f"{what}: images contain NaN or infinite values")


def check_labels(
    y: np.ndarray,
    num_classes: int,
    what: str,
    count: int | None = None,
    error: type[DataError] = DataError,
) -> None:
    """Check that ``y`` is a 1-D integer label array with values in ``0..num_classes-1``.

    If ``count`` is given, ``y`` must hold exactly that many labels.

    Raises:
        error (default :class:`DataError`): wrong type, rank, dtype, length or values.
    """
    if not isinstance(y, np.ndarray):
        raise error(f"{what}: expected a numpy array of labels, got {type(y).__name__}")
    if y.ndim != 1:
        raise error(f"{what}: expected 1-D labels [N], got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise error(f"{what}: expected integer labels, got dtype {y.dtype}")
    if count is not None and y.shape[0] != count:
        raise error(f"{what}: {y.shape[0]} labels for {count} images")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise error(
            f"{what}: labels must lie in 0..{num_classes - 1}, "
            f"found values in {int(y.min())}..{int(y.max())}"
        )


def _as_int64_labels(y):
    """attrs converter: integer label arrays become int64; anything else is left for
    validation to reject."""
    y = np.asarray(y)
    return y.astype(np.int64, copy=False) if y.dtype.kind in "iu" else y


@attrs.frozen(eq=False)
class Dataset:
    """A labelled image dataset split into train and test parts.

    Attributes:
        name: the registered dataset name, e.g. ``"mnist"``.
        x_train: images ``[N_train, H, W, C]`` (NHWC), dtype uint8 (0..255) or float32
            (finite, on the 0..255 scale).
        y_train: labels ``[N_train]``, int64, values in ``0..num_classes-1``. Integer
            arrays of any other integer dtype are converted to int64.
        x_test: images ``[N_test, H, W, C]``, same H, W, C and dtype as ``x_train``.
        y_test: labels ``[N_test]``, int64, values in ``0..num_classes-1``.
        num_classes: number of classes (> 0).
        class_names: ``num_classes`` human-readable class names, index = label.

    Raises:
        DataError: on construction, if any of the above does not hold.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray = attrs.field(converter=_as_int64_labels)
    x_test: np.ndarray
    y_test: np.ndarray = attrs.field(converter=_as_int64_labels)
    num_classes: int
    class_names: tuple[str, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 1:
            raise DataError(
                f"{where}: num_classes must be a positive int, got {self.num_classes!r}"
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{where}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            check_images(x, f"{where}: x_{split}")
            check_labels(y, self.num_classes, f"{where}: y_{split}", count=x.shape[0])
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{where}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in [H, W, C]"
            )
        if self.x_train.dtype != self.x_test.dtype:
            raise DataError(
                f"{where}: train dtype {self.x_train.dtype} differs from test dtype "
                f"{self.x_test.dtype}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image_shape={self.image_shape}, dtype={self.x_train.dtype}, "
            f"num_classes={self.num_classes})"
        )


def resolve_dir(
    data_dir: str | os.PathLike | None,
    dataset_name: str,
    expected_files: Sequence[str],
    subdirs: Iterable[str] = (),
    *,
    source: str | None = None,
) -> Path:
    """Return the directory that holds every file in ``expected_files``.

    ``data_dir`` itself is tried first, then ``data_dir / sub`` for each ``sub`` in
    ``subdirs`` (e.g. ``"cifar-10-batches-py"``).

    Args:
        data_dir: the user's ``--data-dir``; ``None`` is an error.
        dataset_name: used in error messages.
        expected_files: file names that must all be present in one directory.
        subdirs: sub-directories of ``data_dir`` that are tried as well.
        source: where the files can be downloaded, quoted in error messages.

    Raises:
        DataFileError: ``data_dir`` is None, or no candidate directory holds all the
            expected files. The message names the dataset, each directory tried, every
            missing file and where to get the data.
    """
    where_to_get = f" Download it from {source}." if source else ""
    wanted = ", ".join(expected_files)
    if data_dir is None:
        raise DataFileError(
            f"dataset {dataset_name!r} is read from files: --data-dir is required for this "
            f"dataset (a directory holding {wanted}).{where_to_get}"
        )
    root = Path(data_dir).expanduser()
    candidates = [root] + [root / sub for sub in subdirs]
    problems = []
    for cand in candidates:
        missing = [f for f in expected_files if not (cand / f).is_file()]
        if not missing:
            return cand
        if cand.is_dir():
            problems.append(f"{cand} (missing: {', '.join(missing)})")
        else:
            problems.append(f"{cand} (no such directory)")
    raise DataFileError(
        f"dataset {dataset_name!r}: expected files not found: {wanted}. Tried: "
        f"{'; '.join(problems)}.{where_to_get}"
    )
