"""Exceptions raised by kdistill. All derive from :class:`KdistillError`."""

from __future__ import annotations


class KdistillError(Exception):
    """Base class of every error kdistill raises on purpose."""


class ConfigError(KdistillError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class UnknownComponentError(ConfigError, KeyError):
    """A kernel, solver, loss, backend or dataset name is not registered.

    The message lists the available names of that kind.
    """

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleComponentsError(ConfigError):
    """Two components cannot be used together (e.g. a JAX-only kernel on torch)."""


class DataError(KdistillError, ValueError):
    """Input arrays have the wrong shape, dtype or values (NaN/Inf, labels, counts)."""


class DataFileError(DataError, FileNotFoundError):
    """A dataset file is missing or malformed; the message names the expected files."""


class NotPositiveDefiniteError(KdistillError, ArithmeticError):
    """The regularized kernel matrix stayed non positive definite after jitter retries."""


class NonFiniteLossError(KdistillError, ArithmeticError):
    """A distillation step produced a NaN or infinite loss or gradient."""


class ArtifactError(KdistillError, ValueError):
    """An artifact file is missing, truncated, tampered with or of an unknown version."""
