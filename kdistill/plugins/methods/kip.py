"""The outer loop: KIP (Nguyen et al. 2021, ICLR, Alg. 1) and Label Solve runs.

One KIP step, with the support set ``X_s`` (and optionally ``y_s`` and the loss's
parameters) trainable::

    K_ss = k(X_s, X_s); K_ts = k(X_t, X_s)                 # kernel dtype
    alpha = solve(K_ss + lam tr(K_ss)/n_s I, y_s)          # float64
    L = loss(K_ts alpha, y_t)                              # mean over the target batch
    params <- optimizer(params, grad L, lr * schedule(step))   # Adam, constant lr by default

The target batch is class-balanced and resampled every step from a numpy generator
seeded by the run's seed, so runs are deterministic and identical across backends
given the same initialization. Random-feature kernels (RFAD, Loo et al. 2022) get fresh
network weights every step, drawn on the host from the run's seed and the step
(:func:`kdistill.core.contracts.step_seed`, :class:`~kdistill.core.contracts.RandomKernel`)
and passed into the step as arrays.

With a validation split (``config.valid_size``), held-out training examples score the
support set during the run, the best one is kept (and checkpointed) and returned, and
``config.patience`` stops the run early.
"""

from __future__ import annotations

import os
import signal
import warnings
from typing import Any, Callable

import numpy as np

from kdistill.core.config import DistillConfig
from kdistill.core.guard import NumericalGuard
from kdistill.core.loop import Best, KIPRun, RunHook, drive
from kdistill.errors import CheckpointError, RunInterrupted
from kdistill.io.artifact import DistilledSet
from kdistill.io.checkpoint import checkpoint_path, data_fingerprint, ensure_no_checkpoint, open_for_resume
from kdistill.runtime.components import Components, PreparedData
from kdistill.runtime.hooks import CallbackHook, Checkpoints, Evaluation, ProgressHook, StopConditions
from kdistill.runtime.progress import active as active_progress
from kdistill.runtime.progress import phase as progress_phase
from kdistill.runtime.signals import InterruptNow, StopRequest
from kdistill.runtime.support import (
    evaluate_support,
    evaluation_rows,
    init_support,
    make_result,
    random_baseline,
    split_validation,
)


def run_kip(
    config: DistillConfig,
    comps: Components,
    data: PreparedData,
    callback: Callable[[dict], None] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> DistilledSet:
    """Run KIP for ``config.steps`` steps and return the distilled set.

    Args:
        callback: called with a dict after every step (``step``, ``loss``, and, on
            evaluation steps, ``eval_acc``); used by the CLI's progress bar.
        run_dir: directory of ``checkpoint.npz`` (:mod:`kdistill.io.checkpoint`).
            With it, a checkpoint is written every ``config.checkpoint_every`` steps and
            always after the last step, before the final evaluation starts; SIGINT/SIGTERM
            during a step finish the step, write a checkpoint and raise RunInterrupted;
            during the final evaluation they stop it at once and raise RunInterrupted
            (the checkpoint of the last step is on disk). The caller holds the
            directory's lock (:class:`kdistill.io.rundir.RunDirectory`).
        resume: continue from ``run_dir``'s checkpoint. The result is bit-for-bit the
            one an uninterrupted run gives (same config, data and backend). A run whose
            steps were all done (interrupted in the final evaluation, or stopped by its
            time limit or patience) only runs the final evaluation.
    Raises:
        NonFiniteLossError, NotPositiveDefiniteError: a step failed numerically and the
            automatic recoveries (``config.nonfinite_retries``, see
            :mod:`kdistill.core.guard`) did not help; the message names the step,
            remedies and the last checkpoint.
        CheckpointError: cannot resume (no or corrupt checkpoint, config or data
            differ), a fresh run over an existing checkpoint, or a checkpoint write
            failed (the run stops; the previous checkpoint is intact).
        RunInterrupted: SIGINT/SIGTERM, with ``run_dir`` (also during the final
            evaluation).
    """
    fingerprint = data_fingerprint(data.x_train, data.y_train) if run_dir is not None else ""
    run = _start(config, comps, data, run_dir, resume, fingerprint)
    evaluation = Evaluation()
    if not resume and config.eval_every:
        evaluation.evaluate(run, 0)
    if resume and StopConditions.already_met(run):  # stopped early before: only evaluate
        run.stop_reason = "resumed after its stop"
    with StopRequest(enabled=run_dir is not None) as stop:
        hooks: list[RunHook] = [evaluation]
        steps_bar = ProgressHook.open(run) if active_progress() is not None else None
        if steps_bar is not None:
            hooks.append(steps_bar)
        if callback is not None:
            hooks.append(CallbackHook(callback))
        hooks.extend(comps.callbacks)  # registered run callbacks (tracking, logging)
        if run_dir is not None:
            hooks.append(Checkpoints(stop))
        hooks.append(StopConditions(evaluation))
        try:
            drive(run, hooks)
        finally:
            if steps_bar is not None:
                steps_bar.close(run)
        train_seconds = run.seconds()
        final_step = run.step
        if run_dir is not None and (run.last_saved != final_step or run.stop_reason is not None):
            # the distilled set is safe before the final evaluation starts; after a stop
            # (time limit, patience) also with the stop's last validation score and time
            run.save()
        if stop.signum is not None:  # a signal during that write
            raise RunInterrupted(
                f"interrupted by {signal.Signals(stop.signum).name} after the last step ({final_step}); "
                f"checkpoint written to {checkpoint_path(run_dir)}; `kdistill distill --resume {run_dir}` "
                "only runs the final evaluation (Python: kdistill.distill(run_dir=..., resume=True))",
                signum=stop.signum, step=final_step, checkpoint=checkpoint_path(run_dir),
            )

        def interrupted(signum: int) -> RunInterrupted:
            return RunInterrupted(
                f"interrupted by {signal.Signals(signum).name} during the final evaluation, after the last "
                f"step ({final_step}); the distilled set is in the checkpoint {checkpoint_path(run_dir)}; "
                f"`kdistill distill --resume {run_dir}` only runs the final evaluation again "
                "(Python: kdistill.distill(run_dir=..., resume=True))",
                signum=signum, step=final_step, checkpoint=checkpoint_path(run_dir),
            )

        with InterruptNow(interrupted, enabled=run_dir is not None):
            metrics, final_params = _final_metrics(run, train_seconds)
    history = run.history
    if run.valid is not None:
        metrics.update(eval_split="validation", valid_size=int(len(run.valid)), best_step=run.best.step,
                       best_valid_acc=run.best.acc)
    metrics["steps_run"] = history["step"][-1] if history["step"] else 0
    metrics["total_seconds"] = run.seconds()
    loss_params = {k[5:]: v for k, v in final_params.items() if k.startswith("loss/")}
    images, labels = final_params["x_s"], final_params.get("y_s", run.labels)
    result = make_result(config, data, images, labels, run.class_ids, metrics, history, loss_params)
    for hook in comps.callbacks:  # run callbacks' end of run (RunHook.after_run)
        hook.after_run(run, result)
    return result


def _start(config, comps, data, run_dir, resume: bool, fingerprint: str) -> KIPRun:
    """A fresh run (class-balanced initial support set) or one restored from ``run_dir``'s
    checkpoint (parameters, optimizer state, generator, history, guard, best set)."""
    rng = np.random.default_rng(config.seed)
    pool, valid = split_validation(config, data)
    common = dict(config=config, comps=comps, data=data, rng=rng, pool=pool, valid=valid, run_dir=run_dir,
                  fingerprint=fingerprint, state=None, step_fn=None)
    if resume:
        if run_dir is None:
            raise CheckpointError("resume=True needs the run directory of the checkpoint (run_dir)")
        saved = open_for_resume(run_dir, config.to_dict(), fingerprint)
        if config.steps > DistillConfig.from_dict(saved.config).steps:
            _extend(saved, config, valid)
        rng.bit_generator.state = saved.rng_state
        best = Best(params=saved.best, step=saved.best_step, acc=saved.best_acc)
        if saved.best_step is not None:
            best.since = sum(1 for s in saved.history["eval_step"] if s > saved.best_step)
        run = KIPRun(labels=saved.labels, class_ids=saved.class_ids, history=saved.history,
                     guard=NumericalGuard.from_dict(saved.guard, config.dtype), best=best, step=saved.step,
                     elapsed=saved.elapsed_seconds, last_saved=saved.step, resumed=True, **common)
        run.step_fn = run.make_step()
        run.state = run.step_fn.from_arrays(saved.trainer_state)
        return run
    if run_dir is not None:
        ensure_no_checkpoint(run_dir)
    images, labels, class_ids = init_support(config, data, rng, pool)
    params = {"x_s": images}
    if config.learn_labels:
        params["y_s"] = labels
    params.update({f"loss/{k}": v for k, v in comps.loss.init_params().items()})
    history = {"step": [], "loss": [], "eval_step": [], "eval_acc": [], "eval_seconds": []}
    run = KIPRun(labels=labels, class_ids=class_ids, history=history, guard=NumericalGuard.start(config),
                 best=Best(), **common)
    run.step_fn = run.make_step()
    run.state = run.step_fn.init(params)
    return run


def _extend(saved, config: DistillConfig, valid) -> None:
    """Prepare the checkpoint of a run of ``M`` steps to continue to ``config.steps > M``
    (``kdistill distill --resume DIR --steps N``; the config check allows exactly
    ``steps`` to grow, with a constant learning-rate schedule).

    The old run evaluated after its last step ``M`` even when ``M`` is not a multiple of
    ``eval_every``; an uninterrupted run of ``config.steps`` would not have, so that
    evaluation is dropped from the history and the extended run equals the
    uninterrupted one bit for bit (support set, labels, losses and evaluations). With a
    validation split where that evaluation chose the best set, it is kept (the earlier
    best is not in the checkpoint) and a warning says the result may differ.
    """
    old_steps, every, hist = DistillConfig.from_dict(saved.config).steps, config.eval_every, saved.history
    if not (every and old_steps % every and hist["eval_step"][-1:] == [old_steps] and saved.step == old_steps):
        return
    if valid is not None and saved.best_step == old_steps:
        warnings.warn(f"extending a run whose best validation set is from the evaluation after its last step "
                      f"({old_steps}, not a multiple of eval_every={every}): that evaluation stays, so the "
                      f"returned set may differ from an uninterrupted {config.steps}-step run", RuntimeWarning,
                      stacklevel=3)
        return
    for key in ("eval_step", "eval_acc", "eval_seconds"):
        hist[key].pop()


def _final_metrics(run: KIPRun, train_seconds: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The returned support set (the best by validation accuracy if there is one, else
    the last) scored on the test set, and the random-subset baseline."""
    config, comps, data, history = run.config, run.comps, run.data, run.history
    final_params = run.best.params if run.best.step is not None else run.params()
    images, labels = final_params["x_s"], final_params.get("y_s", run.labels)
    n_test = int(len(data.x_test[: config.test_size]))
    # progress in kernel rows (support + test, both passes), per tile for slow kernels
    with progress_phase("final evaluation", evaluation_rows(len(images), n_test), "row") as bar:
        metrics = {
            "method": "kip",
            "distilled_acc": evaluate_support(comps, config, data, images, labels, limit=config.test_size,
                                              progress=bar.update, count_support=True),
            "n_test": n_test,
            "init_acc": history["eval_acc"][0] if history["eval_step"][:1] == [0] and run.valid is None else None,
            "train_seconds": train_seconds,
            "final_loss": history["loss"][-1] if history["loss"] else None,
            "recoveries": list(run.guard.events),
        }
        metrics.update(random_baseline(comps, config, data, progress=bar.update, count_support=True))
    return metrics, final_params


run_kip.resumable = True  # continues from a checkpoint (see kdistill.core.hookspecs: methods)
