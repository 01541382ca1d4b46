"""Linear warm-up, then cosine decay (Goyal et al. 2017, "Accurate, Large Minibatch SGD",
sec. 2.2, followed by the cosine of :mod:`~kdistill.plugins.optimizers.cosine`)::

    multiplier(count) = (count + 1) / (warmup + 1)                             count < warmup
                      = cosine(count - warmup, total - warmup, alpha)          otherwise

The warm-up rises linearly to 1 (its first update already moves the parameters, unlike
a warm-up from 0), then the multiplier decays from 1 to ``alpha`` over the remaining
``total - warmup`` steps.
"""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Schedule
from kdistill.core.validators import float_range, int_to_float, nonneg_int
from kdistill.ops.schedules import cosine_decay


@attrs.define(kw_only=True)
class WarmupCosine(Schedule):
    """Linear warm-up over ``warmup`` steps (int >= 0, default 10), then cosine decay to
    ``alpha`` (in [0, 1], default 0) times ``lr`` over the rest of the run."""

    warmup: int = attrs.field(default=10, validator=nonneg_int)
    alpha: float = attrs.field(default=0.0, converter=int_to_float, validator=float_range(0.0, 1.0))

    def __call__(self, count, total):
        b = self.b
        c = b.cast(count, "float64")
        ramp = (c + 1.0) / (self.warmup + 1.0)
        decay = cosine_decay(b, c - self.warmup, max(total - self.warmup, 0), self.alpha)
        return b.xp.where(c < self.warmup, ramp, decay)
