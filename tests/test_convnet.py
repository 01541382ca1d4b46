"""ConvNet NNGP/NTK kernels: neural-tangents (values and input gradients), wide random
finite ConvNets (Monte-Carlo), JAX against torch, tiling/chunking invariance, the
gradient at coincident pixels, conformance, errors and per-block progress."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdistill.errors import ConfigError
from kdistill.plugins.kernels.convnet import ConvNetKernel, ConvNetNoPoolKernel
from kdistill.testing import check_kernel

# (H, C, depth, pool, readout, stem, tiny tiles): pooled/unpooled, Flatten/GAP, odd sizes,
# the KIP stem; "tiny tiles" forces several tiles, column groups and first-layer chunks
ARCHS = [
    (8, 3, 3, True, "flatten", False, False),  # the papers' ConvNet: 8 -> 4 -> 2 -> 1
    (6, 2, 2, True, "flatten", False, True),  # the same through tiles, groups and chunks
    (7, 1, 2, True, "gap", True, False),  # odd size (VALID pooling drops a row), GAP, stem
    (6, 2, 2, False, "flatten", False, True),  # convnet-nopool: diagonal covariances only
]


def _nt_kernel_fn(depth, pool, readout, stem, sw2=2.0, sb2=0.01):
    from kdistill.runtime.optional import import_neural_tangents

    try:
        nt = import_neural_tangents()
    except ConfigError as exc:
        pytest.skip(str(exc))
    stax = nt.stax
    w, b = math.sqrt(sw2), math.sqrt(sb2)

    def conv():
        return stax.Conv(8, (3, 3), padding="SAME", W_std=w, b_std=b)

    layers = [conv(), stax.Relu()] if stem else []
    for _ in range(depth):
        layers += [conv(), stax.Relu()] + ([stax.AvgPool((2, 2), strides=(2, 2))] if pool else [])
    layers += [stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool(), stax.Dense(1, W_std=w, b_std=b)]
    import jax

    return jax.jit(stax.serial(*layers)[2], static_argnames="get")


def _small_tiles(kernel):
    """Force several tiles, column groups and first-layer chunks on tiny images."""
    kernel._chunk_entries = 300
    return kernel


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a[:6])))
def test_matches_neural_tangents_values_and_gradients(jax_backend, torch_backend, rng, arch):
    """float64: NNGP and NTK values and input gradients (both inputs) agree with stax to
    1e-9. Values on both backends; gradients on torch for every architecture and on JAX
    for the tiny-tiles one (its compiled ``lax.map`` path; JAX and torch gradients are
    compared for the other kernels in test_jax_equals_torch_values_and_gradients)."""
    import jax
    import jax.numpy as jnp

    hw, c, depth, pool, readout, stem, tiny = arch
    kernel_fn = _nt_kernel_fn(depth, pool, readout, stem)
    x1, x2 = rng.standard_normal((3, hw, hw, c)), rng.standard_normal((5, hw, hw, c))
    w1, w2 = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))

    def nt_objective(a, b):
        ref = kernel_fn(a, b, get=("nngp", "ntk"))
        return jnp.sum(ref.nngp * w1 + ref.ntk * w2)

    ref = kernel_fn(jnp.asarray(x1), jnp.asarray(x2), get=("nngp", "ntk"))
    ref_g = jax.jit(jax.grad(nt_objective, argnums=(0, 1)))(jnp.asarray(x1), jnp.asarray(x2))
    for b in (jax_backend, torch_backend):
        k = ConvNetKernel(kind="ntk", depth=depth, pool=pool, readout=readout, stem=stem,
                          block_mb=0.3 if tiny else 512).bind(b)
        if tiny:
            _small_tiles(k)
        wb1, wb2 = b.asarray(w1, "float64"), b.asarray(w2, "float64")

        def objective(p, _k=k, _b=b, _w1=wb1, _w2=wb2):
            nngp, ntk = _k.nngp_ntk(p["a"], p["b"])
            return _b.xp.sum(nngp * _w1 + ntk * _w2)

        nngp, ntk = k.nngp_ntk(b.asarray(x1, "float64"), b.asarray(x2, "float64"))
        np.testing.assert_allclose(b.to_numpy(nngp), np.asarray(ref.nngp), rtol=1e-9, err_msg=f"nngp {b.name}")
        np.testing.assert_allclose(b.to_numpy(ntk), np.asarray(ref.ntk), rtol=1e-9, err_msg=f"ntk {b.name}")
        if b.name == "jax" and not tiny:
            continue
        _, g = b.value_and_grad(objective)({"a": b.asarray(x1, "float64"), "b": b.asarray(x2, "float64")})
        for name, r in zip("ab", ref_g):
            r = np.asarray(r)
            np.testing.assert_allclose(b.to_numpy(g[name]), r, rtol=1e-9, atol=1e-9 * np.abs(r).max(),
                                       err_msg=f"{b.name} grad {name}")


def test_float32_matches_neural_tangents(jax_backend, torch_backend, rng):
    """float32 (the default; JAX uses a polynomial arccos): within 1e-5 relative of stax in
    float64 (12x12x3 images, 3 blocks)."""
    import jax.numpy as jnp

    kernel_fn = _nt_kernel_fn(3, True, "flatten", False)
    x1, x2 = rng.standard_normal((2, 12, 12, 3)), rng.standard_normal((3, 12, 12, 3))
    ref = kernel_fn(jnp.asarray(x1), jnp.asarray(x2), get=("nngp", "ntk"))
    for b in (jax_backend, torch_backend):
        k = ConvNetKernel().bind(b)
        nngp, ntk = k.nngp_ntk(b.asarray(x1, "float32"), b.asarray(x2, "float32"))
        assert b.dtype_name(ntk) == "float32"
        np.testing.assert_allclose(b.to_numpy(nngp), np.asarray(ref.nngp), rtol=1e-5)
        np.testing.assert_allclose(b.to_numpy(ntk), np.asarray(ref.ntk), rtol=1e-5)


# --- Monte-Carlo: wide random finite ConvNets ----------------------------------------------


def _finite_convnet(x: np.ndarray, depth: int, width: int, sw2: float, sb2: float, seed: int):
    """NNGP (conditional on the last hidden layer, i.e. exact over the readout) and
    empirical NTK of one random ConvNet in NTK parameterization (float64, torch):
    ``depth`` x [conv3x3 SAME, ReLU, AvgPool 2x2], Flatten, Dense(1)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    xt = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)  # NCHW
    sw, sb = math.sqrt(sw2), math.sqrt(sb2)
    params, cin = [], x.shape[3]
    for _ in range(depth):
        params.append(torch.randn(width, cin, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True))
        params.append(torch.randn(width, generator=g, dtype=torch.float64).requires_grad_(True))
        cin = width
    hw = x.shape[1] // 2**depth
    params.append(torch.randn(width * hw * hw, generator=g, dtype=torch.float64).requires_grad_(True))
    params.append(torch.randn(1, generator=g, dtype=torch.float64).requires_grad_(True))

    h = xt
    for i in range(depth):
        wgt, bias = params[2 * i], params[2 * i + 1]
        h = sw / math.sqrt(h.shape[1] * 9) * F.conv2d(h, wgt, padding=1) + sb * bias[None, :, None, None]
        h = F.avg_pool2d(torch.relu(h), 2)
    flat = h.reshape(h.shape[0], -1)
    out = sw / math.sqrt(flat.shape[1]) * flat @ params[-2] + sb * params[-1]
    nngp = sw2 * (flat @ flat.T) / flat.shape[1] + sb2
    jac = torch.stack([
        torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(out[i], params, retain_graph=True)])
        for i in range(len(x))
    ])
    return nngp.detach().numpy(), (jac @ jac.T).numpy()


def test_matches_wide_random_convnets(torch_backend, rng):
    """The mean over 10 random width-256 ConvNets agrees with the exact NNGP and NTK
    within the sampling error (plus an O(1/width) finite-width allowance)."""
    sw2, sb2, width, nets, depth = 2.0, 0.05, 256, 10, 2
    x = rng.standard_normal((3, 8, 8, 2))
    samples = [_finite_convnet(x, depth, width, sw2, sb2, seed) for seed in range(nets)]
    b = torch_backend
    k = ConvNetKernel(depth=depth, sw2=sw2, sb2=sb2).bind(b)
    nngp, ntk = (b.to_numpy(v) for v in k.nngp_ntk(b.asarray(x, "float64"), b.asarray(x, "float64")))
    for exact, idx in ((nngp, 0), (ntk, 1)):
        vals = np.stack([s[idx] for s in samples])
        mean, se = vals.mean(0), vals.std(0, ddof=1) / math.sqrt(nets)
        assert np.all(np.abs(mean - exact) < 4 * se + 8.0 / width * np.abs(exact)), (mean, exact, se)
        # and the test can fail: a different architecture is far outside the error bars
    other = b.to_numpy(ConvNetKernel(depth=depth, sw2=sw2, sb2=sb2, readout="gap").bind(b)(
        b.asarray(x, "float64"), b.asarray(x, "float64")))
    vals = np.stack([s[1] for s in samples])
    assert np.any(np.abs(vals.mean(0) - other) > 4 * vals.std(0, ddof=1) / math.sqrt(nets) + 8.0 / width * np.abs(other))


# --- JAX against torch -------------------------------------------------------------------------


@pytest.mark.parametrize("cls,params", [
    (ConvNetKernel, {"kind": "ntk", "depth": 2, "block_mb": 0.2}),
    (ConvNetNoPoolKernel, {"kind": "ntk", "depth": 3, "stem": True}),
])
def test_jax_equals_torch_values_and_gradients(jax_backend, torch_backend, rng, cls, params):
    """float64 values and input gradients agree across backends. x2 repeats two rows of
    x1: those pairs have cosine 1 at every pixel pair, where arccos is ill-conditioned
    (theta moves by sqrt(eps) ~ 1e-8), hence a wider tolerance there; all gradients must
    be finite."""
    x1, x2 = rng.standard_normal((3, 6, 6, 2)), rng.standard_normal((4, 6, 6, 2))
    x2[:2] = x1[:2]
    w = rng.standard_normal((3, 4))
    res = {}
    for b in (jax_backend, torch_backend):
        k = _small_tiles(cls(**params).bind(b))
        wb = b.asarray(w, "float64")
        _, g = b.value_and_grad(lambda p, _k=k, _w=wb, _b=b: _b.xp.sum(_k(p["a"], p["b"]) * _w))(
            {"a": b.asarray(x1, "float64"), "b": b.asarray(x2, "float64")}
        )
        res[b.name] = (b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x2, "float64"))),
                       {n: b.to_numpy(v) for n, v in g.items()})
    (kj, gj), (kt, gt) = res["jax"], res["torch"]
    np.testing.assert_allclose(kj[2:], kt[2:], rtol=1e-11)  # no shared image
    np.testing.assert_allclose(kj[:, 2:], kt[:, 2:], rtol=1e-11)
    np.testing.assert_allclose(kj, kt, rtol=1e-6)
    for n in "ab":
        assert np.all(np.isfinite(gj[n])) and np.all(np.isfinite(gt[n]))
        np.testing.assert_allclose(gj[n], gt[n], rtol=1e-6, atol=1e-6 * np.abs(gt[n]).max())


def test_nngp_gradient_at_identical_images_matches_finite_differences(jax_backend, rng):
    """At x1[0] == x2[0] every pixel pair has cosine 1; the NNGP is smooth there and the
    closed-form derivative of relu_layer gives the true gradient (differentiating
    through arccos would give 0 at c = 1)."""
    b = jax_backend
    x2 = rng.standard_normal((2, 5, 5, 1))
    x1 = x2[:1].copy()
    k = ConvNetKernel(kind="nngp", depth=1).bind(b)
    x2b = b.asarray(x2, "float64")

    def f(a):
        return float(np.sum(b.to_numpy(k(b.asarray(a, "float64"), x2b))[0, 0]))

    _, grads = b.value_and_grad(lambda p: b.xp.sum(k(p["a"], x2b)[0, 0]))({"a": b.asarray(x1, "float64")})
    g = b.to_numpy(grads["a"])
    eps = 1e-5
    for idx in [(0, 0, 0, 0), (0, 2, 3, 0), (0, 4, 1, 0)]:
        up, dn = x1.copy(), x1.copy()
        up[idx] += eps
        dn[idx] -= eps
        fd = (f(up) - f(dn)) / (2 * eps)
        assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-9), (idx, g[idx], fd)
        assert abs(fd) > 1e-4  # a real, nonzero derivative


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"kind": "ntk"}, {"kind": "nngp", "readout": "gap", "stem": True}])
def test_tiling_and_chunking_do_not_change_values(torch_backend, rng, params):
    """Tiles (memory cap), column groups and first-layer row chunks only reorganize the
    work: identical values for several settings, including ragged (padded) tiles. (Eager
    torch runs the same code as JAX; JAX's compiled ``lax.map`` path is covered by the
    neural-tangents test with tiny tiles.)"""
    b = torch_backend
    x1, x2 = rng.standard_normal((5, 8, 8, 2)), rng.standard_normal((7, 8, 8, 2))
    a1, a2 = b.asarray(x1, "float64"), b.asarray(x2, "float64")
    ref = b.to_numpy(ConvNetKernel(**params, block_mb=1e4).bind(b)(a1, a2))
    shapes = set()
    for block_mb, chunk in [(0.05, 1 << 18), (2.0, 600), (8.0, 600), (8.0, 1100)]:
        k = ConvNetKernel(**params, block_mb=block_mb).bind(b)
        k._chunk_entries = chunk
        shapes.add((k.tile_shape(5, 7, 8, 8, 8), k._group_size(8, 8)))
        np.testing.assert_allclose(b.to_numpy(k(a1, a2)), ref, rtol=1e-13, atol=1e-15)
    assert len(shapes) >= 3  # genuinely different decompositions


def test_traced_kernel_is_one_tile_of_constant_program_size(jax_backend, rng):
    """Inside a compiled program (a jitted KIP step) the kernel is one tile whose
    sequential maps bound memory: the traced program has the same size for 6 and 40
    columns (no per-tile unrolling, so compilation time does not grow with the support
    size), and its values, ragged padding included, equal the tiled eager evaluation."""
    import jax

    b = jax_backend
    k = ConvNetKernel(kind="ntk", depth=2, block_mb=0.05).bind(b)  # many tiles when concrete
    x1 = b.asarray(rng.standard_normal((3, 8, 8, 2)), "float64")
    sizes = {}
    for n2 in (6, 40):
        x2 = b.asarray(rng.standard_normal((n2, 8, 8, 2)), "float64")
        assert len(range(0, n2, k.tile_shape(3, n2, 8, 8, 8)[1])) > 1  # tiled when concrete
        sizes[n2] = len(jax.make_jaxpr(lambda a, c: k(a, c))(x1, x2).eqns)
        traced = jax.jit(lambda a, c: k(a, c))(x1, x2)
        np.testing.assert_allclose(np.asarray(traced), np.asarray(k(x1, x2)), rtol=1e-12)
    assert sizes[6] == sizes[40], sizes


def test_nopool_name_and_parameter_are_the_same_kernel(registry, torch_backend, rng):
    b = torch_backend
    a = registry.create("kernels", "convnet-nopool", depth=2).bind(b)
    c = registry.create("kernels", "convnet", depth=2, pool=False).bind(b)
    assert a.diagonal_only and c.diagonal_only and not ConvNetKernel().diagonal_only
    x = b.asarray(rng.standard_normal((4, 6, 6, 1)), "float64")
    np.testing.assert_array_equal(b.to_numpy(a(x, x)), b.to_numpy(c(x, x)))


@pytest.mark.parametrize("cls,params", [(ConvNetKernel, {"depth": 1}), (ConvNetNoPoolKernel, {"kind": "nngp"})])
def test_conformance(cls, params):
    check_kernel(cls, input_shape=(4, 4, 2), **params)


def test_invalid_parameters_and_inputs(jax_backend):
    with pytest.raises(ConfigError, match="readout"):
        ConvNetKernel(readout="max")
    with pytest.raises(ConfigError, match="pool"):
        ConvNetKernel(pool="yes")
    with pytest.raises(ConfigError, match="depth"):
        ConvNetKernel(depth=0)
    k = ConvNetKernel(depth=3).bind(jax_backend)
    with pytest.raises(ConfigError, match="too small"):
        k(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))
    with pytest.raises(ConfigError, match="NHWC"):
        k(np.zeros((1, 16)), np.zeros((1, 16)))


def test_krr_predict_reports_progress_per_tile(torch_backend, rng):
    """Slow kernels ask krr_predict for small row blocks, so progress (and tqdm's ETA)
    advances per tile rather than once per 2048 rows."""
    from kdistill.core.krr import krr_predict
    from kdistill.plugins.solvers.cholesky import CholeskySolver

    b = torch_backend
    k = ConvNetKernel(depth=2, block_mb=0.5).bind(b)
    rows = k.rows_per_block(6, (8, 8, 1))
    assert rows is not None and rows < 20
    xs, ys = rng.standard_normal((6, 8, 8, 1)), rng.standard_normal((6, 3))
    xt = rng.standard_normal((20, 8, 8, 1))
    calls = []
    pred = krr_predict(k, CholeskySolver().bind(b), xs, ys, xt, 1e-6, "float64", progress=calls.append)
    assert sum(calls) == 20 and len(calls) == -(-20 // rows)
    full = krr_predict(ConvNetKernel(depth=2).bind(b), CholeskySolver().bind(b), xs, ys, xt, 1e-6, "float64")
    np.testing.assert_allclose(pred, full, rtol=1e-6, atol=1e-9)  # KRR amplifies rounding by cond(K)


def test_cli_evaluate_with_convnet_kernel_and_zca(tmp_path):
    """`kdistill evaluate ARTIFACT --kernel convnet` scores a (ZCA-preprocessed) artifact on
    the full test set, advancing the progress bar through both passes."""
    from click.testing import CliRunner

    import kdistill
    from kdistill.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["distill", "--steps", "2", "--ipc", "1", "--target-batch", "100",
                                    "--eval-every", "0", "--no-progress", "--no-grid", "--preprocess", "zca",
                                    "--backend", "torch", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["evaluate", str(out), "--kernel", "convnet", "-s", "eval_kernel.depth=2"])
    assert res.exit_code == 0, res.output
    assert "'name': 'convnet'" in res.stdout and "360 test images" in res.stdout
    assert "740/740" in res.stderr  # kernel rows (10 support + 360 test) of the distilled set and random subset
    acc = float(res.stdout.split("distilled ")[1].split("%")[0])
    fc_acc = 100 * kdistill.load(out / "distilled.npz").metrics["distilled_acc"]
    assert 10.0 < acc <= 100.0 and acc != pytest.approx(fc_acc, abs=0.01)  # a different kernel scored it


def test_variance_cache_is_not_stale(torch_backend, rng):
    """The support set's per-pixel variances are cached by identity; an in-place update
    (as torch optimizers do) or a tensor requiring gradients must not reuse them."""
    import torch

    b = torch_backend
    k = ConvNetKernel(depth=2).bind(b)
    x1 = b.asarray(rng.standard_normal((2, 8, 8, 1)), "float64")
    x2 = b.asarray(rng.standard_normal((3, 8, 8, 1)), "float64")
    first = b.to_numpy(k(x1, x2))
    with torch.no_grad():
        x2.mul_(2.0)
    np.testing.assert_allclose(b.to_numpy(k(x1, x2)), b.to_numpy(ConvNetKernel(depth=2).bind(b)(x1, x2.clone())))
    assert not np.allclose(b.to_numpy(k(x1, x2)), first)
    p = x2.clone().requires_grad_(True)
    for _ in range(2):  # a second backward through a cached graph would fail
        k(x1, p).sum().backward()
    assert torch.isfinite(p.grad).all()
