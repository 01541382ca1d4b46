"""One ConvNet architecture (kdistill.ops.convnet.ConvNetSpec) read by its four users: the
exact NNGP/NTK kernel, the random-feature kernel (RFAD), the neural-tangents adapter's
stax network and the finite torch ConvNet. They agree with the documented architecture,
with each other, and all follow a change made to the spec alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdistill.errors import ConfigError
from kdistill.ops.convnet import READOUTS, AvgPool, Conv, ConvNetSpec, Readout, Relu
from kdistill.plugins.kernels.convnet import ConvNetKernel
from kdistill.plugins.kernels.rf_convnet import RandomFeatureConvNetKernel

SPECS = [
    dict(depth=1),
    dict(depth=2, readout="gap"),
    dict(depth=3, sw2=1.5, sb2=0.2),
    dict(depth=2, pool=False, stem=True),
    dict(depth=1, pool=False, readout="gap"),
]


def _names(layers):
    return [type(s).__name__ for s in layers]


def test_layers_are_the_documented_architecture():
    """[Conv, Relu] stem + [Conv, Relu, AvgPool] * depth + Readout, every weighted step with
    the spec's variances; only the first conv reads the input."""
    spec = ConvNetSpec(depth=2, stem=True, readout="gap", sw2=1.5, sb2=0.25)
    assert spec.layers() == (
        Conv(1.5, 0.25, first=True), Relu(),
        Conv(1.5, 0.25), Relu(), AvgPool(),
        Conv(1.5, 0.25), Relu(), AvgPool(),
        Readout("gap", 1.5, 0.25),
    )
    assert _names(ConvNetSpec(depth=3, pool=False).layers()) == ["Conv", "Relu"] * 3 + ["Readout"]
    assert ConvNetSpec().layers()[-1] == Readout("flatten", 2.0, 0.01)  # KIP/RFAD defaults
    assert ConvNetSpec(depth=3).out_hw(32, 28) == (4, 3) and ConvNetSpec(depth=3, pool=False).out_hw(5, 5) == (5, 5)
    assert ConvNetSpec(pool=False).diagonal_only and not ConvNetSpec(pool=False, readout="gap").diagonal_only


def test_spec_validation():
    assert READOUTS == ("flatten", "gap")
    for bad, match in [(dict(readout="max"), "readout"), (dict(depth=0), "depth"), (dict(pool=1), "pool"),
                       (dict(sw2=0.0), "sw2"), (dict(sb2=-1.0), "sb2")]:
        with pytest.raises(ConfigError, match=match):
            ConvNetSpec(**bad)
    with pytest.raises(ConfigError, match="too small for 3 2x2 pools"):
        ConvNetSpec(depth=3).check_image(4, 16)
    ConvNetSpec(depth=3).check_image(8, 8)


def test_kernels_expose_their_spec():
    params = dict(depth=2, pool=False, readout="gap", stem=True, sw2=1.5, sb2=0.2)
    assert ConvNetKernel(**params).spec == ConvNetSpec(**params)
    assert RandomFeatureConvNetKernel(**params).spec == ConvNetSpec(**params)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("norm", ["none", "instance"])
def test_finite_convnet_layers(depth, norm):
    """The finite ConvNet: per block conv3x3 (padding 1) -> norm -> ReLU -> AvgPool(2), then
    Linear over width * (H / 2^depth) * (W / 2^depth) features."""
    import torch
    from torch import nn

    from kdistill.nn.models import ConvNet

    m = ConvNet((16, 8, 3), 5, width=6, depth=depth, norm=norm)
    assert m.spec == ConvNetSpec(depth=depth)
    norm_t = nn.Identity if norm == "none" else nn.GroupNorm
    assert [type(x) for x in m.features] == [nn.Conv2d, norm_t, nn.ReLU, nn.AvgPool2d] * depth
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.kernel_size, c.padding) for c in convs] == [(3, (3, 3), (1, 1))] + [(6, (3, 3), (1, 1))] * (depth - 1)
    assert m.readout.in_features == 6 * (16 >> depth) * (8 >> depth)
    assert m(torch.zeros(2, 16, 8, 3)).shape == (2, 5)


@pytest.mark.parametrize("spec", [dict(depth=2, readout="gap", stem=True), dict(depth=2, pool=False)], ids=str)
def test_finite_convnet_other_specs(spec):
    import torch
    from torch import nn

    from kdistill.nn.models import ConvNet

    s = ConvNetSpec(**spec)
    m = ConvNet((8, 8, 2), 3, width=4, norm="none", spec=s)
    kinds = {nn.Conv2d: "Conv", nn.ReLU: "Relu", nn.AvgPool2d: "AvgPool"}
    assert [kinds[type(x)] for x in m.features if type(x) in kinds] == _names(s.layers())[:-1]
    assert m.readout.in_features == (4 if s.readout == "gap" else 4 * 8 * 8)
    assert m(torch.zeros(1, 8, 8, 2)).shape == (1, 3)


@pytest.mark.parametrize("params", SPECS, ids=str)
def test_exact_kernel_equals_nt_network_of_the_spec(nt_available, jax_backend, rng, params):
    """The exact kernel's interpreter and the nt adapter's stax network of the same spec
    agree (float64, NNGP and NTK); a different spec does not."""
    from kdistill.plugins.kernels.nt import NTKernel

    b = jax_backend
    x1 = b.asarray(rng.standard_normal((2, 8, 8, 2)), "float64")
    x2 = b.asarray(rng.standard_normal((3, 8, 8, 2)), "float64")
    for kind in ("nngp", "ntk"):
        ours = np.asarray(ConvNetKernel(kind=kind, **params).bind(b)(x1, x2))
        theirs = np.asarray(NTKernel(arch="convnet", kind=kind, arch_params=params).bind(b)(x1, x2))
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    other = {**params, "stem": not params.get("stem", False)}  # one conv + ReLU more or less
    theirs = np.asarray(NTKernel(arch="convnet", kind="ntk", arch_params=other).bind(b)(x1, x2))
    assert not np.allclose(ours, theirs, rtol=1e-3)


@pytest.mark.parametrize("params", [dict(depth=2), dict(depth=1, readout="gap", stem=True)], ids=str)
def test_random_features_approach_the_exact_nngp(torch_backend, rng, params):
    """The mean of the rf-convnet estimates over independent draws is within 4 standard
    errors (plus an O(1/width) finite-width allowance) of the exact NNGP of the same spec;
    the exact NNGP of another spec is not."""
    b = torch_backend
    width, draws = 128, 16
    x = b.asarray(rng.standard_normal((3, 8, 8, 2)), "float64")
    est = np.stack([b.to_numpy(RandomFeatureConvNetKernel(n_models=4, width=width, seed=s, **params).bind(b)(x, x))
                    for s in range(draws)])
    mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(draws)

    def close(exact):
        return np.abs(mean - exact) < 4 * se + 4.0 / width * np.abs(exact)

    exact = b.to_numpy(ConvNetKernel(kind="nngp", **params).bind(b)(x, x))
    assert np.all(close(exact)), (mean, exact, se)
    other = {**params, "stem": not params.get("stem", False)}  # one conv + ReLU more or less
    assert not np.all(close(b.to_numpy(ConvNetKernel(kind="nngp", **other).bind(b)(x, x))))


def test_a_change_of_the_spec_reaches_all_four_users(monkeypatch, jax_backend, rng):
    """Drop the last AvgPool in ConvNetSpec.layers alone: the finite ConvNet's readout, the
    random features' size, the exact kernel and the stax network all follow, and the
    exact kernel still equals the stax network."""
    from kdistill.nn.models import ConvNet

    b = jax_backend
    x1 = b.asarray(rng.standard_normal((2, 8, 8, 1)), "float64")
    x2 = b.asarray(rng.standard_normal((3, 8, 8, 1)), "float64")
    before = np.asarray(ConvNetKernel(depth=2).bind(b)(x1, x2))
    original = ConvNetSpec.layers

    def without_last_pool(self):
        layers = list(original(self))
        del layers[max(i for i, s in enumerate(layers) if isinstance(s, AvgPool))]
        return tuple(layers)

    monkeypatch.setattr(ConvNetSpec, "layers", without_last_pool)
    assert ConvNet((8, 8, 1), 2, width=3, depth=2, norm="none").readout.in_features == 3 * 4 * 4
    rf = RandomFeatureConvNetKernel(depth=2, n_models=2, width=3).bind(b)
    assert rf.features(x1).shape == (2, 2 * 3 * 4 * 4 + 1)
    after = np.asarray(ConvNetKernel(depth=2).bind(b)(x1, x2))
    assert not np.allclose(after, before, rtol=1e-3)
    try:
        from kdistill.runtime.optional import import_neural_tangents

        import_neural_tangents()
    except ConfigError:
        return
    from kdistill.plugins.kernels.nt import NTKernel

    theirs = np.asarray(NTKernel(arch="convnet", arch_params={"depth": 2}).bind(b)(x1, x2))
    np.testing.assert_allclose(after, theirs, rtol=1e-10)
