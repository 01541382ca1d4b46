"""Exact KRR solve by LU factorization (``linalg.solve``), float64, O(n_s^3)."""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Solver, relative_ridge


@attrs.define(kw_only=True)
class ExactSolver(Solver):
    """``alpha = solve(K_ss + lam tr(K_ss)/n_s I, y)`` with a general LU solve.

    No jitter: a singular system gives non-finite values, which the distillation loop
    reports. Use ``cholesky`` for automatic jitter.
    """

    def solve(self, k_ss, y, ridge):
        b = self.b
        xp = b.xp
        n = k_ss.shape[0]
        a = k_ss + relative_ridge(b, k_ss, ridge) * xp.eye(n, dtype=k_ss.dtype)
        return xp.linalg.solve(a, y)
