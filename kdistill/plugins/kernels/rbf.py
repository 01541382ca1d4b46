"""Gaussian (RBF) kernel ``k(x, x') = exp(-gamma * ||x - x'||^2 / d)``.

``d`` is the flattened input dimension, so ``gamma`` is scale-free for standardized
inputs (KIP's RBF baseline; Nguyen et al. 2021, ICLR, sec. 4).
"""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Kernel
from kdistill.core.validators import positive


def squared_distances(xp, x1, x2):
    """``[n1, n2]`` squared Euclidean distances of flattened ``x1 [n1, d]``, ``x2 [n2, d]``.

    Clipped at 0 (rounding can make the expansion slightly negative).
    """
    sq1 = xp.sum(x1 * x1, axis=1)[:, None]
    sq2 = xp.sum(x2 * x2, axis=1)[None, :]
    return xp.clip(sq1 + sq2 - 2 * (x1 @ x2.T), min=0.0)


@attrs.define(kw_only=True)
class RBFKernel(Kernel):
    """Gaussian kernel. Args: ``gamma`` > 0 (inverse squared length scale per dim)."""

    gamma: float = attrs.field(default=1.0, converter=float, validator=positive)

    def __call__(self, x1, x2):
        xp = self.b.xp
        x1 = xp.reshape(x1, (x1.shape[0], -1))
        x2 = xp.reshape(x2, (x2.shape[0], -1))
        return xp.exp(-self.gamma * squared_distances(xp, x1, x2) / x1.shape[1])

    def degeneracy_hint(self, kind: str) -> str:
        """What to change when the kernel matrix is degenerate (see
        :func:`kdistill.core.krr.kernel_degeneracy`)."""
        if kind == "constant":
            return (f"gamma={self.gamma:g} is too small: exp(-gamma * ||x - x'||^2 / d) rounds to the same value "
                    "for every pair; raise gamma (about 0.1 to 10 suits standardized inputs; "
                    "`kdistill evaluate` takes -s eval_kernel.gamma=1)")
        return (f"gamma={self.gamma:g} is too large: exp(-gamma * ||x - x'||^2 / d) underflows to 0 between "
                "distinct examples; lower gamma (about 0.1 to 10 suits standardized inputs; "
                "`kdistill evaluate` takes -s eval_kernel.gamma=1)")
