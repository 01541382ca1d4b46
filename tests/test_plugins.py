"""Tests of the plugin system: the registry of built-ins, `kdistill plugins`, error
messages for unknown names/parameters and incompatible components, and the example
third-party package ``examples/kdistill-laplace`` installed through its entry point."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
import kdistill.api
import kdistill.core.registry as registry_module
from kdistill.cli import main
from kdistill.runtime.components import build_components
from kdistill.core.config import DistillConfig
from kdistill.core.contracts import Kernel
from kdistill.errors import ConfigError, IncompatibleComponentsError, UnknownComponentError
from kdistill.core.hookspecs import hookimpl
from kdistill.core.registry import KINDS, Registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kdistill-laplace"

BUILTINS = {
    "backends": ["jax", "torch"],
    "kernels": ["convnet", "convnet-nopool", "fc", "nt", "rbf", "rf-convnet", "rf-fc"],
    "solvers": ["cholesky", "exact", "feature", "low-rank"],
    "losses": ["mse", "platt"],
    "datasets": ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist", "svhn"],
    "architectures": ["convnet", "fc"],
    "methods": ["kip", "label-solve"],
    "callbacks": ["jsonl", "mlflow", "tensorboard"],
    "optimizers": ["adam", "adamw", "sgd"],
    "schedules": ["constant", "cosine", "warmup-cosine"],
}
SINGULAR = {"backends": "backend", "kernels": "kernel", "solvers": "solver", "losses": "loss",
            "datasets": "dataset", "architectures": "architecture", "methods": "method", "callbacks": "callback",
            "optimizers": "optimizer", "schedules": "schedule"}
FAST_ARGS = ["--steps", "3", "--ipc", "1", "--target-batch", "200", "--eval-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def builtin_registry() -> Registry:
    return Registry(third_party=False)


@pytest.fixture
def fresh_default_registry(monkeypatch):
    """Make get_registry() re-read entry points, and restore the old one afterwards."""
    monkeypatch.setattr(registry_module, "_default", None)


# ------------------------------------------------------------------ built-ins


def test_registry_lists_every_builtin_with_package(builtin_registry):
    assert KINDS == tuple(BUILTINS)
    for kind, names in BUILTINS.items():
        assert builtin_registry.names(kind) == names
        for name in names:
            reg = builtin_registry.get(kind, name)
            assert (reg.kind, reg.name) == (kind, name)
            assert reg.package == "kdistill" and reg.version == kdistill.__version__
            assert reg.plugin.startswith("kdistill:")
            assert reg.description  # one line for `kdistill plugins`
            assert "\n" not in reg.description
    # entries() covers exactly the same, in KINDS order
    listed = [(r.kind, r.name) for r in builtin_registry.entries()]
    assert listed == [(k, n) for k in KINDS for n in BUILTINS[k]]
    # the default registry (third-party allowed) contains the built-ins unchanged
    default = Registry()
    for kind, names in BUILTINS.items():
        assert set(names) <= set(default.names(kind))
        assert all(default.get(kind, n).package == "kdistill" for n in names)


def test_builtin_factories_are_contract_classes(builtin_registry):
    from kdistill.core.contracts import Loss, Solver

    bases = {"kernels": Kernel, "solvers": Solver, "losses": Loss}
    for name in BUILTINS["architectures"]:  # plain functions returning a stax triple
        assert callable(builtin_registry.get("architectures", name).factory)
    for kind, base in bases.items():
        for name in BUILTINS[kind]:
            factory = builtin_registry.get(kind, name).factory
            assert issubclass(factory, base)
            obj = builtin_registry.create(kind, name)
            assert type(obj)(**obj.get_params()) == obj  # parameters round-trip


def test_plugins_cli_lists_every_builtin(fresh_default_registry):
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.match(r"kind\s+name\s+package\s+description", lines[0])
    for kind, names in BUILTINS.items():
        for name in names:
            pattern = rf"^{SINGULAR[kind]}\s+{re.escape(name)}\s+kdistill {re.escape(kdistill.__version__)}\s+\S"
            assert any(re.match(pattern, line) for line in lines), (kind, name, result.stdout)
    assert len(lines) == 1 + sum(len(v) for v in BUILTINS.values())


# ------------------------------------------------------------------ unknown names / parameters


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_name_lists_available(builtin_registry, kind):
    with pytest.raises(UnknownComponentError) as info:
        builtin_registry.get(kind, "no-such-thing")
    msg = str(info.value)
    assert f"unknown {SINGULAR[kind]} 'no-such-thing'" in msg
    assert f"available {kind}: {', '.join(BUILTINS[kind])}" in msg
    assert "kdistill plugins" in msg
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)
    assert not msg.startswith(("'", '"'))  # not quoted like a plain KeyError


def test_unknown_name_through_create_backend_and_build(builtin_registry):
    with pytest.raises(UnknownComponentError, match="available kernels: convnet, convnet-nopool, fc, nt, rbf, rf-convnet, rf-fc"):
        builtin_registry.create("kernels", "laplace", gamma=1.0)
    with pytest.raises(UnknownComponentError, match="available backends: jax, torch"):
        builtin_registry.backend("numpy")
    with pytest.raises(UnknownComponentError, match="available solvers: cholesky, exact"):
        build_components(DistillConfig(solver="svd"), builtin_registry)
    with pytest.raises(ConfigError, match="unknown component kind 'kernel'; kinds: backends, kernels"):
        builtin_registry.get("kernel", "fc")


@pytest.mark.parametrize(
    "kind, name, params, fragments",
    [
        ("kernels", "rbf", {"sigma": 1.0}, ["kernel 'rbf' has no parameter(s) sigma", "accepted: gamma"]),
        ("kernels", "fc", {"width": 3, "depth": 2},
         ["kernel 'fc' has no parameter(s) width", "accepted: kind, depth, sw2, sb2"]),
        ("solvers", "cholesky", {"jitter": 1e-3}, ["solver 'cholesky' has no parameter(s) jitter", "accepted: (none)"]),
        ("losses", "platt", {"tau": 1.0, "beta": 2}, ["loss 'platt' has no parameter(s) beta, tau", "accepted: init_log_tau"]),
    ],
)
def test_unknown_hyperparameter_lists_accepted(builtin_registry, kind, name, params, fragments):
    with pytest.raises(ConfigError) as info:
        builtin_registry.create(kind, name, **params)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_invalid_hyperparameter_values(builtin_registry):
    with pytest.raises(ConfigError, match=r"RBFKernel.gamma must be a finite number > 0, got -1.0"):
        builtin_registry.create("kernels", "rbf", gamma=-1)
    with pytest.raises(ConfigError, match="invalid parameters for kernel 'rbf'"):
        builtin_registry.create("kernels", "rbf", gamma="wide")
    with pytest.raises(ConfigError, match="FCKernel.kind must be 'nngp' or 'ntk', got 'cntk'"):
        builtin_registry.create("kernels", "fc", kind="cntk")
    # valid values are converted and kept
    k = builtin_registry.create("kernels", "fc", depth=3, sw2=1)
    assert k.get_params() == {"kind": "ntk", "depth": 3, "sw2": 1.0, "sb2": 0.01}


# ------------------------------------------------------------------ incompatible combinations


@attrs.define(kw_only=True)
class JaxOnlyKernel(Kernel):
    """A test kernel that claims to support only JAX; records every call."""

    backends: ClassVar[tuple[str, ...]] = ("jax",)
    calls: ClassVar[list] = []

    scale: float = attrs.field(default=1.0, converter=float)

    def __call__(self, x1, x2):
        JaxOnlyKernel.calls.append((x1.shape, x2.shape))
        xp = self.b.xp
        a = xp.reshape(x1, (x1.shape[0], -1))
        b = xp.reshape(x2, (x2.shape[0], -1))
        return self.scale * (a @ b.T) / a.shape[1]


def make_plugin(name: str, kernel_name: str, factory) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def kdistill_register_kernels(register):
        register(kernel_name, factory, "test kernel")

    module.kdistill_register_kernels = kdistill_register_kernels
    return module


@pytest.fixture
def jaxonly_registry() -> Registry:
    reg = Registry(third_party=False)
    reg.register_plugin(make_plugin("jaxonly_plugin", "jaxonly", JaxOnlyKernel), package="test-pkg", version="9.9")
    JaxOnlyKernel.calls.clear()
    return reg


def test_register_plugin_records_package(jaxonly_registry):
    reg = jaxonly_registry.get("kernels", "jaxonly")
    assert (reg.factory, reg.package, reg.version, reg.description) == (JaxOnlyKernel, "test-pkg", "9.9", "test kernel")
    assert jaxonly_registry.names("kernels") == ["convnet", "convnet-nopool", "fc", "jaxonly", "nt", "rbf", "rf-convnet", "rf-fc"]
    # built-ins are still attributed to kdistill after re-collection
    assert jaxonly_registry.get("kernels", "fc").package == "kdistill"


def test_incompatible_backend_names_supporting_kernels(jaxonly_registry):
    cfg = DistillConfig(backend="torch", kernel={"name": "jaxonly", "scale": 2.0})
    with pytest.raises(IncompatibleComponentsError) as info:
        build_components(cfg, jaxonly_registry)
    msg = str(info.value)
    assert "JaxOnlyKernel does not support the 'torch' backend; it supports: jax" in msg
    assert msg.endswith("Kernels that support 'torch': convnet, convnet-nopool, fc, rbf, rf-convnet, rf-fc")
    assert JaxOnlyKernel.calls == []
    # as the evaluation kernel as well
    cfg = DistillConfig(backend="torch", eval_kernel="jaxonly")
    with pytest.raises(IncompatibleComponentsError, match="Kernels that support 'torch': convnet, convnet-nopool, fc, rbf, rf-convnet, rf-fc$"):
        build_components(cfg, jaxonly_registry)
    # on JAX the same kernel builds and computes (so the error above is about the backend)
    comps = build_components(DistillConfig(backend="jax", kernel={"name": "jaxonly", "scale": 2.0}), jaxonly_registry)
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    np.testing.assert_allclose(np.asarray(comps.kernel(comps.backend.asarray(x), comps.backend.asarray(x))),
                               2.0 * x @ x.T / 3)


def test_incompatible_backend_fails_before_any_work(jaxonly_registry, monkeypatch, tmp_path):
    monkeypatch.setattr(registry_module, "_default", jaxonly_registry)
    prepared = []
    monkeypatch.setattr(kdistill.api, "prepare_data", lambda *a, **k: prepared.append(1))
    with pytest.raises(IncompatibleComponentsError, match="Kernels that support 'torch': convnet, convnet-nopool, fc, rbf, rf-convnet, rf-fc"):
        kdistill.distill(backend="torch", kernel="jaxonly", ipc=1, steps=1, target_batch=200, eval_every=0)
    assert prepared == [] and JaxOnlyKernel.calls == []  # no data loaded, no kernel evaluated
    # the CLI reports the same as a usage error and writes nothing
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["distill", "--backend", "torch", "--kernel", "jaxonly", *FAST_ARGS,
                                       "--out", str(out)])
    assert result.exit_code == 2
    assert "does not support the 'torch' backend" in result.stderr
    assert "Kernels that support 'torch': convnet, convnet-nopool, fc, rbf, rf-convnet, rf-fc" in result.stderr
    assert not out.exists() and JaxOnlyKernel.calls == []


def test_name_clash_keeps_builtin():
    reg = Registry(third_party=False)
    with pytest.warns(UserWarning, match="kernel 'rbf' is a built-in of kdistill 0.1.0, which stays; impostor must"):
        reg.register_plugin(make_plugin("impostor_plugin", "rbf", JaxOnlyKernel), package="impostor")
    assert reg.get("kernels", "rbf").package == "kdistill"
    assert reg.get("kernels", "rbf").factory is not JaxOnlyKernel


# ------------------------------------------------------------------ the example package: numerics


@pytest.fixture(scope="module")
def laplace_module():
    """The example plugin's module, imported from its source file (not installed)."""
    spec = importlib.util.spec_from_file_location(
        "kdistill_laplace_under_test", EXAMPLE / "kdistill_laplace" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def laplace_closed_form(x1: np.ndarray, x2: np.ndarray, gamma: float) -> np.ndarray:
    a = x1.reshape(len(x1), -1).astype(np.float64)
    b = x2.reshape(len(x2), -1).astype(np.float64)
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return np.exp(-gamma * dist / np.sqrt(a.shape[1]))


@pytest.fixture(scope="module")
def backends(builtin_registry):
    return {name: builtin_registry.backend(name) for name in ("jax", "torch")}


def test_laplace_registers_through_hook(laplace_module):
    reg = Registry(third_party=False)
    reg.register_plugin(laplace_module, package="kdistill-laplace", version="0.1.0")
    entry = reg.get("kernels", "laplace")
    assert entry.factory is laplace_module.LaplaceKernel and entry.package == "kdistill-laplace"
    k = reg.create("kernels", "laplace", gamma=2)
    assert k.get_params() == {"gamma": 2.0} and type(k.gamma) is float
    assert laplace_module.LaplaceKernel(**k.get_params()) == k
    with pytest.raises(ConfigError, match="has no parameter\\(s\\) length_scale; accepted: gamma"):
        reg.create("kernels", "laplace", length_scale=1.0)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="LaplaceKernel.gamma must be a finite number > 0"):
            reg.create("kernels", "laplace", gamma=bad)
    # it builds on both backends
    for name in ("jax", "torch"):
        comps = build_components(DistillConfig(backend=name, kernel={"name": "laplace", "gamma": 0.5}), reg)
        assert isinstance(comps.kernel, laplace_module.LaplaceKernel)
        assert comps.kernel.b is comps.backend and comps.backend.name == name


def test_laplace_matches_closed_form_on_jax_and_torch(laplace_module, backends):
    rng = np.random.default_rng(0)
    # x1 in quarters: its float32 squared norms and dot products are exact in any summation
    # order, so the float32 self-distance on the diagonal is exactly 0 whatever the BLAS
    x1 = rng.integers(-8, 9, (5, 4, 4, 1)) / 4.0
    x2 = rng.standard_normal((7, 4, 4, 1))
    gamma = 0.7
    want = laplace_closed_form(x1, x2, gamma)
    want_self = laplace_closed_form(x1, x1, gamma)
    got = {}
    for name, b in backends.items():
        k = laplace_module.LaplaceKernel(gamma=gamma).bind(b)
        out = k(b.asarray(x1, "float64"), b.asarray(x2, "float64"))
        assert b.dtype_name(out) == "float64" and tuple(out.shape) == (5, 7)
        got[name] = b.to_numpy(out)
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=0)
        # k(x, x): unit diagonal (to within the safe_sqrt floor), symmetric, positive definite
        kxx = b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x1, "float64")))
        np.testing.assert_allclose(kxx, want_self, rtol=0, atol=1e-7)
        np.testing.assert_allclose(np.diag(kxx), 1.0, atol=1e-7)
        np.testing.assert_allclose(kxx, kxx.T, atol=1e-12)
        assert np.linalg.eigvalsh(kxx).min() > 0
        # float32 inputs give float32 output close to the closed form
        out32 = k(b.asarray(x1, "float32"), b.asarray(x2, "float32"))
        assert b.dtype_name(out32) == "float32"
        np.testing.assert_allclose(b.to_numpy(out32), want, rtol=1e-4)
        # exact float32 arithmetic on the diagonal (inputs in quarters): exactly 1
        diag32 = np.diag(b.to_numpy(k(b.asarray(x1, "float32"), b.asarray(x1, "float32"))))
        np.testing.assert_array_equal(diag32, 1.0)
    np.testing.assert_allclose(got["jax"], got["torch"], rtol=1e-12, atol=0)
    # not the RBF kernel in disguise: distance, not squared distance
    rbf_like = np.exp(-gamma * (-np.log(want) * 4 / gamma) ** 2 / 16)
    assert not np.allclose(want, rbf_like, rtol=1e-3)


def test_laplace_gradients_match_closed_form_and_are_finite_on_diagonal(laplace_module, backends):
    import jax
    import torch

    rng = np.random.default_rng(1)
    x1 = rng.standard_normal((3, 2, 2, 1))
    x2 = rng.standard_normal((4, 2, 2, 1))
    w = rng.standard_normal((3, 4))
    gamma, d = 0.9, 4
    # d/dx1 sum_ij w_ij k(x1_i, x2_j) = sum_j w_ij k_ij * (-gamma/sqrt(d)) (x1_i - x2_j) / r_ij
    a, b2 = x1.reshape(3, d), x2.reshape(4, d)
    diff = a[:, None, :] - b2[None, :, :]
    r = np.sqrt((diff ** 2).sum(-1))
    k = np.exp(-gamma * r / np.sqrt(d))
    want = (w * k * (-gamma / np.sqrt(d)) / r)[:, :, None] * diff
    want = want.sum(1).reshape(x1.shape)

    kj = laplace_module.LaplaceKernel(gamma=gamma).bind(backends["jax"])
    gj = jax.grad(lambda x: (kj(x, jax.numpy.asarray(x2)) * w).sum())(jax.numpy.asarray(x1))
    np.testing.assert_allclose(np.asarray(gj), want, rtol=1e-9, atol=1e-12)
    gj_diag = jax.grad(lambda x: kj(x, x).sum())(jax.numpy.asarray(x1))
    assert np.isfinite(np.asarray(gj_diag)).all()

    kt = laplace_module.LaplaceKernel(gamma=gamma).bind(backends["torch"])
    xt = torch.tensor(x1, requires_grad=True)
    (kt(xt, torch.tensor(x2)) * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-9, atol=1e-12)
    xt2 = torch.tensor(x1, requires_grad=True)
    kt(xt2, xt2).sum().backward()
    assert torch.isfinite(xt2.grad).all()
    np.testing.assert_allclose(xt2.grad.numpy(), np.asarray(gj_diag), atol=1e-6)


# ------------------------------------------------------------------ the example package: installed


@pytest.fixture(scope="session")
def laplace_site(tmp_path_factory) -> Path:
    """pip-install examples/kdistill-laplace into a private --target directory.

    The source is copied first so the build leaves no build/ or egg-info in the repo.
    """
    work = tmp_path_factory.mktemp("laplace")
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / "kdistill_laplace" / "__init__.py").is_file()
    return target


def kd(site: Path, *args: str, cwd: Path, disable: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != registry_module.DISABLE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if disable:
        env[registry_module.DISABLE_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


LAPLACE_LINE = re.compile(r"^kernel\s+laplace\s+kdistill-laplace 0\.1\.0\s+Laplace kernel", re.M)


def test_installed_plugin_is_listed(laplace_site, tmp_path):
    proc = kd(laplace_site, "plugins", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert LAPLACE_LINE.search(proc.stdout), proc.stdout
    assert re.search(r"^kernel\s+rbf\s+kdistill 0\.1\.0", proc.stdout, re.M)  # built-ins still there
    assert proc.stderr == ""  # loaded without warnings


def test_installed_plugin_distills(laplace_site, tmp_path):
    out = tmp_path / "run"
    proc = kd(laplace_site, "distill", "--kernel", "laplace", "-s", "kernel.gamma=0.5", *FAST_ARGS,
              "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kernel=laplace {'gamma': 0.5}" in proc.stdout
    cfg = DistillConfig.from_file(out / "config.toml")
    assert cfg.kernel.to_dict() == {"name": "laplace", "gamma": 0.5}
    assert cfg == DistillConfig(kernel={"name": "laplace", "gamma": 0.5}, steps=3, ipc=1,
                                target_batch=200, eval_every=0)
    art = kdistill.load(out / "distilled.npz")
    assert art.config["kernel"] == {"name": "laplace", "gamma": 0.5}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == art.metrics and 0.0 < metrics["distilled_acc"] <= 1.0
    assert len(art.history["loss"]) == 3 and np.isfinite(art.history["loss"]).all()
    # the saved run evaluates with the plugin kernel to the same accuracy
    proc = kd(laplace_site, "evaluate", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kernel {'name': 'laplace', 'gamma': 0.5}" in proc.stdout
    assert f"distilled {100 * metrics['distilled_acc']:.2f}%" in proc.stdout


def test_installed_plugin_from_toml_config_on_torch(laplace_site, tmp_path):
    conf = tmp_path / "laplace.toml"
    conf.write_text(
        'backend = "torch"\nipc = 1\nsteps = 2\ntarget_batch = 200\neval_every = 0\nseed = 4\n\n'
        '[kernel]\nname = "laplace"\ngamma = 2.0\n'
    )
    out = tmp_path / "run"
    proc = kd(laplace_site, "distill", "--config", str(conf), "--no-progress", "--no-grid", "--out", str(out),
              cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = DistillConfig.from_file(out / "config.toml")
    assert cfg == DistillConfig.from_file(conf)
    assert cfg.backend == "torch" and cfg.kernel.to_dict() == {"name": "laplace", "gamma": 2.0}
    assert kdistill.load(out / "distilled.npz").config["kernel"]["name"] == "laplace"


def test_disable_plugins_env_hides_plugin(laplace_site, tmp_path):
    proc = kd(laplace_site, "plugins", cwd=tmp_path, disable=True)
    assert proc.returncode == 0, proc.stderr
    assert "laplace" not in proc.stdout
    assert re.search(r"^kernel\s+fc\s+kdistill", proc.stdout, re.M)
    out = tmp_path / "run"
    proc = kd(laplace_site, "distill", "--kernel", "laplace", *FAST_ARGS, "--out", str(out), cwd=tmp_path,
              disable=True)
    assert proc.returncode == 2
    assert "unknown kernel 'laplace'; available kernels: convnet, convnet-nopool, fc, nt, rbf, rf-convnet, rf-fc" in proc.stderr
    assert not out.exists()
