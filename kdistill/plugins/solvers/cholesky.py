"""KRR solve by Cholesky factorization with a bounded jitter retry, float64, O(n_s^3)."""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Solver
from kdistill.ops.linalg import cholesky_solve


@attrs.define(kw_only=True)
class CholeskySolver(Solver):
    """``alpha = (L L^T)^-1 y`` with ``L = chol(K_ss + lam tr(K_ss)/n_s I)``.

    If the factorization fails, jitter ``j * mean(diag)`` is added for ``j`` in
    ``kdistill.core.backend.CHOLESKY_JITTERS`` (:func:`kdistill.ops.linalg.checked_cholesky`); if all fail, eager calls raise
    :class:`NotPositiveDefiniteError` (under ``jit`` the result is NaN, which the
    distillation loop reports with the same advice).
    """

    def solve(self, k_ss, y, ridge):
        return cholesky_solve(self.b, k_ss, y, ridge)
