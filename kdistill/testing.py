"""Conformance checks for kernel, solver and loss plugins (run them in your plugin's CI).

Each check builds the component on every backend it declares (and that is
installed), runs it on small random float64 inputs and raises ``AssertionError``
with a precise message when the contract is broken::

    from kdistill.testing import check_kernel
    def test_my_kernel_conforms():
        check_kernel(MyKernel, scale=2.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdistill.core.errors import ConfigError
from kdistill.core.registry import get_registry


def _backends(cls) -> list:
    out = []
    for name in cls.backends:
        try:
            out.append(get_registry().backend(name))
        except ConfigError:
            continue  # not installed here
    if not out:
        raise AssertionError(f"none of {cls.__name__}'s backends {cls.backends} is installed")
    return out


def _agree(results: dict[str, np.ndarray], what: str, rtol: float) -> None:
    names = list(results)
    for other in names[1:]:
        np.testing.assert_allclose(
            results[other], results[names[0]], rtol=rtol, atol=rtol * 1e-3,
            err_msg=f"{what}: backend {other!r} disagrees with {names[0]!r}",
        )


def check_kernel(cls, *, input_shape=(4, 4, 2), seed: int = 0, rtol: float = 1e-6, **params: Any) -> None:
    """Check a Kernel class: shape ``[n1, n2]``, dtype preserved, symmetric PSD Gram
    matrix, finite input gradients (also at coincident points), and agreement of
    values and gradients across backends (float64)."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((7, *input_shape))
    x2 = np.concatenate([x1[:2], rng.standard_normal((3, *input_shape))])
    weights = rng.standard_normal((7, 5))
    values, grads = {}, {}
    for b in _backends(cls):
        k = cls(**params).bind(b)
        if k.is_random:
            k = k.sample(seed)
        for dtype in ("float32", "float64"):
            out = k(b.asarray(x1, dtype), b.asarray(x2, dtype))
            assert tuple(out.shape) == (7, 5), f"{cls.__name__} returned shape {tuple(out.shape)}, expected (7, 5)"
            assert b.dtype_name(out) == dtype, f"{cls.__name__} turned {dtype} inputs into {b.dtype_name(out)}"
        gram = b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x1, "float64")))
        np.testing.assert_allclose(gram, gram.T, rtol=1e-10, atol=1e-12, err_msg=f"{cls.__name__} Gram matrix not symmetric")
        assert np.linalg.eigvalsh(gram).min() >= -1e-8 * abs(np.trace(gram)), f"{cls.__name__} Gram matrix not PSD"
        w = b.asarray(weights, "float64")
        value, g = b.value_and_grad(lambda p, _k=k, _w=w, _b=b: _b.xp.sum(_k(p["a"], p["b"]) * _w))(
            {"a": b.asarray(x1, "float64"), "b": b.asarray(x2, "float64")}
        )
        g = {n: b.to_numpy(v) for n, v in g.items()}
        assert all(np.all(np.isfinite(v)) for v in g.values()), f"{cls.__name__}: non-finite input gradient on {b.name}"
        values[b.name] = b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x2, "float64")))
        grads[b.name] = np.concatenate([g["a"].ravel(), g["b"].ravel()])
    _agree(values, f"{cls.__name__} values", rtol)
    _agree(grads, f"{cls.__name__} input gradients", rtol)


def check_solver(cls, *, seed: int = 0, rtol: float = 1e-8, **params: Any) -> None:
    """Check a Solver class against ``numpy.linalg.solve`` with the relative ridge."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((12, 12))
    k, y, lam = a @ a.T, rng.standard_normal((12, 3)), 1e-3
    expected = np.linalg.solve(k + lam * np.trace(k) / 12 * np.eye(12), y)
    for b in _backends(cls):
        got = b.to_numpy(cls(**params).bind(b).solve(b.asarray(k, "float64"), b.asarray(y, "float64"), lam))
        np.testing.assert_allclose(got, expected, rtol=rtol, err_msg=f"{cls.__name__} on {b.name}")


def check_loss(cls, *, seed: int = 0, rtol: float = 1e-8, **params: Any) -> None:
    """Check a Loss class: scalar, finite, minimal-ish at the targets, same value and
    gradient on every backend."""
    rng = np.random.default_rng(seed)
    y = np.eye(4)[rng.integers(0, 4, 10)] - 0.25
    yhat = rng.standard_normal((10, 4))
    values, grads = {}, {}
    for b in _backends(cls):
        loss = cls(**params).bind(b)
        p0 = {k: b.asarray(v, "float64") for k, v in loss.init_params().items()}
        yb = b.asarray(y, "float64")
        value, g = b.value_and_grad(lambda p, _l=loss, _y=yb, _p0=p0: _l(p["yhat"], _y, _p0))({"yhat": b.asarray(yhat, "float64")})
        assert np.ndim(b.to_numpy(value)) == 0, f"{cls.__name__} must return a scalar"
        at_target = float(loss(yb, yb, p0))
        assert at_target < float(value), f"{cls.__name__}: loss at the targets is not below a random prediction"
        values[b.name] = np.asarray(float(value))
        grads[b.name] = b.to_numpy(g["yhat"])
    _agree(values, f"{cls.__name__} values", rtol)
    _agree(grads, f"{cls.__name__} gradients", rtol)
