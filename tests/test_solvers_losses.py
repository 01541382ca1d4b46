"""Solvers, losses and Label Solve against closed forms, on both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdistill.errors import NotPositiveDefiniteError
from kdistill.core.krr import krr_predict
from kdistill.plugins.methods.label_solve import label_solve
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rbf import RBFKernel
from kdistill.plugins.losses.mse import MSELoss
from kdistill.plugins.losses.platt import PlattLoss
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.exact import ExactSolver

SOLVERS = [ExactSolver(), CholeskySolver()]


def spd(rng, n, rank=None):
    a = rng.standard_normal((n, rank or n))
    return a @ a.T


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_solve_matches_numpy_with_relative_ridge(backend, rng, solver):
    k, y, lam = spd(rng, 20), rng.standard_normal((20, 3)), 1e-3
    s = solver.bind(backend)
    alpha = backend.to_numpy(s.solve(backend.asarray(k, "float64"), backend.asarray(y, "float64"), lam))
    expected = np.linalg.solve(k + lam * np.trace(k) / 20 * np.eye(20), y)
    np.testing.assert_allclose(alpha, expected, rtol=1e-10)


@pytest.mark.parametrize("consistent", [True, False], ids=["y-in-range", "y-generic"])
def test_exact_solver_detects_singular_systems_on_every_lapack(backend, rng, consistent):
    """K = B B^T with B [8, 3] is singular (rank 3 of 8); with ridge 0 the exact solver
    must say so whatever LAPACK returns for it: some LU implementations return NaN,
    others (MKL on Intel, and here for a consistent right-hand side) finite numbers.
    The decision comes from the LU pivots (min <= n eps max): eager calls raise,
    traced calls give NaN for the distillation loop's recovery. A well-conditioned
    system with the same code is solved to rounding (negative control)."""
    b_ = rng.standard_normal((8, 3))
    k = b_ @ b_.T
    y = k @ rng.standard_normal((8, 2)) if consistent else rng.standard_normal((8, 2))
    solver = ExactSolver().bind(backend)
    with pytest.raises(NotPositiveDefiniteError, match="singular.*raise the relative ridge"):
        solver.solve(backend.asarray(k, "float64"), backend.asarray(y, "float64"), 0.0)
    traced = backend.jit(lambda a, r: solver.solve(a, r, 0.0))
    if backend.name == "jax":  # under jit the values are unknown until run: NaN, not an error
        out = backend.to_numpy(traced(backend.asarray(k, "float64"), backend.asarray(y, "float64")))
        assert np.isnan(out).all()
    good = k + np.eye(8)  # eigenvalues >= 1: cond(good) <= 1 + ||k||
    alpha = backend.to_numpy(solver.solve(backend.asarray(good, "float64"), backend.asarray(y, "float64"), 0.0))
    cond = np.linalg.cond(good)
    np.testing.assert_allclose(good @ alpha, y, atol=8 * 8 * np.finfo(float).eps * cond * np.abs(y).max())


def test_cholesky_pivot_check_triggers_jitter_for_singular_psd(backend, rng):
    """A numerically singular PSD matrix whose plain Cholesky may succeed with a
    rounding-size pivot (LAPACK-dependent) is not accepted as is: the factor's pivots
    decide (L_ii^2 > n eps max), so the jitter is applied on every CPU. Checked through
    the factor: L L^T equals K plus a positive multiple of the identity, not K."""
    b_ = rng.standard_normal((8, 3))
    k = b_ @ b_.T
    chol, ok = backend.psd_cholesky(backend.asarray(k, "float64"))
    assert bool(ok)
    l_ = backend.to_numpy(chol)
    shift = np.diag(l_ @ l_.T - k)
    rounding = 4 * 8 * np.finfo(float).eps * np.abs(k).max()  # of L L^T - K, n = 8
    assert (shift > 10 * rounding).all() and np.ptp(shift) <= rounding


def test_cholesky_jitter_rescues_rank_deficient(backend, rng):
    """Rank 5 of 30 with zero ridge is singular; the jitter retry makes it solvable."""
    k = spd(rng, 30, rank=5)
    y = rng.standard_normal((30, 2))
    alpha = backend.to_numpy(CholeskySolver().bind(backend).solve(backend.asarray(k, "float64"), backend.asarray(y, "float64"), 0.0))
    assert np.all(np.isfinite(alpha))
    # the solution solves a jittered system: K alpha ~ y on the range of K
    proj = k @ np.linalg.pinv(k)
    np.testing.assert_allclose(k @ alpha, proj @ y, atol=1e-3 * np.abs(y).max())


def test_cholesky_indefinite_raises_with_advice(backend, rng):
    k = spd(rng, 10)
    k[0, 0] = -50.0 * np.trace(k)  # strongly indefinite: no bounded jitter helps
    with pytest.raises(NotPositiveDefiniteError, match="raise the relative ridge"):
        CholeskySolver().bind(backend).solve(backend.asarray(k, "float64"), backend.asarray(np.ones((10, 1)), "float64"), 1e-6)


@pytest.mark.parametrize("kernel,rtol", [(RBFKernel(), 1e-10), (FCKernel(), 1e-6)], ids=["rbf", "fc"])
def test_solvers_agree_across_backends(jax_backend, torch_backend, rng, kernel, rtol):
    """Exact and Cholesky, JAX and torch, give the same predictions. The FC diagonal
    (c = 1, where arccos is ill-conditioned) carries ~1e-8 rounding noise between
    backends, amplified by cond(K_ss), hence the looser FC tolerance."""
    x_s, y_s, x_t = rng.standard_normal((15, 6)), rng.standard_normal((15, 4)), rng.standard_normal((40, 6))
    preds = []
    for b in (jax_backend, torch_backend):
        for solver in SOLVERS:
            preds.append(krr_predict(kernel.bind(b), solver.bind(b), x_s, y_s, x_t, 1e-2, "float64", block_size=16))
    for p in preds[1:]:
        np.testing.assert_allclose(p, preds[0], rtol=rtol, atol=rtol * 1e-2)


def test_krr_interpolates_support_at_zero_ridge(backend, rng):
    x_s, y_s = rng.standard_normal((12, 5)), rng.standard_normal((12, 3))
    pred = krr_predict(RBFKernel().bind(backend), CholeskySolver().bind(backend), x_s, y_s, x_s, 0.0, "float64")
    np.testing.assert_allclose(pred, y_s, atol=1e-6)


def test_mse_and_platt_match_numpy(backend, rng):
    yhat = rng.standard_normal((9, 4))
    y = np.eye(4)[rng.integers(0, 4, 9)] - 0.25
    mse = MSELoss().bind(backend)(backend.asarray(yhat, "float64"), backend.asarray(y, "float64"), {})
    assert float(mse) == pytest.approx(0.5 * np.sum((yhat - y) ** 2) / 9, rel=1e-12)
    log_tau = 0.3
    platt = PlattLoss().bind(backend)(
        backend.asarray(yhat, "float64"), backend.asarray(y, "float64"), {"log_tau": backend.asarray(np.asarray(log_tau), "float64")}
    )
    logits = yhat / math.exp(log_tau)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert float(platt) == pytest.approx(-np.mean(logp[np.arange(9), y.argmax(1)]), rel=1e-12)


def test_loss_gradients_agree_across_backends(jax_backend, torch_backend, rng):
    yhat, y = rng.standard_normal((7, 3)), np.eye(3)[rng.integers(0, 3, 7)] - 1 / 3
    out = []
    for b in (jax_backend, torch_backend):
        loss = PlattLoss().bind(b)

        def f(p, _loss=loss, _b=b):
            return _loss(p["yhat"], _b.asarray(y, "float64"), {"log_tau": p["log_tau"]})

        _, g = b.value_and_grad(f)({"yhat": b.asarray(yhat, "float64"), "log_tau": b.asarray(np.asarray(-0.2), "float64")})
        out.append({k: b.to_numpy(v) for k, v in g.items()})
    for k in out[0]:
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-12)


def test_label_solve_recovers_labels_of_a_realizable_target(backend, rng):
    """If y_t = A y* exactly (A = K_ts (K_ss + lam I)^-1), Label Solve returns y*."""
    kernel, solver = FCKernel().bind(backend), CholeskySolver().bind(backend)
    x_s, x_t = rng.standard_normal((10, 8)), rng.standard_normal((300, 8))
    y_true = rng.standard_normal((10, 3))
    y_t = krr_predict(kernel, solver, x_s, y_true, x_t, 1e-3, "float64")
    y_ls = label_solve(kernel, solver, x_s, x_t, y_t, 1e-3, label_ridge=1e-12, dtype="float64", block_size=64)
    np.testing.assert_allclose(y_ls, y_true, rtol=1e-5, atol=1e-6)


def test_label_solve_is_the_least_squares_minimizer(backend, rng):
    """Label Solve matches numpy's lstsq on the explicit A, and no other labels do better."""
    kernel, solver = RBFKernel(gamma=0.5).bind(backend), CholeskySolver().bind(backend)
    x_s, x_t = rng.standard_normal((8, 5)), rng.standard_normal((200, 5))
    y_t = rng.standard_normal((200, 2))
    y_ls = label_solve(kernel, solver, x_s, x_t, y_t, 1e-2, label_ridge=1e-12, dtype="float64")
    k_ss = backend.to_numpy(kernel(backend.asarray(x_s, "float64"), backend.asarray(x_s, "float64")))
    k_ts = backend.to_numpy(kernel(backend.asarray(x_t, "float64"), backend.asarray(x_s, "float64")))
    a = k_ts @ np.linalg.inv(k_ss + 1e-2 * np.trace(k_ss) / 8 * np.eye(8))
    expected = np.linalg.lstsq(a, y_t, rcond=None)[0]
    np.testing.assert_allclose(y_ls, expected, rtol=1e-6, atol=1e-8)
