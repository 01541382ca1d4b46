"""Support-set helpers shared by the outer-loop methods: a class-balanced initial support
set, the validation split, KRR scoring on the test set, the random-subset baseline and
the :class:`~kdistill.io.artifact.DistilledSet` every method returns (:func:`make_result`,
public for third-party methods)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdistill.core.config import DistillConfig
from kdistill.core.krr import accuracy, krr_predict
from kdistill.core.sampling import balanced_subset, centered_one_hot
from kdistill.errors import DataError
from kdistill.io.artifact import DistilledSet
from kdistill.runtime.components import Components, PreparedData


def score_support(kernel, comps: Components, config: DistillConfig, images, labels, x, y, progress=None,
                  count_support: bool = False) -> float:
    """KRR accuracy (fraction in [0, 1]) of the support set ``images [n_s, ...]``,
    ``labels [n_s, C]`` on examples ``x [n, ...]`` with class ids ``y [n]``, under
    ``kernel`` and the run's solver and ridge. ``progress``, ``count_support``: as in
    :func:`kdistill.core.krr.krr_predict`."""
    pred = krr_predict(kernel, comps.solver, images, labels, x, config.ridge, config.dtype, progress=progress,
                       count_support=count_support)
    return accuracy(pred, y)


def evaluation_rows(n_support: int, n_test: int, passes: int = 2) -> int:
    """Work of ``passes`` KRR evaluations, in kernel rows of ``n_support`` entries: each
    pass computes ``K_ss`` (``n_support`` rows) and ``K_ts`` (``n_test`` rows). The total
    of a progress phase over :func:`evaluate_support` with ``count_support=True``."""
    return passes * (int(n_support) + int(n_test))


def split_validation(config: DistillConfig, data: PreparedData) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(pool, valid)``: indices of the training examples left for initialization and
    targets, and of the class-balanced validation split (``config.valid_size`` examples,
    ``valid_size // C`` per class, drawn from a generator of its own, seeded by
    ``[seed, 1]``, so the run's other draws are unchanged). ``(None, None)`` without one.

    Raises:
        DataError: ``valid_size`` is smaller than the number of classes, or leaves a
            class without enough examples.
    """
    if not config.valid_size:
        return None, None
    per_class = config.valid_size // data.num_classes
    if per_class < 1:
        raise DataError(
            f"valid_size={config.valid_size} is smaller than the number of classes "
            f"({data.num_classes}); use at least {data.num_classes} (or 0 for no validation split)"
        )
    valid = balanced_subset(data.y_train, data.num_classes, per_class, np.random.default_rng([config.seed, 1]))
    pool = np.setdiff1d(np.arange(len(data.y_train)), valid)
    return pool, np.sort(valid)


def init_support(config: DistillConfig, data: PreparedData, rng: np.random.Generator, pool: np.ndarray | None = None):
    """Class-balanced initial support set, drawn from ``pool`` (training indices; None =
    all).

    Returns:
        ``(images [n_s, H, W, C] float32, labels [n_s, C] float32, class_ids [n_s] int64)``;
        images are real training examples (``init="real"``) or standard normal noise.
    """
    if pool is None:
        idx = balanced_subset(data.y_train, data.num_classes, config.ipc, rng)
    else:
        idx = pool[balanced_subset(data.y_train[pool], data.num_classes, config.ipc, rng)]
    class_ids = data.y_train[idx]
    if config.init == "real":
        images = data.x_train[idx].copy()
    else:
        images = rng.standard_normal((len(idx), *data.x_train.shape[1:])).astype(np.float32)
    return images, centered_one_hot(class_ids, data.num_classes), class_ids


def evaluate_support(
    comps: Components,
    config: DistillConfig,
    data: PreparedData,
    images: np.ndarray,
    labels: np.ndarray,
    limit: int | None = None,
    progress=None,
    count_support: bool = False,
) -> float:
    """KRR test accuracy of a support set under the evaluation kernel.

    Args:
        images: ``[n_s, H, W, C]``; labels: ``[n_s, C]``.
        limit: use only the first ``limit`` test examples (None = all).
        progress: optional callable ``progress(rows_done)`` after each block of test rows.
        count_support: progress also counts the ``n_s`` rows of ``K_ss``, per kernel tile
            where the kernel reports tiles (:func:`kdistill.core.krr.krr_predict`).
    """
    return score_support(comps.eval_kernel, comps, config, images, labels, data.x_test[:limit], data.y_test[:limit],
                         progress, count_support)


def random_baseline(comps: Components, config: DistillConfig, data: PreparedData, progress=None,
                    count_support: bool = False) -> dict[str, Any]:
    """KRR test accuracy of a random class-balanced real subset of the same size.

    The subset is drawn with seed ``config.seed + 1`` (independent of the support
    initialization) and scored with the same evaluation kernel, solver and ridge.
    ``progress``, ``count_support``: as in :func:`evaluate_support`.
    """
    rng = np.random.default_rng(config.seed + 1)
    idx = balanced_subset(data.y_train, data.num_classes, config.ipc, rng)
    acc = evaluate_support(comps, config, data, data.x_train[idx], data.Y_train[idx], limit=config.test_size,
                           progress=progress, count_support=count_support)
    return {"random_acc": acc}


def make_result(config, data, images, labels, class_ids, metrics, history, loss_params) -> DistilledSet:
    """The :class:`DistilledSet` of a finished run, with the metadata every method records
    (public: third-party methods return their sets through it).

    Args:
        config: the run's DistillConfig; data: its PreparedData (transform, dataset info).
        images: ``[n_s, H, W, C]`` support images in preprocessed space; labels: ``[n_s, C]``;
        class_ids: ``[n_s]`` int; metrics: at least ``method`` and ``distilled_acc``;
        history: per-step lists (``{}`` for methods without steps); loss_params: learned
            loss parameters (``{}`` if none).
    Returns:
        The set, with ``metrics`` extended by the kernels, backend and the provenance of
        every component.
    """
    from kdistill.version import __version__
    from kdistill.core.registry import component_provenance

    metrics = {
        **metrics,
        "kernel": config.kernel.to_dict(),
        "eval_kernel": (config.eval_kernel or config.kernel).to_dict(),
        "backend": config.backend,
        "components": component_provenance(config),  # which package supplied each component
    }

    return DistilledSet(
        images=np.asarray(images, np.float32),
        labels=np.asarray(labels, np.float32),
        class_ids=np.asarray(class_ids, np.int64),
        transform=data.transform,
        config=config.to_dict(),
        metrics=metrics,
        history=history,
        loss_params=loss_params,
        seed=config.seed,
        version=__version__,
        dataset=data.info,
    )
