"""Conformance checks for kernel, random kernel, solver, loss, method and run-callback
plugins (run them in your plugin's CI, like scikit-learn's ``check_estimator``).

Each check builds the component on every backend it declares (and that is
installed), runs it on small random inputs and raises ``AssertionError`` with a
precise message when the contract is broken::

    from kdistill.testing import check_kernel, check_random_kernel
    def test_my_kernel_conforms():
        check_kernel(MyKernel, scale=2.0)
    def test_my_random_kernel_conforms():
        check_random_kernel(MyRandomKernel, input_shape=(8, 8, 3), width=16)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kdistill.core.contracts import RandomKernel, step_seed
from kdistill.errors import ConfigError
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


def _inputs(input_shape, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x1 [7, ...]``, ``x2 [5, ...]`` (its first 2 rows are ``x1``'s: coincident points)
    and weights ``[7, 5]`` of a scalar ``sum(k(x1, x2) * weights)`` to differentiate."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((7, *input_shape))
    x2 = np.concatenate([x1[:2], rng.standard_normal((3, *input_shape))])
    return x1, x2, rng.standard_normal((7, 5))


def check_kernel(cls, *, input_shape=(4, 4, 2), seed: int = 0, rtol: float = 1e-6, **params: Any) -> None:
    """Check a Kernel class (or a factory ``cls(**params)`` of unbound kernels): shape ``[n1, n2]``, dtype preserved, symmetric PSD Gram
    matrix, finite input gradients (also at coincident points), and agreement of
    values and gradients across backends (float64). A :class:`RandomKernel` is checked
    as the fixed kernel that evaluation uses; :func:`check_random_kernel` checks the rest."""
    kind = cls if isinstance(cls, type) else type(cls(**params))  # a class, or a factory of instances
    x1, x2, weights = _inputs(input_shape, seed)
    values, grads = {}, {}
    for b in _backends(kind):
        k = cls(**params).bind(b)
        for dtype in ("float32", "float64"):
            out = k(b.asarray(x1, dtype), b.asarray(x2, dtype))
            assert tuple(out.shape) == (7, 5), f"{kind.__name__} returned shape {tuple(out.shape)}, expected (7, 5)"
            assert b.dtype_name(out) == dtype, f"{kind.__name__} turned {dtype} inputs into {b.dtype_name(out)}"
        gram = b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x1, "float64")))
        np.testing.assert_allclose(gram, gram.T, rtol=1e-10, atol=1e-12, err_msg=f"{kind.__name__} Gram matrix not symmetric")
        assert np.linalg.eigvalsh(gram).min() >= -1e-8 * abs(np.trace(gram)), f"{kind.__name__} Gram matrix not PSD"
        w = b.asarray(weights, "float64")
        value, g = b.value_and_grad(lambda p, _k=k, _w=w, _b=b: _b.xp.sum(_k(p["a"], p["b"]) * _w))(
            {"a": b.asarray(x1, "float64"), "b": b.asarray(x2, "float64")}
        )
        g = {n: b.to_numpy(v) for n, v in g.items()}
        assert all(np.all(np.isfinite(v)) for v in g.values()), f"{kind.__name__}: non-finite input gradient on {b.name}"
        values[b.name] = b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x2, "float64")))
        grads[b.name] = np.concatenate([g["a"].ravel(), g["b"].ravel()])
    _agree(values, f"{kind.__name__} values", rtol)
    _agree(grads, f"{kind.__name__} input gradients", rtol)


def _same_draw(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b), f"{what}: weight names {list(a)} != {list(b)}"
    for n in a:
        assert a[n].shape == b[n].shape and a[n].dtype == b[n].dtype, (
            f"{what}: weight {n!r} is {a[n].dtype}{a[n].shape}, then {b[n].dtype}{b[n].shape}")
        assert np.array_equal(a[n], b[n]), f"{what}: weight {n!r} differs"


def check_random_kernel(factory: Callable[..., Any], *, input_shape=(4, 4, 2), seed: int = 0,
                        rtol: float = 1e-6, **params: Any) -> None:
    """Check a :class:`~kdistill.core.contracts.RandomKernel` by exactly the calls the
    KIP loop and evaluation make (see that class), on every declared, installed backend.

    Args:
        factory: the kernel class, or any callable ``factory(**params)`` returning an
            unbound kernel (e.g. ``functools.partial``).
        input_shape: trailing shape of one example (``(H, W, C)`` for image kernels).
        seed: seed of the inputs; the weights are drawn with the seeds of steps 1 and 2
            of a run with this seed (:func:`~kdistill.core.contracts.step_seed`).
        rtol: tolerance of the comparisons that are not exact (jit vs eager, features
            vs ``__call__``, backend vs backend; float64).
        **params: hyperparameters passed to ``factory``.

    Checks, in order (the first failure raises ``AssertionError`` naming it):
        1. it is a RandomKernel (else the loop would use it as one fixed kernel), and
           :func:`check_kernel` passes for its fixed kernel (evaluation's use);
        2. ``sample_weights(step_seed(seed, 1), input_shape)``: a dict of finite float numpy arrays,
           bit-identical for the same seed (again, after another seed, from a new
           instance, and whichever backend the kernel is bound to), with the same
           names, shapes and dtypes but other values for another seed;
        3. ``with_weights(w)`` with ``w`` cast as the loop casts it (float32 and
           float64 backend arrays): a kernel of the same class giving ``[n1, n2]`` in
           the inputs' dtype, leaving the kernel it came from unchanged, and actually
           using the weights (another draw gives other values);
        4. for a fixed draw (float64): symmetric PSD Gram matrix; ``features(x1) @
           features(x2).T`` equals ``k(x1, x2)`` when ``has_features``; values with
           the weights passed as arguments into the backend's :meth:`jit` equal the
           eager ones; value-and-gradient w.r.t. the inputs under jit (as in a KIP
           step) finite, also at coincident points;
        5. values and input gradients for the same draw agree across backends.
    """
    proto = factory(**params)
    cls = type(proto)
    name = cls.__name__
    assert isinstance(proto, RandomKernel), (
        f"{name} is not a kdistill.core.contracts.RandomKernel: the KIP loop would not redraw it each step; "
        "subclass RandomKernel and implement sample_weights() and with_weights()")
    check_kernel(factory, input_shape=input_shape, seed=seed, rtol=rtol, **params)
    x1, x2, mix = _inputs(input_shape, seed)
    shape = tuple(input_shape)
    s1, s2 = step_seed(seed, 1), step_seed(seed, 2)  # the loop's seeds, unlike a kernel's fixed-draw seed
    values, grads, first_draw = {}, {}, None
    for b in _backends(cls):
        where = f"{name} on {b.name}"
        k = factory(**params).bind(b)
        w = k.sample_weights(s1, shape)
        assert isinstance(w, dict) and w and all(isinstance(n, str) for n in w), (
            f"{where}: sample_weights must return a non-empty dict name -> numpy array, got {type(w).__name__}")
        for n, v in w.items():
            assert isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating), (
                f"{where}: weight {n!r} must be a float numpy array (drawn on the host), got {type(v).__name__} "
                f"{getattr(v, 'dtype', '')}")
            assert np.all(np.isfinite(v)), f"{where}: weight {n!r} has non-finite values"
        other = k.sample_weights(s2, shape)
        _same_draw(w, k.sample_weights(s1, shape), f"{where}: sample_weights({s1}) is not reproducible")
        _same_draw(w, factory(**params).bind(b).sample_weights(s1, shape),
                   f"{where}: sample_weights({s1}) differs between two instances with the same hyperparameters")
        if first_draw is None:
            first_draw = w
        else:
            _same_draw(first_draw, w, f"{where}: sample_weights({s1}) depends on the backend")
        assert list(other) == list(w) and all(other[n].shape == w[n].shape and other[n].dtype == w[n].dtype for n in w), (
            f"{where}: sample_weights gives other names/shapes/dtypes for another seed (the compiled step would "
            "be traced again every step)")
        assert any(not np.array_equal(other[n], w[n]) for n in w), (
            f"{where}: sample_weights({s1}) and sample_weights({s2}) are equal")

        plain = b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x2, "float64")))
        for dtype in ("float32", "float64"):
            wb = {n: b.asarray(v, dtype) for n, v in w.items()}  # as the loop passes them
            kw = k.with_weights(wb)
            assert type(kw) is cls, f"{where}: with_weights returned a {type(kw).__name__}, not a {name}"
            out = kw(b.asarray(x1, dtype), b.asarray(x2, dtype))
            assert tuple(out.shape) == (7, 5), f"{where}: with_weights(w)(x1, x2) has shape {tuple(out.shape)}, expected (7, 5)"
            assert b.dtype_name(out) == dtype, f"{where}: with_weights(w) turned {dtype} inputs into {b.dtype_name(out)}"
        assert np.array_equal(plain, b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x2, "float64")))), (
            f"{where}: with_weights changed the kernel it was called on (its fixed kernel's values changed)")

        a1, a2 = b.asarray(x1, "float64"), b.asarray(x2, "float64")
        wb = {n: b.asarray(v, "float64") for n, v in w.items()}
        kw = k.with_weights(wb)
        eager = b.to_numpy(kw(a1, a2))
        o = b.to_numpy(k.with_weights({n: b.asarray(v, "float64") for n, v in other.items()})(a1, a2))
        assert np.max(np.abs(o - eager)) > rtol * np.max(np.abs(eager)), (
            f"{where}: with_weights ignores its weights (two draws give the same kernel values)")
        gram = b.to_numpy(kw(a1, a1))
        np.testing.assert_allclose(gram, gram.T, rtol=1e-10, atol=1e-12, err_msg=f"{where}: Gram matrix of a draw not symmetric")
        assert np.linalg.eigvalsh(gram).min() >= -1e-8 * abs(np.trace(gram)), f"{where}: Gram matrix of a draw not PSD"
        if k.has_features:
            f1, f2 = b.to_numpy(kw.features(a1)), b.to_numpy(kw.features(a2))
            assert f1.ndim == 2 and f1.shape[0] == 7 and f2.shape == (5, f1.shape[1]), (
                f"{where}: features must be [n, D], got {f1.shape} and {f2.shape}")
            np.testing.assert_allclose(f1 @ f2.T, eager, rtol=rtol, atol=rtol * 1e-3 * np.max(np.abs(eager)),
                                       err_msg=f"{where}: features(x1) @ features(x2).T != k(x1, x2) for one draw")
        jitted = b.to_numpy(b.jit(lambda p, q, ws, _k=k: _k.with_weights(ws)(p, q))(a1, a2, wb))
        np.testing.assert_allclose(jitted, eager, rtol=rtol, atol=rtol * 1e-3 * np.max(np.abs(eager)),
                                   err_msg=f"{where}: values under backend.jit differ from eager ones")
        m = b.asarray(mix, "float64")

        def objective(p, ws, _k=k, _m=m, _b=b):
            return _b.xp.sum(_k.with_weights(ws)(p["a"], p["b"]) * _m)

        _, g = b.jit(b.value_and_grad(objective))({"a": a1, "b": a2}, wb)
        g = {n: b.to_numpy(v) for n, v in g.items()}
        assert all(np.all(np.isfinite(v)) for v in g.values()), f"{where}: non-finite input gradient under jit"
        values[b.name], grads[b.name] = eager, np.concatenate([g["a"].ravel(), g["b"].ravel()])
    _agree(values, f"{name} values of one draw", rtol)
    _agree(grads, f"{name} input gradients of one draw", rtol)


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


def _tiny_config(**fields: Any):
    from kdistill.core.config import DistillConfig

    base = dict(dataset="digits", ipc=2, steps=3, target_batch=100, eval_every=0, test_size=60, seed=0)
    base.update(fields)
    return DistillConfig(**base)


def check_method(run: Callable[..., Any], *, backends: tuple[str, ...] = ("jax", "torch"), **fields: Any) -> None:
    """Check an outer-loop method (``kdistill_register_methods``) on the embedded digits
    data: it returns a :class:`~kdistill.io.artifact.DistilledSet` of ``ipc`` examples per
    class in the data's shape with finite images and ``[n_s, C]`` labels; its
    ``distilled_acc`` is the KRR accuracy of the set it returns (recomputed here with
    the run's evaluation kernel, solver and ridge: a method cannot report another
    number); a fixed seed gives the same set twice; the set saves and loads back.

    Args:
        run: the method, ``run(config, comps, data, callback=None, run_dir=None,
            resume=False)``. backends: those to run it on (installed ones only).
        fields: config fields for the tiny run (e.g. ``kernel="rbf"``).
    """
    import tempfile

    from kdistill.io.artifact import DistilledSet, load
    from kdistill.runtime.components import build_components, prepare_data
    from kdistill.core.krr import accuracy, krr_predict

    for name in backends:
        try:
            get_registry().backend(name)
        except ConfigError:
            continue
        config = _tiny_config(backend=name, **fields)
        comps, data = build_components(config), prepare_data(config)
        out = run(config, comps, data, callback=None, run_dir=None, resume=False)
        what = f"{getattr(run, '__name__', run)!r} on {name}"
        assert isinstance(out, DistilledSet), f"{what} returned {type(out).__name__}, not a DistilledSet"
        n_s, c = config.ipc * data.num_classes, data.num_classes
        assert out.images.shape == (n_s, *data.x_train.shape[1:]), f"{what}: images {out.images.shape}"
        assert out.labels.shape == (n_s, c), f"{what}: labels {out.labels.shape}, expected {(n_s, c)}"
        assert np.isfinite(out.images).all() and np.isfinite(out.labels).all(), f"{what}: non-finite set"
        assert np.bincount(out.class_ids, minlength=c).tolist() == [config.ipc] * c, f"{what}: not class-balanced"
        pred = krr_predict(comps.eval_kernel, comps.solver, out.images, out.labels, data.x_test[: config.test_size],
                           config.ridge, config.dtype)
        acc = accuracy(pred, data.y_test[: config.test_size])
        assert abs(out.metrics.get("distilled_acc", -1.0) - acc) <= 1e-9, (
            f"{what}: metrics['distilled_acc'] = {out.metrics.get('distilled_acc')!r} but the set it returns "
            f"scores {acc:.6f}")
        again = run(config, build_components(config), prepare_data(config), callback=None, run_dir=None, resume=False)
        assert np.array_equal(again.images, out.images), f"{what}: not deterministic for a fixed seed"
        with tempfile.TemporaryDirectory() as tmp:
            out.save(f"{tmp}/set.npz")
            assert np.array_equal(load(f"{tmp}/set.npz").images, out.images), f"{what}: does not round-trip"


def check_callback(factory: Callable[..., Any], *, backends: tuple[str, ...] = ("jax",), **params: Any) -> None:
    """Check a run callback (``kdistill_register_callbacks``): a 3-step KIP run with it
    calls ``after_step`` for steps 1, 2, 3 and gives exactly the set of a run without it
    (tracking must not change results).

    Args:
        factory: the callback class; params: its parameters.
    """
    from kdistill.runtime.components import build_components, prepare_data
    from kdistill.plugins.methods.kip import run_kip
    from kdistill.core.loop import RunHook

    hook = factory(**params)
    assert isinstance(hook, RunHook), f"{factory.__name__} must subclass kdistill.core.loop.RunHook"
    seen: list[int] = []

    class Spy(RunHook):
        def after_step(self, run, info):
            seen.append(info["step"])
            hook.after_step(run, info)

    for name in backends:
        config = _tiny_config(backend=name)
        comps, data = build_components(config), prepare_data(config)
        plain = run_kip(config, comps, data)
        comps.callbacks = [Spy()]
        seen.clear()
        with_hook = run_kip(config, comps, data)
        assert seen == [1, 2, 3], f"{factory.__name__} saw steps {seen}, expected [1, 2, 3]"
        assert np.array_equal(with_hook.images, plain.images), f"{factory.__name__} changed the result on {name}"
