"""Random-feature NNGP kernels (rf-fc, rf-convnet) against the exact fc / convnet NNGP:
unbiased Monte-Carlo mean, O(1/sqrt(N C)) error decay, backend agreement, determinism,
and the per-step draws of the KIP loop."""

from __future__ import annotations

import numpy as np
import pytest

from kdistill.errors import ConfigError
from kdistill.core.contracts import step_seed
from kdistill.plugins.kernels.convnet import ConvNetKernel
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rf_convnet import RandomFeatureConvNetKernel
from kdistill.plugins.kernels.rf_fc import RandomFeatureFCKernel
from kdistill.testing import check_random_kernel

RF = {
    "fc": (RandomFeatureFCKernel, FCKernel, (4, 4, 3)),
    "convnet": (RandomFeatureConvNetKernel, ConvNetKernel, (8, 8, 3)),
}


def _exact(name, backend, x, **arch):
    _, exact_cls, _ = RF[name]
    k = exact_cls(kind="nngp", **arch).bind(backend)
    xx = backend.asarray(x, "float64")
    return backend.to_numpy(k(xx, xx))


def _rf(name, backend, x, **params):
    rf_cls, _, _ = RF[name]
    k = rf_cls(**params).bind(backend)
    xx = backend.asarray(x, "float64")
    return backend.to_numpy(k(xx, xx))


@pytest.mark.parametrize("name,arch", [("fc", {"depth": 1}), ("convnet", {"depth": 1}), ("convnet", {"depth": 1, "readout": "gap"})])
def test_one_layer_mean_is_the_exact_nngp(jax_backend, name, arch):
    """With one hidden layer the pre-activations are exactly Gaussian, so the empirical
    NNGP is an unbiased estimate: the mean over 64 independent draws lies within 4
    standard errors of the closed form, entry by entry."""
    x = np.random.default_rng(0).standard_normal((5, *RF[name][2]))
    exact = _exact(name, jax_backend, x, **arch)
    draws = np.stack([_rf(name, jax_backend, x, n_models=2, width=16, seed=s, **arch) for s in range(64)])
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - exact) <= 4 * se + 1e-12)


@pytest.mark.parametrize("name,depth", [("fc", 2), ("convnet", 2)])
def test_error_shrinks_as_one_over_sqrt_models_times_width(jax_backend, name, depth):
    """RMS relative error over 6 draws at N*C = 16, 64, 256, 1024: the fitted log-log
    slope is -1/2 (Monte-Carlo rate; the O(1/C) finite-width bias of deeper nets is
    smaller at these sizes)."""
    x = np.random.default_rng(1).standard_normal((5, *RF[name][2]))
    exact = _exact(name, jax_backend, x, depth=depth)
    sizes, errors = [], []
    for n_models, width in [(1, 16), (4, 16), (4, 64), (16, 64)]:
        errs = [
            np.sqrt(np.mean((_rf(name, jax_backend, x, n_models=n_models, width=width, seed=s, depth=depth) - exact) ** 2))
            for s in range(6)
        ]
        sizes.append(n_models * width)
        errors.append(np.sqrt(np.mean(np.square(errs))) / np.sqrt(np.mean(exact**2)))
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert -0.65 <= slope <= -0.35, (slope, errors)
    assert errors[-1] < errors[0] / 4  # 64x more features: about 8x smaller


@pytest.mark.parametrize("cls,params,shape", [
    (RandomFeatureFCKernel, {"depth": 2, "n_models": 2, "width": 8}, (4, 4, 2)),
    (RandomFeatureConvNetKernel, {"depth": 2, "n_models": 2, "width": 4}, (4, 4, 2)),
    (RandomFeatureConvNetKernel, {"depth": 1, "n_models": 3, "width": 4, "stem": True, "readout": "gap"}, (4, 4, 2)),
    (RandomFeatureConvNetKernel, {"depth": 2, "n_models": 2, "width": 4, "pool": False, "sb2": 0.0}, (3, 3, 1)),
])
def test_conformance_and_backend_agreement(cls, params, shape):
    """The random-kernel kit (the loop's calls: reproducible host draws, with_weights
    under jit, features vs kernel, symmetric PSD Gram, finite input gradients) and
    identical values and gradients on JAX and torch for the same draw."""
    check_random_kernel(cls, input_shape=shape, rtol=1e-9, **params)


def test_grouped_models_equal_separate_networks(jax_backend, torch_backend):
    """N models run as one grouped convolution equal the average of N one-model kernels
    built from the corresponding weight slices (checks the group layout)."""
    x = np.random.default_rng(2).standard_normal((4, 8, 8, 3))
    for b in (jax_backend, torch_backend):
        k = RandomFeatureConvNetKernel(depth=2, n_models=3, width=4, sb2=0.0).bind(b)
        w = k.sample_weights(7, x.shape[1:])
        xx = b.asarray(x, "float64")
        together = b.to_numpy(k.with_weights({n: b.asarray(v) for n, v in w.items()})(xx, xx))
        single = RandomFeatureConvNetKernel(depth=2, n_models=1, width=4, sb2=0.0).bind(b)
        parts = []
        for m in range(3):
            sl = slice(4 * m, 4 * m + 4)
            wm = {"w0": w["w0"][..., sl], "b0": w["b0"][sl], "w1": w["w1"][..., sl], "b1": w["b1"][sl]}
            parts.append(b.to_numpy(single.with_weights({n: b.asarray(v) for n, v in wm.items()})(xx, xx)))
        np.testing.assert_allclose(together, np.mean(parts, axis=0), rtol=1e-10)


def test_seeded_draws_are_deterministic_and_differ_across_steps(jax_backend):
    x = np.random.default_rng(3).standard_normal((3, 4, 4, 2))
    a = _rf("convnet", jax_backend, x, depth=1, n_models=1, width=4, seed=step_seed(0, 5))
    b = _rf("convnet", jax_backend, x, depth=1, n_models=1, width=4, seed=step_seed(0, 5))
    c = _rf("convnet", jax_backend, x, depth=1, n_models=1, width=4, seed=step_seed(0, 6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert step_seed(0, 5) != step_seed(1, 5)


def test_bad_inputs_are_refused(jax_backend):
    with pytest.raises(ConfigError, match="too small"):
        RandomFeatureConvNetKernel(depth=3).bind(jax_backend)(jax_backend.asarray(np.ones((1, 4, 4, 1))), jax_backend.asarray(np.ones((1, 4, 4, 1))))
    with pytest.raises(ConfigError, match="NHWC"):
        RandomFeatureConvNetKernel().bind(jax_backend).features(jax_backend.asarray(np.ones((2, 10))))
    with pytest.raises(ConfigError, match="readout"):
        RandomFeatureConvNetKernel(readout="max")
    with pytest.raises(ConfigError):
        RandomFeatureFCKernel(width=0)
