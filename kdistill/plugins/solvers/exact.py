"""Exact KRR solve by LU factorization with partial pivoting, float64, O(n_s^3)."""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Solver, relative_ridge
from kdistill.errors import NotPositiveDefiniteError


@attrs.define(kw_only=True)
class ExactSolver(Solver):
    """``alpha = solve(K_ss + lam tr(K_ss)/n_s I, y)`` with a general LU solve.

    No jitter: a numerically singular system (an LU pivot at or below ``n eps`` times
    the largest, :meth:`Backend.pivots_ok`; decided from the pivots, not from whether
    LAPACK happened to return NaN) raises :class:`NotPositiveDefiniteError` in eager
    calls and gives NaN under ``jit``, which the distillation loop reports and recovers
    from with a raised ridge. Use ``cholesky`` for automatic jitter.
    """

    def solve(self, k_ss, y, ridge):
        b = self.b
        xp = b.xp
        n = k_ss.shape[0]
        a = k_ss + relative_ridge(b, k_ss, ridge) * xp.eye(n, dtype=k_ss.dtype, device=b.device_of(k_ss))
        alpha, pivots = b.lu_solve(a, y)
        ok = b.pivots_ok(pivots)
        if not b.is_concrete(ok):
            return xp.where(ok, alpha, float("nan"))
        if not bool(ok):
            raise NotPositiveDefiniteError(
                f"K_ss + ridge*I ({n}x{n}) is singular (smallest LU pivot "
                f"{float(b.to_numpy(xp.min(pivots))):.3g}, largest {float(b.to_numpy(xp.max(pivots))):.3g}); "
                f"raise the relative "
                f"ridge (now {ridge:g}) or use the cholesky solver, which adds a bounded jitter"
            )
        return alpha
