"""KRR with a low-rank approximation of the kernel (Nystrom or truncated eigh), float64.

Both methods fit the *consistent* low-rank predictor, which approximates the kernel
between targets and support in the same way as ``K_ss`` (predicting with the exact
``K_ts`` but an approximated ``K_ss`` divides the discarded part of the labels by the
ridge, and is useless at small ridges).

``nystrom`` (subset of regressors; Williams & Seeger 2001; Rasmussen & Williams 2006,
sec. 8.3.1): ``m = min(rank, n)`` landmark support points ``idx``
(``numpy.random.default_rng(seed).choice(n, m, replace=False)``, sorted; static under
``jit``), ``C = k(X_s, X_s[idx])`` ``[n, m]``, ``W = C[idx]``,
``L = chol(W + jitter mean(diag W) I)``, features ``F = C L^-T`` (``K_ss ~ F F^T``); with
``lam = ridge * mean(diag W)`` (the relative ridge, estimated on the landmarks: unbiased
for random landmarks, exact for kernels with a constant diagonal)::

    beta = L^-T (F^T F + lam I_m)^-1 F^T y          # [m, k]
    yhat(x_t) = k(x_t, X_s[idx]) beta

:meth:`LowRankSolver.fit` computes only ``C`` and ``k(x_t, X_s[idx])``: cost
``O(n m)`` kernel entries plus ``O(n m^2 + m^3)``, instead of ``n^2`` entries and
``O(n^3)``. :meth:`LowRankSolver.solve` (given a full ``K_ss``, e.g. Label Solve)
returns ``beta`` scattered into the landmark rows of an ``[n, k]`` ``alpha``, so
``K_ts alpha`` is the same predictor. Exact (up to ``jitter``) when ``rank(K) <= m`` and
the landmarks span the range of ``K``; otherwise the error follows the spectrum tail
beyond ``m`` (Drineas & Mahoney 2005, JMLR 6). Differentiable: use it for training.

``eig`` (truncated spectral KRR): ``K_ss = U diag(s) U^T`` by ``xp.linalg.eigh``, keep the
``r = min(rank, n)`` largest pairs, ``alpha = U_r diag(1/(s_r + lam)) U_r^T y`` with the
usual relative ridge; ``K_ts alpha`` is the Nystrom extension of the rank-``r``
eigen-features ``U_r diag(s_r)^(1/2)`` (Williams & Seeger 2001), exact when
``rank(K) <= r``, best rank-``r`` approximation of ``K_ss`` otherwise (Eckart-Young).
Cost ``O(n^3)`` (full eigh): a reference for the error of rank truncation, not a
speed-up. Gradients through ``eigh`` contain ``1/(s_i - s_j)`` and are ill-conditioned
when eigenvalues are (nearly) degenerate: use ``eig`` for evaluation, ``nystrom`` for
training. ``benchmarks/low_rank_error.py`` reports the error against ``m`` / ``r``.

Both need ``ridge > 0`` (``ConfigError`` otherwise).
"""

from __future__ import annotations

import attrs
import numpy as np

from kdistill.core.contracts import KernelPredictor, Solver, relative_ridge
from kdistill.errors import ConfigError
from kdistill.core.validators import nonneg, nonneg_int, one_of, positive_int
from kdistill.ops.linalg import checked_cholesky

METHODS = ("nystrom", "eig")


@attrs.define(kw_only=True)
class LowRankSolver(Solver):
    """Low-rank KRR solve; see the module docstring for math, cost and error.

    Args:
        method: ``"nystrom"`` (default; differentiable, for training) or ``"eig"``
            (truncated eigendecomposition; for evaluation).
        rank: number of landmarks ``m`` (nystrom) or eigenpairs ``r`` (eig), >= 1;
            capped at ``n_s``. Default 64.
        seed: landmark choice (nystrom), integer >= 0.
        jitter: added to the landmark block as ``jitter * mean(diag W)`` (nystrom), >= 0.
    """

    method: str = attrs.field(default="nystrom", validator=one_of(METHODS))
    rank: int = attrs.field(default=64, validator=positive_int)
    seed: int = attrs.field(default=0, validator=nonneg_int)
    jitter: float = attrs.field(default=1e-10, validator=nonneg)

    def _check_ridge(self, ridge) -> None:
        if isinstance(ridge, (int, float)) and not ridge > 0:
            raise ConfigError(
                f"the 'low-rank' solver needs a relative ridge > 0 (its rank-{self.rank} "
                f"approximation of K_ss is singular), got ridge={ridge!r}"
            )

    def fit(self, kernel, x_s, y_s, ridge):
        """As :meth:`Solver.fit`; ``nystrom`` evaluates the kernel only against the
        landmarks (``[n_s, m]`` entries for the support, ``[n_t, m]`` per prediction).

        Raises:
            ConfigError: ``ridge <= 0``.
            NotPositiveDefiniteError: (eager) the landmark block cannot be factored.
        """
        if self.method == "eig":
            return super().fit(kernel, x_s, y_s, ridge)
        self._check_ridge(ridge)
        b = self.b
        idx = b.asarray(self.landmarks(x_s.shape[0]), "int64")
        x_m = b.xp.take(x_s, idx, axis=0)
        c = b.cast(kernel(x_s, x_m), "float64")
        return KernelPredictor(kernel, x_m, self._beta(c, idx, b.cast(y_s, "float64"), ridge))

    def solve(self, k_ss, y, ridge):
        """``alpha`` ``[n, k]`` float64 such that ``K_ts alpha`` is the method's low-rank
        predictor (see the module docstring); ``k_ss`` ``[n, n]``, ``y`` ``[n, k]`` float64.

        Raises:
            ConfigError: ``ridge <= 0``.
            NotPositiveDefiniteError: (eager, nystrom) the landmark block cannot be
                factored even with jitter.
        """
        self._check_ridge(ridge)
        b = self.b
        if self.method == "eig":
            return self._eig(k_ss, y, relative_ridge(b, k_ss, ridge))
        n = k_ss.shape[0]
        landmarks = self.landmarks(n)
        idx = b.asarray(landmarks, "int64")
        beta = self._beta(b.xp.take(k_ss, idx, axis=1), idx, y, ridge)
        scatter = np.zeros((n, len(landmarks)))
        scatter[landmarks, np.arange(len(landmarks))] = 1.0
        return b.asarray(scatter, "float64") @ beta

    def landmarks(self, n: int) -> np.ndarray:
        """Sorted landmark indices ``[min(rank, n)]`` int64 used for ``n`` support points."""
        m = min(self.rank, n)
        return np.sort(np.random.default_rng(self.seed).choice(n, m, replace=False)).astype(np.int64)

    def _beta(self, c, idx, y, ridge):
        """Landmark coefficients ``[m, k]`` from ``C = K[:, idx]`` ``[n, m]`` float64."""
        b = self.b
        xp = b.xp
        w = xp.take(c, idx, axis=0)  # [m, m]
        eye = xp.eye(w.shape[0], dtype=c.dtype, device=b.device_of(c))
        scale = xp.mean(xp.linalg.diagonal(w))
        chol_w = checked_cholesky(b, w + self.jitter * scale * eye, ridge, "Nystrom landmark block W + jitter*I")
        f = b.solve_triangular(chol_w, c.T, lower=True).T  # [n, m], K ~ F F^T
        # lam = ridge * mean(diag W): the absolute ridge estimated on the landmarks (module docstring)
        chol = checked_cholesky(b, f.T @ f + ridge * scale * eye, ridge, "F^T F + ridge*I (Nystrom)")
        return b.solve_triangular(chol_w.T, b.cho_solve(chol, f.T @ y), lower=False)

    def _eig(self, k_ss, y, lam):
        xp = self.b.xp
        n = k_ss.shape[0]
        r = min(self.rank, n)
        evals, evecs = xp.linalg.eigh(k_ss)  # ascending
        u, s = evecs[:, n - r:], evals[n - r:]
        return u @ ((u.T @ y) / (s + lam)[:, None])
