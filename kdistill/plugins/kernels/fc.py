"""Fully-connected ReLU network NNGP and NTK, closed form (arc-cosine recursion).

Architecture (neural-tangents ``stax`` notation)::

    serial(Dense(W_std=sqrt(sw2), b_std=sqrt(sb2)), Relu(),     # x depth
           Dense(W_std=sqrt(sw2), b_std=sqrt(sb2)))               # readout

Recursion (Cho & Saul 2009; Lee et al. 2018 eq. 5; Jacot et al. 2018 Thm. 1; Arora et
al. 2019 eq. 9), inputs flattened to dimension d::

    K_0 = sw2 * x.x'/d + sb2,   Theta_0 = K_0
    c = K_l / sqrt(K_l(x,x) K_l(x',x')),  theta = arccos(c)
    K_{l+1} = sw2/(2 pi) sqrt(K_l(x,x) K_l(x',x')) (sin theta + (pi - theta) cos theta) + sb2
    Kdot    = sw2/(2 pi) (pi - theta)
    Theta_{l+1} = K_{l+1} + Kdot * Theta_l

``depth`` is the number of hidden ReLU layers (KIP's "FC1" is depth 1).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from kdistill.core.contracts import Kernel
from kdistill.core.validators import kernel_kind, nonneg, positive, positive_int


def relu_layer(b, k, kxx, kyy, sw2: float, sb2: float, theta=None):
    """One ReLU + Dense step of the arc-cosine recursion (Cho & Saul 2009).

    With ``norm = sqrt(kxx kyy)``, ``theta = arccos(k / norm)`` and
    ``S = sqrt(kxx kyy - k^2) = norm sin(theta)``::

        k_next = sw2/(2 pi) ((pi - theta) k + S) + sb2
        kdot   = sw2/(2 pi) (pi - theta)

    ``k_next`` is written so that automatic differentiation returns its closed-form
    derivatives ``dk_next/dk = kdot`` and ``dk_next/dkxx = sw2/(4 pi) S/kxx`` (same for
    ``kyy``), which are finite everywhere, also at ``|c| = 1`` (identical pixels or
    patches), where differentiating through arccos would give 0 or infinity: the
    factors ``kdot`` and ``S`` enter as constants (``b.stop_gradient``) times ``k`` and
    ``scale/2 (kxx/kxx + kyy/kyy)``. Per entry it costs one arccos, one square root and
    no division (``kxx``, ``kyy`` are usually small arrays broadcast against ``k``).
    ``kdot`` differentiates through ``b.safe_arccos`` (guarded at ``|c| = 1``).

    Args:
        b: backend.
        k: ``[...]`` covariances between x and x'; ``kxx``/``kyy`` variances of x and x',
            broadcastable to ``k``, > 0.
        sw2, sb2: weight and bias variance of the Dense (or conv) layer folded in.
        theta: optional ``[...]`` accurate angle between x and x' (from
            :func:`input_angle` / :func:`next_angle`), differentiable. Near ``|c| = 1``
            the angle ``arccos(k / norm)`` turns each rounding of ``c`` (about 1e-16)
            into about 1e-8 of ``theta`` (``theta ~ sqrt(2 (1 - c))``) and its gradient
            into noise; with ``theta`` given, ``kdot`` and ``S`` use it instead.
    Returns:
        ``(k_next, kdot, kxx_next, kyy_next)``, in the dtype of ``k``.
    """
    xp = b.xp
    sg = b.stop_gradient
    scale = sw2 / (2 * math.pi)
    rx, ry = b.safe_sqrt(kxx), b.safe_sqrt(kyy)  # kxx, kyy are small broadcastable arrays
    norm = rx * ry
    if theta is None:
        c = xp.clip(k / norm, min=-1.0, max=1.0)
        theta = b.safe_arccos(c)
        # S = norm sin(theta) from the same c as theta (sin(arccos c) = sqrt((1-c)(1+c))), so
        # rounding errors of theta and S cancel to first order near c = 1 (the map is flat there).
        s = sg(xp.sqrt((1.0 - c) * (1.0 + c)) * norm)
    else:
        s = sg(xp.sin(theta) * norm)
    kdot = scale * (math.pi - theta)
    # value: scale * S; derivative in kxx: scale * S / (2 kxx)   (kxx / sg(kxx) == 1)
    unit = (0.5 * scale) * (kxx / sg(_floor(xp, kxx)) + kyy / sg(_floor(xp, kyy)))
    k_next = sg(kdot) * k + s * unit
    if sb2:
        k_next = k_next + sb2
    return k_next, kdot, 0.5 * sw2 * kxx + sb2, 0.5 * sw2 * kyy + sb2


#: Veltkamp splitting factors 2^ceil(p/2) + 1 for p-bit significands (Dekker 1971).
_SPLIT = {"float64": 2.0**27 + 1.0, "float32": 2.0**12 + 1.0}


def _two_product(b, u, v):
    """``(p, e)`` with ``p = fl(u v)`` and ``u v = p + e`` exactly (Dekker 1971, TwoProduct),
    elementwise, without a fused multiply-add (none is exposed by either backend)."""
    factor = _SPLIT[b.dtype_name(u)]

    def split(a):
        t = factor * a
        hi = t - (t - a)
        return hi, a - hi

    uh, ul = split(u)
    vh, vl = split(v)
    p = u * v
    return p, ((uh * vh - p) + uh * vl + ul * vh) + ul * vl


def input_angle(b, k, kxx, kyy):
    """Angle ``theta = arccos(k / sqrt(kxx kyy))`` in ``[0, pi]``, accurate near ``|c| = 1``.

    ``theta = atan2(sqrt(G), k)`` with the Gram determinant ``G = kxx kyy - k^2``
    computed without cancellation from exact products (:func:`_two_product`; the two
    leading products are within a factor 2 of each other near ``|c| = 1``, so their
    difference is exact, Sterbenz). The error in ``theta`` is then a few ulps of
    ``theta`` for the given ``k``, ``kxx``, ``kyy``, where ``arccos(fl(k / norm))``
    is off by up to ``sqrt(2 eps)`` (1.5e-8 in float64) at ``|c| = 1``. What remains is
    the rounding of ``k`` itself (a dot product): for inputs whose dot products are
    exact (identical, integer-valued or power-of-2-scaled vectors) the angle is exact.

    Differentiable: the error terms of the exact products have zero derivative, so the
    gradient is that of ``atan2(sqrt(kxx kyy - k^2), k)``; the square root is guarded
    (:meth:`Backend.safe_sqrt`), so at ``G = 0`` (parallel inputs, where ``theta`` has a
    kink as a function of the inputs) the gradient is 0, a subgradient, and finite.

    Args:
        k: ``[...]`` covariances; kxx, kyy: variances broadcastable to ``k``, > 0. float.
    Returns:
        ``[...]`` angle in radians, dtype of ``k``.
    """
    p1, e1 = _two_product(b, kxx, kyy)
    p2, e2 = _two_product(b, k, k)
    return b.xp.atan2(b.safe_sqrt((p1 - p2) + (e1 - e2)), k)


def next_angle(b, theta, kxx, kyy, sw2: float, sb2: float):
    """The angle after one ReLU + Dense step (:func:`relu_layer`), from the angle before it.

    With ``J(theta) = (sin theta + (pi - theta) cos theta) / pi`` (so ``c_next = J`` when
    ``sb2 = 0``), ``a = sw2 / 2``, ``P = a kxx + sb2``, ``Q = a kyy + sb2``,
    ``N = sqrt(P Q)`` and ``norm = sqrt(kxx kyy)``::

        1 - c_next = (a sb2 (sqrt(kxx) - sqrt(kyy))^2 / (N + a norm + sb2)
                      + a norm (1 - J(theta))) / N
        1 - J(theta) = (2 pi sin^2(theta/2) - (sin theta - theta cos theta)) / pi
        theta_next = 2 asin(sqrt((1 - c_next) / 2))

    Every term is a sum of non-negative parts, so ``theta_next`` keeps the accuracy of
    ``theta`` (recomputing ``arccos`` from the rounded next covariances would lose it:
    half the digits at ``|c| = 1``). ``c_next >= 0`` after a ReLU, so ``asin`` is
    evaluated on ``[0, 0.71]`` where it is well conditioned. Differentiable, with the
    square root guarded as in :func:`input_angle`.

    Args:
        theta: ``[...]`` angle before the step (radians); kxx, kyy: variances before
            the step, broadcastable, > 0.
    Returns:
        ``[...]`` angle after the step.
    """
    xp = b.xp
    a = 0.5 * sw2
    rx, ry = xp.sqrt(kxx), xp.sqrt(kyy)
    norm = rx * ry
    half = xp.sin(0.5 * theta)
    one_minus_j = (2 * math.pi * half * half - (xp.sin(theta) - theta * xp.cos(theta))) / math.pi
    n = xp.sqrt((a * kxx + sb2) * (a * kyy + sb2))
    gap = a * norm * xp.clip(one_minus_j, min=0.0)
    if sb2:
        gap = gap + a * sb2 * (rx - ry) ** 2 / (n + a * norm + sb2)
    delta = xp.clip(gap / n, max=1.0)
    return 2.0 * xp.asin(b.safe_sqrt(0.5 * delta))


def _floor(xp, v):
    """``max(v, tiny)``: a variance safe to divide by (its numerator is 0 when ``v`` is)."""
    return xp.clip(v, min=float(xp.finfo(v.dtype).tiny))


@attrs.define(kw_only=True)
class FCKernel(Kernel):
    """Infinite-width fully-connected ReLU network kernel (NNGP or NTK).

    Args:
        kind: ``"ntk"`` (default) or ``"nngp"``.
        depth: number of hidden ReLU layers, >= 1 (KIP used 1-3).
        sw2: weight variance sigma_w^2 (KIP: 2.0, i.e. weight std sqrt(2)).
        sb2: bias variance sigma_b^2 (KIP: 0.01, i.e. bias std 0.1).

    Inputs ``[n, ...]`` of any trailing shape are flattened; output ``[n1, n2]`` in the
    input dtype. Agrees with ``neural_tangents.stax`` (standard NTK parameterization).
    """

    kind: str = attrs.field(default="ntk", validator=kernel_kind)
    depth: int = attrs.field(default=1, validator=positive_int)
    sw2: float = attrs.field(default=2.0, converter=float, validator=positive)
    sb2: float = attrs.field(default=0.01, converter=float, validator=nonneg)

    def nngp_ntk(self, x1: Any, x2: Any) -> tuple[Any, Any]:
        """Both kernels, ``([n1, n2], [n1, n2])``."""
        b = self.b
        xp = b.xp
        same = x2 is x1  # K(X, X): the variances are the diagonal of the same product
        x1 = xp.reshape(x1, (x1.shape[0], -1))
        x2 = x1 if same else xp.reshape(x2, (x2.shape[0], -1))
        d = x1.shape[1]
        k = self.sw2 * (x1 @ x2.T) / d + self.sb2
        if same:  # self-pairs then have G = 0 exactly, whatever the BLAS rounds to
            diag = xp.linalg.diagonal(k)
            kxx, kyy = diag[:, None], diag[None, :]
        else:
            kxx = (self.sw2 * xp.sum(x1 * x1, axis=1) / d + self.sb2)[:, None]
            kyy = (self.sw2 * xp.sum(x2 * x2, axis=1) / d + self.sb2)[None, :]
        theta = input_angle(b, k, kxx, kyy)
        ntk = k
        for _ in range(self.depth):
            k_next, kdot, kxx_next, kyy_next = relu_layer(b, k, kxx, kyy, self.sw2, self.sb2, theta=theta)
            theta = next_angle(b, theta, kxx, kyy, self.sw2, self.sb2)
            k, kxx, kyy = k_next, kxx_next, kyy_next
            ntk = k + kdot * ntk
        return k, ntk

    def __call__(self, x1, x2):
        nngp, ntk = self.nngp_ntk(x1, x2)
        return ntk if self.kind == "ntk" else nngp
