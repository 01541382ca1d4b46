"""Stochastic gradient descent with heavy-ball or Nesterov momentum: ``optax.sgd`` /
``torch.optim.SGD`` (dampening 0).

With ``b_0 = 0`` and gradient ``g_t`` at update ``t = 1, 2, ...``::

    b_t = momentum b_{t-1} + g_t
    p_t = p_{t-1} - lr_t b_t                           (heavy ball)
    p_t = p_{t-1} - lr_t (g_t + momentum b_t)          (nesterov = true)
"""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Optimizer
from kdistill.errors import ConfigError
from kdistill.core.validators import boolean, float_range, int_to_float


@attrs.define(kw_only=True)
class SGD(Optimizer):
    """SGD. Args: ``momentum`` in [0, 1) (default 0.9), ``nesterov`` (bool, needs
    ``momentum`` > 0). ``momentum = 0`` is plain gradient descent."""

    momentum: float = attrs.field(default=0.9, converter=int_to_float, validator=float_range(0.0, 1.0, hi_open=True))
    nesterov: bool = attrs.field(default=False, validator=boolean)

    def __attrs_post_init__(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("SGD.nesterov needs a momentum > 0 (got momentum 0)")

    def optax(self):
        # momentum None: optax keeps no momentum state for plain gradient descent
        return "sgd", {"momentum": self.momentum or None, "nesterov": self.nesterov}

    def torch(self):
        return "SGD", {"momentum": self.momentum, "nesterov": self.nesterov}
