"""Issue 15, part "plugins": no file runs code, and no plugin can replace a built-in or
take kdistill down.

- Code execution: a config naming ``nt``'s ``arch = "module:function"`` (read from an
  artifact, a checkpoint or a TOML file) never imports or calls that function; the
  error lists the registered architectures and says how to register one.
- Name clashes: a third-party component named like a built-in is refused (the built-in
  stays, both distributions are named); two third-party components of one name are
  both refused and asking for the name is an error naming both.
- Broken plugins (import raises, ``sys.exit`` at import, a hook that raises, invalid
  names/factories/descriptions, malformed hook implementations) are skipped with a
  warning and listed by ``kdistill plugins``; the other commands keep working.
- Provenance: runs record which distribution supplied each component.

Third-party packages are simulated by a ``*.dist-info`` directory with an
``entry_points.txt`` in a temporary directory on ``sys.path``, which
``importlib.metadata`` finds exactly as it finds an installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

import kdistill
import kdistill.core.registry as registry_module
from kdistill.cli import main
from kdistill.core.config import DistillConfig
from kdistill.errors import ConfigError, KdistillError, UnknownComponentError
from kdistill.core.registry import Registry

FAST = ["--steps", "1", "--ipc", "1", "--target-batch", "200", "--eval-every", "0", "--no-progress", "--no-grid"]


# ------------------------------------------------------------------ fake installed distributions


class FakeSite:
    """A directory on ``sys.path`` into which fake distributions are "installed"."""

    def __init__(self, root: Path):
        self.root = root
        self.modules: list[str] = []

    def module(self, source: str, stem: str = "mod") -> str:
        """Write a module with a unique name; returns its import name."""
        name = f"kd_fake_{stem}_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        return name

    def dist(self, dist: str, version: str, entry_points: dict[str, str]) -> None:
        """A distribution ``dist`` whose ``kdistill`` entry points are ``entry_points``."""
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            "[kdistill]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        )

    def plugin(self, dist: str, source: str, version: str = "1.0") -> str:
        """A distribution with one plugin module (``source``); returns the module name."""
        name = self.module(source, dist.replace("-", "_"))
        self.dist(dist, version, {"plug": name})
        return name


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Fake site directory on sys.path; third-party plugins enabled; a fresh default
    registry (restored afterwards)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(registry_module.DISABLE_ENV, raising=False)
    monkeypatch.setattr(registry_module, "_default", None)
    fake = FakeSite(root)
    yield fake
    for name in fake.modules:
        sys.modules.pop(name, None)


def quiet_registry() -> Registry:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Registry()


def problem_lines(output: str) -> list[str]:
    lines = output.splitlines()
    assert "skipped:" in lines, output
    return lines[lines.index("skipped:") + 1:]


# ------------------------------------------------------------------ 1. code execution from files

EVIL = """
from pathlib import Path
MARKER = Path({marker!r})
MARKER.with_suffix(".imported").write_text("imported")   # runs if the module is imported

def run(**kwargs):                                        # runs if the function is called
    MARKER.write_text("called " + repr(kwargs))
    raise SystemExit("evil code ran")
"""


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """An importable module that writes ``marker`` when imported or called; returns
    (``"module:run"``, marker path)."""
    marker = tmp_path / "PWNED"
    name = f"kd_evil_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_default", None)
    yield f"{name}:run", marker
    sys.modules.pop(name, None)


def assert_not_run(marker: Path) -> None:
    assert not marker.exists(), "the architecture function was called"
    assert not marker.with_suffix(".imported").exists(), "the architecture module was imported"


def assert_refused(output: str, path: str) -> None:
    assert f"NTKernel.arch must be the name of a registered architecture, got {path!r}" in output
    assert "registered architectures: convnet, fc" in output
    assert "import paths are not accepted" in output
    assert "kdistill_register_architectures hook" in output


def evil_kernel(path: str, marker: Path) -> dict:
    return {"name": "nt", "arch": path, "kind": "nngp", "arch_params": {"command": f"id > {marker}"}}


@pytest.fixture(scope="module")
def small_set():
    """A real (tiny) distilled set, to be edited and re-saved with the public API."""
    return kdistill.label_solve(ipc=1, target_batch=200, seed=0)


@pytest.mark.parametrize("field", ["eval_kernel", "kernel"])
def test_artifact_config_never_imports_code(evil, small_set, tmp_path, field):
    path, marker = evil
    config = dict(small_set.config, **{field: evil_kernel(path, marker)})
    run = tmp_path / "run"
    attrs.evolve(small_set, config=config).save(run / "distilled.npz")
    result = CliRunner().invoke(main, ["evaluate", str(run)])
    assert_not_run(marker)
    assert result.exit_code == 2, result.output
    assert_refused(result.stderr, path)
    # the library too: loading is allowed, building its components refuses
    from kdistill.runtime.components import build_components

    art = kdistill.load(run / "distilled.npz")
    with pytest.raises(ConfigError, match="must be the name of a registered architecture"):
        build_components(DistillConfig.from_dict(art.config))
    assert_not_run(marker)


def test_checkpoint_config_never_imports_code(evil, tmp_path):
    from kdistill.io.checkpoint import checkpoint_path, load_checkpoint

    path, marker = evil
    run = tmp_path / "run"
    kdistill.distill(ipc=1, steps=2, target_batch=200, eval_every=0, checkpoint_every=1, run_dir=run)
    ckpt_file = checkpoint_path(run)
    ckpt = load_checkpoint(ckpt_file)
    config = dict(ckpt.config, eval_kernel=evil_kernel(path, marker))
    attrs.evolve(ckpt, config=config).save(ckpt_file)
    result = CliRunner().invoke(main, ["distill", "--resume", str(run), "--no-progress", "--no-grid"])
    assert_not_run(marker)
    assert result.exit_code == 2, result.output
    assert_refused(result.stderr, path)
    with pytest.raises(ConfigError, match="must be the name of a registered architecture"):
        kdistill.distill(run_dir=run, resume=True)
    assert_not_run(marker)


@pytest.mark.parametrize("table", ["kernel", "eval_kernel", "valid_kernel"])
def test_toml_config_never_imports_code(evil, tmp_path, table):
    path, marker = evil
    conf = tmp_path / "evil.toml"
    conf.write_text(
        f'ipc = 1\nsteps = 1\ntarget_batch = 200\neval_every = 0\n\n[{table}]\nname = "nt"\n'
        f'arch = "{path}"\nkind = "nngp"\narch_params = {{ command = "id > {marker}" }}\n'
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["distill", "--config", str(conf), "--out", str(out), *FAST])
    assert_not_run(marker)
    assert result.exit_code == 2, result.output
    assert_refused(result.stderr, path)
    assert not (out / "distilled.npz").exists()
    with pytest.raises(ConfigError, match="import paths are not accepted"):
        kdistill.distill(conf)
    assert_not_run(marker)


def test_flag_and_api_never_import_code(evil, tmp_path):
    """Neither a -s override nor the Python API accepts an import path."""
    path, marker = evil
    result = CliRunner().invoke(main, ["distill", "--kernel", "nt", "-s", f"kernel.arch={path}",
                                       "--out", str(tmp_path / "run"), *FAST])
    assert result.exit_code == 2, result.output
    assert_refused(result.stderr, path)
    with pytest.raises(ConfigError, match="registered architectures: convnet, fc"):
        kdistill.distill(kernel=evil_kernel(path, marker), ipc=1, steps=1, target_batch=200, eval_every=0)
    from kdistill.plugins.kernels.nt import resolve_arch

    with pytest.raises(ConfigError, match=r"arch '.*:run' is not a registered architecture; registered architectures: convnet, fc"):
        resolve_arch(path)
    assert_not_run(marker)


NT_ARCH_PLUGIN = """
from kdistill.core.hookspecs import hookimpl

CALLS = []

def tiny(width=1, sw2=2.0):
    from kdistill.runtime.optional import import_neural_tangents
    stax = import_neural_tangents().stax
    CALLS.append(width)
    return stax.serial(stax.Flatten(), stax.Dense(width, W_std=sw2 ** 0.5), stax.Relu(), stax.Dense(1))

@hookimpl
def kdistill_register_architectures(register):
    register("tiny-mlp", tiny, "a one-layer MLP")
"""


def test_third_party_architecture_by_registered_name(site, jax_backend):
    """A package registers an architecture through the hook; the nt kernel uses it by
    name and the run's provenance names the package."""
    from kdistill.runtime.optional import import_neural_tangents

    try:
        import_neural_tangents()
    except ConfigError as exc:
        pytest.skip(str(exc))
    import numpy as np

    from kdistill.plugins.kernels.nt import NTKernel

    module = site.plugin("kd-archs", NT_ARCH_PLUGIN, "2.5")
    reg = registry_module.get_registry()
    assert reg.names("architectures") == ["convnet", "fc", "tiny-mlp"]
    assert reg.provenance("architectures", "tiny-mlp") == {
        "package": "kd-archs", "version": "2.5", "plugin": "kd-archs:plug"}
    k = NTKernel(arch="tiny-mlp", kind="nngp", arch_params={"width": 3}).bind(jax_backend)
    assert sys.modules[module].CALLS == [3]
    x = jax_backend.asarray(np.random.default_rng(0).standard_normal((3, 2, 2, 1)), "float64")
    gram = np.asarray(k(x, x))
    assert gram.shape == (3, 3) and np.allclose(gram, gram.T)
    prov = registry_module.component_provenance(DistillConfig(kernel={"name": "nt", "arch": "tiny-mlp"}))
    assert prov["kernel.arch"] == {"kind": "architecture", "name": "tiny-mlp", "package": "kd-archs",
                                   "version": "2.5", "plugin": "kd-archs:plug"}
    assert prov["kernel"]["package"] == "kdistill"
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert any(line.split()[:4] == ["architecture", "tiny-mlp", "kd-archs", "2.5"] for line in result.stdout.splitlines())


# ------------------------------------------------------------------ 2. name clashes

IMPOSTOR = """
import attrs
from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.rbf import RBFKernel

@attrs.define(kw_only=True)
class FakeFC(RBFKernel):
    kind: str = "ntk"
    depth: int = 1

@hookimpl{opts}
def kdistill_register_kernels(register):
    register("fc", FakeFC, "not the real fc")
    register("impostor-own", FakeFC, "a name of its own")
"""


@pytest.mark.parametrize("opts", ["", "(tryfirst=True)", "(trylast=True)"])
def test_clash_with_builtin_keeps_builtin(site, opts):
    site.plugin("impostor", IMPOSTOR.format(opts=opts), "6.6")
    with pytest.warns(registry_module.PluginWarning) as record:
        reg = Registry()
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert "kdistill plugin 'impostor:plug' (impostor 6.6) component refused: kernel 'fc' is a built-in of " \
           f"kdistill {kdistill.__version__}, which stays; impostor must register it under another name" == messages[0]
    fc = reg.get("kernels", "fc")
    assert (fc.package, fc.builtin) == ("kdistill", True)
    assert fc.factory.__name__ == "FCKernel"
    assert reg.get("kernels", "impostor-own").package == "impostor"  # the rest of the plugin works
    assert [(p.status, p.package) for p in reg.problems] == [("clash", "impostor")]


def test_clash_listed_by_plugins_and_run_uses_builtin(site, tmp_path):
    site.plugin("impostor", IMPOSTOR.format(opts=""), "6.6")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert any(line.split()[:3] == ["kernel", "fc", "kdistill"] for line in result.stdout.splitlines())
    [line] = problem_lines(result.stdout)[1:]
    assert line.split()[:4] == ["clash", "impostor:plug", "impostor", "6.6"]
    assert "kernel 'fc' is a built-in of kdistill" in line
    # an unrelated command (a new process: a new registry) works, uses the built-in fc,
    # and records where it came from
    registry_module.reset_registry()
    with pytest.warns(registry_module.PluginWarning, match="impostor"):
        result = kdistill.label_solve(ipc=1, target_batch=200, kernel="fc")
    assert result.metrics["components"]["kernel"] == {
        "kind": "kernel", "name": "fc", "package": "kdistill", "version": kdistill.__version__,
        "plugin": "kdistill:kernels"}


TWIN = """
from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.rbf import RBFKernel

@hookimpl
def kdistill_register_kernels(register):
    register("twin", RBFKernel, "one of two")
    register("{own}", RBFKernel, "its own")
"""


def test_two_third_party_packages_same_name_is_ambiguous(site):
    site.plugin("pkg-a", TWIN.format(own="own-a"), "1.0")
    site.plugin("pkg-b", TWIN.format(own="own-b"), "2.0")
    with pytest.warns(registry_module.PluginWarning, match=r"kernel 'twin' is also provided by pkg-\w 1?2?\.0"):
        reg = Registry()
    assert "twin" not in reg.names("kernels")
    assert {"own-a", "own-b"} <= set(reg.names("kernels"))
    with pytest.raises(registry_module.AmbiguousComponentError) as info:
        reg.get("kernels", "twin")
    msg = str(info.value)
    assert "kernel 'twin' is registered by both" in msg and "pkg-a 1.0" in msg and "pkg-b 2.0" in msg
    assert "uninstall one of them" in msg
    assert isinstance(info.value, UnknownComponentError)
    with pytest.raises(registry_module.AmbiguousComponentError):
        reg.create("kernels", "twin")
    with pytest.raises(registry_module.AmbiguousComponentError, match="registered by both"), \
            pytest.warns(registry_module.PluginWarning, match="twin"):
        kdistill.label_solve(ipc=1, target_batch=200, kernel="twin")


# ------------------------------------------------------------------ 2. broken plugins

GOOD = """
from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.rbf import RBFKernel

@hookimpl
def kdistill_register_kernels(register):
    register("good-kernel", RBFKernel, "a working plugin beside the broken one")
"""

HOOK = """
import sys
from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.rbf import RBFKernel

@hookimpl
def kdistill_register_kernels(register):
    register("half-registered", RBFKernel, "registered before the failure")
    {body}
"""

BROKEN = {
    "import raises": ("raise RuntimeError('boom at import')\n",
                      "importing '{mod}' failed (RuntimeError: boom at import)"),
    "sys.exit at import": ("import sys\nsys.exit(3)\n", "importing '{mod}' failed (called sys.exit(3))"),
    "hook raises": (HOOK.format(body="raise RuntimeError('boom in hook')"),
                    "kdistill_register_kernels raised (RuntimeError: boom in hook)"),
    "hook exits": (HOOK.format(body="sys.exit(3)"), "kdistill_register_kernels raised (called sys.exit(3))"),
    "None name": (HOOK.format(body="register(None, RBFKernel, 'x')"), "it registers a kernel named None"),
    "int name": (HOOK.format(body="register(7, RBFKernel, 'x')"), "it registers a kernel named 7"),
    "import-path name": (HOOK.format(body="register('os:system', RBFKernel, 'x')"),
                         "it registers a kernel named 'os:system'; a name must be a string of letters"),
    "blank name": (HOOK.format(body="register(' ', RBFKernel, 'x')"), "it registers a kernel named ' '"),
    "not callable": (HOOK.format(body="register('nc', 42, 'x')"),
                     "its kernel 'nc' has a factory that is not callable (42)"),
    "description not str": (HOOK.format(body="register('nd', RBFKernel, 3.5)"),
                            "its kernel 'nd' has a description that is not a string (3.5)"),
    "twice": (HOOK.format(body="register('half-registered', RBFKernel, 'again')"),
              "it registers kernel 'half-registered' twice"),
    "swallows error": (HOOK.format(body="try:\n        register(None, RBFKernel)\n    except Exception:\n        pass"),
                       "it registers a kernel named None"),
    "bad hook signature": ("from kdistill.core.hookspecs import hookimpl\n\n@hookimpl\n"
                           "def kdistill_register_kernels(reg):\n    pass\n",
                           "pluggy refused its hook implementations"),
    "hook wrapper": ("from kdistill.core.hookspecs import hookimpl\n\n@hookimpl(wrapper=True)\n"
                     "def kdistill_register_kernels(register):\n    return (yield)\n",
                     "kdistill_register_kernels is a hook wrapper"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_plugin_is_reported_and_skipped(site, case):
    source, reason = BROKEN[case]
    mod = site.plugin("broken-pkg", source, "0.3")
    site.plugin("good-pkg", GOOD, "1.1")
    reason = reason.format(mod=mod)
    with pytest.warns(registry_module.PluginWarning) as record:
        reg = Registry()
    [message] = [str(w.message) for w in record]
    assert message.startswith("kdistill plugin 'broken-pkg:plug' (broken-pkg 0.3) skipped: "), message
    assert reason in message and message.endswith("fix or uninstall broken-pkg"), message
    [problem] = reg.problems
    assert (problem.status, problem.package, problem.version) == ("broken", "broken-pkg", "0.3")
    # nothing of the broken plugin is registered; everything else is
    assert "half-registered" not in reg.names("kernels")
    assert reg.get("kernels", "good-kernel").package == "good-pkg"
    assert reg.get("kernels", "fc").package == "kdistill"
    # `kdistill plugins` works and lists the broken plugin with the reason
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # listed, not warned twice
    header, line = problem_lines(result.stdout)
    assert header.split() == ["status", "plugin", "package", "reason"]
    assert line.split()[:4] == ["broken", "broken-pkg:plug", "broken-pkg", "0.3"] and reason in line


def test_broken_plugin_leaves_other_commands_working(site, tmp_path):
    site.plugin("broken-pkg", HOOK.format(body="raise RuntimeError('boom in hook')"))
    out = tmp_path / "run"
    with pytest.warns(registry_module.PluginWarning, match="boom in hook"):
        result = CliRunner().invoke(main, ["distill", *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "distilled.npz").is_file()
    with pytest.warns(registry_module.PluginWarning):
        reg = Registry()
    with pytest.raises(UnknownComponentError, match="unknown kernel 'half-registered'; available kernels: convnet"):
        reg.get("kernels", "half-registered")


def test_register_plugin_directly_gets_the_same_checks():
    import types

    from kdistill.core.hookspecs import hookimpl

    module = types.ModuleType("direct_bad")

    @hookimpl
    def kdistill_register_losses(register):
        register(None, object, "bad")

    module.kdistill_register_losses = kdistill_register_losses
    reg = Registry(third_party=False)
    with pytest.warns(registry_module.PluginWarning, match="it registers a loss named None"):
        reg.register_plugin(module, package="direct", version="1")
    assert reg.names("losses") == ["mse", "platt"]
    assert [p.status for p in reg.problems] == ["broken"]


def test_real_process_survives_sys_exit_plugin(site, tmp_path):
    """In a real process (not CliRunner): a plugin that calls sys.exit(3) at import
    neither ends `kdistill plugins` nor `kdistill distill`."""
    site.plugin("exit-pkg", "import sys\nsys.exit(3)\n", "0.9")
    env = {k: v for k, v in os.environ.items() if k != registry_module.DISABLE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "kdistill.cli", "plugins"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "called sys.exit(3)" in proc.stdout and proc.stderr == ""
    assert "kernel        fc" in proc.stdout or any(l.split()[:2] == ["kernel", "fc"] for l in proc.stdout.splitlines())
    proc = subprocess.run([sys.executable, "-m", "kdistill.cli", "distill", *FAST, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "kdistill:0: PluginWarning: kdistill plugin 'exit-pkg:plug' (exit-pkg 0.9) skipped" in proc.stderr
    assert (tmp_path / "run" / "distilled.npz").is_file()


# ------------------------------------------------------------------ 2. provenance


def test_provenance_of_builtins_and_unknown():
    reg = Registry(third_party=False)
    assert reg.provenance("kernels", "fc") == {"package": "kdistill", "version": kdistill.__version__,
                                               "plugin": "kdistill:kernels"}
    with pytest.raises(UnknownComponentError, match="unknown solver 'svd'; available solvers: cholesky"):
        reg.provenance("solvers", "svd")
    prov = registry_module.component_provenance(DistillConfig(eval_kernel="rbf", valid_kernel="fc"), reg)
    assert list(prov) == ["method", "backend", "dataset", "kernel", "eval_kernel", "valid_kernel", "solver", "loss",
                          "optimizer", "schedule"]
    assert {p["package"] for p in prov.values()} == {"kdistill"}
    assert prov["eval_kernel"]["name"] == "rbf" and prov["solver"]["name"] == "cholesky"


THIRD_PARTY_KERNEL = """
from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.kernels.rbf import RBFKernel

@hookimpl
def kdistill_register_kernels(register):
    register("rbf2", RBFKernel, "the RBF kernel under another name")
"""


def test_artifact_records_supplying_package(site, tmp_path):
    site.plugin("kd-rbf2", THIRD_PARTY_KERNEL, "3.1.4")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["distill", "--kernel", "rbf2", *FAST, "--out", str(run)])
    assert result.exit_code == 0, result.output
    art = kdistill.load(run / "distilled.npz")
    comps = art.metrics["components"]
    assert comps["kernel"] == {"kind": "kernel", "name": "rbf2", "package": "kd-rbf2", "version": "3.1.4",
                               "plugin": "kd-rbf2:plug"}
    assert comps["solver"]["package"] == "kdistill" and comps["dataset"]["name"] == "digits"


def test_errors_are_kdistill_errors():
    assert issubclass(registry_module.AmbiguousComponentError, KdistillError)
    assert issubclass(registry_module.PluginWarning, UserWarning)
