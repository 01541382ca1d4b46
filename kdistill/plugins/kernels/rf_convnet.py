"""Random-feature NNGP of ConvNets (``rf-convnet``), RFAD's kernel.

``N`` random ConvNets side by side, each the network of a
:class:`~kdistill.ops.convnet.ConvNetSpec` (``[conv3x3(width) SAME -> ReLU (-> 2x2
avg-pool)]`` x ``depth``, an optional ``stem`` conv + ReLU first), run as one grouped
convolution per layer (:meth:`Backend.conv2d`: ``lax.conv_general_dilated`` under JAX,
channels_last ``conv2d`` under torch). Weights are standard normal in the standard
scaling ``h = sqrt(sw2 / (9 C_in)) conv(a, W) + sqrt(sb2) b``. The readout features are
the last activations, flattened (``readout="flatten"``) or averaged over pixels
(``"gap"``), scaled by ``sqrt(sw2 / (N P width))`` (``P`` pixels, 1 for ``gap``) with the
bias column ``sqrt(sb2)``. Their inner product is a Monte-Carlo estimate of the exact
``convnet`` NNGP with the same hyperparameters (:mod:`kdistill.plugins.kernels.convnet`),
with error ``O(1 / sqrt(N width))`` (Novak et al. 2019; RFAD, Loo et al. 2022, sec. 3-4).
"""

from __future__ import annotations

import math

import attrs

from kdistill.core.validators import boolean, positive_int
from kdistill.errors import ConfigError
from kdistill.ops.convnet import AvgPool, Conv, ConvNetSpec, Readout, Relu, readout_name
from kdistill.plugins.kernels.random_features import RandomFeatureKernel


@attrs.define(kw_only=True)
class RandomFeatureConvNetKernel(RandomFeatureKernel):
    """Empirical NNGP of ``n_models`` random ConvNets (RFAD).

    Args:
        depth: conv blocks (>= 1; papers: 3). pool: 2x2 average pool after each block.
        readout: ``"flatten"`` or ``"gap"``. stem: prepend conv3x3 + ReLU without pooling.
        n_models, width, sw2, sb2, seed: see
            :class:`~kdistill.plugins.kernels.random_features.RandomFeatureKernel`.

    Inputs NHWC ``[n, H, W, C]`` float32/float64; output ``[n1, n2]`` in that dtype.
    Features ``[n, n_models * width * P (+1 if sb2 > 0)]``. Cost per example
    ``O(N H W width (9 C + 9 width (1/4 + 1/16 + ...)))`` multiply-adds with pooling.

    Raises:
        ConfigError: bad hyperparameters; inputs not 4-D or too small for the pools.
    """

    depth: int = attrs.field(default=3, validator=positive_int)
    pool: bool = attrs.field(default=True, validator=boolean)
    readout: str = attrs.field(default="flatten", validator=readout_name)
    stem: bool = attrs.field(default=False, validator=boolean)

    @property
    def spec(self) -> ConvNetSpec:
        """The architecture of each random network (:class:`~kdistill.ops.convnet.ConvNetSpec`)."""
        return ConvNetSpec(depth=self.depth, pool=self.pool, readout=self.readout, stem=self.stem,
                           sw2=self.sw2, sb2=self.sb2)

    def schedule(self) -> list[bool]:
        """One entry per conv + ReLU block: whether an average pool follows it."""
        return list(self.spec.blocks())

    def shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ConfigError(f"{type(self).__name__} needs NHWC images, got examples of shape {tuple(input_shape)}")
        spec = self.spec
        spec.check_image(input_shape[0], input_shape[1])
        n, c = self.n_models, self.width
        out = {}
        convs = [s for s in spec.layers() if isinstance(s, Conv)]
        for layer, conv in enumerate(convs):
            c_in = input_shape[2] if conv.first else c  # the first conv reads the shared input
            out[f"w{layer}"], out[f"b{layer}"] = (conv.size, conv.size, c_in, n * c), (n * c,)
        return out

    def _features(self, x, weights):
        xp, b = self.b.xp, self.b
        if x.ndim != 4:
            raise ConfigError(f"{type(self).__name__} needs NHWC images, got an array of shape {tuple(x.shape)}")
        a, layer = x, 0
        for step in self.spec.layers():
            if isinstance(step, Conv):
                c_in = x.shape[3] if step.first else self.width
                groups = 1 if step.first else self.n_models
                a = b.conv2d(a, weights[f"w{layer}"], groups=groups) * math.sqrt(step.sw2 / (9 * c_in))
                a = a + math.sqrt(step.sb2) * xp.astype(weights[f"b{layer}"], x.dtype)
                layer += 1
            elif isinstance(step, Relu):
                a = xp.maximum(a, 0.0)
            elif isinstance(step, AvgPool):
                n, hh, ww, c = a.shape
                s = step.size
                a = a[:, : hh // s * s, : ww // s * s, :]
                a = xp.mean(xp.reshape(a, (n, hh // s, s, ww // s, s, c)), axis=(2, 4))
            elif isinstance(step, Readout):
                n, hh, ww, c = a.shape
                if step.kind == "gap":
                    return self.readout_features(xp.mean(a, axis=(1, 2)), self.width)
                # the order of the features does not change their inner product
                return self.readout_features(xp.reshape(a, (n, -1)), hh * ww * self.width)
        raise AssertionError("a ConvNetSpec ends with its Readout")
