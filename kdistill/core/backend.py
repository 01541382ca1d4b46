"""The backend contract: the one place that knows the array library.

Kernels, solvers and losses are written once against :class:`Backend`, using
``backend.xp`` (an Array-API namespace: ``jax.numpy`` or ``array_api_compat.torch``)
plus the few primitives the namespace lacks (guarded ``arccos``, jittered Cholesky,
triangular solves). Training goes through :meth:`Backend.make_step`, a pure optimizer
step (:class:`TrainStep`) that builds the optax (JAX) or ``torch.optim`` (PyTorch)
optimizer a registered :class:`~kdistill.core.contracts.Optimizer` declares.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import numpy as np

from kdistill.core.validators import DEVICE_KINDS, parse_device  # noqa: F401 (re-exported)

#: Jitter schedule of :meth:`Backend.psd_cholesky`, relative to mean(diag(A)).
CHOLESKY_JITTERS = (0.0, 1e-10, 1e-8, 1e-6)

class TrainStep(ABC):
    """A pure optimizer step on ``loss_fn(params: dict, *batch) -> scalar``, made by
    :meth:`Backend.make_step`.

    The step holds no training state: :meth:`init` makes a state (parameters and
    optimizer state, backend-specific, opaque), :meth:`step` maps a state and a batch to
    a new state and never changes its input, so a caller can keep the last good state,
    retry a step, or rebuild the step (another learning rate or ridge,
    :mod:`kdistill.core.guard`) around the same state. :meth:`to_arrays` and
    :meth:`from_arrays` convert a state to and from the numpy arrays of a checkpoint.

    The step is two separable pieces, :meth:`gradients` then :meth:`apply`, so that the
    gradients of a target batch split over devices can be all-reduced between them.

    Attributes:
        optimizer: the :class:`~kdistill.core.contracts.Optimizer`; schedule: the bound
            :class:`~kdistill.core.contracts.Schedule`; lr: the base learning rate;
            dtype: the parameters' dtype name; total_steps: the run's steps (for the
            schedule).
    """

    def __init__(self, backend: "Backend", loss_fn: Callable[..., Any], optimizer: Any, schedule: Any,
                 lr: float, dtype: str, total_steps: int) -> None:
        self.backend, self.loss_fn = backend, loss_fn
        self.optimizer, self.schedule = optimizer, schedule
        self.lr, self.dtype, self.total_steps = float(lr), dtype, int(total_steps)

    @abstractmethod
    def init(self, params: Mapping[str, np.ndarray]) -> Any:
        """The state before the first step: ``params`` (numpy arrays, cast to
        :attr:`dtype`) and a fresh optimizer state."""

    @abstractmethod
    def gradients(self, state: Any, *batch: Any) -> tuple[Any, dict[str, Any]]:
        """``(loss, grads)``: the scalar loss at the state's parameters and its gradient
        with respect to each parameter (a dict of backend arrays; torch gives None for a
        parameter the loss does not use). Changes nothing."""

    @abstractmethod
    def apply(self, state: Any, grads: Mapping[str, Any]) -> Any:
        """The state after one optimizer update with ``grads`` (as from
        :meth:`gradients`), at learning rate ``lr * schedule(count, total_steps)``.
        ``state`` is not changed."""

    @abstractmethod
    def step(self, state: Any, *batch: Any) -> tuple[Any, dict[str, Any]]:
        """One step: :meth:`gradients`, then :meth:`apply` when the loss and every
        gradient are finite.

        Returns:
            ``(new_state, metrics)``; ``metrics["loss"]`` is the scalar loss before the
            update and ``metrics["finite"]`` a boolean scalar: loss and every gradient
            are finite (both backend arrays). When ``finite`` is false, ``new_state``
            must be discarded (backends may compute the update anyway, to avoid a
            device-side select): the caller keeps ``state`` and decides what to do
            (:class:`~kdistill.core.loop.KIPRun` raises NonFiniteLossError and retries
            from ``state``). ``state`` itself is never changed.
        """

    def __call__(self, state: Any, *batch: Any) -> tuple[Any, dict[str, Any]]:
        return self.step(state, *batch)

    @abstractmethod
    def params(self, state: Any) -> dict[str, np.ndarray]:
        """The state's parameters as numpy arrays (copies)."""

    @abstractmethod
    def to_arrays(self, state: Any) -> dict[str, np.ndarray]:
        """Everything needed to continue training bit-for-bit, as numpy arrays (copies).

        Keys: ``params/<name>`` for every parameter (its dtype and shape) and
        ``opt/...`` for the optimizer state (backend-specific names: JAX numbers the
        optax state leaves ``opt/0000``...; torch uses ``opt/<param>/<field>`` for the
        tensors of ``torch.optim``'s per-parameter state, and ``opt/count`` for the
        number of updates when the schedule is not constant). The dict holds only
        numeric arrays, so it can be stored without pickle (``trainer/<key>`` entries
        of a checkpoint, :mod:`kdistill.io.checkpoint`).
        """

    @abstractmethod
    def from_arrays(self, arrays: Mapping[str, np.ndarray], like: Any = None) -> Any:
        """The state stored by :meth:`to_arrays` of a step of the same backend,
        optimizer, schedule kind and dtype (the learning rate may differ).

        Args:
            like: a state whose parameters (names, shapes, dtypes) ``arrays`` must have;
                None: the parameters stored in ``arrays``.
        Raises:
            kdistill.errors.CheckpointError: keys, shapes or dtypes do not fit (the
                message lists them).
        """


class Backend(ABC):
    """Array-library backend. Subclasses: ``JaxBackend``, ``TorchBackend``.

    Attributes:
        name: registry name (``"jax"``, ``"torch"``).
        xp: Array-API namespace used by every kernel, solver and loss.
    """

    name: str
    xp: Any

    # -- devices and data parallelism --------------------------------------------------
    #: The ``device`` setting the backend was made with (:func:`parse_device`).
    device: str = "auto"

    @property
    def shards(self) -> int:
        """Number of data-parallel shards the target batch and the kernel tiles are split
        into: the devices of the JAX mesh (all processes' devices under
        ``jax.distributed``), or the processes of the torch process group. 1 when nothing
        is split."""
        return 1

    @property
    def process_index(self) -> int:
        """This process's rank among the run's processes (0: the one that writes files)."""
        return 0

    @property
    def process_count(self) -> int:
        """Number of processes running the run together (1 without ``jax.distributed`` /
        ``torch.distributed``)."""
        return 1

    def describe_devices(self) -> str:
        """One line naming the devices the backend computes on, for logs and headers."""
        return "cpu"

    def device_of(self, x: Any) -> Any:
        """The device to create arrays on next to ``x``, as the ``device=`` argument of the
        namespace's creation functions (``xp.eye(n, dtype=..., device=b.device_of(x))``):
        ``x.device`` on torch, None on JAX (where placement follows the computation)."""
        return None

    def shard_rows(self, x: np.ndarray, dtype: str | None = None) -> Any:
        """``x`` (the same full numpy array in every process) split along axis 0 over the
        :attr:`shards`: JAX, one global array sharded over the mesh's ``"data"`` axis;
        torch, this rank's contiguous ``len(x) / shards`` rows on its device.

        Args:
            x: ``[n, ...]`` with ``n`` a multiple of :attr:`shards`.
            dtype: as in :meth:`asarray`.
        Raises:
            ValueError: ``n`` is not a multiple of :attr:`shards`.
        """
        return self.asarray(x, dtype)

    def gather_rows(self, x: Any) -> np.ndarray:
        """The full ``[n, ...]`` numpy array of rows split by :meth:`shard_rows` (or computed
        row by row from such an array), in every process."""
        return self.to_numpy(x)

    def sum_shards(self, x: Any) -> Any:
        """The sum over shards of per-shard partial sums: torch all-reduces ``x`` over the
        process group; JAX returns ``x`` (a global array whose reductions XLA already
        made)."""
        return x

    def barrier(self) -> None:
        """Wait until every process of the run reaches this point (no-op for one process)."""

    # -- arrays ---------------------------------------------------------------
    @abstractmethod
    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        """Convert a numpy array (or backend array) to this backend, on its device.

        Args:
            dtype: ``"float32"``, ``"float64"``, ``"int64"`` or None (keep).
        """

    @abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """Backend array -> numpy array (detached, on host)."""

    def dtype(self, name: str) -> Any:
        """The backend dtype object for ``"float32"``/``"float64"``/``"int64"``."""
        return getattr(self.xp, name)

    def cast(self, x: Any, dtype: str) -> Any:
        """``x`` as ``dtype`` (a name), differentiably."""
        return self.xp.astype(x, self.dtype(dtype))

    def dtype_name(self, x: Any) -> str:
        """Name of the dtype of ``x`` (``"float32"``, ...)."""
        return str(x.dtype).replace("torch.", "")

    def all_finite(self, x: Any) -> Any:
        """Scalar boolean array: every entry of ``x`` is finite."""
        return self.xp.all(self.xp.isfinite(x))

    @abstractmethod
    def is_concrete(self, x: Any) -> bool:
        """False while tracing under ``jit`` (values unknown), True otherwise."""

    # -- guarded primitives -----------------------------------------------------
    @abstractmethod
    def safe_arccos(self, c: Any) -> Any:
        """``arccos(clip(c, -1, 1))`` with a finite gradient.

        The derivative ``-1/sqrt(1 - c^2)`` is infinite at ``|c| = 1``; here it is
        ``-1/sqrt(max(1 - c^2, eps))`` inside (-1, 1) and 0 where ``|c| >= 1`` (where
        the clipped function is constant). ``eps`` is the dtype's machine epsilon.
        """

    def stop_gradient(self, x: Any) -> Any:
        """``x`` as a constant for differentiation (``jax.lax.stop_gradient`` /
        ``Tensor.detach``); the value is unchanged. Lets a function be written so that
        autograd yields a known closed-form derivative (see ``kdistill.ops.arccos.relu_layer``)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement stop_gradient")

    def safe_sqrt(self, x: Any) -> Any:
        """``sqrt(max(x, tiny))``: finite value and gradient at and below 0."""
        xp = self.xp
        tiny = float(np.finfo(self.dtype_name(x)).tiny) ** 0.5
        return xp.sqrt(xp.clip(x, min=tiny))

    # -- linear algebra -----------------------------------------------------------
    @abstractmethod
    def psd_cholesky(self, a: Any) -> tuple[Any, Any]:
        """Cholesky factor of a symmetric PD matrix, with a bounded jitter retry.

        Tries ``a + j * mean(diag(a)) * I`` for ``j`` in :data:`CHOLESKY_JITTERS` and
        keeps the first factor whose pivots ``L_ii^2`` pass :meth:`pivots_ok` (finite
        and not numerically singular, whatever the LAPACK returns for a singular matrix).

        Args:
            a: ``[n, n]`` float64, symmetric.
        Returns:
            ``(L, ok)``: lower-triangular ``[n, n]`` and a boolean scalar, False when
            every jitter failed (``L`` is then NaN).
        """

    def pivots_ok(self, pivots: Any) -> Any:
        """Scalar boolean: a factorization with these pivots is numerically nonsingular.

        True when every pivot is finite and ``min(pivots) > n eps max(pivots)`` (the
        rank tolerance of LAPACK's rank-revealing routines). An exactly singular matrix
        has a pivot that is zero in exact arithmetic and of rounding size in floating
        point, where LAPACK may or may not return NaN (MKL on Intel returns finite
        numbers), so singularity is decided here, the same on every CPU.

        Args:
            pivots: ``[n]`` non-negative magnitudes: ``|U_ii|`` of an LU factor or
                ``L_ii^2`` of a Cholesky factor.
        """
        xp = self.xp
        n = pivots.shape[-1]
        eps = float(np.finfo(self.dtype_name(pivots)).eps)
        return xp.all(xp.isfinite(pivots)) & (xp.min(pivots) > n * eps * xp.max(pivots))

    @abstractmethod
    def lu_solve(self, a: Any, b: Any) -> tuple[Any, Any]:
        """Solve ``a x = b`` by LU with partial pivoting; differentiable.

        Args:
            a: ``[n, n]`` float64; b: ``[n, k]``.
        Returns:
            ``(x, pivots)``: ``[n, k]`` and ``[n]`` ``|U_ii|`` for :meth:`pivots_ok`.
        """

    @abstractmethod
    def cho_solve(self, chol: Any, b: Any) -> Any:
        """Solve ``(L L^T) x = b`` for ``x`` given lower ``L`` ``[n, n]``, ``b`` ``[n, k]``."""

    def solve_triangular(self, a: Any, b: Any, lower: bool = True) -> Any:
        """Solve ``a x = b`` for triangular ``a`` ``[n, n]`` (lower if ``lower``, else
        upper), ``b`` ``[n, k]``; differentiable. The default is a general
        ``xp.linalg.solve`` (correct, O(n^3)); backends override it with an O(n^2 k)
        triangular solve."""
        return self.xp.linalg.solve(a, b)

    # -- convolution ------------------------------------------------------------
    def conv2d(self, x: Any, w: Any, groups: int = 1) -> Any:
        """3x3-style 2-D convolution, stride 1, SAME zero padding, NHWC (cross-correlation,
        as in every deep-learning library).

        Args:
            x: ``[n, H, W, C_in]`` float array.
            w: ``[kh, kw, C_in // groups, C_out]`` (HWIO), odd ``kh``, ``kw``; with
                ``groups > 1`` output channels ``g*C_out/groups ...`` read input channels
                ``g*C_in/groups ...`` (independent networks side by side).
        Returns:
            ``[n, H, W, C_out]`` in the dtype of ``x``. Differentiable in ``x``.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement conv2d")

    # -- randomness -------------------------------------------------------------
    @abstractmethod
    def normal(self, seed: int, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        """Standard normal samples drawn deterministically from an integer seed."""

    # -- training -----------------------------------------------------------------
    @abstractmethod
    def make_step(
        self,
        loss_fn: Callable[..., Any],
        optimizer: Any = "adam",
        schedule: Any = None,
        lr: float = 1e-2,
        dtype: str = "float32",
        total_steps: int = 0,
    ) -> TrainStep:
        """A pure :class:`TrainStep` minimizing ``loss_fn(params: dict, *batch) -> scalar``
        (a mean over the batch's examples for KIP).

        Args:
            optimizer: an :class:`~kdistill.core.contracts.Optimizer`, or a registered
                name (with its default hyperparameters); built with optax (JAX) or
                ``torch.optim`` (PyTorch) from its declaration.
            schedule: a :class:`~kdistill.core.contracts.Schedule`, a registered name, or
                None (``constant``).
            lr: base learning rate, finite and > 0.
            dtype: the parameters' dtype, ``"float32"`` or ``"float64"``.
            total_steps: the run's number of steps (what the schedule decays over).
        Raises:
            ConfigError: unknown optimizer or schedule name, a learning rate that is not
                a finite positive number, or an optimizer whose declaration names no
                function of the backend's optimizer library.
        """

    @abstractmethod
    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., tuple[Any, dict]]:
        """``f(params: dict, *args) -> (value, grads: dict)`` for scalar ``fn``."""

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Compile ``fn`` where the backend can; identity otherwise."""
        return fn

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Compile a heavy, shape-static piece of numerical code even where :meth:`jit`
        is the identity (``torch.compile`` on torch: tens of seconds per input shape, then
        fused loops). Default: :meth:`jit`."""
        return self.jit(fn)

    def checkpoint(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` rematerialized under reverse-mode differentiation: only its inputs are
        kept and its forward pass is recomputed in the backward pass (``jax.checkpoint``
        / ``torch.utils.checkpoint``). Values are unchanged; identity by default."""
        return fn

    def map(self, fn: Callable[..., Any], xs: tuple) -> tuple:
        """``fn`` applied to ``tuple(x[i] for x in xs)`` for each ``i`` along the leading
        axis, one after the other; each output stacked along a new leading axis.

        Sequential on purpose: each call's temporaries are freed (and stay in cache)
        before the next one (``jax.lax.map`` under JAX, which also compiles ``fn`` once;
        a Python loop here). Differentiable.

        Args:
            fn: maps a tuple of arrays to a tuple of arrays of fixed shapes.
            xs: arrays with the same leading size ``m``.
        Returns:
            The tuple of stacked outputs, each ``[m, ...]``.
        """
        xp = self.xp
        outs = [fn(tuple(x[i] for x in xs)) for i in range(xs[0].shape[0])]
        return tuple(xp.stack([o[j] for o in outs]) for j in range(len(outs[0])))

    # -- compiled-function cache (used by kernels) ----------------------------------
    def compiled(self, key: Any, fn: Callable[..., Any], compiler: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """``compiler(fn)`` (default :meth:`jit`), compiled once per ``key`` on this backend
        instance and then reused: a kernel rebuilt with equal hyperparameters does not
        compile again. ``key`` must be hashable and name everything the computation
        depends on (the caller's class, the method, the compiler, hyperparameters)."""
        cache = self.__dict__.setdefault("_compiled_cache", {})
        if key not in cache:
            cache[key] = (compiler or self.jit)(fn)
        return cache[key]

    @property
    def eager(self) -> bool:
        """True when :meth:`jit` compiles nothing (operations run one by one, as on torch):
        callers may then choose to :meth:`compile` heavy pieces themselves."""
        return type(self).jit is Backend.jit

    def version(self, x: Any) -> Any:
        """A token that changes when ``x`` is modified in place (None where arrays are
        immutable, as under JAX): with the identity of ``x`` it keys caches of values
        computed from ``x``."""
        return None


def check_state(state: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], owner: str) -> None:
    """Check that ``state`` has exactly the keys of ``expected``, each with its shape and dtype.

    Raises:
        CheckpointError: listing missing, unexpected and mismatched entries.
    """
    from kdistill.errors import CheckpointError

    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    for k in expected:
        if k in state:
            got, want = np.asarray(state[k]), np.asarray(expected[k])
            if got.shape != want.shape or got.dtype != want.dtype:
                problems.append(f"{k} is {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}")
    if problems:
        raise CheckpointError(f"the saved state does not fit this {owner}: {'; '.join(problems)}")


def step_parts(backend: Backend, optimizer: Any, schedule: Any, lr: float) -> tuple[Any, Any]:
    """``(optimizer, schedule)`` for :meth:`Backend.make_step`: names resolved through the
    registry, the schedule bound to ``backend``.

    Raises:
        ConfigError: unknown names, or ``lr`` not a finite number > 0.
    """
    from kdistill.errors import ConfigError

    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and np.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a positive finite number, got {lr!r}")
    if isinstance(optimizer, str) or isinstance(schedule, str) or schedule is None:
        from kdistill.core.registry import get_registry

        if isinstance(optimizer, str):
            optimizer = get_registry().create("optimizers", optimizer)
        if schedule is None or isinstance(schedule, str):
            schedule = get_registry().create("schedules", schedule or "constant")
    return optimizer, schedule.bind(backend)
