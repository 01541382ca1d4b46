"""Python API: ``kdistill.distill``, ``kdistill.label_solve``, ``kdistill.load``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable

from kdistill.io.artifact import DistilledSet
from kdistill.io.artifact import load as load  # re-export
from kdistill.runtime.components import build_components, check_run_config, prepare_data
from kdistill.core.config import DistillConfig
from kdistill.errors import ConfigError


def make_config(config: DistillConfig | dict | str | Path | None = None, **overrides: Any) -> DistillConfig:
    """A :class:`DistillConfig` from a config object, dict or TOML path, plus overrides.

    Keyword overrides use config field names; component fields accept a name or a
    dict, e.g. ``kernel={"name": "fc", "depth": 2}``; dotted keys go through
    ``with_overrides`` (``**{"kernel.depth": 2}``).
    """
    if config is None:
        cfg = DistillConfig()
    elif isinstance(config, DistillConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = DistillConfig.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = DistillConfig.from_file(config)
    else:
        raise ConfigError(
            f"config must be a DistillConfig, a dict, a TOML file path or None, got {type(config).__name__}"
        )
    return cfg.with_overrides(overrides) if overrides else cfg


def distill(
    config: DistillConfig | dict | str | Path | None = None,
    *,
    data=None,
    callback: Callable[[dict], None] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Any = None,
    **overrides: Any,
) -> DistilledSet:
    """Distill a dataset with KIP (or Label Solve if ``method="label-solve"``).

    Args:
        config: a DistillConfig, dict, TOML path, or None for the defaults (KIP with
            the FC1 NTK on the embedded digits data, JAX backend). With ``resume`` and
            no config, the checkpoint's own config.
        data: in-memory data to use instead of loading ``config.dataset`` (``dataset``
            is the config field naming a registered one): a
            :class:`kdistill.datasets.Dataset`, a tuple ``(x_train, y_train, x_test,
            y_test)`` or a dict with those keys (optionally ``name``, ``num_classes``,
            ``class_names``, ``layout``). Images ``[N, H, W, C]`` (or ``[N, C, H, W]``
            with ``layout="nchw"``, or ``[N, H, W]``) on the 0..255 scale, uint8 or
            float; labels ``[N]`` integer class ids; see
            :meth:`kdistill.datasets.Dataset.from_arrays`. E.g.
            ``kdistill.distill(data=(x_train, y_train, x_test, y_test), ipc=1)``.
        callback: called after every step with ``{"step", "loss", ["eval_acc"]}``.
        run_dir: KIP run directory for ``checkpoint.npz``: written every
            ``checkpoint_every`` steps, after the last step (before the final
            evaluation; removed again after it when ``checkpoint_every`` is 0) and on
            SIGINT/SIGTERM (the current step finishes, or the final evaluation stops, and
            RunInterrupted is raised). The directory is locked for the run (a second
            run on it fails with RunDirectoryInUse naming the PID) and must be empty or
            new unless ``overwrite``.
        resume: continue the run checkpointed in ``run_dir``; the final result equals
            that of an uninterrupted run bit-for-bit. Config overrides must match the
            stored config (``checkpoint_every`` may change).
        overwrite: replace a previous run in ``run_dir`` (its files, e.g. an old
            checkpoint or ``nn_*.json``, are removed before the first step). Files
            kdistill did not write are never removed.
        progress: progress of every long phase (the steps ``"kip"``, ``"final
            evaluation"``, ``"label solve"``; :mod:`kdistill.runtime.progress`). None
            (default): tqdm bars on stderr when stderr is a terminal, none otherwise;
            True: bars; False: none; a callable: called with one dict per update,
            ``{"phase", "done", "total", "unit", ...}`` (``done``: int, never
            decreasing within a phase, equal to ``total`` when the phase completes;
            the steps add ``loss`` and, on evaluation steps, ``eval_acc``).
        **overrides: config fields, e.g. ``ipc=1, backend="torch", kernel="rbf"``.
    Returns:
        A :class:`DistilledSet` (``.save(path)`` writes the artifact).
    Raises:
        ConfigError, UnknownComponentError, IncompatibleComponentsError, DataError,
        DataFileError before any work; RunDirectoryInUse when another process uses
        ``run_dir``; RunDirectoryError when ``run_dir`` is not empty (without
        ``overwrite``), not a writable directory or has too little free space, before
        any work; CheckpointError when resuming is impossible or a checkpoint cannot be
        written (or a fresh run meets an old checkpoint without ``overwrite``); NonFiniteLossError / NotPositiveDefiniteError
        when a step fails numerically beyond the automatic recoveries; RunInterrupted
        on SIGINT/SIGTERM with a ``run_dir``.

    Example::

        import kdistill
        result = kdistill.distill(ipc=10, steps=200, learn_labels=True)
        print(result.metrics["distilled_acc"], result.metrics["random_acc"])
        result.save("digits_kip.npz")
    """
    _check_run_args(run_dir, resume, overwrite, callback, "run_dir")
    if resume and config is None:
        from kdistill.io.checkpoint import read_checkpoint

        config = read_checkpoint(run_dir).config
    return run(make_config(config, **overrides), data=data, callback=callback, run_dir=run_dir, resume=resume,
               overwrite=overwrite, progress=progress)


def run(
    config: DistillConfig,
    *,
    data=None,
    callback: Callable[[dict], None] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    what: str = "run_dir",
    grid: bool = False,
    on_start: Callable[[DistillConfig, Any, list[str]], None] | None = None,
    write: Callable[[DistilledSet], None] | None = None,
    progress: Any = "inherit",
) -> DistilledSet:
    """One run of ``config.method``: the single driver behind :func:`distill` and
    ``kdistill distill``.

    In order, before any work: the run directory (``run_dir``) is locked and checked
    (resume: it must hold a checkpoint of the same config), the config's option
    combinations and components are checked and built, the data prepared and the
    directory's free space checked (:mod:`kdistill.io.rundir`). Then ``on_start(config,
    prepared_data, removed_files)`` (the CLI prints its header there), the registered
    method ``config.method`` (``kdistill plugins``), ``write(result)`` while the directory is still
    locked (the CLI writes its files there), and the transient last checkpoint is
    removed (``checkpoint_every = 0``).

    In a run of several processes (``torchrun``, or JAX after
    :func:`kdistill.runtime.distributed.init_jax_distributed`) every process calls this
    with the same config and data and computes; only process 0 locks and writes
    ``run_dir``, calls ``on_start``, ``write``, ``callback`` and the run callbacks, and the
    others wait at a barrier until it has prepared the directory, and at another until it
    has written it. Every process returns the same :class:`DistilledSet`.

    Args:
        config: the run's config; data, callback, run_dir, resume, overwrite: as in
            :func:`distill`. what: how messages name ``run_dir`` (``--out``).
        grid: a ``grid.png`` will be written (free-space estimate).
        progress: as in :func:`distill`; ``"inherit"`` (default) keeps the active
            reporter (:func:`kdistill.runtime.progress.use_progress`, e.g. the CLI's bars).
    Returns:
        The :class:`DistilledSet`.
    Raises:
        As :func:`distill`; whatever ``write`` raises (the checkpoint then stays).
    """
    from kdistill.io.checkpoint import check_same_config, read_checkpoint
    from kdistill.core.loop import make_optimizer
    from kdistill.core.registry import get_registry
    from kdistill.io.rundir import RunDirectory, estimate_run_bytes, remove_transient_checkpoint

    from kdistill.runtime.distributed import is_primary
    from kdistill.runtime.progress import make_reporter, use_progress

    _check_run_args(run_dir, resume, overwrite, callback, what)
    inherit = isinstance(progress, str) and progress == "inherit"
    reporter = None if inherit else make_reporter(progress)  # ConfigError before any work
    check_run_config(config)
    method = get_registry().get("methods", config.method).factory
    if resume and not getattr(method, "resumable", False):
        raise ConfigError(f"resume applies to KIP runs only; method {config.method!r} has no steps to resume")
    # in a run of several processes (kdistill.runtime.distributed) every process computes
    # and only the primary one locks and writes the run directory and calls back
    primary = is_primary()
    with contextlib.ExitStack() as stack:
        if not inherit:
            stack.enter_context(use_progress(reporter))
        lock = None
        if resume:
            if primary:
                lock = stack.enter_context(RunDirectory(run_dir, mode="resume", what=what))
            check_same_config(read_checkpoint(run_dir), config.to_dict(), run_dir)
        comps = build_components(config)
        make_optimizer(config)  # an unknown optimizer or schedule fails here, before any work
        comps.callbacks = [get_registry().create("callbacks", spec.name, **spec.params)
                           for spec in config.callbacks] if primary else []
        if run_dir is not None and not resume and primary:
            lock = stack.enter_context(RunDirectory(run_dir, overwrite=overwrite, what=what))
        prepared = prepare_data(config, data)
        removed = lock.prepare(estimate_run_bytes(config, prepared, grid)) if lock is not None else []
        comps.backend.barrier()  # the others start once the primary has prepared the directory
        if on_start is not None and primary:
            on_start(config, prepared, removed)
        result = method(config, comps, prepared, callback=callback if primary else None, run_dir=run_dir,
                        resume=resume)
        if write is not None and primary:
            write(result)
        if lock is not None:
            remove_transient_checkpoint(run_dir, config)
        comps.backend.barrier()  # all processes end together (one leaving early can abort the others' exit)
        return result


def _check_run_args(run_dir, resume: bool, overwrite: bool, callback, what: str) -> None:
    """Refuse contradictory run arguments before anything is read (ConfigError)."""
    if resume and run_dir is None:
        raise ConfigError(f"resume=True needs {what}, the directory holding checkpoint.npz")
    if resume and overwrite:
        raise ConfigError("resume=True continues the run in its directory; overwrite=True would replace it: "
                          "choose one")
    if callback is not None and not callable(callback):
        raise ConfigError(f"callback must be callable, got {type(callback).__name__}")


def label_solve(
    config: DistillConfig | dict | str | Path | None = None, *, data=None, progress: Any = None, **overrides: Any
) -> DistilledSet:
    """Label Solve (Nguyen et al. 2021, ICLR): closed-form labels for real support images.

    Same arguments as :func:`distill` (``progress``: the phases ``"label solve"`` and
    ``"final evaluation"``); ``target_batch`` is the number of class-balanced training
    targets the labels are solved against.
    """
    return distill(config, data=data, method="label-solve", progress=progress, **overrides)
