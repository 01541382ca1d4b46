"""The outer loop: KIP (Nguyen et al. 2021, ICLR, Alg. 1) and Label Solve runs.

One KIP step, with the support set ``X_s`` (and optionally ``y_s`` and the loss's
parameters) trainable::

    K_ss = k(X_s, X_s); K_ts = k(X_t, X_s)                 # kernel dtype
    alpha = solve(K_ss + lam tr(K_ss)/n_s I, y_s)          # float64
    L = loss(K_ts alpha, y_t)                              # mean over the target batch
    params <- Adam(params, grad L)

The target batch is class-balanced and resampled every step from a numpy generator
seeded by the run's seed, so runs are deterministic and identical across backends
given the same initialization.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from kdistill.core.artifact import DistilledSet
from kdistill.core.components import Components, PreparedData
from kdistill.core.config import DistillConfig
from kdistill.core.errors import NonFiniteLossError
from kdistill.core.krr import accuracy, krr_predict, label_solve
from kdistill.core.sampling import TargetSampler, balanced_subset, centered_one_hot


def init_support(config: DistillConfig, data: PreparedData, rng: np.random.Generator):
    """Class-balanced initial support set.

    Returns:
        ``(images [n_s, H, W, C] float32, labels [n_s, C] float32, class_ids [n_s] int64)``;
        images are real training examples (``init="real"``) or standard normal noise.
    """
    idx = balanced_subset(data.y_train, data.num_classes, config.ipc, rng)
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
    """
    x_test, y_test = data.x_test[:limit], data.y_test[:limit]
    pred = krr_predict(
        comps.eval_kernel, comps.solver, images, labels, x_test, config.ridge, config.dtype,
        progress=progress,
    )
    return accuracy(pred, y_test)


def make_kip_loss(comps: Components, config: DistillConfig, fixed_labels: Any) -> Callable:
    """``loss_fn(params, x_t, y_t) -> scalar`` for the trainer.

    ``params`` holds ``x_s`` and, when learned, ``y_s`` and ``loss/<name>`` entries.
    """
    kernel, solver, loss = comps.kernel, comps.solver, comps.loss

    def loss_fn(params, x_t, y_t):
        y_s = params["y_s"] if "y_s" in params else fixed_labels
        predictor = solver.fit(kernel, params["x_s"], y_s, config.ridge)
        loss_params = {k[5:]: v for k, v in params.items() if k.startswith("loss/")}
        return loss(predictor(x_t), y_t, loss_params)

    return loss_fn


def run_kip(
    config: DistillConfig,
    comps: Components,
    data: PreparedData,
    callback: Callable[[dict], None] | None = None,
) -> DistilledSet:
    """Run KIP for ``config.steps`` steps and return the distilled set.

    Args:
        callback: called with a dict after every step (``step``, ``loss``, and, on
            evaluation steps, ``eval_acc``); used by the CLI's progress bar.
    Raises:
        NonFiniteLossError: a step produced a NaN/Inf loss or gradient (the message
            names the step and remedies).
    """
    start = time.perf_counter()
    b = comps.backend
    rng = np.random.default_rng(config.seed)
    images, labels, class_ids = init_support(config, data, rng)
    params = {"x_s": images}
    if config.learn_labels:
        params["y_s"] = labels
    params.update({f"loss/{k}": v for k, v in comps.loss.init_params().items()})
    fixed_labels = b.asarray(labels, "float64")
    trainer = b.make_trainer(
        make_kip_loss(comps, config, fixed_labels), params, config.optimizer, config.lr, config.dtype
    )
    sampler = TargetSampler(data.y_train, data.num_classes, config.target_batch, rng)
    history: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "eval_acc": [], "eval_seconds": []}

    def current():
        p = trainer.params_numpy()
        return p["x_s"], p.get("y_s", labels)

    def record_eval(step: int) -> float:
        acc = evaluate_support(comps, config, data, *current(), limit=config.eval_test_size)
        history["eval_step"].append(step)
        history["eval_acc"].append(acc)
        history["eval_seconds"].append(time.perf_counter() - start)
        return acc

    init_acc = record_eval(0) if config.eval_every else None
    for step in range(1, config.steps + 1):
        idx = sampler()
        x_t, y_t = b.asarray(data.x_train[idx], config.dtype), b.asarray(data.Y_train[idx], "float64")
        try:
            loss_value = trainer.step(x_t, y_t)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"step {step}: {exc}. Remedies: raise the relative ridge (now {config.ridge:g}), "
                f"lower the learning rate (now {config.lr:g}), or use dtype='float64'"
            ) from exc
        history["step"].append(step)
        history["loss"].append(loss_value)
        info = {"step": step, "loss": loss_value}
        if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
            info["eval_acc"] = record_eval(step)
        if callback is not None:
            callback(info)
    train_seconds = time.perf_counter() - start

    final_images, final_labels = current()
    metrics = {
        "method": "kip",
        "distilled_acc": evaluate_support(comps, config, data, final_images, final_labels),
        "init_acc": init_acc,
        "train_seconds": train_seconds,
        "final_loss": history["loss"][-1] if history["loss"] else None,
    }
    metrics.update(random_baseline(comps, config, data))
    metrics["total_seconds"] = time.perf_counter() - start
    loss_params = {k[5:]: v for k, v in trainer.params_numpy().items() if k.startswith("loss/")}
    return _result(config, data, final_images, final_labels, class_ids, metrics, history, loss_params)


def random_baseline(comps: Components, config: DistillConfig, data: PreparedData) -> dict[str, Any]:
    """KRR test accuracy of a random class-balanced real subset of the same size.

    The subset is drawn with seed ``config.seed + 1`` (independent of the support
    initialization) and scored with the same evaluation kernel, solver and ridge.
    """
    rng = np.random.default_rng(config.seed + 1)
    idx = balanced_subset(data.y_train, data.num_classes, config.ipc, rng)
    acc = evaluate_support(comps, config, data, data.x_train[idx], data.Y_train[idx])
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
    metrics = {
        "method": "label-solve",
        "distilled_acc": evaluate_support(comps, config, data, images, solved),
        "init_acc": evaluate_support(comps, config, data, images, labels),
        "n_targets": int(len(idx)),
        "train_seconds": solve_seconds,
    }
    metrics.update(random_baseline(comps, config, data))
    metrics["total_seconds"] = time.perf_counter() - start
    return _result(config, data, images, solved.astype(np.float32), class_ids, metrics, {}, {})


def _result(config, data, images, labels, class_ids, metrics, history, loss_params) -> DistilledSet:
    from kdistill import __version__

    metrics = {
        **metrics,
        "kernel": config.kernel.to_dict(),
        "eval_kernel": (config.eval_kernel or config.kernel).to_dict(),
        "backend": config.backend,
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
