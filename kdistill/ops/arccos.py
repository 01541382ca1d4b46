"""The ReLU (arc-cosine) layer map of NNGP/NTK recursions, shared by the FC and ConvNet
kernels: one ReLU + Dense/conv step (Cho & Saul 2009) with closed-form, finite gradients,
and the angle between two inputs carried accurately through the layers near ``|c| = 1``.

Written once against :class:`~kdistill.core.backend.Backend` (``b.xp`` and its guarded
primitives), so it runs under both backends and inside their jit/compile.
"""

from __future__ import annotations

import math
from typing import Any

import attrs


def relu_layer(b, k, kxx, kyy, sw2: float, sb2: float, angle: "Angle | None" = None):
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
        angle: optional accurate angle between x and x' (:func:`input_angle`,
            :func:`next_angle`), differentiable. Near ``|c| = 1`` the angle
            ``arccos(k / norm)`` turns each rounding of ``c`` (about 1e-16) into about
            1e-8 of ``theta`` (``theta ~ sqrt(2 (1 - c))``) and its gradient into
            noise; with ``angle`` given, ``kdot`` and ``S`` use it instead.
    Returns:
        ``(k_next, kdot, kxx_next, kyy_next)``, in the dtype of ``k``.
    """
    xp = b.xp
    sg = b.stop_gradient
    scale = sw2 / (2 * math.pi)
    rx, ry = b.safe_sqrt(kxx), b.safe_sqrt(kyy)  # kxx, kyy are small broadcastable arrays
    norm = rx * ry
    if angle is None:
        c = xp.clip(k / norm, min=-1.0, max=1.0)
        theta = b.safe_arccos(c)
        # S = norm sin(theta) from the same c as theta (sin(arccos c) = sqrt((1-c)(1+c))), so
        # rounding errors of theta and S cancel to first order near c = 1 (the map is flat there).
        s = sg(xp.sqrt((1.0 - c) * (1.0 + c)) * norm)
    else:
        theta, s = angle.theta, sg(angle.sin * norm)
    kdot = scale * (math.pi - theta)
    # value: scale * S; derivative in kxx: scale * S / (2 kxx)   (kxx / sg(kxx) == 1)
    unit = (0.5 * scale) * (kxx / sg(_floor(xp, kxx)) + kyy / sg(_floor(xp, kyy)))
    k_next = sg(kdot) * k + s * unit
    if sb2:
        k_next = k_next + sb2
    return k_next, kdot, 0.5 * sw2 * kxx + sb2, 0.5 * sw2 * kyy + sb2


@attrs.frozen
class Angle:
    """The angle between two inputs (or hidden representations) in three accurate forms.

    Attributes (``[...]`` arrays of one float dtype, differentiable):
        theta: the angle in ``[0, pi]``.
        gap: ``1 - cos(theta)`` in ``[0, 2]``, without cancellation near ``theta = 0``.
        sin: ``sin(theta)`` in ``[0, 1]``, without cancellation near ``theta = 0, pi``.
    """

    theta: Any
    gap: Any
    sin: Any


#: Veltkamp splitting factors 2^ceil(p/2) + 1 for p-bit significands (Dekker 1971).
_SPLIT = {"float64": 2.0**27 + 1.0, "float32": 2.0**12 + 1.0}

#: Where |cos| exceeds this, the angle is taken from its sine (arcsin, slope <= 1.43 there)
#: instead of its cosine (arccos, whose slope grows without bound at |cos| = 1).
_COS_SWITCH = 0.7


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


def _angle_from(b, cos, sin):
    """``theta`` from its cosine and sine: ``arccos`` where ``|cos| <= 0.7``, ``arcsin``
    (or ``pi - arcsin``) elsewhere, so its error stays a few ulps given accurate ``sin``.
    Both branches get arguments where their gradients are finite."""
    xp = b.xp
    middle = xp.abs(cos) <= _COS_SWITCH
    by_cos = b.safe_arccos(xp.where(middle, cos, 0.0))
    by_sin = xp.asin(xp.where(middle, 0.0, xp.clip(sin, max=1.0)))
    return xp.where(middle, by_cos, xp.where(cos > 0, by_sin, math.pi - by_sin))


def input_angle(b, k, kxx, kyy) -> Angle:
    """Angle between x and x' from their covariance ``k`` and variances, accurate near
    ``|c| = 1``.

    The Gram determinant ``G = kxx kyy - k^2`` is computed without cancellation from
    exact products (:func:`_two_product`; near ``|c| = 1`` the two leading products are
    within a factor 2 of each other, so their difference is exact, Sterbenz), then
    ``sin = sqrt(G) / norm`` and ``1 - cos = G / (norm (norm + k))`` (for ``k > 0``), and
    the angle from whichever is well conditioned (:func:`_angle_from`). The error in
    ``theta`` is a few ulps for the given ``k``, ``kxx``, ``kyy``, where
    ``arccos(fl(k / norm))`` is off by up to ``sqrt(2 eps)`` (1.5e-8 in float64) at
    ``|c| = 1``. What remains is the rounding of ``k`` itself (a dot product): for
    inputs whose dot products are exact (identical, integer-valued or power-of-2-scaled
    vectors) the angle is exact.

    Differentiable (the gradient is that of ``atan2(sqrt(G), k)``, with ``G``'s derivative
    taken from the plain products, the exact ones being constants); the square root is
    guarded (:meth:`Backend.safe_sqrt`), so at ``G = 0`` (parallel inputs, where
    ``theta`` has a kink as a function of the inputs) the gradient is 0, a finite
    subgradient.

    Args:
        k: ``[...]`` covariances; kxx, kyy: variances broadcastable to ``k``, > 0. float.
    Returns:
        :class:`Angle` of ``[...]`` arrays in the dtype of ``k``.
    """
    xp = b.xp
    sg = b.stop_gradient
    plain = kxx * kyy - k * k  # same derivative; its value loses digits near |c| = 1
    p1, e1 = _two_product(b, sg(kxx), sg(kyy))
    p2, e2 = _two_product(b, sg(k), sg(k))
    gram = ((p1 - p2) + (e1 - e2)) + (plain - sg(plain))
    norm = b.safe_sqrt(kxx) * b.safe_sqrt(kyy)
    root = b.safe_sqrt(gram)
    cos = xp.clip(k / norm, min=-1.0, max=1.0)
    gap = xp.where(k > 0, xp.clip(gram, min=0.0) / (norm * (norm + xp.abs(k))), 1.0 - cos)
    sin = xp.clip(root / norm, max=1.0)
    return Angle(theta=_angle_from(b, cos, sin), gap=gap, sin=sin)


def next_angle(b, angle: Angle, kxx, kyy, sw2: float, sb2: float) -> Angle:
    """The angle after one ReLU + Dense step (:func:`relu_layer`), from the angle before it.

    With ``J(theta) = (sin theta + (pi - theta) cos theta) / pi`` (so ``c_next = J`` when
    ``sb2 = 0``), ``a = sw2 / 2``, ``P = a kxx + sb2``, ``Q = a kyy + sb2``,
    ``N = sqrt(P Q)`` and ``norm = sqrt(kxx kyy)``::

        1 - c_next = (a sb2 (sqrt(kxx) - sqrt(kyy))^2 / (N + a norm + sb2)
                      + a norm (1 - J(theta))) / N
        1 - J(theta) = (pi (1 - cos theta) - (sin theta - theta cos theta)) / pi
        sin theta_next = sqrt((1 - c_next) (1 + c_next))

    Every term is a sum of non-negative parts, so the next angle keeps the accuracy of
    this one (recomputing ``arccos`` from the rounded next covariances would lose half
    the digits at ``|c| = 1``). Differentiable, square roots guarded.

    Args:
        angle: the angle before the step; kxx, kyy: variances before the step,
            broadcastable, > 0.
    Returns:
        :class:`Angle` after the step.
    """
    xp = b.xp
    a = 0.5 * sw2
    theta, cos = angle.theta, 1.0 - angle.gap
    rx, ry = b.safe_sqrt(kxx), b.safe_sqrt(kyy)
    norm = rx * ry
    one_minus_j = (math.pi * angle.gap - (angle.sin - theta * cos)) / math.pi
    n = xp.sqrt((a * kxx + sb2) * (a * kyy + sb2))
    gap = a * norm * xp.clip(one_minus_j, min=0.0)
    if sb2:
        gap = gap + a * sb2 * (rx - ry) ** 2 / (n + a * norm + sb2)
    gap = xp.clip(gap / n, max=1.0)  # c_next >= 0 after a ReLU
    sin = b.safe_sqrt(gap * (2.0 - gap))
    return Angle(theta=_angle_from(b, 1.0 - gap, sin), gap=gap, sin=sin)


def _floor(xp, v):
    """``max(v, tiny)``: a variance safe to divide by (its numerator is 0 when ``v`` is)."""
    return xp.clip(v, min=float(xp.finfo(v.dtype).tiny))
