"""Example kdistill plugin: the Laplace (exponential) kernel.

``k(x, x') = exp(-gamma * ||x - x'|| / sqrt(d))`` on inputs flattened to dimension
``d``; dividing by ``sqrt(d)`` keeps ``gamma`` scale-free for standardized inputs (the
distance between two standardized examples grows like ``sqrt(d)``).

The kernel is written once against the array backend (``self.b.xp``), so it runs on
every backend kdistill provides (JAX and PyTorch). The module is exposed to kdistill
by one entry point in ``pyproject.toml``::

    [project.entry-points.kdistill]
    laplace = "kdistill_laplace"

after which ``kdistill distill --kernel laplace -s kernel.gamma=0.5`` selects it.
"""

from __future__ import annotations

from typing import Any

import attrs

from kdistill.core.contracts import Kernel
from kdistill.core.hookspecs import hookimpl
from kdistill.core.validators import positive
from kdistill.plugins.kernels.rbf import squared_distances

__version__ = "0.1.0"
__all__ = ["LaplaceKernel", "kdistill_register_kernels"]


@attrs.define(kw_only=True)
class LaplaceKernel(Kernel):
    """Laplace kernel ``exp(-gamma * ||x - x'|| / sqrt(d))``.

    Args:
        gamma: inverse length scale, a finite number > 0 (default 1.0); ints are
            converted to float.

    Raises:
        kdistill.errors.ConfigError: ``gamma`` is not a finite number > 0.

    Calling the bound kernel on ``x1 [n1, ...]`` and ``x2 [n2, ...]`` (same trailing
    shape, flattened to ``d`` features) returns the ``[n1, n2]`` kernel matrix in the
    dtype of the inputs. The distance goes through ``backend.safe_sqrt``, so the
    gradient is finite where ``x == x'`` (the diagonal of ``k(X, X)``), where the
    exact derivative of ``||x - x'||`` does not exist.

    Precision: the squared distance uses the expansion ``|x|^2 + |x'|^2 - 2 x.x'``
    (one matrix product), whose rounding error ``~eps * |x|^2`` the square root turns
    into ``~sqrt(eps) * |x|``. In float64 ``k(x, x)`` is 1 to about 1e-7; in float32
    it can be as low as ``1 - 1e-3`` for standardized images (a tiny perturbation of
    the diagonal, like a small extra ridge). Pass float64 inputs where that matters.
    """

    gamma: float = attrs.field(default=1.0, converter=float, validator=positive)

    def __call__(self, x1: Any, x2: Any) -> Any:
        b = self.b
        xp = b.xp
        x1 = xp.reshape(x1, (x1.shape[0], -1))
        x2 = xp.reshape(x2, (x2.shape[0], -1))
        d = x1.shape[1]
        dist = b.safe_sqrt(squared_distances(xp, x1, x2))
        return xp.exp(-self.gamma * dist / d**0.5)


@hookimpl
def kdistill_register_kernels(register):
    """Register :class:`LaplaceKernel` under the name ``"laplace"``."""
    register("laplace", LaplaceKernel, "Laplace kernel exp(-gamma ||x-x'|| / sqrt(d)) (example plugin)")
