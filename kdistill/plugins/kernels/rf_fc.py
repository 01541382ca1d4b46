"""Random-feature NNGP of fully-connected ReLU networks (``rf-fc``).

``N`` random networks ``Dense(width) -> ReLU`` (x ``depth``), standard normal weights in
the NTK/standard scaling ``h = sqrt(sw2 / fan_in) W a + sqrt(sb2) b``; the features are the
last ReLU activations scaled by ``sqrt(sw2 / (N width))`` plus the readout-bias column
``sqrt(sb2)`` (:meth:`~kdistill.plugins.kernels.random_features.RandomFeatureKernel.readout_features`). Their
inner product is a Monte-Carlo estimate of the ``fc`` NNGP with the same ``depth``,
``sw2``, ``sb2`` (:mod:`kdistill.plugins.kernels.fc`), with error ``O(1 / sqrt(N width))``
(Neal 1996; Lee et al. 2018; RFAD, Loo et al. 2022, sec. 3).
"""

from __future__ import annotations

import math

import attrs

from kdistill.plugins.kernels.random_features import RandomFeatureKernel
from kdistill.core.validators import positive_int


@attrs.define(kw_only=True)
class RandomFeatureFCKernel(RandomFeatureKernel):
    """Empirical NNGP of ``n_models`` random FC ReLU networks.

    Args:
        depth: hidden ReLU layers (>= 1); n_models, width, sw2, sb2, seed: see
            :class:`~kdistill.plugins.kernels.random_features.RandomFeatureKernel`.

    Inputs ``[n, ...]`` (flattened to ``d`` features), float32 or float64; output
    ``[n1, n2]`` in the input dtype. Features: ``[n, n_models * width (+1 if sb2 > 0)]``.
    Cost per example ``O(N (d width + (depth - 1) width^2))``.
    """

    depth: int = attrs.field(default=1, validator=positive_int)

    def shapes(self, input_shape):
        d, n, m = math.prod(input_shape), self.n_models, self.width
        out = {"w0": (d, n * m), "b0": (n * m,)}
        for layer in range(1, self.depth):
            out[f"w{layer}"], out[f"b{layer}"] = (n, m, m), (n * m,)
        return out

    def _features(self, x, weights):
        xp = self.b.xp
        n, m = self.n_models, self.width
        a = xp.reshape(x, (x.shape[0], -1))
        bias = math.sqrt(self.sb2)
        h = a @ xp.astype(weights["w0"], x.dtype) * math.sqrt(self.sw2 / a.shape[1])
        h = h + bias * xp.astype(weights["b0"], x.dtype)
        for layer in range(1, self.depth):
            a = xp.permute_dims(xp.reshape(xp.maximum(h, 0.0), (-1, n, m)), (1, 0, 2))  # [N, n, m]
            h = xp.matmul(a, xp.astype(weights[f"w{layer}"], x.dtype)) * math.sqrt(self.sw2 / m)
            h = xp.reshape(xp.permute_dims(h, (1, 0, 2)), (-1, n * m))
            h = h + bias * xp.astype(weights[f"b{layer}"], x.dtype)
        return self.readout_features(xp.maximum(h, 0.0), m)
