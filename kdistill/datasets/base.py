"""The helpers shared by the dataset loaders (finding their files).

The :class:`~kdistill.core.contracts.Dataset` contract that every loader returns, and
its checks :func:`~kdistill.core.contracts.check_images` and
:func:`~kdistill.core.contracts.check_labels`, live in :mod:`kdistill.core.contracts`;
they are re-exported here for code that imports them from this module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from kdistill.core.contracts import IMAGE_DTYPES, Dataset, check_images, check_labels
from kdistill.errors import DataFileError

__all__ = ["IMAGE_DTYPES", "Dataset", "check_images", "check_labels", "resolve_dir"]


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
