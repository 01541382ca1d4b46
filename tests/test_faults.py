"""Injected faults end in the documented behaviour, with nothing lost beyond the last
checkpoint: NaN/Inf in a gradient, a kernel that is not positive definite, a singular
system, a full disk (a real size-limited tmpfs, and a simulated ENOSPC/EIO)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import warnings

import attrs
import numpy as np
import pytest

import kdistill
from kdistill.io.artifact import DistilledSet
from kdistill.io.checkpoint import Checkpoint, checkpoint_path, load_checkpoint
from kdistill.runtime.components import Components, prepare_data
from kdistill.core.config import DistillConfig
from kdistill.core.contracts import Kernel
from kdistill.errors import (
    ArtifactError, CheckpointError, NonFiniteLossError, NotPositiveDefiniteError, NumericalError,
)
from kdistill.plugins.methods.kip import run_kip
from kdistill.core.registry import get_registry
from kdistill.datasets import Dataset, load_digits
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.losses.mse import MSELoss
from kdistill.plugins.solvers.cholesky import CholeskySolver

FAST = dict(ipc=2, target_batch=200, eval_every=0, seed=3)
ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


def assert_same_result(got, want):
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.history["loss"] == want.history["loss"]


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted 12-step JAX run with the FAST settings."""
    return kdistill.distill(steps=12, **FAST)


# ------------------------------------------------------------------ NaN / Inf


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
def test_step_refuses_inf_gradient_with_finite_loss(backend_name):
    """d/dw sqrt(w) is infinite at w = 0 while the loss is finite: the step reports it and
    never mutates its input state (parameters and optimizer), which the caller keeps."""
    b = get_registry().backend(backend_name)
    train = b.make_step(lambda p: b.xp.sum(b.xp.sqrt(p["w"])))
    good, _ = train(train.init({"w": np.array([1.0, 4.0], np.float32)}))
    bad = train.from_arrays({**train.to_arrays(good), "params/w": np.array([0.0, 4.0], np.float32)})
    snapshot = train.to_arrays(bad)
    _, metrics = train(bad)
    assert not bool(metrics["finite"]) and float(metrics["loss"]) == 2.0
    for k, v in snapshot.items():
        np.testing.assert_array_equal(train.to_arrays(bad)[k], v)


class PoisonedStep:
    """Wraps a real step function; the step calls listed in ``plan["poison"]`` get a NaN
    target batch, so the real loss and gradients are NaN and the real guard must catch them."""

    def __init__(self, inner, plan):
        self._inner, self._plan = inner, plan

    def __call__(self, state, x_t, y_t):
        self._plan["calls"] += 1
        if self._plan["calls"] in self._plan["poison"]:
            y_t = y_t * float("nan")
        return self._inner(state, x_t, y_t)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def poison(monkeypatch):
    def install(backend_name, calls):
        b = get_registry().backend(backend_name)
        plan = {"calls": 0, "poison": set(calls)}
        real = b.make_step
        monkeypatch.setattr(b, "make_step", lambda *a, **k: PoisonedStep(real(*a, **k), plan))
        return plan

    return install


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
def test_nan_gradient_is_retried_with_the_documented_remedy(backend_name, poison):
    clean = kdistill.distill(steps=8, backend=backend_name, **FAST)
    poison(backend_name, calls={5})
    with pytest.warns(RuntimeWarning, match=r"step 5: NonFiniteLossError; retrying the step with "
                                            r"ridge=1e-05 and lr=0\.005 \(recovery 1 of 2\)"):
        res = kdistill.distill(steps=8, backend=backend_name, **FAST)
    assert res.metrics["recoveries"] == [
        {"step": 5, "error": "NonFiniteLossError", "ridge": pytest.approx(1e-5, rel=1e-12), "lr": 0.005}
    ]
    assert res.history["step"] == list(range(1, 9))
    # steps before the fault are untouched; the retried step starts from the last good state
    assert res.history["loss"][:4] == clean.history["loss"][:4]
    assert np.isfinite(res.history["loss"]).all() and np.isfinite(res.images).all()
    assert res.history["loss"][4] == pytest.approx(clean.history["loss"][4], rel=0.05)  # ridge 1e-5 vs 1e-6


def test_nan_without_retries_stops_and_resume_loses_nothing_beyond_the_checkpoint(poison, tmp_path, reference):
    poison("jax", calls={8})
    with pytest.raises(NonFiniteLossError) as info:
        kdistill.distill(steps=12, checkpoint_every=3, nonfinite_retries=0, run_dir=tmp_path, **FAST)
    msg = str(info.value)
    assert msg.startswith("step 8: non-finite loss or gradient (loss=nan); parameters were not updated.")
    assert "raise the relative ridge (now 1e-06; try ridge=0.0001)" in msg
    assert "lower the learning rate (now 0.01)" in msg and "nonfinite_retries, now 0" in msg
    assert f"the last checkpoint (step 6) in {tmp_path} is intact" in msg
    assert load_checkpoint(checkpoint_path(tmp_path)).step == 6
    resumed = kdistill.distill(run_dir=tmp_path, resume=True)  # the fault is gone (call 8 passed)
    assert_same_result(resumed, reference)


def test_persistent_nan_exhausts_the_recoveries(poison):
    poison("torch", calls=range(3, 100))
    with pytest.warns(RuntimeWarning):
        with pytest.raises(NonFiniteLossError) as info:
            kdistill.distill(steps=6, backend="torch", **FAST)
    msg = str(info.value)
    assert msg.startswith("step 3: ") and "after 2 automatic recoveries" in msg
    assert "now 0.0001; try ridge=0.01" in msg and "lower the learning rate (now 0.0025)" in msg
    assert "no checkpoint (pass a run directory" in msg


# ------------------------------------------------------------------ not positive definite


@attrs.define(kw_only=True)
class NegatedKernel(Kernel):
    """Minus the FC NTK: negative definite, so no bounded jitter or ridge can help."""

    def __call__(self, x1, x2):
        return -FCKernel().bind(self.b)(x1, x2)


@pytest.mark.parametrize("backend_name, error", [("jax", NonFiniteLossError), ("torch", NotPositiveDefiniteError)])
def test_non_pd_kernel_escalates_then_names_the_ridge(backend_name, error, tmp_path):
    """JAX (jit) sees the failed Cholesky as NaN, torch (eager) as NotPositiveDefiniteError;
    both get the bounded jitter, two recoveries, then an error naming the ridge."""
    b = get_registry().backend(backend_name)
    cfg = DistillConfig(backend=backend_name, steps=3, **FAST)
    comps = Components(backend=b, kernel=NegatedKernel().bind(b), solver=CholeskySolver().bind(b),
                       loss=MSELoss().bind(b), eval_kernel=FCKernel().bind(b))
    with pytest.warns(RuntimeWarning, match=f"step 1: {error.__name__}; retrying"):
        with pytest.raises(error) as info:
            run_kip(cfg, comps, prepare_data(cfg), run_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith("step 1: ") and "after 2 automatic recoveries" in msg
    assert "raise the relative ridge (now 0.0001; try ridge=0.01)" in msg
    assert f"no checkpoint was written to {tmp_path} yet" in msg
    if error is NotPositiveDefiniteError:
        assert "not positive definite even with jitter up to 1e-06 * mean(diag)" in msg


def duplicated_digits() -> Dataset:
    """Digits with each class reduced to one image, twice: ipc=2 support sets are singular."""
    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.y_train == c)[:1] for c in range(10)])
    return Dataset("dups", np.repeat(d.x_train[idx], 2, axis=0), np.repeat(d.y_train[idx], 2),
                   d.x_test, d.y_test, 10, d.class_names)


def test_singular_support_jitter_rescues_cholesky():
    """Duplicate support points, ridge 0, float64: the bounded Cholesky jitter makes the
    exactly singular K_ss solvable (torch: no recovery needed at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = kdistill.distill(data=duplicated_digits(), backend="torch", ridge=0.0, dtype="float64",
                               steps=3, ipc=2, target_batch=20, eval_every=0)
    assert res.metrics["recoveries"] == []
    assert np.isfinite(res.images).all() and res.metrics["distilled_acc"] > 0.3


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
def test_singular_support_exact_solver_recovers_in_training_and_evaluation_is_clear(backend_name):
    """The exact solver has no jitter: training recovers with a raised ridge, and the final
    evaluation at the configured ridge 0 stops with a clear error instead of a NaN accuracy."""
    with pytest.warns(RuntimeWarning, match="step 1: .*retrying the step with ridge=1e-06"):
        with pytest.raises(NumericalError) as info:
            kdistill.distill(data=duplicated_digits(), backend=backend_name, solver="exact", ridge=0.0,
                             dtype="float64", steps=2, ipc=2, target_batch=20, eval_every=0)
    assert "singular" in str(info.value) and "raise the relative ridge (now 0)" in str(info.value)


# ------------------------------------------------------------------ full disk


def fill(directory, leave: int = 0) -> None:
    """Fill the filesystem of ``directory`` until ``leave`` bytes are free."""
    st = os.statvfs(directory)
    with open(directory / "filler", "ab") as fh:
        fh.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs (needs root); skipped where it cannot be mounted, the simulated
    ENOSPC tests below cover the same paths."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def checkpoint(step: int, n: int = 25_000) -> Checkpoint:
    """A synthetic ~100 kB checkpoint (content depends on the step)."""
    rng = np.random.default_rng(step)
    return Checkpoint(
        step=step, config=DistillConfig().to_dict(), labels=np.zeros((2, 10), np.float32),
        trainer_state={"params/x_s": rng.standard_normal((2, n // 2)).astype(np.float32), "opt/0000": np.int32(step)},
        class_ids=np.zeros(2, np.int64), rng_state=np.random.default_rng(step).bit_generator.state,
        history={"step": list(range(1, step + 1)), "loss": [1.0] * step, "eval_step": [], "eval_acc": [],
                 "eval_seconds": []},
        guard={"ridge": 1e-6, "lr": 0.01, "retries": 2, "events": []}, data_fingerprint="f",
    )


def test_full_disk_never_leaves_a_half_written_checkpoint(small_fs):
    """On a real full filesystem, the write fails at many different byte offsets; every
    time the previous checkpoint stays byte-identical and no temp file is left."""
    path = small_fs / "checkpoint.npz"
    checkpoint(1).save(path)
    good = path.read_bytes()
    size = len(good)
    for leave in (0, 4096, 8192, 16384, 32768, 49152, 65536, size - size % 4096 - 4096):
        fill(small_fs, leave)
        with pytest.raises(CheckpointError) as info:
            checkpoint(2).save(path)
        assert ENOSPC in str(info.value) and "at step 2" in str(info.value)
        assert path.read_bytes() == good
        assert load_checkpoint(path).step == 1
        assert sorted(p.name for p in small_fs.iterdir()) == ["checkpoint.npz", "filler"]
        (small_fs / "filler").unlink()
    checkpoint(2).save(path)  # with space again, the new checkpoint replaces the old
    assert load_checkpoint(path).step == 2


def test_full_disk_mid_run_stops_and_resume_is_exact(small_fs, reference):
    run_dir = small_fs / "run"

    def fill_after_step_3(info):
        if info["step"] == 3:
            fill(small_fs)

    with pytest.raises(CheckpointError) as info:
        kdistill.distill(steps=12, checkpoint_every=2, run_dir=run_dir, callback=fill_after_step_3, **FAST)
    msg = str(info.value)
    assert ENOSPC in msg and "at step 4" in msg
    assert f"the last checkpoint (step 2) in {run_dir} is intact" in msg
    assert f"kdistill distill --resume {run_dir}" in msg
    assert load_checkpoint(checkpoint_path(run_dir)).step == 2
    assert [p.name for p in run_dir.iterdir()] == ["checkpoint.npz"]
    (small_fs / "filler").unlink()
    assert_same_result(kdistill.distill(run_dir=run_dir, resume=True), reference)


def test_full_disk_artifact_save(small_fs, reference):
    path = small_fs / "distilled.npz"
    reference.save(path)
    good = path.read_bytes()
    fill(small_fs)
    with pytest.raises(ArtifactError, match=f"could not write artifact .*{ENOSPC}.*the file was not changed"):
        reference.save(path)
    assert path.read_bytes() == good and not (small_fs / "distilled.npz.tmp").exists()


def half_then_fail(monkeypatch, on_call: int, exc: BaseException):
    """Make the ``on_call``-th ``np.savez`` write half of its bytes, then raise ``exc``."""
    real, calls = np.savez, {"n": 0}

    def savez(fh, **entries):
        calls["n"] += 1
        if calls["n"] != on_call:
            return real(fh, **entries)
        buf = io.BytesIO()
        real(buf, **entries)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc

    monkeypatch.setattr(np, "savez", savez)


def test_simulated_enospc_mid_run(monkeypatch, tmp_path, reference):
    """Without a real small filesystem: the third checkpoint write dies half-way."""
    half_then_fail(monkeypatch, 3, OSError(errno.ENOSPC, ENOSPC))
    with pytest.raises(CheckpointError) as info:
        kdistill.distill(steps=12, checkpoint_every=2, run_dir=tmp_path, **FAST)
    assert ENOSPC in str(info.value) and "the last checkpoint (step 4)" in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]
    monkeypatch.undo()
    assert load_checkpoint(checkpoint_path(tmp_path)).step == 4
    assert_same_result(kdistill.distill(run_dir=tmp_path, resume=True), reference)


@pytest.mark.parametrize("fault", ["fsync", "interrupt"])
def test_failed_fsync_or_interrupt_during_write_keeps_the_old_checkpoint(fault, monkeypatch, tmp_path):
    path = tmp_path / "checkpoint.npz"
    checkpoint(1, n=100).save(path)
    good = path.read_bytes()
    if fault == "fsync":
        def bad_fsync(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", bad_fsync)
        with pytest.raises(CheckpointError, match="Input/output error"):
            checkpoint(2, n=100).save(path)
    else:
        half_then_fail(monkeypatch, 1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            checkpoint(2, n=100).save(path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_cli_full_disk_at_the_final_write_keeps_the_checkpoint(monkeypatch, tmp_path):
    """The artifact cannot be written after the last step: exit 2 naming the intact final
    checkpoint; `--resume` then only re-evaluates and writes the same results."""
    from click.testing import CliRunner

    from kdistill.cli import main

    run = tmp_path / "run"
    args = ["distill", "--steps", "4", "--ipc", "2", "--target-batch", "200", "--eval-every", "0",
            "--seed", "3", "--no-progress", "--no-grid"]
    real_save = DistilledSet.save

    def full_disk(self, path):
        raise ArtifactError(f"could not write artifact {str(path)!r}: {ENOSPC} (errno 28); the file was not changed")

    monkeypatch.setattr(DistilledSet, "save", full_disk)
    res = CliRunner().invoke(main, [*args, "--checkpoint-every", "2", "--out", str(run)])
    assert res.exit_code == 2, res.output
    assert ENOSPC in res.stderr and f"the final checkpoint in {run} is intact" in res.stderr
    assert f"kdistill distill --resume {run}" in res.stderr
    assert load_checkpoint(checkpoint_path(run)).step == 4
    monkeypatch.setattr(DistilledSet, "save", real_save)
    res = CliRunner().invoke(main, ["distill", "--resume", str(run), "--no-progress", "--no-grid"])
    assert res.exit_code == 0, res.output
    uninterrupted = kdistill.distill(steps=4, **FAST)
    assert_same_result(kdistill.load(run / "distilled.npz"), uninterrupted)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "config.toml", "distilled.npz", "metrics.json"]
