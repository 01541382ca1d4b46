"""Component contracts: :class:`Kernel`, :class:`RandomKernel`, :class:`Solver`, :class:`Loss`,
:class:`Optimizer`, :class:`Schedule` and the :class:`Dataset` that dataset plugins return.

Components are attrs classes whose fields are their hyperparameters (validated,
keyword-only, round-tripping through :meth:`Component.get_params` and TOML). The
array backend is attached afterwards with :meth:`Component.bind`, so one
implementation serves every backend in :attr:`Component.backends`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from kdistill.core.backend import Backend
from kdistill.errors import ConfigError, DataError, IncompatibleComponentsError, KdistillError


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


class ContractError(KdistillError, TypeError):
    """A component class does not follow its contract (raised when the class is defined,
    so a plugin that breaks it fails to load, with this message, instead of failing
    mid-run)."""


@attrs.define(kw_only=True)
class Kernel(Component, ABC):
    """A positive semi-definite kernel ``k(x1, x2)`` on batches of examples.

    Class attributes:
        has_features: True when :meth:`features` is available (feature-map kernels),
            which lets feature-space solvers avoid the ``[n, n]`` kernel matrix.

    A kernel that is resampled every KIP step (random features, RFAD) subclasses
    :class:`RandomKernel`; :attr:`is_random` says which one a kernel is.
    """

    has_features: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "is_random" in cls.__dict__ or "sample" in cls.__dict__:
            raise ContractError(
                f"{cls.__module__}.{cls.__qualname__} defines `is_random`/`sample()`, the old random-kernel "
                "contract, which the KIP loop never called; subclass kdistill.core.contracts.RandomKernel "
                "and implement sample_weights(seed, input_shape) and with_weights(weights) instead "
                "(check it with kdistill.testing.check_random_kernel)"
            )

    @property
    def is_random(self) -> bool:
        """True for a :class:`RandomKernel` (resampled every KIP step), else False."""
        return isinstance(self, RandomKernel)

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


def step_seed(run_seed: int, step: int) -> int:
    """Seed of the random-kernel weights of KIP step ``step`` (1, 2, ...) of a run seeded
    ``run_seed``: a function of both only, so a resumed run draws the same weights, from
    numpy's ``SeedSequence`` (well mixed: nearby steps draw unrelated weights). An int in
    ``[0, 2**32)``, passed to :meth:`RandomKernel.sample_weights`."""
    return int(np.random.SeedSequence([int(run_seed), int(step)]).generate_state(1)[0])


@attrs.define(kw_only=True)
class RandomKernel(Kernel, ABC):
    """A kernel resampled every KIP step: RFAD's kernel (Loo et al. 2022, "Efficient dataset
    distillation using random feature approximation", NeurIPS, sec. 3 and Alg. 1). Each
    step samples fresh parameters ``theta`` of ``N`` random finite networks from their
    initialization distribution and uses the empirical NNGP of that draw,
    ``k_theta(x, x') = Phi_theta(x) . Phi_theta(x')``, an unbiased Monte-Carlo estimate of
    the infinite-width NNGP.

    This contract is exactly what kdistill calls on a random kernel:

    1. In KIP step ``t`` (:func:`kdistill.plugins.methods.kip.run_kip`), on the host::

           weights = kernel.sample_weights(step_seed(run_seed, t), x_train.shape[1:])

       then every array becomes a backend array of the run's dtype
       (``backend.asarray(w, config.dtype)``, float32 or float64) and enters the compiled
       step as an argument, where ``kernel.with_weights(weights)`` is that step's kernel:
       the solver calls it (``__call__``, and :meth:`~Kernel.features` when
       :attr:`~Kernel.has_features`) on the support set and the target batch, and the
       loss is differentiated w.r.t. the support set (never w.r.t. the weights).
    2. Everywhere else (evaluation, Label Solve, validation, :func:`kdistill.core.krr.krr_predict`)
       the kernel is called as a plain :class:`Kernel`, without :meth:`with_weights`: it is
       then one fixed kernel, a deterministic function of its hyperparameters (the
       built-in base :class:`kdistill.plugins.kernels.random_features.RandomFeatureKernel`
       uses the draw of its ``seed`` field).

    ``kdistill.testing.check_random_kernel`` checks all of this; run it in your plugin's CI.
    """

    @abstractmethod
    def sample_weights(self, seed: int, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Sample the random networks' parameters ``theta`` for one step, on the host.

        Args:
            seed: int in ``[0, 2**32)`` (:func:`step_seed` in KIP). The draw is a
                deterministic function of ``seed``, ``input_shape`` and the hyperparameters
                (e.g. ``numpy.random.default_rng(seed)``), independent of the backend the
                kernel is bound to, so runs are reproducible, resumable and identical
                across backends.
            input_shape: trailing shape of one example, e.g. ``(H, W, C)`` for NHWC images.
        Returns:
            ``{name: array}``: finite float numpy arrays (any float dtype; the loop casts
            them to the run's dtype), with the same names, shapes and dtypes for every
            seed (the compiled step is traced once; another structure recompiles it).
        Raises:
            ConfigError: ``input_shape`` does not suit the kernel (e.g. not an image, or
                too small for its pooling layers).
        """

    @abstractmethod
    def with_weights(self, weights: Mapping[str, Any]) -> RandomKernel:
        """The kernel ``k_theta`` of one draw.

        Args:
            weights: the names of :meth:`sample_weights`, each a backend array of the
                run's dtype (float32 or float64) and of the sampled shape; inside a
                compiled step they are traced values, so no host work on them
                (``to_numpy``, ``float()``, Python branches on values).
        Returns:
            A bound kernel of the same class and hyperparameters whose ``__call__``
            (``[n1, n2]`` in the inputs' dtype) and ``features`` use ``weights``,
            differentiable w.r.t. the inputs. ``self`` is left unchanged.
        """


@attrs.define(kw_only=True)
class Optimizer(Component, ABC):
    """A first-order optimizer of the KIP step, declared once for every backend.

    An optimizer names the same algorithm in each backend's optimizer library and gives
    the keyword arguments, so a plugin imports neither optax nor torch; the backend
    builds the real optimizer (:meth:`kdistill.core.backend.Backend.make_step`) and passes
    the learning rate itself (a float, or a function of the step count for a
    non-constant :class:`Schedule`). Fields are the hyperparameters (not the learning
    rate, which is the run's ``lr``). Both declarations must describe the same update
    rule: :func:`kdistill.testing.check_optimizer` checks that they agree.
    """

    @abstractmethod
    def optax(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)``: the optax function ``optax.<name>(learning_rate, **kwargs)``
        (e.g. ``("adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-8})``)."""

    @abstractmethod
    def torch(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)``: the class ``torch.optim.<name>(params, lr=..., **kwargs)``
        (e.g. ``("Adam", {"betas": (0.9, 0.999), "eps": 1e-8})``)."""


@attrs.define(kw_only=True)
class Schedule(Component, ABC):
    """A learning-rate schedule: the step's learning rate is ``lr * schedule(count, total)``.

    Written once against the bound backend's namespace ``self.b.xp``, so that it traces
    under ``jit`` (no Python branches on ``count``, no ``float()``).

    Class attributes:
        constant: True when the multiplier is always 1. Backends then pass the plain
            learning rate to the optimizer, so optimizer state (and the checkpoint
            layout) stays that of a run without a schedule.
    """

    constant: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, count: Any, total: int) -> Any:
        """The learning-rate multiplier of an update.

        Args:
            count: updates applied before this one (0 for the first), an integer scalar
                backend array (a traced value under ``jit``).
            total: the run's number of steps (``config.steps``, a Python int >= 0).
        Returns:
            A scalar float64 backend array, finite and >= 0 for every ``count >= 0``.
        """


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


def absolute_ridge(ridge: float, trace: Any, n: int) -> Any:
    """The absolute ridge ``lam * tr(K_ss) / n_s`` (the KIP/RFAD convention) of the
    relative ridge ``ridge`` (``lam`` >= 0), from ``trace = tr(K_ss)`` (a scalar array,
    e.g. ``||Phi_s||_F^2`` for a feature map) and ``n = n_s``; a scalar array of
    ``trace``'s dtype. The one place this convention is computed: every solver uses it,
    directly or through :func:`relative_ridge`."""
    return ridge * trace / n


def relative_ridge(b: Backend, k_ss: Any, ridge: float) -> Any:
    """Absolute ridge ``lam * tr(K_ss) / n_s`` of the relative ridge ``ridge`` for
    ``k_ss`` ``[n_s, n_s]`` (:func:`absolute_ridge`), a scalar array of ``k_ss``'s dtype."""
    return absolute_ridge(ridge, b.xp.sum(b.xp.linalg.diagonal(k_ss)), k_ss.shape[0])


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


# -- datasets ---------------------------------------------------------------------------
# The contract of dataset plugins: a loader ``loader(data_dir: str | None) -> Dataset``
# registered with the ``kdistill_register_datasets`` hook (kdistill.testing.check_dataset
# checks one).

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


def check_images(x: np.ndarray, what: str, error: type[DataError] = DataError) -> None:
    """Check that ``x`` is a 4-D NHWC image array of dtype uint8 or float32.

    Float images must be finite. ``what`` names the array (or file) in the message.

    Raises:
        error (default :class:`DataError`): wrong type, rank, dtype or non-finite values.
    """
    if not isinstance(x, np.ndarray):
        raise error(f"{what}: expected a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise error(f"{what}: expected 4-D images [N, H, W, C], got shape {x.shape}")
    if min(x.shape[1:]) < 1:
        raise error(f"{what}: images need H, W, C >= 1, got shape {x.shape}")
    if x.dtype not in IMAGE_DTYPES:
        raise error(f"{what}: expected images of dtype uint8 or float32, got {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise error(f"{what}: images contain NaN or infinite values")


def check_labels(
    y: np.ndarray,
    num_classes: int,
    what: str,
    count: int | None = None,
    error: type[DataError] = DataError,
) -> None:
    """Check that ``y`` is a 1-D integer label array with values in ``0..num_classes-1``.

    If ``count`` is given, ``y`` must hold exactly that many labels.

    Raises:
        error (default :class:`DataError`): wrong type, rank, dtype, length or values.
    """
    if not isinstance(y, np.ndarray):
        raise error(f"{what}: expected a numpy array of labels, got {type(y).__name__}")
    if y.ndim != 1:
        raise error(f"{what}: expected 1-D labels [N], got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise error(f"{what}: expected integer labels, got dtype {y.dtype}")
    if count is not None and y.shape[0] != count:
        raise error(f"{what}: {y.shape[0]} labels for {count} images")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise error(
            f"{what}: labels must lie in 0..{num_classes - 1}, "
            f"found values in {int(y.min())}..{int(y.max())}"
        )


def _as_int64_labels(y):
    """attrs converter: integer label arrays become int64; anything else is left for
    validation to reject."""
    y = np.asarray(y)
    return y.astype(np.int64, copy=False) if y.dtype.kind in "iu" else y


@attrs.frozen(eq=False)
class Dataset:
    """A labelled image dataset split into train and test parts.

    Attributes:
        name: the registered dataset name, e.g. ``"mnist"``.
        x_train: images ``[N_train, H, W, C]`` (NHWC), dtype uint8 (0..255) or float32
            (finite, on the 0..255 scale).
        y_train: labels ``[N_train]``, int64, values in ``0..num_classes-1``. Integer
            arrays of any other integer dtype are converted to int64.
        x_test: images ``[N_test, H, W, C]``, same H, W, C and dtype as ``x_train``.
        y_test: labels ``[N_test]``, int64, values in ``0..num_classes-1``.
        num_classes: number of classes (> 0).
        class_names: ``num_classes`` human-readable class names, index = label.

    Raises:
        DataError: on construction, if any of the above does not hold.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray = attrs.field(converter=_as_int64_labels)
    x_test: np.ndarray
    y_test: np.ndarray = attrs.field(converter=_as_int64_labels)
    num_classes: int
    class_names: tuple[str, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 1:
            raise DataError(
                f"{where}: num_classes must be a positive int, got {self.num_classes!r}"
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{where}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            check_images(x, f"{where}: x_{split}")
            check_labels(y, self.num_classes, f"{where}: y_{split}", count=x.shape[0])
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{where}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in [H, W, C]"
            )
        if self.x_train.dtype != self.x_test.dtype:
            raise DataError(
                f"{where}: train dtype {self.x_train.dtype} differs from test dtype "
                f"{self.x_test.dtype}"
            )

    @classmethod
    def from_arrays(
        cls, x_train, y_train, x_test, y_test, *, name: str = "arrays", num_classes: int | None = None,
        class_names=None, layout: str = "nhwc",
    ) -> "Dataset":
        """A dataset from a user's own arrays (numpy, or anything ``numpy.asarray`` takes,
        e.g. CPU torch tensors).

        Args:
            x_train, x_test: images ``[N, H, W, C]`` (``layout="nhwc"``), ``[N, C, H, W]``
                (``layout="nchw"``) or ``[N, H, W]`` (one channel), on the 0..255 scale:
                uint8, or any integer or float dtype (converted to float32; both splits get
                the same dtype).
            y_train, y_test: ``[N]`` class ids, integers (or integral floats) in
                ``0..num_classes-1``.
            num_classes: default ``max(label) + 1`` over both splits.
            class_names: default ``"0", "1", ...``.
        Raises:
            DataError: naming the argument: not array-like, wrong rank or layout, bool or
                non-numeric dtype, NaN/Inf, non-integral labels, labels/images count
                mismatch, labels out of range, or train/test image shapes that differ.
        """
        if layout not in ("nhwc", "nchw"):
            raise DataError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")

        def images(x, what):
            try:
                x = np.asarray(x)
            except Exception as exc:  # arbitrary objects
                raise DataError(f"{what}: cannot be converted to an array: {exc}") from exc
            if x.dtype.kind not in "uif":
                raise DataError(f"{what}: expected numeric images, got dtype {x.dtype}")
            if x.ndim == 3:
                x = x[..., None]
            elif x.ndim == 4 and layout == "nchw":
                x = x.transpose(0, 2, 3, 1)
            if x.ndim != 4:
                raise DataError(f"{what}: expected images [N, H, W, C] ({layout}) or [N, H, W], got shape {x.shape}")
            if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
                raise DataError(f"{what}: images contain NaN or Inf")
            return np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32))

        def labels(y, what):
            y = np.asarray(y)
            if y.ndim != 1:
                raise DataError(f"{what}: expected class ids [N], got shape {y.shape}")
            if y.dtype.kind == "f":
                if not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
                    raise DataError(f"{what}: labels must be integer class ids, got non-integral floats")
                y = y.astype(np.int64)
            if y.dtype.kind not in "iu":
                raise DataError(f"{what}: expected integer class ids, got dtype {y.dtype}")
            return y.astype(np.int64)

        xs = [images(x_train, "x_train"), images(x_test, "x_test")]
        if xs[0].dtype != xs[1].dtype:
            xs = [x.astype(np.float32) for x in xs]
        ys = [labels(y_train, "y_train"), labels(y_test, "y_test")]
        if num_classes is None:
            num_classes = int(max((y.max() for y in ys if y.size), default=0)) + 1
        if class_names is None:
            class_names = [str(i) for i in range(int(num_classes))]
        return cls(name=name, x_train=xs[0], y_train=ys[0], x_test=xs[1], y_test=ys[1],
                   num_classes=num_classes, class_names=class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image_shape={self.image_shape}, dtype={self.x_train.dtype}, "
            f"num_classes={self.num_classes})"
        )
