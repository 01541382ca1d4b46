"""Linear algebra that solvers share: the float64 Cholesky factor of a ridge-regularized
system, checked for positive definiteness, and the solve through it."""

from __future__ import annotations

from typing import Any

from kdistill.core.backend import CHOLESKY_JITTERS, Backend
from kdistill.core.contracts import relative_ridge
from kdistill.errors import NotPositiveDefiniteError


def checked_cholesky(b: Backend, a: Any, ridge: float, what: str = "K_ss + ridge*I") -> Any:
    """Lower Cholesky factor of the regularized system ``a`` (``[n, n]`` float64) by
    :meth:`Backend.psd_cholesky` (bounded jitter retry).

    Raises:
        NotPositiveDefiniteError: (eager calls) every jitter failed; the message names
            ``what`` and suggests a larger relative ``ridge``. Under ``jit`` the factor
            is NaN instead, which the distillation loop reports.
    """
    chol, ok = b.psd_cholesky(a)
    if b.is_concrete(ok) and not bool(ok):
        n = a.shape[0]
        raise NotPositiveDefiniteError(
            f"{what} ({n}x{n}) is not positive definite even with jitter up to "
            f"{max(CHOLESKY_JITTERS):g} * mean(diag); raise the relative ridge "
            f"(now {ridge:g}; try ridge={max(100 * ridge, 1e-4):g}) or check the support "
            "set for NaN/duplicate points"
        )
    return chol


def cholesky_solve(b: Backend, k_ss: Any, y: Any, ridge: float) -> Any:
    """``(K_ss + lam tr(K_ss)/n_s I)^-1 y`` for ``k_ss`` ``[n, n]``, ``y`` ``[n, k]``
    float64, via :func:`checked_cholesky` (same errors)."""
    xp = b.xp
    a = k_ss + relative_ridge(b, k_ss, ridge) * xp.eye(k_ss.shape[0], dtype=k_ss.dtype, device=b.device_of(k_ss))
    return b.cho_solve(checked_cholesky(b, a, ridge), y)
