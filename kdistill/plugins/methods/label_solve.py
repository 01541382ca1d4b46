"""Label Solve (Nguyen et al. 2021, ICLR, Sec. 3): keep real support images and solve
for the labels that minimize the KRR loss on a target batch, in closed form."""

from __future__ import annotations

import time

import numpy as np

from kdistill.core.config import DistillConfig
from kdistill.core.krr import accuracy, krr_predict, label_solve
from kdistill.core.sampling import TargetSampler
from kdistill.io.artifact import DistilledSet
from kdistill.runtime.components import Components, PreparedData
from kdistill.runtime.support import init_support, make_result, random_baseline


def run_label_solve(config: DistillConfig, comps: Components, data: PreparedData, callback=None, run_dir=None,
                    resume: bool = False) -> DistilledSet:
    """Label Solve: keep class-balanced real support images, solve for their labels.

    ``callback``, ``run_dir`` and ``resume`` are accepted for the uniform method
    signature (:data:`METHODS`) and unused: Label Solve has no steps.

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
    return make_result(config, data, images, solved.astype(np.float32), class_ids, metrics, {}, {})
