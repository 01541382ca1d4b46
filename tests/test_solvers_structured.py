"""Structured KRR solvers (``feature``, ``low-rank``) against numpy closed forms, on
both backends: values, input gradients (also under ``jit``), errors."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import pytest

from kdistill.core.contracts import Kernel
from kdistill.errors import ConfigError
from kdistill.core.registry import Registry, get_registry
from kdistill.plugins.kernels.rbf import RBFKernel
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.feature import FeatureSolver
from kdistill.plugins.solvers.low_rank import LowRankSolver
from kdistill.testing import check_solver

BACKENDS = ("jax", "torch")


def get_backend(name):
    try:
        return get_registry().backend(name)
    except (ConfigError, ImportError) as exc:
        pytest.skip(f"backend {name!r} not available: {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_backend(request.param)


@attrs.define(kw_only=True)
class LinearFeatures(Kernel):
    """Test kernel ``k(x, x') = (x A) . (x' A)`` with a fixed ``A`` ``[p, D]``."""

    has_features: ClassVar[bool] = True
    a: np.ndarray = attrs.field(eq=False, repr=False)

    def features(self, x):
        b = self.b
        x = b.xp.reshape(x, (x.shape[0], -1))
        return x @ b.asarray(self.a, b.dtype_name(x))

    def __call__(self, x1, x2):
        return self.features(x1) @ self.features(x2).T


@attrs.define(kw_only=True)
class FeaturesOnly(LinearFeatures):
    """Same kernel whose matrix must not be formed (the feature solver never needs it)."""

    def __call__(self, x1, x2):
        raise AssertionError("the feature solver formed a kernel matrix")


def closed_form(phi_s, phi_t, y, ridge):
    """KRR predictions with the relative ridge; the reference is solved in whichever space
    is well conditioned (primal ``D x D`` when D < n, where ``K`` itself is rank-deficient
    and its solve loses digits that depend on the BLAS; dual otherwise)."""
    k = phi_s @ phi_s.T
    lam = ridge * np.trace(k) / len(k)
    d = phi_s.shape[1]
    if d < len(k):
        return phi_t @ np.linalg.solve(phi_s.T @ phi_s + lam * np.eye(d), phi_s.T @ y)
    return phi_t @ phi_s.T @ np.linalg.solve(k + lam * np.eye(len(k)), y)


def predict(b, solver, kernel, x_s, y_s, x_t, ridge):
    pred = solver.bind(b).fit(kernel.bind(b), b.asarray(x_s, "float64"), b.asarray(y_s, "float64"), ridge)
    return b.to_numpy(pred(b.asarray(x_t, "float64")))


def input_grad(b, solver, kernel, x_s, y_s, x_t, weights, ridge):
    """d/dx_s of sum(predictions * weights), jitted where the backend jits."""
    s, k = solver.bind(b), kernel.bind(b)
    y, xt, w = b.asarray(y_s, "float64"), b.asarray(x_t, "float64"), b.asarray(weights, "float64")

    def f(p):
        return b.xp.sum(s.fit(k, p["x_s"], y, ridge)(xt) * w)

    value, g = b.jit(b.value_and_grad(f))({"x_s": b.asarray(x_s, "float64")})
    return float(value), b.to_numpy(g["x_s"])


# ---------------------------------------------------------------- feature solver
@pytest.mark.parametrize("n,p,d", [(20, 12, 6), (10, 40, 30)], ids=["primal-D<n", "dual-D>n"])
def test_feature_solver_matches_closed_form(backend, n, p, d):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((p, d)) / np.sqrt(p)
    x_s, x_t, y = rng.standard_normal((n, p)), rng.standard_normal((15, p)), rng.standard_normal((n, 3))
    ridge = 1e-3
    got = predict(backend, FeatureSolver(), FeaturesOnly(a=a), x_s, y, x_t, ridge)
    assert got.shape == (15, 3) and got.dtype == np.float64
    expected = closed_form(x_s @ a, x_t @ a, y, ridge)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("n,p,d", [(20, 12, 6), (10, 40, 30)], ids=["primal-D<n", "dual-D>n"])
def test_feature_solver_gradient_matches_cholesky_and_backends(n, p, d):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((p, d)) / np.sqrt(p)
    x_s, x_t, y = rng.standard_normal((n, p)), rng.standard_normal((15, p)), rng.standard_normal((n, 3))
    weights = rng.standard_normal((15, 3))
    grads = {}
    for name in BACKENDS:
        b = get_backend(name)
        kernel = LinearFeatures(a=a)
        for solver in (FeatureSolver(), CholeskySolver()):
            v, g = input_grad(b, solver, kernel, x_s, y, x_t, weights, 1e-2)
            assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
            grads[f"{name}/{type(solver).__name__}"] = (v, g)
    ref_v, ref_g = next(iter(grads.values()))
    for key, (v, g) in grads.items():
        assert v == pytest.approx(ref_v, rel=1e-9), key
        np.testing.assert_allclose(g, ref_g, rtol=1e-7, atol=1e-10 * np.abs(ref_g).max(), err_msg=key)


def test_feature_solver_without_features_is_cholesky(backend):
    """A kernel without a feature map (an exact evaluation kernel) is solved in kernel
    space, exactly as the cholesky solver does."""
    rng = np.random.default_rng(8)
    x_s, x_t, y = (backend.asarray(rng.standard_normal(s), "float64") for s in [(9, 3), (5, 3), (9, 2)])
    kernel = RBFKernel().bind(backend)
    got = FeatureSolver().bind(backend).fit(kernel, x_s, y, 1e-3)(x_t)
    expected = CholeskySolver().bind(backend).fit(kernel, x_s, y, 1e-3)(x_t)
    np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(expected), rtol=1e-12)


def test_feature_solver_solve_is_cholesky():
    check_solver(FeatureSolver)


# ---------------------------------------------------------------- low-rank solver
def exact_rank_problem(n=40, r=5, seed=3):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, r))
    return g @ g.T, rng.standard_normal((n, 3))


def solve_np(k, y, ridge):
    return np.linalg.solve(k + ridge * np.trace(k) / len(k) * np.eye(len(k)), y)


def low_rank_solve(b, k, y, ridge, **params):
    return b.to_numpy(LowRankSolver(**params).bind(b).solve(b.asarray(k, "float64"), b.asarray(y, "float64"), ridge))


def rel_err(got, expected):
    return np.linalg.norm(got - expected) / np.linalg.norm(expected)


def nystrom_reference(k, y, ridge, m, seed=0):
    """``K (K + lam I)^-1 y`` with Nystrom's ridge ``lam = ridge * mean(diag W)``."""
    idx = LowRankSolver(rank=m, seed=seed).landmarks(len(k))
    lam = ridge * np.mean(np.diag(k)[idx])
    return k @ np.linalg.solve(k + lam * np.eye(len(k)), y)


@pytest.mark.parametrize("m", [5, 10, 40])
def test_nystrom_exact_on_exact_rank_kernel(backend, m):
    """With m >= rank(K) landmarks the subset-of-regressors fit ``K alpha`` on the
    support equals the exact KRR fit (alpha itself lives on the landmarks only)."""
    k, y = exact_rank_problem()
    got = low_rank_solve(backend, k, y, 1e-3, method="nystrom", rank=m)
    assert rel_err(k @ got, nystrom_reference(k, y, 1e-3, m)) < 1e-7
    assert np.count_nonzero(np.abs(got).sum(axis=1)) == m


@pytest.mark.parametrize("r", [5, 10, 40, 100])
def test_eig_exact_on_exact_rank_kernel(backend, r):
    k, y = exact_rank_problem()
    got, expected = low_rank_solve(backend, k, y, 1e-3, method="eig", rank=r), solve_np(k, y, 1e-3)
    assert rel_err(k @ got, k @ expected) < 1e-9


@pytest.mark.parametrize("method", ["nystrom", "eig"])
def test_low_rank_below_true_rank_is_not_exact(backend, method):
    k, y = exact_rank_problem()
    got = low_rank_solve(backend, k, y, 1e-3, method=method, rank=3)
    assert rel_err(k @ got, k @ solve_np(k, y, 1e-3)) > 1e-2


def test_nystrom_fit_touches_only_landmark_columns_and_equals_solve(backend):
    """``fit`` never evaluates support-support pairs outside the landmark columns, and
    predicts exactly what ``solve`` on the full K_ss gives."""
    rng = np.random.default_rng(6)
    x_s, x_t, y = rng.standard_normal((40, 3)), rng.standard_normal((7, 3)), rng.standard_normal((40, 2))
    solver = LowRankSolver(rank=8).bind(backend)
    kernel = RBFKernel().bind(backend)
    shapes = []

    def spy(a, b_):
        shapes.append((a.shape[0], b_.shape[0]))
        return kernel(a, b_)

    spy_kernel = type("Spy", (), {"__call__": staticmethod(spy), "b": backend})()
    pred = solver.fit(spy_kernel, backend.asarray(x_s), backend.asarray(y), 1e-2)(backend.asarray(x_t))
    assert shapes == [(40, 8), (7, 8)]
    k_all = backend.to_numpy(kernel(backend.asarray(np.concatenate([x_s, x_t])), backend.asarray(x_s)))
    alpha = solver.solve(backend.asarray(k_all[:40]), backend.asarray(y), 1e-2)
    np.testing.assert_allclose(backend.to_numpy(pred), k_all[40:] @ backend.to_numpy(alpha), rtol=1e-9)


def rbf_problem(n=64, n_t=30, d=3, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + n_t, d))
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / d)
    y = np.sin(x[:n] @ rng.standard_normal((d, 3)))  # smooth targets: KRR's regime
    return k[:n, :n], k[n:, :n], y


@pytest.mark.parametrize("method", ["nystrom", "eig"])
def test_low_rank_error_decreases_with_rank_on_smooth_kernel(backend, method):
    """Error of the test predictions ``K_ts alpha`` on an RBF Gram matrix (fast decaying
    spectrum): clearly nonzero at m = n/8, smaller at n/2, ~exact at n."""
    k_ss, k_ts, y = rbf_problem()
    ridge = 1e-2
    expected = k_ts @ solve_np(k_ss, y, ridge)
    errs = [rel_err(k_ts @ low_rank_solve(backend, k_ss, y, ridge, method=method, rank=m), expected)
            for m in (8, 32, 64)]
    assert errs[0] > 1e-2, errs
    assert errs[0] > 3 * errs[1], errs
    assert errs[1] > 1e3 * errs[2] and errs[2] < 1e-6, errs


@pytest.mark.parametrize("method", ["nystrom", "eig"])
def test_low_rank_backends_agree(method):
    k_ss, _, y = rbf_problem()
    jax_b, torch_b = get_backend("jax"), get_backend("torch")
    got = [low_rank_solve(b, k_ss, y, 1e-2, method=method, rank=16) for b in (jax_b, torch_b)]
    np.testing.assert_allclose(got[1], got[0], rtol=1e-8, atol=1e-10 * np.abs(got[0]).max())


def test_low_rank_conformance():
    check_solver(LowRankSolver, method="eig", rank=12)
    check_solver(LowRankSolver, method="eig", rank=100)
    check_solver(LowRankSolver, method="nystrom", rank=12, jitter=0.0)
    check_solver(LowRankSolver, method="nystrom", rank=64, rtol=1e-5)  # default jitter 1e-10


@pytest.mark.parametrize("method", ["nystrom", "eig"])
def test_low_rank_full_rank_gradient_matches_cholesky(method):
    """With rank >= n (and no jitter) both methods are the exact solve, so their input
    gradients through ``fit`` (jitted on JAX) equal Cholesky's, on both backends."""
    rng = np.random.default_rng(5)
    x_s, x_t, y = rng.standard_normal((12, 4)), rng.standard_normal((9, 4)), rng.standard_normal((12, 2))
    weights = rng.standard_normal((9, 2))
    ref = None
    for name in BACKENDS:
        b = get_backend(name)
        for solver in (CholeskySolver(), LowRankSolver(method=method, rank=12, jitter=0.0)):
            v, g = input_grad(b, solver, RBFKernel(), x_s, y, x_t, weights, 1e-2)
            assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
            if ref is None:
                ref = (v, g)
            assert v == pytest.approx(ref[0], rel=1e-8)
            np.testing.assert_allclose(g, ref[1], rtol=1e-6, atol=1e-9 * np.abs(ref[1]).max())


def test_nystrom_landmarks_are_static_and_seeded():
    s = LowRankSolver(rank=8, seed=3)
    idx = s.landmarks(50)
    assert idx.shape == (8,) and np.all(np.diff(idx) > 0) and idx.max() < 50
    np.testing.assert_array_equal(idx, LowRankSolver(rank=8, seed=3).landmarks(50))
    assert not np.array_equal(idx, LowRankSolver(rank=8, seed=4).landmarks(50))
    np.testing.assert_array_equal(s.landmarks(5), np.arange(5))  # capped at n


# ---------------------------------------------------------------- bad input, registry
@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"rank": 0}, "rank must be an integer >= 1"),
        ({"rank": 2.5}, "rank must be an integer >= 1"),
        ({"rank": True}, "rank must be an integer >= 1"),
        ({"method": "svd"}, "method must be one of nystrom, eig"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"jitter": -1e-3}, "jitter must be a finite number >= 0"),
        ({"jitter": float("nan")}, "jitter must be a finite number >= 0"),
    ],
)
def test_low_rank_bad_params(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        LowRankSolver(**params)


@pytest.mark.parametrize("method", ["nystrom", "eig"])
def test_low_rank_zero_ridge_is_config_error(backend, method):
    k, y = exact_rank_problem()
    with pytest.raises(ConfigError, match="ridge > 0"):
        low_rank_solve(backend, k, y, 0.0, method=method)


def test_registered_and_round_trip():
    reg = Registry(third_party=False)
    assert {"feature", "low-rank"} <= set(reg.names("solvers"))
    s = reg.create("solvers", "low-rank", method="eig", rank=7, seed=2, jitter=0.0)
    assert isinstance(s, LowRankSolver) and LowRankSolver(**s.get_params()) == s
    assert isinstance(reg.create("solvers", "feature"), FeatureSolver)
    with pytest.raises(ConfigError, match="rank must be an integer >= 1"):
        reg.create("solvers", "low-rank", rank=0)
