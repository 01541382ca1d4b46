"""Mean squared error, KIP's loss (Nguyen et al. 2021, ICLR, eq. 2)."""

from __future__ import annotations

import attrs

from kdistill.core.contracts import Loss


@attrs.define(kw_only=True)
class MSELoss(Loss):
    """``L = 1/(2 n_t) * sum_{i,c} (yhat_ic - y_ic)^2`` (half the mean squared norm)."""

    def __call__(self, yhat, y, params):
        xp = self.b.xp
        diff = yhat - self.b.cast(y, "float64")
        return 0.5 * xp.sum(diff * diff) / yhat.shape[0]
