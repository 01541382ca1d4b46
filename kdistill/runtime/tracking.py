"""What the tracking run callbacks (``tensorboard``, ``mlflow`` in :mod:`kdistill.plugins.callbacks`)
share: the per-step record, the flattened config and the check that an optional
package is installed."""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np

from kdistill.errors import ConfigError

TRACKING_INSTALL = "pip install 'kdistill[tracking]'  (tensorboard and mlflow-skinny)"


def require(module: str, callback: str, package: str) -> Any:
    """Import ``module`` for the run callback ``callback``.

    Returns:
        The module.
    Raises:
        ConfigError: not installed (or failing to import); the message names the
            package and the ``tracking`` extra to install.
    """
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install
        raise ConfigError(
            f"the {callback!r} run callback needs the {package} package, which is not usable here "
            f"({type(exc).__name__}: {exc}); install it with: {TRACKING_INSTALL}"
        ) from exc


def step_lr(run, step: int) -> float:
    """The learning rate of step ``step`` (1-based): the guard's base rate times the
    schedule's multiplier after ``step - 1`` updates (a float)."""
    fn = run.step_fn
    if fn.schedule.constant:
        return float(fn.lr)
    count = run.comps.backend.asarray(np.asarray(step - 1, np.int64), "int64")
    return float(fn.lr) * float(fn.schedule(count, fn.total_steps))


class StepClock:
    """Seconds per step as a run callback sees them: the wall-clock time between two
    calls of ``after_step`` (so an evaluation step includes its evaluation); the first
    step of a process also includes setup and compilation since the run state was made."""

    def __init__(self) -> None:
        self.last: float | None = None

    def __call__(self, run) -> float:
        now = run.seconds()
        last = run.elapsed if self.last is None else self.last
        self.last = now
        return max(now - last, 0.0)


def step_record(run, info: dict[str, Any], clock: StepClock) -> dict[str, float]:
    """``{"loss", "lr", "step_seconds"[, "eval_acc"]}`` of the step in ``info`` (floats;
    ``loss`` and ``eval_acc`` are the values the run's history holds)."""
    record = {"loss": float(info["loss"]), "lr": step_lr(run, info["step"]), "step_seconds": clock(run)}
    if "eval_acc" in info:
        record["eval_acc"] = float(info["eval_acc"])
    return record


def final_record(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among a result's final metrics (``distilled_acc``,
    ``random_acc``, ``init_acc``, ``best_valid_acc``, ``train_seconds``, ...)."""
    keys = ("distilled_acc", "random_acc", "init_acc", "best_valid_acc", "train_seconds",
            "total_seconds", "n_test", "steps_run")
    out = {}
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = float(v)
    return out


def flatten_config(config) -> dict[str, str]:
    """The run config as ``{"dotted.key": "value"}`` strings: component tables become
    ``kernel.name``, ``kernel.depth``, ...; lists (callbacks) are JSON text; unset
    fields are left out."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            out[prefix] = json.dumps(value, sort_keys=True, default=str)
        elif value is not None:
            out[prefix] = str(value)

    walk("", config.to_dict())
    return out
