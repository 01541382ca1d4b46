"""Built-in kernels, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rbf import RBFKernel


@hookimpl
def kdistill_register_kernels(register):
    register("fc", FCKernel, "fully-connected ReLU network NNGP/NTK, closed form")
    register("rbf", RBFKernel, "Gaussian kernel exp(-gamma ||x-x'||^2 / d)")
