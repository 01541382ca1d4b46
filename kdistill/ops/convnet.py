"""The ConvNet architecture, described once: :class:`ConvNetSpec`.

Every ConvNet in kdistill reads this description, so the architecture changes in one
place:

- the exact infinite-width NNGP/NTK (:mod:`kdistill.plugins.kernels.convnet`), which
  interprets the steps as covariance maps (Novak et al. 2019, "Bayesian deep CNNs with
  many channels are GPs", ICLR; Arora et al. 2019, "On exact computation with an
  infinitely wide neural net", NeurIPS);
- the random-feature NNGP of random finite ConvNets, RFAD's kernel
  (:mod:`kdistill.plugins.kernels.rf_convnet`; Loo et al. 2022, NeurIPS);
- the neural-tangents ``stax`` network of the ``nt`` kernel's ``convnet`` architecture
  (:mod:`kdistill.plugins.kernels.nt`);
- the finite torch ConvNet that evaluates distilled sets (:class:`kdistill.nn.models.ConvNet`).

The network, on NHWC images (stax notation, NTK parameterization, ``W_std = sqrt(sw2)``,
``b_std = sqrt(sb2)``)::

    [Conv 3x3 SAME, Relu]                       # if stem
    + [Conv 3x3 SAME, Relu, (AvgPool 2x2/2)] * depth   # AvgPool unless pool=False
    + [Readout: Flatten or GlobalAvgPool, Dense(1)]

The steps are the small immutable records :class:`Conv`, :class:`Relu`, :class:`AvgPool`
and :class:`Readout` that :meth:`ConvNetSpec.layers` yields in order.
"""

from __future__ import annotations

import attrs

from kdistill.core.validators import boolean, nonneg, positive, positive_int
from kdistill.errors import ConfigError

#: readout names: ``flatten`` (all pixels' features, as KIP/RFAD) or ``gap`` (global average pooling)
READOUTS = ("flatten", "gap")


def readout_name(inst, attr, value) -> None:
    """attrs validator: ``value`` is one of :data:`READOUTS`.

    Raises:
        ConfigError: naming the owner's class and field.
    """
    if value not in READOUTS:
        raise ConfigError(f"{type(inst).__name__}.{attr.name} must be one of {', '.join(READOUTS)}, got {value!r}")


@attrs.frozen
class Conv:
    """3x3 convolution, stride 1, SAME (zero) padding; weights of variance ``sw2 / (9 C_in)``
    (``sw2`` per fan-in), biases of variance ``sb2``. ``first``: it reads the input images."""

    sw2: float
    sb2: float
    first: bool = False
    size: int = 3


@attrs.frozen
class Relu:
    """Elementwise ``max(x, 0)``."""


@attrs.frozen
class AvgPool:
    """Average pooling over ``size x size`` windows, stride ``size``, VALID (odd sizes drop the
    last row/column)."""

    size: int = 2


@attrs.frozen
class Readout:
    """``kind`` (``flatten``: every pixel's channels; ``gap``: the mean over pixels), then a
    Dense layer to one output with weight variance ``sw2`` per fan-in and bias variance ``sb2``."""

    kind: str
    sw2: float
    sb2: float


Step = Conv | Relu | AvgPool | Readout


@attrs.frozen(kw_only=True)
class ConvNetSpec:
    """The ConvNet of kdistill's kernels and finite networks (module docstring).

    Args:
        depth: conv3x3 + ReLU (+ 2x2 average pool) blocks, >= 1 (KIP/RFAD papers: 3).
        pool: average-pool after every block (default); ``False``: no pooling.
        readout: one of :data:`READOUTS` (default ``flatten``).
        stem: prepend one conv3x3 + ReLU without pooling (KIP's ``ConvNet`` code).
        sw2, sb2: weight (> 0) and bias (>= 0) variances of every conv and of the readout
            (KIP/RFAD: 2.0 and 0.01).

    Raises:
        ConfigError: invalid values (at construction).
    """

    depth: int = attrs.field(default=3, validator=positive_int)
    pool: bool = attrs.field(default=True, validator=boolean)
    readout: str = attrs.field(default="flatten", validator=readout_name)
    stem: bool = attrs.field(default=False, validator=boolean)
    sw2: float = attrs.field(default=2.0, converter=float, validator=positive)
    sb2: float = attrs.field(default=0.01, converter=float, validator=nonneg)

    def blocks(self) -> tuple[bool, ...]:
        """One entry per conv + ReLU block: whether an average pool follows it."""
        return (False,) * int(self.stem) + (self.pool,) * self.depth

    def layers(self) -> tuple[Step, ...]:
        """The steps in order: per block ``Conv, Relu (, AvgPool)``, then ``Readout``."""
        out: list[Step] = []
        for i, pooled in enumerate(self.blocks()):
            out += [Conv(self.sw2, self.sb2, first=i == 0), Relu()] + ([AvgPool()] if pooled else [])
        return tuple(out) + (Readout(self.readout, self.sw2, self.sb2),)

    @property
    def diagonal_only(self) -> bool:
        """True when an NNGP/NTK needs only the pixel-diagonal covariances ``K[p, p]`` (no
        pooling and the Flatten readout; Novak et al. 2019, sec. 3.2)."""
        return not self.pool and self.readout == "flatten"

    def n_pools(self) -> int:
        return sum(self.blocks())

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size ``(H, W)`` of the last block's output for ``h x w`` inputs."""
        for step in self.layers():
            if isinstance(step, AvgPool):
                h, w = h // step.size, w // step.size
        return h, w

    def check_image(self, h: int, w: int) -> None:
        """Raises ConfigError when ``h x w`` images are too small for the pools (at least
        1x1 must remain)."""
        oh, ow = self.out_hw(h, w)
        if oh < 1 or ow < 1:
            raise ConfigError(f"images of {h}x{w} are too small for {self.n_pools()} 2x2 pools")
