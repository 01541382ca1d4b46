"""The tracking run callbacks ``tensorboard`` and ``mlflow`` (the ``tracking`` extra):
a tiny KIP run on the embedded digits data with both, read back with the libraries'
own readers (TensorBoard's ``EventAccumulator``, MLflow's client on the file store)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.errors import ConfigError
from kdistill.testing import check_callback

tensorboard = pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'kdistill[tracking]'")
mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny not installed: pip install 'kdistill[tracking]'")

STEPS, LR, ALPHA = 6, 0.01, 0.25


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One CLI run with both callbacks, a cosine schedule and evaluations at 0, 2, 4, 6."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    args = ["distill", "--ipc", "2", "--steps", str(STEPS), "--lr", str(LR), "--out", str(out), "--no-grid",
            "-s", "eval_every=2", "-s", "target_batch=100", "-s", "test_size=100", "-s", "schedule.name=cosine",
            "-s", f"schedule.alpha={ALPHA}", "-s", 'callbacks=[{name="tensorboard"},{name="mlflow"}]']
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def expected_lrs():
    return [LR * (ALPHA + (1 - ALPHA) * (1 + math.cos(math.pi * (s - 1) / STEPS)) / 2) for s in range(1, STEPS + 1)]


def test_tensorboard_events_hold_the_run_exactly(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    ea = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()

    def series(tag):
        return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in ea.Tensors(tag)]

    hist = kdistill.load(tracked_run / "distilled.npz").history
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    assert series("loss") == list(zip(hist["step"], hist["loss"]))           # exact, float64
    assert series("eval_acc") == [(s, a) for s, a in zip(hist["eval_step"], hist["eval_acc"]) if s > 0]
    assert [s for s, _ in series("lr")] == hist["step"]
    np.testing.assert_allclose([v for _, v in series("lr")], expected_lrs(), rtol=1e-12)
    times = series("step_seconds")
    assert len(times) == STEPS and all(t >= 0 for _, t in times)
    assert series("final/distilled_acc") == [(STEPS, metrics["distilled_acc"])]
    assert series("final/random_acc") == [(STEPS, metrics["random_acc"])]


def test_mlflow_file_store_holds_params_metrics_and_artifact(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores otherwise
    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("kdistill")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["method"] == "kip" and params["dataset"] == "digits" and params["steps"] == str(STEPS)
    assert params["kernel.name"] == "fc" and params["schedule.name"] == "cosine" and float(params["lr"]) == LR

    def series(key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    ds = kdistill.load(tracked_run / "distilled.npz")
    hist, metrics = ds.history, json.loads((tracked_run / "metrics.json").read_text())
    assert series("loss") == list(zip(hist["step"], hist["loss"]))
    assert series("eval_acc") == [(s, a) for s, a in zip(hist["eval_step"], hist["eval_acc"]) if s > 0]
    np.testing.assert_allclose([v for _, v in series("lr")], expected_lrs(), rtol=1e-12)
    assert len(series("step_seconds")) == STEPS
    assert series("final_distilled_acc") == [(STEPS, metrics["distilled_acc"])]
    assert series("final_random_acc") == [(STEPS, metrics["random_acc"])]
    local = client.download_artifacts(run.info.run_id, "distilled.npz", str(tracked_run.parent))
    logged = kdistill.load(local)
    assert np.array_equal(logged.images, ds.images) and np.array_equal(logged.labels, ds.labels)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_tracking_callbacks_pass_the_kit(name, tmp_path):
    from kdistill.core.registry import get_registry

    factory = get_registry().get("callbacks", name).factory
    params = {"log_dir": str(tmp_path / "tb")} if name == "tensorboard" else {"tracking_uri": str(tmp_path / "ml")}
    check_callback(factory, **params)


@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_is_refused_before_any_work(name, module, tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"kdistill\[tracking\]") as info:
        kdistill.distill(ipc=2, steps=2, callbacks=[{"name": name}], run_dir=tmp_path / "run")
    assert name in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
