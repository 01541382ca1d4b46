"""RFAD runs: random-feature kernels redrawn every step inside KIP, the validation split
with best-set keeping and early stopping, the time limit, and resuming such runs."""

from __future__ import annotations

import numpy as np
import pytest

import kdistill
from kdistill.runtime.components import build_components, prepare_data
from kdistill.core.config import DistillConfig
from kdistill.errors import DataError, IncompatibleComponentsError, RunInterrupted
from kdistill.runtime.support import split_validation

RF = {"name": "rf-convnet", "n_models": 2, "width": 8, "depth": 2}
FAST = dict(ipc=2, target_batch=200, kernel=RF, solver="feature", loss="platt", eval_kernel={"name": "fc"})


def test_rfad_steps_identical_on_jax_and_torch():
    """Weights are drawn on the host from (seed, step): both backends follow one
    trajectory (float64), and the draws differ between steps (the loss is not that of
    one fixed kernel)."""
    runs = {b: kdistill.distill(backend=b, steps=4, dtype="float64", learn_labels=True, eval_every=0, **FAST)
            for b in ("jax", "torch")}
    j, t = runs["jax"], runs["torch"]
    np.testing.assert_allclose(j.history["loss"], t.history["loss"], rtol=1e-9)
    np.testing.assert_allclose(j.images, t.images, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(j.loss_params["log_tau"], t.loss_params["log_tau"], rtol=1e-9)


def test_training_draws_come_from_the_run_seed_not_the_fixed_draw():
    """The per-step weights depend on the run's seed and the step only: changing the
    kernel's ``seed`` (its fixed draw, used outside training) leaves the losses alone,
    changing the run's seed does not."""
    a = kdistill.distill(steps=2, eval_every=0, **FAST)
    b = kdistill.distill(steps=2, eval_every=0, **{**FAST, "kernel": {**RF, "seed": 99}})
    c = kdistill.distill(steps=2, eval_every=0, seed=1, **FAST)
    assert a.history["loss"] == b.history["loss"] != c.history["loss"]


def test_validation_split_is_balanced_disjoint_and_never_a_target():
    cfg = DistillConfig(valid_size=100, ipc=2)
    data = prepare_data(cfg)
    pool, valid = split_validation(cfg, data)
    assert len(valid) == 100 and np.all(np.bincount(data.y_train[valid], minlength=10) == 10)
    assert np.intersect1d(pool, valid).size == 0 and len(pool) + len(valid) == len(data.y_train)
    # the initial support set comes from the pool too
    res = kdistill.distill(valid_size=100, ipc=2, steps=0, eval_every=0)
    init_idx = [int(np.flatnonzero((data.x_train == img).all(axis=(1, 2, 3)))[0]) for img in res.images]
    assert np.intersect1d(init_idx, valid).size == 0


def test_best_support_set_is_returned():
    """With a validation split the returned set is the best one seen, its validation
    accuracy is the maximum of the history, and (a large lr that makes later steps worse)
    it differs from the last support set."""
    res = kdistill.distill(ipc=2, steps=30, eval_every=5, valid_size=200, lr=0.5, target_batch=300)
    m = res.metrics
    assert m["best_valid_acc"] == max(res.history["eval_acc"])
    assert m["best_step"] == res.history["eval_step"][int(np.argmax(res.history["eval_acc"]))]
    assert m["eval_split"] == "validation" and m["valid_size"] == 200
    last = kdistill.distill(ipc=2, steps=30, eval_every=0, valid_size=200, lr=0.5, target_batch=300)
    if m["best_step"] != 30:
        assert np.abs(res.images - last.images).max() > 1e-4


def test_patience_stops_early():
    res = kdistill.distill(ipc=2, steps=200, eval_every=2, valid_size=200, patience=2, lr=5.0, target_batch=300)
    m = res.metrics
    assert m["steps_run"] < 200
    evals_after_best = [s for s in res.history["eval_step"] if s > m["best_step"]]
    assert len(evals_after_best) == 2 and m["steps_run"] == evals_after_best[-1]


def test_time_limit_stops_the_run():
    res = kdistill.distill(ipc=2, steps=100000, eval_every=0, time_limit=2.0, target_batch=300)
    assert 1 <= res.metrics["steps_run"] < 100000
    assert res.metrics["train_seconds"] < 30


def test_resume_with_validation_is_bit_identical(tmp_path):
    kwargs = dict(ipc=2, steps=12, eval_every=3, valid_size=100, lr=0.2, target_batch=200, checkpoint_every=4)
    full = kdistill.distill(**kwargs)
    with pytest.raises(RunInterrupted):
        kdistill.distill(**kwargs, run_dir=tmp_path / "r", callback=_stop_after(6))
    resumed = kdistill.distill(run_dir=tmp_path / "r", resume=True)
    np.testing.assert_array_equal(full.images, resumed.images)
    assert full.metrics["best_step"] == resumed.metrics["best_step"]
    assert full.history["eval_acc"] == resumed.history["eval_acc"]


def _stop_after(step):
    import os
    import signal

    def callback(info):
        if info["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return callback


def test_validation_errors_before_work():
    with pytest.raises(DataError, match="valid_size=5 is smaller than the number of classes"):
        kdistill.distill(valid_size=5, steps=1)
    with pytest.raises(IncompatibleComponentsError, match="valid_size"):
        kdistill.label_solve(valid_size=100)


def test_feature_solver_with_random_kernel_matches_cholesky():
    """The feature solver (features of the draw) and the cholesky solver (kernel matrix
    of the same draw) give the same KIP losses."""
    a = kdistill.distill(steps=3, eval_every=0, dtype="float64", **FAST)
    b = kdistill.distill(steps=3, eval_every=0, dtype="float64", **{**FAST, "solver": "cholesky"})
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-8)
    assert build_components(DistillConfig(kernel=RF, solver="feature")).kernel.has_features
