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


class NumericalError(KdistillError, ArithmeticError):
    """A computation produced NaN/Inf or met an unsolvable system (e.g. KRR predictions
    that are not finite because the kernel overflowed or the system is singular)."""


class NotPositiveDefiniteError(NumericalError):
    """The regularized kernel matrix stayed non positive definite after jitter retries."""


class NonFiniteLossError(NumericalError):
    """A distillation step produced a NaN or infinite loss or gradient."""


class ArtifactError(KdistillError, ValueError):
    """An artifact file is missing, truncated, tampered with or of an unknown version."""


class CheckpointError(KdistillError, ValueError):
    """A checkpoint cannot be written, read or resumed.

    Raised when a checkpoint file is missing, truncated, tampered with or of a newer
    format; when it does not match the requested run (config or data differ; the
    message lists the differing fields); or when writing it failed (e.g. a full
    disk), in which case the previous checkpoint is left intact and named.
    """


class RunInterrupted(KdistillError):
    """A run stopped on SIGINT/SIGTERM after finishing its current step.

    Attributes:
        signum: the signal received; step: the last completed step;
        checkpoint: path of the checkpoint written for it (None without a run directory).
    """

    def __init__(self, message: str, signum: int, step: int, checkpoint=None):
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class RunDirectoryError(KdistillError, OSError):
    """A run directory cannot be used: not a directory, not writable, too little free
    space, a path too long, or it holds another run (or other files) and ``overwrite``
    was not given. Raised before the first step, so no work is lost."""


class RunDirectoryInUse(RunDirectoryError):
    """Another kdistill process holds the run directory's lock (a run, or a resume,
    still going).

    Attributes:
        pid: the process id of the holder, when it recorded one (else None).
    """

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return str(self.args[0]) if self.args else ""
