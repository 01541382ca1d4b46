"""Checkpoints and resume: the step state contract (to_arrays/from_arrays), the checkpoint file, bit-for-bit
resume after a crash, SIGINT/SIGTERM/SIGKILL (real subprocesses), and refusals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import kdistill
from kdistill.io.checkpoint import (
    FORMAT_VERSION, checkpoint_path, decode_rng_state, encode_rng_state, load_checkpoint,
)
from kdistill.errors import CheckpointError, RunInterrupted
from kdistill.datasets import load_digits

FAST = dict(ipc=2, target_batch=200, eval_every=0, seed=7)
RICH = dict(FAST, learn_labels=True, loss="platt")  # trains x_s, y_s and loss/log_tau


class Crash(Exception):
    """Stands in for a crash in the middle of a run."""


def crash_at(step: int):
    def callback(info):
        if info["step"] == step:
            raise Crash(step)

    return callback


def assert_same_result(got, want):
    """Bit-for-bit: support set, labels, loss parameters and the per-step losses."""
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    assert got.loss_params.keys() == want.loss_params.keys()
    for k in want.loss_params:
        np.testing.assert_array_equal(got.loss_params[k], want.loss_params[k])
    assert got.history["step"] == want.history["step"]
    assert got.history["loss"] == want.history["loss"]
    assert got.metrics["distilled_acc"] == want.metrics["distilled_acc"]


# ------------------------------------------------------------------ step state contract


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_step_state_round_trip_continues_identically(backend, optimizer, rng):
    """to_arrays() is numpy-only; the state restored from it takes the same next steps."""
    def loss_fn(params, x):
        xp = backend.xp
        return xp.sum((params["w"] * x - 1.0) ** 2) + xp.sum(params["loss/t"] ** 2)

    init = {"w": rng.standard_normal((3, 2)).astype(np.float32), "loss/t": np.asarray(0.5)}
    x = backend.asarray(rng.standard_normal((3, 2)).astype(np.float32))
    train = backend.make_step(loss_fn, optimizer, lr=0.05)
    a = train.init(init)
    for _ in range(3):
        a, _ = train(a, x)
    state = train.to_arrays(a)
    assert all(type(v) is np.ndarray and v.dtype != object for v in state.values())
    assert {k for k in state if k.startswith("params/")} == {"params/w", "params/loss/t"}
    assert any(k.startswith("opt/") for k in state)  # the optimizer state is included
    assert not np.array_equal(train.to_arrays(train.init(init))["params/w"], state["params/w"])
    b = backend.make_step(loss_fn, optimizer, lr=0.05).from_arrays(state)
    for k, v in train.to_arrays(b).items():
        np.testing.assert_array_equal(v, state[k])
    losses = {}
    for name, s in (("a", a), ("b", b)):
        losses[name] = []
        for _ in range(4):
            s, m = train(s, x)
            losses[name].append(float(m["loss"]))
        losses[name + "_state"] = train.to_arrays(s)
    assert losses["a"] == losses["b"]
    for k, v in losses["a_state"].items():
        np.testing.assert_array_equal(losses["b_state"][k], v)


def test_step_from_arrays_rejects_foreign_state(backend):
    def loss_fn(params):
        return backend.xp.sum(params["w"] ** 2)

    train = backend.make_step(loss_fn)
    like = train.init({"w": np.ones((2, 2), np.float32)})
    good = train.to_arrays(train(like)[0])
    with pytest.raises(CheckpointError, match="missing params/w"):
        train.from_arrays({k: v for k, v in good.items() if k != "params/w"}, like=like)
    with pytest.raises(CheckpointError, match=r"params/w is float32\[3\], expected float32\[2, 2\]"):
        train.from_arrays({**good, "params/w": np.ones(3, np.float32)}, like=like)
    with pytest.raises(CheckpointError, match="params/w is float64"):
        train.from_arrays({**good, "params/w": np.ones((2, 2))})
    with pytest.raises(CheckpointError, match="unexpected"):
        train.from_arrays({**good, "opt/bogus/field": np.ones(1, np.float32)})


# ------------------------------------------------------------------ the file


def test_rng_state_survives_json():
    rng = np.random.default_rng(123)
    rng.standard_normal(7)
    state = rng.bit_generator.state
    assert state["state"]["state"] > 2**64  # PCG64's 128-bit integers: not JSON-exact
    encoded = json.loads(json.dumps(encode_rng_state(state)))
    assert isinstance(encoded["state"]["state"], str)
    restored = np.random.default_rng()
    restored.bit_generator.state = decode_rng_state(encoded)
    np.testing.assert_array_equal(restored.standard_normal(5), rng.standard_normal(5))


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """A JAX run with checkpoint_every=3 that crashes at step 8 (last checkpoint: step 6)."""
    run_dir = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(Crash):
        kdistill.distill(steps=12, checkpoint_every=3, run_dir=run_dir, callback=crash_at(8), **RICH)
    return run_dir


def test_checkpoint_file_contents(crashed_run):
    path = checkpoint_path(crashed_run)
    with np.load(path, allow_pickle=False) as npz:  # no pickle needed
        names = set(npz.files)
        meta = json.loads(str(npz["meta"]))
    assert {"labels", "class_ids", "meta", "trainer/params/x_s", "trainer/params/y_s",
            "trainer/params/loss/log_tau"} <= names
    assert any(n.startswith("trainer/opt/") for n in names)
    assert meta["format"] == "kdistill-checkpoint" and meta["format_version"] == FORMAT_VERSION
    assert meta["step"] == 6 and meta["history"]["step"] == [1, 2, 3, 4, 5, 6]
    assert meta["config"]["checkpoint_every"] == 3 and meta["config"]["seed"] == 7
    assert meta["rng_state"]["bit_generator"] == "PCG64"
    assert set(meta["integrity"]["arrays"]) == names - {"meta"}
    assert set(meta["integrity"]["fields"]) == set(meta) - {"integrity"}
    assert meta["guard"] == {"ridge": 1e-6, "lr": 0.01, "retries": 2, "events": []}
    ck = load_checkpoint(path)
    assert ck.step == 6 and ck.params()["x_s"].shape == (20, 8, 8, 1)
    np.testing.assert_array_equal(ck.class_ids, np.repeat(np.arange(10), 2))
    assert not list(crashed_run.glob("*.tmp"))


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
def test_crash_then_resume_is_bit_identical(backend_name, tmp_path):
    """Crash at step 8 of 12 (checkpoints every 3): resume from step 6 and finish exactly
    as the uninterrupted run does, on either backend."""
    kw = dict(RICH, steps=12, backend=backend_name)
    reference = kdistill.distill(**kw)
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        kdistill.distill(checkpoint_every=3, run_dir=run_dir, callback=crash_at(8), **kw)
    assert load_checkpoint(checkpoint_path(run_dir)).step == 6
    resumed_steps = []
    resumed = kdistill.distill(run_dir=run_dir, resume=True, callback=lambda i: resumed_steps.append(i["step"]))
    assert resumed_steps == list(range(7, 13))  # only the lost steps were redone
    assert_same_result(resumed, reference)
    assert resumed.config == dict(reference.config, checkpoint_every=3)
    # the final checkpoint (after step 12) is complete: resuming it re-runs only the evaluation
    assert load_checkpoint(checkpoint_path(run_dir)).step == 12
    again = kdistill.distill(run_dir=run_dir, resume=True, callback=lambda i: pytest.fail("no steps left"))
    assert_same_result(again, reference)


def test_resume_with_sgd_and_evaluations(tmp_path):
    """SGD momentum state and intermediate evaluations survive a resume (torch: eager, fast)."""
    kw = dict(FAST, steps=10, optimizer="sgd", lr=0.05, eval_every=4, eval_test_size=50, backend="torch")
    reference = kdistill.distill(**kw)
    with pytest.raises(Crash):
        kdistill.distill(checkpoint_every=5, run_dir=tmp_path, callback=crash_at(7), **kw)
    resumed = kdistill.distill(run_dir=tmp_path, resume=True, checkpoint_every=2)  # may change
    assert_same_result(resumed, reference)
    assert resumed.history["eval_step"] == reference.history["eval_step"] == [0, 4, 8, 10]
    assert resumed.history["eval_acc"] == reference.history["eval_acc"]
    assert resumed.metrics["init_acc"] == reference.metrics["init_acc"]


# ------------------------------------------------------------------ refusals


def test_resume_refuses_a_different_config(crashed_run):
    with pytest.raises(CheckpointError) as info:
        kdistill.distill(run_dir=crashed_run, resume=True, lr=0.02, seed=8)
    msg = str(info.value)
    assert "refusing to resume" in msg and "2 field(s)" in msg
    assert "lr: checkpoint has 0.01, requested 0.02" in msg
    assert "seed: checkpoint has 7, requested 8" in msg
    with pytest.raises(CheckpointError, match="backend: checkpoint has 'jax', requested 'torch'"):
        kdistill.distill(run_dir=crashed_run, resume=True, backend="torch")


def test_resume_refuses_different_data(crashed_run):
    d = load_digits()
    x = d.x_train.copy()
    x[0, 0, 0, 0] += 1.0  # one pixel
    other = kdistill.datasets.Dataset("digits", x, d.y_train, d.x_test, d.y_test, 10, d.class_names)
    with pytest.raises(CheckpointError, match="the training data differs"):
        kdistill.distill(run_dir=crashed_run, resume=True, data=other)


def test_fresh_run_refuses_to_overwrite_a_checkpoint(crashed_run):
    before = checkpoint_path(crashed_run).read_bytes()
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        kdistill.distill(steps=12, checkpoint_every=3, run_dir=crashed_run, **RICH)
    assert checkpoint_path(crashed_run).read_bytes() == before


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        kdistill.distill(run_dir=tmp_path, resume=True)


def test_damaged_checkpoints_are_refused(crashed_run, tmp_path):
    data = checkpoint_path(crashed_run).read_bytes()
    bad = tmp_path / "checkpoint.npz"
    for cut in (len(data) // 2, len(data) - 7, 20):
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(bad)
    with np.load(checkpoint_path(crashed_run), allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["trainer/params/x_s"] = entries["trainer/params/x_s"] + 1e-3  # tampered, meta unchanged
    with open(bad, "wb") as fh:
        np.savez(fh, **entries)
    with pytest.raises(CheckpointError, match="failed its checksum for entries trainer/params/x_s"):
        load_checkpoint(bad)
    meta = json.loads(str(entries["meta"]))
    meta["format_version"] = FORMAT_VERSION + 1
    entries["meta"] = np.array(json.dumps(meta))
    with open(bad, "wb") as fh:
        np.savez(fh, **entries)
    with pytest.raises(CheckpointError, match="newer than this kdistill reads"):
        load_checkpoint(bad)


# ------------------------------------------------------------------ signals


def test_sigint_finishes_the_step_checkpoints_and_resumes(tmp_path):
    kw = dict(RICH, steps=10, backend="torch")  # the JAX path is covered by the SIGTERM/SIGKILL tests
    reference = kdistill.distill(**kw)
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(info):
        if info["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted) as info:  # checkpoint_every=0: only the signal writes one
        kdistill.distill(run_dir=tmp_path, callback=interrupt, **kw)
    assert info.value.step == 5 and info.value.signum == signal.SIGINT
    assert "interrupted by SIGINT after step 5 of 10" in str(info.value)
    assert f"kdistill distill --resume {tmp_path}" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert load_checkpoint(info.value.checkpoint).step == 5
    assert_same_result(kdistill.distill(run_dir=tmp_path, resume=True), reference)


def test_second_sigint_stops_at_once(tmp_path):
    def interrupt_twice(info):
        if info["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        kdistill.distill(steps=5, run_dir=tmp_path, callback=interrupt_twice, **FAST)
    assert not checkpoint_path(tmp_path).exists()


def test_without_run_dir_signals_are_not_intercepted():
    def interrupt(info):
        if info["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    # a shell starting us in the background sets SIGINT to "ignore": use Python's default
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            kdistill.distill(steps=5, callback=interrupt, **FAST)
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------ real processes

STEPS = 100
CLI_ARGS = ["distill", "--steps", str(STEPS), "--ipc", "2", "--target-batch", "200", "--eval-every", "0",
            "--seed", "7", "--learn-labels", "--no-progress", "--no-grid"]


def cli(*args):
    return [sys.executable, "-m", "kdistill.cli", *args]


@pytest.fixture(scope="module")
def uninterrupted():
    """The same run as CLI_ARGS, uninterrupted, through the Python API."""
    return kdistill.distill(steps=STEPS, ipc=2, target_batch=200, eval_every=0, seed=7, learn_labels=True)


def start_and_wait(run_dir, min_step: int, rnd: random.Random):
    """Start the CLI run and return it once its checkpoint has reached ``min_step``.

    Every poll reads the checkpoint while the run keeps replacing it: each read must
    succeed (atomic writes) or the test fails.
    """
    proc = subprocess.Popen(cli(*CLI_ARGS, "--checkpoint-every", "3", "--out", str(run_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path, deadline = checkpoint_path(run_dir), time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"run ended before step {min_step}: {proc.communicate()}"
        if path.exists() and load_checkpoint(path).step >= min_step:
            time.sleep(rnd.uniform(0, 0.05))  # land anywhere in the following steps
            return proc
        time.sleep(0.005)
    proc.kill()
    pytest.fail("timed out waiting for the run's checkpoint")


def resume_cli(run_dir):
    res = subprocess.run(cli("distill", "--resume", str(run_dir), "--no-progress", "--no-grid"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run_dir} after step" in res.stdout
    return kdistill.load(run_dir / "distilled.npz")


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, uninterrupted):
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    run_dir = tmp_path / "run"
    proc = start_and_wait(run_dir, rnd.randrange(3, 60), rnd)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_after = load_checkpoint(checkpoint_path(run_dir)).step
    assert 3 <= killed_after < STEPS, f"seed {seed}"
    assert not (run_dir / "distilled.npz").exists()
    resumed = resume_cli(run_dir)
    assert_same_result(resumed, uninterrupted)
    assert not list(run_dir.glob("*.tmp"))


def test_sigterm_checkpoints_the_current_step_and_exits_143(tmp_path, uninterrupted):
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    run_dir = tmp_path / "run"
    proc = start_and_wait(run_dir, rnd.randrange(3, 60), rnd)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    ck = load_checkpoint(checkpoint_path(run_dir))
    assert f"interrupted by SIGTERM after step {ck.step} of {STEPS}" in err, f"seed {seed}: {err}"
    assert f"kdistill distill --resume {run_dir}" in err
    assert ck.history["step"] == list(range(1, ck.step + 1))
    assert_same_result(resume_cli(run_dir), uninterrupted)
