"""Tests of the ``kdistill distill`` command line: written files, the recorded config,
Label Solve, flag precedence and the exit code / message of bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.core.config import DistillConfig
from kdistill.datasets.mnist import IDX_FILES

FAST = ["--steps", "3", "--ipc", "1", "--target-batch", "200", "--eval-every", "0", "--no-progress"]
ACC_LINE = re.compile(r"KRR test accuracy: distilled ([0-9.]+)%\s+vs\s+random real subset ([0-9.]+)%")


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def check_accuracy_line(stdout: str, metrics: dict) -> None:
    m = ACC_LINE.search(stdout)
    assert m, stdout
    assert m.group(1) == f"{100 * metrics['distilled_acc']:.2f}"
    assert m.group(2) == f"{100 * metrics['random_acc']:.2f}"


@pytest.fixture(scope="module")
def kip_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("distill", *FAST, "--seed", "5", "--learn-labels", "-s", "kernel.depth=2",
                     "-s", "eval_test_size=100", "--out", str(out))
    return out, result


def test_distill_writes_all_files(kip_out):
    out, result = kip_out
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "distilled.npz", "grid.png", "metrics.json"]
    assert f"wrote {out}/" in result.stdout
    assert "kip on digits (1437 train / 360 test), ipc=1" in result.stdout


def test_distill_grid_png_is_a_real_image(kip_out):
    import matplotlib.image as mpimg

    out, _ = kip_out
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out / "grid.png")
    h, w = img.shape[:2]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert h >= 100 and w >= 50
    assert h > w  # one row per class (10), one column (ipc=1)
    assert float(img[..., :3].std()) > 0.05  # not a blank canvas


def test_distill_config_toml_is_the_config_used(kip_out):
    out, _ = kip_out
    cfg = DistillConfig.from_file(out / "config.toml")
    expected = DistillConfig(
        steps=3, ipc=1, target_batch=200, eval_every=0, seed=5, learn_labels=True,
        kernel={"name": "fc", "kind": "ntk", "depth": 2}, eval_test_size=100,
    )
    assert cfg == expected
    artifact = kdistill.load(out / "distilled.npz")
    assert DistillConfig.from_dict(artifact.config) == cfg
    assert artifact.seed == 5 and len(artifact.images) == 10
    assert artifact.history["step"] == [1, 2, 3]


def test_distill_metrics_match_stdout_and_artifact(kip_out):
    out, result = kip_out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "kip"
    assert 0.0 <= metrics["distilled_acc"] <= 1.0 and 0.0 <= metrics["random_acc"] <= 1.0
    assert metrics["init_acc"] is None  # eval_every=0: no intermediate evaluation
    assert metrics == kdistill.load(out / "distilled.npz").metrics
    check_accuracy_line(result.stdout, metrics)


def test_flag_precedence_config_file_then_flags_then_set(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text(
        'ipc = 2\nsteps = 50\ntarget_batch = 200\neval_every = 0\nseed = 9\n'
        '[kernel]\nname = "rbf"\ngamma = 0.5\n'
    )
    out = tmp_path / "run"
    result = run_cli("distill", "--config", str(conf), "--steps", "2", "-s", "kernel.gamma=2.0",
                     "-s", "steps=1", "--no-progress", "--no-grid", "--out", str(out))
    assert result.exit_code == 0, result.output
    cfg = DistillConfig.from_file(out / "config.toml")
    assert (cfg.ipc, cfg.seed, cfg.target_batch) == (2, 9, 200)  # from the file
    assert cfg.steps == 1  # -s beats --steps beats the file
    assert cfg.kernel.name == "rbf" and cfg.kernel.params == {"gamma": 2.0}
    assert not (out / "grid.png").exists()  # --no-grid
    assert len(kdistill.load(out / "distilled.npz").history["step"]) == 1


def _label_solve(tmp_path, backend: str):
    out = tmp_path / backend
    result = run_cli("distill", "--method", "label-solve", "--backend", backend, "--dtype", "float64",
                     "--ipc", "2", "--target-batch", "300", "--no-progress", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, result


def test_label_solve(tmp_path):
    out, result = _label_solve(tmp_path, "jax")
    assert "label-solve on digits" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "label-solve" and metrics["n_targets"] == 300
    check_accuracy_line(result.stdout, metrics)
    cfg = DistillConfig.from_file(out / "config.toml")
    assert cfg.method == "label-solve" and cfg.backend == "jax" and cfg.dtype == "float64"
    art = kdistill.load(out / "distilled.npz")
    # the solved labels are not the initial centered one-hot labels
    one_hot = np.full((20, 10), -0.1, np.float32)
    one_hot[np.arange(20), art.class_ids] += 1.0
    assert art.labels.shape == (20, 10) and not np.allclose(art.labels, one_hot, atol=1e-3)
    assert (out / "grid.png").is_file()
    # Label Solve is closed form: the torch backend gives the same labels and accuracy
    out_t, _ = _label_solve(tmp_path, "torch")
    art_t = kdistill.load(out_t / "distilled.npz")
    np.testing.assert_array_equal(art_t.images, art.images)
    np.testing.assert_allclose(art_t.labels, art.labels, rtol=1e-4, atol=1e-5)
    metrics_t = json.loads((out_t / "metrics.json").read_text())
    assert metrics_t["distilled_acc"] == metrics["distilled_acc"]
    assert metrics_t["random_acc"] == metrics["random_acc"]


# ------------------------------------------------------------------ bad input


def assert_usage_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


def test_unknown_kernel_lists_available(tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", *FAST, "--kernel", "nope", "--out", str(out))
    from kdistill.core.registry import Registry

    available = ", ".join(Registry().names("kernels"))
    assert "fc" in available and "rbf" in available
    assert_usage_error(result, "unknown kernel 'nope'", f"available kernels: {available}", "kdistill plugins")
    assert not out.exists()  # nothing written for a failed config


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--ipc", "0"], ["ipc must be an integer >= 1, got 0"]),
        (["--lr", "-1"], ["lr must be a finite number > 0, got -1.0"]),
        (["--ridge", "-0.5"], ["ridge must be a finite number >= 0"]),
        (["--ipc", "500"], ["ipc=500 but class", "training examples"]),
        (["--solver", "qr"], ["unknown solver 'qr'", "available solvers: cholesky, exact"]),
        (["--backend", "numpy"], ["unknown backend 'numpy'", "available backends: jax, torch"]),
        (["-s", "nokey=1"], ["unknown config key(s) nokey", "valid keys:", "ipc", "kernel"]),
        (["-s", "kernel.width=3"], ["kernel 'fc' has no parameter(s) width", "accepted: kind, depth, sw2, sb2"]),
        (["-s", "kernel.depth=0"], ["FCKernel.depth must be an integer >= 1, got 0"]),
        (["-s", "ipc"], ["must look like key=value"]),
        (["--config", "does-not-exist.toml"], ["config file", "does-not-exist.toml", "does not exist"]),
    ],
)
def test_bad_input_exits_2_with_message(args, fragments, tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", *FAST, *args, "--out", str(out))
    assert_usage_error(result, *fragments)
    assert not out.exists()


def test_mnist_without_data_dir_names_required_files(tmp_path):
    result = run_cli("distill", *FAST, "--dataset", "mnist", "--out", str(tmp_path / "run"))
    assert_usage_error(result, "dataset 'mnist'", "--data-dir is required", *IDX_FILES)


def test_mnist_with_incomplete_data_dir_names_missing_files(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    (data / IDX_FILES[0]).write_bytes(b"")
    result = run_cli("distill", *FAST, "--dataset", "mnist", "--data-dir", str(data),
                     "--out", str(tmp_path / "run"))
    msg = assert_usage_error(result, "expected files not found", str(data))
    missing = msg.split("missing: ", 1)[1]
    for name in IDX_FILES[1:]:
        assert name in missing
    assert IDX_FILES[0] not in missing
    nowhere = tmp_path / "nowhere"
    result = run_cli("distill", *FAST, "--dataset", "mnist", "--data-dir", str(nowhere),
                     "--out", str(tmp_path / "run"))
    assert_usage_error(result, str(nowhere), "no such directory")


def test_malformed_config_file(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("ipc = [\n")
    result = run_cli("distill", "--config", str(conf), "--no-progress", "--out", str(tmp_path / "run"))
    assert_usage_error(result, "malformed TOML config")


# ------------------------------------------------------------ issue 15


def test_component_flag_on_a_config_keeps_or_resets_its_settings(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('steps = 1\nipc = 1\ntarget_batch = 200\neval_every = 0\n'
                    '[kernel]\nname = "fc"\nkind = "nngp"\ndepth = 3\n')
    same = run_cli("distill", "--config", str(conf), "--kernel", "fc", "--no-progress", "--no-grid",
                   "--out", str(tmp_path / "same"))
    assert same.exit_code == 0, same.output
    saved = DistillConfig.from_file(tmp_path / "same" / "config.toml")
    assert saved.kernel.to_dict() == {"name": "fc", "kind": "nngp", "depth": 3}  # not depth 1
    assert "note:" not in same.stderr
    assert kdistill.load(tmp_path / "same" / "distilled.npz").metrics["kernel"]["depth"] == 3
    other = run_cli("distill", "--config", str(conf), "--kernel", "rbf", "--no-progress", "--no-grid",
                    "--out", str(tmp_path / "other"))
    assert other.exit_code == 0, other.output
    assert "note: kernel 'rbf' replaces the configured kernel 'fc'" in other.stderr
    assert "drops its settings (kind='nngp', depth=3)" in other.stderr
    assert DistillConfig.from_file(tmp_path / "other" / "config.toml").kernel.to_dict() == {"name": "rbf"}


def test_non_utf8_config_exits_2(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_bytes(b"ipc = 1\n# \xff\xfe\n")
    result = run_cli("distill", "--config", str(conf), *FAST, "--out", str(tmp_path / "run"))
    assert_usage_error(result, "is not UTF-8 text (byte 0xff at offset 10)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--out", "--config", "--data-dir"])
def test_over_long_paths_exit_2(flag, tmp_path):
    long = str(tmp_path / ("x" * 300))
    args = ["--dataset", "mnist"] if flag == "--data-dir" else []
    result = run_cli("distill", *FAST, *args, flag, long, *([] if flag == "--out" else ["--out", str(tmp_path / "r")]))
    assert_usage_error(result, "has a name of 300 bytes", "use a shorter path")
    assert "Errno 36" not in result.output


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ("[1]", "[1]"), ("0", "0")])
def test_evaluate_bad_test_size_exits_2(kip_out, value, shown):
    out, _ = kip_out
    result = run_cli("evaluate", str(out), "-s", f"test_size={value}")
    assert_usage_error(result, f"test_size must be an integer >= 1, got {shown}")


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_baseline_bad_seed_exits_2(kip_out, seed, tmp_path):
    out, _ = kip_out
    result = run_cli("baseline", str(out), "--seed", seed, "--out", str(tmp_path / "b"))
    assert_usage_error(result, f"seed must be an integer from 0 to 4294967295, got {seed}")
    assert not (tmp_path / "b").exists()


def test_evaluate_kernel_flag_keeps_the_artifacts_kernel_parameters(kip_out):
    out, _ = kip_out  # distilled with kernel.depth=2
    result = run_cli("evaluate", str(out), "--kernel", "fc", "-s", "test_size=50")
    assert result.exit_code == 0, result.output
    assert "kernel {'name': 'fc', 'kind': 'ntk', 'depth': 2}, 50 test images" in result.stdout, result.stdout
