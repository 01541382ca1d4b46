"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019, ICLR, Alg. 2):
``optax.adamw`` / ``torch.optim.AdamW``.

As :mod:`~kdistill.plugins.optimizers.adam`, plus a decay of the parameters themselves,
scaled by the step's learning rate::

    p_t = p_{t-1} - lr_t ((m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps) + weight_decay p_{t-1})
"""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Optimizer
from kdistill.core.validators import float_range, int_to_float, nonneg, positive


@attrs.define(kw_only=True)
class AdamW(Optimizer):
    """AdamW. Args: ``b1``, ``b2`` in [0, 1), ``eps`` > 0, ``weight_decay`` >= 0 (per
    unit learning rate; default 0.01, torch's; optax's default is 1e-4)."""

    b1: float = attrs.field(default=0.9, converter=int_to_float, validator=float_range(0.0, 1.0, hi_open=True))
    b2: float = attrs.field(default=0.999, converter=int_to_float, validator=float_range(0.0, 1.0, hi_open=True))
    eps: float = attrs.field(default=1e-8, converter=int_to_float, validator=positive)
    weight_decay: float = attrs.field(default=0.01, converter=int_to_float, validator=nonneg)

    def optax(self):
        return "adamw", {"b1": self.b1, "b2": self.b2, "eps": self.eps, "weight_decay": self.weight_decay}

    def torch(self):
        return "AdamW", {"betas": (self.b1, self.b2), "eps": self.eps, "weight_decay": self.weight_decay}
