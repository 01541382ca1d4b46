"""Label Solve (Nguyen et al. 2021, ICLR, Sec. 3): keep real support images and solve
for the labels that minimize the KRR loss on a target batch, in closed form.

:func:`label_solve` is the closed-form solve on numpy arrays; :func:`run_label_solve`
is the registered method (``method = "label-solve"``) built on it."""

from __future__ import annotations

import time

import numpy as np

from kdistill.core.config import DistillConfig
from kdistill.core.contracts import Kernel, Solver
from kdistill.core.krr import (
    BLOCK_SIZE,
    accuracy,
    as_real_array,
    check_finite,
    check_kernel_matrix,
    check_support,
    check_targets,
    iter_blocks,
    krr_predict,
    pad_rows,
)
from kdistill.core.sampling import TargetSampler
from kdistill.core.validators import plain
from kdistill.errors import ConfigError, DataError
from kdistill.io.artifact import DistilledSet
from kdistill.runtime.components import Components, PreparedData
from kdistill.runtime.progress import listen_pairs
from kdistill.runtime.progress import phase as progress_phase
from kdistill.runtime.support import evaluation_rows, init_support, make_result, random_baseline


def label_solve(
    kernel: Kernel,
    solver: Solver,
    x_s: np.ndarray,
    x_t: np.ndarray,
    y_t: np.ndarray,
    ridge: float,
    label_ridge: float = 1e-6,
    dtype: str = "float32",
    block_size: int = BLOCK_SIZE,
    progress=None,
) -> np.ndarray:
    """Label Solve: the support labels that minimize the KRR target MSE.

    With ``A = K_ts (K_ss + lam I)^-1`` ``[n_t, n_s]``, the least-norm minimizer of
    ``||y_t - A y_s||^2`` is ``A^+ y_t`` (Nguyen et al. 2021, ICLR, sec. 3). It is
    computed through the regularized normal equation
    ``(A^T A + r I) y_s = A^T y_t`` with ``r = label_ridge * tr(A^T A) / n_s``,
    accumulating ``A^T A`` and ``A^T y_t`` over target blocks (memory ``O(n_s^2)``),
    in float64, never forming an explicit inverse.

    Args:
        x_s: ``[n_s, ...]`` support inputs; x_t: ``[n_t, ...]`` targets;
        y_t: ``[n_t, C]`` target labels. ridge: relative KRR ridge ``lam``.
        label_ridge: relative Tikhonov ``r`` of the normal equation (> 0).
        progress: optional callable ``progress(rows)`` receiving the work done in kernel
            rows of ``n_s`` entries, ``n_s + n_t`` in all (``K_ss``, then the target
            blocks); per tile (fractional rows) for kernels that report tiles
            (:func:`kdistill.runtime.progress.report_pairs`), else once per block.
    Returns:
        ``[n_s, C]`` float64 labels.
    Raises:
        DataError: as :func:`kdistill.core.krr.krr_predict`, and ``y_t`` not ``[n_t, C]`` with ``n_t``
            matching ``x_t``. ConfigError: also ``label_ridge`` <= 0.
        NotPositiveDefiniteError, NumericalError: singular systems, NaN/Inf labels,
            a numerically degenerate kernel (:func:`kdistill.core.krr.check_kernel_matrix`).
    """
    x_s, _ = check_support(kernel, solver, x_s, None, ridge, dtype, block_size)
    x_t = check_targets(x_t, x_s)
    y_t = as_real_array(y_t, "y_t (target labels [n_t, C])", ndim=2)
    if len(x_t) != len(y_t):
        raise DataError(f"x_t has {len(x_t)} rows but y_t has {len(y_t)}")
    if len(x_t) == 0 or y_t.shape[1] == 0:
        raise DataError(f"label_solve needs at least one target and one class; got y_t of shape {y_t.shape}")
    if isinstance(label_ridge, bool) or not isinstance(label_ridge, (int, float)) or not (
        np.isfinite(label_ridge) and label_ridge > 0
    ):
        raise ConfigError(f"label_ridge must be a finite number > 0, got {plain(label_ridge)!r}")
    check_kernel_matrix(kernel, x_s, dtype)
    b = solver.b
    xp = b.xp
    xs = b.asarray(x_s, dtype)
    n_s, sent = len(x_s), [0.0]

    def on_pairs(pairs: int) -> None:  # a kernel tile: pairs / n_s rows
        sent[0] += pairs / n_s
        progress(pairs / n_s)

    def top_up(rows: int) -> None:
        rest, sent[0] = max(0.0, rows - sent[0]), 0.0
        if rest:
            progress(rest)

    with listen_pairs(on_pairs if progress is not None else None):
        k_ss = b.cast(kernel(xs, xs), "float64")
        if progress is not None:
            top_up(n_s)
        gram = xp.zeros((n_s, n_s), dtype=b.dtype("float64"), device=b.device_of(k_ss))
        rhs = xp.zeros((n_s, y_t.shape[1]), dtype=b.dtype("float64"), device=b.device_of(k_ss))
        for sl in iter_blocks(len(x_t), block_size * b.shards):  # a block's targets split over the shards
            x_b, y_b, keep = x_t[sl], y_t[sl], None
            if b.shards > 1:  # pad to a multiple of the shards; padded targets get weight 0
                x_b, y_b = pad_rows(x_b, b.shards), pad_rows(y_b, b.shards)
                keep = b.shard_rows(np.arange(len(x_b)) < sl.stop - sl.start, "float64")
            k_st = b.cast(kernel(xs, b.shard_rows(x_b, dtype)), "float64")  # [n_s, m]
            a_t = solver.solve(k_ss, k_st, ridge)  # (K_ss + lam I)^-1 K_st = A^T [n_s, m]
            if keep is not None:
                a_t = a_t * keep
            gram = gram + a_t @ a_t.T
            rhs = rhs + a_t @ b.shard_rows(y_b, "float64")
            if progress is not None:
                top_up(sl.stop - sl.start)
    # torch processes hold partial sums over their targets; a JAX mesh's are global already
    gram, rhs = b.sum_shards(gram), b.sum_shards(rhs)
    y_s = solver.solve(gram, rhs, label_ridge)
    return check_finite(b.to_numpy(y_s), "solved labels", ridge, dtype)


def run_label_solve(config: DistillConfig, comps: Components, data: PreparedData, callback=None, run_dir=None,
                    resume: bool = False) -> DistilledSet:
    """Label Solve: keep class-balanced real support images, solve for their labels.

    ``callback``, ``run_dir`` and ``resume`` are accepted for the uniform method
    signature (:data:`METHODS`) and unused: Label Solve has no steps.

    Targets are a class-balanced subset of ``config.target_batch`` training examples
    (all of them if ``target_batch`` >= the training set size). The random-subset
    baseline here is the same support images with their original labels.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    images, labels, class_ids = init_support(config, data, rng)
    idx = TargetSampler(data.y_train, data.num_classes, config.target_batch, rng)()
    # progress phases (kdistill.runtime.progress) in kernel rows of n_s entries
    with progress_phase("label solve", len(images) + len(idx), "row") as bar:
        solved = label_solve(
            comps.kernel, comps.solver, images, data.x_train[idx], data.Y_train[idx],
            config.ridge, dtype=config.dtype, progress=bar.update,
        )
    solve_seconds = time.perf_counter() - start
    # one kernel pass scores both label sets (KRR predictions are linear in the labels)
    x_test, y_test = data.x_test[: config.test_size], data.y_test[: config.test_size]
    bar = progress_phase("final evaluation", evaluation_rows(len(images), len(x_test)), "row")
    with bar:
        pred = krr_predict(
            comps.eval_kernel, comps.solver, images, np.concatenate([solved, labels], axis=1),
            x_test, config.ridge, config.dtype, progress=bar.update, count_support=True,
        )
        random = random_baseline(comps, config, data, progress=bar.update, count_support=True)
    n_cls = labels.shape[1]
    metrics = {
        "method": "label-solve",
        "distilled_acc": accuracy(pred[:, :n_cls], y_test),
        "init_acc": accuracy(pred[:, n_cls:], y_test),
        "n_test": int(len(x_test)),
        "n_targets": int(len(idx)),
        "train_seconds": solve_seconds,
    }
    metrics.update(random)
    metrics["total_seconds"] = time.perf_counter() - start
    return make_result(config, data, images, solved.astype(np.float32), class_ids, metrics, {}, {})
