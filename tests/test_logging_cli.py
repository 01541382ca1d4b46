"""Logging, -v/-q, --json and the CLI paper cuts of issue 14 (items 2 and 5): machine-
readable summaries that match the artifacts, quiet runs that print only the result,
``plugins`` with every component's parameters, ``evaluate`` writing a sealed result,
help texts that list every config field."""

from __future__ import annotations

import json
import logging
import re

import attrs
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import component_params, config_field_docs, main
from kdistill.core.config import DistillConfig
from kdistill.io.safeio import read_json_sealed

TINY = ["--steps", "3", "--ipc", "1", "--target-batch", "200", "--eval-every", "0", "--no-grid"]
ACC_LINE = re.compile(r"^KRR test accuracy: distilled ([0-9.]+)%\s+vs\s+random real subset ([0-9.]+)%")


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "run"
    return out, run_cli("distill", *TINY, "--json", "--out", out)


def test_distill_json_is_the_only_stdout_and_matches_the_artifact(json_run):
    out, res = json_run
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # the whole of stdout is one JSON object
    assert {"command", "run_dir", "artifact", "files", "config", "metrics"} <= set(summary)
    assert summary["command"] == "distill" and summary["run_dir"] == str(out)
    stored = json.loads((out / "metrics.json").read_text())
    art = kdistill.load(out / "distilled.npz")
    for key in ("distilled_acc", "random_acc", "n_test"):
        assert summary["metrics"][key] == stored[key] == art.metrics[key]
    assert str(out / "distilled.npz") in summary["files"] and summary["artifact"] == str(out / "distilled.npz")
    assert summary["config"] == art.config


def test_quiet_distill_prints_only_the_result(tmp_path):
    res = run_cli("-q", "distill", *TINY, "--out", tmp_path / "q")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and ACC_LINE.match(lines[0]) and lines[1] == f"wrote {tmp_path / 'q'}/", lines
    assert res.stderr == ""  # no bars, no notes
    loud = run_cli("distill", *TINY, "--out", tmp_path / "loud")
    assert loud.stdout.splitlines()[0].startswith("kip on digits") and "kip:" in loud.stderr


def test_notes_go_through_logging_and_quiet_hides_them(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('steps = 1\nipc = 1\ntarget_batch = 200\neval_every = 0\n[kernel]\nname = "fc"\ndepth = 3\n')
    args = ["distill", "--config", conf, "--kernel", "rbf", "--no-progress", "--no-grid"]
    loud = run_cli(*args, "--out", tmp_path / "a")
    assert loud.exit_code == 0, loud.output
    assert "note: kernel 'rbf' replaces the configured kernel 'fc'" in loud.stderr
    quiet = run_cli("-q", *args, "--out", tmp_path / "b")
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr
    assert logging.getLogger("kdistill").level == logging.WARNING  # -q: notes (INFO) off


def test_verbosity_levels():
    from kdistill.log import level_for

    assert [level_for(v) for v in (2, 1, 0, -1, -2, -3)] == [
        logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.ERROR]


@pytest.fixture(scope="module")
def evaluated(json_run):
    out, res = json_run
    assert res.exit_code == 0, res.output
    return out, run_cli("evaluate", out, "--json", "-s", "test_size=100")


def test_evaluate_json_and_sealed_result_file(evaluated):
    out, res = evaluated
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {"command", "artifact", "distilled_acc", "random_acc", "eval_kernel", "n_support", "n_test",
            "result_file"} <= set(summary)
    assert summary["n_test"] == 100 and summary["result_file"] == str(out / "eval_fc.json")
    stored = read_json_sealed(out / "eval_fc.json")  # verifies the integrity record
    assert stored["distilled_acc"] == summary["distilled_acc"] and stored["random_acc"] == summary["random_acc"]
    # on the full test set the same numbers as the run's own final evaluation
    full = run_cli("evaluate", out, "--json", "--no-progress")
    assert full.exit_code == 0, full.output
    metrics = kdistill.load(out / "distilled.npz").metrics
    assert json.loads(full.stdout)["distilled_acc"] == metrics["distilled_acc"]
    assert json.loads(full.stdout)["random_acc"] == metrics["random_acc"]


def test_evaluate_human_output_names_the_result_file(evaluated, tmp_path):
    out, _ = evaluated
    res = run_cli("-q", "evaluate", out, "--out", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[-1] == f"wrote {tmp_path / 'e.json'}" and res.stderr == ""
    assert read_json_sealed(tmp_path / "e.json")["n_support"] == 10


def test_evaluate_is_refused_while_the_run_directory_is_locked(evaluated):
    from kdistill.nn.commands import run_dir_lock

    out, _ = evaluated
    with run_dir_lock(out):
        res = run_cli("evaluate", out, "--no-progress")
    assert res.exit_code == 2 and "error:" in res.stderr


def test_plugins_json_lists_every_registered_component_with_parameters():
    from kdistill.core.registry import KINDS, get_registry

    res = run_cli("plugins", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["components"]) == set(KINDS)
    reg = get_registry()
    for kind in KINDS:
        listed = {c["name"]: c for c in data["components"][kind]}
        assert set(listed) == set(reg.names(kind)), kind
        for name, comp in listed.items():
            entry = reg.get(kind, name)
            assert (comp["package"], comp["version"], comp["description"]) == (
                entry.package, entry.version, entry.description)
            assert comp["params"] == component_params(entry.factory)
            if attrs.has(entry.factory):
                assert [p["name"] for p in comp["params"]] == [
                    f.alias or f.name for f in attrs.fields(entry.factory) if f.init]
    fc = {c["name"]: c for c in data["components"]["kernels"]}["fc"]["params"]
    assert {"name": "depth", "type": "int", "default": 1} in fc
    mnist = {c["name"]: c for c in data["components"]["datasets"]}["mnist"]["params"]
    assert [p["name"] for p in mnist] == ["data_dir"]


def test_plugins_human_output_shows_parameters():
    res = run_cli("plugins")
    assert res.exit_code == 0, res.output
    line = next(l for l in res.stdout.splitlines() if re.match(r"kernel\s+fc\s", l))
    assert "depth: int = 1" in line and 'kind: str = "ntk"' in line


def test_distill_help_lists_every_config_field():
    res = run_cli("distill", "--help")
    assert res.exit_code == 0, res.output
    docs = config_field_docs()
    for field in attrs.fields(DistillConfig):
        assert re.search(rf"^\s+{field.name} \(default ", res.stdout, re.M), field.name
        assert docs[field.name], f"{field.name} has no description in DistillConfig's docstring"
    assert "valid_size" in res.stdout and "time_limit" in res.stdout and "patience" in res.stdout


def test_main_help_mentions_rfad_and_verbosity():
    res = run_cli("--help")
    assert res.exit_code == 0 and "RFAD" in res.stdout and "-q, --quiet" in res.stdout


def test_single_seed_prints_no_spread():
    from kdistill.nn.commands import format_mean_std

    assert format_mean_std([0.9], 0.9, 0.0) == "90.00%"
    assert format_mean_std([0.9, 0.8], 0.85, 0.05) == "85.00 ± 5.00%"


def test_nn_evaluate_one_seed_cli(json_run):
    out, _ = json_run
    res = run_cli("evaluate", out, "--nn", "fc", "-p", "width=16", "-p", "steps=5", "-p", "eval_every=5",
                  "--seeds", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "±" not in res.stdout and re.search(r"NN \(fc\) test accuracy: [0-9.]+%", res.stdout)
    as_json = run_cli("evaluate", out, "--nn", "fc", "-p", "width=16", "-p", "steps=5", "-p", "eval_every=5",
                      "--seeds", "0", "--json", "--out", out / "nn_j.json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["test_acc"] == read_json_sealed(out / "nn_j.json")["test_acc"]
