"""Numerical guard of the KIP loop: what happens when a step goes non-finite.

A step fails numerically when the loss or a gradient is NaN/Inf
(:class:`NonFiniteLossError`, raised by :meth:`kdistill.core.loop.KIPRun.advance` when the
pure step (:class:`~kdistill.core.backend.TrainStep`) reports it; the run then keeps its
state, parameters and optimizer state, as it was) or when the regularized
kernel matrix cannot be factored even with the Cholesky solver's bounded jitter
(:class:`NotPositiveDefiniteError`, eager backends). The loop then

1. keeps the last good state (the step's input, which no step changes), and
2. if recoveries are left (``config.nonfinite_retries`` per run, default 2),
   rebuilds the step function around that state and retries the *same* step on the
   same target batch with the documented remedy:
   relative ridge ``max(10 * ridge, 1e-6)`` and learning rate ``lr / 2``. Both stay
   in effect for the rest of the run, are recorded in ``metrics["recoveries"]`` and
   in checkpoints (so a resumed run makes the same choices), and are reported with a
   ``RuntimeWarning``;
3. otherwise stops with the same error type and a message naming the step, the
   current ridge and learning rate, a ridge to try and the other remedies.
"""

from __future__ import annotations

from typing import Any

import attrs

#: Recovery remedy: ridge <- max(RIDGE_FACTOR * ridge, RIDGE_FLOOR); lr <- LR_FACTOR * lr.
RIDGE_FACTOR = 10.0
RIDGE_FLOOR = 1e-6
LR_FACTOR = 0.5


@attrs.define(kw_only=True)
class NumericalGuard:
    """Effective ridge and learning rate of a run, and the recoveries made so far.

    Attributes:
        ridge, lr: the values in effect (the config's until a recovery).
        retries: recoveries allowed per run (``config.nonfinite_retries``).
        events: one dict per recovery: ``step``, ``error``, new ``ridge`` and ``lr``.
        dtype: the run's kernel dtype (messages suggest float64 only to float32 runs).
    """

    ridge: float
    lr: float
    retries: int
    events: list[dict[str, Any]] = attrs.field(factory=list)
    dtype: str = "float32"

    @classmethod
    def start(cls, config) -> "NumericalGuard":
        return cls(ridge=float(config.ridge), lr=float(config.lr), retries=int(config.nonfinite_retries),
                   dtype=config.dtype)

    @classmethod
    def from_dict(cls, data: dict[str, Any], dtype: str = "float32") -> "NumericalGuard":
        """Inverse of :meth:`to_dict` (``dtype`` comes from the run's config)."""
        return cls(ridge=float(data["ridge"]), lr=float(data["lr"]), retries=int(data["retries"]),
                   events=list(data.get("events", [])), dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"ridge": self.ridge, "lr": self.lr, "retries": self.retries, "events": list(self.events)}

    def escalate(self, step: int, exc: Exception) -> bool:
        """Apply the remedy for a failure at ``step``; False when no recovery is left."""
        if len(self.events) >= self.retries:
            return False
        self.ridge = max(RIDGE_FACTOR * self.ridge, RIDGE_FLOOR)
        self.lr = LR_FACTOR * self.lr
        self.events.append({"step": step, "error": type(exc).__name__, "ridge": self.ridge, "lr": self.lr})
        return True

    def recovery_message(self, step: int, exc: Exception) -> str:
        return (
            f"step {step}: {type(exc).__name__}; retrying the step with ridge={self.ridge:g} and "
            f"lr={self.lr:g} (recovery {len(self.events)} of {self.retries})"
        )

    def failure_message(self, step: int, exc: Exception) -> str:
        """Why the run stopped and what to change."""
        tried = (
            f" after {len(self.events)} automatic recover{'y' if len(self.events) == 1 else 'ies'}"
            if self.events else ""
        )
        float64 = ", use dtype='float64'" if self.dtype == "float32" else ""
        return (
            f"step {step}: {exc}{tried}. Remedies: raise the relative ridge (now {self.ridge:g}; "
            f"try ridge={max(100 * self.ridge, RIDGE_FLOOR * 100):g}), lower the learning rate "
            f"(now {self.lr:g}){float64}, or allow more automatic recoveries "
            f"(nonfinite_retries, now {self.retries})"
        )
