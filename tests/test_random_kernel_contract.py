"""The random-kernel contract (kdistill.core.contracts.RandomKernel) is what the KIP loop
calls: a third-party random kernel written to it passes kdistill.testing.check_random_kernel
and then distills; the kit catches kernels that break it; the old `is_random`/`sample()`
contract is refused when the class is defined; the example plugin's random Fourier
features pass the kit, estimate the Laplace kernel and distill through the registry."""

from __future__ import annotations

import importlib.util
import math
import tomllib
from pathlib import Path

import attrs
import numpy as np
import pytest

import kdistill
from kdistill.core import registry as registry_module
from kdistill.core.contracts import ContractError, Kernel, RandomKernel, step_seed
from kdistill.errors import KdistillError
from kdistill.core.hookspecs import hookimpl
from kdistill.core.registry import Registry
from kdistill.testing import check_random_kernel

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kdistill-laplace"


# ------------------------------------------------------------------ a third party's random kernel


@attrs.define(kw_only=True)
class RandomLinearFeatures(RandomKernel):
    """Written from the RandomKernel docstring only: ``Phi(x) = x W / sqrt(D)`` with
    ``W [d, D]`` standard normal, so ``E k(x, x') = x . x'``."""

    has_features = True
    n_features: int = 16
    seed: int = 0
    calls = []  # (seed, input_shape) of every sample_weights call, shared by all instances
    _weights: dict | None = attrs.field(default=None, init=False, repr=False, eq=False)

    def sample_weights(self, seed, input_shape):
        type(self).calls.append((seed, tuple(input_shape)))
        return {"w": np.random.default_rng(seed).standard_normal((math.prod(input_shape), self.n_features))}

    def with_weights(self, weights):
        out = self.bind(self.b)
        out._weights = dict(weights)
        return out

    def features(self, x):
        xp = self.b.xp
        w = self._weights["w"] if self._weights is not None else self.b.asarray(
            np.random.default_rng(self.seed).standard_normal((math.prod(x.shape[1:]), self.n_features)))
        return xp.reshape(x, (x.shape[0], -1)) @ xp.astype(w, x.dtype) / math.sqrt(self.n_features)

    def __call__(self, x1, x2):
        return self.features(x1) @ self.b.xp.matrix_transpose(self.features(x2))


class ThirdPartyPlugin:
    @staticmethod
    @hookimpl
    def kdistill_register_kernels(register):
        register("rand-linear", RandomLinearFeatures, "random linear features (test plugin)")


@pytest.fixture
def default_registry(monkeypatch):
    """A process registry with built-ins only; kdistill.distill resolves names through it."""
    reg = Registry(third_party=False)
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


def test_third_party_random_kernel_passes_the_kit_and_distills(default_registry):
    """The kit passes, then a KIP run through the registry calls sample_weights once per
    step with step_seed(run seed, step) and the examples' shape, and uses those draws:
    both backends follow one trajectory (float64) and the kernel's own seed (its fixed
    draw) does not change the training losses."""
    check_random_kernel(RandomLinearFeatures, input_shape=(3, 2, 2), rtol=1e-9, n_features=8)
    default_registry.register_plugin(ThirdPartyPlugin(), package="third-party", version="1.0")
    run = dict(kernel={"name": "rand-linear", "n_features": 32}, steps=3, ipc=1, target_batch=40,
               dtype="float64", eval_every=0, eval_kernel={"name": "fc"}, seed=4)
    losses = {}
    for backend in ("jax", "torch"):
        RandomLinearFeatures.calls.clear()
        res = kdistill.distill(backend=backend, **run)
        assert RandomLinearFeatures.calls == [(step_seed(4, t), (8, 8, 1)) for t in (1, 2, 3)]
        losses[backend] = res.history["loss"]
    assert np.all(np.isfinite(losses["jax"]))
    np.testing.assert_allclose(losses["torch"], losses["jax"], rtol=1e-9)
    other_fixed_draw = kdistill.distill(backend="jax", **{**run, "kernel": {**run["kernel"], "seed": 7}})
    assert other_fixed_draw.history["loss"] == losses["jax"]
    assert kdistill.distill(backend="jax", **{**run, "seed": 5}).history["loss"] != losses["jax"]


# ------------------------------------------------------------------ the kit catches broken kernels


@attrs.define(kw_only=True)
class IgnoresWeights(RandomLinearFeatures):
    def with_weights(self, weights):
        return self


@attrs.define(kw_only=True)
class GlobalRNG(RandomLinearFeatures):
    def sample_weights(self, seed, input_shape):
        return {"w": np.random.standard_normal((math.prod(input_shape), self.n_features))}


@attrs.define(kw_only=True)
class ShapeVariesWithSeed(RandomLinearFeatures):
    def sample_weights(self, seed, input_shape):
        return {"w": np.random.default_rng(seed).standard_normal((math.prod(input_shape), self.n_features + seed % 2))}


@attrs.define(kw_only=True)
class FeaturesOffByScale(RandomLinearFeatures):
    def __call__(self, x1, x2):
        return 2.0 * super().__call__(x1, x2)


@attrs.define(kw_only=True)
class MutatesItself(RandomLinearFeatures):
    def with_weights(self, weights):
        self._weights = dict(weights)
        return self


@attrs.define(kw_only=True)
class DrawDependsOnBackend(RandomLinearFeatures):
    def sample_weights(self, seed, input_shape):
        return {"w": np.random.default_rng([seed, len(self.b.name)]).standard_normal((math.prod(input_shape), self.n_features))}


@attrs.define(kw_only=True)
class NotARandomKernel(Kernel):
    def __call__(self, x1, x2):
        xp = self.b.xp
        a, b = xp.reshape(x1, (x1.shape[0], -1)), xp.reshape(x2, (x2.shape[0], -1))
        return a @ xp.matrix_transpose(b)


@pytest.mark.parametrize("cls,message", [
    (IgnoresWeights, "ignores its weights"),
    (GlobalRNG, "not reproducible"),
    (ShapeVariesWithSeed, "other names/shapes/dtypes for another seed"),
    (FeaturesOffByScale, r"features\(x1\) @ features\(x2\).T != k\(x1, x2\)"),
    (MutatesItself, "changed the kernel it was called on"),
    (DrawDependsOnBackend, "depends on the backend"),
    (NotARandomKernel, "is not a kdistill.core.contracts.RandomKernel"),
])
def test_kit_catches_a_broken_random_kernel(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_random_kernel(cls, input_shape=(2, 2, 1))


def test_the_old_random_kernel_contract_is_refused_when_the_class_is_defined():
    """`is_random = True` + `sample()` (the old documented contract) passed the kit and
    crashed in KIP; now defining such a class fails with instructions."""
    with pytest.raises(ContractError, match="subclass kdistill.core.contracts.RandomKernel and implement sample_weights"):
        @attrs.define(kw_only=True)
        class OldStyle(Kernel):
            is_random = True

            def __call__(self, x1, x2):
                return x1 @ x2.T

            def sample(self, seed):
                return self
    assert issubclass(ContractError, KdistillError)


# ------------------------------------------------------------------ the example plugin's random kernel


@pytest.fixture(scope="module")
def rff_module():
    """examples/kdistill-laplace's random_features module, imported from its file."""
    spec = importlib.util.spec_from_file_location(
        "kdistill_laplace_rff_under_test", EXAMPLE / "kdistill_laplace" / "random_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_random_kernel_is_one_file_and_one_entry_point(rff_module):
    eps = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]["kdistill"]
    assert eps["laplace-rff"] == "kdistill_laplace.random_features"
    reg = Registry(third_party=False)
    reg.register_plugin(rff_module, package="kdistill-laplace", version="0.1.0")
    entry = reg.get("kernels", "laplace-rff")
    assert entry.factory is rff_module.LaplaceRandomFeatures and entry.package == "kdistill-laplace"
    assert reg.create("kernels", "laplace-rff", gamma=2, n_features=64).get_params() == {
        "gamma": 2.0, "n_features": 64, "seed": 0}


@pytest.mark.parametrize("params,shape", [({"gamma": 0.7, "n_features": 64}, (3, 3, 2)), ({"n_features": 16}, (5,))])
def test_example_random_kernel_passes_the_kit(rff_module, params, shape):
    check_random_kernel(rff_module.LaplaceRandomFeatures, input_shape=shape, rtol=1e-9, **params)


def test_example_random_kernel_estimates_the_laplace_kernel(rff_module, jax_backend):
    """Monte Carlo: the mean of 48 draws of D = 512 features is within 4 standard errors
    of exp(-gamma ||x - x'|| / sqrt(d)) entry by entry, and one draw of D = 16384 is within
    5 / sqrt(D) (each entry's standard deviation is at most 1 / sqrt(D))."""
    gamma, b = 0.8, jax_backend
    x = np.random.default_rng(0).standard_normal((6, 2, 2, 3))
    flat = x.reshape(6, -1)
    exact = np.exp(-gamma * np.linalg.norm(flat[:, None] - flat[None], axis=-1) / np.sqrt(flat.shape[1]))
    assert 0.1 < exact[~np.eye(6, dtype=bool)].min() and exact[~np.eye(6, dtype=bool)].max() < 0.9
    k = rff_module.LaplaceRandomFeatures(gamma=gamma, n_features=512).bind(b)
    xx = b.asarray(x, "float64")
    draws = np.stack([b.to_numpy(k.with_weights({n: b.asarray(v) for n, v in k.sample_weights(s, x.shape[1:]).items()})(xx, xx))
                      for s in range(48)])
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - exact) <= 4 * se + 1e-12)
    big = rff_module.LaplaceRandomFeatures(gamma=gamma, n_features=16384, seed=3).bind(b)
    assert np.abs(b.to_numpy(big(xx, xx)) - exact).max() < 5 / np.sqrt(16384)


def test_example_random_kernel_distills_through_the_registry(rff_module, default_registry):
    """A few KIP steps (Platt loss, feature solver) on the embedded digits with the
    example's kernel, selected by name: finite decreasing-on-average loss, the same
    trajectory on both backends (float64), images moved, and an evaluation under the
    kernel's fixed draw."""
    default_registry.register_plugin(rff_module, package="kdistill-laplace", version="0.1.0")
    run = dict(kernel={"name": "laplace-rff", "gamma": 0.5, "n_features": 256}, solver="feature", loss="platt",
               steps=4, ipc=1, target_batch=60, dtype="float64", eval_every=4, eval_test_size=100, lr=0.01)
    res = {backend: kdistill.distill(backend=backend, **run) for backend in ("jax", "torch")}
    j, t = res["jax"], res["torch"]
    assert np.all(np.isfinite(j.history["loss"])) and len(j.history["loss"]) == 4
    np.testing.assert_allclose(t.history["loss"], j.history["loss"], rtol=1e-8)
    np.testing.assert_allclose(t.images, j.images, rtol=1e-6, atol=1e-8)
    init = kdistill.distill(backend="jax", **{**run, "steps": 0, "eval_every": 0})
    assert np.abs(j.images - init.images).max() > 1e-3
    assert 0.0 <= j.history["eval_acc"][-1] <= 1.0 and j.history["eval_acc"][-1] == t.history["eval_acc"][-1]
