"""attrs validators shared by the built-in components."""

from __future__ import annotations

import math

from kdistill.errors import ConfigError


def positive(inst, attr, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be a finite number > 0, got {value!r}")


def finite(inst, attr, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be a finite number, got {value!r}")


def nonneg(inst, attr, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be a finite number >= 0, got {value!r}")


def positive_int(inst, attr, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be an integer >= 1, got {value!r}")


def boolean(inst, attr, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be true or false, got {value!r}")


def kernel_kind(inst, attr, value) -> None:
    if value not in ("nngp", "ntk"):
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be 'nngp' or 'ntk', got {value!r}")
