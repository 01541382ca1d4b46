"""Component contracts: :class:`Kernel`, :class:`Solver`, :class:`Loss`.

Components are attrs classes whose fields are their hyperparameters (validated,
keyword-only, round-tripping through :meth:`Component.get_params` and TOML). The
array backend is attached afterwards with :meth:`Component.bind`, so one
implementation serves every backend in :attr:`Component.backends`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import attrs
import numpy as np

from kdistill.core.backend import Backend
from kdistill.core.errors import ConfigError, IncompatibleComponentsError


@attrs.define(kw_only=True)
class Component:
    """Base of kernels, solvers and losses.

    Class attributes:
        backends: names of the backends the component supports.
    """

    backends: ClassVar[tuple[str, ...]] = ("jax", "torch")
    _backend: Backend | None = attrs.field(default=None, init=False, repr=False, eq=False)

    def bind(self, backend: Backend):
        """A copy of this component attached to ``backend``.

        Raises:
            IncompatibleComponentsError: the backend is not in :attr:`backends`.
        """
        if backend.name not in self.backends:
            raise IncompatibleComponentsError(
                f"{type(self).__name__} does not support the {backend.name!r} backend; "
                f"it supports: {', '.join(self.backends)}"
            )
        bound = attrs.evolve(self)
        bound._backend = backend
        return bound

    @property
    def b(self) -> Backend:
        """The bound backend. Raises ConfigError if :meth:`bind` was not called."""
        if self._backend is None:
            raise ConfigError(f"{type(self).__name__} is not bound to a backend; call .bind(backend)")
        return self._backend

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as a dict; ``type(self)(**get_params())`` is an equal object."""
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self)) if f.init}


@attrs.define(kw_only=True)
class Kernel(Component, ABC):
    """A positive semi-definite kernel ``k(x1, x2)`` on batches of examples.

    Class attributes:
        is_random: True for kernels that are resampled every step (random features);
            such kernels implement :meth:`sample`.
        has_features: True when :meth:`features` is available (feature-map kernels),
            which lets feature-space solvers avoid the ``[n, n]`` kernel matrix.
    """

    is_random: ClassVar[bool] = False
    has_features: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, x1: Any, x2: Any) -> Any:
        """Kernel matrix.

        Args:
            x1: ``[n1, ...]`` float array (images are NHWC).
            x2: ``[n2, ...]`` float array with the same trailing shape.
        Returns:
            ``[n1, n2]`` array in the dtype of the inputs.
        """

    def features(self, x: Any) -> Any:
        """Feature map ``Phi(x)`` ``[n, d]`` with ``k(x, x') = Phi(x) . Phi(x')``."""
        raise NotImplementedError(f"{type(self).__name__} has no explicit feature map")

    def rows_per_block(self, n2: int, input_shape: tuple[int, ...] | None = None) -> int | None:
        """Preferred number of ``x1`` rows per call when ``k(x1, X2)`` (``n2`` rows of shape
        ``input_shape``) is computed in row blocks, e.g. by :func:`kdistill.core.krr.krr_predict`,
        so that progress is reported per block for slow kernels. None: no preference."""
        return None

    def sample(self, seed: int) -> "Kernel":
        """The kernel for one step of a random kernel (deterministic in ``seed``)."""
        return self


class Predictor(ABC):
    """A fitted KRR model: ``predictor(x_t) -> [n_t, C]`` float64 predictions."""

    @abstractmethod
    def __call__(self, x_t: Any) -> Any: ...


class KernelPredictor(Predictor):
    """``yhat(x_t) = k(x_t, X_s) @ alpha`` with dual coefficients ``alpha`` [n_s, C] float64."""

    def __init__(self, kernel: Kernel, x_s: Any, alpha: Any):
        self.kernel, self.x_s, self.alpha = kernel, x_s, alpha

    def __call__(self, x_t):
        b = self.kernel.b
        return b.cast(self.kernel(x_t, self.x_s), "float64") @ self.alpha


def relative_ridge(b: Backend, k_ss: Any, ridge: float) -> Any:
    """Absolute ridge ``lam * tr(K_ss) / n_s`` (the KIP/RFAD convention), a scalar array."""
    return ridge * b.xp.sum(b.xp.linalg.diagonal(k_ss)) / k_ss.shape[0]


@attrs.define(kw_only=True)
class Solver(Component, ABC):
    """Kernel ridge regression: fits a predictor from a support set.

    Subclasses that work on the kernel matrix implement :meth:`solve`; subclasses that
    exploit structure (feature maps, low rank) override :meth:`fit`.
    """

    def fit(self, kernel: Kernel, x_s: Any, y_s: Any, ridge: float) -> Predictor:
        """Fit KRR on the support set.

        Args:
            kernel: a bound kernel.
            x_s: ``[n_s, ...]`` support inputs.
            y_s: ``[n_s, C]`` support labels (any float dtype; solved in float64).
            ridge: relative ridge ``lam`` >= 0; the absolute ridge is
                ``lam * tr(K_ss) / n_s``.
        Returns:
            A :class:`Predictor` giving float64 ``[n_t, C]`` predictions.
        """
        b = self.b
        k_ss = b.cast(kernel(x_s, x_s), "float64")
        return KernelPredictor(kernel, x_s, self.solve(k_ss, b.cast(y_s, "float64"), ridge))

    @abstractmethod
    def solve(self, k_ss: Any, y: Any, ridge: float) -> Any:
        """``(K_ss + lam * tr(K_ss)/n_s * I)^-1 y``.

        Args:
            k_ss: ``[n_s, n_s]`` float64 symmetric PSD.
            y: ``[n_s, k]`` float64.
            ridge: relative ridge ``lam`` >= 0.
        Returns:
            ``[n_s, k]`` float64.
        Raises:
            NotPositiveDefiniteError: (eager calls) when the system cannot be solved.
        """


@attrs.define(kw_only=True)
class Loss(Component, ABC):
    """A loss on KRR predictions; may own trainable parameters (Platt's temperature)."""

    def init_params(self) -> dict[str, np.ndarray]:
        """Initial values of the loss's trainable parameters (float arrays)."""
        return {}

    @abstractmethod
    def __call__(self, yhat: Any, y: Any, params: dict[str, Any]) -> Any:
        """Scalar loss, the mean over targets.

        Args:
            yhat: ``[n_t, C]`` float64 predictions.
            y: ``[n_t, C]`` targets, centered one-hot (one-hot minus 1/C) by default.
            params: the loss's trainable parameters (keys of :meth:`init_params`).
        """
