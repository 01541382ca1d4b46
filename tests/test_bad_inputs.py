"""Every kind of bad input we know of, the error each gets, and docs/bad_inputs.md.

``CASES`` is the single source: each case is one parametrized test (error type, a key
fragment, and the exact message), and docs/bad_inputs.md lists every case with the
message it actually gets (paths under the test's temporary directory read ``<tmp>``).
After changing a case or a message, regenerate the table::

    python tests/test_bad_inputs.py --write
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("KDISTILL_DISABLE_PLUGINS", "1")  # also when run as a script

import kdistill  # noqa: E402
from kdistill.cli import main as cli_main  # noqa: E402
from kdistill.io.artifact import DistilledSet  # noqa: E402
from kdistill.io.checkpoint import HISTORY_KEYS, Checkpoint, checkpoint_path, load_checkpoint  # noqa: E402
from kdistill.core.config import DistillConfig  # noqa: E402
from kdistill.runtime.evaluate import evaluate_artifact  # noqa: E402
from kdistill.errors import (  # noqa: E402
    ArtifactError, CheckpointError, ConfigError, DataError, DataFileError, IncompatibleComponentsError,
    UnknownComponentError,
)
from kdistill.core.krr import krr_predict  # noqa: E402
from kdistill.plugins.methods.label_solve import label_solve  # noqa: E402
from kdistill.datasets.preprocess import Identity  # noqa: E402
from kdistill.core.registry import get_registry  # noqa: E402
from kdistill.datasets import Dataset  # noqa: E402
from kdistill.datasets.mnist import IDX_FILES  # noqa: E402
from kdistill.plugins.kernels.rbf import RBFKernel  # noqa: E402
from kdistill.plugins.solvers.cholesky import CholeskySolver  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
START, END = "<!-- cases:start -->", "<!-- cases:end -->"
MAX_MESSAGE = 240  # longer messages are shown cut, with an ellipsis


@attrs.frozen
class Case:
    """One bad input.

    Attributes:
        id: stable name (test id and table key). via: the entry point it goes through.
        input: what is wrong, for the table. error: the exception type (``None`` for CLI
            cases, which must exit with status 2 and ``error: <message>`` on stderr).
        fragment: a part of the message that must be there.
        run: ``run(tmp)`` feeds the input (raises, or returns a click Result for CLI).
        after: optional ``after(tmp)`` check once the error was raised (e.g. a
            malicious payload did not run).
    """

    id: str
    via: str
    input: str
    error: type[BaseException] | None
    fragment: str
    run: Callable[[Path], Any]
    after: Callable[[Path], None] | None = None


# ------------------------------------------------------------------ inputs

RNG = np.random.default_rng(0)
X_TRAIN = RNG.uniform(0, 255, (18, 4, 4, 1)).astype(np.float32)  # 3 classes x 6 images
Y_TRAIN = np.repeat(np.arange(3), 6)
X_TEST = RNG.uniform(0, 255, (6, 4, 4, 1)).astype(np.float32)
Y_TEST = np.arange(6) % 3
NAMES = ("a", "b", "c")
RUN = dict(steps=1, ipc=1, target_batch=6, eval_every=0, backend="torch")


def dataset(**changes) -> Dataset:
    fields = dict(name="toy", x_train=X_TRAIN, y_train=Y_TRAIN, x_test=X_TEST, y_test=Y_TEST,
                  num_classes=3, class_names=NAMES)
    return Dataset(**{**fields, **changes})


def with_nan(x: np.ndarray, value=np.nan) -> np.ndarray:
    x = x.copy()
    x.flat[5] = value
    return x


def distill(**kw):
    return kdistill.distill(**{**RUN, **kw})


def bound(backend="torch"):
    b = get_registry().backend(backend)
    return RBFKernel().bind(b), CholeskySolver().bind(b)


def predict(x_s=None, y_s=None, x_t=None, ridge=1e-6, kernel_backend="torch", **kw):
    kernel, solver = bound()
    if kernel_backend != "torch":
        kernel = RBFKernel().bind(get_registry().backend(kernel_backend))
    x_s = X_TRAIN[:6] if x_s is None else x_s
    y_s = np.eye(3)[Y_TRAIN[:6]] if y_s is None else y_s
    x_t = X_TEST if x_t is None else x_t
    return krr_predict(kernel, solver, x_s, y_s, x_t, ridge, **kw)


def solve_labels(x_t=X_TEST, y_t=np.eye(3)[Y_TEST], **kw):
    kernel, solver = bound()
    return label_solve(kernel, solver, X_TRAIN[:6], x_t, y_t, 1e-6, **kw)


class Payload:
    """Unpickling it runs ``touch <marker>`` through os.system (a real exploit)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_did_not_run(tmp: Path) -> None:
    assert not (tmp / "pwned").exists(), "the pickle payload was executed"


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def idx_bytes(a: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()


def mnist_dir(tmp: Path, broken: str | None = None, content: bytes = b"") -> Path:
    """A valid 4-image MNIST directory, with ``broken`` replaced by ``content``."""
    arrays = {IDX_FILES[0]: np.zeros((4, 28, 28), np.uint8), IDX_FILES[1]: np.arange(4, dtype=np.uint8),
              IDX_FILES[2]: np.zeros((4, 28, 28), np.uint8), IDX_FILES[3]: np.arange(4, dtype=np.uint8)}
    for name, a in arrays.items():
        write(tmp / "mnist", name, content if name == broken else gzip.compress(idx_bytes(a)))
    return tmp / "mnist"


def cifar_dir(tmp: Path, first_batch: bytes) -> Path:
    root = tmp / "cifar"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write(root, name, first_batch if name == "data_batch_1" else b"")
    return root


def artifact(tmp: Path) -> Path:
    ds = DistilledSet(images=np.zeros((3, 4, 4, 1), np.float32), labels=np.eye(3, dtype=np.float32),
                      class_ids=np.arange(3), transform=Identity(), config=DistillConfig().to_dict())
    return ds.save(tmp / "distilled.npz")


def digits_artifact(tmp: Path, classes: int = 10, nan: bool = False) -> DistilledSet:
    """A saved-and-loaded artifact on digits' image shape (8x8x1), possibly broken."""
    images = np.zeros((classes, 8, 8, 1), np.float32)
    images.flat[3] = np.nan if nan else 0.0
    ds = DistilledSet(images=images, labels=np.eye(classes, dtype=np.float32), class_ids=np.arange(classes),
                      transform=Identity(), config=DistillConfig(preprocess="none").to_dict())
    return kdistill.load(ds.save(tmp / "digits.npz"))


def npz_entries(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path: Path, entries: dict[str, Any]) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **entries)  # object arrays are pickled by np.savez
    return path


def hostile(tmp: Path) -> np.ndarray:
    a = np.empty(1, dtype=object)
    a[0] = Payload(tmp / "pwned")
    return a


def checkpoint_dir(tmp: Path, **config) -> Path:
    """A run directory with a (synthetic) checkpoint of the given config."""
    run = tmp / "run"
    Checkpoint(step=1, config=DistillConfig(**config).to_dict(), trainer_state={"params/x_s": np.zeros((1, 3))},
               labels=np.zeros((1, 3), np.float32), class_ids=np.zeros(1, np.int64),
               rng_state=np.random.default_rng(0).bit_generator.state,
               history={k: [] for k in HISTORY_KEYS}, guard={"ridge": 1e-6, "lr": 0.01, "retries": 2, "events": []},
               data_fingerprint="f").save(checkpoint_path(run))
    return run


def cli(*args: str):
    def run(tmp: Path):
        return CliRunner().invoke(cli_main, [a.replace("<tmp>", str(tmp)) for a in args])

    return run


def cli_with_checkpoint(*args: str):
    def run(tmp: Path):
        checkpoint_dir(tmp, steps=3)
        return cli(*args)(tmp)

    return run


# ------------------------------------------------------------------ the cases

API = "Python API"
CASES = [
    # -- in-memory data (Dataset / kdistill.distill(data=...)) --------------------
    Case("data-images-list", API, "`Dataset` images given as a Python list", DataError,
         "expected a numpy array, got list", lambda t: dataset(x_train=X_TRAIN.tolist())),
    Case("data-images-3d", API, "images without a channel axis `[N, H, W]`", DataError,
         "expected 4-D images [N, H, W, C]", lambda t: dataset(x_train=X_TRAIN[..., 0])),
    Case("data-images-float64", API, "float64 images", DataError,
         "expected images of dtype uint8 or float32, got float64",
         lambda t: dataset(x_train=X_TRAIN.astype(np.float64), x_test=X_TEST.astype(np.float64))),
    Case("data-images-empty-dims", API, "images with a zero-size dimension `[N, 0, 4, 1]`", DataError,
         "images need H, W, C >= 1", lambda t: dataset(x_train=np.zeros((18, 0, 4, 1), np.float32))),
    Case("data-nan-train", API, "a NaN pixel in the training images", DataError,
         "x_train: images contain NaN or infinite values", lambda t: dataset(x_train=with_nan(X_TRAIN))),
    Case("data-inf-test", API, "an Inf pixel in the test images", DataError,
         "x_test: images contain NaN or infinite values", lambda t: dataset(x_test=with_nan(X_TEST, np.inf))),
    Case("data-labels-float", API, "float labels", DataError, "expected integer labels, got dtype float64",
         lambda t: dataset(y_train=Y_TRAIN.astype(np.float64))),
    Case("data-labels-out-of-range", API, "a label equal to `num_classes`", DataError,
         "labels must lie in 0..2, found values in 0..3",
         lambda t: dataset(y_train=np.where(Y_TRAIN == 2, 3, Y_TRAIN))),
    Case("data-labels-negative", API, "a negative label", DataError, "labels must lie in 0..2",
         lambda t: dataset(y_test=Y_TEST - 1)),
    Case("data-labels-2d", API, "one-hot labels `[N, C]` instead of class ids", DataError,
         "expected 1-D labels [N]", lambda t: dataset(y_train=np.eye(3, dtype=np.int64)[Y_TRAIN])),
    Case("data-label-count", API, "fewer labels than images", DataError, "17 labels for 18 images",
         lambda t: dataset(y_train=Y_TRAIN[:-1])),
    Case("data-shape-mismatch", API, "test images of another size than training images", DataError,
         "differ in [H, W, C]", lambda t: dataset(x_test=np.zeros((6, 5, 5, 1), np.float32))),
    Case("data-class-names", API, "2 class names for 3 classes", DataError, "2 class names for 3 classes",
         lambda t: dataset(class_names=("a", "b"))),
    Case("data-num-classes", API, "`num_classes=0`", DataError, "num_classes must be a positive int",
         lambda t: dataset(num_classes=0, class_names=())),
    Case("data-not-a-dataset", API, "`distill(data=...)` given a dict of arrays", DataError,
         "data must be a kdistill.datasets.Dataset", lambda t: distill(data={"x_train": X_TRAIN})),
    Case("data-too-few-per-class", API, "`ipc` larger than the smallest class", DataError,
         "ipc=7 but class 0 of toy has only 6 training examples", lambda t: distill(data=dataset(), ipc=7)),
    Case("data-empty-test", API, "an empty test split", DataError, "empty test split",
         lambda t: distill(data=dataset(x_test=X_TEST[:0], y_test=Y_TEST[:0]))),
    # -- configuration ----------------------------------------------------------
    Case("cfg-negative-ridge", API, "`ridge=-1e-3`", ConfigError, "ridge must be a finite number >= 0",
         lambda t: distill(ridge=-1e-3)),
    Case("cfg-nan-ridge", API, "`ridge=nan`", ConfigError, "ridge must be a finite number >= 0",
         lambda t: distill(ridge=float("nan"))),
    Case("cfg-zero-lr", API, "`lr=0`", ConfigError, "lr must be a finite number > 0, got 0", lambda t: distill(lr=0)),
    Case("cfg-negative-lr", API, "`lr=-0.1`", ConfigError, "lr must be a finite number > 0",
         lambda t: distill(lr=-0.1)),
    Case("cfg-zero-ipc", API, "`ipc=0`", ConfigError, "ipc must be an integer >= 1, got 0", lambda t: distill(ipc=0)),
    Case("cfg-steps-string", API, "`steps=\"ten\"`", ConfigError, "steps must be an integer >= 0, got 'ten'",
         lambda t: distill(steps="ten")),
    Case("cfg-dtype", API, "`dtype=\"float16\"`", ConfigError, "dtype must be one of float32, float64",
         lambda t: distill(dtype="float16")),
    Case("cfg-checkpoint-every", API, "`checkpoint_every=-5`", ConfigError,
         "checkpoint_every must be an integer >= 0, got -5", lambda t: distill(checkpoint_every=-5)),
    Case("cfg-nonfinite-retries", API, "`nonfinite_retries=1.5`", ConfigError,
         "nonfinite_retries must be an integer >= 0", lambda t: distill(nonfinite_retries=1.5)),
    Case("cfg-unknown-key", API, "a misspelled field `ipcs=2`", ConfigError, "unknown config key(s) ipcs; valid keys:",
         lambda t: distill(ipcs=2)),
    Case("cfg-unknown-solver", API, "`solver=\"qr\"`", UnknownComponentError,
         "unknown solver 'qr'; available solvers: cholesky, exact, feature, low-rank", lambda t: distill(solver="qr")),
    Case("cfg-unknown-loss", API, "`loss=\"hinge\"`", UnknownComponentError, "unknown loss 'hinge'",
         lambda t: distill(loss="hinge")),
    Case("cfg-unknown-backend", API, "`backend=\"numpy\"`", UnknownComponentError,
         "unknown backend 'numpy'; available backends: jax, torch", lambda t: distill(backend="numpy")),
    Case("cfg-unknown-dataset", API, "`dataset=\"imagenet\"`", UnknownComponentError, "unknown dataset 'imagenet'",
         lambda t: distill(dataset="imagenet")),
    Case("cfg-unknown-kernel-param", API, "`kernel={\"name\": \"rbf\", \"depth\": 2}`", ConfigError,
         "kernel 'rbf' has no parameter(s) depth; accepted: gamma",
         lambda t: distill(kernel={"name": "rbf", "depth": 2})),
    Case("cfg-bad-kernel-param", API, "`kernel.gamma=-1`", ConfigError, "RBFKernel.gamma must be a finite number > 0",
         lambda t: distill(kernel={"name": "rbf", "gamma": -1})),
    Case("cfg-platt-nan", API, "`loss={\"name\": \"platt\", \"init_log_tau\": nan}`", ConfigError,
         "PlattLoss.init_log_tau must be a finite number, got nan",
         lambda t: distill(loss={"name": "platt", "init_log_tau": float("nan")})),
    Case("cfg-label-solve-loss", API, "Label Solve with `loss=\"platt\"`", IncompatibleComponentsError,
         "method='label-solve' cannot be combined with loss='platt'",
         lambda t: distill(method="label-solve", loss="platt")),
    Case("cfg-label-solve-learn-labels", API, "Label Solve with `learn_labels=True`", IncompatibleComponentsError,
         "learn_labels=true (Label Solve computes the labels",
         lambda t: distill(method="label-solve", learn_labels=True)),
    Case("cfg-label-solve-checkpoint", API, "Label Solve with `checkpoint_every=10`", IncompatibleComponentsError,
         "checkpoint_every > 0 (Label Solve is a single solve",
         lambda t: distill(method="label-solve", checkpoint_every=10)),
    Case("cfg-label-solve-valid", API, "Label Solve with `valid_size=100`", IncompatibleComponentsError,
         "valid_size/patience > 0 (Label Solve has no steps to validate",
         lambda t: distill(method="label-solve", valid_size=100)),
    Case("cfg-valid-size-below-classes", API, "`valid_size=5` with 10 classes", DataError,
         "valid_size=5 is smaller than the number of classes (10)", lambda t: distill(valid_size=5)),
    Case("cfg-negative-time-limit", API, "`time_limit=-1`", ConfigError,
         "time_limit must be a finite number >= 0", lambda t: distill(time_limit=-1)),
    Case("cfg-rf-width-zero", API, "`kernel={\"name\": \"rf-convnet\", \"width\": 0}`", ConfigError,
         "width", lambda t: distill(kernel={"name": "rf-convnet", "width": 0})),
    Case("cfg-low-rank-zero-ridge", API, "`solver=\"low-rank\"` with `ridge=0`", ConfigError,
         "needs a relative ridge > 0", lambda t: distill(solver="low-rank", ridge=0.0, steps=1)),
    Case("cfg-config-type", API, "`distill(config=42)`", ConfigError,
         "config must be a DistillConfig, a dict, a TOML file path or None, got int", lambda t: kdistill.distill(42)),
    Case("cfg-callback", API, "`distill(callback=\"print\")`", ConfigError, "callback must be callable, got str",
         lambda t: distill(callback="print")),
    # -- config files -------------------------------------------------------------
    Case("file-config-missing", "config file", "`--config` path that does not exist", ConfigError,
         "does not exist", lambda t: kdistill.distill(t / "nope.toml")),
    Case("file-config-malformed", "config file", "TOML syntax error (`ipc = [`)", ConfigError,
         "malformed TOML config", lambda t: kdistill.distill(write(t, "bad.toml", "ipc = [\n"))),
    Case("file-config-bad-value", "config file", "`ridge = -1.0` in a TOML file", ConfigError,
         "ridge must be a finite number >= 0, got -1.0",
         lambda t: kdistill.distill(write(t, "r.toml", "ridge = -1.0\n"))),
    # -- dataset files --------------------------------------------------------------
    Case("file-mnist-no-dir", "data file", "MNIST without `data_dir`", DataFileError, "--data-dir is required",
         lambda t: distill(dataset="mnist")),
    Case("file-mnist-missing", "data file", "MNIST directory without the label files", DataFileError,
         "expected files not found", lambda t: distill(dataset="mnist", data_dir=str(
             [(write(t / "m", n, b"x")) for n in IDX_FILES[::2]][0].parent))),
    Case("file-mnist-garbage", "data file", "an MNIST file holding text instead of IDX data", DataFileError,
         "bad IDX magic number",
         lambda t: distill(dataset="mnist", data_dir=str(mnist_dir(t, IDX_FILES[0], b"not gzip")))),
    Case("file-mnist-bad-gzip", "data file", "an MNIST `.gz` file with a corrupt gzip stream", DataFileError,
         "cannot read/decompress IDX file", lambda t: distill(dataset="mnist", data_dir=str(mnist_dir(
             t, IDX_FILES[1], gzip.compress(idx_bytes(np.arange(4, dtype=np.uint8)))[:-6])))),
    Case("file-mnist-truncated", "data file", "a truncated MNIST image file", DataFileError, "truncated",
         lambda t: distill(dataset="mnist", data_dir=str(mnist_dir(
             t, IDX_FILES[0], gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-9]))))),
    Case("file-cifar-garbage", "data file", "a CIFAR batch that is not a pickle", DataFileError,
         "not a valid CIFAR pickle", lambda t: distill(dataset="cifar10", data_dir=str(cifar_dir(t, b"garbage")))),
    Case("file-cifar-malicious", "data file", "a CIFAR batch pickle whose payload runs `os.system`", DataFileError,
         "forbidden global posix.system in pickle",
         lambda t: distill(dataset="cifar10", data_dir=str(cifar_dir(t, pickle.dumps(Payload(t / "pwned"), 2)))),
         after=payload_did_not_run),
    # -- KRR functions ----------------------------------------------------------------
    Case("krr-label-rows", API, "`krr_predict` with 5 label rows for 6 support images", DataError,
         "y_s has shape (5, 3) but x_s has 6 rows", lambda t: predict(y_s=np.eye(3)[Y_TRAIN[:5]])),
    Case("krr-labels-1d", API, "`krr_predict` with class ids instead of `[n_s, C]` labels", DataError,
         "expected an array with 2 dimensions, got shape (6,)", lambda t: predict(y_s=Y_TRAIN[:6])),
    Case("krr-target-shape", API, "`krr_predict` targets of another image size", DataError,
         "x_t examples have shape (5, 5, 1) but support examples (4, 4, 1)",
         lambda t: predict(x_t=np.zeros((2, 5, 5, 1), np.float32))),
    Case("krr-nan-support", API, "`krr_predict` on a NaN support set", DataError,
         "x_s (support inputs [n_s, ...]): contains NaN or infinite values",
         lambda t: predict(x_s=with_nan(X_TRAIN[:6]))),
    Case("krr-complex", API, "`krr_predict` on complex inputs", DataError, "expected real numbers (integer or float)",
         lambda t: predict(x_t=X_TEST.astype(np.complex64))),
    Case("krr-empty-support", API, "`krr_predict` with an empty support set", DataError, "the support set is empty",
         lambda t: predict(x_s=X_TRAIN[:0], y_s=np.zeros((0, 3)))),
    Case("krr-negative-ridge", API, "`krr_predict(..., ridge=-1)`", ConfigError, "ridge must be a finite number >= 0",
         lambda t: predict(ridge=-1.0)),
    Case("krr-two-backends", API, "`krr_predict` with a JAX kernel and a torch solver", IncompatibleComponentsError,
         "kernel is bound to 'jax' but solver to 'torch'", lambda t: predict(kernel_backend="jax")),
    Case("krr-unbound", API, "`krr_predict` with a kernel never bound to a backend", ConfigError,
         "RBFKernel is not bound to a backend",
         lambda t: krr_predict(RBFKernel(), bound()[1], X_TRAIN, np.eye(3)[Y_TRAIN], X_TEST, 1e-6)),
    Case("ls-target-rows", API, "`label_solve` with 5 target labels for 6 targets", DataError,
         "x_t has 6 rows but y_t has 5", lambda t: solve_labels(y_t=np.eye(3)[Y_TEST[:5]])),
    Case("ls-label-ridge", API, "`label_solve(..., label_ridge=0)`", ConfigError,
         "label_ridge must be a finite number > 0",
         lambda t: solve_labels(label_ridge=0.0)),
    # -- artifacts --------------------------------------------------------------------
    Case("art-missing", "artifact file", "`kdistill.load` of a missing file", ArtifactError, "does not exist",
         lambda t: kdistill.load(t / "none.npz")),
    Case("art-truncated", "artifact file", "an artifact cut in half", ArtifactError, "truncated or corrupt",
         lambda t: kdistill.load(write(t, "cut.npz", artifact(t).read_bytes()[:400]))),
    Case("art-tampered", "artifact file", "an artifact whose images were edited after saving", ArtifactError,
         "failed its checksum for entries images", lambda t: kdistill.load(rewrite(artifact(t), {
             **npz_entries(artifact(t)), "images": np.ones((3, 4, 4, 1), np.float32)}))),
    Case("art-pickle-file", "artifact file", "a plain pickle (with an `os.system` payload) named `.npz`", ArtifactError,
         "it is a Python pickle, which kdistill never loads",
         lambda t: kdistill.load(write(t, "evil.npz", pickle.dumps(Payload(t / "pwned")))),
         after=payload_did_not_run),
    Case("art-object-array", "artifact file", "an artifact whose `images` is a pickled object array", ArtifactError,
         "Object arrays cannot be loaded when allow_pickle=False", lambda t: kdistill.load(rewrite(artifact(t), {
             **npz_entries(artifact(t)), "images": hostile(t)})), after=payload_did_not_run),
    Case("art-future-version", "artifact file", "an artifact of a newer format version", ArtifactError,
         "upgrade kdistill", lambda t: kdistill.load(rewrite(artifact(t), {**npz_entries(artifact(t)), "meta": np.array(
             json.dumps({**json.loads(str(npz_entries(artifact(t))["meta"])), "format_version": 99}))}))),
    Case("art-wrong-classes", "artifact file", "`evaluate_artifact` of a 3-class artifact on 10-class digits",
         DataError, "digits' has 10 classes but the artifact's labels have 3 columns",
         lambda t: evaluate_artifact(digits_artifact(t, classes=3))),
    Case("art-nan-support", "artifact file", "`evaluate_artifact` of an artifact with a NaN support image",
         DataError, "x_s (support inputs [n_s, ...]): contains NaN or infinite values",
         lambda t: evaluate_artifact(digits_artifact(t, nan=True))),
    # -- checkpoints and resume -------------------------------------------------------
    Case("ckpt-truncated", "checkpoint file", "a checkpoint cut short", CheckpointError, "truncated or corrupt",
         lambda t: load_checkpoint(write(t, "c.npz", checkpoint_path(checkpoint_dir(t)).read_bytes()[:300]))),
    Case("ckpt-object-array", "checkpoint file", "a checkpoint holding a pickled object array", CheckpointError,
         "Object arrays cannot be loaded when allow_pickle=False", lambda t: load_checkpoint(rewrite(
             checkpoint_path(checkpoint_dir(t)), {**npz_entries(checkpoint_path(checkpoint_dir(t))),
                                                  "labels": hostile(t)})), after=payload_did_not_run),
    Case("ckpt-no-checkpoint", API, "`distill(run_dir=..., resume=True)` where no checkpoint exists",
         CheckpointError, "cannot resume: no checkpoint", lambda t: kdistill.distill(run_dir=t, resume=True)),
    Case("ckpt-config-differs", API, "resume with `lr=0.5` and `seed=1` unlike the checkpoint", CheckpointError,
         "differs from the checkpoint's in 2 field(s): lr: checkpoint has 0.01, requested 0.5; seed: checkpoint has 0",
         lambda t: kdistill.distill(run_dir=checkpoint_dir(t), resume=True, lr=0.5, seed=1)),
    Case("ckpt-overwrite", API, "a fresh run into a directory holding a checkpoint", CheckpointError,
         "already holds a checkpoint", lambda t: distill(run_dir=checkpoint_dir(t), data=dataset())),
    Case("ckpt-resume-label-solve", API, "resume a run as Label Solve", ConfigError, "resume applies to KIP runs only",
         lambda t: kdistill.distill(run_dir=checkpoint_dir(t), resume=True, method="label-solve")),
    # -- command line -----------------------------------------------------------------
    Case("cli-ipc", "CLI", "`kdistill distill --ipc 0`", None, "ipc must be an integer >= 1, got 0",
         cli("distill", "--ipc", "0", "--no-progress", "--out", "<tmp>/run")),
    Case("cli-checkpoint-every", "CLI", "`--checkpoint-every -1`", None, "checkpoint_every must be an integer >= 0",
         cli("distill", "--checkpoint-every", "-1", "--no-progress", "--out", "<tmp>/run")),
    Case("cli-resume-missing", "CLI", "`--resume` of a directory without a checkpoint", None,
         "cannot resume: no checkpoint", cli("distill", "--resume", "<tmp>/nothing", "--no-progress")),
    Case("cli-resume-flag-differs", "CLI", "`--resume RUN --lr 0.5` where the run used lr 0.01", None,
         "lr: checkpoint has 0.01, requested 0.5",
         cli_with_checkpoint("distill", "--resume", "<tmp>/run", "--lr", "0.5", "--no-progress")),
    Case("cli-resume-other-out", "CLI", "`--resume RUN --out OTHER`", None, "differs from --resume",
         cli_with_checkpoint("distill", "--resume", "<tmp>/run", "--out", "<tmp>/other", "--no-progress")),
    Case("cli-evaluate-garbage", "CLI", "`kdistill evaluate` of a file that is not an artifact", None,
         "not a readable kdistill artifact", lambda t: CliRunner().invoke(
             cli_main, ["evaluate", str(write(t, "distilled.npz", "garbage"))])),
]


# ------------------------------------------------------------------ running and rendering


def outcome(case: Case, tmp: Path) -> tuple[str, str]:
    """Run ``case``; returns (error name, message with ``tmp`` shown as ``<tmp>``)."""
    if case.error is None:
        result = case.run(tmp)
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert result.stderr.startswith("error: "), result.stderr
        name, message = "exit 2", result.stderr[len("error: "):].strip()
    else:
        with pytest.raises(case.error) as info:
            case.run(tmp)
        assert type(info.value).__module__.startswith("kdistill"), type(info.value)
        name, message = type(info.value).__name__, str(info.value)
    if case.after is not None:
        case.after(tmp)
    message = " ".join(message.replace(str(tmp), "<tmp>").split())
    return name, message


def row(number: int, case: Case, name: str, message: str) -> str:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE].rstrip() + " …"
    cells = [str(number), f"`{case.id}`", case.via, case.input, f"`{name}`", message.replace("|", "\\|")]
    return "| " + " | ".join(cells) + " |"


def render_table(outcomes: list[tuple[str, str]]) -> str:
    lines = ["| # | case | entry point | bad input | error | message |", "|---|---|---|---|---|---|"]
    lines += [row(i, c, *o) for i, (c, o) in enumerate(zip(CASES, outcomes), 1)]
    return "\n".join(lines)


def write_doc() -> None:
    outcomes = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(outcome(case, Path(tmp)))
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{render_table(outcomes)}\n{END}{tail}")


# ------------------------------------------------------------------ tests


def test_cases_are_many_and_distinct():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    """The input fails with the documented error type and message (as in docs/bad_inputs.md)."""
    name, message = outcome(case, tmp_path)
    assert case.fragment in message, message
    number = CASES.index(case) + 1
    assert row(number, case, name, message) in DOC.read_text(), (
        f"docs/bad_inputs.md is out of date for {case.id!r} (now: {name}: {message}); "
        "regenerate it with: python tests/test_bad_inputs.py --write"
    )


def test_doc_lists_exactly_the_cases():
    text = DOC.read_text()
    assert START in text and END in text
    table = text.split(START, 1)[1].split(END, 1)[0]
    ids = re.findall(r"^\| \d+ \| `([^`]+)` \|", table, flags=re.M)
    assert ids == [c.id for c in CASES], "regenerate with: python tests/test_bad_inputs.py --write"


def test_the_payload_is_real(tmp_path):
    """Control: an ordinary unpickler does run the payload the cases above refuse."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "pwned")))
    assert (tmp_path / "pwned").exists()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_bad_inputs.py --write")
    write_doc()
    print(f"wrote {DOC} ({len(CASES)} cases)")
