"""KRR in the feature space of an explicit feature map (primal / Woodbury), float64.

For a kernel ``k(x, x') = Phi(x) . Phi(x')`` with features ``Phi_s = Phi(X_s)``
``[n_s, D]`` and the relative ridge ``lam = ridge * ||Phi_s||_F^2 / n_s`` (equal to
``ridge * tr(K_ss) / n_s``, the convention of :func:`kdistill.core.contracts.absolute_ridge`),
the KRR predictor is ``yhat(x_t) = Phi(x_t) w`` with, by the Woodbury (push-through)
identity ``Phi^T (Phi Phi^T + lam I_n)^-1 = (Phi^T Phi + lam I_D)^-1 Phi^T``::

    D <  n_s (primal):  w = (Phi_s^T Phi_s + lam I_D)^-1 Phi_s^T y    O(n_s D^2 + D^3)
    D >= n_s (dual):    w = Phi_s^T (Phi_s Phi_s^T + lam I_n)^-1 y    O(n_s^2 D + n_s^3)

Neither path forms the target kernel ``K_ts``: predicting ``n_t`` targets costs
``O(n_t D C)``. The choice between the paths uses static shapes, so it is fine under
``jit``. Source: the Woodbury identity as used by RFAD (Loo et al. 2022, "Efficient
Dataset Distillation using Random Feature Approximation", NeurIPS, sec. 3).
"""

from __future__ import annotations

from typing import Any

import attrs

from kdistill.core.contracts import Kernel, Predictor, Solver, absolute_ridge
from kdistill.ops.linalg import checked_cholesky, cholesky_solve


class FeaturePredictor(Predictor):
    """``yhat(x_t) = Phi(x_t) @ w`` with primal weights ``w`` ``[D, C]`` float64."""

    def __init__(self, kernel: Kernel, w: Any):
        self.kernel, self.w = kernel, w

    def __call__(self, x_t):
        """``[n_t, C]`` float64 predictions for ``x_t`` ``[n_t, ...]``."""
        return self.kernel.b.cast(self.kernel.features(x_t), "float64") @ self.w


@attrs.define(kw_only=True)
class FeatureSolver(Solver):
    """KRR through the kernel's feature map; see the module docstring for the math.

    :meth:`fit` with a kernel without a feature map (``has_features`` False, e.g. the
    exact ConvNet kernel that evaluates an RFAD run with the same solver) is the
    kernel-space Cholesky fit of :class:`~kdistill.plugins.solvers.cholesky.CholeskySolver`;
    :meth:`solve` on a given kernel matrix (Label Solve) is the Cholesky solve of
    :class:`~kdistill.plugins.solvers.cholesky.CholeskySolver` (same jitter and
    :class:`~kdistill.errors.NotPositiveDefiniteError`). Everything is float64.
    """

    def fit(self, kernel, x_s, y_s, ridge):
        """As :meth:`Solver.fit`; returns a :class:`FeaturePredictor`.

        Raises:
            NotPositiveDefiniteError: (eager calls) the regularized system cannot be
                factored even with jitter (e.g. ``ridge = 0`` and rank-deficient features).
        """
        if not kernel.has_features:
            return super().fit(kernel, x_s, y_s, ridge)  # kernel space, via solve()
        b = self.b
        xp = b.xp
        phi = b.cast(kernel.features(x_s), "float64")  # [n, D]
        y = b.cast(y_s, "float64")
        n, d = phi.shape
        if d < n:
            lam = absolute_ridge(ridge, xp.sum(phi * phi), n)  # tr(Phi Phi^T) = ||Phi||_F^2
            a = phi.T @ phi + lam * xp.eye(d, dtype=phi.dtype, device=b.device_of(phi))
            chol = checked_cholesky(b, a, ridge, "Phi_s^T Phi_s + ridge*I")
            w = b.cho_solve(chol, phi.T @ y)
        else:
            w = phi.T @ cholesky_solve(b, phi @ phi.T, y, ridge)
        return FeaturePredictor(kernel, w)

    def solve(self, k_ss, y, ridge):
        return cholesky_solve(self.b, k_ss, y, ridge)
