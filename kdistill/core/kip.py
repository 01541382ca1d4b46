"""The outer loop: KIP (Nguyen et al. 2021, ICLR, Alg. 1) and Label Solve runs.

One KIP step, with the support set ``X_s`` (and optionally ``y_s`` and the loss's
parameters) trainable::

    K_ss = k(X_s, X_s); K_ts = k(X_t, X_s)                 # kernel dtype
    alpha = solve(K_ss + lam tr(K_ss)/n_s I, y_s)          # float64
    L = loss(K_ts alpha, y_t)                              # mean over the target batch
    params <- Adam(params, grad L)

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
import time
import warnings
from typing import Any, Callable

import attrs
import numpy as np

from kdistill.core.artifact import DistilledSet
from kdistill.core.checkpoint import (
    Checkpoint, checkpoint_path, data_fingerprint, ensure_no_checkpoint, open_for_resume,
)
from kdistill.core.components import Components, PreparedData
from kdistill.core.config import DistillConfig
from kdistill.core.contracts import step_seed
from kdistill.core.errors import (
    CheckpointError, DataError, NonFiniteLossError, NotPositiveDefiniteError, RunInterrupted,
)
from kdistill.core.guard import NumericalGuard
from kdistill.core.krr import accuracy, krr_predict, label_solve
from kdistill.core.signals import InterruptNow, StopRequest
from kdistill.core.sampling import TargetSampler, balanced_subset, centered_one_hot


def split_validation(config: DistillConfig, data: PreparedData) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(pool, valid)``: indices of the training examples left for initialization and
    targets, and of the class-balanced validation split (``config.valid_size`` examples,
    ``valid_size // C`` per class, drawn from a generator of its own, seeded by
    ``[seed, 1]``, so the run's other draws are unchanged). ``(None, None)`` without one.

    Raises:
        DataError: ``valid_size`` is smaller than the number of classes, or leaves a
            class without enough examples.
    """
    if not config.valid_size:
        return None, None
    per_class = config.valid_size // data.num_classes
    if per_class < 1:
        raise DataError(
            f"valid_size={config.valid_size} is smaller than the number of classes "
            f"({data.num_classes}); use at least {data.num_classes} (or 0 for no validation split)"
        )
    valid = balanced_subset(data.y_train, data.num_classes, per_class, np.random.default_rng([config.seed, 1]))
    pool = np.setdiff1d(np.arange(len(data.y_train)), valid)
    return pool, np.sort(valid)


def init_support(config: DistillConfig, data: PreparedData, rng: np.random.Generator, pool: np.ndarray | None = None):
    """Class-balanced initial support set, drawn from ``pool`` (training indices; None =
    all).

    Returns:
        ``(images [n_s, H, W, C] float32, labels [n_s, C] float32, class_ids [n_s] int64)``;
        images are real training examples (``init="real"``) or standard normal noise.
    """
    if pool is None:
        idx = balanced_subset(data.y_train, data.num_classes, config.ipc, rng)
    else:
        idx = pool[balanced_subset(data.y_train[pool], data.num_classes, config.ipc, rng)]
    class_ids = data.y_train[idx]
    if config.init == "real":
        images = data.x_train[idx].copy()
    else:
        images = rng.standard_normal((len(idx), *data.x_train.shape[1:])).astype(np.float32)
    return images, centered_one_hot(class_ids, data.num_classes), class_ids


def evaluate_support(
    comps: Components,
    config: DistillConfig,
    data: PreparedData,
    images: np.ndarray,
    labels: np.ndarray,
    limit: int | None = None,
    progress=None,
) -> float:
    """KRR test accuracy of a support set under the evaluation kernel.

    Args:
        images: ``[n_s, H, W, C]``; labels: ``[n_s, C]``.
        limit: use only the first ``limit`` test examples (None = all).
        progress: optional callable ``progress(rows_done)`` after each block of test rows.
    """
    return score_support(comps.eval_kernel, comps, config, images, labels, data.x_test[:limit], data.y_test[:limit], progress)


def score_support(kernel, comps: Components, config: DistillConfig, images, labels, x, y, progress=None) -> float:
    """KRR accuracy (fraction in [0, 1]) of the support set ``images [n_s, ...]``,
    ``labels [n_s, C]`` on examples ``x [n, ...]`` with class ids ``y [n]``, under
    ``kernel`` and the run's solver and ridge."""
    pred = krr_predict(kernel, comps.solver, images, labels, x, config.ridge, config.dtype, progress=progress)
    return accuracy(pred, y)


def make_kip_loss(comps: Components, config: DistillConfig, fixed_labels: Any) -> Callable:
    """``loss_fn(params, x_t, y_t) -> scalar`` for the trainer.

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
        run_dir: directory of ``checkpoint.npz`` (:mod:`kdistill.core.checkpoint`).
            With it, a checkpoint is written every ``config.checkpoint_every`` steps and
            always after the last step, before the final evaluation starts; SIGINT/SIGTERM
            during a step finish the step, write a checkpoint and raise RunInterrupted;
            during the final evaluation they stop it at once and raise RunInterrupted
            (the checkpoint of the last step is on disk). The caller holds the
            directory's lock (:class:`kdistill.core.rundir.RunDirectory`).
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
    start = time.perf_counter()
    b = comps.backend
    fingerprint = data_fingerprint(data.x_train, data.y_train) if run_dir is not None else ""
    rng = np.random.default_rng(config.seed)
    pool, valid = split_validation(config, data)
    best: dict[str, Any] = {"params": {}, "step": None, "acc": None, "since": 0}
    if resume:
        if run_dir is None:
            raise CheckpointError("resume=True needs the run directory of the checkpoint (run_dir)")
        saved = open_for_resume(run_dir, config.to_dict(), fingerprint)
        labels, class_ids, params = saved.labels, saved.class_ids, saved.params()
        rng.bit_generator.state = saved.rng_state
        history, guard = saved.history, NumericalGuard.from_dict(saved.guard, config.dtype)
        first, elapsed, last_saved = saved.step + 1, saved.elapsed_seconds, saved.step
        best.update(params=saved.best, step=saved.best_step, acc=saved.best_acc)
        if saved.best_step is not None:
            best["since"] = sum(1 for s in history["eval_step"] if s > saved.best_step)
    else:
        if run_dir is not None:
            ensure_no_checkpoint(run_dir)
        images, labels, class_ids = init_support(config, data, rng, pool)
        params = {"x_s": images}
        if config.learn_labels:
            params["y_s"] = labels
        params.update({f"loss/{k}": v for k, v in comps.loss.init_params().items()})
        history = {"step": [], "loss": [], "eval_step": [], "eval_acc": [], "eval_seconds": []}
        guard = NumericalGuard.start(config)
        first, elapsed, last_saved = 1, 0.0, None
    fixed_labels = b.asarray(labels, "float64")

    def make_trainer(init_params):
        loss_fn = make_kip_loss(comps, attrs.evolve(config, ridge=guard.ridge), fixed_labels)
        return b.make_trainer(loss_fn, init_params, config.optimizer, guard.lr, config.dtype)

    trainer = make_trainer(params)
    if resume:
        trainer.load_state(saved.trainer_state)
    sampler = TargetSampler(data.y_train if pool is None else data.y_train[pool], data.num_classes, config.target_batch, rng)
    random_kernel = comps.kernel.is_random

    def seconds() -> float:
        return elapsed + time.perf_counter() - start

    def current():
        p = trainer.params_numpy()
        return p["x_s"], p.get("y_s", labels)

    def record_eval(step: int) -> float:
        if valid is None:
            acc = evaluate_support(comps, config, data, *current(), limit=config.eval_test_size)
        else:
            acc = score_support(comps.valid_kernel or comps.eval_kernel, comps, config, *current(),
                                data.x_train[valid], data.y_train[valid])
            if best["acc"] is None or acc > best["acc"]:
                best.update(params=trainer.params_numpy(), step=step, acc=acc, since=0)
            else:
                best["since"] += 1
        history["eval_step"].append(step)
        history["eval_acc"].append(acc)
        history["eval_seconds"].append(seconds())
        return acc

    def last_checkpoint() -> str:
        if run_dir is None:
            return "; no checkpoint (pass a run directory and checkpoint_every to keep progress)"
        if last_saved is None:
            return f"; no checkpoint was written to {run_dir} yet"
        return f"; the last checkpoint (step {last_saved}) in {run_dir} is intact"

    def save(step: int):
        nonlocal last_saved
        ckpt = Checkpoint(
            step=step, config=config.to_dict(), trainer_state=trainer.state(), labels=labels,
            class_ids=class_ids, rng_state=rng.bit_generator.state, history=history,
            guard=guard.to_dict(), data_fingerprint=fingerprint, elapsed_seconds=seconds(),
            best=best["params"], best_step=best["step"], best_acc=best["acc"],
        )
        try:
            path = ckpt.save(checkpoint_path(run_dir))
        except CheckpointError as exc:
            advice = (f"free disk space and continue with `kdistill distill --resume {run_dir}`"
                      if last_saved is not None or resume else
                      "free disk space and start the run again (there is nothing to resume)")
            raise CheckpointError(f"{exc}. The run stopped after step {step}{last_checkpoint()}: {advice}") from exc
        last_saved = step
        return path

    if not resume and config.eval_every:
        record_eval(0)
    # a resumed run that had stopped early (time limit, patience) or finished its steps
    # (interrupted in the final evaluation) only evaluates
    done = resume and (
        (bool(config.time_limit) and elapsed >= config.time_limit)
        or bool(config.patience and best["since"] >= config.patience)
    )
    with StopRequest(enabled=run_dir is not None) as stop:
        for step in range(first, 0 if done else config.steps + 1):
            idx = sampler() if pool is None else pool[sampler()]
            batch = (b.asarray(data.x_train[idx], config.dtype), b.asarray(data.Y_train[idx], "float64"))
            if random_kernel:
                drawn = comps.kernel.sample_weights(step_seed(config.seed, step), data.x_train.shape[1:])
                batch += ({k: b.asarray(v, config.dtype) for k, v in drawn.items()},)
            loss_value, trainer = _guarded_step(trainer, batch, step, guard, make_trainer, last_checkpoint)
            history["step"].append(step)
            history["loss"].append(loss_value)
            info = {"step": step, "loss": loss_value}
            if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                info["eval_acc"] = record_eval(step)
            if callback is not None:
                callback(info)
            every, signum = config.checkpoint_every, stop.signum  # read the signal once
            if run_dir is not None and (signum is not None or (every and (step % every == 0 or step == config.steps))):
                path = save(step)
            if signum is not None:
                raise RunInterrupted(
                    f"interrupted by {signal.Signals(signum).name} after step {step} of {config.steps}; "
                    f"checkpoint written to {path}; continue with `kdistill distill --resume {run_dir}` "
                    "(Python: kdistill.distill(run_dir=..., resume=True))",
                    signum=signum, step=step, checkpoint=path,
                )
            out_of_time = bool(config.time_limit) and seconds() >= config.time_limit
            if out_of_time or (config.patience and best["since"] >= config.patience):
                if out_of_time and valid is not None and history["eval_step"][-1:] != [step]:
                    record_eval(step)  # the last support set gets its validation score too
                break
        train_seconds = seconds()
        final_step = history["step"][-1] if history["step"] else 0
        if run_dir is not None and last_saved != final_step:
            save(final_step)  # the distilled set is safe before the final evaluation starts
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
            final_images, final_labels = current()
            final_params = trainer.params_numpy()
            if best["step"] is not None:
                final_params = best["params"]
                final_images, final_labels = final_params["x_s"], final_params.get("y_s", labels)
            metrics = {
                "method": "kip",
                "distilled_acc": evaluate_support(comps, config, data, final_images, final_labels,
                                                  limit=config.test_size),
                "n_test": int(len(data.x_test[: config.test_size])),
                "init_acc": history["eval_acc"][0] if history["eval_step"][:1] == [0] and valid is None else None,
                "train_seconds": train_seconds,
                "final_loss": history["loss"][-1] if history["loss"] else None,
                "recoveries": list(guard.events),
            }
            metrics.update(random_baseline(comps, config, data))
    if valid is not None:
        metrics.update(eval_split="validation", valid_size=int(len(valid)), best_step=best["step"],
                       best_valid_acc=best["acc"])
    metrics["steps_run"] = history["step"][-1] if history["step"] else 0
    metrics["total_seconds"] = elapsed + time.perf_counter() - start
    loss_params = {k[5:]: v for k, v in final_params.items() if k.startswith("loss/")}
    return _result(config, data, final_images, final_labels, class_ids, metrics, history, loss_params)


def _guarded_step(trainer, batch, step: int, guard: NumericalGuard, make_trainer, where: Callable[[], str]):
    """One trainer step under the numerical guard (see :mod:`kdistill.core.guard`).

    On a NaN/Inf loss or gradient, or a failed Cholesky, the last good state (the
    trainer left it unchanged) moves into a trainer rebuilt with the guard's remedy and
    the same batch is retried, while recoveries are left.

    Returns:
        ``(loss, trainer)``: the trainer may be a new one.
    Raises:
        NonFiniteLossError, NotPositiveDefiniteError: no recovery left.
    """
    while True:
        try:
            return trainer.step(*batch), trainer
        except (NonFiniteLossError, NotPositiveDefiniteError) as exc:
            if not guard.escalate(step, exc):
                raise type(exc)(guard.failure_message(step, exc) + where()) from exc
            warnings.warn(guard.recovery_message(step, exc), RuntimeWarning, stacklevel=3)
            good = trainer.state()
            trainer = make_trainer({k[7:]: v for k, v in good.items() if k.startswith("params/")})
            trainer.load_state(good)


def random_baseline(comps: Components, config: DistillConfig, data: PreparedData, progress=None) -> dict[str, Any]:
    """KRR test accuracy of a random class-balanced real subset of the same size.

    The subset is drawn with seed ``config.seed + 1`` (independent of the support
    initialization) and scored with the same evaluation kernel, solver and ridge.
    ``progress``: optional callable ``progress(rows_done)`` after each test block.
    """
    rng = np.random.default_rng(config.seed + 1)
    idx = balanced_subset(data.y_train, data.num_classes, config.ipc, rng)
    acc = evaluate_support(comps, config, data, data.x_train[idx], data.Y_train[idx], limit=config.test_size,
                           progress=progress)
    return {"random_acc": acc}


def run_label_solve(config: DistillConfig, comps: Components, data: PreparedData) -> DistilledSet:
    """Label Solve: keep class-balanced real support images, solve for their labels.

    Targets are a class-balanced subset of ``config.target_batch`` training examples
    (all of them if ``target_batch`` >= the training set size). The random-subset
    baseline here is the same support images with their original labels.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    images, labels, class_ids = init_support(config, data, rng)
    idx = TargetSampler(data.y_train, data.num_classes, config.target_batch, rng)()
    solved = label_solve(
        comps.kernel, comps.solver, images, data.x_train[idx], data.Y_train[idx],
        config.ridge, dtype=config.dtype,
    )
    solve_seconds = time.perf_counter() - start
    # one kernel pass scores both label sets (KRR predictions are linear in the labels)
    x_test, y_test = data.x_test[: config.test_size], data.y_test[: config.test_size]
    pred = krr_predict(
        comps.eval_kernel, comps.solver, images, np.concatenate([solved, labels], axis=1),
        x_test, config.ridge, config.dtype,
    )
    n_cls = labels.shape[1]
    metrics = {
        "method": "label-solve",
        "distilled_acc": accuracy(pred[:, :n_cls], y_test),
        "init_acc": accuracy(pred[:, n_cls:], y_test),
        "n_test": int(len(x_test)),
        "n_targets": int(len(idx)),
        "train_seconds": solve_seconds,
    }
    metrics.update(random_baseline(comps, config, data))
    metrics["total_seconds"] = time.perf_counter() - start
    return _result(config, data, images, solved.astype(np.float32), class_ids, metrics, {}, {})


def _result(config, data, images, labels, class_ids, metrics, history, loss_params) -> DistilledSet:
    from kdistill.version import __version__
    from kdistill.core.registry import component_provenance

    metrics = {
        **metrics,
        "kernel": config.kernel.to_dict(),
        "eval_kernel": (config.eval_kernel or config.kernel).to_dict(),
        "backend": config.backend,
        "components": component_provenance(config),  # which package supplied each component
    }

    return DistilledSet(
        images=np.asarray(images, np.float32),
        labels=np.asarray(labels, np.float32),
        class_ids=np.asarray(class_ids, np.int64),
        transform=data.transform,
        config=config.to_dict(),
        metrics=metrics,
        history=history,
        loss_params=loss_params,
        seed=config.seed,
        version=__version__,
        dataset=data.info,
    )
