"""Example random kernel: random Fourier features of the Laplace kernel (``laplace-rff``).

A :class:`kdistill.core.contracts.RandomKernel` written against the contract only (no
kdistill internals), resampled every KIP step like RFAD's networks (Loo et al. 2022):

    Phi(x) = sqrt(2 / D) cos(x W + 2 pi u),   W[:, j] = gamma / sqrt(d) * z_j / |g_j|

with ``z_j ~ N(0, I_d)``, ``g_j ~ N(0, 1)``, ``u_j ~ U[0, 1)`` for ``j < D``
(``n_features``) on inputs flattened to ``d`` features. ``z_j / |g_j|`` is a multivariate
Cauchy vector, whose characteristic function is ``exp(-||t||)``; by Bochner's theorem
``E[Phi(x) . Phi(x')] = exp(-gamma ||x - x'|| / sqrt(d))``, the example's ``laplace``
kernel (random Fourier features: Rahimi & Recht 2007). Each entry of ``Phi Phi^T`` has
standard deviation at most ``1 / sqrt(D)`` around it.

Exposed by one entry point in ``pyproject.toml``::

    [project.entry-points.kdistill]
    laplace-rff = "kdistill_laplace.random_features"

after which ``kdistill distill --kernel laplace-rff -s kernel.n_features=2048`` distills
with it (a fresh draw every step; evaluation uses the fixed draw of ``seed``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import numpy as np

from kdistill.core.contracts import RandomKernel
from kdistill.core.hookspecs import hookimpl
from kdistill.core.validators import nonneg, positive, positive_int

__all__ = ["LaplaceRandomFeatures", "kdistill_register_kernels"]


@attrs.define(kw_only=True)
class LaplaceRandomFeatures(RandomKernel):
    """Random Fourier features of ``exp(-gamma ||x - x'|| / sqrt(d))``.

    Args:
        gamma: inverse length scale, a finite number > 0 (default 1.0).
        n_features: number of random features ``D`` >= 1 (default 1024).
        seed: integer >= 0, the fixed draw used outside the KIP loop (evaluation).

    Raises:
        kdistill.errors.ConfigError: a hyperparameter out of range.

    Weights (:meth:`sample_weights`): ``z [d, D]``, ``g [D]`` standard normal and ``u [D]``
    uniform in ``[0, 1)``, float64 numpy arrays from ``numpy.random.default_rng(seed)``.
    ``Phi(x)`` is ``[n, D]`` and ``k(x1, x2)`` is ``[n1, n2]``, both in the dtype of the
    inputs. Heavy tail: ``1 / |g_j|`` is occasionally large, so a few features oscillate
    fast; their input gradients are large but finite.
    """

    has_features = True

    gamma: float = attrs.field(default=1.0, converter=float, validator=positive)
    n_features: int = attrs.field(default=1024, validator=positive_int)
    seed: int = attrs.field(default=0, validator=nonneg)
    _weights: Mapping[str, Any] | None = attrs.field(default=None, init=False, repr=False, eq=False)

    def sample_weights(self, seed: int, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """``{"z": [d, D], "g": [D], "u": [D]}`` float64, ``d = prod(input_shape)``."""
        rng = np.random.default_rng(seed)
        d, n = math.prod(input_shape), self.n_features
        z = rng.standard_normal((d, n))
        # |g| > 0 always (a draw of exactly 0 would give an infinite frequency)
        g = np.maximum(np.abs(rng.standard_normal(n)), np.finfo(np.float32).tiny)
        return {"z": z, "g": g, "u": rng.random(n)}

    def with_weights(self, weights: Mapping[str, Any]) -> LaplaceRandomFeatures:
        """This kernel (same backend) using ``weights``: backend arrays of :meth:`sample_weights`."""
        out = self.bind(self.b)
        out._weights = dict(weights)
        return out

    def features(self, x: Any) -> Any:
        """``Phi(x)`` ``[n, D]`` in the dtype of ``x`` ``[n, ...]``."""
        b = self.b
        xp = b.xp
        a = xp.reshape(x, (x.shape[0], -1))
        w = self._weights
        if w is None:  # outside the loop: the fixed draw of `seed`
            w = {k: b.asarray(v) for k, v in self.sample_weights(self.seed, tuple(x.shape[1:])).items()}
        z, g, u = (xp.astype(w[k], x.dtype) for k in ("z", "g", "u"))
        freq = z * (self.gamma / math.sqrt(a.shape[1])) / g  # [d, D], columns multivariate Cauchy
        return math.sqrt(2.0 / self.n_features) * xp.cos(a @ freq + (2 * math.pi) * u)

    def __call__(self, x1: Any, x2: Any) -> Any:
        f1 = self.features(x1)
        f2 = f1 if x2 is x1 else self.features(x2)
        return f1 @ self.b.xp.matrix_transpose(f2)


@hookimpl
def kdistill_register_kernels(register):
    """Register :class:`LaplaceRandomFeatures` under the name ``"laplace-rff"``."""
    register("laplace-rff", LaplaceRandomFeatures,
             "random Fourier features of the Laplace kernel, redrawn every KIP step (example plugin)")
