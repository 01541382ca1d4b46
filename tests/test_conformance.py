"""Every built-in kernel, solver and loss passes kdistill.testing's conformance checks,
and the checks catch broken components."""

from __future__ import annotations

import attrs
import pytest

from kdistill.core.contracts import Kernel, Solver
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rbf import RBFKernel
from kdistill.plugins.losses.mse import MSELoss
from kdistill.plugins.losses.platt import PlattLoss
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.exact import ExactSolver
from kdistill.testing import check_backend, check_kernel, check_loss, check_solver


@pytest.mark.parametrize("cls,params", [(FCKernel, {}), (FCKernel, {"kind": "nngp", "depth": 3}), (RBFKernel, {"gamma": 0.3})])
def test_builtin_kernels_conform(cls, params):
    check_kernel(cls, **params)


@pytest.mark.parametrize("cls", [ExactSolver, CholeskySolver])
def test_builtin_solvers_conform(cls):
    check_solver(cls)


@pytest.mark.parametrize("cls", [MSELoss, PlattLoss])
def test_builtin_losses_conform(cls):
    check_loss(cls)


@attrs.define(kw_only=True)
class AsymmetricKernel(Kernel):
    def __call__(self, x1, x2):
        xp = self.b.xp
        a, b = xp.reshape(x1, (x1.shape[0], -1)), xp.reshape(x2, (x2.shape[0], -1))
        return a[:, :1] * xp.ones_like(b[:, 0])[None, :] + 0 * (a @ b.T)


def test_conformance_catches_a_non_symmetric_kernel():
    with pytest.raises(AssertionError, match="not symmetric"):
        check_kernel(AsymmetricKernel)


# ---------------------------------------------------------------- backends and solver fit


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_builtin_backends_conform(name):
    check_backend(name)


def _broken_backend(name, method, replacement):
    """An instance of the built-in backend ``name`` with ``method`` replaced."""
    from kdistill.core.registry import get_registry

    base = type(get_registry().backend(name))
    return type(f"Broken{base.__name__}", (base,), {method: replacement})()


@pytest.mark.parametrize("method,replacement,message", [
    ("safe_arccos", lambda self, c: self.xp.arccos(c), "safe_arccos gradient not finite"),
    ("lu_solve", lambda self, a, b: (self.xp.linalg.solve(a.T, b), self.xp.ones(a.shape[0], dtype=a.dtype)),
     "lu_solve"),
    ("pivots_ok", lambda self, p: self.xp.all(self.xp.isfinite(p)), "pivots_ok"),
    ("normal", lambda self, seed, shape, dtype="float32": self.asarray(
        __import__("numpy").random.default_rng().standard_normal(shape), dtype), "not deterministic"),
])
@pytest.mark.parametrize("name", ["jax", "torch"])
def test_check_backend_catches_a_broken_primitive(name, method, replacement, message):
    with pytest.raises(AssertionError, match=message):
        check_backend(_broken_backend(name, method, replacement))


@attrs.define(kw_only=True)
class RidgeIgnoringSolver(Solver):
    """solve() is right, but fit() drops the ridge: only the fit check sees it."""

    def solve(self, k_ss, y, ridge):
        return CholeskySolver().bind(self.b).solve(k_ss, y, ridge)

    def fit(self, kernel, x_s, y_s, ridge):
        return super().fit(kernel, x_s, y_s, ridge * 1e-3)


def test_check_solver_checks_fit_predictions():
    with pytest.raises(AssertionError, match="fit predictions"):
        check_solver(RidgeIgnoringSolver)
