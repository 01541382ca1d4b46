"""Exact KRR solve by LU factorization (``linalg.solve``), float64, O(n_s^3)."""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Solver, relative_ridge
from kdistill.core.errors import NotPositiveDefiniteError


@attrs.define(kw_only=True)
class ExactSolver(Solver):
    """``alpha = solve(K_ss + lam tr(K_ss)/n_s I, y)`` with a general LU solve.

    No jitter: a singular system gives non-finite values (JAX), which the distillation
    loop reports, or :class:`NotPositiveDefiniteError` where the backend detects it
    (torch). Use ``cholesky`` for automatic jitter.
    """

    def solve(self, k_ss, y, ridge):
        b = self.b
        xp = b.xp
        n = k_ss.shape[0]
        a = k_ss + relative_ridge(b, k_ss, ridge) * xp.eye(n, dtype=k_ss.dtype)
        try:
            return xp.linalg.solve(a, y)
        except RuntimeError as exc:  # torch.linalg.LinAlgError: exactly singular
            raise NotPositiveDefiniteError(
                f"K_ss + ridge*I ({n}x{n}) is singular ({exc}); raise the relative ridge "
                f"(now {ridge:g}) or use the cholesky solver, which adds a bounded jitter"
            ) from exc
