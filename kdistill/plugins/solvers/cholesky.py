"""KRR solve by Cholesky factorization with a bounded jitter retry, float64, O(n_s^3)."""

from __future__ import annotations

import attrs

from kdistill.core.backend import CHOLESKY_JITTERS
from kdistill.core.contracts import Solver, relative_ridge
from kdistill.core.errors import NotPositiveDefiniteError


@attrs.define(kw_only=True)
class CholeskySolver(Solver):
    """``alpha = (L L^T)^-1 y`` with ``L = chol(K_ss + lam tr(K_ss)/n_s I)``.

    If the factorization fails, jitter ``j * mean(diag)`` is added for ``j`` in
    ``kdistill.core.backend.CHOLESKY_JITTERS``; if all fail, eager calls raise
    :class:`NotPositiveDefiniteError` (under ``jit`` the result is NaN, which the
    distillation loop reports with the same advice).
    """

    def solve(self, k_ss, y, ridge):
        b = self.b
        xp = b.xp
        n = k_ss.shape[0]
        a = k_ss + relative_ridge(b, k_ss, ridge) * xp.eye(n, dtype=k_ss.dtype)
        chol, ok = b.psd_cholesky(a)
        if b.is_concrete(ok) and not bool(ok):
            raise NotPositiveDefiniteError(
                f"K_ss + ridge*I ({n}x{n}) is not positive definite even with jitter up to "
                f"{max(CHOLESKY_JITTERS):g} * mean(diag); raise the relative ridge "
                f"(now {ridge:g}; try ridge={max(100 * ridge, 1e-4):g}) or check the support "
                "set for NaN/duplicate points"
            )
        return b.cho_solve(chol, y)
