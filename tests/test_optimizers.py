"""Optimizers and learning-rate schedules as registered components, and the pure step:
updates against numpy closed forms (float64), schedule values, JAX/torch agreement and
the conformance kit, purity, the config's old string form, resuming checkpoints written
before optimizers became components, and unknown names."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.core.config import ComponentSpec, DistillConfig
from kdistill.core.registry import get_registry
from kdistill.errors import ConfigError, UnknownComponentError
from kdistill.io.checkpoint import config_differences
from kdistill.plugins.optimizers import SGD, Adam, AdamW, Constant, Cosine, WarmupCosine
from kdistill.testing import check_optimizer, check_schedule

DATA = Path(__file__).parent / "data"
EPS = np.finfo(np.float64).eps
LR, STEPS = 0.05, 5
SCALES = np.linspace(0.5, 2.0, 6)


# ------------------------------------------------------------------ numpy references


def _grad(w, t):
    """Gradient of ``mean(0.5 * SCALES * (w - t)^2)``."""
    return SCALES * (w - t) / w.size


def reference(kind: str, w0, t, steps: int, lr: float, **hp) -> np.ndarray:
    """The parameters after ``steps`` updates, from the update equations in the
    optimizers' module docstrings (Kingma & Ba 2015; Loshchilov & Hutter 2019)."""
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for k in range(1, steps + 1):
        g = _grad(w, t)
        if kind in ("adam", "adamw"):
            b1, b2, eps = hp.get("b1", 0.9), hp.get("b2", 0.999), hp.get("eps", 1e-8)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            update = (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps)
            if kind == "adamw":
                update = update + hp.get("weight_decay", 0.01) * w
            w = w - lr * update
        else:
            mu = hp.get("momentum", 0.9)
            m = mu * m + g
            w = w - lr * ((g + mu * m) if hp.get("nesterov", False) else m)
    return w


CASES = [
    ("adam", Adam, {}),
    ("adam", Adam, {"b1": 0.8, "b2": 0.99, "eps": 1e-6}),
    ("sgd", SGD, {}),
    ("sgd", SGD, {"momentum": 0.5, "nesterov": True}),
    ("sgd", SGD, {"momentum": 0.0}),
    ("adamw", AdamW, {}),
    ("adamw", AdamW, {"weight_decay": 0.5, "b1": 0.85}),
]


@pytest.mark.parametrize("kind,cls,hp", CASES, ids=[f"{k}-{sorted(h.items())}" for k, _, h in CASES])
def test_updates_match_the_closed_form(backend, kind, cls, hp, rng):
    w0, t = rng.standard_normal(6), rng.standard_normal(6)
    xp = backend.xp
    scales = backend.asarray(SCALES, "float64")
    train = backend.make_step(lambda p, tt: xp.mean(0.5 * scales * (p["w"] - tt) ** 2), cls(**hp),
                              lr=LR, dtype="float64")
    state = train.init({"w": w0})
    for _ in range(STEPS):
        state, metrics = train(state, backend.asarray(t, "float64"))
        assert bool(metrics["finite"])
    got = train.params(state)["w"]
    want = reference(kind, w0, t, STEPS, LR, **hp)
    assert not np.allclose(want, w0)  # the reference moved
    np.testing.assert_allclose(got, want, rtol=64 * STEPS * EPS, atol=64 * STEPS * EPS)


def test_default_optimizer_hyperparameters_are_todays():
    """adam = optax.adam(lr) / torch.optim.Adam(lr=lr); sgd keeps momentum 0.9."""
    assert Adam().optax() == ("adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-8})
    assert Adam().torch() == ("Adam", {"betas": (0.9, 0.999), "eps": 1e-8})
    assert SGD().optax() == ("sgd", {"momentum": 0.9, "nesterov": False})
    assert SGD().torch() == ("SGD", {"momentum": 0.9, "nesterov": False})


@pytest.mark.parametrize("bad", [{"b1": 1.0}, {"b2": -0.1}, {"eps": 0.0}, {"eps": float("nan")}])
def test_adam_refuses_bad_hyperparameters(bad):
    with pytest.raises(ConfigError, match=f"Adam.{next(iter(bad))} must be"):
        get_registry().create("optimizers", "adam", **bad)


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="nesterov needs a momentum > 0"):
        SGD(momentum=0.0, nesterov=True)


# ------------------------------------------------------------------ schedules


def _cosine(c, total, alpha):
    return alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(c, total) / total))


def _warmup_cosine(c, total, warmup, alpha):
    if c < warmup:
        return (c + 1) / (warmup + 1)
    return _cosine(c - warmup, total - warmup, alpha)


SCHEDULES = [
    (Constant, {}, lambda c, n: 1.0),
    (Cosine, {}, lambda c, n: _cosine(c, n, 0.0)),
    (Cosine, {"alpha": 0.25}, lambda c, n: _cosine(c, n, 0.25)),
    (WarmupCosine, {"warmup": 4, "alpha": 0.1}, lambda c, n: _warmup_cosine(c, n, 4, 0.1)),
    (WarmupCosine, {"warmup": 0}, lambda c, n: _warmup_cosine(c, n, 0, 0.0)),
]


@pytest.mark.parametrize("cls,params,formula", SCHEDULES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_schedule_values_match_the_closed_form(backend, cls, params, formula):
    total = 12
    s = cls(**params).bind(backend)
    got = [float(s(backend.asarray(np.asarray(c, np.int32)), total)) for c in range(total + 4)]
    want = [formula(c, total) for c in range(total + 4)]
    np.testing.assert_allclose(got, want, rtol=4 * EPS, atol=4 * EPS)
    assert got[0] == pytest.approx(1.0 if cls is not WarmupCosine or not params.get("warmup") else 0.2)


@pytest.mark.parametrize("cls,params", [(Cosine, {"alpha": 0.5}), (WarmupCosine, {"warmup": 3})])
def test_schedule_sets_the_learning_rate_of_each_step(backend, cls, params):
    """Plain gradient descent on sum(w * g): after k steps w = -lr g sum_{i<k} schedule(i)."""
    g, total = np.array([1.0, -2.0, 0.5]), 7
    train = backend.make_step(lambda p, gg: backend.xp.sum(p["w"] * gg), SGD(momentum=0.0), cls(**params),
                              lr=0.1, dtype="float64", total_steps=total)
    state = train.init({"w": np.zeros(3)})
    for _ in range(total):
        state, _ = train(state, backend.asarray(g, "float64"))
    s = cls(**params).bind(backend)
    multipliers = [float(s(backend.asarray(np.asarray(c, np.int32)), total)) for c in range(total)]
    assert len(set(np.round(multipliers, 12))) > 1  # not constant
    np.testing.assert_allclose(train.params(state)["w"], -0.1 * sum(multipliers) * g, rtol=1e-13)


# ------------------------------------------------------------------ kit, agreement


@pytest.mark.parametrize("cls,params", [(c, h) for _, c, h in CASES])
def test_builtin_optimizers_pass_the_kit(cls, params):
    check_optimizer(cls, **params)


@pytest.mark.parametrize("cls,params", [(c, p) for c, p, _ in SCHEDULES])
def test_builtin_schedules_pass_the_kit(cls, params):
    check_schedule(cls, **params)


def test_kit_catches_an_optimizer_whose_backends_disagree():
    class Mismatched(Adam):
        def torch(self):
            return "Adam", {"betas": (0.8, 0.999), "eps": 1e-8}  # b1 differs from optax's

    with pytest.raises(AssertionError, match="disagree"):
        check_optimizer(Mismatched)


def test_kit_catches_an_optimizer_that_does_not_descend():
    class Ascent(SGD):
        def optax(self):
            return "sgd", {"momentum": None}

        def torch(self):
            return "SGD", {"maximize": True}

    with pytest.raises(AssertionError, match="not down|disagree"):
        check_optimizer(Ascent, momentum=0.0)


def test_kit_catches_a_schedule_that_is_not_traceable():
    class Branchy(Cosine):
        def __call__(self, count, total):
            return self.b.xp.ones((), dtype=self.b.dtype("float64")) * (1.0 if int(count) < 3 else 0.5)

    with pytest.raises(Exception):  # a Python branch on a traced value fails under jit
        check_schedule(Branchy)


def test_kit_catches_a_negative_schedule():
    class Negative(Cosine):
        def __call__(self, count, total):
            return super().__call__(count, total) - 0.5

    with pytest.raises(AssertionError, match="not finite and >= 0"):
        check_schedule(Negative)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_jax_and_torch_runs_agree(optimizer):
    """Whole float64 KIP runs on both backends follow the same trajectory (different
    kernels' rounding only)."""
    cfg = dict(steps=4, ipc=1, target_batch=100, eval_every=0, dtype="float64", optimizer=optimizer,
               schedule="cosine", seed=2)
    a = kdistill.distill(backend="jax", **cfg)
    b = kdistill.distill(backend="torch", **cfg)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-9)
    np.testing.assert_allclose(a.images, b.images, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ purity


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_step_never_mutates_its_input_state(backend, optimizer, rng):
    xp = backend.xp
    train = backend.make_step(lambda p, t: xp.mean((p["w"] - t) ** 2) + xp.sum(p["loss/b"] ** 2), optimizer,
                              "cosine", lr=0.1, total_steps=10)
    t = backend.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    s0 = train.init({"w": rng.standard_normal((4, 3)).astype(np.float32), "loss/b": np.float32(0.3)})
    s1, _ = train(s0, t)  # torch: the first step creates the optimizer state
    snapshots = [train.to_arrays(s0), train.to_arrays(s1)]
    s2, _ = train(s1, t)
    s2b, _ = train(s1, t)  # the same step twice gives the same state
    for i, s in enumerate((s0, s1)):
        for k, v in snapshots[i].items():
            assert train.to_arrays(s)[k].tobytes() == v.tobytes(), f"state {i}: {k} changed"
    for k, v in train.to_arrays(s2).items():
        np.testing.assert_array_equal(train.to_arrays(s2b)[k], v)
    grads = train.gradients(s1, t)[1]
    assert set(grads) == {"w", "loss/b"}
    s3 = train.apply(s1, grads)  # the separable pieces compose to the step (JAX compiles them apart:
    for k, v in train.to_arrays(s2).items():  # float32 rounding may differ by an ulp)
        np.testing.assert_allclose(train.to_arrays(s3)[k], v, rtol=1e-6, atol=1e-7)


def test_torch_step_keeps_optimizer_state_out_of_the_input(torch_backend):
    """torch.optim updates its state in place (Adam's step counter, moments): the step
    must work on copies."""
    train = torch_backend.make_step(lambda p: (p["w"] ** 2).sum(), "adam")
    s1, _ = train(train.init({"w": np.ones(3, np.float32)}))
    step_before = s1.opt["w"]["step"].clone()
    avg_before = s1.opt["w"]["exp_avg"].clone()
    train(s1)
    assert s1.opt["w"]["step"].item() == step_before.item() == 1.0
    assert np.array_equal(s1.opt["w"]["exp_avg"].numpy(), avg_before.numpy())


# ------------------------------------------------------------------ config and CLI


def test_old_string_form_of_the_optimizer_loads():
    old = DistillConfig.from_toml('optimizer = "sgd"\nsteps = 3\n')
    assert old.optimizer == ComponentSpec(name="sgd")
    assert old.schedule == ComponentSpec(name="constant")
    assert DistillConfig.from_dict({"optimizer": "adam"}) == DistillConfig()
    table = DistillConfig.from_toml('[optimizer]\nname = "sgd"\nnesterov = true\n')
    assert table.optimizer == ComponentSpec(name="sgd", params={"nesterov": True})
    assert DistillConfig.from_toml(table.to_toml()) == table
    assert "[optimizer]" in DistillConfig().to_toml()
    # a checkpoint storing the string compares equal to today's default config
    assert config_differences({**DistillConfig().to_dict(), "optimizer": "adam"}, DistillConfig().to_dict()) == []
    assert config_differences({"optimizer": "sgd"}, DistillConfig().to_dict()) != []


def test_overrides_set_optimizer_parameters():
    cfg = DistillConfig().with_overrides(["optimizer=sgd", "optimizer.momentum=0.5", "schedule.name=cosine",
                                          "schedule.alpha=0.1"])
    assert cfg.optimizer == ComponentSpec(name="sgd", params={"momentum": 0.5})
    assert cfg.schedule == ComponentSpec(name="cosine", params={"alpha": 0.1})


def test_unknown_optimizer_and_schedule_names_list_the_available_ones():
    with pytest.raises(UnknownComponentError, match=r"unknown optimizer 'adagrad'; available optimizers: "
                                                    r"adam, adamw, sgd"):
        kdistill.distill(optimizer="adagrad", steps=1)
    with pytest.raises(UnknownComponentError, match=r"unknown schedule 'step'; available schedules: "
                                                    r"constant, cosine, warmup-cosine"):
        kdistill.distill(schedule="step", steps=1)
    with pytest.raises(ConfigError, match=r"optimizer 'adam' has no parameter\(s\) beta1; accepted: b1, b2, eps"):
        kdistill.distill(optimizer={"name": "adam", "beta1": 0.8}, steps=1)


def test_cli_optimizer_flags_and_plugins_listing(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, ["distill", "--optimizer", "sgd", "-s", "optimizer.nesterov=true", "--schedule",
                               "warmup-cosine", "-s", "schedule.warmup=1", "--steps", "2", "--ipc", "1",
                               "--target-batch", "100", "--eval-every", "0", "--no-progress", "--no-grid",
                               "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = DistillConfig.from_file(out / "config.toml")
    assert saved.optimizer == ComponentSpec(name="sgd", params={"nesterov": True})
    assert saved.schedule == ComponentSpec(name="warmup-cosine", params={"warmup": 1})
    res = runner.invoke(main, ["distill", "--optimizer", "rmsprop", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "available optimizers: adam, adamw, sgd" in res.output
    listing = runner.invoke(main, ["plugins"]).output
    for kind, name in (("optimizer", "adamw"), ("schedule", "warmup-cosine")):
        assert any(line.split()[:2] == [kind, name] for line in listing.splitlines()), listing


# ------------------------------------------------------------------ checkpoints


OLD_CONFIG = dict(ipc=1, target_batch=100, eval_every=0, seed=7, learn_labels=True, loss="platt", steps=6,
                  checkpoint_every=3)


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resumes_a_checkpoint_written_before_optimizers_were_components(tmp_path, backend_name, optimizer):
    """tests/data/checkpoint_pre_optimizers_*.npz: step 3 of 6 of a run checkpointed by
    kdistill before this change (config ``optimizer = "<name>"``, the trainer's state
    layout), on jax 0.5.3 / torch 2.13 on an AMD EPYC. Resuming it continues that run.

    Steps 1-3 of the result are the file's own. Steps 4-6 are computed here from its
    state and compared with an uninterrupted run computed here: on the stack and CPU that
    wrote the file they agree bit for bit; on another JAX/optax version or CPU (XLA and
    BLAS round float32 differently) the uninterrupted run's first 3 steps differ from the
    file's by float32 rounding (measured with jax 0.10.2: up to 8e-7 relative in those
    losses, 2.3e-8 in the losses of steps 4-6, 4e-6 of the images' scale). A misread
    optimizer state is far larger: every moment off by 1% alone moves the step-5/6 losses
    by 2e-5..4e-5 (Adam) / 2e-6..4e-6 (SGD) relative; a lost or swapped moment by more."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fixture = DATA / f"checkpoint_pre_optimizers_{backend_name}_{optimizer}.npz"
    shutil.copy(fixture, run_dir / "checkpoint.npz")
    resumed = kdistill.distill(run_dir=run_dir, resume=True)
    whole = kdistill.distill(backend=backend_name, optimizer=optimizer, **OLD_CONFIG)
    assert resumed.history["step"] == [1, 2, 3, 4, 5, 6]
    from kdistill.io.checkpoint import load_checkpoint

    assert resumed.history["loss"][:3] == load_checkpoint(fixture).history["loss"]
    np.testing.assert_allclose(resumed.history["loss"][3:], whole.history["loss"][3:], rtol=1e-6)
    for got, want in ((resumed.images, whole.images), (resumed.labels, whole.labels),
                      (resumed.loss_params["log_tau"], whole.loss_params["log_tau"])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


class Crash(Exception):
    pass


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
def test_resume_with_a_schedule_is_bit_for_bit(tmp_path, backend_name):
    cfg = dict(OLD_CONFIG, backend=backend_name, optimizer="adamw", schedule={"name": "warmup-cosine", "warmup": 2})

    def crash(info):
        if info["step"] == 5:
            raise Crash()

    with pytest.raises(Crash):
        kdistill.distill(run_dir=tmp_path, callback=crash, **cfg)
    resumed = kdistill.distill(run_dir=tmp_path, resume=True)
    whole = kdistill.distill(**cfg)
    assert resumed.history["loss"] == whole.history["loss"]
    np.testing.assert_array_equal(resumed.images, whole.images)


@pytest.mark.parametrize("backend_name", ["jax", "torch"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_checkpoint_layout_is_the_one_before_optimizers_were_components(tmp_path, backend_name, optimizer):
    """A checkpoint written now holds the same entries (names, dtypes, shapes) as the one
    the earlier kdistill wrote at the same step, with the same values: bit for bit on the
    stack and CPU that made the file; elsewhere to float32 rounding amplified by 3 steps
    (Adam normalizes each coordinate's step, so a coordinate whose gradient is rounding
    noise can move by up to ~lr = 1e-2 per step: the tolerance is 1e-3 of each array's
    scale, while a misplaced entry is off by the array's scale)."""
    from kdistill.io.checkpoint import load_checkpoint

    def crash(info):
        if info["step"] == 5:
            raise Crash()

    with pytest.raises(Crash):
        kdistill.distill(run_dir=tmp_path, callback=crash, backend=backend_name, optimizer=optimizer, **OLD_CONFIG)
    new = load_checkpoint(tmp_path / "checkpoint.npz").trainer_state
    old = load_checkpoint(DATA / f"checkpoint_pre_optimizers_{backend_name}_{optimizer}.npz").trainer_state
    assert sorted(new) == sorted(old)
    for k, v in old.items():
        assert (new[k].dtype, new[k].shape) == (v.dtype, v.shape), k
        np.testing.assert_allclose(new[k], v, rtol=0, atol=1e-3 * max(np.abs(v).max(), 1e-30), err_msg=k)
