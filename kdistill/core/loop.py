"""The KIP/RFAD outer-loop driver: a run's state, one step, and hooks around it.

A run is a :class:`KIPRun`: the state (support set, labels and loss parameters with
their optimizer state), the pure step that maps it to the next state (the backend's
:class:`~kdistill.core.backend.TrainStep` for the run's registered optimizer and
schedule), the target sampler's generator, the numerical guard, the history and the
best support set so far. :meth:`KIPRun.advance` takes one step: a class-balanced
target batch, a fresh draw of a random kernel's weights (RFAD), one guarded optimizer
step. The step's loss is a mean over target examples, which is what lets a target
batch be split over devices.

Everything else happens in hooks called at defined points (:class:`RunHook`; the
built-in ones, evaluation, checkpoints, stop conditions and callbacks, are in
:mod:`kdistill.runtime.hooks`). :func:`drive` runs the steps through the hooks;
:func:`kdistill.plugins.methods.kip.run_kip` adds the final checkpoint and evaluation.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable

import attrs
import numpy as np

from kdistill.io.checkpoint import Checkpoint, checkpoint_path
from kdistill.runtime.components import Components, PreparedData
from kdistill.core.config import DistillConfig
from kdistill.core.contracts import step_seed
from kdistill.errors import CheckpointError, NonFiniteLossError, NotPositiveDefiniteError
from kdistill.core.guard import NumericalGuard
from kdistill.core.sampling import TargetSampler


def make_kip_loss(comps: Components, config: DistillConfig, fixed_labels: Any) -> Callable:
    """``loss_fn(params, x_t, y_t, weights=None) -> scalar`` for the step.

    ``params`` holds ``x_s`` and, when learned, ``y_s`` and ``loss/<name>`` entries.
    ``weights``: this step's weights of a random-feature kernel (backend arrays).
    """
    kernel, solver, loss = comps.kernel, comps.solver, comps.loss

    def loss_fn(params, x_t, y_t, weights=None):
        k = kernel if weights is None else kernel.with_weights(weights)
        y_s = params["y_s"] if "y_s" in params else fixed_labels
        predictor = solver.fit(k, params["x_s"], y_s, config.ridge)
        loss_params = {k[5:]: v for k, v in params.items() if k.startswith("loss/")}
        return loss(predictor(x_t), y_t, loss_params)

    return loss_fn


def check_batch_split(target_batch: int, pool: int, backend) -> None:
    """Refuse a ``target_batch`` that the backend's data-parallel shards cannot share evenly.

    A batch capped at the training pool (``target_batch >= pool``), or one a class too
    small to fill, is trimmed at each step instead (:meth:`KIPRun.advance`).

    Raises:
        ConfigError: ``target_batch < pool`` is not a multiple of ``backend.shards`` (the
            message names the nearest sizes that are, and how to use one device).
    """
    k = backend.shards
    if target_batch < pool and target_batch % k:
        from kdistill.errors import ConfigError

        lower, upper = target_batch - target_batch % k, target_batch + k - target_batch % k
        raise ConfigError(
            f"target_batch={target_batch} cannot be split evenly over {k} devices/processes "
            f"({backend.describe_devices()}): use a multiple of {k}, e.g. {lower or upper} or {upper}, or compute "
            "on one device (device='cuda:0' / 'cpu:0')")


def make_optimizer(config: DistillConfig, registry=None) -> tuple[Any, Any]:
    """``(optimizer, schedule)``: the config's registered components (unbound).

    Raises:
        UnknownComponentError: a name not registered (the message lists the available
            ones); ConfigError: invalid hyperparameters.
    """
    from kdistill.core.registry import get_registry

    registry = registry or get_registry()
    return (registry.create("optimizers", config.optimizer.name, **config.optimizer.params),
            registry.create("schedules", config.schedule.name, **config.schedule.params))


@attrs.define
class Best:
    """The best support set by validation accuracy: its parameters (numpy), step and
    accuracy, and the evaluations since it (for ``patience``)."""

    params: dict[str, np.ndarray] = attrs.field(factory=dict)
    step: int | None = None
    acc: float | None = None
    since: int = 0


@attrs.define(kw_only=True)
class KIPRun:
    """The state of a KIP/RFAD run between steps, and one step.

    Attributes:
        config, comps, data: the run's config, bound components and prepared data.
        state: the step's state (:meth:`~kdistill.core.backend.TrainStep.init`):
            parameters (``x_s [n_s, H, W, C]`` in ``config.dtype``, optionally
            ``y_s [n_s, C]`` and ``loss/<name>``) and optimizer state, on the backend.
        step_fn: the pure step (:meth:`make_step`) at the guard's ridge and learning rate.
        labels: ``[n_s, C]`` float32 initial (fixed) labels; class_ids: ``[n_s]`` int64.
        rng: the generator of the target batches (its state is checkpointed).
        pool, valid: training indices for targets / the validation split (None: all / none).
        guard: effective ridge and learning rate, recoveries made.
        history: ``step``, ``loss``, ``eval_step``, ``eval_acc``, ``eval_seconds`` lists.
        best: the best support set by validation accuracy.
        step: the last completed step (0 before the first).
        elapsed: seconds run before this process (a resumed run's earlier time).
        run_dir: checkpoint directory or None; last_saved: step of the last checkpoint.
        fingerprint: training-data fingerprint stored in checkpoints.
        stop_reason: set by a hook to end the loop after the current step.
    """

    config: DistillConfig
    comps: Components
    data: PreparedData
    state: Any
    step_fn: Any
    labels: np.ndarray
    class_ids: np.ndarray
    rng: np.random.Generator
    pool: np.ndarray | None
    valid: np.ndarray | None
    guard: NumericalGuard
    history: dict[str, list]
    best: Best
    step: int = 0
    elapsed: float = 0.0
    run_dir: str | os.PathLike | None = None
    last_saved: int | None = None
    fingerprint: str = ""
    resumed: bool = False
    stop_reason: str | None = None
    trimmed: bool = False  # a target batch was trimmed to split evenly (warned once)
    started: float = attrs.field(factory=time.perf_counter)
    sampler: Any = attrs.field(init=False)
    fixed_labels: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        y = self.data.y_train if self.pool is None else self.data.y_train[self.pool]
        check_batch_split(self.config.target_batch, len(y), self.comps.backend)
        self.sampler = TargetSampler(y, self.data.num_classes, self.config.target_batch, self.rng)
        self.fixed_labels = self.comps.backend.asarray(self.labels, "float64")

    # -- the step -------------------------------------------------------------------
    def make_step(self):
        """The pure step (:class:`~kdistill.core.backend.TrainStep`) of the loss at the
        guard's current ridge and learning rate, with the config's optimizer and schedule.

        Raises:
            UnknownComponentError, ConfigError: the optimizer or schedule of the config.
        """
        config, b = self.config, self.comps.backend
        loss_fn = make_kip_loss(self.comps, attrs.evolve(config, ridge=self.guard.ridge), self.fixed_labels)
        optimizer, schedule = make_optimizer(config)
        return b.make_step(loss_fn, optimizer, schedule, self.guard.lr, config.dtype, config.steps)

    def advance(self) -> dict[str, Any]:
        """Take the next step; returns ``{"step", "loss"}``.

        Raises:
            NonFiniteLossError, NotPositiveDefiniteError: the step failed numerically
                beyond the guard's recoveries.
        """
        config, data, b = self.config, self.data, self.comps.backend
        step = self.step + 1
        idx = self.sampler() if self.pool is None else self.pool[self.sampler()]
        trim = len(idx) % b.shards  # a capped batch, or a class too small to fill its share
        if trim:
            if not self.trimmed:
                warnings.warn(f"the target batch of step {step} has {len(idx)} examples (target_batch="
                              f"{config.target_batch}, capped by the training examples per class); the last {trim} "
                              f"are left out so that it splits evenly over {b.shards} devices/processes (also in "
                              "later steps with such batches)", RuntimeWarning, stacklevel=2)
                self.trimmed = True
            idx = idx[:len(idx) - trim]
        # split over the backend's data-parallel shards (devices of a JAX mesh, torch
        # processes); every process draws the same indices and random weights
        batch = (b.shard_rows(data.x_train[idx], config.dtype), b.shard_rows(data.Y_train[idx], "float64"))
        if self.comps.kernel.is_random:
            drawn = self.comps.kernel.sample_weights(step_seed(config.seed, step), data.x_train.shape[1:])
            batch += ({k: b.asarray(v, config.dtype) for k, v in drawn.items()},)
        loss_value = self._guarded_step(batch, step)
        self.step = step
        self.history["step"].append(step)
        self.history["loss"].append(loss_value)
        return {"step": step, "loss": loss_value}

    def _guarded_step(self, batch, step: int) -> float:
        """One step under the numerical guard (:mod:`kdistill.core.guard`): on a NaN/Inf
        loss or gradient, or a failed Cholesky, the state stays the last good one, the
        step function is rebuilt with the guard's remedy and the same batch is retried."""
        while True:
            try:
                state, metrics = self.step_fn(self.state, *batch)
                b = self.comps.backend
                loss = float(b.to_numpy(metrics["loss"]))
                if not bool(b.to_numpy(metrics["finite"])):
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient (loss={loss}); parameters were not updated")
                self.state = state
                return loss
            except (NonFiniteLossError, NotPositiveDefiniteError) as exc:
                if not self.guard.escalate(step, exc):
                    raise type(exc)(self.guard.failure_message(step, exc) + self.where()) from exc
                warnings.warn(self.guard.recovery_message(step, exc), RuntimeWarning, stacklevel=4)
                self.step_fn = self.make_step()

    # -- views ----------------------------------------------------------------------
    def params(self) -> dict[str, np.ndarray]:
        """The current parameters (``x_s``, ``y_s``, ``loss/<name>``) as numpy copies."""
        return self.step_fn.params(self.state)

    def seconds(self) -> float:
        """Training seconds so far, including earlier processes of a resumed run."""
        return self.elapsed + time.perf_counter() - self.started

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images [n_s, ...], labels [n_s, C])`` of the current support set (numpy)."""
        p = self.params()
        return p["x_s"], p.get("y_s", self.labels)

    def where(self) -> str:
        """Where the run's progress is kept, for error messages."""
        if self.run_dir is None:
            return "; no checkpoint (pass a run directory and checkpoint_every to keep progress)"
        if self.last_saved is None:
            return f"; no checkpoint was written to {self.run_dir} yet"
        return f"; the last checkpoint (step {self.last_saved}) in {self.run_dir} is intact"

    def save(self) -> str:
        """Write ``checkpoint.npz`` for the current step (atomic); returns its path.

        Raises:
            CheckpointError: the write failed; the message says what is intact.
        """
        ckpt = Checkpoint(
            step=self.step, config=self.config.to_dict(), trainer_state=self.step_fn.to_arrays(self.state), labels=self.labels,
            class_ids=self.class_ids, rng_state=self.rng.bit_generator.state, history=self.history,
            guard=self.guard.to_dict(), data_fingerprint=self.fingerprint, elapsed_seconds=self.seconds(),
            best=self.best.params, best_step=self.best.step, best_acc=self.best.acc,
        )
        b = self.comps.backend
        if b.process_index != 0:  # one process writes; every process resumes from its file
            self.last_saved = self.step
            return os.fspath(checkpoint_path(self.run_dir))
        try:
            path = ckpt.save(checkpoint_path(self.run_dir))
        except CheckpointError as exc:
            advice = (f"free disk space and continue with `kdistill distill --resume {self.run_dir}`"
                      if self.last_saved is not None or self.resumed else
                      "free disk space and start the run again (there is nothing to resume)")
            raise CheckpointError(f"{exc}. The run stopped after step {self.step}{self.where()}: {advice}") from exc
        self.last_saved = self.step
        return path


class RunHook:
    """Called by :func:`drive` at defined points; every method is optional.

    ``after_step`` may add entries to ``info`` (later hooks see them), set
    ``run.stop_reason`` to end the loop after this step, or raise to stop the run.
    """

    def after_step(self, run: KIPRun, info: dict[str, Any]) -> None:
        """After step ``info["step"]``."""

    def after_run(self, run: KIPRun, result: Any) -> None:
        """Once, after the final evaluation, with the returned
        :class:`~kdistill.io.artifact.DistilledSet` (``result.metrics`` holds the final
        accuracies). Called by :func:`kdistill.plugins.methods.kip.run_kip` for the run
        callbacks of the config (``comps.callbacks``), also when a resumed run only
        evaluates again; not called when the run stops with an exception (a run
        callback that holds files open should flush them in ``after_step``). Trackers
        close their run here and log the artifact."""


def drive(run: KIPRun, hooks: list[RunHook]) -> None:
    """Steps ``run.step + 1 .. config.steps``, each followed by every hook in order,
    until a hook sets ``run.stop_reason``."""
    while run.step < run.config.steps and run.stop_reason is None:
        info = run.advance()
        for hook in hooks:
            hook.after_step(run, info)
