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
from kdistill.core.errors import ConfigError, UnknownComponentError
from kdistill.core.hookspecs import hookimpl
from kdistill.core.kip import init_support, random_baseline, _result
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
    return _result(config, data, images, labels, class_ids, metrics, {}, {})


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
