"""FC NNGP/NTK and RBF kernels: closed forms, Monte-Carlo, neural-tangents, both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.kernels.rbf import RBFKernel


def fc(backend, **kw):
    return FCKernel(**kw).bind(backend)


def np_kernel(backend, kernel, x1, x2):
    return backend.to_numpy(kernel(backend.asarray(x1, "float64"), backend.asarray(x2, "float64")))


# --- closed forms on special input pairs --------------------------------------------


def test_fc_closed_form_special_angles(backend, rng):
    """Orthogonal, parallel and antiparallel inputs have closed-form FC1 kernels (sb2=0).

    The inputs are integer-valued (and sw2/d = 1/8), so every dot product is exact in
    any summation order: the cosines are exactly 0 and +-1 whatever the BLAS, and the
    kernel must then be exact up to a few roundings of its own arithmetic (1e-12)."""
    d, sw2 = 16, 2.0
    x = rng.integers(-8, 9, d).astype(np.float64)
    y = rng.integers(-8, 9, d).astype(np.float64)
    y = (x @ x) * y - (x @ y) * x  # orthogonal to x, still integer-valued
    pts = np.stack([x, y, 3.0 * x, -x])
    k = fc(backend, kind="nngp", depth=1, sw2=sw2, sb2=0.0)
    nngp, ntk = (backend.to_numpy(v) for v in k.nngp_ntk(backend.asarray(pts, "float64"), backend.asarray(pts, "float64")))
    k0 = sw2 * pts @ pts.T / d
    # orthogonal: theta = pi/2 -> K1 = sw2/(2 pi) sqrt(K0(x,x) K0(y,y)), Kdot * K0 = 0
    assert nngp[0, 1] == pytest.approx(sw2 / (2 * math.pi) * math.sqrt(k0[0, 0] * k0[1, 1]), rel=1e-12)
    assert ntk[0, 1] == pytest.approx(nngp[0, 1], rel=1e-12)
    # parallel: theta = 0 -> K1 = sw2/2 K0, Theta = sw2 K0
    assert nngp[0, 2] == pytest.approx(sw2 / 2 * k0[0, 2], rel=1e-12)
    assert ntk[0, 2] == pytest.approx(sw2 * k0[0, 2], rel=1e-12)
    # antiparallel: theta = pi -> K1 = 0 and Kdot = 0
    assert abs(nngp[0, 3]) < 1e-12 * k0[0, 0]
    assert abs(ntk[0, 3]) < 1e-12 * k0[0, 0]


def _fc_reference(x, y, depth: int, sw2: float, sb2: float):
    """FC NNGP and NTK of one input pair by the arc-cosine recursion in 60-digit
    arithmetic (mpmath), from the exact values of the float inputs."""
    import mpmath

    with mpmath.workdps(max(60, mpmath.mp.dps)):  # mpmath.diff raises the precision
        x = [mpmath.mpf(v) for v in x]
        y = [mpmath.mpf(v) for v in y]

        def dot(u, v):
            return sum(a * b for a, b in zip(u, v)) * sw2 / len(u) + sb2

        k, kxx, kyy = dot(x, y), dot(x, x), dot(y, y)
        ntk = k
        for _ in range(depth):
            norm = mpmath.sqrt(kxx * kyy)
            theta = mpmath.acos(max(min(k / norm, 1), -1))
            k = sw2 / (2 * mpmath.pi) * norm * (mpmath.sin(theta) + (mpmath.pi - theta) * mpmath.cos(theta)) + sb2
            ntk = k + sw2 / (2 * mpmath.pi) * (mpmath.pi - theta) * ntk
            kxx, kyy = sw2 / 2 * kxx + sb2, sw2 / 2 * kyy + sb2
        return k, ntk


#: (a, m, sb2): x = (a, 0), y = (+-a, m): every dot product is exact, and the cosine is
#: 1 - m^2/2 ulps (a = 2^26, sb2 = 0) or 1 - O(1e-12) with a bias (a = 2^20).
NEAR_PARALLEL = [(2.0**26, m, 0.0) for m in (1, 2, 3)] + [(2.0**20, m, 0.25) for m in (1, 3)]


@pytest.mark.parametrize("a,m,sb2", NEAR_PARALLEL)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fc_accurate_a_few_ulps_from_unit_cosine(backend, a, m, sb2, sign):
    """Inputs whose cosine is a few ulps from +-1: the kernel equals the 60-digit
    recursion to a few ulps at every depth. Computing the angle as arccos of the
    rounded cosine (and re-deriving it from rounded covariances at every layer) was off
    by up to 7e-9 here (theta ~ sqrt(2 (1 - c)) turns one rounding into ~1e-8)."""
    import mpmath

    x, y = np.array([a, 0.0]), np.array([sign * a, float(m)])
    for depth in (1, 2, 3):
        k = fc(backend, depth=depth, sw2=2.0, sb2=sb2)
        got = [backend.to_numpy(v)[0, 0] for v in k.nngp_ntk(backend.asarray(x[None], "float64"),
                                                             backend.asarray(y[None], "float64"))]
        ref = _fc_reference(x, y, depth, 2.0, sb2)
        # errors relative to the kernel's scale sqrt(K(x,x) K(y,y)): K(x,x') itself is ~0
        # for antiparallel inputs
        scale = [mpmath.sqrt(u * v) for u, v in zip(_fc_reference(x, x, depth, 2.0, sb2),
                                                    _fc_reference(y, y, depth, 2.0, sb2))]
        for value, r, s in zip(got, ref, scale):
            assert abs(value - float(r)) <= 8 * np.finfo(np.float64).eps * float(s), (depth, value, float(r))


@pytest.mark.parametrize("a,m,sb2", [NEAR_PARALLEL[0], NEAR_PARALLEL[2], NEAR_PARALLEL[3]])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fc_gradient_accurate_near_unit_cosine(backend, a, m, sb2, sign):
    """The NTK's gradient in the second input, a few ulps of cosine from +-1, equals the
    derivative of the 60-digit recursion (mpmath.diff). It is finite and its relative
    error is bounded by the conditioning of the angle there, about eps/theta (theta =
    m/a >= 1.5e-8: 7e-9); tolerance 4 eps/theta. Differentiating arccos of the rounded
    cosine gave 0 instead of -6.4e7 (m = 1) and errors of 6% (m = 3)."""
    import mpmath

    depth = 2
    k = fc(backend, depth=depth, sw2=2.0, sb2=sb2)
    x = backend.asarray(np.array([[a, 0.0]]), "float64")
    _, grads = backend.value_and_grad(lambda p: k.nngp_ntk(x, p["y"])[1][0, 0])(
        {"y": backend.asarray(np.array([[sign * a, float(m)]]), "float64")})
    got = backend.to_numpy(grads["y"])[0]
    with mpmath.workdps(60):
        ref = np.array([
            float(mpmath.diff(lambda t: _fc_reference([a, 0], [sign * a + t, m], depth, 2.0, sb2)[1], 0)),
            float(mpmath.diff(lambda t: _fc_reference([a, 0], [sign * a, m + t], depth, 2.0, sb2)[1], 0)),
        ])
    assert np.isfinite(got).all()
    tol = 4 * np.finfo(np.float64).eps / (m / a)
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (got, ref)


def test_fc_gradient_finite_at_identical_inputs(backend, rng):
    """K(X, X) with identical rows: the angle is exactly 0 on the diagonal whatever the
    BLAS (the variances are the diagonal of the same product), and the gradient is
    finite and equals the other backend's (checked by the value against the closed form
    Theta(x, x) = K0 (1 + sw2/2 + ...) for depth 1, sb2 = 0: Theta = sw2 K0)."""
    x = rng.standard_normal((3, 7))
    k = fc(backend, depth=1, sw2=2.0, sb2=0.0)
    xs = backend.asarray(x, "float64")
    ntk = backend.to_numpy(k(xs, xs))
    k0 = 2.0 * np.einsum("ij,ij->i", x, x) / 7
    np.testing.assert_allclose(np.diag(ntk), 2.0 * k0, rtol=1e-14)
    _, grads = backend.value_and_grad(lambda p: backend.xp.sum(k(p["x"], p["x"])))({"x": xs})
    assert np.isfinite(backend.to_numpy(grads["x"])).all()


def test_arccos_kernel_monte_carlo(backend, rng):
    """K1 (sw2=1, sb2=0, depth 1) equals E_w[relu(w.x) relu(w.x')] with w ~ N(0, I/d)."""
    d, samples = 8, 400_000
    x = rng.standard_normal((3, d))
    w = rng.standard_normal((samples, d)) / math.sqrt(d)
    feats = np.maximum(x @ w.T, 0.0)  # [3, samples]
    prod = feats[:, None, :] * feats[None, :, :]
    mc, se = prod.mean(-1), prod.std(-1) / math.sqrt(samples)
    nngp = np_kernel(backend, fc(backend, kind="nngp", depth=1, sw2=1.0, sb2=0.0), x, x)
    assert np.all(np.abs(mc - nngp) < 5 * se)


def _finite_fc_kernels(x: np.ndarray, depth: int, width: int, sw2: float, sb2: float, seed: int):
    """Empirical NNGP (conditional on the last hidden layer) and NTK of one random
    finite ReLU network in NTK parameterization, float64, via torch autograd."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xt = torch.tensor(x, dtype=torch.float64)
    dims = [x.shape[1]] + [width] * depth + [1]
    params = []
    for din, dout in zip(dims[:-1], dims[1:]):
        params.append(torch.randn(din, dout, generator=g, dtype=torch.float64).requires_grad_(True))
        params.append(torch.randn(dout, generator=g, dtype=torch.float64).requires_grad_(True))
    sw, sb = math.sqrt(sw2), math.sqrt(sb2)

    def forward(inp):
        h = inp
        for i in range(0, len(params) - 2, 2):
            h = torch.relu(sw / math.sqrt(h.shape[1]) * h @ params[i] + sb * params[i + 1])
        out = sw / math.sqrt(h.shape[1]) * h @ params[-2] + sb * params[-1]
        return out[:, 0], h

    out, last = forward(xt)
    nngp = sw2 * (last @ last.T) / width + sb2
    jac = []
    for i in range(len(x)):
        grads = torch.autograd.grad(out[i], params, retain_graph=True)
        jac.append(torch.cat([gr.reshape(-1) for gr in grads]))
    jac = torch.stack(jac)
    return nngp.detach().numpy(), (jac @ jac.T).numpy()


@pytest.mark.parametrize("depth", [1, 2])
def test_fc_matches_wide_finite_networks(backend, rng, depth):
    """Mean over random width-1024 networks agrees with the closed form within sampling error."""
    sw2, sb2, width, nets = 2.0, 0.05, 1024, 12
    x = rng.standard_normal((4, 10))
    samples = [_finite_fc_kernels(x, depth, width, sw2, sb2, seed) for seed in range(nets)]
    k = fc(backend, depth=depth, sw2=sw2, sb2=sb2)
    nngp, ntk = (backend.to_numpy(v) for v in k.nngp_ntk(backend.asarray(x, "float64"), backend.asarray(x, "float64")))
    for exact, idx in ((nngp, 0), (ntk, 1)):
        vals = np.stack([s[idx] for s in samples])
        mean, se = vals.mean(0), vals.std(0, ddof=1) / math.sqrt(nets)
        # sampling error plus the O(1/width) finite-width bias
        assert np.all(np.abs(mean - exact) < 4 * se + 4.0 / width * np.abs(exact)), (mean, exact)


def test_fc_nngp_ntk_relation(backend, rng):
    """Theta_1 = K_1 + Kdot * K_0 for depth 1, checked against an explicit K_0."""
    x = rng.standard_normal((5, 7))
    sw2, sb2 = 1.7, 0.2
    k = fc(backend, depth=1, sw2=sw2, sb2=sb2)
    nngp, ntk = (backend.to_numpy(v) for v in k.nngp_ntk(backend.asarray(x, "float64"), backend.asarray(x, "float64")))
    k0 = sw2 * x @ x.T / 7 + sb2
    diag = np.sqrt(np.diag(k0))
    theta = np.arccos(np.clip(k0 / np.outer(diag, diag), -1, 1))
    kdot = sw2 / (2 * np.pi) * (np.pi - theta)
    # arccos is ill-conditioned at c = 1: a rounding of 1e-16 in c moves theta by ~1e-8
    np.testing.assert_allclose(ntk, nngp + kdot * k0, rtol=1e-7)
    # the diagonal of the NNGP follows the variance map K <- sw2/2 K + sb2
    np.testing.assert_allclose(np.diag(nngp), sw2 / 2 * np.diag(k0) + sb2, rtol=1e-12)


def test_rbf_closed_form(backend, rng):
    x1, x2 = rng.standard_normal((4, 3, 2, 1)), rng.standard_normal((6, 3, 2, 1))
    k = RBFKernel(gamma=0.7).bind(backend)
    f1, f2 = x1.reshape(4, -1), x2.reshape(6, -1)
    expected = np.exp(-0.7 * ((f1[:, None, :] - f2[None, :, :]) ** 2).sum(-1) / 6)
    np.testing.assert_allclose(np_kernel(backend, k, x1, x2), expected, rtol=1e-12)


@pytest.mark.parametrize("kernel", [FCKernel(kind="ntk", depth=3), FCKernel(kind="nngp", depth=2), RBFKernel()])
def test_kernel_matrix_is_symmetric_psd(backend, rng, kernel):
    x = rng.standard_normal((30, 4, 4, 1))
    k = np_kernel(backend, kernel.bind(backend), x, x)
    np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=1e-14)
    assert np.linalg.eigvalsh(k).min() > -1e-10 * np.trace(k)


# --- JAX against torch ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel",
    [FCKernel(kind="ntk", depth=1), FCKernel(kind="nngp", depth=3, sw2=1.5, sb2=0.1), RBFKernel(gamma=2.0)],
)
@pytest.mark.parametrize("shared", [False, True])
def test_kernels_jax_equals_torch_values_and_gradients(jax_backend, torch_backend, rng, kernel, shared):
    """Same values and input gradients on both backends; ``shared`` rows hit c = 1, where
    arccos is ill-conditioned (theta moves by ~sqrt(eps) = 1e-8), so the tolerance is
    wider there, and gradients must stay finite."""
    x1 = rng.standard_normal((6, 3, 3, 2))
    x2 = rng.standard_normal((5, 3, 3, 2))
    if shared:
        x2[:2] = x1[:2]
    rtol = 1e-6 if shared else 1e-11
    weights = rng.standard_normal((6, 5))
    results = {}
    for b in (jax_backend, torch_backend):
        k = kernel.bind(b)

        def objective(params, _k=k, _b=b):
            return _b.xp.sum(_k(params["a"], params["b"]) * _b.asarray(weights, "float64"))

        value, grads = b.value_and_grad(objective)({"a": b.asarray(x1, "float64"), "b": b.asarray(x2, "float64")})
        results[b.name] = (
            b.to_numpy(k(b.asarray(x1, "float64"), b.asarray(x2, "float64"))),
            float(value),
            {n: b.to_numpy(g) for n, g in grads.items()},
        )
    kj, vj, gj = results["jax"]
    kt, vt, gt = results["torch"]
    np.testing.assert_allclose(kj, kt, rtol=rtol, atol=1e-14)
    assert vj == pytest.approx(vt, rel=rtol)
    for name in ("a", "b"):
        assert np.all(np.isfinite(gj[name]))
        np.testing.assert_allclose(gj[name], gt[name], rtol=rtol, atol=1e-12)


def test_fc_gradient_matches_finite_differences(jax_backend, rng):
    """Guarded arccos does not distort gradients away from |c| = 1."""
    b = jax_backend
    k = FCKernel(kind="ntk", depth=2).bind(b)
    x1, x2 = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    w = rng.standard_normal((3, 4))

    def f(a):
        return float(np.sum(np_kernel(b, k, a, x2) * w))

    _, grads = b.value_and_grad(lambda p: b.xp.sum(k(p["a"], b.asarray(x2, "float64")) * b.asarray(w, "float64")))(
        {"a": b.asarray(x1, "float64")}
    )
    g = b.to_numpy(grads["a"])
    eps = 1e-6
    for i, j in [(0, 0), (1, 3), (2, 4)]:
        up, dn = x1.copy(), x1.copy()
        up[i, j] += eps
        dn[i, j] -= eps
        assert g[i, j] == pytest.approx((f(up) - f(dn)) / (2 * eps), rel=1e-6, abs=1e-8)


# --- neural-tangents --------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fc_matches_neural_tangents(jax_backend, rng, depth):
    from kdistill.errors import ConfigError
    from kdistill.runtime.optional import import_neural_tangents

    try:
        nt = import_neural_tangents()
    except ConfigError as exc:
        pytest.skip(str(exc))
    import jax.numpy as jnp

    stax = nt.stax
    sw, sb = math.sqrt(2.0), 0.1
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=sw, b_std=sb), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=sw, b_std=sb))
    x1, x2 = rng.standard_normal((5, 4, 4, 3)), rng.standard_normal((7, 4, 4, 3))
    ref = kernel_fn(jnp.asarray(x1.reshape(5, -1)), jnp.asarray(x2.reshape(7, -1)), ("nngp", "ntk"))
    k = fc(jax_backend, depth=depth, sw2=2.0, sb2=0.01)
    nngp, ntk = k.nngp_ntk(jax_backend.asarray(x1, "float64"), jax_backend.asarray(x2, "float64"))
    np.testing.assert_allclose(np.asarray(nngp), np.asarray(ref.nngp), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(ntk), np.asarray(ref.ntk), rtol=1e-9)
