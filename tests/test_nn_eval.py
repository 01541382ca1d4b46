"""Finite-network evaluation, baselines and reports (``kdistill evaluate --nn``,
``kdistill baseline``, ``kdistill report``): protocol validation and round trips,
bit-identical determinism, learned labels as regression targets, k-means/herding
against references, and a report that contains the measured numbers."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

import kdistill  # noqa: E402
from kdistill.baselines import herding_select, kmeans_centroids, make_baseline, random_subset  # noqa: E402
from kdistill.cli import main  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.nn.protocol import NNProtocol  # noqa: E402
from kdistill.nn.train import make_targets, train_one  # noqa: E402

TINY_CONV = dict(model="convnet", width=4, depth=2, steps=12, batch_size=8, seeds=(0, 1), eval_every=5,
                 curve_test_size=50)
TINY_FC = ["-p", "width=32", "-p", "steps=25", "-p", "eval_every=10", "-p", "lr=0.05"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one torch thread is faster than two on a loaded machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- protocol

def test_protocol_round_trip_and_id():
    p = NNProtocol.default("fc", lr=0.05, seeds=[3, 4, 5], loss="ce", label_mode="argmax")
    d = p.to_dict()
    assert d["seeds"] == [3, 4, 5] and d["version"] == 1 and d["width"] == 1024 and d["norm"] == "none"
    q = NNProtocol.from_dict(json.loads(json.dumps(d)))
    assert q == p and q.protocol_id == p.protocol_id
    assert p.with_overrides(["lr=0.1"]).protocol_id != p.protocol_id
    assert p.with_overrides(["seeds=[7]"]).seeds == (7,)
    assert "fc w1024 d1" in p.describe() and p.protocol_id in p.describe()


@pytest.mark.parametrize("fields, match", [
    ({"loss": "ce"}, "needs hard targets"),
    ({"model": "fc", "norm": "instance"}, "no spatial axes"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"lr": 0.0}, "lr"),
    ({"momentum": 1.5}, "momentum"),
    ({"steps": 0}, "steps"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"version": 99}, "newer"),
])
def test_protocol_rejects_bad_fields(fields, match):
    with pytest.raises(ConfigError, match=match):
        NNProtocol(**fields)


def test_protocol_from_dict_rejects_unknown_field():
    with pytest.raises(ConfigError, match="unknown NN protocol fields: widht"):
        NNProtocol.from_dict({**NNProtocol().to_dict(), "widht": 3})


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8, 8, 1)).astype(np.float32)
    ids = np.repeat(np.arange(4), 5)
    x += 2 * ids[:, None, None, None].astype(np.float32)  # separable classes
    labels = np.full((20, 4), -0.25, np.float32)
    labels[np.arange(20), ids] += 1.0
    xt = rng.standard_normal((60, 8, 8, 1)).astype(np.float32)
    yt = np.repeat(np.arange(4), 15)
    xt += 2 * yt[:, None, None, None].astype(np.float32)
    return x, labels, ids, xt, yt


@pytest.mark.parametrize("norm", ["none", "instance", "layer"])
def test_training_is_bit_identical_given_the_seed(toy, norm):
    import torch

    x, labels, _, xt, yt = toy
    p = NNProtocol(**TINY_CONV, norm=norm)
    before = torch.random.get_rng_state()
    a = train_one(p, 0, x, labels, xt, yt, 4)
    b = train_one(p, 0, x, labels, xt, yt, 4)
    c = train_one(p, 1, x, labels, xt, yt, 4)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert a["loss"] == b["loss"] and a["test_acc"] == b["test_acc"] and a["curve_acc"] == b["curve_acc"]
    assert len(a["loss"]) == 12 and a["curve_step"] == [5, 10, 12]
    assert a["loss"] != c["loss"]
    assert a["loss"][-1] < a["loss"][0]  # it trains
    assert not torch.are_deterministic_algorithms_enabled()  # restored


def test_learned_labels_are_regression_targets_not_argmaxed():
    labels = np.array([[0.7, -0.2, 0.1], [0.3, 0.4, -0.9]], np.float32)
    ids = np.array([2, 0])
    art = make_targets(labels, ids, NNProtocol())
    np.testing.assert_array_equal(art, labels)
    arg = make_targets(labels, ids, NNProtocol(label_mode="argmax"))
    np.testing.assert_allclose(arg, [[2 / 3, -1 / 3, -1 / 3], [-1 / 3, 2 / 3, -1 / 3]], rtol=1e-6)
    cls = make_targets(labels, ids, NNProtocol(label_mode="class", loss="ce"))
    assert cls.tolist() == [2, 0] and cls.dtype == np.int64


def test_label_scale_changes_the_result(toy):
    """Targets really reach the loss: scaled labels give different training losses."""
    x, labels, _, xt, yt = toy
    p = NNProtocol(**TINY_CONV)
    a = train_one(p, 0, x, labels, xt, yt, 4)
    b = train_one(p, 0, x, 3 * labels, xt, yt, 4)
    assert b["loss"][0] > 2 * a["loss"][0]


def test_adam_ce_and_mlp_fit_the_support_set(toy):
    x, labels, ids, xt, yt = toy
    p = NNProtocol.default("fc", width=64, steps=40, optimizer="adam", lr=1e-2, loss="ce", label_mode="class",
                           seeds=[0], eval_every=0)
    r = train_one(p, 0, x, make_targets(labels, ids, p), x, ids, 4)  # scored on its own support set
    assert r["test_acc"] == 1.0 and r["curve_step"] == [] and r["loss"][-1] < 0.5 * r["loss"][0]


def test_convnet_too_deep_is_a_config_error(toy):
    x, labels, _, xt, yt = toy
    with pytest.raises(ConfigError, match="too deep"):
        train_one(NNProtocol(**{**TINY_CONV, "depth": 4}), 0, x, labels, xt, yt, 4)


# ---------------------------------------------------------------- device

def _without_seconds(run):
    return {k: v for k, v in run.items() if k != "seconds"}


def test_device_cpu_is_bit_identical_to_the_default_and_recorded(toy):
    """On a machine without a GPU, ``auto`` is the CPU: ``device="cpu"`` (text or
    ``torch.device``) gives exactly the default's numbers, and the run records it."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto is a GPU here")
    x, labels, _, xt, yt = toy
    p = NNProtocol(**TINY_CONV)
    default = train_one(p, 0, x, labels, xt, yt, 4)
    cpu = train_one(p, 0, x, labels, xt, yt, 4, device="cpu")
    dev = train_one(p, 0, x, labels, xt, yt, 4, device=torch.device("cpu"))
    assert _without_seconds(default) == _without_seconds(cpu) == _without_seconds(dev)
    assert cpu["device"] == default["device"] == "cpu"
    assert len(cpu["loss"]) == 12 and cpu["loss"][-1] < cpu["loss"][0]
    assert not torch.are_deterministic_algorithms_enabled()  # restored


def _toy_artifact_and_data(toy):
    from types import SimpleNamespace

    x, labels, ids, xt, yt = toy
    art = SimpleNamespace(images=x, labels=labels, class_ids=ids, metrics={"method": "kip"}, config={},
                          dataset={"name": "toy"})
    return art, SimpleNamespace(x_test=xt, y_test=yt, num_classes=4)


def test_evaluate_nn_records_the_device(toy):
    from kdistill.nn.train import evaluate_nn

    art, data = _toy_artifact_and_data(toy)
    p = NNProtocol(**TINY_CONV)
    res = evaluate_nn(art, p, data=data, device="cpu")
    assert res["device"] == "cpu" and res["machine"]["device"] == "cpu" and "gpu" not in res["machine"]
    assert [r["device"] for r in res["runs"]] == ["cpu", "cpu"]
    again = evaluate_nn(art, p, data=data)  # auto: the CPU on this machine
    if again["device"] == "cpu":
        assert again["test_acc"] == res["test_acc"] and again["runs"][1]["loss"] == res["runs"][1]["loss"]
    assert again["protocol_id"] == res["protocol_id"]  # the device is not part of the protocol


@pytest.mark.parametrize("device", ["cuda:x", "banana", "auto:0", "cuda:-1"])
def test_malformed_device_is_a_config_error_naming_the_forms(toy, device):
    from kdistill.nn.train import evaluate_nn

    x, labels, _, xt, yt = toy
    with pytest.raises(ConfigError, match=r"device must be one of auto, cpu, gpu, cuda.*'cuda:1'"):
        train_one(NNProtocol(**TINY_CONV), 0, x, labels, xt, yt, 4, device=device)
    art, _ = _toy_artifact_and_data(toy)
    with pytest.raises(ConfigError, match="device must be one of"):  # before any data is loaded
        evaluate_nn(art, NNProtocol(**TINY_CONV), device=device)


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:7"])
def test_absent_cuda_device_is_a_config_error(toy, device):
    import torch

    if device != "cuda:7" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    x, labels, _, xt, yt = toy
    with pytest.raises(ConfigError, match=r"CUDA device\(s\).*use device='cpu'"):
        train_one(NNProtocol(**TINY_CONV), 0, x, labels, xt, yt, 4, device=device)


# ---------------------------------------------------------------- baselines

def test_kmeans_centroids_equal_sklearn():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 2, 2, 1)).astype(np.float32)
    y = np.repeat([0, 1], 30)
    cents, ids = kmeans_centroids(x, y, 2, 3, seed=4)
    assert cents.shape == (6, 2, 2, 1) and ids.tolist() == [0, 0, 0, 1, 1, 1]
    for c in (0, 1):
        ref = KMeans(n_clusters=3, n_init=1, random_state=4).fit(x[y == c].reshape(30, -1).astype(np.float64))
        np.testing.assert_allclose(cents[3 * c:3 * c + 3].reshape(3, -1), ref.cluster_centers_, rtol=1e-6)
    one, _ = kmeans_centroids(x, y, 2, 1, seed=0)  # ipc=1: the class mean
    np.testing.assert_allclose(one[0].ravel(), x[y == 0].reshape(30, -1).mean(0), rtol=1e-5, atol=1e-6)


def test_herding_is_greedy_mean_matching():
    # 1-D toy: mean 2.0; greedy picks 2.1 (closest), then the point making the pair
    # mean closest to 2 (1.8 -> 1.95), then 3.1 (triple mean 2.33); no ties, so the
    # choices do not hang on a rounding; compare with a brute-force reference
    f = np.array([[0.0], [2.1], [5.0], [1.8], [3.1], [0.0]])
    assert f.mean() == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((40, 5))

    def reference(f, m):
        mu, picked = f.mean(0), []
        for _ in range(m):
            best = min((i for i in range(len(f)) if i not in picked),
                       key=lambda i: np.linalg.norm(mu - f[picked + [i]].mean(0)))
            picked.append(best)
        return picked

    assert herding_select(f, 3).tolist() == [1, 3, 4] == reference(f, 3)
    assert herding_select(g, 8).tolist() == reference(g, 8)


def test_random_subset_is_balanced_and_seeded():
    y = np.repeat(np.arange(3), 10)
    a, b = random_subset(y, 3, 4, 0), random_subset(y, 3, 4, 0)
    assert a.tolist() == b.tolist() and np.bincount(y[a]).tolist() == [4, 4, 4] and len(set(a)) == 12
    assert random_subset(y, 3, 4, 1).tolist() != a.tolist()


# ---------------------------------------------------------------- end to end (digits)

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from kdistill.cli import _write_outputs
    from kdistill.core.config import DistillConfig

    out = tmp_path_factory.mktemp("nn") / "run"
    cfg = kdistill.make_config(ipc=2, steps=6, target_batch=300, learn_labels=True, eval_every=3,
                               eval_test_size=100, backend="torch")
    result = kdistill.distill(cfg)
    _write_outputs(out, DistillConfig.from_dict(result.config), result, grid=True)
    return out


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_baseline_evaluate_report(run_dir, tmp_path):
    r = run_cli("baseline", run_dir)
    assert r.exit_code == 0, r.output
    for kind in ("random", "kmeans", "herding"):
        b = kdistill.load(run_dir / "baselines" / kind / "distilled.npz")
        assert b.images.shape == (20, 8, 8, 1) and np.bincount(b.class_ids).tolist() == [2] * 10
        assert b.metrics["baseline"] == kind and b.config["dataset"] == "digits"
        np.testing.assert_allclose(b.labels.sum(1), 0, atol=1e-6)  # centered one-hot
    rnd = kdistill.load(run_dir / "baselines" / "random" / "distilled.npz")
    art = kdistill.load(run_dir / "distilled.npz")
    np.testing.assert_array_equal(rnd.transform.mean, art.transform.mean)  # the artifact's space
    # each baseline was also scored by KRR (the report's KRR column), as `evaluate DIR` scores it
    from kdistill.io.safeio import read_json_sealed
    from kdistill.errors import ArtifactError
    from kdistill.runtime.evaluate import evaluate_artifact

    krr = {}
    for kind in ("random", "kmeans", "herding"):
        res = read_json_sealed(run_dir / "baselines" / kind / "eval_fc.json", ArtifactError, what="KRR result")
        b = kdistill.load(run_dir / "baselines" / kind / "distilled.npz")
        assert res["distilled_acc"] == evaluate_artifact(b, {})["distilled_acc"] and res["n_test"] == 360
        assert f"{kind}: KRR test accuracy {100 * res['distilled_acc']:.2f}% on 360 test images" in r.output
        krr[kind] = res

    results = {}
    for name, d in [("distilled", run_dir)] + [(k, run_dir / "baselines" / k) for k in ("random", "kmeans", "herding")]:
        r = run_cli("evaluate", d, "--nn", "fc", *TINY_FC, "--seeds", "0,1,2", "--no-progress")
        assert r.exit_code == 0, r.output
        res = json.loads((d / "nn_fc.json").read_text())
        m = re.search(r"NN \(fc\) test accuracy: ([0-9.]+) ± ([0-9.]+)%", r.output)
        assert m and m.group(1) == f"{100 * res['mean']:.2f}" and m.group(2) == f"{100 * res['std']:.2f}"
        assert len(res["test_acc"]) == 3 and res["n_test"] == 360
        assert res["mean"] == pytest.approx(np.mean(res["test_acc"]))
        assert res["protocol"]["width"] == 32 and res["protocol"]["steps"] == 25
        results[name] = res
    assert len({r["protocol_id"] for r in results.values()}) == 1  # one protocol for all

    # rerun from the stored protocol: identical numbers
    again = tmp_path / "again.json"
    r = run_cli("evaluate", run_dir, "--nn", "fc", "--protocol", run_dir / "nn_fc.json", "--out", again,
                "--no-progress")
    assert r.exit_code == 0, r.output
    rerun = json.loads(again.read_text())
    assert rerun["test_acc"] == results["distilled"]["test_acc"]
    assert rerun["runs"][0]["loss"] == results["distilled"]["runs"][0]["loss"]
    assert rerun["protocol_id"] == results["distilled"]["protocol_id"]

    r = run_cli("report", run_dir)
    assert r.exit_code == 0, r.output
    page = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    for name, res in results.items():
        cell = f"{100 * res['mean']:.2f} ± {100 * res['std']:.2f} (n=3, {res['n_test']} test images)"
        assert f"<td>{name}</td>" in page and cell in page and cell in md
    assert f"{100 * art.metrics['distilled_acc']:.2f}" in page
    for kind, res in krr.items():  # the baselines' KRR column is filled
        assert f"{100 * res['distilled_acc']:.2f} (360 test images)" in page
    assert results["distilled"]["protocol_id"] in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 3  # grid, distillation curves, fc curves
    assert all(base64.b64decode(s)[:8] == b"\x89PNG\r\n\x1a\n" for s in imgs)
    assert "http://" not in page and "https://" not in page  # self-contained
    assert 'name = &quot;fc&quot;' in page and "[kernel]" in page  # the full config (escaped)
    assert (run_dir / "report_files" / "grid.png").is_file()


def test_cli_nn_errors(run_dir):
    r = run_cli("evaluate", run_dir, "--nn", "fc", "-p", "loss=ce", "--no-progress")
    assert r.exit_code == 2 and "needs hard targets" in r.output
    r = run_cli("evaluate", run_dir, "--nn", "convnet", "-p", "depth=5", "-p", "steps=1", "--seeds", "0",
                "--no-progress", "--out", run_dir / "x.json")
    assert r.exit_code == 2 and "too deep" in r.output
    r = run_cli("report", run_dir / "baselines")
    assert r.exit_code == 2 and "no distilled.npz" in r.output


def test_evaluate_nn_command_device(run_dir, tmp_path, capsys):
    """The command's ``device``: a bad one exits 2 naming the problem, before any work;
    ``cpu`` runs there, says so and records it in the result file."""
    from kdistill.nn.commands import evaluate_nn_command

    with pytest.raises(SystemExit) as exc:
        evaluate_nn_command(str(run_dir), "fc", None, (), "0", None, str(tmp_path / "bad.json"), False,
                            device="banana")
    assert exc.value.code == 2 and "device must be one of auto, cpu" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()
    out = tmp_path / "cpu.json"
    res = evaluate_nn_command(str(run_dir), "fc", None, ("width=16", "steps=3", "eval_every=0"), "0", None,
                              str(out), False, device="cpu")
    assert res["device"] == "cpu" and json.loads(out.read_text())["device"] == "cpu"
    assert "1 seed, on cpu" in capsys.readouterr().out


def test_make_baseline_rejects_unknown_kind(run_dir):
    from kdistill.core.config import DistillConfig
    from kdistill.runtime.evaluate import prepare_with_transform

    art = kdistill.load(run_dir / "distilled.npz")
    data = prepare_with_transform(DistillConfig.from_dict(art.config), art)
    with pytest.raises(ConfigError, match="unknown baseline 'best'"):
        make_baseline("best", data, 1, 0, art.config)


def _renderer():
    """benchmarks/render_report.py as a module; skips the test where Chromium is missing."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "render_report", Path(__file__).resolve().parents[1] / "benchmarks" / "render_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if mod.find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return mod


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The page renders in a real browser (skipped where Chromium is not installed)."""
    mod = _renderer()
    if not (run_dir / "report.html").is_file():
        from kdistill.report import build_report

        build_report(run_dir)
    import matplotlib.image as mpimg

    shot = mod.screenshot(run_dir / "report.html", tmp_path / "shot.png", width=900, height=1400)
    img = mpimg.imread(shot)
    assert img.shape[:2] == (1400, 900)
    # the embedded images were decoded: more distinct colours than text on white alone
    assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_rfad_report_names_rfad_and_renders_in_headless_chromium(tmp_path):
    """The report of an RFAD run (random-feature kernel, Platt loss, feature solver) says
    RFAD and on how many test images its numbers were taken, and renders in a real browser
    (the screenshot part is skipped where Chromium is not installed)."""
    from kdistill.cli import _write_outputs
    from kdistill.core.config import DistillConfig
    from kdistill.report import build_report

    out = tmp_path / "rfad"
    cfg = kdistill.make_config(ipc=2, steps=4, target_batch=200, eval_every=2, eval_test_size=100, test_size=150,
                               kernel={"name": "rf-convnet", "n_models": 2, "width": 8, "depth": 1},
                               solver="feature", loss="platt")
    result = kdistill.distill(cfg, progress=False)
    _write_outputs(out, DistillConfig.from_dict(result.config), result, grid=True)
    build_report(out)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "RFAD" in html and "150 test images" in html, html[:2000]
    mod = _renderer()
    import matplotlib.image as mpimg

    img = mpimg.imread(mod.screenshot(out / "report.html", tmp_path / "shot.png", width=900, height=1400))
    assert img.shape[:2] == (1400, 900)
    assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
