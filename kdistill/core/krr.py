"""Kernel ridge regression on host data: blocked prediction, accuracy, Label Solve.

These functions take numpy inputs, move blocks to the backend of the (bound) kernel
and solver, and return numpy outputs. They are what evaluation and Label Solve use;
the distillation loop calls ``solver.fit`` directly on backend arrays.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from kdistill.core.contracts import Kernel, Solver
from kdistill.core.errors import DataError

#: Default number of target rows per kernel block.
BLOCK_SIZE = 2048


def iter_blocks(n: int, block_size: int = BLOCK_SIZE) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, each at most ``block_size`` long."""
    for start in range(0, n, block_size):
        yield slice(start, min(start + block_size, n))


def krr_predict(
    kernel: Kernel,
    solver: Solver,
    x_s: np.ndarray,
    y_s: np.ndarray,
    x_t: np.ndarray,
    ridge: float,
    dtype: str = "float32",
    block_size: int = BLOCK_SIZE,
    progress=None,
) -> np.ndarray:
    """KRR predictions of a support set on targets.

    Args:
        kernel, solver: bound to the same backend.
        x_s: ``[n_s, ...]`` support inputs; y_s: ``[n_s, C]`` support labels.
        x_t: ``[n_t, ...]`` targets, predicted ``block_size`` rows at a time.
        ridge: relative ridge; dtype: dtype of the kernel computation.
        progress: optional callable ``progress(n_rows_done)`` after each block.
    Returns:
        ``[n_t, C]`` float64 predictions.
    """
    b = solver.b
    predictor = solver.fit(kernel, b.asarray(x_s, dtype), b.asarray(y_s, "float64"), ridge)
    out = np.empty((len(x_t), y_s.shape[1]), dtype=np.float64)
    for sl in iter_blocks(len(x_t), block_size):
        out[sl] = b.to_numpy(predictor(b.asarray(x_t[sl], dtype)))
        if progress is not None:
            progress(sl.stop - sl.start)
    return out


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``pred [n, C]`` whose argmax equals ``labels [n]`` (int)."""
    return float(np.mean(np.argmax(pred, axis=1) == labels))


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
    Returns:
        ``[n_s, C]`` float64 labels.
    Raises:
        DataError: mismatched lengths. NotPositiveDefiniteError: singular systems.
    """
    if len(x_t) != len(y_t):
        raise DataError(f"x_t has {len(x_t)} rows but y_t has {len(y_t)}")
    b = solver.b
    xp = b.xp
    xs = b.asarray(x_s, dtype)
    k_ss = b.cast(kernel(xs, xs), "float64")
    n_s = k_ss.shape[0]
    gram = xp.zeros((n_s, n_s), dtype=b.dtype("float64"))
    rhs = xp.zeros((n_s, y_t.shape[1]), dtype=b.dtype("float64"))
    for sl in iter_blocks(len(x_t), block_size):
        k_st = b.cast(kernel(xs, b.asarray(x_t[sl], dtype)), "float64")  # [n_s, m]
        a_t = solver.solve(k_ss, k_st, ridge)  # (K_ss + lam I)^-1 K_st = A^T [n_s, m]
        gram = gram + a_t @ a_t.T
        rhs = rhs + a_t @ b.asarray(y_t[sl], "float64")
    y_s = solver.solve(gram, rhs, label_ridge)
    return b.to_numpy(y_s)
