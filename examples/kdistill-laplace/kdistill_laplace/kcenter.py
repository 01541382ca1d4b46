"""A third-party outer-loop method: greedy k-center selection of real examples.

A coreset baseline (Sener & Savarese 2018, "Active learning for convolutional neural
networks: a core-set approach"): per class, start from the example nearest the class
mean and repeatedly add the example farthest from those chosen (Euclidean distance in
the preprocessed space). No training; the labels are the centered one-hot labels.
Registered as method ``kcenter``: ``kdistill distill --method kcenter``.
"""

from __future__ import annotations

import numpy as np

from kdistill.core.hookspecs import hookimpl
from kdistill.runtime.support import make_result, random_baseline
from kdistill.core.krr import accuracy, krr_predict
from kdistill.core.sampling import centered_one_hot


def kcenter_indices(x: np.ndarray, k: int) -> list[int]:
    """Greedy k-center on ``x [n, d]`` (float): indices of ``k`` rows, the first the
    row nearest the mean. Raises ValueError if ``k > n``."""
    if k > len(x):
        raise ValueError(f"k-center needs k <= n, got k={k}, n={len(x)}")
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    chosen, dist = [first], ((x - x[first]) ** 2).sum(1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((x - x[nxt]) ** 2).sum(1))
    return chosen


def run_kcenter(config, comps, data, callback=None, run_dir=None, resume=False):
    """``config.ipc`` k-centers per class; metrics as for a kdistill run."""
    idx = []
    for c in range(data.num_classes):
        members = np.flatnonzero(data.y_train == c)
        idx += [int(members[i]) for i in kcenter_indices(data.x_train[members].reshape(len(members), -1), config.ipc)]
    idx = np.asarray(idx)
    images, class_ids = data.x_train[idx], data.y_train[idx]
    labels = centered_one_hot(class_ids, data.num_classes)
    x_test, y_test = data.x_test[: config.test_size], data.y_test[: config.test_size]
    pred = krr_predict(comps.eval_kernel, comps.solver, images, labels, x_test, config.ridge, config.dtype)
    metrics = {"method": "kcenter", "distilled_acc": accuracy(pred, y_test), "n_test": int(len(x_test))}
    metrics.update(random_baseline(comps, config, data))
    return make_result(config, data, images, labels, class_ids, metrics, {}, {})


@hookimpl
def kdistill_register_methods(register):
    register("kcenter", run_kcenter, "greedy k-center coreset of real examples per class (example plugin)")
