"""The ``nt`` kernel plugin: neural-tangents stax architectures as kdistill kernels."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kdistill.errors import ConfigError, IncompatibleComponentsError
from kdistill.plugins.kernels.convnet import ConvNetKernel
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.nt import NTKernel


def test_catalogue_convnet_equals_our_convnet(nt_available, jax_backend, rng):
    b = jax_backend
    x1, x2 = b.asarray(rng.standard_normal((3, 8, 8, 2)), "float64"), b.asarray(rng.standard_normal((4, 8, 8, 2)), "float64")
    for kind in ("nngp", "ntk"):
        ours = ConvNetKernel(kind=kind, depth=2, stem=True).bind(b)(x1, x2)
        theirs = NTKernel(arch="convnet", kind=kind, arch_params={"depth": 2, "stem": True}).bind(b)(x1, x2)
        np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), rtol=1e-10)


def test_registered_architecture_and_batching(nt_available, jax_backend, rng):
    """The registered architecture 'fc' equals our FC kernel, also when computed in
    blocks of rows."""
    b = jax_backend
    x1, x2 = b.asarray(rng.standard_normal((5, 3, 3, 2)), "float64"), b.asarray(rng.standard_normal((7, 3, 3, 2)), "float64")
    ref = np.asarray(FCKernel(depth=2).bind(b)(x1, x2))
    k = NTKernel(arch="fc", arch_params={"depth": 2}, batch_size=2).bind(b)
    np.testing.assert_allclose(np.asarray(k(x1, x2)), ref, rtol=1e-10)


def test_import_paths_are_refused_without_importing(monkeypatch):
    """An import path (even of kdistill's own architecture function) is refused at
    construction, naming the registered architectures; nothing is imported."""
    imported = []
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    for path in ("kdistill.plugins.kernels.nt:fc_arch", "kdistill.plugins.kernels.nt.fc_arch", "os:system"):
        with pytest.raises(ConfigError) as info:
            NTKernel(arch=path)
        msg = str(info.value)
        assert f"NTKernel.arch must be the name of a registered architecture, got {path!r}" in msg
        assert "registered architectures: convnet, fc" in msg
        assert "import paths are not accepted" in msg and "kdistill_register_architectures" in msg
    assert imported == []


def test_jax_only(jax_backend, torch_backend, registry):
    with pytest.raises(IncompatibleComponentsError, match="supports: jax"):
        NTKernel().bind(torch_backend)
    from kdistill.runtime.components import build_components
    from kdistill.core.config import DistillConfig

    with pytest.raises(IncompatibleComponentsError, match="convnet"):
        build_components(DistillConfig(backend="torch", kernel={"name": "nt"}), registry)


def test_bad_architecture_fails_at_bind(nt_available, jax_backend):
    with pytest.raises(ConfigError, match="must be the name of a registered architecture"):
        NTKernel(arch="no_such_module.arch")
    with pytest.raises(ConfigError, match="arch 'convnet2' is not a registered architecture; registered architectures: convnet, fc"):
        NTKernel(arch="convnet2").bind(jax_backend)
    with pytest.raises(ConfigError, match="failed"):
        NTKernel(arch="convnet", arch_params={"no_such_param": 1}).bind(jax_backend)
    with pytest.raises(ConfigError, match="arch_params"):
        NTKernel(arch_params=[1, 2])


def test_missing_neural_tangents_gives_install_instructions(tmp_path):
    """With neural-tangents unimportable, kdistill still imports and lists the plugin,
    and binding the kernel fails with the install command."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["neural_tangents"] = None  # makes `import neural_tangents` fail
        import kdistill
        from kdistill.core.registry import Registry
        from kdistill.errors import ConfigError
        reg = Registry()
        assert "nt" in reg.names("kernels")
        k = reg.create("kernels", "nt", arch="convnet")
        try:
            k.bind(reg.backend("jax"))
        except ConfigError as exc:
            print("ERR", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "ERR neural-tangents is not usable here" in out.stdout
    assert "pip install --no-deps neural-tangents==0.6.5" in out.stdout
