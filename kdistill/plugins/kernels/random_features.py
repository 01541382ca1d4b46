"""Random-feature kernels: the empirical NNGP of a few random finite networks.

The shared base of ``rf-fc`` and ``rf-convnet``, public so that third-party random
network kernels can reuse it (import :class:`RandomFeatureKernel` from here); the
contract it implements is :class:`kdistill.core.contracts.RandomKernel`.

A :class:`RandomFeatureKernel` is ``k(x, x') = Phi(x) . Phi(x')`` where ``Phi`` stacks the
last-layer activations of ``n_models`` random networks (scaled so that the expectation
over the weights is the infinite-width NNGP) and a constant readout-bias feature. This
is RFAD's kernel (Loo et al. 2022, "Efficient dataset distillation using random feature
approximation", NeurIPS, sec. 3, eq. 4): a KIP step then costs forward/backward passes
linear in the support size instead of ``n_s (n_s + n_t)`` exact kernel entries.

Weights are standard normal arrays drawn on the host by
:meth:`RandomFeatureKernel.sample_weights` from an integer seed (numpy ``default_rng``),
so a draw is deterministic and identical on every backend. The distillation loop draws
fresh weights every step (:func:`kdistill.core.contracts.step_seed`) and passes them into
the compiled step as arrays (:meth:`RandomFeatureKernel.with_weights`); a kernel used
without that (evaluation, Label Solve, validation) uses the fixed draw of its ``seed``
hyperparameter.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Mapping

import attrs
import numpy as np

from kdistill.core.contracts import RandomKernel
from kdistill.core.validators import nonneg, nonneg_int, positive, positive_int


@attrs.define(kw_only=True)
class RandomFeatureKernel(RandomKernel):
    """Base of random-feature NNGP kernels (NNGP only: RFAD's kernel).

    Fields shared by subclasses:
        n_models: number of random networks ``N`` averaged (>= 1).
        width: channels / hidden units ``C`` of every layer (>= 1).
        sw2, sb2: weight and bias variances, the same as the exact kernel's (the empirical
            kernel converges to the exact NNGP with these hyperparameters as ``N C`` grows,
            error ``O(1 / sqrt(N C))``).
        seed: the fixed draw used outside the distillation loop (an integer >= 0).

    Subclasses define :meth:`shapes` (name -> shape of every weight array for the given
    input shape) and :meth:`_features` (features from inputs and weights).
    """

    has_features = True

    n_models: int = attrs.field(default=8, validator=positive_int)
    width: int = attrs.field(default=128, validator=positive_int)
    sw2: float = attrs.field(default=2.0, converter=float, validator=positive)
    sb2: float = attrs.field(default=0.01, converter=float, validator=nonneg)
    seed: int = attrs.field(default=0, validator=nonneg_int)
    _weights: dict | None = attrs.field(default=None, init=False, repr=False, eq=False)
    _fixed: dict = attrs.field(factory=dict, init=False, repr=False, eq=False)

    @abstractmethod
    def shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Shapes of the weight arrays for inputs of trailing shape ``input_shape``."""

    @abstractmethod
    def _features(self, x: Any, weights: dict[str, Any]) -> Any:
        """Features ``[n, D]`` of ``x`` under ``weights`` (backend arrays)."""

    def sample_weights(self, seed: int, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Standard normal weights for inputs of trailing shape ``input_shape``: float32
        numpy arrays of :meth:`shapes`, drawn in that order from
        ``numpy.random.default_rng(seed)`` (see :meth:`RandomKernel.sample_weights`).

        Raises:
            ConfigError: ``input_shape`` does not suit the architecture (:meth:`shapes`).
        """
        rng = np.random.default_rng(seed)
        return {k: rng.standard_normal(s, dtype=np.float32) for k, s in self.shapes(tuple(input_shape)).items()}

    def with_weights(self, weights: Mapping[str, Any]) -> RandomFeatureKernel:
        """A copy of this (bound) kernel that uses ``weights`` (backend arrays of
        :meth:`sample_weights`), e.g. traced arrays inside a compiled KIP step."""
        out = attrs.evolve(self)
        out._backend, out._weights, out._fixed = self._backend, weights, {}
        return out

    def weights_for(self, x: Any) -> Mapping[str, Any]:
        """The weights in use for inputs like ``x``: those of :meth:`with_weights`, else the
        fixed draw of :attr:`seed` (cached per input shape and dtype)."""
        if self._weights is not None:
            return self._weights
        key = (tuple(x.shape[1:]), self.b.dtype_name(x))
        if key not in self._fixed:
            drawn = self.sample_weights(self.seed, key[0])
            self._fixed[key] = {k: self.b.asarray(v, key[1]) for k, v in drawn.items()}
        return self._fixed[key]

    def features(self, x: Any) -> Any:
        """``Phi(x)`` ``[n, D]`` in the dtype of ``x``; ``D`` is given by the subclass."""
        return self._features(x, self.weights_for(x))

    def __call__(self, x1: Any, x2: Any) -> Any:
        f1 = self.features(x1)
        f2 = f1 if x2 is x1 else self.features(x2)
        return f1 @ self.b.xp.matrix_transpose(f2)

    def readout_features(self, act: Any, per_model: int) -> Any:
        """Features from last-layer activations ``act`` ``[n, N * per_model]``: scaled by
        ``sqrt(sw2 / (N per_model))`` (the readout's weight variance, averaged over the N
        models), with a constant column ``sqrt(sb2)`` (its bias variance) appended."""
        xp = self.b.xp
        phi = act * float(np.sqrt(self.sw2 / (self.n_models * per_model)))
        if not self.sb2:
            return phi
        bias = xp.full((act.shape[0], 1), float(np.sqrt(self.sb2)), dtype=act.dtype, device=self.b.device_of(act))
        return xp.concat([phi, bias], axis=1)
