"""Every built-in kernel, solver and loss passes kdistill.testing's conformance checks,
and the checks catch broken components."""

from __future__ import annotations

import attrs
import pytest

from kdistill.core.contracts import Kernel
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rbf import RBFKernel
from kdistill.plugins.losses.mse import MSELoss
from kdistill.plugins.losses.platt import PlattLoss
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.exact import ExactSolver
from kdistill.testing import check_kernel, check_loss, check_solver


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
