"""Outer-loop methods and run callbacks are plugins: registered through the hookspec
module like kernels, listed by ``kdistill plugins``, selected by config name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
import kdistill.core.registry as registry_module
from kdistill.cli import main
from kdistill.errors import ConfigError, UnknownComponentError
from kdistill.core.hookspecs import hookimpl
from kdistill.runtime.support import init_support, make_result, random_baseline
from kdistill.core.loop import RunHook
from kdistill.core.registry import Registry

FAST = dict(ipc=2, target_batch=200, eval_every=2, seed=3)


class StepRecorder(RunHook):
    """A third-party run callback: records what the driver tells it."""

    calls: list = []

    def __init__(self, tag: str = "x"):
        self.tag = tag

    def after_step(self, run, info):
        StepRecorder.calls.append((self.tag, info["step"], info["loss"], info.get("eval_acc")))


def random_subset_method(config, comps, data, callback=None, run_dir=None, resume=False):
    """A third-party method: the class-balanced random real subset itself, scored."""
    rng = np.random.default_rng(config.seed)
    images, labels, class_ids = init_support(config, data, rng)
    metrics = {"method": "random-subset", "distilled_acc": None, "n_test": int(len(data.x_test))}
    metrics.update(random_baseline(comps, config, data))
    metrics["distilled_acc"] = metrics["random_acc"]
    return make_result(config, data, images, labels, class_ids, metrics, {}, {})


class ThirdParty:
    @staticmethod
    @hookimpl
    def kdistill_register_methods(register):
        register("random-subset", random_subset_method, "a random real subset (test plugin)")

    @staticmethod
    @hookimpl
    def kdistill_register_callbacks(register):
        register("recorder", StepRecorder, "records steps (test plugin)")


@pytest.fixture
def registry(monkeypatch):
    reg = Registry(third_party=False)
    reg.register_plugin(ThirdParty(), package="third-party", version="1.0")
    monkeypatch.setattr(registry_module, "_default", reg)
    StepRecorder.calls = []
    return reg


def test_plugins_lists_methods_and_callbacks(registry):
    out = CliRunner().invoke(main, ["plugins"]).output
    for line in ("method", "kip", "label-solve", "random-subset", "callback", "jsonl", "recorder"):
        assert line in out, out
    assert registry.provenance("methods", "random-subset")["package"] == "third-party"


def test_unknown_method_or_callback_fails_before_work_listing_the_known_ones(registry):
    with pytest.raises(UnknownComponentError, match="unknown method 'kipp'; available methods: kip, label-solve, "
                                                    "random-subset"):
        kdistill.distill(method="kipp", **FAST)
    with pytest.raises(UnknownComponentError, match="unknown callback 'tensorbord'; available callbacks: jsonl"):
        kdistill.distill(callbacks=["tensorbord"], **FAST)
    with pytest.raises(ConfigError, match="has no parameter"):
        kdistill.distill(callbacks=[{"name": "jsonl", "file": "x"}], **FAST)


def test_third_party_method_runs_by_name_and_is_not_resumable(registry, tmp_path):
    res = kdistill.distill(method="random-subset", **FAST)
    assert res.metrics["method"] == "random-subset"
    assert res.metrics["components"]["method"] == {"kind": "method", "name": "random-subset",
                                                   "package": "third-party", "version": "1.0",
                                                   "plugin": res.metrics["components"]["method"]["plugin"]}
    # its accuracy is the random-subset baseline's (same draw, seed + 1), computed independently here
    base = kdistill.distill(steps=0, **FAST)
    assert res.metrics["distilled_acc"] == base.metrics["random_acc"]
    with pytest.raises(ConfigError, match="method 'random-subset' has no steps to resume"):
        kdistill.distill(kdistill.make_config(method="random-subset", **FAST), run_dir=tmp_path / "r", resume=True)
    assert not (tmp_path / "r").exists()  # refused before the run directory is touched


def test_run_callbacks_see_every_step_in_order_and_jsonl_logs_them(registry, tmp_path):
    log = tmp_path / "steps.jsonl"
    res = kdistill.distill(steps=5, callbacks=[{"name": "recorder", "tag": "a"}, {"name": "jsonl", "path": str(log)}],
                           **FAST)
    calls = StepRecorder.calls
    assert [c[1] for c in calls] == [1, 2, 3, 4, 5] and {c[0] for c in calls} == {"a"}
    assert [c[2] for c in calls] == res.history["loss"]
    assert [c[3] for c in calls] == [None, res.history["eval_acc"][1], None, res.history["eval_acc"][2],
                                     res.history["eval_acc"][3]]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5]
    assert [x["loss"] for x in lines] == res.history["loss"]
    assert [x.get("eval_acc") for x in lines] == [c[3] for c in calls]
    assert all(x["lr"] == 0.01 for x in lines)
    # callbacks do not change the result
    plain = kdistill.distill(steps=5, **FAST)
    np.testing.assert_array_equal(plain.images, res.images)


def test_callbacks_may_change_on_resume(registry, tmp_path):
    """A run stopped after step 2 (its checkpoint) resumes with a callback it did not
    have: allowed (tracking does not change results), the callback sees steps 3..4, and
    the result equals an uninterrupted run's."""

    def crash(info):
        if info["step"] == 3:
            raise KeyboardInterrupt("simulated crash in step 3")

    with pytest.raises(KeyboardInterrupt):
        kdistill.distill(steps=4, checkpoint_every=1, run_dir=tmp_path, callback=crash, **FAST)
    resumed = kdistill.distill(steps=4, checkpoint_every=1, run_dir=tmp_path, resume=True,
                               callbacks=[{"name": "recorder", "tag": "late"}], **FAST)
    assert [c[1] for c in StepRecorder.calls] == [3, 4]
    full = kdistill.distill(steps=4, **FAST)
    np.testing.assert_array_equal(resumed.images, full.images)


# ------------------------------------------------------------------ the kit and the example plugin

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "kdistill-laplace"


def example_module(name: str):
    """A module of examples/kdistill-laplace, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"kdistill_laplace_{name}_under_test",
                                                  EXAMPLE / "kdistill_laplace" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builtin_methods_and_callback_pass_the_kit(tmp_path):
    from kdistill.plugins.methods.kip import run_kip
    from kdistill.plugins.methods.label_solve import run_label_solve
    from kdistill.plugins.callbacks.jsonl import JSONLinesLog
    from kdistill.testing import check_callback, check_method

    check_method(run_kip)
    check_method(run_label_solve, backends=("jax",))
    check_callback(JSONLinesLog, path=str(tmp_path / "log.jsonl"))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3


def test_the_kit_catches_a_method_that_misreports_its_accuracy():
    from kdistill.testing import check_method

    def inflated(config, comps, data, callback=None, run_dir=None, resume=False):
        out = random_subset_method(config, comps, data)
        out.metrics["distilled_acc"] = 0.999
        return out

    with pytest.raises(AssertionError, match="distilled_acc.*but the set it returns scores"):
        check_method(inflated, backends=("jax",))


def test_example_plugin_method_and_callback_pass_the_kit_and_run_from_the_cli(monkeypatch, tmp_path):
    """examples/kdistill-laplace adds a method (kcenter) and a run callback (csv), one
    file + one entry point each: both pass the kit and run from `kdistill distill`."""
    from kdistill.testing import check_callback, check_method

    kcenter, csv_log = example_module("kcenter"), example_module("csv_log")
    check_method(kcenter.run_kcenter)
    check_callback(csv_log.CSVLog, path=str(tmp_path / "kit.csv"))
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert 'kcenter = "kdistill_laplace.kcenter"' in pyproject and 'csv = "kdistill_laplace.csv_log"' in pyproject

    reg = Registry(third_party=False)
    for module in (kcenter, csv_log):
        reg.register_plugin(module, package="kdistill-laplace", version="0.1.0")
    monkeypatch.setattr(registry_module, "_default", reg)
    run = CliRunner().invoke(main, ["distill", "--method", "kcenter", "--ipc", "2", "--out", str(tmp_path / "kc"),
                                    "--no-progress", "--no-grid"])
    assert run.exit_code == 0, run.output
    metrics = json.loads((tmp_path / "kc" / "metrics.json").read_text())
    assert metrics["method"] == "kcenter" and metrics["components"]["method"]["package"] == "kdistill-laplace"
    run = CliRunner().invoke(main, ["distill", "--steps", "4", "--ipc", "2", "--target-batch", "200",
                                    "--eval-every", "2", "-s", 'callbacks=[{name="csv"}]', "--out",
                                    str(tmp_path / "csv"), "--no-progress", "--no-grid"])
    assert run.exit_code == 0, run.output
    rows = (tmp_path / "csv" / "steps.csv").read_text().splitlines()
    assert rows[0] == "step,loss,eval_acc,seconds" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    history = json.loads((tmp_path / "csv" / "metrics.json").read_text())
    assert history["method"] == "kip"


def test_an_artifact_made_with_a_callback_plugin_evaluates_without_it(registry, monkeypatch, tmp_path):
    """Callbacks and threads concern the run, not the set: evaluating an artifact whose
    run used a third-party callback needs neither the plugin nor the run's threads."""
    from kdistill.runtime.evaluate import evaluate_artifact

    res = kdistill.distill(steps=2, callbacks=["recorder"], threads=1, **FAST)
    res.save(tmp_path / "set.npz")
    monkeypatch.setattr(registry_module, "_default", Registry(third_party=False))  # plugin gone
    out = evaluate_artifact(kdistill.load(tmp_path / "set.npz"))
    assert out["distilled_acc"] == pytest.approx(res.metrics["distilled_acc"])
