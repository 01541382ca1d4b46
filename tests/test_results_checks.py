"""Results are never silently wrong or crashing (issue 15, §3-§5, results side).

- ``kdistill report`` leaves out (with a warning) NN results measured on another
  support set than the one now in the run directory;
- evaluation refuses data that differ from the data an artifact was distilled from
  (fingerprint at distillation, compared at evaluation; ``--allow-data-mismatch``);
- NN protocols reject non-finite numbers, a diverged network is an error, not an
  accuracy; a numerically degenerate KRR kernel is an error naming its parameter;
- malformed NN results and ``--protocol`` files, bad class ids and ``$`` in class
  names give KdistillErrors; ``report.md`` escapes what it copies in.

Every crafted file is built here, in the test's temporary directory.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from pathlib import Path

import attrs
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

import kdistill  # noqa: E402
from kdistill.cli import main  # noqa: E402
from kdistill.io.artifact import DistilledSet  # noqa: E402
from kdistill.errors import ArtifactError, ConfigError, DataError, KdistillError, NumericalError  # noqa: E402
from kdistill.io.safeio import write_json_sealed  # noqa: E402
from kdistill.nn.protocol import NNProtocol  # noqa: E402


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_cli_error(r, *fragments):
    """Exit status 2, an ``error:`` line holding every fragment, and no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "error:" in r.output and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in r.output, (f, r.output)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- crafted sets and results

def make_set(seed=0, n_classes=3, ipc=2, class_names=None, method="kip", dataset="toy", class_ids=None):
    """A small DistilledSet built directly (no distillation)."""
    from kdistill.datasets.preprocess import fit_preprocessor

    rng = np.random.default_rng(seed)
    n = n_classes * ipc
    ids = np.repeat(np.arange(n_classes), ipc) if class_ids is None else np.asarray(class_ids)
    images = rng.standard_normal((n, 4, 4, 1)).astype(np.float32)
    labels = (np.eye(n_classes)[np.repeat(np.arange(n_classes), ipc)] - 1 / n_classes).astype(np.float32)
    transform = fit_preprocessor("none", np.zeros((2, 4, 4, 1), np.float32))
    config = kdistill.make_config(ipc=ipc, steps=3).to_dict()
    config["method"] = method
    config["dataset"] = dataset
    names = class_names if class_names is not None else [f"class{c}" for c in range(n_classes)]
    return DistilledSet(
        images=images, labels=labels, class_ids=ids, transform=transform, config=config,
        metrics={"distilled_acc": 0.5, "random_acc": 0.25, "method": method},
        history={"step": [1, 2, 3], "loss": [0.3, 0.2, 0.1], "eval_step": [3], "eval_acc": [0.5]},
        seed=seed, dataset={"name": dataset, "num_classes": n_classes, "class_names": names,
                            "image_shape": [4, 4, 1], "n_train": 30, "n_test": 12})


def make_result(art, accs=(0.6125, 0.6375), model="fc"):
    """An NN result dict as ``evaluate_nn`` writes it, for ``art``."""
    from kdistill.nn.train import RESULT_FORMAT, RESULT_FORMAT_VERSION, support_digest

    p = NNProtocol.default(model, width=8, steps=2, seeds=list(range(len(accs))))
    accs = [float(a) for a in accs]
    return {
        "format": RESULT_FORMAT, "format_version": RESULT_FORMAT_VERSION, "protocol": p.to_dict(),
        "protocol_id": p.protocol_id, "protocol_text": p.describe(), "test_acc": accs,
        "mean": float(np.mean(accs)), "std": float(np.std(accs)),
        "runs": [{"seed": s, "test_acc": a, "seconds": 0.1, "loss": [1.0, 0.5], "diverged": False,
                  "curve_step": [2], "curve_acc": [a]} for s, a in zip(p.seeds, accs)],
        "support": {"n": len(art.images), "digest": support_digest(art.images, art.labels), "method": "kip",
                    "baseline": None},
        "dataset": "toy", "n_test": 12, "seconds": 0.2, "machine": {"cpu": "test"}, "kdistill_version": "test",
    }


def write_run(root: Path, art, results=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    art.save(root / "distilled.npz")
    for model, res in (results or {}).items():
        write_json_sealed(root / f"nn_{model}.json", res)
    return root


def build(run_dir):
    from kdistill.report import build_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = build_report(run_dir)
    return paths, Path(paths["html"]).read_text(), Path(paths["markdown"]).read_text(), caught


# ---------------------------------------------------------------- §3: the report checks digests

def test_report_shows_a_result_of_the_current_set(tmp_path):
    art = make_set()
    run = write_run(tmp_path / "run", art, {"fc": make_result(art)})
    paths, page, md, caught = build(run)
    assert "62.50 ± 1.25 (n=2, 12 test images)" in page and "62.50 ± 1.25 (n=2, 12 test images)" in md
    assert paths["warnings"] == [] and not caught and "Warning:" not in page


def test_report_one_seed_rfad_baseline_krr_and_empty_sections(tmp_path):
    """One seed shows no '± 0.00'; a KIP run with a random-feature kernel is called RFAD;
    a baseline's KRR cell comes from its eval_<kernel>.json; every number says on how many
    test images it was taken; sections without data are left out."""
    art = make_set()
    art.config["kernel"] = {"name": "rf-fc", "width": 16}
    art.metrics.update(n_test=12, eval_kernel={"name": "rf-fc", "width": 16})
    run = write_run(tmp_path / "run", art, {"fc": make_result(art, accs=(0.6125,))})
    base = make_set(seed=5)
    write_run(run / "baselines" / "random", base)
    write_json_sealed(run / "baselines" / "random" / "eval_rf-fc.json",
                      {"distilled_acc": 0.375, "random_acc": 0.25, "n_support": 6, "n_test": 12,
                       "eval_kernel": {"name": "rf-fc", "width": 16}})
    write_run(run / "baselines" / "kmeans", make_set(seed=6))
    paths, page, md, _ = build(run)
    for text in (page, md):
        assert "61.25 (1 seed, 12 test images)" in text and "± 0.00" not in text
        assert "RFAD (kip with the random-feature kernel rf-fc)" in text
        assert "50.00 (12 test images)" in text and "37.50 (12 test images)" in text  # distilled, random baseline
        assert "on 12 test images: 25.00%" in text
    assert "<title>kdistill report: toy RFAD" in page
    assert page.count("<td>–</td>") == 3  # kmeans: no KRR result; baselines: no NN result
    plain = make_set()  # no NN results, no history: no curves, protocols or machines sections
    plain.history = {}
    _, page, md, _ = build(write_run(tmp_path / "plain", plain))
    for section in ("<h2>Curves</h2>", "Finite-network protocols", "Machines of the NN results", "NN accuracies"):
        assert section not in page
    assert "<h2>Metrics</h2>" in page and "kip" in md


def test_report_leaves_out_a_result_of_an_earlier_set(tmp_path):
    """A new run replaced distilled.npz; the old nn_fc.json (old digest) stays beside it."""
    old = make_set(seed=0)
    run = write_run(tmp_path / "run", old, {"fc": make_result(old)})
    make_set(seed=1).save(run / "distilled.npz")  # the new set
    paths, page, md, caught = build(run)
    assert "62.50" not in page and "62.50" not in md  # the old accuracy is not shown
    assert "stale result not shown" in page and "stale result not shown" in md
    (w,) = paths["warnings"]
    assert "nn_fc.json was measured on a different support set" in w and "kdistill evaluate" in w
    assert '<p class="warning"><strong>Warning:</strong>' in page and "measured on a different support set" in page
    assert "> **Warning:**" in md
    from kdistill.report import ReportWarning

    assert [c.category for c in caught] == [ReportWarning]
    r = run_cli("report", run)  # the CLI prints it on stderr and still writes the report
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "measured on a different support set" in r.output


def test_report_checks_baseline_digests_too(tmp_path):
    art = make_set()
    run = write_run(tmp_path / "run", art, {"fc": make_result(art)})
    base = make_set(seed=5)
    write_run(run / "baselines" / "random", base, {"fc": make_result(make_set(seed=6), accs=(0.1, 0.3))})
    paths, page, md, _ = build(run)
    assert "62.50 ± 1.25" in page and "20.00 ± 10.00" not in page
    assert len(paths["warnings"]) == 1 and "baselines/random/nn_fc.json" in paths["warnings"][0]


def test_report_marks_a_diverged_result(tmp_path):
    art = make_set()
    res = make_result(art)
    res["runs"][1]["diverged"] = True
    res["runs"][1]["loss"] = [1.0, float("nan")]
    run = write_run(tmp_path / "run", art, {"fc": res})
    _, page, md, _ = build(run)
    assert "diverged (no accuracy)" in page and "62.50" not in page and "diverged (no accuracy)" in md


# ---------------------------------------------------------------- §5: malformed NN results

@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r.update(format_version="x"), 'malformed format_version (got "x"'),
    (lambda r: r.update(format_version=True), "malformed format_version (got true"),
    (lambda r: r.update(format_version=7), "format version 7, newer"),
    (lambda r: r.pop("protocol"), "it lacks 'protocol'"),
    (lambda r: r.pop("runs"), "it lacks 'runs'"),
    (lambda r: r.update(runs="x"), "'runs' must be a list with one entry per seed (2)"),
    (lambda r: r.update(runs=[1, 2]), "runs[0] must be an object"),
    (lambda r: r["runs"][0].pop("loss"), "runs[0].loss must be a list of numbers"),
    (lambda r: r.update(protocol=[1]), "its protocol is invalid: an NN protocol must be a dict, got list"),
    (lambda r: r["protocol"].update(width=0), "its protocol is invalid: NNProtocol.width must be an integer >= 1"),
    (lambda r: r["protocol"].update(lr=2.0), "does not match its protocol"),
    (lambda r: r.update(mean=0.999), "'mean'/'std' do not match 'test_acc': the file was edited"),
    (lambda r: r.update(test_acc=["a", 1]), "'test_acc' must be a non-empty list of accuracies in [0, 1]"),
    (lambda r: r.update(test_acc=[0.5]), "'test_acc' has 1 entries but the protocol has 2 seeds"),
    (lambda r: r.update(support={"n": 6}), "'support' must be an object with 'n' (int) and 'digest' (str)"),
    (lambda r: r.update(n_test="12"), "'n_test' must be an integer >= 1"),
])
def test_malformed_nn_result_is_an_artifact_error(tmp_path, edit, fragment):
    from kdistill.nn.train import read_result

    art = make_set()
    res = make_result(art)
    edit(res)
    run = write_run(tmp_path / "run", art, {"fc": res})
    with pytest.raises(ArtifactError) as info:
        read_result(run / "nn_fc.json")
    assert fragment in str(info.value) and "nn_fc.json" in str(info.value)
    assert_cli_error(run_cli("report", run), fragment)


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe not utf-8", "cannot read NN result"),
    (b"[1, 2]", "is not a kdistill NN result"),
    (b'"kdistill-nn-eval"', "is not a kdistill NN result"),
    (b"{", "cannot read NN result"),
])
def test_undecodable_nn_result(tmp_path, content, fragment):
    run = write_run(tmp_path / "run", make_set())
    (run / "nn_fc.json").write_bytes(content)
    assert_cli_error(run_cli("report", run), fragment, "nn_fc.json")


# ---------------------------------------------------------------- §5: class ids and names in the report

def test_class_names_with_dollar_signs_are_drawn_literally(tmp_path):
    from kdistill.plotting import save_image_grid

    names = ["$5 bill", r"$\frac{$", "a $x^$ b"]  # unbalanced / invalid TeX for mathtext
    art = make_set(class_names=names)
    path = save_image_grid(art.images * 40 + 128, art.class_ids, tmp_path / "g.png", class_names=names,
                           title="$ title $x^$")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = write_run(tmp_path / "run", art, {"fc": make_result(art)})
    (run / "baselines" / "$x^$").mkdir(parents=True)  # a set name that is invalid TeX, in a legend
    b = make_set(seed=3, class_names=names)
    write_run(run / "baselines" / "$x^$", b, {"fc": make_result(b)})
    r = run_cli("report", run)
    assert r.exit_code == 0, r.output
    assert (run / "report_files" / "grid.png").is_file() and (run / "report_files" / "nn_fc_curves.png").is_file()


@pytest.mark.parametrize("ids", [[0, 0, 1, 1, 2, 5], [0, 0, 1, 1, 2, -1]])
def test_out_of_range_class_ids_in_report(tmp_path, ids):
    from kdistill.report import check_classes

    art = make_set(class_ids=ids)
    with pytest.raises(ArtifactError, match=r"class id (5|-1) but its labels have 3 classes \(ids 0\.\.2\)"):
        check_classes(art, tmp_path / "x.npz")
    run = write_run(tmp_path / "run", art)
    assert_cli_error(run_cli("report", run), "0..2")  # refused at load or by the report


def test_class_names_of_wrong_length_in_report(tmp_path):
    from kdistill.report import check_classes

    with pytest.raises(ArtifactError, match="class_names of 2 entries; expected a list of 3 strings"):
        check_classes(make_set(class_names=["a", "b"]), tmp_path / "x.npz")


def test_image_grid_rejects_ids_without_names(tmp_path):
    from kdistill.plotting import save_image_grid

    art = make_set()
    with pytest.raises(DataError, match=r"class id 2 is out of range: expected 0\.\.1 \(2 class names\)"):
        save_image_grid(art.images, art.class_ids, tmp_path / "g.png", class_names=["a", "b"])
    with pytest.raises(DataError, match="class id -1 is out of range"):
        save_image_grid(art.images, np.array([-1, 0, 0, 1, 1, 2]), tmp_path / "g.png")


# ---------------------------------------------------------------- §5: report.md escapes what it copies in

def test_report_escapes_copied_in_text(tmp_path):
    from kdistill.report import md_escape

    art = make_set(method="kip|<b>*bold*</b>", dataset="<script>alert(1)</script>_x_")
    run = write_run(tmp_path / "run", art, {"fc": make_result(art)})
    bad = "a|b<i>[x](e)`c`"
    b = make_set(seed=3)
    write_run(run / "baselines" / bad, b, {"fc": make_result(b)})
    _, page, md, _ = build(run)
    outside_code = re.sub(r"^(`{3,})[a-z]*\n.*?^\1$", "", md, flags=re.S | re.M)  # fenced blocks are literal
    assert "```toml" in md and "<script>alert(1)</script>" in md  # the config, verbatim in its block
    for text in (page, outside_code):
        assert "<script>" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;script&gt;" in page and "&lt;i&gt;" in page
    # markdown: every table row has exactly the header's number of unescaped cell separators
    rows = [line for line in md.splitlines() if line.startswith("|")]
    counts = {len(re.findall(r"(?<!\\)\|", line)) for line in rows}
    assert len(rows) == 4 and counts == {len(re.findall(r"(?<!\\)\|", rows[0]))}
    assert md_escape(bad) in md and md_escape("kip|<b>*bold*</b>") in md
    assert md.splitlines()[0] == "# " + md_escape("kdistill report: <script>alert(1)</script>_x_ "
                                                  "kip|<b>*bold*</b> ipc=2")
    assert md_escape("a|b<i>[x](e)`c`") == r"a\|b\<i\>\[x\](e)\`c\`"


def test_md_code_block_cannot_be_closed_by_its_content():
    from kdistill.report import md_code_block

    lines = md_code_block("a\n```\nb ````` c", "toml")
    assert lines[0] == "``````toml" and lines[-1] == "``````"


# ---------------------------------------------------------------- §5: --protocol files

@pytest.mark.parametrize("name, content, fragment", [
    ("p.json", b"[1, 2]", "must hold a JSON object of protocol fields"),
    ("p.json", b'"convnet"', "got a JSON string"),
    ("p.json", b"3", "got a JSON number"),
    ("p.json", b"{", "is not valid JSON"),
    ("p.json", b"\xff\xfe", "is not UTF-8 text"),
    ("p.toml", b"width = [", "is not valid TOML"),
    ("p.json", b'{"protocol": "x"}', "got a JSON string"),
    ("p.json", b'{"widht": 3}', "unknown NN protocol fields: widht"),
])
def test_bad_protocol_files_are_config_errors(tmp_path, name, content, fragment):
    from kdistill.nn.commands import read_protocol_file

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        read_protocol_file(path)
    art = write_run(tmp_path / "run", make_set())
    assert_cli_error(run_cli("evaluate", art, "--nn", "fc", "--protocol", path, "--no-progress"), fragment)


# ---------------------------------------------------------------- §4: protocol numbers

@pytest.mark.parametrize("field, value, shown", [
    ("lr", float("inf"), "inf"), ("lr", float("nan"), "nan"), ("weight_decay", float("inf"), "inf"),
    ("momentum", float("-inf"), "-inf"), ("lr", np.float64(np.inf), "inf"), ("width", np.int64(0), "0"),
    ("steps", np.int64(-2), "-2"), ("seeds", [np.int64(1), np.int64(1)], "[1, 1]"),
])
def test_protocol_numbers_must_be_finite_and_are_shown_plainly(field, value, shown):
    with pytest.raises(ConfigError) as info:
        NNProtocol(**{field: value})
    msg = str(info.value)
    assert f"NNProtocol.{field} must be" in msg and msg.endswith(f"got {shown}") and "np." not in msg


def test_protocol_accepts_numpy_numbers():
    p = NNProtocol(width=np.int64(8), lr=np.float32(0.5), seeds=[np.int64(2)])
    assert (p.width, p.lr, p.seeds) == (8, 0.5, (2,)) and type(p.width) is int


@pytest.mark.parametrize("flag", ["lr=inf", "weight_decay=inf", "lr=nan", "momentum=-inf"])
def test_cli_rejects_non_finite_protocol_numbers(tmp_path, flag):
    run = write_run(tmp_path / "run", make_set())
    r = run_cli("evaluate", run, "--nn", "fc", "-p", flag, "--no-progress")
    assert_cli_error(r, f"NNProtocol.{flag.split('=')[0]} must be a finite number")
    assert "± " not in r.output and not (run / "nn_fc.json").exists()


# ---------------------------------------------------------------- §4: diverged networks

def prepared_toy():
    from kdistill.runtime.components import PreparedData

    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4, 4, 1)).astype(np.float32)
    y = np.arange(30) % 3
    return PreparedData(x_train=x, y_train=y, Y_train=np.eye(3)[y] - 1 / 3, x_test=x[:12], y_test=y[:12],
                        num_classes=3, transform=None, info={})


@pytest.mark.parametrize("lr, steps", [(1e12, 20), (1e30, 1)])
def test_diverged_network_is_an_error_not_an_accuracy(lr, steps):
    from kdistill.nn.train import evaluate_nn

    p = NNProtocol.default("fc", width=16, lr=lr, steps=steps, seeds=[0], eval_every=0, schedule="constant")
    with pytest.raises(NumericalError, match=r"finite-network training diverged for seed 0: .* no accuracy is "
                                             r"reported for a diverged run\. Lower -p lr"):
        evaluate_nn(make_set(), p, data=prepared_toy())


def test_train_one_flags_a_network_that_blew_up_at_the_last_step():
    from kdistill.nn.train import make_targets, train_one

    art = make_set()
    p = NNProtocol.default("fc", width=16, lr=1e30, steps=1, seeds=[0], eval_every=0, schedule="constant")
    d = prepared_toy()
    run = train_one(p, 0, art.images, make_targets(art.labels, art.class_ids, p), d.x_test, d.y_test, 3)
    assert all(np.isfinite(run["loss"])) and run["diverged"]


# ---------------------------------------------------------------- §5: label_mode=class with bad ids

@pytest.mark.parametrize("ids, fragment", [
    ([0, 0, 1, 1, 2, 7], "got 7 (1 of 6 ids out of range)"),
    ([0, 0, 1, 1, 2, -3], "got -3 (1 of 6 ids out of range)"),
    ([0, 0, 1], "needs one integer class id per support example (6), got int64 (3,)"),
    (np.zeros(6, np.float32), "got float32 (6,)"),
])
def test_label_mode_class_rejects_bad_class_ids(ids, fragment):
    from kdistill.nn.train import make_targets

    p = NNProtocol.default("fc", label_mode="class")
    with pytest.raises(DataError) as info:
        make_targets(make_set().labels, np.asarray(ids), p)
    assert fragment in str(info.value) and "label_mode='argmax'" in str(info.value)


# ---------------------------------------------------------------- §4: degenerate kernels

def test_kernel_degeneracy_criterion():
    from kdistill.core.krr import kernel_degeneracy

    eps32 = float(np.finfo(np.float32).eps)
    assert kernel_degeneracy(np.ones((4, 4)), "float32") == "constant"
    assert kernel_degeneracy(np.zeros((4, 4)), "float32") == "constant"
    assert kernel_degeneracy(1 - 2 * eps32 * np.eye(4), "float32") == "constant"  # rounding noise only
    assert kernel_degeneracy(1 - 2 * eps32 * np.eye(4), "float64") is None  # real structure in float64
    assert kernel_degeneracy(np.eye(4), "float32") == "diagonal"
    assert kernel_degeneracy(np.eye(4) + 1e-20 * (1 - np.eye(4)), "float32") is None  # tiny but representable
    assert kernel_degeneracy(np.eye(4) + 1e-45 * (1 - np.eye(4)), "float32") == "diagonal"
    assert kernel_degeneracy(np.array([[2.0, 1.0], [1.0, 2.0]]), "float32") is None
    assert kernel_degeneracy(np.ones((1, 1)), "float32") is None  # one example: nothing to tell


@pytest.fixture(scope="module")
def digits_subset():
    from kdistill.runtime.components import prepare_data
    from kdistill.core.config import DistillConfig

    data = prepare_data(DistillConfig())
    idx = np.concatenate([np.flatnonzero(data.y_train == c)[:5] for c in range(10)])
    return data, idx


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
@pytest.mark.parametrize("gamma, fragment", [
    (1e-9, "is the same value up to float32 rounding (K is numerically rank 1)"),
    (1e5, "underflowed to 0 in float32 (K_ss is numerically diagonal)"),
    (2000.0, "the kernel with every support example is 0 (underflow), so their predictions tie"),
])
def test_degenerate_rbf_kernel_is_an_error_naming_gamma(registry, digits_subset, backend_name, gamma, fragment):
    from kdistill.core.krr import krr_predict
    from kdistill.plugins.kernels.rbf import RBFKernel

    data, idx = digits_subset
    b = registry.backend(backend_name)
    solver = registry.get("solvers", "exact").factory().bind(b)
    with pytest.raises(NumericalError) as info:
        krr_predict(RBFKernel(gamma=gamma).bind(b), solver, data.x_train[idx], data.Y_train[idx], data.x_test, 1e-6)
    msg = str(info.value)
    assert fragment in msg and f"gamma={gamma:g} is too" in msg and "RBFKernel(gamma=" in msg
    # a sensible gamma scores well above chance
    from kdistill.core.krr import accuracy

    pred = krr_predict(RBFKernel(gamma=1.0).bind(b), solver, data.x_train[idx], data.Y_train[idx], data.x_test, 1e-6)
    assert accuracy(pred, data.y_test) > 0.6


def test_all_zero_labels_are_named(registry, digits_subset):
    from kdistill.core.krr import krr_predict
    from kdistill.plugins.kernels.rbf import RBFKernel

    data, idx = digits_subset
    b = registry.backend("jax")
    solver = registry.get("solvers", "exact").factory().bind(b)
    with pytest.raises(DataError, match="the support labels are all 0"):
        krr_predict(RBFKernel().bind(b), solver, data.x_train[idx], 0 * data.Y_train[idx], data.x_test, 1e-6)


# ---------------------------------------------------------------- §4: data fingerprints

def write_mnist(root: Path, x_train, y_train, x_test, y_test) -> Path:
    def idx(arr):
        arr = np.asarray(arr, np.uint8)
        head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        return gzip.compress(head + arr.tobytes())

    root.mkdir(parents=True, exist_ok=True)
    for name, arr in {"train-images-idx3-ubyte.gz": x_train, "train-labels-idx1-ubyte.gz": y_train,
                      "t10k-images-idx3-ubyte.gz": x_test, "t10k-labels-idx1-ubyte.gz": y_test}.items():
        (root / name).write_bytes(idx(arr))
    return root


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A tiny MNIST-format dataset (60 train, 30 test), a run distilled from it, and
    altered copies: inverted images, train and test files swapped, one label changed."""
    from kdistill.cli import _write_outputs
    from kdistill.core.config import DistillConfig

    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 120, (60, 28, 28), dtype=np.uint8)
    y_tr = np.arange(60) % 10
    x_te = rng.integers(0, 120, (30, 28, 28), dtype=np.uint8)
    y_te = np.arange(30) % 10
    dirs = {
        "orig": write_mnist(root / "orig", x_tr, y_tr, x_te, y_te),
        "inverted": write_mnist(root / "inverted", 255 - x_tr, y_tr, 255 - x_te, y_te),
        "swapped": write_mnist(root / "swapped", x_te, y_te, x_tr, y_tr),
        "relabelled": write_mnist(root / "relabelled", x_tr, y_tr, x_te, (y_te + 1) % 10),
    }
    cfg = kdistill.make_config(dataset="mnist", data_dir=str(dirs["orig"]), ipc=1, steps=2, target_batch=20,
                               eval_every=0, kernel="rbf", backend="torch")
    result = kdistill.distill(cfg)
    run = root / "run"
    _write_outputs(run, DistillConfig.from_dict(result.config), result, grid=False)
    return run, dirs


def test_artifact_records_a_data_fingerprint(mnist_run):
    run, dirs = mnist_run
    fp = kdistill.load(run / "distilled.npz").dataset["fingerprint"]
    assert fp["version"] == 1 and fp["train"]["n"] == 60 and fp["test"]["n"] == 30
    assert len(fp["train"]["sha256"]) == 64 and len(fp["test"]["mean"]) == 1


def test_evaluation_on_the_same_data_passes(mnist_run):
    from kdistill.runtime.evaluate import evaluate_artifact

    run, dirs = mnist_run
    res = evaluate_artifact(kdistill.load(run / "distilled.npz"))
    assert res["n_test"] == 30 and 0 <= res["distilled_acc"] <= 1


@pytest.mark.parametrize("which, fragments", [
    ("inverted", ["train split: per-channel pixel mean", "test split: per-channel pixel mean",
                  "(e.g. inverted, rescaled or other images)"]),
    ("swapped", ["train split: 30 images now, 60 when distilled", "test split: 60 images now, 30 when distilled"]),
    ("relabelled", ["test split: same size and pixel statistics, but different images or labels"]),
])
def test_evaluation_on_other_data_is_refused(mnist_run, which, fragments):
    from kdistill.runtime.evaluate import DataMismatchWarning, evaluate_artifact

    run, dirs = mnist_run
    art = kdistill.load(run / "distilled.npz")
    with pytest.raises(DataError) as info:
        evaluate_artifact(art, {"data_dir": str(dirs[which])})
    msg = str(info.value)
    assert "differ from the data this artifact was distilled from" in msg and "--allow-data-mismatch" in msg
    for f in fragments:
        assert f in msg
    assert_cli_error(run_cli("evaluate", run, "--data-dir", dirs[which]), "--allow-data-mismatch", fragments[0])
    # the finite-network evaluation and the baselines refuse them too, before any training
    r = run_cli("evaluate", run, "--nn", "fc", "-p", "steps=1", "--seeds", "0", "--data-dir", dirs[which],
                "--no-progress", "--out", run / f"nn_{which}.json")
    assert_cli_error(r, "differ from the data this artifact was distilled from", fragments[0])
    assert not (run / f"nn_{which}.json").exists()
    assert_cli_error(run_cli("baseline", run, "--kind", "random", "--data-dir", dirs[which],
                             "--out", run / "b"), fragments[0])
    # an explicit override evaluates, with a warning that names the difference
    with pytest.warns(DataMismatchWarning, match=re.escape(fragments[0])):
        evaluate_artifact(art, {"data_dir": str(dirs[which])}, check_data=False)


def test_nn_evaluation_allows_other_data_on_request(mnist_run):
    run, dirs = mnist_run
    r = run_cli("evaluate", run, "--nn", "fc", "-p", "steps=1", "-p", "width=8", "--seeds", "0", "--data-dir",
                dirs["swapped"], "--allow-data-mismatch", "--no-progress", "--out", run / "nn_x.json")
    assert r.exit_code == 0, r.output
    assert "warning: the 'mnist' data loaded" in r.output and "test split: 60 images now, 30" in r.output
    assert json.loads((run / "nn_x.json").read_text())["n_test"] == 60
    from kdistill.runtime.evaluate import DataMismatchWarning

    with pytest.warns(DataMismatchWarning, match="train split: per-channel pixel mean"):
        r = run_cli("evaluate", run, "--data-dir", dirs["inverted"], "--allow-data-mismatch")
    assert r.exit_code == 0 and "KRR test accuracy" in r.output, r.output


def test_artifact_without_fingerprint_is_checked_on_sizes(mnist_run, tmp_path):
    from kdistill.runtime.evaluate import evaluate_artifact

    run, dirs = mnist_run
    art = kdistill.load(run / "distilled.npz")
    old = attrs.evolve(art, dataset={k: v for k, v in art.dataset.items() if k != "fingerprint"})
    evaluate_artifact(old, {"data_dir": str(dirs["inverted"])})  # sizes match: nothing to compare
    with pytest.raises(DataError, match="test split: 60 images now, 30 when distilled"):
        evaluate_artifact(old, {"data_dir": str(dirs["swapped"])})


def test_errors_are_kdistill_errors():
    assert issubclass(DataError, KdistillError) and issubclass(NumericalError, KdistillError)


def test_krr_messages_show_numbers_as_written(registry, digits_subset):
    from kdistill.core.krr import krr_predict
    from kdistill.plugins.kernels.rbf import RBFKernel

    data, idx = digits_subset
    b = registry.backend("jax")
    solver = registry.get("solvers", "exact").factory().bind(b)
    args = (RBFKernel().bind(b), solver, data.x_train[idx], data.Y_train[idx], data.x_test)
    with pytest.raises(ConfigError, match=r"ridge must be a finite number >= 0, got -1\.0$"):
        krr_predict(*args, np.float32(-1))
    with pytest.raises(ConfigError, match=r"block_size must be an integer >= 1, got 0$"):
        krr_predict(*args, 1e-6, block_size=np.int64(0))


def test_nn_result_is_sealed_and_edits_are_refused(tmp_path):
    """nn_*.json carries an integrity record: a result whose accuracies were all edited
    consistently (mean and std recomputed, so the structural checks pass) or whose record
    was removed is refused by the report, naming the file."""
    from kdistill.nn.train import read_result

    art = make_set()
    run = write_run(tmp_path / "run", art, {"fc": make_result(art)})
    assert read_result(run / "nn_fc.json")["mean"] == pytest.approx(0.625)
    sealed = json.loads((run / "nn_fc.json").read_text())
    edited = {**sealed, "test_acc": [0.999, 0.999], "mean": 0.999, "std": 0.0}
    edited["runs"] = [{**r, "test_acc": 0.999, "curve_acc": [0.999]} for r in sealed["runs"]]
    (run / "nn_fc.json").write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="failed its checksum"):
        read_result(run / "nn_fc.json")
    assert_cli_error(run_cli("report", run), "nn_fc.json")
    unsealed = {k: v for k, v in sealed.items() if k != "integrity"}
    (run / "nn_fc.json").write_text(json.dumps(unsealed))
    with pytest.raises(ArtifactError, match="no integrity record"):
        read_result(run / "nn_fc.json")
