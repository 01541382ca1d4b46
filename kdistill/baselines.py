"""Baseline support sets of the same size and format as a distilled set.

Every baseline is a :class:`~kdistill.io.artifact.DistilledSet` in the *same
preprocessed space* (the distilled artifact's own transform) with centered one-hot
labels, so ``kdistill evaluate`` scores distilled sets and baselines through one
code path and under one protocol:

- ``random``: ``ipc`` class-balanced random real training images
  (``numpy.random.default_rng(seed)``, the draw KIP uses for its initialization);
- ``kmeans``: per class, the ``ipc`` k-means centroids of that class's training
  images (scikit-learn ``KMeans(n_clusters=ipc, n_init=n_init, random_state=seed)``
  on flattened preprocessed pixels);
- ``herding``: per class, greedy mean matching (Welling 2009; the "herding" baseline
  of the dataset-distillation literature): pick, one at a time and without
  replacement, the real image that brings the mean of the picked images closest
  (Euclidean, preprocessed pixel space) to the class mean. Deterministic.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from kdistill.errors import ConfigError, DataError
from kdistill.core.sampling import balanced_subset, centered_one_hot, class_indices

BASELINES = ("random", "kmeans", "herding")


#: the largest seed every baseline accepts (scikit-learn's ``random_state`` for k-means)
MAX_SEED = 2**32 - 1


def _show(value) -> str:
    """``value`` for a message: numpy scalars as the plain numbers users wrote."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_seed(seed) -> int:
    """The baseline seed as an int.

    Raises:
        ConfigError: not an integer in ``[0, 2**32 - 1]``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED}, got {_show(seed)}")
    return int(seed)


def _check(x: np.ndarray, y: np.ndarray, num_classes: int, ipc: int) -> None:
    if x.ndim < 2 or len(x) != len(y):
        raise DataError(f"images {x.shape} and labels {y.shape} disagree")
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ConfigError(f"ipc must be an integer >= 1, got {_show(ipc)}")
    for c, idx in enumerate(class_indices(y, num_classes)):
        if len(idx) < ipc:
            raise DataError(f"class {c} has only {len(idx)} training examples, fewer than ipc={ipc}")


def random_subset(y: np.ndarray, num_classes: int, ipc: int, seed: int) -> np.ndarray:
    """``[num_classes * ipc]`` int64 indices, ``ipc`` distinct per class, grouped by class."""
    return balanced_subset(y, num_classes, ipc, np.random.default_rng(seed))


def herding_select(features: np.ndarray, m: int) -> np.ndarray:
    """Greedy mean matching: ``m`` distinct row indices of ``features [n, d]``.

    Step k picks ``argmin_i ||mu - (s + f_i) / k||`` over unpicked rows, where ``mu`` is
    the mean of all rows and ``s`` the sum of the rows picked so far (ties: lowest index).

    Returns:
        ``[m]`` int64 indices in pick order.
    Raises:
        DataError: ``m`` > n.
    """
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    if m > len(f):
        raise DataError(f"herding needs {m} points but only {len(f)} are given")
    mu = f.mean(axis=0)
    s = np.zeros_like(mu)
    free = np.ones(len(f), bool)
    picked = []
    for k in range(1, m + 1):
        # ||mu - (s + f_i)/k||^2 up to a constant: ||f_i||^2 - 2 f_i.(k mu - s)
        score = np.einsum("ij,ij->i", f, f) - 2.0 * f @ (k * mu - s)
        score[~free] = np.inf
        i = int(np.argmin(score))
        picked.append(i)
        free[i] = False
        s += f[i]
    return np.array(picked, np.int64)


def herding_subset(x: np.ndarray, y: np.ndarray, num_classes: int, ipc: int, progress=None) -> np.ndarray:
    """``[num_classes * ipc]`` indices: :func:`herding_select` within each class.
    ``progress``: optional callable, ``progress(1)`` after each class."""
    _check(x, y, num_classes, ipc)
    out = []
    for idx in class_indices(y, num_classes):
        out.append(idx[herding_select(x[idx].reshape(len(idx), -1), ipc)])
        if progress is not None:
            progress(1)
    return np.concatenate(out)


def kmeans_centroids(
    x: np.ndarray, y: np.ndarray, num_classes: int, ipc: int, seed: int, n_init: int = 1, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class k-means centroids.

    Args:
        x: ``[n, H, W, C]`` (any trailing shape) float; y: ``[n]`` int class ids.
        progress: optional callable, ``progress(1)`` after each class.
    Returns:
        ``(centroids [num_classes * ipc, H, W, C] float32, class_ids [num_classes * ipc] int64)``,
        grouped by class, each class's centroids in scikit-learn's cluster order.
    """
    from sklearn.cluster import KMeans

    _check(x, y, num_classes, ipc)
    cents, ids = [], []
    for c, idx in enumerate(class_indices(y, num_classes)):
        km = KMeans(n_clusters=ipc, n_init=n_init, random_state=seed)
        km.fit(x[idx].reshape(len(idx), -1).astype(np.float64))
        cents.append(km.cluster_centers_.reshape(ipc, *x.shape[1:]).astype(np.float32))
        ids.append(np.full(ipc, c, np.int64))
        if progress is not None:
            progress(1)
    return np.concatenate(cents), np.concatenate(ids)


def make_baseline(kind: str, data, ipc: int, seed: int, config: dict[str, Any],
                  dataset_info: dict[str, Any] | None = None, progress=None):
    """A baseline :class:`DistilledSet` of ``ipc`` images per class. ``progress``:
    optional callable receiving the classes done (``num_classes`` in all).

    Args:
        kind: ``random``, ``kmeans`` or ``herding``.
        data: :class:`kdistill.runtime.components.PreparedData` (preprocessed, the
            transform the baseline will carry).
        config: the run config dict to store (the distilled set's, so the baseline
            loads the same dataset); ``ipc``, ``steps=0``, ``learn_labels=false`` and
            ``seed`` are set.
    Raises:
        ConfigError: unknown kind, bad ipc, or a seed not in ``[0, 2**32 - 1]``.
        DataError: a class with fewer than ipc images.
    """
    from kdistill.io.artifact import DistilledSet

    if kind not in BASELINES:
        raise ConfigError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
    seed = check_seed(seed)
    _check(data.x_train, data.y_train, data.num_classes, ipc)
    start = time.perf_counter()
    if kind == "kmeans":
        images, class_ids = kmeans_centroids(data.x_train, data.y_train, data.num_classes, ipc, seed,
                                             progress=progress)
    else:
        if kind == "random":
            idx = random_subset(data.y_train, data.num_classes, ipc, seed)
            if progress is not None:
                progress(data.num_classes)
        else:
            idx = herding_subset(data.x_train, data.y_train, data.num_classes, ipc, progress=progress)
        images, class_ids = data.x_train[idx].astype(np.float32), data.y_train[idx].astype(np.int64)
    cfg = {**config, "ipc": int(ipc), "steps": 0, "learn_labels": False, "seed": int(seed)}
    return DistilledSet(
        images=images,
        labels=centered_one_hot(class_ids, data.num_classes),
        class_ids=class_ids,
        transform=data.transform,
        config=cfg,
        metrics={"method": f"baseline:{kind}", "baseline": kind, "seconds": time.perf_counter() - start},
        history={},
        seed=int(seed),
        dataset=dict(dataset_info or data.info),
    )


def baselines_for(artifact, kinds=BASELINES, seed: int | None = None, data=None,
                  overrides: dict[str, Any] | list[str] | None = None, check_data: bool = True) -> dict[str, Any]:
    """Baselines matching a distilled artifact: same dataset, transform and size per class.

    Args:
        artifact: the distilled :class:`DistilledSet`; its support size must be a
            multiple of the number of classes.
        seed: baseline seed (default: the artifact's seed).
        data: PreparedData in the artifact's space (default: loaded with its transform).
        check_data: refuse (default) or only warn about loaded data that differ from
            those the artifact was distilled from
            (:func:`kdistill.runtime.evaluate.prepare_with_transform`).
    Returns:
        ``{kind: DistilledSet}``. Progress: the phase ``"baselines"`` of the active
        reporter (:mod:`kdistill.runtime.progress`), one unit per class and kind.
    Raises:
        ConfigError: ``seed`` is not an integer in ``[0, 2**32 - 1]`` (checked first).
        DataError: see :func:`kdistill.runtime.evaluate.prepare_with_transform`.
    """
    from kdistill.core.config import DistillConfig
    from kdistill.runtime.evaluate import prepare_with_transform

    if seed is not None:
        seed = check_seed(seed)  # before the data is loaded
    config = DistillConfig.from_artifact(artifact.config).with_overrides(overrides or {})
    if data is None:
        data = prepare_with_transform(config, artifact, check_data=check_data)
    n = len(artifact.images)
    if n % data.num_classes:
        raise DataError(f"the artifact has {n} images, not a multiple of {data.num_classes} classes")
    ipc = n // data.num_classes
    seed = artifact.seed if seed is None else seed
    from kdistill.runtime.progress import phase as progress_phase

    with progress_phase("baselines", len(kinds) * data.num_classes, "class") as bar:
        return {k: make_baseline(k, data, ipc, seed, config.to_dict(), artifact.dataset or data.info,
                                 progress=bar.update) for k in kinds}
