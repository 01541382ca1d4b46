"""Cosine decay (Loshchilov & Hutter 2017, ICLR, SGDR eq. 5, one cycle without restarts)
from ``lr`` to ``alpha * lr`` over the run's steps::

    multiplier(count) = alpha + (1 - alpha) (1 + cos(pi min(count, total) / total)) / 2

``count`` is the number of updates before this one (0 for the first), ``total`` the run's
``steps``; the multiplier is 1 at the first update and reaches ``alpha`` after the last.
"""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Schedule
from kdistill.ops.schedules import cosine_decay
from kdistill.core.validators import float_range, int_to_float


@attrs.define(kw_only=True)
class Cosine(Schedule):
    """Cosine decay to ``alpha`` (in [0, 1], default 0) times ``lr`` over the run's steps."""

    alpha: float = attrs.field(default=0.0, converter=int_to_float, validator=float_range(0.0, 1.0))

    def __call__(self, count, total):
        return cosine_decay(self.b, count, total, self.alpha)
