"""JAX backend: ``jax.numpy`` namespace, ``jax.jit``, optax optimizers.

Creating the backend turns on ``jax_enable_x64`` (process-wide) so that the KRR solve
can run in float64; arrays are still created as float32 unless asked otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from kdistill.core.backend import CHOLESKY_JITTERS, Backend, TrainStep, check_state, parse_device, step_parts
from kdistill.errors import CheckpointError, ConfigError


#: Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 - x) * sum_i a_i x^i on [0, 1], |error| <= 2e-8.
_ACOS_COEFFS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046,
                0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)


def _arccos_poly(c):
    """float32 arccos of ``c`` in [-1, 1] by A&S 4.4.46 (error below float32 rounding at pi).

    XLA's CPU ``acos`` is scalar (about 20-30 ns per element here); this polynomial
    vectorizes and fuses (about 1 ns), which is what makes the ConvNet kernel fast.
    """
    import jax.numpy as jnp

    x = jnp.abs(c)
    poly = _ACOS_COEFFS[-1]
    for a in _ACOS_COEFFS[-2::-1]:
        poly = poly * x + a
    r = jnp.sqrt(1.0 - x) * poly
    return jnp.where(c >= 0, r, jnp.float32(np.pi) - r)


def _build_safe_arccos():
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def safe_arccos(c):
        c = jnp.clip(c, -1.0, 1.0)
        if c.dtype == jnp.float32:
            return _arccos_poly(c)
        return jnp.arccos(c)

    @safe_arccos.defjvp
    def _jvp(primals, tangents):
        (c,), (t,) = primals, tangents
        eps = jnp.finfo(c.dtype).eps
        inside = jnp.abs(c) < 1.0
        slope = -1.0 / jnp.sqrt(jnp.maximum(1.0 - c * c, eps))
        return safe_arccos(c), jnp.where(inside, slope, 0.0) * t

    return safe_arccos


class JaxState(NamedTuple):
    """State of a :class:`JaxStep`: ``params`` (name -> jax array) and ``opt``, the optax
    state (a pytree)."""

    params: dict
    opt: Any


def shard_map(fn, mesh, in_specs, out_specs):
    """``jax.shard_map`` (JAX >= 0.7), else ``jax.experimental.shard_map.shard_map``; without
    the replication check, which has no rule for ``while`` loops on older JAX (the
    outputs are replicated by construction: they come out of a ``pmean``)."""
    import jax

    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(fn, mesh, in_specs, out_specs, check_rep=False)


def _optax_transform(optimizer, schedule, lr: float, total_steps: int):
    """The optax GradientTransformation ``optimizer`` declares, at learning rate ``lr``
    (a plain float for a constant schedule, so the optax state is that of a run without a
    schedule) or ``count -> lr * schedule(count, total_steps)``."""
    import optax

    name, kwargs = optimizer.optax()
    factory = getattr(optax, name, None)
    if not callable(factory):
        raise ConfigError(f"optimizer {type(optimizer).__name__} declares optax.{name}, which optax "
                          f"{optax.__version__} does not have")
    rate = lr if schedule.constant else (lambda count: lr * schedule(count, total_steps))
    return factory(rate, **kwargs)


class JaxStep(TrainStep):
    """:class:`~kdistill.core.backend.TrainStep` on JAX: one jitted function of
    ``(state, *batch)`` (``jax.value_and_grad``, the finite check, the optax update).
    Nothing waits for the device: the metrics are device arrays, and the caller discards
    the new state when ``metrics["finite"]`` is false (no select on the device)."""

    def __init__(self, backend: "JaxBackend", loss_fn, optimizer, schedule, lr, dtype, total_steps):
        super().__init__(backend, loss_fn, optimizer, schedule, lr, dtype, total_steps)
        import jax
        import optax

        self._jax = jax
        tx = self._tx = _optax_transform(optimizer, schedule, self.lr, self.total_steps)
        jnp = jax.numpy

        def make(value_and_grad):
            """The jitted ``gradients``, ``apply`` and ``step`` around ``value_and_grad``."""

            def gradients(state, *batch):
                return value_and_grad(state.params, *batch)

            def apply(state, grads):
                updates, opt = tx.update(grads, state.opt, state.params)
                return JaxState(optax.apply_updates(state.params, updates), opt)

            def step(state, *batch):
                loss, grads = gradients(state, *batch)
                finite = jnp.isfinite(loss) & jax.tree_util.tree_reduce(
                    lambda a, g: a & jnp.all(jnp.isfinite(g)), grads, True
                )
                return apply(state, grads), {"loss": loss, "finite": finite}

            # on a mesh every output (state, loss, gradients) is kept replicated
            kw = {} if backend.mesh is None else {"out_shardings": backend._replicated}
            return jax.jit(gradients, **kw), jax.jit(apply, **kw), jax.jit(step, **kw)

        self._make = make
        self._by_specs: dict = {}  # on a mesh: the jitted functions per sharding of the batch
        if backend.mesh is None:
            self._gradients, self._apply, self._step = make(jax.value_and_grad(loss_fn))

    def _compiled(self, batch):
        """``(gradients, apply, step)`` for this batch: on a mesh, data-parallel by
        ``shard_map`` over the batch's sharding (:meth:`JaxBackend.shard_rows` arrays are
        split over ``"data"``, all others replicated): each device takes the loss and
        gradients of its share of the targets, and one ``pmean`` (an XLA all-reduce of
        the loss and the support-set gradients) makes them the whole batch's. Equal
        shares make the mean of the shards' means the batch mean."""
        if self.backend.mesh is None:
            return self._gradients, self._apply, self._step
        jax = self._jax
        specs = jax.tree_util.tree_map(self.backend.spec_of, batch)
        leaves, treedef = jax.tree_util.tree_flatten(specs)
        key = (tuple(leaves), treedef)
        if key not in self._by_specs:
            from jax.sharding import PartitionSpec

            loss_fn = self.loss_fn

            def local(params, *shard):
                return jax.lax.pmean(jax.value_and_grad(loss_fn)(params, *shard), "data")

            fn = shard_map(local, self.backend.mesh, (PartitionSpec(), *specs), PartitionSpec())
            self._by_specs[key] = self._make(fn)
        return self._by_specs[key]

    def init(self, params):
        p = {k: self.backend.asarray(v, self.dtype) for k, v in params.items()}
        return self.backend.replicate(JaxState(p, self._tx.init(p)))

    def gradients(self, state, *batch):
        return self._compiled(batch)[0](state, *batch)

    def apply(self, state, grads):
        return self._compiled(())[1](state, grads)

    def step(self, state, *batch):
        return self._compiled(batch)[2](state, *batch)

    def params(self, state):
        return {k: np.array(self.backend.to_numpy(v)) for k, v in state.params.items()}

    def to_arrays(self, state):
        """``params/<name>`` arrays and ``opt/<i:04d>``, the leaves of the optax state in
        ``jax.tree_util`` order."""
        out = {f"params/{k}": v for k, v in self.params(state).items()}
        leaves = self._jax.tree_util.tree_leaves(state.opt)
        out.update({f"opt/{i:04d}": np.array(self.backend.to_numpy(leaf)) for i, leaf in enumerate(leaves)})
        return out

    def from_arrays(self, arrays, like=None):
        jnp = self._jax.numpy
        names = [k[7:] for k in arrays if k.startswith("params/")]
        if like is not None:
            expected = {f"params/{k}": np.asarray(v) for k, v in self.params(like).items()}
            check_state({k: v for k, v in arrays.items() if k.startswith("params/")}, expected, "JAX step")
        bad = [f"params/{k} is {np.asarray(arrays[f'params/{k}']).dtype}, expected {self.dtype}"
               for k in names if np.asarray(arrays[f"params/{k}"]).dtype != np.dtype(self.dtype)]
        if bad:
            raise CheckpointError(f"the saved state does not fit this JAX step: {'; '.join(bad)}")
        fresh = self.init({k: np.asarray(arrays[f"params/{k}"]) for k in names})
        check_state(arrays, self.to_arrays(fresh), "JAX step")
        treedef = self._jax.tree_util.tree_structure(fresh.opt)
        opt = self._jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(arrays[f"opt/{i:04d}"]) for i in range(treedef.num_leaves)]
        )
        return self.backend.replicate(JaxState({k: jnp.asarray(arrays[f"params/{k}"]) for k in names}, opt))


def jax_devices(jax, device: str) -> list:
    """The devices a ``device`` setting names (:func:`~kdistill.core.backend.parse_device`):
    ``auto``, every device of JAX's default platform; ``cpu``/``gpu``/``tpu``, every
    device of that platform (of all processes under ``jax.distributed``); with an index,
    that one local device.

    Raises:
        ConfigError: a platform JAX does not see (the message names what it sees).
    """
    kind, index = parse_device(device)
    try:
        if kind == "auto":
            found = jax.devices()
        elif kind == "mps":
            raise RuntimeError("JAX has no 'mps' platform")
        else:
            found = jax.local_devices(backend=kind) if index is not None else jax.devices(kind)
        if index is not None:
            found = [found[index]]
    except (RuntimeError, IndexError) as exc:
        seen = ", ".join(sorted({f"{d.platform} ({n})" for d in jax.devices()
                                 for n in [sum(e.platform == d.platform for e in jax.devices())]}))
        hint = (" For GPUs install the CUDA build: pip install -e '.[jax-cuda]' (see the README's 'GPUs and "
                "clusters')." if kind in ("gpu", "tpu") else "")
        raise ConfigError(f"device={device!r}: JAX {jax.__version__} sees no such device ({exc}); it sees "
                          f"{seen}.{hint} Use device='auto' for what is there.") from exc
    return list(found)


class JaxBackend(Backend):
    """Backend on JAX (``jax>=0.5.3``) and optax."""

    name = "jax"

    def __init__(self, device: str = "auto") -> None:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        self._jax = jax
        self.xp = jnp
        self._safe_arccos = _build_safe_arccos()
        self.device = device
        self.devices = jax_devices(jax, device)
        self.mesh = self._replicated = self._rows = None
        if len(self.devices) > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            self.mesh = Mesh(np.array(self.devices), ("data",))
            self._replicated = NamedSharding(self.mesh, PartitionSpec())
            self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
        elif self.devices[0] != jax.devices()[0]:
            jax.config.update("jax_default_device", self.devices[0])

    # -- devices and data parallelism --------------------------------------------------
    @property
    def shards(self) -> int:
        """The devices of the mesh: every device of the chosen platform, of every process
        under ``jax.distributed`` (1 for a single device)."""
        return len(self.devices)

    @property
    def process_index(self) -> int:
        return self._jax.process_index()

    @property
    def process_count(self) -> int:
        return self._jax.process_count()

    def describe_devices(self) -> str:
        d = self.devices[0]
        where = f" in {self.process_count} processes" if self.process_count > 1 else ""
        return f"{len(self.devices)} x {d.platform}{where}" if self.mesh is not None else f"{d.platform}:{d.id}"

    def _global(self, x: np.ndarray, sharding) -> Any:
        """A global array of ``sharding`` from the full numpy ``x`` every process holds."""
        return self._jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def asarray(self, x, dtype=None):
        dt = None if dtype is None else self.dtype(dtype)
        if self.mesh is None or isinstance(x, self._jax.Array):
            return self.xp.asarray(x, dtype=dt)
        return self._global(np.asarray(x, dtype=dt), self._replicated)  # replicated on the mesh

    def shard_rows(self, x, dtype=None):
        if self.mesh is None:
            return self.asarray(x, dtype)
        x = np.asarray(x, dtype=None if dtype is None else np.dtype(dtype))
        if len(x) % self.shards:
            raise ValueError(f"{len(x)} rows cannot be split evenly over {self.shards} devices")
        return self._global(x, self._rows)

    def spec_of(self, x):
        """The ``PartitionSpec`` of ``x`` on this backend's mesh (replicated for anything
        else: numpy arrays, scalars, arrays on one device)."""
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
            return sharding.spec
        return PartitionSpec()

    def replicate(self, tree):
        """``tree``'s arrays replicated on the mesh (unchanged without a mesh)."""
        if self.mesh is None:
            return tree
        return self._jax.jit(lambda t: t, out_shardings=self._replicated)(tree)

    def to_numpy(self, x):
        if isinstance(x, self._jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def barrier(self):
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("kdistill")

    def is_concrete(self, x) -> bool:
        return not isinstance(x, self._jax.core.Tracer)

    def safe_arccos(self, c):
        """As :meth:`Backend.safe_arccos`; float32 uses a vectorizing polynomial
        (Abramowitz & Stegun 4.4.46, absolute error <= 2e-8 plus float32 rounding)."""
        return self._safe_arccos(c)

    def stop_gradient(self, x):
        return self._jax.lax.stop_gradient(x)

    def psd_cholesky(self, a):
        jnp, lax = self.xp, self._jax.lax
        n = a.shape[-1]
        eye = jnp.eye(n, dtype=a.dtype)
        jitters = jnp.asarray(CHOLESKY_JITTERS, dtype=a.dtype) * jnp.mean(jnp.diagonal(a))

        def finite(chol):  # finite and numerically nonsingular
            return self.pivots_ok(jnp.diagonal(chol) ** 2) & jnp.all(jnp.isfinite(chol))

        def retry(_):
            # find the first working jitter without gradients (while_loop is not
            # reverse-differentiable), then factor once more, differentiably.
            probe = lax.stop_gradient(a)

            def cond(i):
                return (i < len(CHOLESKY_JITTERS)) & ~finite(jnp.linalg.cholesky(probe + jitters[i] * eye))

            i = jnp.minimum(lax.while_loop(cond, lambda i: i + 1, 1), len(CHOLESKY_JITTERS) - 1)
            return jnp.linalg.cholesky(a + jitters[i] * eye)

        first = jnp.linalg.cholesky(a)
        chol = lax.cond(finite(first), lambda _: first, retry, None)
        return chol, finite(chol)

    def lu_solve(self, a, b):
        from jax.scipy.linalg import lu_factor, lu_solve

        lu, piv = lu_factor(a)
        return lu_solve((lu, piv), b), self.xp.abs(self.xp.diagonal(lu))

    def cho_solve(self, chol, b):
        from jax.scipy.linalg import cho_solve

        return cho_solve((chol, True), b)

    def solve_triangular(self, a, b, lower=True):
        from jax.scipy.linalg import solve_triangular

        return solve_triangular(a, b, lower=lower)

    def conv2d(self, x, w, groups=1):
        """``lax.conv_general_dilated`` in NHWC/HWIO, SAME padding."""
        return self._jax.lax.conv_general_dilated(
            x, self.xp.astype(w, x.dtype), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        )

    def normal(self, seed, shape, dtype="float32"):
        key = self._jax.random.PRNGKey(seed)
        return self._jax.random.normal(key, shape, dtype=self.dtype(dtype))

    def value_and_grad(self, fn):
        return self._jax.value_and_grad(fn)

    def jit(self, fn):
        return self._jax.jit(fn)

    def map(self, fn, xs):
        return tuple(self._jax.lax.map(lambda args: tuple(fn(args)), tuple(xs)))

    def checkpoint(self, fn):
        return self._jax.checkpoint(fn)

    def make_step(self, loss_fn, optimizer="adam", schedule=None, lr=1e-2, dtype="float32",
                  total_steps=0) -> JaxStep:
        optimizer, schedule = step_parts(self, optimizer, schedule, lr)
        return JaxStep(self, loss_fn, optimizer, schedule, lr, dtype, total_steps)

    # -- compiled-function cache (used by kernels) ----------------------------------
    @property
    def eager(self) -> bool:
        """False: :meth:`jit` compiles whole programs (XLA)."""
        return False
