"""Platt-scaled cross-entropy with a learned temperature (RFAD; Loo et al. 2022, sec. 3.2).

``L = -1/n_t * sum_i sum_c q_ic log softmax(yhat_i / tau)_c`` with ``tau = exp(log_tau)``,
a trainable parameter starting at ``log_tau = init_log_tau`` (0 in RFAD). The target
distribution ``q`` is the row-wise shift of ``y`` to a minimum of 0, normalized to sum 1;
for (centered) one-hot labels it is the one-hot vector.
"""

from __future__ import annotations

import attrs
import numpy as np

from kdistill.core.contracts import Loss
from kdistill.core.validators import finite


@attrs.define(kw_only=True)
class PlattLoss(Loss):
    """Cross-entropy of ``yhat / tau``; ``tau > 0`` learned as ``log_tau``.

    Args:
        init_log_tau: initial log-temperature (float).
    Trainable parameters: ``{"log_tau": float array of shape []}``.
    """

    init_log_tau: float = attrs.field(default=0.0, converter=float, validator=finite)

    def init_params(self):
        return {"log_tau": np.asarray(self.init_log_tau, dtype=np.float64)}

    def __call__(self, yhat, y, params):
        b = self.b
        xp = b.xp
        y = b.cast(y, "float64")
        q = y - xp.min(y, axis=1, keepdims=True)
        q = q / xp.sum(q, axis=1, keepdims=True)
        logits = yhat / xp.exp(b.cast(params["log_tau"], "float64"))
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        log_softmax = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
        return -xp.sum(q * log_softmax) / yhat.shape[0]
