"""Property-based tests: random shapes, dtypes and values fed to the public API end in
success (with checked results) or in a KdistillError subclass, never in any other
exception; damaged artifact/checkpoint bytes are refused or load unchanged."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kdistill
from kdistill.io.artifact import DistilledSet
from kdistill.io.checkpoint import Checkpoint, load_checkpoint
from kdistill.core.config import DistillConfig
from kdistill.errors import KdistillError
from kdistill.core.krr import krr_predict
from kdistill.plugins.methods.label_solve import label_solve
from kdistill.datasets.preprocess import ChannelStandardizer
from kdistill.core.registry import get_registry
from kdistill.datasets import Dataset
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rbf import RBFKernel
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.exact import ExactSolver

# random data may trip the numerical guard: its recovery warnings are expected here
pytestmark = pytest.mark.filterwarnings("ignore:step .*retrying the step:RuntimeWarning")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = ["uint8", "float32", "float64", "float16", "int64", "int32", "bool", "complex64"]


def any_array(dtype: str, shape):
    """Arrays with every value a dtype allows (NaN, Inf, extremes for floats)."""
    return hnp.arrays(np.dtype(dtype), shape)


DATA_FAULTS = ["x_dtype", "x_shape", "x_nan", "x_inf", "x_huge", "x_constant", "y_dtype", "y_range", "y_length",
               "y_2d", "num_classes", "class_names", "empty_test", "empty_train", "zero_dim", "test_shape"]


@st.composite
def dataset_args(draw):
    """A valid dataset (random sizes, values, dtype uint8/float32) with at most one fault."""
    num_classes, per_class = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w, c = draw(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2)))
    n_test = draw(st.integers(1, 4))
    y_train = np.asarray(draw(st.permutations(np.repeat(np.arange(num_classes), per_class).tolist())), np.int64)
    if draw(st.booleans()):
        floats = st.floats(-300, 300, width=32)
        x_train = draw(hnp.arrays(np.float32, (len(y_train), h, w, c), elements=floats))
        x_test = draw(hnp.arrays(np.float32, (n_test, h, w, c), elements=floats))
    else:
        x_train = draw(hnp.arrays(np.uint8, (len(y_train), h, w, c)))
        x_test = draw(hnp.arrays(np.uint8, (n_test, h, w, c)))
    args = dict(name="fuzz", x_train=x_train, y_train=y_train, x_test=x_test,
                y_test=draw(hnp.arrays(np.int64, n_test, elements=st.integers(0, num_classes - 1))),
                num_classes=num_classes, class_names=tuple(str(i) for i in range(num_classes)))
    fault = draw(st.sampled_from([None] * len(DATA_FAULTS) + DATA_FAULTS))
    any_shape = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
    x = args["x_train"]
    if fault == "x_dtype":
        args["x_train"] = draw(any_array(draw(st.sampled_from(DTYPES)), x.shape))
    elif fault == "x_shape":
        args["x_train"] = draw(any_array(x.dtype.name, any_shape))
    elif fault in ("x_nan", "x_inf", "x_huge", "x_constant") and x.dtype == np.float32:
        value = {"x_nan": np.nan, "x_inf": -np.inf, "x_huge": 3e38, "x_constant": 7.0}[fault]
        x = x.copy()
        if fault == "x_constant":
            x[:] = value
        else:
            x.flat[draw(st.integers(0, x.size - 1))] = value
        args["x_train"] = x
    elif fault == "y_dtype":
        args["y_train"] = y_train.astype(draw(st.sampled_from(["float64", "bool", "uint8", "int8", "complex64"])))
    elif fault == "y_range":
        args["y_train"] = np.where(y_train == 0, draw(st.sampled_from([-1, num_classes, 2**40])), y_train)
    elif fault == "y_length":
        args["y_train"] = y_train[: draw(st.integers(0, len(y_train) - 1))]
    elif fault == "y_2d":
        args["y_train"] = np.eye(num_classes, dtype=np.int64)[y_train]
    elif fault == "num_classes":
        args["num_classes"] = draw(st.sampled_from([0, -1, num_classes + 1]))
    elif fault == "class_names":
        args["class_names"] = tuple(str(i) for i in range(num_classes + 1))
    elif fault == "empty_test":
        args["x_test"], args["y_test"] = x_test[:0], args["y_test"][:0]
    elif fault == "empty_train":
        args["x_train"], args["y_train"] = x[:0], y_train[:0]
    elif fault == "zero_dim":
        args["x_train"], args["x_test"] = x[:, :0], x_test[:, :0]
    elif fault == "test_shape":
        args["x_test"] = draw(any_array(x.dtype.name, any_shape))
    return args


@settings(FUZZ, max_examples=80)
@given(args=dataset_args(), ipc=st.sampled_from([1, 1, 1, 2, 2, 3, 0, -1]),
       target_batch=st.sampled_from([1, 2, 3, 5, 8, 100, 0]),
       learn_labels=st.booleans(), loss=st.sampled_from(["mse", "platt"]))
def test_distill_on_random_data(args, ipc, target_batch, learn_labels, loss):
    try:
        ds = Dataset(**args)
        res = kdistill.distill(data=ds, backend="torch", steps=2, ipc=ipc, target_batch=target_batch,
                               eval_every=0, learn_labels=learn_labels, loss=loss)
    except KdistillError:
        return
    n_s = ipc * ds.num_classes
    assert res.images.shape == (n_s, *ds.x_train.shape[1:]) and res.images.dtype == np.float32
    assert res.labels.shape == (n_s, ds.num_classes)
    assert np.isfinite(res.images).all() and np.isfinite(res.labels).all()
    np.testing.assert_array_equal(res.class_ids, np.repeat(np.arange(ds.num_classes), ipc))
    assert 0.0 <= res.metrics["distilled_acc"] <= 1.0 and 0.0 <= res.metrics["random_acc"] <= 1.0
    assert len(res.history["loss"]) == 2 and np.isfinite(res.history["loss"]).all()


def _krr_arrays():
    shape = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
    return st.sampled_from(DTYPES).flatmap(lambda d: any_array(d, shape))


@st.composite
def krr_args(draw):
    """Fitting support/target arrays (same example shape, C columns) with at most one
    of them replaced by a random array, a NaN, or a bad ridge."""
    n_s, n_t, c = draw(st.integers(1, 5)), draw(st.integers(0, 5)), draw(st.integers(1, 3))
    ex = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    vals = st.floats(-5, 5, width=32)
    args = {
        "x_s": draw(hnp.arrays(np.float32, (n_s, *ex), elements=vals)),
        "y_s": draw(hnp.arrays(np.float64, (n_s, c), elements=st.floats(-2, 2))),
        "x_t": draw(hnp.arrays(np.float64, (n_t, *ex), elements=vals)),
        "y_t": draw(hnp.arrays(np.float64, (n_t, c), elements=st.floats(-2, 2))),
        "ridge": draw(st.sampled_from([1e-6, 1e-3, 1e-1])),
    }
    fault = draw(st.sampled_from([None] * 6 + ["x_s", "y_s", "x_t", "y_t", "nan", "ridge"]))
    if fault in ("x_s", "y_s", "x_t", "y_t"):
        args[fault] = draw(_krr_arrays())
    elif fault == "nan":
        key = draw(st.sampled_from(["x_s", "y_s", "x_t", "y_t"]))
        if args[key].size:
            args[key] = args[key].copy()
            args[key].flat[0] = np.nan
    elif fault == "ridge":
        args["ridge"] = draw(st.one_of(st.floats(), st.integers(-2, 2), st.just(True), st.text(max_size=2)))
    return args["x_s"], args["y_s"], args["x_t"], args["y_t"], args["ridge"]


def _bound(backend: str, kernel: str, solver: str):
    b = get_registry().backend(backend)
    k = {"rbf": RBFKernel(), "fc": FCKernel(depth=2)}[kernel].bind(b)
    return k, {"cholesky": CholeskySolver(), "exact": ExactSolver()}[solver].bind(b)


def _check_krr(backend, kernel, solver, args):
    x_s, y_s, x_t, y_t, ridge = args
    k, s = _bound(backend, kernel, solver)
    try:
        pred = krr_predict(k, s, x_s, y_s, x_t, ridge)
    except KdistillError:
        pass
    else:
        assert pred.shape == (len(x_t), np.shape(y_s)[1]) and pred.dtype == np.float64
        assert np.isfinite(pred).all()
    try:
        labels = label_solve(k, s, x_s, x_t, y_t, ridge)
    except KdistillError:
        pass
    else:
        assert labels.shape == (len(x_s), np.shape(y_t)[1]) and np.isfinite(labels).all()


@settings(FUZZ, max_examples=70)
@given(args=krr_args(), kernel=st.sampled_from(["rbf", "fc"]), solver=st.sampled_from(["cholesky", "exact"]))
def test_krr_on_random_arrays_torch(args, kernel, solver):
    _check_krr("torch", kernel, solver, args)


@settings(FUZZ, max_examples=8)  # JAX compiles every new shape: few examples, torch covers the bulk
@given(args=krr_args(), kernel=st.sampled_from(["rbf", "fc"]), solver=st.sampled_from(["cholesky", "exact"]))
def test_krr_on_random_arrays_jax(args, kernel, solver):
    _check_krr("jax", kernel, solver, args)


_any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["name", "depth", "gamma", "x"]),
                    st.one_of(st.integers(-2, 3), st.text(max_size=4)), max_size=3),
)
_FIELDS = [f for f in DistillConfig().to_dict()] + ["data_dir", "eval_kernel", "eval_test_size", "bogus"]


@settings(FUZZ, max_examples=150)
@given(st.dictionaries(st.sampled_from(_FIELDS), _any_value, max_size=4))
def test_config_from_random_dicts(fields):
    try:
        cfg = DistillConfig.from_dict(fields)
    except KdistillError:
        return
    assert DistillConfig.from_toml(cfg.to_toml()) == cfg
    try:  # components are validated when built
        from kdistill.runtime.components import build_components

        build_components(cfg)
    except KdistillError:
        pass


@settings(FUZZ, max_examples=100)
@given(st.text(max_size=60))
def test_config_from_random_toml(text):
    try:
        DistillConfig.from_toml(text)
    except KdistillError:
        pass


def _artifact_bytes() -> bytes:
    rng = np.random.default_rng(0)
    ds = DistilledSet(images=rng.standard_normal((4, 3, 3, 1)).astype(np.float32), labels=np.eye(4, dtype=np.float32),
                      class_ids=np.arange(4), config=DistillConfig().to_dict(), metrics={"a": 1.0},
                      transform=ChannelStandardizer(mean=np.zeros(1), std=np.ones(1)))
    with tempfile.TemporaryDirectory() as tmp:
        return ds.save(Path(tmp) / "a.npz").read_bytes()


def _checkpoint_bytes() -> bytes:
    ck = Checkpoint(step=3, config=DistillConfig().to_dict(), trainer_state={"params/x_s": np.arange(12.0).reshape(2, 6)},
                    labels=np.zeros((2, 2), np.float32), class_ids=np.zeros(2, np.int64),
                    rng_state=np.random.default_rng(1).bit_generator.state,
                    history={"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "eval_step": [], "eval_acc": [],
                             "eval_seconds": []},
                    guard={"ridge": 1e-6, "lr": 0.01, "retries": 2, "events": []}, data_fingerprint="f")
    with tempfile.TemporaryDirectory() as tmp:
        return ck.save(Path(tmp) / "c.npz").read_bytes()


ARTIFACT, CHECKPOINT = _artifact_bytes(), _checkpoint_bytes()


def damaged(original: bytes):
    """Random bytes, or the original truncated and/or with a few bytes overwritten."""
    edits = st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=4)
    mutated = st.tuples(st.integers(0, len(original)), edits).map(
        lambda a: bytes(_apply(bytearray(original), a[1]))[: a[0]]
    )
    return st.one_of(st.binary(max_size=300), mutated)


def _apply(buf: bytearray, edits) -> bytearray:
    for pos, value in edits:
        buf[pos] = value
    return buf


@settings(FUZZ, max_examples=150)
@given(data=damaged(ARTIFACT))
def test_damaged_artifacts_are_refused_or_intact(data):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            art = kdistill.load(_write(tmp, data))
        except KdistillError:
            return
        good = kdistill.load(_write(tmp, ARTIFACT, "good.npz"))
    # a damaged file that still loads (e.g. only zip timestamps hit) has unaltered arrays
    np.testing.assert_array_equal(art.images, good.images)
    np.testing.assert_array_equal(art.labels, good.labels)
    np.testing.assert_array_equal(art.class_ids, good.class_ids)


@settings(FUZZ, max_examples=150)
@given(data=damaged(CHECKPOINT))
def test_damaged_checkpoints_are_refused_or_intact(data):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ck = load_checkpoint(_write(tmp, data))
        except KdistillError:
            return
        good = load_checkpoint(_write(tmp, CHECKPOINT, "good.npz"))
    assert ck.step == good.step
    for k, v in good.trainer_state.items():
        np.testing.assert_array_equal(ck.trainer_state[k], v)


def _write(tmp, data: bytes, name: str = "x.npz") -> Path:
    path = Path(tmp) / name
    path.write_bytes(data)
    return path
