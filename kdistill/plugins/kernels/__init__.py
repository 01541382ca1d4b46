"""Built-in kernels, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.convnet import ConvNetKernel, ConvNetNoPoolKernel
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.nt import NTKernel
from kdistill.plugins.kernels.nt import kdistill_register_architectures  # noqa: F401  (built-in architectures)
from kdistill.plugins.kernels.rbf import RBFKernel
from kdistill.plugins.kernels.rf_convnet import RandomFeatureConvNetKernel
from kdistill.plugins.kernels.rf_fc import RandomFeatureFCKernel


@hookimpl
def kdistill_register_kernels(register):
    register("fc", FCKernel, "fully-connected ReLU network NNGP/NTK, closed form")
    register("rbf", RBFKernel, "Gaussian kernel exp(-gamma ||x-x'||^2 / d)")
    register("convnet", ConvNetKernel, "ConvNet NNGP/NTK (conv3x3+ReLU+avg-pool blocks), exact")
    register("convnet-nopool", ConvNetNoPoolKernel, "ConvNet NNGP/NTK without pooling (diagonal covariances, cheap)")
    register("nt", NTKernel, "any neural-tangents stax architecture (JAX only; needs neural-tangents)")
    register("rf-fc", RandomFeatureFCKernel, "NNGP random features of N random FC networks (RFAD-style)")
    register("rf-convnet", RandomFeatureConvNetKernel, "NNGP random features of N random ConvNets (RFAD)")
