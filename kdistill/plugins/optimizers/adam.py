"""Adam (Kingma & Ba 2015, ICLR, Alg. 1): ``optax.adam`` / ``torch.optim.Adam``.

With ``m_0 = v_0 = 0`` and gradient ``g_t`` at update ``t = 1, 2, ...``::

    m_t = b1 m_{t-1} + (1 - b1) g_t,   v_t = b2 v_{t-1} + (1 - b2) g_t^2
    p_t = p_{t-1} - lr_t (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Optimizer
from kdistill.core.validators import float_range, int_to_float, positive


@attrs.define(kw_only=True)
class Adam(Optimizer):
    """Adam. Args: ``b1``, ``b2`` in [0, 1) (moment decay rates), ``eps`` > 0 (added to
    the root of the second moment). The defaults are optax's and torch's."""

    b1: float = attrs.field(default=0.9, converter=int_to_float, validator=float_range(0.0, 1.0, hi_open=True))
    b2: float = attrs.field(default=0.999, converter=int_to_float, validator=float_range(0.0, 1.0, hi_open=True))
    eps: float = attrs.field(default=1e-8, converter=int_to_float, validator=positive)

    def optax(self):
        return "adam", {"b1": self.b1, "b2": self.b2, "eps": self.eps}

    def torch(self):
        return "Adam", {"betas": (self.b1, self.b2), "eps": self.eps}
