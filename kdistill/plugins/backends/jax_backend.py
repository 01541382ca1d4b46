"""JAX backend: ``jax.numpy`` namespace, ``jax.jit``, optax optimizers.

Creating the backend turns on ``jax_enable_x64`` (process-wide) so that the KRR solve
can run in float64; arrays are still created as float32 unless asked otherwise.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kdistill.core.backend import CHOLESKY_JITTERS, Backend, Trainer, check_optimizer, check_state
from kdistill.errors import NonFiniteLossError


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


class JaxTrainer(Trainer):
    def __init__(self, backend: "JaxBackend", loss_fn, params, optimizer, lr, dtype):
        import jax
        import optax

        self._jax = jax
        opt = {"adam": lambda: optax.adam(lr), "sgd": lambda: optax.sgd(lr, momentum=0.9)}[
            optimizer
        ]()
        self._params = {k: backend.asarray(v, dtype) for k, v in params.items()}
        self._state = opt.init(self._params)
        self._treedef = jax.tree_util.tree_structure(self._state)  # of a fresh init

        def step(params, state, *batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
            finite = jax.numpy.isfinite(loss) & jax.tree_util.tree_reduce(
                lambda a, g: a & jax.numpy.all(jax.numpy.isfinite(g)), grads, True
            )
            updates, new_state = opt.update(grads, state, params)
            return loss, finite, optax.apply_updates(params, updates), new_state

        self._step = jax.jit(step)

    def step(self, *batch):
        loss, finite, params, state = self._step(self._params, self._state, *batch)
        if not bool(finite):
            raise NonFiniteLossError(
                f"non-finite loss or gradient (loss={float(loss)}); parameters were not updated"
            )
        self._params, self._state = params, state
        return float(loss)

    @property
    def params(self):
        return self._params

    def params_numpy(self):
        return {k: np.array(v) for k, v in self._params.items()}

    def state(self):
        """``params/<name>`` arrays and ``opt/<i:04d>``, the leaves of the optax state in
        ``jax.tree_util`` order."""
        out = {f"params/{k}": np.array(v) for k, v in self._params.items()}
        leaves = self._jax.tree_util.tree_leaves(self._state)
        out.update({f"opt/{i:04d}": np.array(leaf) for i, leaf in enumerate(leaves)})
        return out

    def load_state(self, state):
        check_state(state, self.state(), "JAX trainer")
        jnp = self._jax.numpy
        n = self._treedef.num_leaves
        self._params = {k: jnp.asarray(state[f"params/{k}"]) for k in self._params}
        self._state = self._jax.tree_util.tree_unflatten(
            self._treedef, [jnp.asarray(state[f"opt/{i:04d}"]) for i in range(n)]
        )


class JaxBackend(Backend):
    """Backend on JAX (``jax>=0.5.3``) and optax."""

    name = "jax"

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        self._jax = jax
        self.xp = jnp
        self._safe_arccos = _build_safe_arccos()

    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=None if dtype is None else self.dtype(dtype))

    def to_numpy(self, x):
        return np.asarray(x)

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

    def make_trainer(self, loss_fn, params: Mapping[str, np.ndarray], optimizer="adam",
                     lr=1e-2, dtype="float32") -> Trainer:
        check_optimizer(optimizer, lr)
        return JaxTrainer(self, loss_fn, params, optimizer, lr, dtype)
