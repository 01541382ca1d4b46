"""The run directory: nothing of a run is lost or overwritten, and one run at a time.

- a non-empty run directory is refused unless --overwrite, which removes every file of
  the old run (nn_*.json, baselines/ too) but never files kdistill did not write;
- the directory is locked (two real processes): a second run or a --resume of a
  running one fails naming the holder's PID; a SIGKILLed holder leaves no stale lock;
- SIGTERM/SIGINT during the final evaluation (a real subprocess whose final evaluation
  is slowed down) leaves a checkpoint; --resume then only evaluates, bit-for-bit;
- output paths (read-only, not a directory, no space) fail before step 1;
- "continue with --resume" is advised only when a checkpoint exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill import errors
from kdistill.io.checkpoint import Checkpoint, checkpoint_path, load_checkpoint
from kdistill.errors import CheckpointError, ConfigError, KdistillError

FAST = dict(ipc=2, target_batch=200, eval_every=0, seed=7)
CLI_FAST = ["--ipc", "2", "--target-batch", "200", "--eval-every", "0", "--seed", "7", "--no-progress", "--no-grid"]
LOCK_FILES = {".kdistill.lock", ".kdistill.pid"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdistill.cli", *args]


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def counter():
    calls = []

    def callback(info):
        calls.append(info["step"])

    return calls, callback


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------ nothing overwritten


def test_cli_refuses_a_non_empty_run_directory_and_overwrite_removes_the_old_run(tmp_path):
    run = tmp_path / "run"
    assert run_cli("distill", "--steps", "2", *CLI_FAST, "--out", str(run)).exit_code == 0
    (run / "nn_convnet.json").write_text('{"mean": 0.99}')  # the old set's NN score
    (run / "baselines" / "random").mkdir(parents=True)
    (run / "baselines" / "random" / "distilled.npz").write_bytes(b"old")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    res = run_cli("distill", "--steps", "2", *CLI_FAST[:-4], "--seed", "8", "--no-progress", "--no-grid",
                  "--out", str(run))
    assert res.exit_code == 2, res.output
    assert "already holds a run" in res.stderr and "--overwrite" in res.stderr and "nn_convnet.json" in res.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # untouched

    res = run_cli("distill", "--steps", "2", *CLI_FAST[:-4], "--seed", "8", "--no-progress", "--no-grid",
                  "--out", str(run), "--overwrite")
    assert res.exit_code == 0, res.output
    assert "removed the previous run's" in res.stderr and "nn_convnet.json" in res.stderr
    assert names(run) == ["config.toml", "distilled.npz", "metrics.json"]  # nothing of the old run stays
    assert kdistill.load(run / "distilled.npz").seed == 8


def test_overwrite_never_removes_files_kdistill_did_not_write(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "distilled.npz").write_bytes(b"old run")
    (run / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        res = run_cli("distill", "--steps", "1", *CLI_FAST, "--out", str(run), *extra)
        assert res.exit_code == 2, res.output
        assert "files kdistill did not write (notes.txt)" in res.stderr
    assert names(run) == ["distilled.npz", "notes.txt"]
    assert (run / "distilled.npz").read_bytes() == b"old run"


def test_api_run_dir_must_be_empty_unless_overwrite(tmp_path):
    (tmp_path / "distilled.npz").write_bytes(b"old")
    calls, callback = counter()
    with pytest.raises(errors.RunDirectoryError, match="already holds a run .*overwrite=True"):
        kdistill.distill(steps=2, run_dir=tmp_path, callback=callback, **FAST)
    assert calls == [] and names(tmp_path) == ["distilled.npz"]
    kdistill.distill(steps=2, run_dir=tmp_path, overwrite=True, callback=callback, **FAST)
    assert calls == [1, 2]
    assert names(tmp_path) == []  # the old file went; checkpoint_every=0 keeps no checkpoint
    with pytest.raises(ConfigError, match="choose one"):
        kdistill.distill(run_dir=tmp_path, resume=True, overwrite=True)


def test_fresh_run_over_a_checkpoint_names_resume_and_overwrite(tmp_path):
    kdistill.distill(steps=2, checkpoint_every=1, run_dir=tmp_path, **FAST)
    with pytest.raises(CheckpointError) as info:
        kdistill.distill(steps=2, run_dir=tmp_path, **FAST)
    msg = str(info.value)
    assert "already holds a checkpoint" in msg and f"--resume {tmp_path}" in msg and "--overwrite" in msg
    assert load_checkpoint(checkpoint_path(tmp_path)).step == 2
    kdistill.distill(steps=3, checkpoint_every=1, run_dir=tmp_path, overwrite=True, **FAST)
    assert load_checkpoint(checkpoint_path(tmp_path)).step == 3


# ------------------------------------------------------------ one run at a time


def wait_for(predicate, proc, what: str, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def test_second_run_and_resume_of_a_running_directory_fail_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(cli("distill", "--steps", "100000", "--checkpoint-every", "5", *CLI_FAST,
                                 "--out", str(run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpoint_path(run).exists(), first, "its first checkpoint")
        second = subprocess.run(cli("distill", "--steps", "3", *CLI_FAST, "--out", str(run)),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert "in use by another kdistill command" in second.stderr and f"PID {first.pid}" in second.stderr
        resume = subprocess.run(cli("distill", "--resume", str(run), "--no-progress", "--no-grid"),
                                capture_output=True, text=True, timeout=300)
        assert resume.returncode == 2, resume.stderr
        assert f"PID {first.pid}" in resume.stderr and "Traceback" not in resume.stderr
        assert first.poll() is None  # the running run was not disturbed
        assert (run / ".kdistill.pid").read_text().split() == [str(first.pid)]
    finally:
        first.kill()  # SIGKILL: no clean-up at all
        first.communicate()
    # the OS released the lock with the process: the run can be resumed (the stale PID
    # file is simply replaced)
    from kdistill.io.rundir import RunDirectory

    with RunDirectory(run, mode="resume") as taken:
        assert taken.locked and (run / ".kdistill.pid").read_text().split() == [str(os.getpid())]
    assert not LOCK_FILES & set(names(run))
    assert load_checkpoint(checkpoint_path(run)).step >= 5


# ------------------------------------------------- signals in the final evaluation

SLOW_FINAL_EVALUATION = r"""
import pathlib, sys, time
import kdistill.plugins.methods.kip as kip

marker, real = pathlib.Path(sys.argv[1]), kip.evaluate_support

def slow(*args, **kwargs):  # with eval_every=0 only the final evaluation calls it
    marker.touch()
    time.sleep(300)
    return real(*args, **kwargs)

kip.evaluate_support = slow
from kdistill.cli import main
sys.argv = ["kdistill", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_the_final_evaluation_leaves_a_resumable_run(tmp_path, signum):
    run, marker = tmp_path / "run", tmp_path / "final-evaluation-started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_FINAL_EVALUATION, str(marker), "distill",
                             "--steps", "6", *CLI_FAST, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker.exists, proc, "the final evaluation")
        time.sleep(0.2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name} during the final evaluation" in err
    assert f"kdistill distill --resume {run}" in err
    assert names(run) == ["checkpoint.npz"]  # the distilled set is safe; no lock files left
    assert load_checkpoint(checkpoint_path(run)).step == 6

    res = subprocess.run(cli("distill", "--resume", str(run), "--no-progress", "--no-grid"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} after step 6" in res.stdout
    got, want = kdistill.load(run / "distilled.npz"), kdistill.distill(steps=6, **FAST)
    np.testing.assert_array_equal(got.images, want.images)
    assert got.metrics["steps_run"] == 6 and len(got.history["step"]) == 6
    assert got.metrics["distilled_acc"] == want.metrics["distilled_acc"]
    assert names(run) == ["config.toml", "distilled.npz", "metrics.json"]


def test_resume_of_a_run_stopped_by_its_time_limit_only_evaluates(tmp_path):
    first = kdistill.distill(steps=50, time_limit=1e-9, checkpoint_every=1, run_dir=tmp_path, **FAST)
    assert first.metrics["steps_run"] == 1
    calls, callback = counter()
    again = kdistill.distill(run_dir=tmp_path, resume=True, callback=callback)
    assert calls == []  # no step after the one the limit stopped at
    np.testing.assert_array_equal(again.images, first.images)


# ------------------------------------------------- output paths before step 1


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (needs root); skipped where it cannot be mounted."""
    mounted = []

    def mount(options: str) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_output_fails_before_step_1(tmpfs):
    mnt = tmpfs("ro,size=64k")
    calls, callback = counter()
    with pytest.raises(errors.RunDirectoryError, match="Read-only file system"):
        kdistill.distill(steps=3, run_dir=mnt / "run", callback=callback, **FAST)
    assert calls == []
    res = run_cli("distill", "--steps", "3", *CLI_FAST, "--out", str(mnt / "run"))
    assert res.exit_code == 2 and "Read-only file system" in res.stderr and "read-only" in res.stderr
    assert "kip on digits" not in res.stdout  # refused before the run started


def test_output_under_a_file_fails_before_step_1(tmp_path):
    (tmp_path / "file").write_text("x")
    calls, callback = counter()
    with pytest.raises(errors.RunDirectoryError, match="Not a directory"):
        kdistill.distill(steps=3, run_dir=tmp_path / "file" / "run", callback=callback, **FAST)
    assert calls == []
    res = run_cli("distill", "--steps", "3", *CLI_FAST, "--out", str(tmp_path / "file" / "run"))
    assert res.exit_code == 2 and "Not a directory" in res.stderr and "kip on digits" not in res.stdout


def test_too_little_space_fails_before_step_1(tmpfs):
    mnt = tmpfs("size=512k")
    st = os.statvfs(mnt)
    (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 16 * 1024))
    calls, callback = counter()
    with pytest.raises(errors.RunDirectoryError, match="not enough free space .* needs about"):
        kdistill.distill(ipc=10, steps=3, target_batch=200, eval_every=0, run_dir=mnt / "run", callback=callback)
    assert calls == [] and names(mnt) == ["filler"]  # the directory it created is gone again
    res = run_cli("distill", "--steps", "3", "--ipc", "10", "--no-progress", "--out", str(mnt / "run"))
    assert res.exit_code == 2 and "not enough free space" in res.stderr and "kip on digits" not in res.stdout


def test_resume_advice_only_when_a_checkpoint_exists(monkeypatch, tmp_path):
    def full(self, path):
        raise CheckpointError(f"could not write checkpoint {str(path)!r}: No space left on device (errno 28)")

    monkeypatch.setattr(Checkpoint, "save", full)
    with pytest.raises(CheckpointError) as info:
        kdistill.distill(steps=4, checkpoint_every=2, run_dir=tmp_path, **FAST)
    msg = str(info.value)
    assert "no checkpoint was written" in msg and "start the run again" in msg
    assert "--resume" not in msg and "resume=True" not in msg
    monkeypatch.undo()
    assert names(tmp_path) == []


def test_too_long_output_path_is_a_clear_error(tmp_path):
    res = run_cli("distill", "--steps", "1", *CLI_FAST, "--out", str(tmp_path / ("a" * 300)))
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: --out") and "use a shorter path" in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)
    with pytest.raises(KdistillError, match="use a shorter path"):
        kdistill.distill(steps=1, run_dir=tmp_path / ("a" * 300), **FAST)


def test_nn_evaluation_into_a_locked_run_directory_is_refused_before_training(tmp_path):
    from kdistill.io.rundir import RunDirectory

    kdistill.distill(steps=1, **FAST).save(tmp_path / "distilled.npz")
    with RunDirectory(tmp_path, mode="update"):  # as a running command holds it
        res = run_cli("evaluate", str(tmp_path), "--nn", "fc", "-p", "steps=2", "--seeds", "0", "--no-progress")
    assert res.exit_code == 2, res.output
    assert "in use by another kdistill command" in res.stderr and f"PID {os.getpid()}" in res.stderr
    assert names(tmp_path) == ["distilled.npz"]  # no nn_fc.json, no lock files left


@pytest.mark.parametrize("command", [["baseline", "{run}", "--kind", "random"], ["report", "{run}"]])
def test_baseline_and_report_into_a_locked_run_directory_are_refused(tmp_path, command):
    """``baseline`` (writing RUN/baselines/) and ``report`` (RUN/report.*) take the same
    lock as a run: while another command holds it they stop at once, naming its PID,
    and write nothing."""
    from kdistill.io.rundir import RunDirectory

    kdistill.distill(steps=1, **FAST).save(tmp_path / "distilled.npz")
    with RunDirectory(tmp_path, mode="update"):  # as a running command holds it
        res = run_cli(*[c.format(run=tmp_path) for c in command])
    assert res.exit_code == 2, res.output
    assert "in use by another kdistill command" in res.stderr and f"PID {os.getpid()}" in res.stderr
    assert names(tmp_path) == ["distilled.npz"]
