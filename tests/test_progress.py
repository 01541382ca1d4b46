"""Progress of every long phase (issue 14, item 1): the Python ``progress`` callable, the
CLI's bars (steps, final evaluation, Label Solve, evaluate, baselines), per-tile progress
of the exact ConvNet kernel weighted by work, and an ETA that leaves the first unit
(compilation) out of the rate."""

from __future__ import annotations

import collections
import io
import re

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.errors import ConfigError
from kdistill.runtime.progress import BarReporter, CallbackReporter, Phase, make_reporter, phase, use_progress

TINY = ["--steps", "3", "--ipc", "1", "--target-batch", "200", "--eval-every", "2", "--no-grid"]
N_TEST = 360  # digits test split


def by_phase(events):
    out = collections.defaultdict(list)
    for e in events:
        out[e["phase"]].append(e)
    return out


def assert_monotone_to_total(events, total, unit):
    done = [e["done"] for e in events]
    assert all(isinstance(d, int) for d in done)
    assert done == sorted(done), done
    assert done[0] == 0 and done[-1] == total, done
    assert {e["total"] for e in events} == {total} and {e["unit"] for e in events} == {unit}


def test_distill_progress_callable_gets_every_phase():
    events = []
    result = kdistill.distill(steps=4, ipc=1, target_batch=200, eval_every=2, progress=events.append)
    phases = by_phase(events)
    assert list(phases) == ["kip", "final evaluation"]
    assert_monotone_to_total(phases["kip"], 4, "step")
    assert [e["done"] for e in phases["kip"]] == [0, 1, 2, 3, 4]
    assert [e["done"] for e in phases["kip"] if "eval_acc" in e] == [2, 4]
    assert all("loss" in e for e in phases["kip"][1:])
    # kernel rows: support (10) + test (360) for the distilled set and the random subset
    assert_monotone_to_total(phases["final evaluation"], 2 * (10 + N_TEST), "row")
    assert 0 < result.metrics["distilled_acc"] <= 1


def test_progress_does_not_change_results():
    quiet = kdistill.distill(steps=3, ipc=1, target_batch=200, eval_every=0, progress=False)
    shown = kdistill.distill(steps=3, ipc=1, target_batch=200, eval_every=0, progress=lambda e: None)
    np.testing.assert_array_equal(quiet.images, shown.images)
    assert quiet.metrics["distilled_acc"] == shown.metrics["distilled_acc"]
    assert quiet.metrics["random_acc"] == shown.metrics["random_acc"]


def test_label_solve_progress_callable():
    events = []
    kdistill.label_solve(ipc=1, target_batch=300, progress=events.append)
    phases = by_phase(events)
    assert list(phases) == ["label solve", "final evaluation"]
    assert_monotone_to_total(phases["label solve"], 10 + 300, "row")  # K_ss rows + target rows
    assert_monotone_to_total(phases["final evaluation"], 2 * (10 + N_TEST), "row")


def test_progress_argument_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="progress must be"):
        kdistill.distill(steps=1, progress="yes please")
    assert make_reporter(False) is None
    assert isinstance(make_reporter(True), BarReporter)
    assert isinstance(make_reporter(print), CallbackReporter)


def test_default_progress_follows_whether_stderr_is_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert make_reporter(None) is None
    monkeypatch.setattr("sys.stderr", Tty())
    assert isinstance(make_reporter(None), BarReporter)


def test_phase_accumulates_fractions_and_stays_monotone():
    events = []
    with use_progress(CallbackReporter(events.append)):
        with phase("work", 10, "row") as p:
            for _ in range(30):
                p.update(1 / 3)
            p.set(2)  # below the count: ignored
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[-1] == 10 and done[0] == 0
    assert len(done) == 11  # one event per whole unit (floating error must not skip or repeat one)


def test_phase_left_by_an_exception_is_not_completed():
    events = []
    with use_progress(CallbackReporter(events.append)):
        with pytest.raises(RuntimeError):
            with phase("work", 10) as p:
                p.update(3)
                raise RuntimeError("boom")
    assert events[-1]["done"] == 3
    assert isinstance(Phase(None, "x", 5, "it"), Phase)  # no reporter: a silent phase


def test_rate_bar_leaves_the_first_unit_out_of_the_eta():
    """The first unit took 50 s (compilation), every later one 1 s: after 11 units the
    bar must estimate 89 s for the remaining 89, not the 89 * 60/11 = 485 s that the
    average since the start gives."""
    from kdistill.runtime.progress import _rate_bar_class

    clock = [0.0]
    bar = _rate_bar_class()(total=100, file=io.StringIO(), mininterval=0)
    bar._time = lambda: clock[0]
    bar.start_t = 0.0
    clock[0] = 50.0
    bar.update(1)
    assert bar.format_dict["rate"] == 0  # no estimate from the compile unit alone
    for _ in range(10):
        clock[0] += 1.0
        bar.update(1)
    rate = bar.format_dict["rate"]
    assert rate == pytest.approx(1.0)
    assert "01:29" in str(bar)  # remaining time shown: 89 s
    bar.close()


def bar_counts(stderr: str, desc: str) -> list[tuple[int, int]]:
    """``(n, total)`` of every refresh of the bar ``desc`` in captured stderr."""
    return [(int(n), int(t)) for n, t in re.findall(rf"{re.escape(desc)}:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", stderr)]


def test_cli_distill_shows_a_bar_for_steps_and_final_evaluation(tmp_path):
    res = CliRunner().invoke(main, ["distill", *TINY, "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    steps = bar_counts(res.stderr, "kip")
    assert steps and steps[-1] == (3, 3) and {t for _, t in steps} == {3}
    final = bar_counts(res.stderr, "final evaluation")
    assert final and final[-1] == (2 * (10 + N_TEST), 2 * (10 + N_TEST))
    off = CliRunner().invoke(main, ["distill", *TINY, "--no-progress", "--out", str(tmp_path / "off")])
    assert off.exit_code == 0 and "final evaluation" not in off.stderr and "kip:" not in off.stderr


def test_cli_label_solve_shows_its_phases(tmp_path):
    res = CliRunner().invoke(main, ["distill", "--method", "label-solve", "--ipc", "1", "--target-batch", "300",
                                    "--no-grid", "--out", str(tmp_path / "ls")])
    assert res.exit_code == 0, res.output
    assert bar_counts(res.stderr, "label solve")[-1] == (310, 310)
    assert bar_counts(res.stderr, "final evaluation")[-1] == (2 * (10 + N_TEST),) * 2


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prog") / "run"
    res = CliRunner().invoke(main, ["distill", *TINY, "--ipc", "2", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_cli_evaluate_and_baseline_show_bars(small_run):
    res = CliRunner().invoke(main, ["evaluate", str(small_run)])
    assert res.exit_code == 0, res.output
    assert bar_counts(res.stderr, "evaluate")[-1] == (2 * (20 + N_TEST),) * 2
    res = CliRunner().invoke(main, ["baseline", str(small_run), "--kind", "kmeans", "--kind", "herding"])
    assert res.exit_code == 0, res.output
    counts = bar_counts(res.stderr, "baselines")
    assert counts[-1] == (20, 20) and len(counts) >= 2  # 10 classes x 2 kinds, advancing per class


def test_convnet_progress_per_tile_weighted_by_work(torch_backend, rng):
    """With count_support, krr_predict reports K_ss and every target block per kernel
    tile: more calls than blocks, rows adding up to n_s + n_t (equal work per row)."""
    from kdistill.core.krr import krr_predict
    from kdistill.plugins.kernels.convnet import ConvNetKernel
    from kdistill.plugins.solvers.cholesky import CholeskySolver

    b = torch_backend
    k = ConvNetKernel(depth=2, block_mb=0.05).bind(b)
    xs, ys = rng.standard_normal((6, 8, 8, 1)), rng.standard_normal((6, 3))
    xt = rng.standard_normal((20, 8, 8, 1))
    rows = k.rows_per_block(6, (8, 8, 1))
    calls = []
    pred = krr_predict(k, CholeskySolver().bind(b), xs, ys, xt, 1e-6, "float64", progress=calls.append,
                       count_support=True)
    assert sum(calls) == pytest.approx(26)
    assert len(calls) > -(-20 // rows) + 1  # finer than once per block (and once for the fit)
    assert all(c > 0 for c in calls)
    legacy = []
    same = krr_predict(k, CholeskySolver().bind(b), xs, ys, xt, 1e-6, "float64", progress=legacy.append)
    assert sum(legacy) == 20 and len(legacy) == -(-20 // rows)  # the old contract: target rows per block
    np.testing.assert_array_equal(pred, same)


def test_convnet_tiles_report_on_jax(jax_backend, rng):
    """JAX dispatches tiles asynchronously: each reported tile must be finished."""
    from kdistill.core.krr import krr_predict
    from kdistill.plugins.kernels.convnet import ConvNetKernel
    from kdistill.plugins.solvers.cholesky import CholeskySolver

    b = jax_backend
    k = ConvNetKernel(depth=2, block_mb=0.05).bind(b)
    xs, ys = rng.standard_normal((6, 8, 8, 1)), rng.standard_normal((6, 3))
    xt = rng.standard_normal((9, 8, 8, 1))
    calls = []
    krr_predict(k, CholeskySolver().bind(b), xs, ys, xt, 1e-6, "float64", progress=calls.append, count_support=True)
    assert sum(calls) == pytest.approx(15) and len(calls) > 3
