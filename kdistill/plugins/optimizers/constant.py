"""The constant learning-rate schedule: every update uses the run's ``lr``."""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Schedule


@attrs.define(kw_only=True)
class Constant(Schedule):
    """Multiplier 1 at every step (the default schedule; no parameters)."""

    constant = True

    def __call__(self, count, total):
        return self.b.xp.ones((), dtype=self.b.dtype("float64"))
