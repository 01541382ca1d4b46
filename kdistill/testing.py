"""Conformance checks for backend, kernel, random kernel, solver, loss, dataset, method,
run-callback, optimizer and schedule plugins (run them in your plugin's CI, like
scikit-learn's ``check_estimator``).

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

from typing import Any, Callable, ClassVar

import attrs
import numpy as np

from kdistill.core.contracts import Kernel, RandomKernel, step_seed
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
    """Check a Solver class against numpy, in float64, on every backend it declares.

    1. ``solve(K_ss, y, lam)`` equals ``numpy.linalg.solve(K_ss + lam tr(K_ss)/n I, y)``
       for a well-conditioned ``K_ss [12, 12]``, ``y [12, 3]``.
    2. ``fit(kernel, x_s, y_s, lam)`` predicts, on targets ``x_t [5, 4]``, the exact
       kernel ridge regression ``K_ts (K_ss + lam tr(K_ss)/n_s I)^-1 y_s`` of a kernel
       with explicit features (``phi(x) = [x, x^2 / 2]``, 8 features for 12 support
       points, so ``K_ss`` is singular without the ridge and ``fit`` may work in feature
       space).

    ``rtol``: the solver's declared accuracy. Exact solvers pass the default (float64
    rounding times the condition numbers, below 1e3 here); an approximate solver
    (Nystrom, truncated eigenbasis) passes the tolerance it promises against the exact
    solve.

    Raises:
        AssertionError: naming the solver, the backend and the failed check.
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((12, 12))
    k, y, lam = a @ a.T, rng.standard_normal((12, 3)), 1e-3
    expected = np.linalg.solve(k + lam * np.trace(k) / 12 * np.eye(12), y)
    x_s, x_t = rng.standard_normal((12, 4)), rng.standard_normal((5, 4))

    def phi(x):
        return np.concatenate([x, x**2 / 2], axis=1)

    k_ss, k_ts = phi(x_s) @ phi(x_s).T, phi(x_t) @ phi(x_s).T
    krr = k_ts @ np.linalg.solve(k_ss + lam * np.trace(k_ss) / 12 * np.eye(12), y)
    for b in _backends(cls):
        solver = cls(**params).bind(b)
        got = b.to_numpy(solver.solve(b.asarray(k, "float64"), b.asarray(y, "float64"), lam))
        np.testing.assert_allclose(got, expected, rtol=rtol, err_msg=f"{cls.__name__}.solve on {b.name}")
        kernel = _FeatureKernel().bind(b)
        predictor = solver.fit(kernel, b.asarray(x_s, "float64"), b.asarray(y, "float64"), lam)
        got = b.to_numpy(predictor(b.asarray(x_t, "float64")))
        np.testing.assert_allclose(got, krr, rtol=rtol, atol=rtol * np.abs(krr).max(),
                                   err_msg=f"{cls.__name__}.fit predictions on {b.name} vs exact KRR")


@attrs.define(kw_only=True)
class _FeatureKernel(Kernel):
    """``k(x, x') = phi(x) . phi(x')`` with ``phi(x) = [x, x^2 / 2]`` (x flattened): a kernel
    with explicit features for :func:`check_solver`."""

    has_features: ClassVar[bool] = True

    def features(self, x):
        xp = self.b.xp
        flat = xp.reshape(x, (x.shape[0], -1))
        return xp.concat([flat, flat**2 / 2], axis=1)

    def __call__(self, x1, x2):
        return self.features(x1) @ self.features(x2).T


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


def check_dataset(loader: Callable[..., Any] | str, data_dir: str | None = None) -> None:
    """Check a dataset plugin (``kdistill_register_datasets``) against the
    :class:`~kdistill.core.contracts.Dataset` contract: the loader returns a ``Dataset``
    whose images are ``[N, H, W, C]`` NHWC uint8 or float32 (floats finite, on the
    0..255 scale), train and test alike in ``(H, W, C)`` and dtype; whose labels are
    ``[N]`` int64 in ``0..num_classes-1``, one per image; with ``num_classes`` class
    names, a non-empty test split and every class present in the training split; and
    loading twice gives the same arrays (deterministic loading).

    Args:
        loader: the loader ``loader(data_dir) -> Dataset``, or the registered name of one
            (e.g. ``"digits"``).
        data_dir: passed to the loader (None for embedded datasets).
    Raises:
        AssertionError: naming the broken part of the contract.
    """
    from kdistill.core.contracts import Dataset, check_images, check_labels
    from kdistill.errors import DataError

    if isinstance(loader, str):
        loader = get_registry().get("datasets", loader).factory
    what = f"dataset loader {getattr(loader, '__name__', loader)!r}"
    first, second = loader(data_dir), loader(data_dir)
    for ds in (first, second):
        assert isinstance(ds, Dataset), f"{what} returned {type(ds).__name__}, not a kdistill Dataset"
    ds = first
    where = f"{what} (dataset {ds.name!r})"
    assert isinstance(ds.name, str) and ds.name, f"{where}: name must be a non-empty string, got {ds.name!r}"
    assert isinstance(ds.num_classes, int) and ds.num_classes >= 1, f"{where}: num_classes {ds.num_classes!r}"
    assert len(ds.class_names) == ds.num_classes and all(isinstance(n, str) for n in ds.class_names), (
        f"{where}: class_names must be {ds.num_classes} strings, got {ds.class_names!r}")
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        try:
            check_images(x, f"{where}: x_{split}")
            check_labels(y, ds.num_classes, f"{where}: y_{split}", count=len(x))
        except DataError as exc:
            raise AssertionError(str(exc)) from exc
        assert y.dtype == np.int64, f"{where}: y_{split} has dtype {y.dtype}, expected int64"
        assert len(x) >= 1, f"{where}: the {split} split is empty"
        if x.dtype.kind == "f":
            lo, hi = float(x.min()), float(x.max())
            assert 0.0 <= lo and hi <= 255.0, (
                f"{where}: float x_{split} must lie on the 0..255 scale, found values in {lo:g}..{hi:g}")
    assert ds.x_test.shape[1:] == ds.x_train.shape[1:], (
        f"{where}: train images {ds.x_train.shape[1:]} and test images {ds.x_test.shape[1:]} differ in [H, W, C]")
    assert ds.x_test.dtype == ds.x_train.dtype, f"{where}: train {ds.x_train.dtype} vs test {ds.x_test.dtype} images"
    counts = np.bincount(ds.y_train, minlength=ds.num_classes)
    missing = [int(c) for c in np.flatnonzero(counts == 0)]
    assert not missing, f"{where}: classes {missing} have no training example (class counts {counts.tolist()})"
    for field in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(first, field), getattr(second, field)
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b), (
            f"{where}: two loads give different {field}: loading must be deterministic")
    assert (first.name, first.num_classes, tuple(first.class_names)) == (
        second.name, second.num_classes, tuple(second.class_names)), f"{where}: two loads give different metadata"


def _quadratic(b):
    """``loss(params, t) = mean_i 0.5 * s_i (w_i - t_i)^2 + 0.5 * (loss/c - 1)^2``: a convex
    quadratic with its minimum at ``w = t``, ``loss/c = 1`` (a batch mean, like KIP's)."""
    xp = b.xp
    scales = b.asarray(np.linspace(0.5, 2.0, 12).reshape(3, 4), "float64")

    def loss_fn(params, t):
        return xp.mean(0.5 * scales * (params["w"] - t) ** 2) + 0.5 * (params["loss/c"] - 1.0) ** 2

    return loss_fn


def _same_arrays(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: keys {sorted(a)} vs {sorted(b)}"
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{what}: {k} differs"


def _run_steps(train, state, batch, n: int):
    losses = []
    for _ in range(n):
        state, metrics = train(state, *batch)
        assert bool(metrics["finite"]), "the step reports a non-finite loss or gradient on a quadratic"
        losses.append(float(metrics["loss"]))
    return state, losses


def check_optimizer(factory: Callable[..., Any], *, steps: int = 8, lr: float = 0.05, seed: int = 0,
                    **params: Any) -> None:
    """Check an optimizer (``kdistill_register_optimizers``) on every installed backend
    it declares, in float64, on a small convex quadratic (a batch mean over 12 targets
    plus a scalar parameter ``loss/c``):

    - it decreases the loss over ``steps`` steps (constant learning rate ``lr``);
    - the step is pure: the input state's checkpoint arrays are unchanged by a step;
    - the state round-trips through :meth:`~kdistill.core.backend.TrainStep.to_arrays`
      (numeric numpy arrays only) and ``from_arrays``, and the restored state continues
      bit-for-bit as the original (also with the ``cosine`` schedule, whose state
      counts updates);
    - its optax and ``torch.optim`` declarations give the same parameters after
      ``steps`` steps: relative difference at most ``100 * steps`` float64 machine
      epsilons (the two libraries round differently, by a few units in the last place
      per operation).

    Args:
        factory: the Optimizer class (or a factory of instances); params: its
            hyperparameters.
    """
    from kdistill.core.contracts import Optimizer

    opt = factory(**params)
    name = type(opt).__name__
    assert isinstance(opt, Optimizer), f"{name} must subclass kdistill.core.contracts.Optimizer"
    rng = np.random.default_rng(seed)
    init = {"w": rng.standard_normal((3, 4)), "loss/c": np.asarray(-0.5)}
    target = rng.standard_normal((3, 4))
    finals = {}
    for b in _backends(type(opt)):
        what = f"{name} on {b.name}"
        train = b.make_step(_quadratic(b), opt, "constant", lr, "float64", steps)
        batch = (b.asarray(target, "float64"),)
        state0 = train.init(init)
        before = train.to_arrays(state0)
        assert all(type(v) is np.ndarray and v.dtype.kind in "fiub" for v in before.values()), (
            f"{what}: to_arrays must give numeric numpy arrays")
        state1, first = _run_steps(train, state0, batch, 1)
        _same_arrays(train.to_arrays(state0), before, f"{what}: the step changed its input state")
        state, losses = _run_steps(train, state1, batch, steps - 1)
        final, _ = _run_steps(train, state, batch, 1)
        start = float(train.gradients(state0, *batch)[0])
        assert losses[-1] < start, f"{what}: the loss went from {start:.6g} to {losses[-1]:.6g}, not down"
        finals[b.name] = np.concatenate([v.ravel() for _, v in sorted(train.params(final).items())])
        for sched in ("constant", "cosine"):
            tr = b.make_step(_quadratic(b), opt, sched, lr, "float64", steps)
            mid, _ = _run_steps(tr, tr.init(init), batch, 3)
            arrays = tr.to_arrays(mid)
            restored = tr.from_arrays({k: v.copy() for k, v in arrays.items()})
            _same_arrays(tr.to_arrays(restored), arrays, f"{what}, {sched} schedule: to_arrays/from_arrays")
            a, la = _run_steps(tr, mid, batch, 3)
            r, lr_ = _run_steps(tr, restored, batch, 3)
            assert la == lr_, f"{what}, {sched} schedule: a restored state continues differently"
            _same_arrays(tr.to_arrays(r), tr.to_arrays(a), f"{what}, {sched} schedule: restored state")
    names = list(finals)
    tol = 100 * steps * np.finfo(np.float64).eps
    for other in names[1:]:
        got, want = finals[other], finals[names[0]]
        err = np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))
        assert err <= tol, (f"{name}: {other!r} and {names[0]!r} disagree after {steps} steps by {err:.3g} "
                            f"(relative; at most {tol:.3g}): the optax and torch.optim declarations differ")


def check_schedule(factory: Callable[..., Any], *, total: int = 20, lr: float = 0.1, **params: Any) -> None:
    """Check a learning-rate schedule (``kdistill_register_schedules``) on every installed
    backend it declares:

    - ``schedule(count, total)`` is a finite scalar >= 0 for ``count`` 0 .. ``total + 5``,
      the same on every backend (relative 1e-12), and traceable: under ``jax.jit`` it
      gives the eager values; a schedule declaring ``constant`` is 1 everywhere;
    - a run uses it: ``total`` steps of plain gradient descent (``sgd``, momentum 0) on
      a loss with constant gradient move the parameter by ``lr * sum_k schedule(k)``
      times the gradient (1e-12), and the state round-trips through the checkpoint arrays
      mid-run and continues bit-for-bit.

    Args:
        factory: the Schedule class (or a factory); params: its parameters.
    """
    from kdistill.core.contracts import Schedule

    sched = factory(**params)
    name = type(sched).__name__
    assert isinstance(sched, Schedule), f"{name} must subclass kdistill.core.contracts.Schedule"
    counts = np.arange(total + 6)
    values = {}
    sgd = get_registry().create("optimizers", "sgd", momentum=0.0)
    grad = np.linspace(-1.0, 1.0, 5)
    for b in _backends(type(sched)):
        what = f"{name} on {b.name}"
        s = sched.bind(b)
        eager = []
        for c in counts:
            v = s(b.asarray(np.asarray(c, np.int32)), total)
            assert tuple(v.shape) == (), f"{what}: schedule({c}) has shape {tuple(v.shape)}, expected ()"
            eager.append(float(v))
        eager = np.asarray(eager)
        assert np.all(np.isfinite(eager)) and np.all(eager >= 0), f"{what}: values {eager} not finite and >= 0"
        if sched.constant:
            assert np.all(eager == 1.0), f"{what} declares constant = True but gives {eager}"
        if b.name == "jax":
            jitted = b.jit(lambda c, _s=s: _s(c, total))
            traced = np.asarray([float(jitted(b.asarray(np.asarray(c, np.int32)))) for c in counts])
            np.testing.assert_allclose(traced, eager, rtol=1e-12, atol=0, err_msg=f"{what}: under jit")
        values[b.name] = eager

        def loss_fn(p, g, _xp=b.xp):
            return _xp.sum(p["w"] * g)

        train = b.make_step(loss_fn, sgd, s, lr, "float64", total)
        batch = (b.asarray(grad, "float64"),)
        state, _ = _run_steps(train, train.init({"w": np.zeros(5)}), batch, total // 2)
        restored = train.from_arrays(train.to_arrays(state))
        a, _ = _run_steps(train, state, batch, total - total // 2)
        r, _ = _run_steps(train, restored, batch, total - total // 2)
        _same_arrays(train.to_arrays(r), train.to_arrays(a), f"{what}: a restored state continues differently")
        moved = train.params(a)["w"]
        np.testing.assert_allclose(moved, -lr * eager[:total].sum() * grad, rtol=1e-12, atol=1e-14,
                                   err_msg=f"{what}: the step does not use lr * schedule(count)")
    _agree(values, f"{name} values", 1e-12)


def _conv2d_reference(x: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """NHWC cross-correlation, stride 1, SAME zero padding, by explicit sums (float64)."""
    n, h, wd, cin = x.shape
    kh, kw, cin_g, cout = w.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((n, h, wd, cout))
    per_out = cout // groups
    for o in range(cout):
        g = o // per_out
        xs = xp[..., g * cin_g:(g + 1) * cin_g]
        for i in range(kh):
            for j in range(kw):
                out[..., o] += np.einsum("nhwc,c->nhw", xs[:, i:i + h, j:j + wd], w[i, j, :, o])
    return out


def check_backend(backend: Any, *, seed: int = 0) -> None:
    """Check a :class:`~kdistill.core.backend.Backend` (an instance, or a registered name)
    against numpy, in float64, on small inputs.

    Checked: array round trips keep values and dtypes; ``all_finite``; ``safe_arccos``
    values, and finite gradients at ``c = +-1``; ``safe_sqrt`` finite gradient at 0;
    ``psd_cholesky`` (factor of a PD matrix, jitter on a singular PSD one, ``ok``
    False on a negative-definite one); ``pivots_ok`` (rank-deficient pivots refused);
    ``lu_solve``, ``cho_solve`` and ``solve_triangular`` against ``numpy.linalg.solve``;
    ``conv2d`` (if implemented, also grouped) against explicit sums; ``normal``
    deterministic in its seed; ``value_and_grad`` of a quadratic against its closed-form
    gradient; ``jit``, ``checkpoint`` and ``map`` equal to the plain function
    (``compile``, tens of seconds on torch, is not run). Tolerances are multiples of
    float64 rounding times the problems' condition numbers (all below 1e3 here).

    Raises:
        AssertionError: naming the primitive and the backend.
    """
    if isinstance(backend, str):
        backend = get_registry().backend(backend)
    rng = np.random.default_rng(seed)
    for part in (_backend_arrays, _backend_guarded, _backend_linalg, _backend_conv, _backend_randomness,
                 _backend_autodiff, _backend_shards):
        part(backend, rng, _Close(backend))


def _backend_shards(b, rng, close) -> None:
    name, k = b.name, b.shards
    assert isinstance(k, int) and k >= 1, f"backend {name!r}: shards must be an int >= 1, got {k!r}"
    x = rng.standard_normal((2 * k, 3))
    np.testing.assert_array_equal(b.gather_rows(b.shard_rows(x, "float64")), x,
                                  err_msg=f"backend {name!r}: gather_rows(shard_rows(x)) != x")
    np.testing.assert_allclose(b.gather_rows(b.xp.sin(b.shard_rows(x, "float64"))), np.sin(x), rtol=1e-14,
                               err_msg=f"backend {name!r}: a row-wise function of shard_rows(x)")
    part = b.shard_rows(x, "float64")
    close(b.sum_shards(b.xp.sum(part, axis=0)), x.sum(axis=0), "sum_shards of per-shard sums", rtol=1e-12)


class _Close:
    """``close(got, want, what, rtol)``: a backend array equals a numpy one to ``rtol``
    (relative, and absolute ``rtol`` times the reference's scale), naming the backend."""

    def __init__(self, backend, tol: float = 1e-10):
        self.b, self.tol = backend, tol

    def __call__(self, got, want, what, rtol=None):
        rtol = self.tol if rtol is None else rtol
        np.testing.assert_allclose(self.b.to_numpy(got), want, rtol=rtol,
                                   atol=rtol * max(1.0, np.abs(want).max()),
                                   err_msg=f"backend {self.b.name!r}: {what}")


def _backend_arrays(b, rng, close) -> None:
    name = b.name
    x = rng.standard_normal((5, 3))
    for dtype in ("float32", "float64"):
        arr = b.asarray(x, dtype)
        assert b.dtype_name(arr) == dtype, f"backend {name!r}: asarray(..., {dtype!r}) gave {b.dtype_name(arr)}"
        assert b.to_numpy(arr).dtype == np.dtype(dtype), f"backend {name!r}: to_numpy changed the dtype"
        np.testing.assert_array_equal(b.to_numpy(arr), x.astype(dtype), err_msg=f"backend {name!r}: round trip")
    assert bool(b.all_finite(b.asarray(x, "float64"))), f"backend {name!r}: all_finite of finite values"
    assert not bool(b.all_finite(b.asarray(np.array([1.0, np.nan]), "float64"))), f"backend {name!r}: all_finite(NaN)"


def _backend_guarded(b, rng, close) -> None:
    name = b.name
    c = np.array([-1.0, -0.5, 0.0, 0.3, 1.0])
    close(b.safe_arccos(b.asarray(c, "float64")), np.arccos(c), "safe_arccos values")
    _, g = b.value_and_grad(lambda p: b.xp.sum(b.safe_arccos(p["c"])))({"c": b.asarray(c, "float64")})
    g = b.to_numpy(g["c"])
    assert np.all(np.isfinite(g)), f"backend {name!r}: safe_arccos gradient not finite at |c| = 1: {g}"
    np.testing.assert_allclose(g[1:4], -1 / np.sqrt(1 - c[1:4] ** 2), rtol=close.tol,
                               err_msg=f"backend {name!r}: safe_arccos gradient inside (-1, 1)")
    _, g = b.value_and_grad(lambda p: b.xp.sum(b.safe_sqrt(p["v"])))({"v": b.asarray(np.array([0.0, 4.0]), "float64")})
    g = b.to_numpy(g["v"])
    assert np.all(np.isfinite(g)), f"backend {name!r}: safe_sqrt gradient not finite at 0"
    np.testing.assert_allclose(g[1], 0.25, rtol=close.tol, err_msg=f"backend {name!r}: safe_sqrt gradient at 4")


def _backend_linalg(b, rng, close) -> None:
    name = b.name
    a = rng.standard_normal((6, 6))
    pd, rhs = a @ a.T + 6 * np.eye(6), rng.standard_normal((6, 2))
    want = np.linalg.solve(pd, rhs)
    chol, ok = b.psd_cholesky(b.asarray(pd, "float64"))
    assert bool(ok), f"backend {name!r}: psd_cholesky refused a PD matrix"
    close(chol, np.linalg.cholesky(pd), "psd_cholesky factor", rtol=1e-9)
    close(b.cho_solve(chol, b.asarray(rhs, "float64")), want, "cho_solve", rtol=1e-9)
    close(b.solve_triangular(chol, b.asarray(rhs, "float64"), lower=True),
          np.linalg.solve(np.linalg.cholesky(pd), rhs), "solve_triangular (lower)", rtol=1e-9)
    general = a + 6 * np.eye(6)  # not symmetric: a transposed solve would show
    sol, piv = b.lu_solve(b.asarray(general, "float64"), b.asarray(rhs, "float64"))
    close(sol, np.linalg.solve(general, rhs), "lu_solve", rtol=1e-9)
    assert bool(b.pivots_ok(piv)), f"backend {name!r}: pivots of a nonsingular matrix refused"
    v = rng.standard_normal((6, 2))
    singular = v @ v.T  # rank 2, PSD: needs the jitter
    chol, ok = b.psd_cholesky(b.asarray(singular, "float64"))
    assert bool(ok), f"backend {name!r}: psd_cholesky did not recover a singular PSD matrix with jitter"
    rebuilt = b.to_numpy(chol) @ b.to_numpy(chol).T
    assert np.abs(rebuilt - singular).max() <= 1e-5 * np.trace(singular), (
        f"backend {name!r}: jittered factor far from the matrix")
    _, ok = b.psd_cholesky(b.asarray(-pd, "float64"))
    assert not bool(ok), f"backend {name!r}: psd_cholesky accepted a negative-definite matrix"
    pivots = np.array([3.0, 2.0, 1e-17])
    assert not bool(b.pivots_ok(b.asarray(pivots, "float64"))), f"backend {name!r}: pivots_ok({pivots})"


def _backend_conv(b, rng, close) -> None:
    img, w = rng.standard_normal((2, 5, 4, 4)), rng.standard_normal((3, 3, 2, 6))
    try:
        out = b.conv2d(b.asarray(img, "float64"), b.asarray(w, "float64"), groups=2)
    except NotImplementedError:
        out = None
    if out is not None:
        close(out, _conv2d_reference(img, w, 2), "conv2d (2 groups)", rtol=1e-9)
        w1 = rng.standard_normal((3, 3, 4, 3))
        close(b.conv2d(b.asarray(img, "float64"), b.asarray(w1, "float64")), _conv2d_reference(img, w1, 1),
              "conv2d", rtol=1e-9)


def _backend_randomness(b, rng, close) -> None:
    name = b.name
    n1, n2 = b.to_numpy(b.normal(7, (4, 3), "float64")), b.to_numpy(b.normal(7, (4, 3), "float64"))
    np.testing.assert_array_equal(n1, n2, err_msg=f"backend {name!r}: normal() not deterministic in its seed")
    assert not np.array_equal(n1, b.to_numpy(b.normal(8, (4, 3), "float64"))), f"backend {name!r}: seeds 7, 8 equal"


def _backend_autodiff(b, rng, close) -> None:
    name = b.name
    q = rng.standard_normal((3, 3))
    q = q @ q.T + np.eye(3)
    qb, p0 = b.asarray(q, "float64"), rng.standard_normal(3)

    def quadratic(p, m):
        return 0.5 * b.xp.sum(p["z"] * (m @ p["z"]))

    value, grad = b.value_and_grad(quadratic)({"z": b.asarray(p0, "float64")}, qb)
    np.testing.assert_allclose(float(value), 0.5 * p0 @ q @ p0, rtol=close.tol, err_msg=f"backend {name!r}: value")
    close(grad["z"], q @ p0, "value_and_grad of a quadratic")

    def f(z):
        return b.xp.sin(z) * 2.0 + z**2

    z = b.asarray(rng.standard_normal(4), "float64")
    plain = b.to_numpy(f(z))
    for how in ("jit", "checkpoint"):
        close(getattr(b, how)(f)(z), plain, f"{how}(f) differs from f")
    (mapped,) = b.map(lambda t: (f(t[0]),), (b.asarray(np.stack([b.to_numpy(z)] * 3), "float64"),))
    close(mapped, np.stack([plain] * 3), "map(f) differs from f row by row")
