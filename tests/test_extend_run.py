"""Extending a finished run: ``kdistill distill --resume DIR --steps N`` (Python:
``distill(run_dir=DIR, resume=True, steps=N)``) continues from the checkpoint to N steps
and equals an uninterrupted N-step run bit for bit; everything but a growing ``steps``
is still checked."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.errors import CheckpointError

# 5 steps is not a multiple of eval_every: the short run evaluates after step 5, the long one does not
TINY = dict(ipc=2, target_batch=100, eval_every=2, test_size=60, seed=4, learn_labels=True, checkpoint_every=2)


def same(a, b):
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    timeless = lambda h: {k: v for k, v in h.items() if k != "eval_seconds"}  # noqa: E731 (wall-clock)
    assert timeless(a.history) == timeless(b.history)
    assert a.metrics["distilled_acc"] == b.metrics["distilled_acc"]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_extended_run_equals_an_uninterrupted_one(backend, tmp_path):
    pytest.importorskip(backend)
    straight = kdistill.distill(steps=9, backend=backend, run_dir=tmp_path / "straight", **TINY)
    short = kdistill.distill(steps=5, backend=backend, run_dir=tmp_path / "ext", **TINY)
    assert short.history["eval_step"] == [0, 2, 4, 5]
    extended = kdistill.distill(run_dir=tmp_path / "ext", resume=True, steps=9)
    same(extended, straight)
    assert extended.history["eval_step"] == [0, 2, 4, 6, 8, 9] and extended.metrics["steps_run"] == 9


def test_cli_extends_a_finished_run(tmp_path):
    run = CliRunner()
    common = ["--ipc", "2", "-s", "target_batch=100", "-s", "eval_every=2", "-s", "test_size=60",
              "--checkpoint-every", "3", "--no-grid"]
    assert run.invoke(main, ["distill", "--steps", "4", "--out", str(tmp_path / "a"), *common]).exit_code == 0
    res = run.invoke(main, ["distill", "--resume", str(tmp_path / "a"), "--steps", "7"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "after step 4" in res.output
    assert run.invoke(main, ["distill", "--steps", "7", "--out", str(tmp_path / "b"), *common]).exit_code == 0
    same(kdistill.load(tmp_path / "a" / "distilled.npz"), kdistill.load(tmp_path / "b" / "distilled.npz"))
    assert "steps = 7" in (tmp_path / "a" / "config.toml").read_text()


def test_only_steps_may_grow(tmp_path):
    kdistill.distill(steps=3, run_dir=tmp_path / "r", **TINY)
    with pytest.raises(CheckpointError, match=r"steps: checkpoint has 3, requested 2 \(steps may only grow"):
        kdistill.distill(run_dir=tmp_path / "r", resume=True, steps=2)
    with pytest.raises(CheckpointError, match=r"1 field\(s\): lr: checkpoint has"):
        kdistill.distill(run_dir=tmp_path / "r", resume=True, steps=6, lr=0.02)


def test_a_schedule_over_the_total_refuses_extension(tmp_path):
    kdistill.distill(steps=3, run_dir=tmp_path / "r", schedule="cosine", **TINY)
    with pytest.raises(CheckpointError, match=r"refusing to extend .*schedule 'cosine' depends on the total"):
        kdistill.distill(run_dir=tmp_path / "r", resume=True, steps=6)


def test_a_finished_run_without_checkpoint_says_how_to_keep_one(tmp_path):
    kdistill.distill(steps=2, run_dir=tmp_path / "r", **{**TINY, "checkpoint_every": 0})
    with pytest.raises(CheckpointError, match=r"--checkpoint-every N to extend it later"):
        kdistill.distill(run_dir=tmp_path / "r", resume=True, steps=4)
    args = ["distill", "--steps", "2", "--ipc", "2", "--no-grid", "-s", "test_size=60", "--out", str(tmp_path / "c")]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, ["distill", "--resume", str(tmp_path / "c"), "--steps", "4"])
    assert res.exit_code != 0 and "the run finished and its checkpoint was removed" in res.output
